"""The CLI's tables at any width: every figure printed whole (never "489…"), folded into
stacked tables or one line per figure when narrow, complete when piped; four formats; the
device state before the cases said once for the cases that shared it."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from rich.console import Console

from harness.cli import views
from harness.drivers.local import LocalDriver
from harness.plan.planner import Case
from harness.analysis.tables import summary_frame, tidy_frame
from harness.records import Metric
from harness.store.db import ExecutionRaw, Store, now_iso
from harness.telemetry.state import DeviceState, capture_state, summary_parts

from .conftest import REPO

CASES = [Case("llamabench", "prefill", n, 0, 0) for n in (512, 16384)] + [Case("llamabench", "decode", 0, 64, d) for d in (0, 16384)]
# Figures as wide as a fast GPU and a big model give: thousands with separators, ± intervals.
METRICS = {
    "prefill_tps": (48_912.3, "tok/s"), "decode_tps": (1_234.56, "tok/s"), "peak_rss_mb": (12_345.6, "MB"),
    "peak_rss_anon_mb": (10_987.6, "MB"), "peak_rss_file_mb": (1_358.0, "MB"), "temp_max_c": (87.25, "°C"),
    "energy_j": (1_234.5, "J"), "avg_power_w": (312.45, "W"),
}


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """A run stored as the runner stores one: three processes per case, the device state this
    host had before each (the same for three cases, another for the last), metrics spread so
    every cell has a ± interval."""
    store = Store(tmp_path_factory.mktemp("views") / "results")
    state = capture_state(LocalDriver())
    other = replace(state, mem_available_mb=(state.mem_available_mb or 0) + 1234)
    run_id = store.create_run(device="local", suite_name="wide", suite_text="", repetitions=3, timeout_s=60, cases=CASES,
                              model_sha256="cd" * 32, model_info={"filename": "big.gguf"}, runtime_key=None, runtime_manifest=None,
                              facts={"name": "local", "cpu_model": "a CPU with a long marketing name", "cores": 2, "extra": {}},
                              command={}, version="t")
    for rep in range(3):
        for i, case in enumerate(CASES):
            metrics = [Metric(name, value * (1 + 0.03 * rep + 0.01 * i), unit) for name, (value, unit) in METRICS.items()]
            raw = ExecutionRaw(state=other if i == 3 else state, telemetry={"power_scope": "cpu package (RAPL)"})
            store.record_execution(run_id, case, rep, status="ok", exit_code=0, wall_s=1.0, started_at=now_iso(), error=None,
                                   build=None, raw=raw, metrics=metrics)
    store.finish_run(run_id, "finished")
    return store, run_id


def _grid(store, run_id) -> views.Grid:
    return views.summary_grid(store.run(run_id), summary_frame(tidy_frame(store, [run_id])))


def _rendered(store, run_id, width: int, fmt: str = "table") -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    views.show_run(console, store, run_id, fmt)
    return console.file.getvalue()


def _figures(grid: views.Grid) -> list[str]:
    return [cell for row in grid.rows for cell in row[grid.keys:]]


def test_the_fixture_is_wider_than_a_terminal(wide_run):
    """Guards the tests below: the full table needs far more than 80 columns."""
    store, run_id = wide_run
    grid = _grid(store, run_id)
    assert len(grid.header) == 9 and all(" ± " in f for f in _figures(grid))
    assert len(views.plan(grid, 80)) > 1 and len(views.plan(grid, views.UNBOUNDED)) == 1


@pytest.mark.parametrize("width", [200, 80, 60, 40, 24])
@pytest.mark.parametrize("fmt", ["table", "plain"])
def test_every_figure_whole_at_any_width(wide_run, width, fmt):
    store, run_id = wide_run
    text = _rendered(store, run_id, width, fmt)
    assert "…" not in text
    lines = text.splitlines()
    for figure in _figures(_grid(store, run_id)):
        assert any(figure in line for line in lines), f"{figure!r} is not whole at width {width}"
    if fmt == "plain":
        assert not set("┃│━─┏┡└") & set(text)
    boxed = [line for line in lines if line.startswith(("┃", "│", "┏", "└"))]
    assert all(len(line) <= width for line in boxed), "a table is wider than the console"


def test_narrow_tables_fold_and_repeat_the_case(wide_run):
    store, run_id = wide_run
    grid = _grid(store, run_id)
    folds = views.plan(grid, 80)
    assert all(fold.columns[0] == 0 for fold in folds)
    assert sorted(i for fold in folds for i in fold.columns[1:]) == list(range(1, len(grid.header)))
    text = _rendered(store, run_id, 80)
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert sum("prefill p512" in line for line in rows) == len(folds)  # the case column is in every stacked table
    very_narrow = _rendered(store, run_id, 24)
    assert views.plan(grid, 24) is None and "  prefill tok/s" in very_narrow  # one line per figure


def test_formats_csv_and_markdown(wide_run):
    store, run_id = wide_run
    grid = _grid(store, run_id)
    rows = list(csv.reader(io.StringIO(views.to_csv(grid))))
    assert tuple(rows[0]) == grid.header and [tuple(r) for r in rows[1:]] == list(grid.rows)
    markdown = views.to_markdown(grid)
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert table[0] == "| " + " | ".join(grid.header) + " |" and set(table[1]) <= set("|-: ")
    assert len(table) == 2 + len(grid.rows) and all(f in markdown for f in _figures(grid))
    assert markdown.startswith("**run ") and "- mean ± 95% CI" in markdown
    shown = _rendered(store, run_id, 40, "markdown")
    assert markdown in shown and "\n- before every case: power scope cpu package (RAPL), cpu " in shown
    csv_text = _rendered(store, run_id, 40, "csv")
    assert "before" not in csv_text and csv_text.startswith("case,")
    document = json.loads(_rendered(store, run_id, 40, "json").splitlines()[0])
    assert [tuple(row.values()) for row in document["rows"]] == list(grid.rows) and document["caption"] == list(grid.caption)


def test_the_state_before_the_cases_is_what_they_shared_then_what_differed(wide_run):
    """Nine near-identical long lines were printed under a real run's table: now what every
    case saw is said once, and per case only what differed (cases that differed alike share a line)."""
    store, run_id = wide_run
    states = {e.case_key: e.raw.state for e in store.executions(run_id)}
    free = {case.label: summary_parts(states[case.key])["free"] for case in CASES}
    shared, *differed = views.condition_lines(store, run_id)
    assert shared.startswith("before every case: power scope cpu package (RAPL), cpu ") and "load " in shared
    assert "MB free" not in shared
    assert differed == [f"before prefill p512, prefill p16384, decode n64: {free['prefill p512']}",
                        f"before decode n64 @d16384: {free['decode n64 @d16384']}"]


def test_one_case_has_one_whole_line(tmp_path):
    store = Store(tmp_path / "results")
    run_id = store.create_run(device="local", suite_name="one", suite_text="", repetitions=1, timeout_s=60, cases=CASES[:1],
                              model_sha256="cd" * 32, model_info={}, runtime_key=None, runtime_manifest=None, facts={"name": "local"},
                              command={}, version="t")
    raw = ExecutionRaw(state=DeviceState(load_avg=(0.5,), mem_available_mb=2048))
    store.record_execution(run_id, CASES[0], 0, status="ok", exit_code=0, wall_s=1.0, started_at=now_iso(), error=None, build=None, raw=raw,
                           metrics=[])
    assert views.condition_lines(store, run_id) == [
        "before prefill p512: power scope none (no power sensor), cpu no cpufreq, no temperature, load 0.5, 2048 MB free"]


def edgebench_piped(*args: str, columns: str | None) -> subprocess.CompletedProcess[str]:
    """The real command with stdout a pipe, as in a CI log; COLUMNS as given or unset."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"PYTHONPATH": str(REPO)}
    env |= {"COLUMNS": columns} if columns else {}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("columns", [None, "80", "60"])
