"""What the CLI prints: its tables as data (`Grid`), laid out so that every figure is printed whole.

rich fits a table to the console by shrinking its columns evenly and cutting what still does
not fit ("489…"), and it takes a console that is not a terminal to be 80 columns wide. So a
grid's columns are measured here first and a layout the console can hold is chosen: one table;
the figure columns spread over stacked tables with the row names repeated in each; or, where
not even one figure fits beside the names, one line per figure. Figure cells never wrap; only
names and words do. Formats: `table` (rich, box lines), `plain` (aligned text, no box
characters), `csv` and `markdown` (for pasting; they ignore the width), `json` (one object per
table and line: its title, rows keyed by column, and caption).
"""

from __future__ import annotations

import csv
import io
import json
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # the store is only passed through here; importing it would load SQLAlchemy for every table
    from harness.store.db import RunRecord, Store

FORMATS = ("table", "plain", "csv", "markdown", "json")
# Columns never taken narrower than this, unless their longest word is shorter.
_LEAST_WRAP = 10
# Width each column adds beyond its cells, and what the table adds once (rich's defaults:
# padding of 1 on both sides; with box lines, a separator per column and one more edge).
_OVERHEAD = {"table": (3, 1), "plain": (2, -2)}
# A piped console gets this much room: nothing to fold for, the log holds every line whole.
UNBOUNDED = 100_000


