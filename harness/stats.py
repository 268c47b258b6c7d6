"""Statistics over per-process results.

The figure of a case is computed over its separate processes (independent repetitions);
samples inside one process are correlated, so they only feed a stability figure (their CV).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence



@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    median: float
    stdev: float | None  # None with one value: a spread cannot be estimated
    ci_low: float | None
    ci_high: float | None
    minimum: float
    maximum: float

    @property
    def cv(self) -> float | None:
        """Coefficient of variation (stdev / mean), the figure pyperf warns on at >= 10%."""
        if self.stdev is None or self.mean == 0:
            return None
        return self.stdev / abs(self.mean)

    @property
    def ci_half_width(self) -> float | None:
        return None if self.ci_high is None else (self.ci_high - self.mean)


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, median, stdev and a Student-t confidence interval of the mean."""
    if not values:
        raise ValueError("summarize() needs at least one value")
    n = len(values)
    mean = statistics.fmean(values)
    if n == 1:
        return Summary(1, mean, mean, None, None, None, mean, mean)
    from scipy import stats as sps  # lazy: the pyllama worker imports this module and stays small

    stdev = statistics.stdev(values)
    half = float(sps.t.ppf((1 + confidence) / 2, n - 1)) * stdev / math.sqrt(n)
    return Summary(n, mean, statistics.median(values), stdev, mean - half, mean + half, min(values), max(values))


def pooled_cv(groups: Sequence[Sequence[float]]) -> float | None:
    """Root-mean-square of the within-process CVs: how stable a single process's samples were."""
    cvs = [statistics.stdev(g) / statistics.fmean(g) for g in groups if len(g) > 1 and statistics.fmean(g) != 0]
    return math.sqrt(statistics.fmean(c * c for c in cvs)) if cvs else None


def drift(series: Sequence[float], min_change: float = 0.05, alpha: float = 0.05) -> float | None:
    """Relative change from the first to the last third of a time-ordered series, when it is a
    trend (Kendall's tau significant) and at least `min_change`: e.g. thermal throttling
    making later samples consistently slower. None when there is no such drift."""
    n = len(series)
    if n < 6:
        return None
    third = n // 3
    first, last = statistics.fmean(series[:third]), statistics.fmean(series[-third:])
    if first == 0:
        return None
    change = (last - first) / abs(first)
    from scipy import stats as sps

    tau = sps.kendalltau(range(n), series)
    if abs(change) >= min_change and tau.pvalue < alpha:
        return change
    return None


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in 0..100."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def local_score(prefill_tps: float, decode_tps: float, ttft_ms: float) -> float:
    """The LocalScore form users know: 10 * cbrt(prefill tok/s * decode tok/s * 1000 / TTFT ms)."""
    return 10 * (prefill_tps * decode_tps * 1000 / ttft_ms) ** (1 / 3)
