"""The report and comparison over a synthetic store: tables, plots, escaping of hostile
strings, a flagged 10% regression, and a real headless Chromium loading the file."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from harness.analysis.compare import compare_frames
from harness.analysis.tables import summary_frame, tidy_frame, wide_table
from harness.records import Case, Metric
from harness.report.html import render_report
from harness.runtimes.models import ModelInfo
from harness.store.db import ExecutionRaw, Store

from .test_claims import store_with_default_run  # noqa: F401 (a fixture)

HOSTILE = '<script>alert("pwned")</script>'
MODEL = ModelInfo(path=f"/m/{HOSTILE}.gguf", filename=f"{HOSTILE}.gguf", sha256="ab" * 32, file_size=1, architecture="llama",
                  name=HOSTILE, parameter_count=1, quantization="Q4_1", context_length=8192, n_layers=1, n_embd=1,
                  n_head=1, n_head_kv=1, tensor_count=1, gguf_version=3)
CASES = [Case("llamabench", "prefill", n, 0, 0, inprocess_reps=2) for n in (128, 512)] + [
    Case("llamabench", "decode", 0, 64, d, inprocess_reps=2) for d in (0, 512)
]


def _run(store: Store, speed: float, seed: int) -> str:
    rng = np.random.default_rng(seed)
    run_id = store.create_run(
        device=HOSTILE, suite_name="quick", suite_text="", repetitions=6, timeout_s=60, cases=CASES,
        model_sha256="ab" * 32, model_info=MODEL.to_json(),
        runtime_key=None, runtime_manifest=None, facts={"name": HOSTILE, "cpu_model": HOSTILE, "gpus": []},
        command={}, version="test",
    )
    for rep in range(6):
        for case in CASES:
            base = (500.0 if case.kind == "prefill" else 150.0) * speed / (1 + case.context / 4096)
            samples = tuple(float(v) for v in base * (1 + 0.01 * rng.standard_normal(2)))
            metrics = [
                Metric(f"{case.kind}_tps", sum(samples) / 2, "tok/s", samples=samples),
                Metric("peak_rss_mb", 200.0 + case.context / 50, "MB"),
                Metric("energy_j_per_token", 0.05 / speed, "J/token"),
                Metric.missing("temp_max_c", "°C", f"no sensor {HOSTILE}"),
            ]
            folder = store.artifacts_dir(run_id) / case.key  # written before the row, as the runner does: stored with it
            folder.mkdir(exist_ok=True)
            t0 = 100 + rep * 10 + CASES.index(case) * 2
            rows = [f"{t0 + i * 0.1:.3f},battery,{3 + 0.1 * i},W" for i in range(10)]
            (folder / f"rep{rep}.telemetry.csv").write_text("t_monotonic_s,source,value,unit\n" + "\n".join(rows) + "\n")
            store.record_execution(run_id, case, rep, status="ok", exit_code=0, wall_s=1.0, started_at="t",
                                   error=None, build=None, raw=ExecutionRaw(), metrics=metrics)
    store.finish_run(run_id, "finished")
    return run_id


@pytest.fixture
def two_runs(tmp_path):
    store = Store(tmp_path / "results")
    return store, _run(store, 1.0, seed=1), _run(store, 0.9, seed=2)


def test_wide_table_shape_and_missing_metrics_said_once(two_runs):
    store, a, _ = two_runs
    table = wide_table(summary_frame(tidy_frame(store, [a])))
    assert len(table.rows) == 4
    assert table.columns == ["prefill_tps", "decode_tps", "peak_rss_mb"]
    assert set(table.missing) == {"temp_max_c"}


def test_ten_percent_slowdown_flagged_identical_runs_not(two_runs):
    store, a, b = two_runs
    rows = compare_frames(tidy_frame(store, [a]), tidy_frame(store, [b]))
    throughput = [r for r in rows if r.metric.endswith("_tps")]
    assert len(throughput) == 4 and all(r.regression and r.verdict == "slower" for r in throughput)
    same = compare_frames(tidy_frame(store, [a]), tidy_frame(store, [a]))
    assert not any(r.regression for r in same) and all(r.verdict == "no significant change" for r in same)


def test_report_escapes_hostile_strings_and_embeds_every_plot(two_runs, tmp_path):
    store, a, b = two_runs
    html = render_report(store, [a, b], tmp_path / "report.html").read_text()
    assert HOSTILE not in html and "&lt;script&gt;" in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 5  # throughput, memory, power, energy, comparison
    from PIL import Image

    for data in images:
        assert Image.open(io.BytesIO(base64.b64decode(data))).size[0] > 100
    assert "REGRESSION" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing to fetch: it opens offline


def test_cli_compare_exits_non_zero_on_a_regression(two_runs, tmp_path):
    from .test_cli import edgebench

    store, a, b = two_runs
    results = str(store.root)
    flagged = edgebench("compare", a, b, "--results", results, "--json", cwd=tmp_path)
    assert flagged.returncode == 1
    assert {row["verdict"] for row in json.loads(flagged.stdout) if row["metric"].endswith("_tps")} == {"slower"}
    same = edgebench("compare", a, a, "--results", results, cwd=tmp_path)
    assert same.returncode == 0 and "B/A" in same.stdout
    export = tmp_path / "a.parquet"
    assert edgebench("results", "export", a, "--format", "parquet", "-o", str(export), "--results", results, cwd=tmp_path).returncode == 0
    import pandas as pd

    assert len(pd.read_parquet(export)) == 6 * 4 * 4


def test_report_claims_only_what_a_run_tests(store_with_default_run, two_runs, tmp_path):
    """What was seen: every report listed ten untested claims, each "quoted in edgebench issue 9
    (document not named there)". Now: tested claims with their published source, the rest one line."""
    store, run_id = store_with_default_run
    html = render_report(store, [run_id], tmp_path / "report.html").read_text()
    section = html[html.index("<h2>Published claims</h2>"):]
    section = section[:section.index("<h2", 10)] if "<h2" in section[10:] else section
    assert "smollm2-orin-nano-super-mlc-int4" in section and "NVIDIA Jetson AI Lab benchmark tables" in section
    assert "issue 9" not in html and "not named" not in html and "untested" not in section
    assert "qwen3-8b-rtx4090-140k-decode" not in section and "needs: device" not in section
    assert section.count("RTX 4090 with MiniCPM4-8B or Qwen3-8B") == 1 and section.count("Snapdragon 865 with any 1B model") == 1
    other, a, _ = two_runs  # a model no claim names
    html = render_report(other, [a], tmp_path / "other.html").read_text()
    assert "None of these runs tests a published claim" in html and html.count("Jetson AGX Orin with MiniCPM4-8B or Qwen3-8B") == 1


def headless_chromium(tmp_path) -> list[str]:
    """Chromium's command line, headless and offline with a profile of its own (skips where absent)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (scripts/setup.sh --test installs it)")
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]


def test_report_in_a_real_headless_browser(two_runs, tmp_path):
    flags = headless_chromium(tmp_path)
    store, a, b = two_runs
    report = render_report(store, [a, b], tmp_path / "report.html")
    dom = subprocess.run([*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # tables: results, decode roofline, stability, comparison (no claim names this model: one line, no table)
    assert dom.stdout.count("<table") == 4 and dom.stdout.count("<img") == 5
    assert "alert(" not in dom.stdout.replace("&lt;script&gt;alert(", "")
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    assert console_errors == []
    screenshot = tmp_path / "report.png"
    shot = subprocess.run([*flags, "--window-size=1300,5000", f"--screenshot={screenshot}", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("L"))
    assert pixels.min() < 100 and pixels.max() > 200  # something was drawn on a white page