def output_console() -> Console:
    """stdout's console. Piped and with no COLUMNS, rich would assume 80 columns; a file or a
    CI log has no such limit, so it gets room for any table (COLUMNS still sets a width)."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=UNBOUNDED)
    return console


def status_console(file: IO[str] | None = None) -> Console:
    """stderr's console (or `file`'s), for progress, status and error lines. Where it is not a
    terminal nothing wraps them: rich would break a line at 80 columns mid-sentence ("extracting
    SmolLM2-....gguf from" and the wheel's name on the next line), and a log reads each whole."""
    console = Console(stderr=file is None, file=file)
    if not console.is_terminal:
        console = Console(stderr=file is None, file=file, soft_wrap=True, width=UNBOUNDED if "COLUMNS" not in os.environ else None)
    return console


@dataclass(frozen=True)
class Grid:
    """A table before layout. The first `keys` columns name a row and are repeated in every
    fold; columns named in `text` hold words and may wrap; every other column is figures."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    keys: int = 1
    text: frozenset[str] = frozenset()
    caption: tuple[str, ...] = ()
    styles: tuple[str, ...] = ()  # a rich style per row ("" for none); table and plain only
    row_lines: bool = False  # rules between rows, where cells span several lines

    def wraps(self, index: int) -> bool:
        return index < self.keys or self.header[index] in self.text


@dataclass(frozen=True)
class _Width:
    full: int   # the widest cell line, header included
    least: int  # the narrowest this column may be laid out


def _measure(grid: Grid, index: int) -> _Width:
    header = grid.header[index]
    lines = [line for row in grid.rows for line in row[index].splitlines()]
    full = max([cell_len(header), *map(cell_len, lines)])
    if grid.wraps(index):
        longest_word = max([cell_len(w) for t in (header, *lines) for w in t.split()] or [1])
        return _Width(full, min(full, max(longest_word, _LEAST_WRAP)))
    figure = max(map(cell_len, lines), default=1)
    return _Width(full, max(figure, max((cell_len(w) for w in header.split()), default=1)))


@dataclass(frozen=True)
class Fold:
    """One of the stacked tables a grid is laid out as: its columns (the keys first) and the
    width each gets."""

    columns: tuple[int, ...]
    widths: tuple[int, ...]


def plan(grid: Grid, width: int, fmt: str = "table") -> list[Fold] | None:
    """The stacked tables that hold `grid` within `width`, or None where not even one column
    fits beside the keys. Packed with every column at its full width, else at its least (the
    fewest tables win, full widths on a tie); then each table's words get the room it has left."""
    per_column, edge = _OVERHEAD[fmt]
    measured = [_measure(grid, i) for i in range(len(grid.header))]
    best = None
    for choose in (lambda w: w.full, lambda w: w.least):
        widths = [choose(w) for w in measured]
        packed = _pack(widths, grid.keys, width, per_column, edge)
        if packed is not None and (best is None or len(packed) < len(best[0])):
            best = (packed, widths)
    if best is None:
        return None
    folds = []
    for columns in best[0]:
        widths = [best[1][i] for i in columns]
        slack = width - edge - sum(widths) - per_column * len(columns)
        for n, i in sorted(enumerate(columns), key=lambda item: item[1] < grid.keys):  # words beyond the keys first
            if grid.wraps(i) and slack > 0:
                grow = min(slack, measured[i].full - widths[n])
                widths[n] += grow
                slack -= grow
        folds.append(Fold(tuple(columns), tuple(widths)))
    return folds


def _pack(widths: list[int], keys: int, width: int, per_column: int, edge: int) -> list[list[int]] | None:
    base = edge + sum(widths[:keys]) + per_column * keys
    folds: list[list[int]] = [list(range(keys))]
    used = base
    for index in range(keys, len(widths)):
        need = widths[index] + per_column
        if base + need > width:
            return None
        if used + need > width:
            folds.append(list(range(keys)))
            used = base
        folds[-1].append(index)
        used += need
    return folds


def show(console: Console, grid: Grid, fmt: str = "table") -> None:
    """Print `grid` in `fmt` at the console's width (see the module's docstring)."""
    if fmt == "csv":
        console.out(to_csv(grid), highlight=False, end="")
        return
    if fmt == "markdown":
        console.out(to_markdown(grid), highlight=False)
        return
    if fmt == "json":
        console.out(json.dumps(to_json(grid), ensure_ascii=False), highlight=False)
        return
    if grid.title:
        console.print(Text(grid.title, style="bold"))
    folds = plan(grid, console.width, fmt) if grid.rows else []
    if folds is None:
        console.out(vertical(grid), highlight=False)
    for fold in folds or ():
        console.print(_table(grid, fold, fmt))
    for line in grid.caption:
        console.print(Text(line, style="dim"))


def _table(grid: Grid, fold: Fold, fmt: str) -> Table:
    boxed = fmt == "table"
    table = Table(show_lines=grid.row_lines and boxed, pad_edge=boxed, **({} if boxed else {"box": None, "header_style": ""}))
    for i, width in zip(fold.columns, fold.widths):
        if grid.wraps(i):
            table.add_column(grid.header[i], max_width=width, overflow="fold")
        else:  # figures: never wrapped; the header wraps between its words instead
            table.add_column("\n".join(textwrap.wrap(grid.header[i], width)), justify="right", no_wrap=True, min_width=width)
    for n, row in enumerate(grid.rows):
        style = grid.styles[n] if n < len(grid.styles) else ""
        table.add_row(*(Text(row[i]) for i in fold.columns), style=style or None)
    return table


def vertical(grid: Grid) -> str:
    """One line per figure under its row's names: for consoles too narrow for any table."""
    names = grid.header[grid.keys:]
    pad = max(map(cell_len, names), default=0)
    lines = []
    for row in grid.rows:
        lines.append(" · ".join(_one_line(c) for c in row[:grid.keys]))
        lines += [f"  {name}{' ' * (pad - cell_len(name))}  {_one_line(value)}" for name, value in zip(names, row[grid.keys:])]
    return "\n".join(lines)


def _one_line(cell: str) -> str:
    return "; ".join(cell.splitlines())


def to_csv(grid: Grid) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(grid.header)
    writer.writerows(grid.rows)
    return buffer.getvalue()


def to_markdown(grid: Grid) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = [f"**{cell(grid.title)}**", ""] if grid.title else []
    lines.append("| " + " | ".join(map(cell, grid.header)) + " |")
    lines.append("| " + " | ".join("---" if grid.wraps(i) else "---:" for i in range(len(grid.header))) + " |")
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in grid.rows]
    lines += ([""] + [f"- {line}" for line in grid.caption]) if grid.caption else []
    return "\n".join(lines) + "\n"


def to_json(grid: Grid) -> dict[str, Any]:
    return {"title": grid.title, "rows": [dict(zip(grid.header, row)) for row in grid.rows], "caption": list(grid.caption)}


def show_lines(console: Console, lines: Sequence[str], fmt: str = "table", style: str = "") -> None:
    """Notes beside the tables (conditions, failures): a list in markdown, none in csv or json
    (data only; `--json` gives a command's whole document where it has one)."""
    if fmt in ("csv", "json"):
        return
    for line in lines:
        if fmt == "markdown":
            console.out(f"- {line}", highlight=False)
        else:
            console.print(Text(line, style=style))


# The grids the commands print.

def _fmt(value: Any) -> str:
    """The report's number format, imported when first needed (the report module brings
    pandas and matplotlib, which a command that prints no figure should not wait for)."""
    from harness.report.html import format_value

    return format_value(value)


