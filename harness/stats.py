"""Statistics over per-process results.

The figure of a case is computed over its separate processes (independent repetitions);
samples inside one process are correlated, so they only feed a stability figure (their CV).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from scipy import stats as sps


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
    stdev = statistics.stdev(values)
    half = float(sps.t.ppf((1 + confidence) / 2, n - 1)) * stdev / math.sqrt(n)
    return Summary(n, mean, statistics.median(values), stdev, mean - half, mean + half, min(values), max(values))


def pooled_cv(groups: Sequence[Sequence[float]]) -> float | None:
    """Root-mean-square of the within-process CVs: how stable a single process's samples were."""
    cvs = [statistics.stdev(g) / statistics.fmean(g) for g in groups if len(g) > 1 and statistics.fmean(g) != 0]
    return math.sqrt(statistics.fmean(c * c for c in cvs)) if cvs else None
