"""The runtime axis and the openvino engine, with the real OpenVINO GenAI wheel and the real
default model (x86-64 only: elsewhere the engine's cases skip, and so do these tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.drivers.base import Completed
from harness.engines import get_engine
from harness.engines.openvino import OpenVino, not_available
from harness.errors import ConfigError
from harness.plan.planner import build_plan
from harness.plan.suites import parse_suite
from harness.records import Case

needs_openvino = pytest.mark.skipif(not_available() is not None, reason=f"openvino engine unavailable: {not_available()}")
SUITE = """
runtime = ["llama.cpp", "openvino"]
repetitions = 1
inprocess_repetitions = 1
[settings]
threads = 2
[[prefill]]
prompt = 32
[[latency]]
prompt = 32
tokens = 4
"""


def test_unknown_runtime_names_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected one of llama.cpp, openvino"):
        parse_suite('runtime = "mlc"\n[[prefill]]\nprompt = 8\n', "s.toml")
    out = subprocess.run([sys.executable, "-m", "harness", "run", "--runtime", "mlc", "--dry-run"], capture_output=True, text=True)
    assert out.returncode == 2 and "--runtime: key 'runtime': expected one of llama.cpp, openvino (got 'mlc')" in out.stderr


def test_unknown_openvino_property_is_refused_by_the_suite() -> None:
    with pytest.raises(ConfigError, match="kv_cache_presicion"):
        parse_suite('runtime = "openvino"\n[settings]\nkv_cache_presicion = "u8"\n[[prefill]]\nprompt = 8\n', "s.toml")


def test_each_runtime_gets_its_engine_and_keeps_only_its_settings() -> None:
    suite = parse_suite(SUITE + 'kv_cache_precision = ["u8", "f16"]\n', "s.toml")
    plan = build_plan(suite, context_length=8192, host=True, architecture="llama")
    by_engine = {(c.engine, c.kind): c for c in plan.cases}
    # the llama.cpp cases are the ones a suite without the axis plans: same keys, so stored runs still resume and compare
    alone = build_plan(parse_suite(SUITE.replace('runtime = ["llama.cpp", "openvino"]', ""), "s.toml"), context_length=8192, host=True)
    assert {c.key for c in alone.cases} <= {c.key for c in plan.cases}
    assert {get_engine(c.engine).runtime for c in plan.cases} == ({"llama.cpp", "openvino"} if not_available() is None else {"llama.cpp"})
    assert "kv_cache_precision" not in dict(by_engine["llamabench", "prefill"].settings)  # one llama.cpp case, not two


def test_a_runtime_that_cannot_run_a_case_skips_it_with_its_reason() -> None:
    suite = parse_suite(SUITE, "s.toml")
    remote = build_plan(suite, context_length=8192, host=False, architecture="llama")
    assert ("prefill p32 [threads=2] on openvino", "the openvino engine runs on the host only") in remote.skipped
    foreign = build_plan(suite, context_length=8192, host=True, architecture="mamba")
    assert any("cannot read architecture 'mamba'" in why for label, why in foreign.skipped if label.endswith("on openvino"))
    assert all(c.engine != "openvino" for c in foreign.cases) and foreign.cases
    served = build_plan(parse_suite(SUITE + "[[serve]]\nprompt = 8\ntokens = 4\n", "s.toml"), context_length=8192, host=True,
                        architecture="llama")
    assert ("serve on openvino", "the openvino runtime has no engine for serve tests") in served.skipped
    assert any(c.engine == "server" for c in served.cases)  # llama.cpp's llama-server still serves it
    flash = Case("openvino", "prefill", 32, 0, 0, settings=(("flash_attn", "on"),))
    assert OpenVino().unsupported(flash) == "OpenVINO cannot apply flash_attn=on"


def test_the_not_installed_reason_says_which_extra_installs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.engines.openvino as ov

    monkeypatch.setattr(ov, "find_spec", lambda name: None)
    monkeypatch.setattr(ov.platform, "machine", lambda: "x86_64")
    assert not_available() == "OpenVINO GenAI is not installed (pip install edgebench[openvino])"
    monkeypatch.setattr(ov.platform, "machine", lambda: "aarch64")
    assert not_available() == "OpenVINO GenAI ships x86-64 wheels only; this host is aarch64"


@needs_openvino
def test_an_absent_device_plugin_is_a_skip_reason() -> None:
    assert not_available("NPU") is None or "OpenVINO has no NPU device here" in not_available("NPU")


def _worker(model: Path, *extra: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.engines.openvino", "--model", str(model), *extra],
                          capture_output=True, text=True, env={**__import__("os").environ, "EDGEBENCH_CACHE": str(cache)})


@needs_openvino
def test_ir_cache_second_load_and_nothing_beside_the_model(default_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "models" / default_model.name
    model.parent.mkdir()
    model.symlink_to(default_model)  # a folder of the user's that must stay as it is
    args = ("--kind", "latency", "--prompt-tokens", "16", "--gen", "3", "--threads", "2", "--no-warmup")
    first = _worker(model, *args, cache=tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-2000:]
    second = _worker(model, *args, cache=tmp_path / "cache")
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert (one["load"]["kind"], two["load"]["kind"]) == ("converted", "cached")
    assert two["load"]["ns"] < one["load"]["ns"] and one["load"]["ir"] == two["load"]["ir"]
    assert sorted(p.name for p in model.parent.iterdir()) == [model.name]
    assert not any(p.name.endswith(".xml") for p in default_model.parent.iterdir())
    assert (Path(one["load"]["ir"]) / "openvino_model.xml").is_file()
    case = Case("openvino", "latency", 16, 3, 0, settings=(("threads", 2),), warmup=False)
    result = OpenVino().parse(case, Completed(("x",), 0, second.stdout, second.stderr, 1.0))
    metrics = {m.name: m for m in result.metrics}
    assert {"ttft_ms", "prefill_tps", "decode_tps", "itl_ms_p50", "load_s"} <= set(metrics)
    assert len(metrics["itl_ms_p50"].samples) == 2 and result.effective["threads"] == "2" and result.effective["load"] == "cached"
    assert result.build.startswith("openvino-genai 2026.4.1")


@needs_openvino
def test_a_value_openvino_rejects_fails_with_its_message_in_one_line(default_model: Path, tmp_path: Path) -> None:
    out = _worker(default_model, "--kind", "prefill", "--prompt-tokens", "8", "--kv-cache-precision", "bogus", cache=tmp_path)
    assert out.returncode == 2
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("openvino: ")]
    assert "Wrong value bogus for property key KV_CACHE_PRECISION" in line


def test_compare_names_the_runtime_of_each_side() -> None:
    import pandas as pd

    from harness.analysis.compare import compare_frames

    def frame(runtime: str, case: str, values: list[float]) -> pd.DataFrame:
        base = {"device": "local", "model": "m.gguf", "quantization": "Q4_1", "runtime_key": "k1", "runtime": runtime, "case": case,
                "kind": "prefill", "n_prompt": 32, "n_gen": 0, "depth": 0, "metric": "prefill_tps", "status": "ok"}
        return pd.DataFrame([{**base, "value": v, "rep": i} for i, v in enumerate(values)])

    (row,) = compare_frames(frame("llama.cpp", "prefill p32", [100.0, 101, 99, 100.5]),
                            frame("openvino", "prefill p32 on openvino", [50.0, 51, 49, 50.5]))
    assert "runtime: llama.cpp -> openvino" in row.differs and row.verdict == "slower"


@pytest.mark.slow
@needs_openvino
def test_a_runtime_sweep_stores_both_runtimes_side_by_side_and_the_gate_marks_only_openvino(default_model: Path,
                                                                                           tmp_path: Path) -> None:
    """One run of both runtimes with a quality case: each runtime's figures and verdict, the
    runtime column of the results table and of the report, the report's side-by-side section."""
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE + "[[quality]]\ncontext = 256\n")
    run = subprocess.run([sys.executable, "-m", "harness", "run", "--suite", str(suite), "--results", str(tmp_path / "r"), "--json"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(run.stdout)["summary"]
    seen = {(r["runtime"], r["metric"]) for r in rows if r.get("n")}
    for runtime in ("llama.cpp", "openvino"):
        assert {(runtime, "prefill_tps"), (runtime, "ttft_ms"), (runtime, "peak_rss_mb")} <= seen
    assert any(r["case"] == "prefill p32 [threads=2] on openvino" for r in rows)
    quality = {r["runtime"]: r for r in rows if r["metric"] == "kld_mean"}
    assert set(quality) == {"llama.cpp", "openvino"} and quality["llama.cpp"]["mean"] < 0.02
    assert quality["openvino"]["mean"] > 0.02  # OpenVINO 2026.4.1 on the default model: far past the gate (docs/runtimes.md)
    marked = {r["runtime"] for r in rows if r["metric"] == "prefill_tps" and r["output_differs"]}
    assert marked == {"openvino"}
    run_id = json.loads(run.stdout)["run"]["id"]
    shown = subprocess.run([sys.executable, "-m", "harness", "results", "show", run_id, "--results", str(tmp_path / "r"),
                            "--format", "json"], capture_output=True, text=True, check=True).stdout.splitlines()
    table = json.loads(shown[0])["rows"]  # the summary grid; a runtime column of its own where a run has two runtimes
    assert list(table[0])[:2] == ["case", "runtime"] and {row["runtime"] for row in table} == {"llama.cpp", "openvino"}
    report = tmp_path / "r" / "runs" / run_id / "report.html"
    assert '<th class="text">runtime</th>' in report.read_text(encoding="utf-8")
    _check_report_in_chromium(report, tmp_path)


def _check_report_in_chromium(report: Path, tmp_path: Path) -> None:
    """The report's "Runtimes side by side" section, as a real browser renders it: both runtimes,
    each with its own quality verdict."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (scripts/setup.sh --test installs it)")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    section = dom.stdout[dom.stdout.index("<h2>Runtimes side by side</h2>"):]
    section = section[:section.index("</table>")]
    rows = [row for row in section.split("<tr>")[2:]]
    by_runtime = {runtime: [row for row in rows if f'<td class="text">{runtime}</td>' in row] for runtime in ("llama.cpp", "openvino")}
    assert all(by_runtime.values())
    assert all("output differs from the host reference" in row for row in by_runtime["openvino"])
    assert not any("output differs" in row for row in by_runtime["llama.cpp"])


def test_a_lab_job_carries_its_runtimes_and_refuses_unknown_ones() -> None:
    from harness.lab.jobs import JobInputs, JobRefused, LabRequest, job_options_json, parse_job_options
    from harness.run.session import RunOptions

    options = RunOptions(device="d", runtimes=("llama.cpp", "openvino"))
    data = json.loads(json.dumps(job_options_json(options, JobInputs())))
    assert parse_job_options(data)[0].runtimes == ("llama.cpp", "openvino")
    with pytest.raises(JobRefused, match="runtimes"):
        parse_job_options({**data, "runtimes": ["mlc"]})
    request = LabRequest(("d",), "quick", runtimes=("openvino",))
    assert LabRequest.from_json(json.loads(json.dumps(request.to_json()))) == request
    assert RunOptions.from_json(json.loads(json.dumps(options.to_json()))) == options