def cell_text(cell: Any) -> str:
    """A summary cell: mean ± half the 95% interval, or — where the case has no figure."""
    if cell is None or isinstance(cell, str):
        return "—"
    return _fmt(cell.mean) + ("" if cell.half_width is None else f" ± {_fmt(cell.half_width)}")


def summary_caption(run: RunRecord, wide: Any, stops: dict[str, Any] | None = None) -> tuple[str, ...]:
    from harness.analysis.tables import HEADLINE

    processes = f"{run.repetitions} processes per case"
    if stops:  # a precision target gave the cases as many processes as each needed
        counts = sorted(stop.processes for stop in stops.values())
        first = next(iter(stops.values()))
        spread = f"{counts[0]}–{counts[-1]}" if counts[0] != counts[-1] else str(counts[0])
        processes = (f"{spread} processes per case (precision target: a 95% CI within ±{first.target * 100:g}% of each case's tok/s,"
                     f" TTFT for latency cases; at most {first.max_repetitions} processes)")
    lines = [f"mean ± 95% CI over {processes}; — = not measured for that case"]
    lines += [f"not measured here: {HEADLINE[m]}: {reason}" for m, reason in wide.missing.items()]
    lines += [f"* {label}: {c.note()}" for (_, label), c in wide.contended.items()]
    lines += [f"† {label}: {mark}" for (_, label), mark in wide.differs.items()]
    return tuple(lines)


OFFLOAD = "GPU offload"  # the summary column of the cases that offloaded layers


def summary_grid(run: RunRecord, summary: Any, stops: dict[str, Any] | None = None,
                 offloads: dict[tuple[str, str], str] | None = None) -> Grid:
    """One row per case, one column per headline metric the run measured (and the runtime, where the
    run measured more than one); where a case offloaded
    layers to a GPU (`offloads`, harness.analysis.tables.offloads_by_case), a column says how many
    and to which device (empty for the CPU-only cases); with a precision target (`stops`, by case
    label), a last column says where each case stopped and why."""
    from harness.analysis.tables import HEADLINE, wide_table

    wide = wide_table(summary, offloads)
    title = f"run {run.id} · {run.facts.get('name')} ({run.facts.get('cpu_model')}) · suite {run.suite_name} · {run.status}"
    stopped = (lambda label: (stops[label].describe() if label in stops else "—",)) if stops else (lambda label: ())
    offload = (lambda key: (wide.offloads.get(key, ""),)) if wide.offloads else (lambda key: ())
    runtime = (lambda key: (wide.runtimes.get(key, ""),)) if wide.runtimes else (lambda key: ())
    rows = tuple((label, *runtime((run_id, label)), *(_marked(cells.get(m), (run_id, label) in wide.contended, (run_id, label) in wide.differs)
                           for m in wide.columns), *offload((run_id, label)), *stopped(label))
                 for run_id, label, cells in wide.rows)
    header = (("case", *(("runtime",) if wide.runtimes else ()), *(HEADLINE[m] for m in wide.columns))
              + ((OFFLOAD,) if wide.offloads else ()) + (("stopped",) if stops else ()))
    return Grid(title, header, rows, text=frozenset({"runtime", "stopped", OFFLOAD}), caption=summary_caption(run, wide, stops))


def stops_by_label(store: Store, run_id: str) -> dict[str, Any]:
    """Why a precision target stopped each case's rounds, by case label (empty without a target)."""
    labels = {case.key: case.label for case in store.cases(run_id)}
    return {labels[key]: stop for key, stop in store.stops(run_id).items()}


def _marked(cell: Any, contended: bool, differs: bool = False) -> str:
    """A figure measured while others used the device gets a "*", one from a backend whose
    output differs from the host reference a "†" (the caption says how much)."""
    text = cell_text(cell)
    if text == "—":
        return text
    return text + (" *" if contended else "") + (" †" if differs else "")


def device_lines(store: Store, run_id: str) -> list[str]:
    """The GPU devices the run's processes reported, once each, with the engine's note where one is
    not a GPU (lavapipe runs Vulkan on the CPU): a figure from it must not pass for a GPU figure."""
    reported = (e.raw.effective for e in store.executions(run_id))
    seen = {(str(fx.get("backends", "")), str(fx.get("gpu_info") or "no GPU device"), fx.get("device_note"))
            for fx in reported if fx.get("gpu_info") or fx.get("device_note")}
    return [f"device: {info} ({backends})" + (f": {note}" if note else "") for backends, info, note in sorted(seen, key=str)]


