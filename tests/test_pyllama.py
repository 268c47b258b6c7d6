"""The pyllama engine: argv, parsing of recorded worker output, and one real worker run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness.drivers.base import Completed
from harness.engines import EngineOutputError, get_engine
from harness.engines.pyllama import SUPPORTED_SETTINGS, PyLlama, _parser, main
from harness.records import Case

from .conftest import DATA, REPO

RECORDED = DATA / "pyllama" / "smollm2_p64_n8_r3.json"


def _case(n_prompt: int = 64, n_gen: int = 8, reps: int = 3, **settings: object) -> Case:
    return Case(engine="pyllama", kind="latency", n_prompt=n_prompt, n_gen=n_gen, depth=0,
                settings=tuple(sorted(settings.items())), inprocess_reps=reps)


def _completed(stdout: str, stderr: str = "", exit_code: int = 0) -> Completed:
    return Completed(argv=("python",), exit_code=exit_code, stdout=stdout, stderr=stderr, wall_s=1.0)


def _worker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.engines.pyllama", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


# ---- parse() on recorded output ----------------------------------------------------------


def test_recorded_output_gives_every_metric_with_units() -> None:
    result = PyLlama().parse(_case(), _completed(RECORDED.read_text()))
    by_name = {m.name: m for m in result.metrics}
    assert set(by_name) == {"ttft_ms", "prefill_tps", "itl_ms_p50", "itl_ms_p90", "itl_ms_p99", "decode_tps", "load_s"}
    assert {m.name: m.unit for m in result.metrics} == {
        "ttft_ms": "ms", "prefill_tps": "tok/s", "itl_ms_p50": "ms", "itl_ms_p90": "ms", "itl_ms_p99": "ms",
        "decode_tps": "tok/s", "load_s": "s",
    }
    assert all(m.value is not None and m.value > 0 for m in result.metrics)
    runtime = json.loads(RECORDED.read_text())["runtime"]
    assert result.build == f"llama.cpp 0c1e570 (runtime {runtime['key'][:12]}, llama-cpp-python 0.3.36)"
    assert result.raw == [json.loads(RECORDED.read_text())]
    assert result.effective["n_threads"] == 2 and result.effective["n_batch"] == 256
    assert len(result.windows) == 3 and result.no_window is None and PyLlama.marks is None


def test_a_record_without_rep_start_times_has_no_window_and_says_why() -> None:
    record = json.loads(RECORDED.read_text())
    for rep in record["reps"]:
        del rep["start_monotonic_ns"]
    result = PyLlama().parse(_case(), _completed(json.dumps(record)))
    assert result.windows == () and "start_monotonic_ns" in result.no_window


def test_recorded_output_values_match_numpy() -> None:
    record = json.loads(RECORDED.read_text())
    by_name = {m.name: m for m in PyLlama().parse(_case(), _completed(RECORDED.read_text())).metrics}
    ttft_ms = np.array([rep["ttft_ns"] for rep in record["reps"]]) / 1e6
    gaps_ms = np.array([gap for rep in record["reps"] for gap in rep["itl_ns"]]) / 1e6

    assert by_name["ttft_ms"].samples == pytest.approx(ttft_ms)
    assert by_name["ttft_ms"].value == pytest.approx(ttft_ms.mean())
    assert by_name["prefill_tps"].value == pytest.approx(np.mean(64 / (ttft_ms / 1e3)))
    for q in (50, 90, 99):
        metric = by_name[f"itl_ms_p{q}"]
        assert metric.value == pytest.approx(np.percentile(gaps_ms, q))
        assert len(metric.samples) == 3 * 7  # n_gen - 1 gaps per rep, every rep kept
        assert metric.samples == pytest.approx(gaps_ms)
    per_rep_tps = [7 / (sum(rep["itl_ns"]) / 1e9) for rep in record["reps"]]
    assert by_name["decode_tps"].samples == pytest.approx(per_rep_tps)
    assert by_name["decode_tps"].value == pytest.approx(np.mean(per_rep_tps))
    assert by_name["load_s"].value == pytest.approx(record["load_ns"] / 1e9)


def test_single_generated_token_reports_missing_itl_with_reason() -> None:
    record = json.loads(RECORDED.read_text())
    record["n_gen"] = 1
    for rep in record["reps"]:
        rep["itl_ns"] = []
    metrics = PyLlama().parse(_case(n_gen=1), _completed(json.dumps(record))).metrics
    missing = {m.name: m.missing_reason for m in metrics if m.value is None}
    assert set(missing) == {"itl_ms_p50", "itl_ms_p90", "itl_ms_p99", "decode_tps"}
    assert all("n_gen=1" in reason for reason in missing.values())


# ---- parse() on bad output ---------------------------------------------------------------


def test_garbage_stdout_raises_with_stderr_tail() -> None:
    with pytest.raises(EngineOutputError, match="non-JSON(.|\n)*last words on stderr"):
        PyLlama().parse(_case(), _completed("llama_model_load: hello\n", stderr="noise\nlast words on stderr"))


def test_worker_traceback_raises_with_stderr_tail() -> None:
    traceback = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: Failed to load model from file'
    with pytest.raises(EngineOutputError, match="exited with 1(.|\n)*Failed to load model from file"):
        PyLlama().parse(_case(), _completed("", stderr=traceback, exit_code=1))


def test_empty_stdout_raises() -> None:
    with pytest.raises(EngineOutputError, match="0 lines"):
        PyLlama().parse(_case(), _completed(""))


def test_output_for_another_case_is_rejected() -> None:
    with pytest.raises(EngineOutputError, match="case asked for"):
        PyLlama().parse(_case(n_prompt=128), _completed(RECORDED.read_text()))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_prompt_evaluated", 1, "1 of 64 prompt tokens were computed"),
        ("n_cached_before", 64, "KV cache holding 64 tokens"),
        ("itl_ns", [1, 2], "2 inter-token gaps for n_gen=8"),
    ],
)
def test_a_rep_that_did_not_run_the_whole_case_is_rejected(field: str, value: object, message: str) -> None:
    record = json.loads(RECORDED.read_text())
    record["reps"][1][field] = value
    with pytest.raises(EngineOutputError, match=message):
        PyLlama().parse(_case(), _completed(json.dumps(record)))


# ---- argv() and the worker's argument checks ---------------------------------------------


def test_argv_carries_the_case_and_every_setting_as_flags() -> None:
    case = _case(n_prompt=501, n_gen=32, reps=2, threads=2, batch=512, ubatch=256, flash_attn="off",
                 cache_type_k="q8_0", n_gpu_layers=0, load_mode="mmap")
    argv = PyLlama().argv(case, runtime_dir="/runtime", model_path="/m.gguf")
    assert argv[:3] == [sys.executable, "-m", "harness.engines.pyllama"]
    pairs = dict(zip(argv[3::2], argv[4::2]))
    assert pairs == {
        "--runtime": "/runtime", "--model": "/m.gguf", "--prompt-tokens": "501", "--gen": "32", "--reps": "2",
        "--batch": "512", "--cache-type-k": "q8_0", "--flash-attn": "off", "--load-mode": "mmap",
        "--n-gpu-layers": "0", "--threads": "2", "--ubatch": "256",
    }
    assert "--no-warmup" not in argv


def test_worker_accepts_every_supported_setting_from_argv() -> None:
    values = {"flash_attn": True, "cache_type_k": "q8_0", "cache_type_v": "f16", "load_mode": "mmap+mlock"}
    case = _case(**{key: values.get(key, 1) for key in SUPPORTED_SETTINGS})
    args, unknown = _parser().parse_known_args(PyLlama().argv(case, runtime_dir="/runtime", model_path=__file__)[3:])
    assert unknown == []
    assert args.flash_attn is True and args.threads == 1


def test_argv_without_warmup() -> None:
    case = Case(engine="pyllama", kind="latency", n_prompt=8, n_gen=2, depth=0, warmup=False)
    assert PyLlama().argv(case, runtime_dir="/runtime", model_path="/m.gguf")[-1] == "--no-warmup"


def test_argv_without_a_runtime_is_refused() -> None:
    """llama-cpp-python has no llama.cpp of its own here: without the run's runtime it cannot load one."""
    with pytest.raises(EngineOutputError, match="needs the host runtime"):
        PyLlama().argv(_case(), runtime_dir="", model_path="/m.gguf")


