"""`edgebench results list | show | export | push`, and the run tables `run` prints too."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from harness.cli import views
from harness.cli.common import FormatOpt, JsonOpt, ResultsOpt, StoreOpt, console, open_store, out
from harness.errors import EdgebenchError

if TYPE_CHECKING:
    from harness.store.db import Store

app = typer.Typer(no_args_is_help=True, help="Stored runs.")


@app.command("list")
def results_list(results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt, fmt: str = FormatOpt) -> None:
    """Stored runs, newest first."""
    store = open_store(results, store_url)
    rows = tuple((run.id, run.created_at, run.status, run.device, run.suite_name,
                  store.model_info(run.model_sha256).get("filename", "?")) for run in store.runs())
    grid = views.Grid("", ("run", "created", "status", "device", "suite", "model"), tuple(tuple(map(str, r)) for r in rows),
                      text=frozenset({"status", "device", "suite", "model"}))
    views.show(out, grid, fmt)


@app.command("show")
def results_show(run_id: str = typer.Argument("latest"), results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt,
                 as_json: bool = JsonOpt, fmt: str = FormatOpt) -> None:
    """The summary table of one run (statistics recomputed from its raw values)."""
    show_runs(open_store(results, store_url), [run_id], as_json, fmt)


@app.command("export")
def results_export(
    run_id: str = typer.Argument("latest"),
    fmt: str = typer.Option("csv", "--format", help="csv, json or parquet."),
    output: Optional[Path] = typer.Option(None, "-o", help="File to write (default: stdout)."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", help="Write the run's stored files (raw output, telemetry, facts, "
                                             "manifests) under this folder instead; the table only with -o."),
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
) -> None:
    """Export the per-process tidy table of a run, or its stored files (--artifacts)."""
    from harness.analysis.tables import tidy_frame

    store = open_store(results, store_url)
    run_id = store.run(run_id).id
    if artifacts:
        written = store.export_artifacts(run_id, artifacts)
        console.print(f"{run_id}: {len(written)} file(s) written under {artifacts}", markup=False)
        if output is None:
            return
    frame = tidy_frame(store, [run_id])
    if fmt == "parquet":
        if output is None:
            raise EdgebenchError("--format parquet needs -o FILE (it is binary)")
        frame.assign(samples=frame["samples"].map(json.dumps)).to_parquet(output, index=False)
        return
    writers = {"csv": lambda f: f.to_csv(index=False), "json": lambda f: f.to_json(orient="records")}
    if fmt not in writers:
        raise EdgebenchError(f"unknown format {fmt!r}; valid: csv, json, parquet")
    text = writers[fmt](frame)
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


@app.command("push")
def results_push(
    runs: list[str] = typer.Argument(None, help="Run ids or prefixes (default: every run of the local store)."),
    to: str = typer.Option(..., "--to", help="The store to copy into, e.g. postgresql://user@lab-host/edgebench (password: "
                           "in the URL, PGPASSFILE or PGPASSWORD; never printed)."),
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
) -> None:
    """Copy runs with their artifacts into another store; pushing again copies nothing new."""
    from harness.store.push import push

    source = open_store(results, store_url)
    target = open_store(results, to)
    ids = [source.run(r).id for r in runs] if runs else [r.id for r in reversed(source.runs())]
    pushed = push(source, target, ids)
    out.print(f"pushed {len(ids)} run(s) to {target.where}: {pushed.runs} new or updated, "
              f"{pushed.executions} process run(s), {pushed.artifacts} file(s) copied", highlight=False, markup=False)


def show_runs(store: Store, run_ids: list[str], as_json: bool, fmt: str = "table", *, sweep: bool = False) -> None:
    """Each run; after a sweep, its frontier (with --json: one document holding them all)."""
    from harness.analysis.quality import frontier_frame

    frontier = frontier_frame(store, run_ids) if sweep else None
    if as_json:
        payload = _run_payload(store, run_ids[0]) if frontier is None else {
            "runs": [_run_payload(store, run_id) for run_id in run_ids], "frontier": json.loads(frontier.to_json(orient="records"))}
        out.print_json(json.dumps(payload, default=str))
        return
    for run_id in run_ids:
        views.show_run(out, store, run_id, fmt)
    if frontier is not None:
        views.show(out, views.frontier_grid(frontier), fmt)


def _run_payload(store: Store, run_id: str) -> dict[str, Any]:
    from harness.analysis.tables import contended_processes, failures_frame, summary_frame, tidy_frame
    from harness.analysis.quality import quality_results
    from harness.analysis.roofline import roofline_frame

    run = store.run(run_id)
    summary = summary_frame(tidy_frame(store, [run.id]))
    return {"run": {k: v for k, v in asdict(run).items() if not k.endswith("_text")}, "summary": json.loads(summary.to_json(orient="records")),
            "quality": [q.to_json() for q in quality_results(store, run.id)],
            "failures": json.loads(failures_frame(store, run.id).to_json(orient="records")),
            "contended": contended_processes(store, run.id),
            "roofline": json.loads(roofline_frame(store, [run.id]).to_json(orient="records")),
            "stops": [{"case": label, **stop.to_json(), "text": stop.describe()} for label, stop in views.stops_by_label(store, run.id).items()]}


def write_report(store: Store, run_ids: list[str], output: Path, *, lab: bool = False) -> None:
    from harness.report.html import render_report

    console.print(f"report: {render_report(store, run_ids, output, lab=lab)}", markup=False)