def contended_lines(store: Store, run_id: str) -> list[str]:
    """Each contended process: what others used, the load before it, and who was busiest."""
    from harness.analysis.tables import contended_processes

    lines = []
    for p in contended_processes(store, run_id):
        busiest = ", ".join(f"{b['name']} ({b['pid']}) {b['cpu_pct']:.0f}%" for b in p["busiest"]) or "not recorded"
        load = "unknown" if p["load_avg_1m"] is None else f"{p['load_avg_1m']:.2f}"
        lines.append(f"contended: {p['case']} round {p['rep'] + 1}: others used {p['foreign_cpu_pct']:.0f}% of a core, "
                     f"load {load}; busiest: {busiest}")
    return lines


def roofline_grid(store: Store, run_ids: list[str]) -> Grid | None:
    """Decode cases against what the measured memory bandwidth allows (harness.analysis.roofline)."""
    from harness.analysis.roofline import roofline_frame

    frame = roofline_frame(store, run_ids)
    if frame.empty:
        return None
    several = len(run_ids) > 1
    rows = []
    for r in frame.itertuples():
        bandwidth = "—" if _missing(r.bandwidth_gbps) else f"{r.bandwidth_gbps:.1f} ({r.bandwidth_min:.1f}–{r.bandwidth_max:.1f})"
        efficiency = "—" if _missing(r.efficiency) else f"{100 * r.efficiency:.1f}%"
        mb = "—" if _missing(r.bytes_per_token) else _fmt(r.bytes_per_token / 1e6)
        roofline = _fmt(None if _missing(r.roofline_tps) else r.roofline_tps)
        threads = "—" if _missing(r.n_threads) else str(int(r.n_threads))
        rows.append((*(r.run_id,) * several, r.case, threads, _fmt(r.decode_tps), mb, bandwidth, roofline, efficiency, r.note))
    header = ("run",) * several + ("case", "threads", "decode tok/s", "MB/token", "GB/s", "roofline tok/s", "efficiency", "note")
    if not any(row[-1] for row in rows):  # no case needs a note: no empty column
        header, rows = header[:-1], [row[:-1] for row in rows]
    return Grid("decode roofline: bandwidth / bytes read per token", header, tuple(rows), keys=1 + several, text=frozenset({"note"}),
                caption=("bandwidth: median of the triad repetitions (min–max); efficiency = measured / roofline",))


def _missing(value: Any) -> bool:
    return value is None or value != value  # NaN is the only value unequal to itself


def condition_lines(store: Store, run_id: str) -> list[str]:
    """Beside the figures: the power scope and the device state before each case's first
    process. What every case saw is one line; then per case only what differed (cases that
    differed alike share a line), so nine cases read as a few short lines, not nine long ones."""
    from harness.telemetry.state import summary_parts

    labels = {case.key: case.label for case in store.cases(run_id)}
    seen: dict[str, dict[str, str]] = {}
    for execution in store.executions(run_id):
        label = labels.get(execution.case_key, execution.case_key)
        state = execution.raw.state
        if label in seen or state is None:
            continue
        scope = execution.raw.telemetry.get("power_scope") or "none (no power sensor)"
        seen[label] = {"scope": f"power scope {scope}", **summary_parts(state)}
    if len(seen) == 1:
        ((label, parts),) = seen.items()
        return [f"before {label}: {', '.join(parts.values())}"]
    names = list(dict.fromkeys(name for parts in seen.values() for name in parts))
    shared = [n for n in names if len({parts.get(n) for parts in seen.values()}) == 1]
    lines = [f"before every case: {', '.join(next(iter(seen.values()))[n] for n in shared)}"] if shared else []
    cases_by_difference: dict[str, list[str]] = {}
    for label, parts in seen.items():
        differed = ", ".join(parts[n] for n in names if n not in shared and n in parts)
        cases_by_difference.setdefault(differed, []).append(label)
    return lines + [f"before {', '.join(cases)}: {differed}" for differed, cases in cases_by_difference.items() if differed]


def show_run(console: Console, store: Store, run_id: str, fmt: str = "table") -> None:
    """A run's summary, its contended processes, its roofline, the conditions it ran under, its
    failures and note."""
    from harness.analysis.tables import failures_frame, offloads_by_case, summary_frame, tidy_frame

    run = store.run(run_id)
    show(console, summary_grid(run, summary_frame(tidy_frame(store, [run.id])), stops_by_label(store, run.id),
                               offloads_by_case(store, [run.id])), fmt)
    show_quality(console, store, run.id, fmt)
    show_lines(console, contended_lines(store, run.id), fmt, "yellow")
    show_lines(console, device_lines(store, run.id), fmt, "yellow")
    show_roofline(console, store, [run.id], fmt)
    show_lines(console, condition_lines(store, run.id), fmt)
    failures = failures_frame(store, run.id)
    show_lines(console, [f"{f['status']} {f['case']} round {f['rep'] + 1}: {f['error']}" for _, f in failures.iterrows()], fmt, "red")
    if run.note:
        show_lines(console, [run.note], fmt, "yellow")