def test_results_show_never_cuts_a_figure(wide_run, columns):
    """What was seen: at 80 columns, or piped to a file, the table cut the figures ("489…")."""
    store, run_id = wide_run
    shown = edgebench_piped("results", "show", run_id, "--results", str(store.root), columns=columns)
    assert shown.returncode == 0, shown.stderr
    assert "…" not in shown.stdout
    lines = shown.stdout.splitlines()
    for figure in _figures(_grid(store, run_id)):
        assert any(figure in line for line in lines), figure
    assert shown.stdout.count("before every case: ") == 1 and shown.stdout.count("\nbefore ") == 3  # shared, then two differences
    if columns is None:  # piped with no width: one table, as wide as it needs
        assert sum(line.startswith("│ prefill p512 ") for line in lines) == 1


def test_results_show_formats(wide_run):
    store, run_id = wide_run
    for fmt, mark in (("plain", "prefill tok/s"), ("csv", "case,prefill tok/s"), ("markdown", "| case | prefill tok/s")):
        shown = edgebench_piped("results", "show", run_id, "--format", fmt, "--results", str(store.root), columns="80")
        assert shown.returncode == 0 and mark in shown.stdout, shown.stderr
    bad = edgebench_piped("results", "show", run_id, "--format", "html", "--results", str(store.root), columns=None)
    assert bad.returncode == 2 and "table, plain, csv, markdown" in bad.stderr


