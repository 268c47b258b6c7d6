"""The CLI end to end: real llama-bench, real model, real llama-cpp-python, through `edgebench`."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

TINY = """
name = "tiny"
repetitions = 2
inprocess_repetitions = 2
[[prefill]]
prompt = 16
[[decode]]
tokens = 4
depth = [0, 16]
[[latency]]
prompt = 16
tokens = 4
"""


def edgebench(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True, timeout=1500,
        env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO), **(env or {})},
    )


def test_bad_inputs_fail_before_anything_runs(tmp_path):
    bad_suite = tmp_path / "bad.toml"
    bad_suite.write_text("[[prefill]]\nprompt = 'many'\n")
    result = edgebench("run", "--suite", str(bad_suite), "--results", str(tmp_path / "r"), cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.toml" in result.stderr and "prefill[0].prompt" in result.stderr
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("hello")
    result = edgebench("run", "--model", str(not_gguf), "--results", str(tmp_path / "r"), cwd=tmp_path)
    assert result.returncode == 2 and "not a GGUF" in result.stderr
    result = edgebench("run", "--device", "pixel9", "--results", str(tmp_path / "r"), cwd=tmp_path)
    assert result.returncode == 2 and "pixel9" in result.stderr
    assert not (tmp_path / "r" / "runs").exists() or not any((tmp_path / "r" / "runs").iterdir())


def test_dry_run_counts_a_quality_case_once_and_starts_nothing(tmp_path, default_model):
    plan = edgebench("run", "--suite", "quick", "--dry-run", "--results", str(tmp_path / "r"), cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "25 processes (3 rounds of 8 cases, and 1 case run once)" in plan.stdout  # not 27: quality runs once
    alone = edgebench("run", "--suite", "quick", "--dry-run", "--no-quality", "-r", "1", "--results", str(tmp_path / "r"), cwd=tmp_path)
    assert alone.returncode == 0 and "8 processes (1 round of 8 cases)" in alone.stdout, alone.stderr
    assert not (tmp_path / "r" / "runs").exists() or not any((tmp_path / "r" / "runs").iterdir())
    as_csv = edgebench("run", "--suite", "quick", "--dry-run", "--format", "csv", "--results", str(tmp_path / "r"), cwd=tmp_path)
    assert as_csv.returncode == 0 and as_csv.stdout.startswith("#,engine,case,context,in-process reps,threads\n"), as_csv.stderr
    (plan,) = [json.loads(line) for line in edgebench("run", "--suite", "quick", "--dry-run", "--format", "json", "--results",
                                                      str(tmp_path / "r"), cwd=tmp_path).stdout.splitlines()]
    assert plan["title"].startswith("plan: suite quick") and [row["#"] for row in plan["rows"]] == [str(i) for i in range(1, 10)]


LONG_STATUS = ("extracting SmolLM2-135M-Instruct-Q4_1.gguf from llama_cpp_python-0.3.36-cp311-cp311-manylinux_2_17_x86_64.whl "
               "(the default model, pinned by sha256) into the edgebench cache")


def test_status_lines_do_not_wrap_where_stderr_is_not_a_terminal(monkeypatch):
    """Piped (a CI log, `2>file`), rich took stderr to be 80 columns wide and broke a status line
    mid-sentence, before the wheel's name; the first run must read whole lines."""
    from harness.cli import views

    monkeypatch.delenv("COLUMNS", raising=False)
    console = views.status_console(io.StringIO())
    console.print(f"[dim]{LONG_STATUS}[/]")
    assert console.file.getvalue() == LONG_STATUS + "\n"
    monkeypatch.setenv("COLUMNS", "80")  # a width set for the tables still leaves status lines whole
    console = views.status_console(io.StringIO())
    console.print(LONG_STATUS)
    assert console.file.getvalue() == LONG_STATUS + "\n"