def test_registry_finds_the_engine() -> None:
    engine = get_engine("pyllama")
    assert isinstance(engine, PyLlama) and engine.host_only


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt-tokens", "0", "--gen", "4"], "--prompt-tokens: must be a positive integer, got 0"),
        (["--prompt-tokens", "16", "--gen", "4", "--flash-attn", "auto"], "'auto' is not available"),
        (["--prompt-tokens", "16", "--gen", "4", "--load-mode", "dio"], "invalid choice: 'dio'"),
        (["--prompt-tokens", "16", "--gen", "4", "--cpu-mask", "0x3"], "cannot apply --cpu-mask 0x3"),
    ],
)
def test_worker_rejects_bad_arguments_by_name(tmp_path: Path, args: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(SystemExit) as exit_info:
        main(["--runtime", str(tmp_path), "--model", str(model), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_worker_rejects_a_missing_model_before_loading_anything() -> None:
    done = _worker("--runtime", "/nonexistent", "--model", "/nonexistent.gguf", "--prompt-tokens", "16", "--gen", "4")
    assert done.returncode == 2
    assert "no such model file: /nonexistent.gguf" in done.stderr
    assert done.stdout == ""


# ---- one real run ------------------------------------------------------------------------


def test_a_runtime_without_libllama_is_refused_by_name(tmp_path: Path, default_model: Path) -> None:
    """A cross-built (static) runtime holds no lib/libllama.so: the worker says so before importing llama_cpp."""
    (tmp_path / "manifest.json").write_text(json.dumps({"key": "k" * 64, "llama_cpp_commit": "0c1e570"}))
    done = _worker("--runtime", str(tmp_path), "--model", str(default_model), "--prompt-tokens", "16", "--gen", "4")
    assert done.returncode == 2 and "has no lib/libllama.so" in done.stderr and done.stdout == ""


@pytest.mark.slow
def test_real_worker_run_on_the_default_model(default_model: Path, host_runtime) -> None:
    """16 prompt tokens, 4 generated, 2 reps: every rep computes the whole prompt afresh, with
    the host runtime's own libllama (the build llama-bench runs)."""
    case = _case(n_prompt=16, n_gen=4, reps=2, threads=2)
    engine = PyLlama()
    argv = engine.argv(case, runtime_dir=str(host_runtime.root), model_path=str(default_model))
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300)
    completed = _completed(proc.stdout, proc.stderr, proc.returncode)

    result = engine.parse(case, completed)  # raises unless each rep evaluated exactly 16 tokens
    record = result.raw[0]
    assert Path(record["library"]) == host_runtime.root / "lib" / "libllama.so"
    assert record["runtime"] == {"key": host_runtime.manifest.key, "llama_cpp_commit": host_runtime.manifest.llama_cpp_commit}
    assert result.build == f"llama.cpp {host_runtime.manifest.llama_cpp_commit} (runtime {host_runtime.manifest.key[:12]}, llama-cpp-python 0.3.36)"
    assert [rep["n_prompt_evaluated"] for rep in record["reps"]] == [16, 16]
    assert [rep["n_cached_before"] for rep in record["reps"]] == [0, 0]
    assert [len(rep["itl_ns"]) for rep in record["reps"]] == [3, 3]
    assert record["settings"]["n_threads"] == record["settings"]["n_threads_batch"] == 2
    # each rep's window on the host's CLOCK_MONOTONIC: after the worker started, in order, as long as its clock says
    assert len(result.windows) == 2 and result.tokens == 2 * (16 + 4)
    (a, a_s), (b, b_s) = result.windows
    assert started < a < a + a_s <= b < b + b_s < time.monotonic()
    assert a_s == (record["reps"][0]["ttft_ns"] + sum(record["reps"][0]["itl_ns"])) / 1e9
    by_name = {m.name: m for m in result.metrics}
    assert by_name["ttft_ms"].value > 0 and len(by_name["ttft_ms"].samples) == 2
    assert len(by_name["itl_ms_p50"].samples) == 6