def show_quality(console: Console, store: Store, run_id: str, fmt: str = "table", side: str = "") -> None:
    """A run's quality lines (red where its backend failed the gate); `side` ("A: ") names the
    run in a comparison, where speed ratios alone would hide what each side's output cost."""
    from harness.analysis.quality import quality_results

    for quality in quality_results(store, run_id):
        show_lines(console, [side + quality.line()], fmt, "bold red" if quality.differs else "")


def show_roofline(console: Console, store: Store, run_ids: list[str], fmt: str = "table") -> None:
    grid = roofline_grid(store, run_ids)
    if grid is not None:
        show(console, grid, fmt)


def compare_grid(a: str, b: str, rows: Sequence[Any], threshold: float) -> Grid:
    """B/A per case and metric with its interval and verdict; a regression row is flagged."""
    from harness.analysis.tables import TITLES

    cells, styles = [], []
    for r in rows:
        interval = "—" if r.ci_low is None else f"{r.ci_low:.3f} – {r.ci_high:.3f}"
        p = "—" if r.p_value is None else f"{r.p_value:.3f}"
        verdict = ("REGRESSION " if r.regression else "") + r.verdict + "".join(f"\n{mark}" for mark in r.output_differs)
        cells.append((r.case, TITLES.get(r.metric, r.metric), f"{r.mean_a:,.1f}", f"{r.mean_b:,.1f}", f"{r.ratio:.3f}", interval, p, verdict))
        styles.append("bold red" if r.regression else "")
    return Grid(f"B = {b} vs A = {a}", ("case", "metric", "A", "B", "B/A", "95% interval", "p", "verdict"), tuple(cells), keys=2,
                text=frozenset({"verdict"}), styles=tuple(styles),
                caption=(f"interval: 95% bootstrap over processes; regression: interval wholly beyond {threshold:g}% worse",))


def frontier_grid(frontier: Any) -> Grid:
    """A sweep's models side by side: size, decode speed, J/token, KLD, PPL; ★ = Pareto-best."""
    rows = tuple((str(r.variant), r.model or "—", _fmt(r.size_bytes / 1e6), _fmt(r.decode_tps), _fmt(r.energy_j_per_token),
                  _fmt(r.kld_mean), _fmt(r.top1_agreement), _fmt(r.ppl), "★" if r.pareto else "")
                 for r in frontier.itertuples())
    return Grid("speed-quality frontier", ("variant", "model", "size MB", "decode tok/s", "J/token", "KLD mean", "top-1 %", "PPL", "Pareto"),
                rows, text=frozenset({"model"}),
                caption=("decode tok/s and J/token: the shallowest decode case, mean over processes; KLD, top-1 and PPL: the quality case "
                         "against the base's reference logits; ★ = no other model is at least as fast with at most its KLD",))


def claims_grid(checks: Sequence[Any]) -> Grid:
    """The claims some stored run tests, measured against claimed; the claims none can test
    are one caption line naming the devices and models that would (as in the report)."""
    from harness.analysis.tables import TITLES
    from harness.analysis.claims import untested_line

    rows = []
    for c in (c for c in checks if c.run_id is not None):
        ratio = "—" if c.ratio is None else f"{c.ratio:.2f}"
        where = "\n".join(c.mismatches) or "same conditions"
        rows.append((c.claim.id, c.claim.source, TITLES.get(c.claim.metric, c.claim.metric), _fmt(c.claim.value), f"{c.run_id}\n{c.case or ''}".strip(),
                     _fmt(c.measured), ratio, c.verdict, where))
    header = ("claim", "source", "metric", "claimed", "run", "measured", "ratio", "verdict", "conditions that differ")
    caption = ["ratio = measured / claimed; a ratio under differing conditions is not a verdict on the claim" if rows
               else "no stored run tests a published claim"]
    untested = untested_line(checks)
    caption += [untested] if untested else []
    return Grid("published claims vs stored runs", header, tuple(rows), text=frozenset({"source", "metric", "run", "verdict", "conditions that differ"}),
                caption=tuple(caption), row_lines=True)

