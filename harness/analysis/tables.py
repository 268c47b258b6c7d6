"""The store as pandas frames: one tidy row per process and metric, then per-case summaries.

Statistics are computed here, at load time, from the raw per-process values.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from harness.analysis.quality import output_differs
from harness.engines import get_engine
from harness.engines.llamabench import offload_note
from harness.plan.planner import case_label
from harness.records import Case
from harness.stats import drift, percentile, pooled_cv, summarize
from harness.store.db import Store

# The metrics a summary table shows, in order, with their column titles.
HEADLINE = {
    "prefill_tps": "prefill tok/s",
    "decode_tps": "decode tok/s",
    "pg_tps": "prompt+gen tok/s",
    "agg_tps": "aggregate tok/s",  # a server case's: every stream's tokens over the case's span
    "ttft_ms": "TTFT ms",
    "itl_ms_p50": "ITL p50 ms",
    "itl_ms_p99": "ITL p99 ms",
    "peak_rss_mb": "peak RSS MB",
    "peak_rss_anon_mb": "anon RSS MB",
    "peak_rss_file_mb": "file RSS MB",
    "temp_max_c": "max temp °C",
    "energy_j": "energy J",
    "avg_power_w": "power W",
}


# Every metric's title: the headline ones plus those shown only in comparisons and details.
TITLES = {**HEADLINE, "itl_ms_p90": "ITL p90 ms", "ttft_ms_p90": "TTFT p90 ms", "ttft_ms_p99": "TTFT p99 ms",
          "prefill_tps_ttft": "prompt/TTFT tok/s", "server_decode_tps": "server decode tok/s", "load_s": "load s", "cpu_freq_mhz": "CPU MHz",
          "energy_j_per_token": "J/token", "gpu_power_w": "GPU W", "gpu_energy_j": "GPU J", "gpu_mem_peak_mb": "GPU MB",
          "foreign_cpu_pct": "others' CPU %", "load_avg_1m": "load 1 min", "contended": "contended"}

KIND_ORDER = {"prefill": 0, "decode": 1, "pg": 2, "latency": 3, "serve": 4}


def tidy_frame(store: Store, run_ids: list[str]) -> pd.DataFrame:
    """One row per (run, case, repetition, metric), with device, model and build beside it."""
    cases: dict[tuple[str, str], Case] = {}
    named: dict[tuple[str, str], dict[str, str]] = {}
    runs: dict[str, dict[str, Any]] = {}
    differs: dict[tuple[str, str], str] = {}
    for run_id in run_ids:
        run = store.run(run_id)
        differs |= {(run.id, key): mark for key, mark in output_differs(store, run.id).items()}
        model = store.model_info(run.model_sha256)
        runs[run.id] = {
            "device": run.device,
            "model": model.get("filename", run.model_sha256[:12]),
            "quantization": model.get("quantization"),
            "runtime_key": run.runtime_key,
        }
        for case in store.cases(run.id):
            cases[(run.id, case.key)] = case
            named[(run.id, case.key)] = {"case": case_label(case), "runtime": get_engine(case.engine).runtime}  # once per case
    records = []
    ids = list(runs)
    for m in store.measurements(ids):
        case = cases[(m["run_id"], m["case_key"])]
        records.append(
            {
                "run_id": m["run_id"],
                **runs[m["run_id"]],
                "case_key": m["case_key"],
                **named[(m["run_id"], m["case_key"])],  # the label names its runtime where it is not llama.cpp
                "engine": case.engine,
                "kind": case.kind,
                "context": case.context,
                "n_prompt": case.n_prompt,
                "n_gen": case.n_gen,
                "depth": case.depth,
                "rep": m["rep"],
                "status": m["status"],
                "build": m["build"],
                "metric": m["metric"],
                "value": m["value"],
                "unit": m["unit"],
                "missing_reason": m["missing_reason"],
                "samples": json.loads(m["samples_json"]),
                "output_differs": differs.get((m["run_id"], m["case_key"])),
            }
        )
    return pd.DataFrame.from_records(records, columns=_TIDY_COLUMNS)


_TIDY_COLUMNS = [
    "run_id", "device", "model", "quantization", "runtime_key", "case_key", "case", "runtime", "engine", "kind", "context",
    "n_prompt", "n_gen", "depth", "rep", "status", "build", "metric", "value", "unit", "missing_reason", "samples",
    "output_differs",  # the correctness gate's mark for the case's figures (harness.analysis.quality), or None
]


def summary_frame(tidy: pd.DataFrame) -> pd.DataFrame:
    """Per (run, case, metric): n processes, mean, median, stdev, 95% CI, in-process CV, or why missing."""
    rows = []
    keys = ["run_id", "device", "model", "case_key", "case", "runtime", "engine", "kind", "context", "metric", "unit", "output_differs"]
    for key, group in tidy[tidy["status"] == "ok"].groupby(keys, sort=False, dropna=False):
        values = [float(v) for v in group["value"].dropna()]
        row = dict(zip(keys, key))
        if not values:
            row.update(n=0, missing_reason="; ".join(sorted(set(group["missing_reason"].dropna()))))
        else:
            s = summarize(values)
            ordered = group.sort_values("rep")
            series = [v for samples in ordered["samples"] for v in samples] or list(ordered["value"].dropna())
            row.update(
                n=s.n, mean=s.mean, median=s.median, stdev=s.stdev, ci_low=s.ci_low, ci_high=s.ci_high,
                min=s.minimum, max=s.maximum, cv=s.cv,
                inprocess_cv=pooled_cv([list(x) for x in group["samples"] if x]),
                p50=percentile(series, 50), p99=percentile(series, 99), drift=drift(series),
            )
        rows.append(row)
    return pd.DataFrame(rows)


def failures_frame(store: Store, run_id: str) -> pd.DataFrame:
    """Every process of the run that did not succeed, with its error."""
    labels = {c.key: case_label(c) for c in store.cases(run_id)}
    return pd.DataFrame(
        [
            {"case": labels.get(e.case_key, e.case_key), "rep": e.rep, "status": e.status, "error": e.error}
            for e in store.executions(run_id)
            if e.status != "ok"
        ],
        columns=["case", "rep", "status", "error"],
    )


@dataclass(frozen=True)
class Cell:
    mean: float
    half_width: float | None  # of the 95% CI; None with one process
    n: int
    cv: float | None
    inprocess_cv: float | None


@dataclass(frozen=True)
class Contention:
    """A case some of whose processes ran while others used more CPU than the run's threshold."""

    contended: int  # processes marked contended
    n: int  # processes with a contention figure
    foreign_max_pct: float | None  # the most others used in one of them, % of one core

    def note(self) -> str:
        most = "an unknown share" if self.foreign_max_pct is None else f"up to {self.foreign_max_pct:.0f}%"
        return f"contended: others used {most} of a core in {self.contended} of {self.n} processes"


