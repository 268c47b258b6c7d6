"""llama-bench JSONL parsing on recorded output, and on live output of the real binary."""

from __future__ import annotations

import pytest

from harness.drivers.base import Completed
from harness.engines import EngineOutputError
from harness.engines.llamabench import MARK_PREFIX, LlamaBench, measured_windows, parse_jsonl
from harness.records import Case

from .conftest import DATA

REC = DATA / "llamabench"


def _completed(stdout: str, stderr: str = "", code: int = 0) -> Completed:
    return Completed(("llama-bench",), code, stdout, stderr, 1.0)


def test_recorded_prefill_output_gives_tokens_per_second_and_samples():
    case = Case("llamabench", "prefill", 16, 0, 0, inprocess_reps=2)
    result = LlamaBench().parse(case, _completed((REC / "prefill_p16_r2.jsonl").read_text()))
    metric, load = result.metrics
    assert metric.name == "prefill_tps" and metric.unit == "tok/s"
    assert load.name == "load_s" and load.value is None and "no model load time" in load.missing_reason
    assert len(metric.samples) == 2 and metric.value == pytest.approx(sum(metric.samples) / 2, rel=1e-3)
    assert result.build == "llama.cpp 0c1e570 (0)"
    settings = result.effective
    assert settings["n_threads"] == 2 and settings["type_k"] == "f16" and settings["load_mode"] == "auto"
    assert settings["backends"] == "CPU" and "samples_ns" not in settings and "avg_ts" not in settings
    assert result.windows == () and "--progress" in result.no_window  # no sampler stamped its marks


def test_windows_come_from_the_stamped_marks_and_samples_ns():
    case = Case("llamabench", "prefill", 16, 0, 0, inprocess_reps=2)
    marks = [(10.0, "llama-bench: benchmark 1/1: starting"), (10.2, "llama-bench: benchmark 1/1: warmup prompt run"),
             (10.5, "llama-bench: benchmark 1/1: prompt run 1/2"), (10.6, "llama-bench: benchmark 1/1: prompt run 2/2")]
    result = LlamaBench().parse(case, _completed((REC / "prefill_p16_r2.jsonl").read_text()), marks)
    assert result.windows == ((10.5, 0.042785003), (10.6, 0.044108568))  # samples_ns of the recorded run
    assert result.tokens == 2 * 16 and result.no_window is None
    wrong = LlamaBench().parse(case, _completed((REC / "prefill_p16_r2.jsonl").read_text()), marks[:3])
    assert wrong.windows == () and "do not match" in wrong.no_window


def test_measured_windows_start_at_the_timed_marks():
    marks = [(1.0, "llama-bench: benchmark 1/1: starting"), (1.5, "llama-bench: benchmark 1/1: warmup prompt run"),
             (2.0, "llama-bench: benchmark 1/1: depth run 1/2"), (3.0, "llama-bench: benchmark 1/1: generation run 1/2"),
             (4.0, "llama-bench: benchmark 1/1: depth run 2/2 (cached)"),
             (5.0, "llama-bench: benchmark 1/1: generation run 2/2")]
    assert measured_windows(marks, [500_000_000, 250_000_000]) == ((3.0, 0.5), (5.0, 0.25))
    assert measured_windows(marks, [1, 2, 3]) == ()  # marks and repetitions disagree: no window


def test_argv_asks_for_the_marks_the_windows_need():
    engine = LlamaBench()
    argv = engine.argv(Case("llamabench", "decode", 0, 4, 16), runtime_dir="/rt", model_path="/m.gguf")
    assert argv[0] == "/rt/bin/llama-bench" and "--progress" in argv
    assert engine.marks == MARK_PREFIX == "llama-bench: "


def test_recorded_decode_at_depth_and_pg():
    decode = Case("llamabench", "decode", 0, 4, 16, inprocess_reps=2)
    metric, _load = LlamaBench().parse(decode, _completed((REC / "decode_n4_d16_r2.jsonl").read_text())).metrics
    assert metric.name == "decode_tps" and len(metric.samples) == 2
    pg = Case("llamabench", "pg", 16, 4, 0)
    metric, _load = LlamaBench().parse(pg, _completed((REC / "pg_16_4.jsonl").read_text())).metrics
    assert metric.name == "pg_tps"


def test_output_of_another_case_is_rejected():
    other = Case("llamabench", "prefill", 512, 0, 0)
    with pytest.raises(EngineOutputError, match="asked for"):
        LlamaBench().parse(other, _completed((REC / "prefill_p16_r2.jsonl").read_text()))


def test_no_result_line_names_the_stderr_tail():
    case = Case("llamabench", "prefill", 16, 0, 0)
    stderr = (REC / "missing_model.stderr").read_text()
    with pytest.raises(EngineOutputError, match="failed to load model"):
        LlamaBench().parse(case, _completed("", stderr))


def test_malformed_jsonl_and_non_json_lines():
    assert parse_jsonl("build: 1\n\n") == []
    with pytest.raises(EngineOutputError, match="malformed"):
        parse_jsonl('{"avg_ts": 1,\n')


@pytest.mark.slow
def test_live_llama_bench_output_parses(host_runtime, default_model):
    from harness.drivers.local import LocalDriver

    case = Case("llamabench", "decode", 0, 4, 16, inprocess_reps=2)
    argv = LlamaBench().argv(case, runtime_dir=str(host_runtime.root), model_path=str(default_model))
    completed = LocalDriver().run(argv, timeout=300)
    assert completed.ok, completed.stderr
    result = LlamaBench().parse(case, completed)
    metric, _load = result.metrics
    assert metric.value > 0 and len(metric.samples) == 2
    assert result.build.startswith("llama.cpp 0c1e570")
    progress = [line for line in completed.stderr.splitlines() if line.startswith(MARK_PREFIX)]
    assert any(": generation run 2/2" in line for line in progress)  # what the probe stamps
    assert completed.rusage and completed.rusage.max_rss_kb > 50_000  # the model is ~92 MB
