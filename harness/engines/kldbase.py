"""The quality verdict for runtimes that are not llama.cpp: a reference logits file, scored in Python.

llama-perplexity `--kl-divergence` compares a llama.cpp backend with the reference; a runtime
that is not llama.cpp (OpenVINO, a server returning logits) cannot run it. So the same
comparison is made here: the runtime computes its logits for the reference file's own tokens
(teacher forcing, one window per chunk), and `KldScorer` reduces them against the reference's
stored log-probabilities exactly as `kl_divergence()` in tools/perplexity/perplexity.cpp of the
pinned llama.cpp does: the same positions (the second half of each window, less the last), the
same dequantization of the stored uint16 log-probabilities, the same terms skipped (reference
log-probability <= -16), the same first-maximum top-1 rule and the same uncertainty formulas.
The figures carry the names and units the perplexity engine stores, so the quality gate and
every table read them the same way whichever runtime produced them.

The file's layout and its checks (magic, header, exact size) are `harness.runtimes.logits`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.records import Metric
from harness.runtimes.logits import HEADER_SIZE, LogitsError, LogitsHeader, read_header

# figure -> unit, as the perplexity engine stores them
UNITS: dict[str, str] = {
    "ppl": "", "ppl_stderr": "", "ppl_base": "", "kld_mean": "nats", "kld_stderr": "nats", "kld_p99": "nats",
    "rms_dp": "%", "top1_agreement": "%", "top1_stderr": "%",
}
# llama-perplexity prints no statistics below this many scored positions, and neither does the scorer
MIN_SCORED = 100
_SKIPPED_BELOW = np.float32(-16.0)  # reference log-probabilities at or below this add no KLD term


@dataclass(frozen=True)
class KldBase:
    """A reference logits file, opened: its header, the tokens of every chunk, and its stored
    log-probabilities (memory-mapped: a file of many chunks is never read whole)."""

    path: Path
    header: LogitsHeader
    tokens: np.ndarray  # int32 [n_chunk, n_ctx], as the reference tokenized the corpus
    records: np.ndarray  # uint16 [n_chunk, scored, nv]: per position 2 float32 (scale, min) then n_vocab values

    @property
    def first(self) -> int:
        """The first position whose logits are scored (each window's first half is context only)."""
        return self.header.n_ctx // 2

    @property
    def scored(self) -> int:
        """Scored positions per chunk: from `first` to the second-to-last (the last has no next token)."""
        return self.header.n_ctx - 1 - self.first

    def eval_tokens(self, chunk: int, bos: int | None) -> np.ndarray:
        """The token ids llama-perplexity evaluates for `chunk`: the stored ones, with the first
        replaced by BOS where the model adds one (`bos` None: it does not)."""
        ids = self.tokens[chunk].copy()
        if bos is not None:
            ids[0] = bos
        return ids

    def log_probs(self, chunk: int) -> np.ndarray:
        """The reference's log-probabilities of `chunk` [scored, n_vocab] as float32, dequantized
        as perplexity.cpp does (scale * q + min, in float)."""
        rows = self.records[chunk]
        scale_min = np.ascontiguousarray(rows[:, :4]).view(np.float32)  # [scored, 2]
        q = rows[:, 4:4 + self.header.n_vocab].astype(np.float32)
        return q * scale_min[:, :1] + scale_min[:, 1:2]


def read_base(path: str | Path) -> KldBase:
    """Open a reference logits file; LogitsError for a foreign, truncated or overlong one."""
    path = Path(path)
    header = read_header(path)
    nv = 2 * ((header.n_vocab + 1) // 2) + 4
    scored = header.n_ctx - 1 - header.n_ctx // 2
    tokens = np.memmap(path, dtype="<i4", mode="r", offset=HEADER_SIZE, shape=(header.n_chunk, header.n_ctx))
    records = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_SIZE + 4 * header.n_ctx * header.n_chunk,
                        shape=(header.n_chunk, scored, nv))
    return KldBase(path=path, header=header, tokens=np.asarray(tokens), records=records)


@dataclass
class KldScorer:
    """Accumulates chunk after chunk as `kl_divergence()` does; `figures()` gives its statistics block."""

    base: KldBase
    _nll: list[np.ndarray] = field(default_factory=list)
    _nll_base: list[np.ndarray] = field(default_factory=list)
    _kld: list[np.ndarray] = field(default_factory=list)
    _same_top: int = 0

    def add(self, chunk: int, logits: np.ndarray) -> None:
        """Score one chunk: `logits` are the runtime's for `base.eval_tokens(chunk, ...)`, either
        every position [n_ctx, n_vocab] or only the scored ones [scored, n_vocab]."""
        header = self.base.header
        if logits.ndim != 2 or logits.shape[1] != header.n_vocab or logits.shape[0] not in (header.n_ctx, self.base.scored):
            raise LogitsError(f"{self.base.path}: logits of shape {tuple(logits.shape)} for chunk {chunk}; the reference "
                              f"needs [{header.n_ctx} or {self.base.scored}, {header.n_vocab}] (its vocabulary)")
        if logits.shape[0] == header.n_ctx:
            logits = logits[self.base.first:self.base.first + self.base.scored]
        logits = np.asarray(logits, dtype=np.float32)
        targets = self.base.tokens[chunk, self.base.first + 1:self.base.first + 1 + self.base.scored]
        rows = np.arange(self.base.scored)

        # the runtime's log-softmax, reduced in float64 as perplexity.cpp's double sum_exp is
        max_logit = logits.max(axis=1)
        log_sum_exp = np.log(np.exp((logits - max_logit[:, None]).astype(np.float64)).sum(axis=1)).astype(np.float32)
        log_p = logits - (max_logit + log_sum_exp)[:, None]
        base_log_p = self.base.log_probs(chunk)

        kept = base_log_p > _SKIPPED_BELOW
        terms = np.where(kept, np.exp(base_log_p, where=kept, out=np.zeros_like(base_log_p)) * (base_log_p - log_p), 0.0)
        self._kld.append(terms.sum(axis=1, dtype=np.float64))
        self._nll.append(-log_p[rows, targets].astype(np.float64))
        self._nll_base.append(-base_log_p[rows, targets].astype(np.float64))
        self._same_top += int((logits.argmax(axis=1) == base_log_p.argmax(axis=1)).sum())

    def figures(self) -> dict[str, float]:
        """PPL (with its ±), the reference's PPL, mean KLD (±) and its 99th percentile, RMS Δp (%)
        and top-1 agreement (± , %): llama-perplexity's formulas, over every position added."""
        if not self._kld:
            raise LogitsError(f"{self.base.path}: no chunk was scored")
        nll, nll_base, kld = (np.concatenate(parts) for parts in (self._nll, self._nll_base, self._kld))
        count = len(kld)
        if count < MIN_SCORED:
            raise LogitsError(f"{self.base.path}: {count} scored positions; statistics need at least {MIN_SCORED}")
        log_ppl, log_ppl_unc = _mean_and_uncertainty(nll)
        log_ppl_base, _ = _mean_and_uncertainty(nll_base)
        kld_mean, kld_unc = _mean_and_uncertainty(kld)
        p_diff = np.exp(-nll.astype(np.float32)) - np.exp(-nll_base.astype(np.float32))
        mse, _ = _mean_and_uncertainty(p_diff.astype(np.float64) ** 2)
        same_top = self._same_top / count
        ppl = math.exp(log_ppl)
        return {
            "ppl": ppl, "ppl_stderr": ppl * log_ppl_unc, "ppl_base": math.exp(log_ppl_base),
            "kld_mean": kld_mean, "kld_stderr": kld_unc,
            "kld_p99": float(np.percentile(kld.astype(np.float32), 99.0)),  # linear, as perplexity.cpp's percentile()
            "rms_dp": 100.0 * math.sqrt(mse),
            "top1_agreement": 100.0 * same_top, "top1_stderr": 100.0 * math.sqrt(same_top * (1.0 - same_top) / (count - 1)),
        }


def _mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """perplexity.cpp's mean_and_uncertainty: the mean and its standard error (0 below 11 values)."""
    count = len(values)
    mean = float(values.sum()) / count
    var = float((values * values).sum()) / count - mean * mean
    return mean, math.sqrt(var / (count - 1)) if var > 0 and count > 10 else 0.0


def quality_metrics(figures: Mapping[str, float], missing: str) -> list[Metric]:
    """The quality figures as metrics, in one order for every engine; a figure absent from
    `figures` is stored missing with the reason `missing`."""
    return [Metric(name, figures[name], unit) if name in figures else Metric.missing(name, unit, missing)
            for name, unit in UNITS.items()]
