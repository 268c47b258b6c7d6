"""The Python scorer of reference logits files (harness.engines.kldbase).

First against a file written here the way perplexity.cpp writes one (its quantization of the
log-probabilities reimplemented below), with figures computed independently in float64; then
the real check: llama-cpp-python's logits for the reference's own tokens, on the same libllama
as llama-perplexity, scored here must give what `llama-perplexity --kl-divergence` prints.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.drivers.base import Completed
from harness.engines.kldbase import UNITS, KldScorer, quality_metrics, read_base
from harness.engines.perplexity import Perplexity
from harness.hashing import sha256_file
from harness.records import Case
from harness.runtimes.corpus import resolve_corpus
from harness.runtimes.logits import MAGIC, LogitsError
from harness.runtimes.reference import host_reference

N_CTX, N_VOCAB, N_CHUNK = 64, 51, 8  # 31 scored positions a chunk, 248 in all
# a rope base five times SmolLM2's own (100000): a clear but moderate divergence from the reference
OFF_ROPE = "llama.rope.freq_base=float:500000"


def _quantized(logits: np.ndarray) -> np.ndarray:
    """One position as perplexity.cpp's log_softmax(..., uint16_t * log_prob, ...) stores it."""
    logits = logits.astype(np.float32)
    max_logit, min_logit = logits.max(), max(logits.min(), logits.max() - np.float32(16))
    log_sum_exp = np.float32(np.log(np.exp((logits - max_logit).astype(np.float64)).sum()))
    scale = np.float32((max_logit - min_logit) / np.float32(65535))
    q = np.where(logits > min_logit, np.rint((logits - min_logit) / scale), 0).astype(np.uint16)
    head = np.array([scale, min_logit - max_logit - log_sum_exp], dtype=np.float32).view(np.uint16)
    pad = np.zeros(2 * ((N_VOCAB + 1) // 2) - N_VOCAB, dtype=np.uint16)
    return np.concatenate([head, q, pad])


def _write_base(path: Path, tokens: np.ndarray, logits: np.ndarray) -> Path:
    first = N_CTX // 2
    with path.open("wb") as f:
        f.write(MAGIC + struct.pack("<Iii", N_CTX, N_VOCAB, N_CHUNK))
        f.write(tokens.astype("<i4").tobytes())
        for chunk in range(N_CHUNK):
            for pos in range(first, N_CTX - 1):
                f.write(_quantized(logits[chunk, pos]).astype("<u2").tobytes())
    return path


@pytest.fixture()
def synthetic(tmp_path):
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, N_VOCAB, size=(N_CHUNK, N_CTX))
    logits = rng.normal(0, 2, size=(N_CHUNK, N_CTX, N_VOCAB)).astype(np.float32)  # within 16 nats: none clamped
    return _write_base(tmp_path / "base.logits", tokens, logits), tokens, logits


def _expected(base_logits: np.ndarray, logits: np.ndarray, tokens: np.ndarray) -> dict[str, float]:
    """The figures in float64 from the definitions, with the reference's stored (dequantized) probabilities."""
    first = N_CTX // 2
    nll, kld, same = [], [], 0
    for chunk in range(N_CHUNK):
        for pos in range(first, N_CTX - 1):
            row = _quantized(base_logits[chunk, pos])
            scale, low = row[:4].view(np.float32)
            log_base = row[4:4 + N_VOCAB].astype(np.float64) * scale + low
            log_q = logits[chunk, pos] - np.log(np.exp(logits[chunk, pos].astype(np.float64)).sum())
            kept = log_base > -16
            kld.append(float((np.exp(log_base[kept]) * (log_base[kept] - log_q[kept])).sum()))
            nll.append(-log_q[tokens[chunk, pos + 1]])
            same += int(np.argmax(logits[chunk, pos]) == np.argmax(log_base))
    return {"ppl": float(np.exp(np.mean(nll))), "kld_mean": float(np.mean(kld)), "top1_agreement": 100.0 * same / len(kld)}


def _scored(path: Path, logits: np.ndarray) -> dict[str, float]:
    scorer = KldScorer(read_base(path))
    for chunk in range(N_CHUNK):
        scorer.add(chunk, logits[chunk])
    return scorer.figures()


def test_the_same_logits_score_as_the_same_output(synthetic):
    path, tokens, logits = synthetic
    figures = _scored(path, logits)
    assert figures["top1_agreement"] == 100.0 and figures["top1_stderr"] == 0.0
    assert abs(figures["kld_mean"]) < 1e-5  # only the uint16 quantization of the reference separates them (either sign)
    assert figures["ppl"] == pytest.approx(figures["ppl_base"], rel=1e-4)
    assert figures["rms_dp"] < 1e-3


def test_other_logits_score_as_the_definitions_say(synthetic):
    path, tokens, logits = synthetic
    other = logits + np.random.default_rng(8).normal(0, 1, size=logits.shape).astype(np.float32)
    figures = _scored(path, other)
    expected = _expected(logits, other, tokens)
    for name, value in expected.items():
        assert figures[name] == pytest.approx(value, rel=1e-5), name
    assert 0 < figures["top1_agreement"] < 100 and figures["kld_p99"] > figures["kld_mean"] > 0.1


def test_only_the_scored_positions_may_be_given(synthetic):
    path, _tokens, logits = synthetic
    scorer = KldScorer(read_base(path))
    full = KldScorer(read_base(path))
    for chunk in range(N_CHUNK):
        scorer.add(chunk, logits[chunk, N_CTX // 2:N_CTX - 1])
        full.add(chunk, logits[chunk])
    assert scorer.figures() == full.figures()
    with pytest.raises(LogitsError, match=r"logits of shape \(64, 50\).*\[64 or 31, 51\]"):
        scorer.add(0, logits[0, :, :50])


def test_eval_tokens_put_bos_first_where_the_model_adds_one(synthetic):
    path, tokens, _logits = synthetic
    base = read_base(path)
    assert base.eval_tokens(2, None).tolist() == tokens[2].tolist()
    assert base.eval_tokens(2, 1).tolist() == [1, *tokens[2, 1:].tolist()]
    assert base.tokens[2, 0] == tokens[2, 0]  # the file's own tokens are untouched


def test_a_truncated_a_foreign_and_a_short_file_are_refused(synthetic, tmp_path):
    path, _tokens, logits = synthetic
    cut = tmp_path / "cut.logits"
    cut.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(LogitsError, match="truncated"):
        read_base(cut)
    foreign = tmp_path / "foreign.logits"
    foreign.write_bytes(b"GGUF" + path.read_bytes()[4:])
    with pytest.raises(LogitsError, match="not a reference logits file"):
        read_base(foreign)
    scorer = KldScorer(read_base(path))
    scorer.add(0, logits[0])  # 31 positions: llama-perplexity prints no statistics below 100
    with pytest.raises(LogitsError, match="31 scored positions; statistics need at least 100"):
        scorer.figures()


def test_every_figure_is_a_metric_and_an_absent_one_is_missing_with_the_reason():
    metrics = {m.name: m for m in quality_metrics({"kld_mean": 0.01}, "not computed")}
    assert set(metrics) == set(UNITS)
    assert metrics["kld_mean"].value == 0.01 and metrics["kld_mean"].unit == "nats"
    assert metrics["top1_agreement"].value is None and metrics["top1_agreement"].missing_reason == "not computed"


# llama-cpp-python's logits for the reference's tokens, in a child process: the library path is
# read once, at import, and must be the host runtime's libllama (the one llama-perplexity links)
_LOGITS = """
import json, os, sys
import numpy as np
from harness.engines.kldbase import read_base
os.environ["LLAMA_CPP_LIB_PATH"] = sys.argv[1]
import llama_cpp
model, base_path, out, rope_base, threads = sys.argv[2:]
base = read_base(base_path)
llm = llama_cpp.Llama(model, n_ctx=base.header.n_ctx, n_batch=base.header.n_ctx, n_ubatch=base.header.n_ctx,
                      n_threads=int(threads), n_threads_batch=int(threads), logits_all=True, verbose=False, flash_attn=True,
                      kv_overrides={"llama.rope.freq_base": float(rope_base)})
bos = llm.token_bos() if llm._model.add_bos_token() else None
chunks = []
for chunk in range(base.header.n_chunk):
    llm.reset()
    llm.eval(base.eval_tokens(chunk, bos).tolist())
    chunks.append(np.array(llm.scores[:base.header.n_ctx], dtype=np.float32))
np.save(out, np.stack(chunks))
"""


@pytest.mark.slow
def test_llama_cpp_logits_scored_here_reproduce_llama_perplexity(tmp_path, host_runtime, default_model):
    """The scorer against llama-perplexity itself, both fed by one libllama on one model with the
    same wrong rope base (so the divergence is far from zero) and the same graph (context, batch,
    threads, flash attention as llama-perplexity runs it on the CPU): every figure must agree to
    what llama-perplexity prints (6 decimals; 3 for the percentages), with 0.01% relative for the
    float summation order of numpy against perplexity.cpp's threads. Measured: equal to the
    last printed digit. (Without flash attention on one side the same logits differ by 2% in
    KLD: the tolerance would not hide a scorer that reads the file wrong.)"""
    corpus = resolve_corpus(None)
    reference = host_reference(host_runtime, default_model, sha256_file(default_model), corpus, n_ctx=256, chunks=1)
    done = subprocess.run([str(host_runtime.binary("llama-perplexity")), "-m", str(default_model), "--kl-divergence-base",
                           str(reference.path), "--kl-divergence", "-c", "256", "-b", "256", "--chunks", "1", "-t", "2",
                           "--override-kv", OFF_ROPE], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    case = Case(engine="perplexity", kind="quality", n_prompt=256, n_gen=0, depth=0)
    printed = Perplexity().parse(case, Completed(argv=tuple(done.args), exit_code=0, stdout=done.stdout, stderr=done.stderr, wall_s=0.0)).raw[0]

    logits = tmp_path / "logits.npy"
    subprocess.run([sys.executable, "-c", _LOGITS, str(host_runtime.root / "lib"), str(default_model), str(reference.path),
                    str(logits), "500000", "2"], check=True, timeout=600)
    base = read_base(reference.path)
    scorer = KldScorer(base)
    for chunk, chunk_logits in enumerate(np.load(logits)):
        scorer.add(chunk, chunk_logits)
    figures = scorer.figures()
    print(json.dumps({"llama-perplexity": printed, "scorer": figures}, indent=1))
    assert printed["kld_mean"] > 0.05  # the wrong rope base makes a real divergence to reproduce
    for name, value in printed.items():
        resolution = 1e-3 if UNITS[name] == "%" else 1e-6
        assert figures[name] == pytest.approx(value, rel=1e-4, abs=resolution), name