@pytest.fixture(scope="module")
def table_commands(wide_run, tmp_path_factory) -> dict[str, tuple[list[str], str]]:
    """Every command that prints a table, against the wide run's store (with a lab of one
    finished job and a schedule added): its arguments and its table's first column."""
    from harness.lab.app import queue_for
    from harness.lab.jobs import LabRequest, create_jobs, set_job
    from harness.lab.schedule import add_schedule

    store, run_id = wide_run
    folder = tmp_path_factory.mktemp("commands")
    inventory = folder / "lab.toml"
    inventory.write_text(f'[[device]]\nname = "fa"\ndriver = "local"\nworkdir = "{folder / "fa"}"\n')
    (job,) = create_jobs(store, "lab-f", LabRequest(("fa",), "quick"), "quick", "", {"fa": ("board:f", queue_for("board:f"))})
    set_job(store, job.id, status="done")
    add_schedule(store, inventory, LabRequest(("fa",), "quick"), "0 2 * * *", None)
    where = ["--results", str(store.root)]
    return {"results list": (["results", "list", *where], "run"), "results show": (["results", "show", run_id, *where], "case"),
            "compare": (["compare", run_id, run_id, *where], "case"), "claims": (["claims", *where], "claim"),
            "devices list": (["devices", "list", "--inventory", str(inventory)], "device"),
            "devices check": (["devices", "check", "fa", "--inventory", str(inventory)], "device"),
            "lab status": (["lab", "status", "lab-f", *where], "job"), "lab wait": (["lab", "wait", "lab-f", *where], "job"),
            "lab schedule list": (["lab", "schedule", "list", *where], "schedule")}


@pytest.mark.parametrize("command", ["results list", "results show", "compare", "claims", "devices list", "devices check", "lab status",
                                     "lab wait", "lab schedule list"])
def test_every_table_command_takes_the_formats(table_commands, command):
    """Each table goes through views.Grid, so csv and json (and plain, markdown) work on every one."""
    args, first = table_commands[command]
    as_csv = edgebench_piped(*args, "--format", "csv", columns=None)
    assert as_csv.returncode == 0 and as_csv.stdout.startswith(f"{first},"), as_csv.stdout + as_csv.stderr
    as_json = edgebench_piped(*args, "--format", "json", columns=None)
    assert as_json.returncode == 0, as_json.stderr
    documents = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert documents and all(first in row for row in documents[0]["rows"]), as_json.stdout
    assert documents[0]["rows"] or command == "claims"  # no stored run tests a published claim
    bad = edgebench_piped(*args, "--format", "yaml", columns=None)
    assert bad.returncode == 2 and "unknown format 'yaml'" in bad.stderr