def test_the_progress_of_a_run_is_one_line_per_step_where_not_a_terminal(monkeypatch):
    """The run's progress bar, as a non-terminal shows it once at its end: a long case label and
    figure on one line."""
    from rich.progress import Progress

    from harness.cli import run, views

    monkeypatch.delenv("COLUMNS", raising=False)
    console = views.status_console(io.StringIO())
    monkeypatch.setattr(run, "console", console)
    progress = run._progress()
    assert isinstance(progress, Progress)
    with progress:
        task = progress.add_task(f"[9/9] {LONG_STATUS} (round 3)", total=9, last="12,345.6 tok/s")
        progress.update(task, completed=9)
    (line,) = [line for line in console.file.getvalue().splitlines() if line.strip()]
    assert LONG_STATUS in line and line.rstrip().endswith("12,345.6 tok/s")


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path, host_runtime, default_model):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    results = tmp_path / "results"
    run = edgebench("run", "--suite", str(suite), "--results", str(results), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    for text in ("prefill tok/s", "decode tok/s", "TTFT ms", "peak RSS MB", "prefill p16", "decode n4 @d16"):
        assert text in run.stdout, text
    shown = json.loads(edgebench("results", "show", "--json", "--results", str(results), cwd=tmp_path).stdout)
    assert shown["run"]["status"] == "finished"
    by_metric = {(r["case"], r["metric"]): r for r in shown["summary"]}
    prefill = by_metric[("prefill p16", "prefill_tps")]
    assert prefill["n"] == 2 and prefill["mean"] > 0 and prefill["ci_low"] <= prefill["mean"] <= prefill["ci_high"]
    assert by_metric[("latency p16+n4", "ttft_ms")]["n"] == 2
    assert by_metric[("prefill p16", "peak_rss_mb")]["mean"] > 50  # the model's weights are ~92 MB
    run_id = shown["run"]["id"]
    report = results / "runs" / run_id / "report.html"
    html = report.read_text()
    assert "data:image/png;base64," in html and "0c1e570" in html and "SmolLM2" in html
    plan = edgebench("run", "--suite", str(suite), "--results", str(results), "--dry-run", cwd=tmp_path)
    assert plan.returncode == 0 and "from earlier runs on this device" in plan.stdout
    _every_figure_whole(run_id, results)


def _every_figure_whole(run_id: str, results: Path) -> None:
    """The real run's table at 80 and 60 columns and piped with no width: every figure the csv
    format holds (it is never laid out, so never cut) is printed whole on one line."""
    from .test_views import edgebench_piped

    rows = list(csv.reader(io.StringIO(edgebench_piped("results", "show", run_id, "--format", "csv", "--results", str(results),
                                                        columns=None).stdout)))
    header = rows[0]
    figures = [cell for row in rows[1:] if len(row) == len(header) and row[0] != header[0] for cell in row[1:]]
    assert header[:2] == ["case", "prefill tok/s"] and len(figures) >= 3 * len(header) - 3
    for columns in ("80", "60", None):
        for fmt in ("table", "plain"):
            shown = edgebench_piped("results", "show", run_id, "--format", fmt, "--results", str(results), columns=columns)
            assert shown.returncode == 0 and "…" not in shown.stdout, shown.stderr
            lines = shown.stdout.splitlines()
            assert [f for f in figures if not any(f in line for line in lines)] == [], (columns, fmt)
    markdown = edgebench_piped("results", "show", run_id, "--format", "markdown", "--results", str(results), columns="60").stdout
    assert "| case | prefill tok/s |" in markdown and all(f in markdown for f in figures)


FAILING_MIDDLE = """
name = "failing-middle"
repetitions = 2
inprocess_repetitions = 1
[[prefill]]
prompt = 16
[[decode]]
tokens = 4
flash_attn = "off"
cache_type_v = "q8_0"   # llama.cpp refuses a quantized V cache without flash attention
[[pg]]
prompt = 16
tokens = 4
"""


@pytest.mark.slow
def test_real_runtime_failing_mid_run_keeps_the_other_cases(tmp_path, host_runtime, default_model):
    suite = tmp_path / "failing.toml"
    suite.write_text(FAILING_MIDDLE)
    results = tmp_path / "results"
    run = edgebench("run", "--suite", str(suite), "--results", str(results), cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert "failed to create context" in run.stdout
    shown = json.loads(edgebench("results", "show", "--json", "--results", str(results), cwd=tmp_path).stdout)
    assert shown["run"]["status"] == "failed"
    means = {(r["case"], r["metric"]): r for r in shown["summary"]}
    assert means[("prefill p16", "prefill_tps")]["n"] == 2
    assert means[("pg p16+n4", "pg_tps")]["n"] == 2
    assert not any(case.startswith("decode") and metric == "decode_tps" for case, metric in means)
    html = (results / "runs" / shown["run"]["id"] / "report.html").read_text()
    assert "Failed processes" in html and "failed to create context" in html


def test_a_disk_failure_in_any_command_is_one_line_and_a_missing_folder_bad_input(tmp_path):
    """Not only `run`: every command turns a database, disk or network failure into one line
    (a database error's traceback would print its statement and parameters)."""
    from harness.store.db import Store

    from .test_store import CASES, new_run, record

    with Store(tmp_path / "r") as store:
        run_id = new_run(store)
        record(store, run_id, CASES[0], 0, 10.0)
    full = edgebench("results", "export", run_id, "--results", str(tmp_path / "r"), "-o", "/dev/full", cwd=tmp_path)
    assert full.returncode == 3, full.stderr
    assert "disk: No space left on device" in full.stderr and "Traceback" not in full.stderr
    assert len(full.stderr.strip().splitlines()) == 1
    missing = edgebench("results", "export", run_id, "--results", str(tmp_path / "r"), "-o", str(tmp_path / "no" / "t.csv"), cwd=tmp_path)
    assert missing.returncode == 2 and "No such file or directory" in missing.stderr and "Traceback" not in missing.stderr