def contention_by_case(summary: pd.DataFrame) -> dict[tuple[str, str], Contention]:
    """(run_id, case label) -> Contention, for the cases with at least one contended process."""
    if summary.empty:
        return {}
    out = {}
    flags = summary[(summary["metric"] == "contended") & (summary["n"] > 0)]
    for r in flags.itertuples():
        marked = round(r.mean * r.n)
        if marked:
            foreign = summary[(summary["run_id"] == r.run_id) & (summary["case"] == r.case) & (summary["metric"] == "foreign_cpu_pct")
                              & (summary["n"] > 0)]
            out[(r.run_id, r.case)] = Contention(marked, int(r.n), float(foreign["max"].iloc[0]) if not foreign.empty else None)
    return out


def contended_processes(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Every process of the run marked contended: its case and round, what others used, the
    load before it, and the busiest other processes (from its raw record)."""
    labels = {c.key: case_label(c) for c in store.cases(run_id)}
    wanted = ("contended", "foreign_cpu_pct", "load_avg_1m")
    values = {(m["case_key"], m["rep"], m["metric"]): m["value"] for m in store.measurements([run_id]) if m["metric"] in wanted}
    return [
        {"case": labels.get(e.case_key, e.case_key), "rep": e.rep, "foreign_cpu_pct": values.get((e.case_key, e.rep, "foreign_cpu_pct")),
         "load_avg_1m": values.get((e.case_key, e.rep, "load_avg_1m")), "busiest": e.raw.contention.get("busiest", [])}
        for e in store.executions(run_id)
        if e.status == "ok" and values.get((e.case_key, e.rep, "contended")) == 1.0
    ]


@dataclass(frozen=True)
class WideTable:
    """One row per (run, case), one column per headline metric measured somewhere in it.

    Metrics measured nowhere are not columns: they are listed once in `missing` with the
    reason, so a sensor the device lacks is said once rather than per row. A row whose
    figures were measured while others used the device is in `contended`; one whose run's
    backend failed the correctness gate is in `differs`; one that offloaded layers to a GPU is
    in `offloads`, saying how many and to which device. Where a run measured more than one
    runtime, `runtimes` names each row's (a column of its own). Quality cases have their own table.
    """

    columns: list[str]  # metric names, HEADLINE order
    rows: list[tuple[str, str, dict[str, Cell | str]]]  # (run_id, case label, metric -> cell or missing reason)
    missing: dict[str, str]
    contended: dict[tuple[str, str], Contention] = field(default_factory=dict)
    differs: dict[tuple[str, str], str] = field(default_factory=dict)
    offloads: dict[tuple[str, str], str] = field(default_factory=dict)
    runtimes: dict[tuple[str, str], str] = field(default_factory=dict)


def wide_table(summary: pd.DataFrame, offloads: dict[tuple[str, str], str] | None = None) -> WideTable:
    """The summary as a WideTable; `offloads` (`offloads_by_case`) marks the cases that offloaded."""
    if summary.empty:
        return WideTable([], [], {})
    present = summary[summary["metric"].isin(HEADLINE) & (summary["kind"] != "quality")]
    measured = set(present.loc[present["n"] > 0, "metric"])
    columns = [m for m in HEADLINE if m in measured]
    missing = {
        m: "; ".join(sorted(set(present.loc[present["metric"] == m, "missing_reason"].dropna())))
        for m in HEADLINE
        if m in set(present["metric"]) and m not in measured
    }
    rows = []
    ordered = present.assign(_kind=present["kind"].map(KIND_ORDER)).sort_values(["run_id", "_kind", "context", "case"], kind="stable")
    for (run_id, label), group in ordered.groupby(["run_id", "case"], sort=False):
        cells: dict[str, Cell | str] = {}
        for _, r in group.iterrows():
            if r["metric"] not in columns:
                continue
            if r["n"] > 0:
                high = _none(r["ci_high"])  # None with one process (--repeat 1)
                cells[r["metric"]] = Cell(r["mean"], None if high is None else high - r["mean"], int(r["n"]), _none(r["cv"]), _none(r.get("inprocess_cv")))
            else:
                cells[r["metric"]] = str(r["missing_reason"])
        rows.append((run_id, label, cells))
    marked = present[present["output_differs"].notna()] if "output_differs" in present else present.iloc[0:0]
    differs = {(r.run_id, r.case): r.output_differs for r in marked.itertuples()}
    shown = {(run_id, label) for run_id, label, _ in rows}
    several = present.groupby("run_id")["runtime"].nunique()
    runtimes = {(r.run_id, r.case): r.runtime for r in present[present["run_id"].isin(several[several > 1].index)].itertuples()}
    return WideTable(columns, rows, missing, contention_by_case(summary), differs,
                     {key: note for key, note in (offloads or {}).items() if key in shown}, runtimes)


def offloads_by_case(store: Store, run_ids: list[str]) -> dict[tuple[str, str], str]:
    """(run_id, case label) -> what the case offloaded to a GPU and where, as its processes
    reported it (harness.engines.llamabench.offload_note); CPU-only cases are not in it."""
    out: dict[tuple[str, str], str] = {}
    for run_id in run_ids:
        n_layers = store.model_info(store.run(run_id).model_sha256).get("n_layers")
        labels = {case.key: case.label for case in store.cases(run_id)}
        notes: dict[str, set[str]] = {}
        for e in store.executions(run_id):
            if e.status == "ok" and (note := offload_note(e.raw.effective, n_layers)):
                notes.setdefault(labels.get(e.case_key, e.case_key), set()).add(note)
        out |= {(run_id, label): " / ".join(sorted(seen)) for label, seen in notes.items()}
    return out


def _none(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def power_series(store: Store, run_id: str) -> pd.DataFrame:
    """Every power sample (unit W) of a run's processes, from their telemetry artifacts in the
    store (not the run folder, which only the host that ran it has)."""
    frames = []
    for name, data in store.artifacts(run_id, "*/rep*.telemetry.csv").items():
        try:
            frame = pd.read_csv(io.BytesIO(data))
        except (ValueError, pd.errors.EmptyDataError):
            continue
        if not {"t_monotonic_s", "source", "value", "unit"} <= set(frame.columns):
            continue
        watts = frame[frame["unit"] == "W"]
        if not watts.empty:
            path = PurePosixPath(name)
            frames.append(pd.DataFrame({"run_id": run_id, "t": watts["t_monotonic_s"], "source": watts["source"], "value": watts["value"],
                                        "window": f"{path.parent.name}/{path.name.split('.')[0]}"}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", "t", "source", "value", "window"])


def local_scores(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """The LocalScore-form score of every case that measured prefill, decode and TTFT together."""
    from harness.stats import local_score

    rows = []
    means = summary[summary["n"] > 0].pivot_table(index=["run_id", "case"], columns="metric", values="mean", aggfunc="first")
    for (run_id, case), r in means.iterrows():
        if all(m in r and pd.notna(r[m]) for m in ("prefill_tps", "decode_tps", "ttft_ms")):
            rows.append({"run_id": run_id, "case": case, "score": local_score(r["prefill_tps"], r["decode_tps"], r["ttft_ms"])})
    return rows


def stability_rows(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """Per case and throughput/latency metric: spread figures and any drift across the run."""
    if summary.empty or "p50" not in summary:
        return []
    wanted = summary[summary["metric"].isin(["prefill_tps", "decode_tps", "pg_tps", "ttft_ms"]) & (summary["n"] > 0)]
    return [
        {k: (None if isinstance(v, float) and pd.isna(v) else v) for k, v in r.items()}
        for r in wanted[["run_id", "case", "metric", "n", "cv", "inprocess_cv", "min", "max", "p50", "p99", "drift"]].to_dict("records")
    ]


# How far back the history view reaches: a lab's nightly runs go on for years, and the trend of
# the last few dozen is what a report shows; the query stays bounded however long the store gets.
HISTORY_RUNS = 60


def history_frame(store: Store, run_ids: list[str]) -> pd.DataFrame:
    """Per device (by identity) of these runs: the mean of each throughput figure over the
    earlier runs of the same suite and model (the last HISTORY_RUNS), in time order (the "what
    got slower" view of nightly runs)."""
    rows = []
    for run_id in run_ids:
        this = store.run(run_id)
        related = store.history(this.id, HISTORY_RUNS)
        summary = summary_frame(tidy_frame(store, [r.id for r in related]))
        if summary.empty:
            continue
        created = {r.id: r.created_at for r in related}
        wanted = summary[summary["metric"].isin(["prefill_tps", "decode_tps"]) & (summary["n"] > 0)]
        for r in wanted.itertuples():
            rows.append({"device": r.device, "case": r.case, "metric": r.metric, "created_at": created[r.run_id], "mean": r.mean})
    return pd.DataFrame(rows, columns=["device", "case", "metric", "created_at", "mean"]).drop_duplicates()
