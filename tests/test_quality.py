"""Output quality beside speed, with the real llama-perplexity / llama-quantize and the real model.

Each run goes through `edgebench run` as a user runs it; the figures are read back from its
--json output, the table `results show` prints and the HTML report. Quality cases use one
chunk of 256 tokens so that each takes seconds on the host.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from harness.drivers.base import Completed
from harness.engines.perplexity import Perplexity
from harness.records import Case
from harness.runtimes.corpus import pydoc_text, resolve_corpus
from harness.runtimes.logits import LogitsError, LogitsHeader, read_header
from harness.runtimes.quantize import parse_types
from tests.test_cli import edgebench
from tests.test_models import write_tiny_gguf

DATA = Path(__file__).resolve().parent / "data" / "perplexity"
SPEED_AND_QUALITY = """
name = "speed-and-quality"
repetitions = 2
inprocess_repetitions = 1
mode = "none"
[[decode]]
tokens = 8
[[quality]]
context = 256
chunks = 1
"""
# the rope base of SmolLM2 is 100000: at 10 every position is rotated wrongly, on the device side only
WRONG = SPEED_AND_QUALITY + 'override_kv = "llama.rope.freq_base=float:10"\n'


def _suite(tmp_path: Path, text: str, name: str = "suite.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _run(tmp_path: Path, suite_text: str, *extra: str) -> tuple[dict, object]:
    done = edgebench("run", "--suite", str(_suite(tmp_path, suite_text)), "--results", str(tmp_path / "results"), "--json", *extra,
                     cwd=tmp_path)
    return (json.loads(done.stdout) if done.returncode in (0, 1) and done.stdout.strip() else {}), done


# --- parsing recorded output and files (fast) ----------------------------------------------------

QUALITY_CASE = Case("perplexity", "quality", 512, 0, 0, quality=(("chunks", 1), ("corpus", "c" * 64), ("reference", "a" * 64)))


def _completed(stdout: str, stderr: str = "", exit_code: int = 0) -> Completed:
    return Completed(argv=("llama-perplexity",), exit_code=exit_code, stdout=stdout, stderr=stderr, wall_s=1.0)


def test_recorded_host_and_aarch64_outputs_parse_into_the_quality_figures():
    """Recorded here: the default model, pydoc corpus, 1 x 512, against the host CPU's logits,
    by the host runtime and by the linux-aarch64 runtime under qemu-aarch64."""
    host = Perplexity().parse(QUALITY_CASE, _completed((DATA / "kld-host-x86_64.stdout").read_text(),
                                                       (DATA / "kld-host-x86_64.stderr").read_text()))
    arm = Perplexity().parse(QUALITY_CASE, _completed((DATA / "kld-qemu-aarch64.stdout").read_text()))
    h = {m.name: m.value for m in host.metrics}
    a = {m.name: m.value for m in arm.metrics}
    assert h["top1_agreement"] == 100.0 and abs(h["kld_mean"]) < 1e-6 and h["ppl"] == pytest.approx(17.689958)
    assert a["kld_mean"] == pytest.approx(0.003963) and a["kld_p99"] == pytest.approx(0.013188)
    assert a["top1_agreement"] == pytest.approx(98.431) and a["top1_stderr"] == pytest.approx(0.780)
    assert a["rms_dp"] == pytest.approx(1.421) and a["ppl_stderr"] == pytest.approx(3.196983)
    assert host.effective["n_threads"] == 2 and host.effective["n_chunks"] == 1 and "AVX2 = 1" in host.effective["system_info"]
    assert not host.windows and "not of speed" in host.no_window


def test_output_without_statistics_is_a_failed_case_with_its_error_lines():
    from harness.engines import EngineOutputError

    log = "kl_divergence: inconsistent vocabulary (1000 vs 49152)\nkl_divergence: failed reading log-probs for chunk 0\n"
    with pytest.raises(EngineOutputError, match="inconsistent vocabulary"):
        Perplexity().parse(QUALITY_CASE, _completed("", log))


def test_the_device_argv_applies_the_numerics_settings_and_the_staged_logits():
    case = Case("perplexity", "quality", 256, 0, 0, settings=(("cache_type_k", "q4_0"), ("flash_attn", "on"), ("threads", 4)),
                quality=(("chunks", 2), ("override_kv", "llama.rope.freq_base=float:10"), ("reference", "a" * 64)))
    argv = Perplexity().argv(case, runtime_dir="/rt", model_path="/m.gguf", inputs={"logits": "/refs/base.logits"})
    assert argv[:4] == ["/rt/bin/llama-perplexity", "-m", "/m.gguf", "--kl-divergence-base"]
    flags = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("-")}
    assert flags["--kl-divergence-base"] == "/refs/base.logits" and "--kl-divergence" in argv
    assert (flags["-c"], flags["-b"], flags["--chunks"], flags["-ctk"], flags["-fa"], flags["-t"]) == ("256", "256", "2", "q4_0", "on", "4")
    assert flags["--override-kv"] == "llama.rope.freq_base=float:10"


def _logits_file(path: Path, header: LogitsHeader, cut: int = 0) -> Path:
    body = struct.pack("<8sIii", b"_logits_", header.n_ctx, header.n_vocab, header.n_chunk)
    path.write_bytes((body + bytes(header.expected_size - len(body)))[: header.expected_size - cut])
    return path


def test_logits_files_are_checked_whole(tmp_path):
    header = LogitsHeader(256, 1000, 2)
    assert read_header(_logits_file(tmp_path / "ok.logits", header)) == header
    with pytest.raises(LogitsError, match=r"truncated: .* but 2 chunk\(s\) of 256 tokens"):
        read_header(_logits_file(tmp_path / "cut.logits", header, cut=100))
    (tmp_path / "other.bin").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(LogitsError, match="not a reference logits file"):
        read_header(tmp_path / "other.bin")


def test_the_default_corpus_is_the_same_text_each_time(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEBENCH_CACHE", str(tmp_path))
    first, second = resolve_corpus(), resolve_corpus("pydoc")
    assert first == second and first.path.read_text(encoding="utf-8") == pydoc_text() and first.size > 400_000
    mine = tmp_path / "mine.txt"
    mine.write_text("some words\n")
    assert resolve_corpus(str(mine)).sha256 != first.sha256


def test_quantize_types_are_checked():
    assert parse_types("q8_0, Q4_K_M,Q8_0") == ["Q8_0", "Q4_K_M"]
    with pytest.raises(Exception, match="unknown type"):
        parse_types("Q9_9")


# --- real runs on the host ----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.usefixtures("host_runtime")
def test_the_default_model_against_itself_on_the_host_is_the_same_output(tmp_path):
    payload, done = _run(tmp_path, SPEED_AND_QUALITY)
    assert done.returncode == 0, done.stdout + done.stderr
    (quality,) = payload["quality"]
    assert quality["status"] == "ok" and quality["against_model"] and quality["differs"] is False
    assert abs(quality["kld_mean"]) < 1e-4 and quality["top1_agreement"] == 100.0 and quality["ppl"] > 1
    assert not any(r["output_differs"] for r in payload["summary"])
    run_id = payload["run"]["id"]
    facts = payload["run"]["facts"]["quality"]
    assert facts["corpus"]["name"] == "pydoc" and len(facts["corpus"]["sha256"]) == 64
    (reference,) = facts["references"].values()
    assert reference["n_ctx"] == 256 and reference["n_chunk"] == 1 and reference["is_model_under_test"]
    run_dir = tmp_path / "results" / "runs" / run_id
    assert (run_dir / "corpus.txt").read_text(encoding="utf-8") == pydoc_text()
    shown = edgebench("results", "show", run_id, "--results", str(tmp_path / "results"), cwd=tmp_path)
    assert "quality c256 x1 on pydoc: PPL" in shown.stdout and "same output as the host reference" in shown.stdout
    assert "Speed and quality" in (run_dir / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.usefixtures("host_runtime")
def test_a_device_side_that_computes_wrongly_fails_the_gate_and_marks_its_speed_figures(tmp_path):
    good, _ = _run(tmp_path, SPEED_AND_QUALITY)
    payload, done = _run(tmp_path, WRONG)
    assert done.returncode == 0, done.stdout + done.stderr
    (quality,) = payload["quality"]
    assert quality["differs"] is True and quality["kld_mean"] > 1 and quality["top1_agreement"] < 50
    marks = {r["case"]: r["output_differs"] for r in payload["summary"]}
    assert marks["decode n8"].startswith("output differs from the host reference (KLD ")
    run_id = payload["run"]["id"]
    shown = edgebench("results", "show", run_id, "--results", str(tmp_path / "results"), cwd=tmp_path).stdout
    assert "†" in shown and "† decode n8: output differs from the host reference" in shown
    report = (tmp_path / "results" / "runs" / run_id / "report.html").read_text(encoding="utf-8")
    assert "† output differs from the host reference" in report
    compared = edgebench("compare", good["run"]["id"], run_id, "--results", str(tmp_path / "results"), cwd=tmp_path)
    assert "output differs: not compared" in compared.stdout and "faster" not in compared.stdout
    sides = {line[:1]: line for line in compared.stdout.splitlines() if line[1:].startswith(": quality c256 x1")}
    assert "PPL" in sides["A"] and "same output as the host reference" in sides["A"]  # each side's quality beside the ratios
    assert "PPL" in sides["B"] and "output differs from the host reference (KLD" in sides["B"]


@pytest.mark.slow
@pytest.mark.usefixtures("host_runtime")
def test_a_q4_0_kv_cache_diverges_more_than_f16(tmp_path):
    suite = ('name = "kv"\nrepetitions = 1\nmode = "none"\n[settings]\nflash_attn = "on"\n'
             '[[quality]]\ncontext = 256\ncache_type_k = "f16"\ncache_type_v = "f16"\n'
             '[[quality]]\ncontext = 256\ncache_type_k = "q4_0"\ncache_type_v = "q4_0"\n')
    payload, done = _run(tmp_path, suite)
    assert done.returncode == 0, done.stdout + done.stderr
    kld = {q["case"]: q["kld_mean"] for q in payload["quality"]}
    f16, q4 = kld["quality c256 x1 [cache_type_k=f16 cache_type_v=f16 flash_attn=on]"], kld["quality c256 x1 [cache_type_k=q4_0 cache_type_v=q4_0 flash_attn=on]"]
    assert f16 < 1e-3 < q4 and q4 > 10 * max(f16, 1e-5)


@pytest.mark.slow
@pytest.mark.usefixtures("host_runtime")
def test_a_quantize_sweep_orders_kld_and_draws_the_frontier(tmp_path):
    refused = edgebench("run", "--suite", str(_suite(tmp_path, SPEED_AND_QUALITY)), "--results", str(tmp_path / "results"),
                        "--quantize", "Q8_0", cwd=tmp_path)
    assert refused.returncode == 2 and "already quantized (Q4_1)" in refused.stderr and "--allow-requantize" in refused.stderr
    payload, done = _run(tmp_path, SPEED_AND_QUALITY, "--quantize", "Q8_0,Q3_K_M,Q2_K", "--allow-requantize")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "requantizing" in done.stderr
    rows = {r["variant"]: r for r in payload["frontier"]}
    assert set(rows) == {"base", "Q8_0", "Q3_K_M", "Q2_K"} and rows["base"]["is_base"]
    assert abs(rows["base"]["kld_mean"]) < 1e-4
    assert rows["Q8_0"]["kld_mean"] < rows["Q3_K_M"]["kld_mean"] < rows["Q2_K"]["kld_mean"]
    assert rows["Q2_K"]["size_bytes"] < rows["Q3_K_M"]["size_bytes"] < rows["Q8_0"]["size_bytes"]
    assert any(r["pareto"] for r in rows.values()) and all(r["decode_tps"] > 0 for r in rows.values())
    runs = payload["runs"]
    assert len({r["run"]["id"] for r in runs}) == 4
    variant = next(r for r in runs if r["run"]["command"]["variant"] == "Q2_K")
    assert variant["quality"][0]["against_model"] is False and variant["quality"][0]["differs"] is None
    report = (tmp_path / "results" / "runs" / runs[-1]["run"]["id"] / "report.html").read_text(encoding="utf-8")
    assert "Speed against quality" in report and "Frontier" in report and "★" in report
    assert "compactifai-size (size_ratio) on sweep" in report  # the compression claims are checked against the sweep


@pytest.mark.slow
@pytest.mark.usefixtures("host_runtime")
def test_any_gguf_goes_through_the_same_quality_case(tmp_path, default_model):
    """A model edgebench has not seen before: a Q5_0 made here from the default one."""
    from harness.runtimes.models import inspect_model
    from harness.runtimes.quantize import make_variants
    from harness.run.session import build_host

    (variant,) = make_variants(build_host(), inspect_model(default_model), ["Q5_0"], allow_requantize=True)
    payload, done = _run(tmp_path, SPEED_AND_QUALITY, "--model", str(variant.path))
    assert done.returncode == 0, done.stdout + done.stderr
    (quality,) = payload["quality"]
    assert quality["status"] == "ok" and quality["differs"] is False and quality["top1_agreement"] == 100.0


@pytest.mark.slow
@pytest.mark.usefixtures("host_runtime")
def test_a_quality_case_that_crashes_is_a_failed_case_and_the_speed_cases_stand(tmp_path):
    payload, done = _run(tmp_path, SPEED_AND_QUALITY + 'override_kv = "llama.rope.freq_base=bogus:1"\n')
    assert done.returncode == 1, done.stdout + done.stderr  # a process failed
    (quality,) = payload["quality"]
    assert quality["status"] == "failed" and "exited with 1" in quality["error"]
    decode = [r for r in payload["summary"] if r["case"] == "decode n8" and r["metric"] == "decode_tps"]
    assert decode[0]["n"] == 2 and decode[0]["mean"] > 0


# --- bad input: a clear error before the device runs anything -----------------------------------

def _refused(tmp_path: Path, *extra: str, suite: str = SPEED_AND_QUALITY) -> str:
    done = edgebench("run", "--suite", str(_suite(tmp_path, suite)), "--results", str(tmp_path / "results"), *extra, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert not (tmp_path / "results" / "runs").exists() or not any((tmp_path / "results" / "runs").iterdir())
    return done.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("host_runtime")
def test_a_corpus_shorter_than_one_chunk_is_refused(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.\n")
    assert "tokenizes to only" in _refused(tmp_path, "--corpus", str(short))


def test_a_reference_with_another_vocabulary_is_refused(tmp_path):
    other = write_tiny_gguf(tmp_path / "other.gguf", tokens=["<s>", "</s>", "a", "b"])
    assert "another vocabulary" in _refused(tmp_path, "--reference", str(other))
    foreign = _logits_file(tmp_path / "foreign.logits", LogitsHeader(256, 1000, 1))
    assert "vocabulary of 1000 tokens" in _refused(tmp_path, "--reference", str(foreign))


def test_a_truncated_reference_logits_file_is_refused(tmp_path):
    cut = _logits_file(tmp_path / "cut.logits", LogitsHeader(256, 49152, 1), cut=4096)
    assert "reference logits truncated" in _refused(tmp_path, "--reference", str(cut))


def test_a_logits_file_of_another_context_is_refused(tmp_path):
    other = _logits_file(tmp_path / "c512.logits", LogitsHeader(512, 49152, 1))
    assert "computed at context 512, the quality case asks for 256" in _refused(tmp_path, "--reference", str(other))


def test_a_quality_context_longer_than_the_model_is_refused(tmp_path):
    stderr = _refused(tmp_path, suite=SPEED_AND_QUALITY.replace("context = 256", "context = 16384"))
    assert "quality.context" in stderr and "8192" in stderr
