"""Is B faster than A, by how much, and is the difference real?

Per case and metric: the ratio of means B/A with a 95% bootstrap interval over the
per-process values (samples inside one process are correlated: they never count as
independent repetitions), Welch's t-test for significance, and a verdict that needs both
significance and a minimum effect size. A regression is flagged only when the whole interval
lies beyond the threshold in the worse direction, so noise alone does not fail a CI job.
A case with a process measured while others used the device (`contended`) on either side is
not judged: its verdict says so, since the difference may be the other job's. Nor is a case
whose backend failed the correctness gate on either side (`output differs`): a fast figure of
a wrong output is never called faster.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats as sps

from harness.analysis.tables import KIND_ORDER, Contention

if TYPE_CHECKING:
    from harness.store.db import Store

# Direction of "better" per metric; anything not listed is not compared.
HIGHER_IS_BETTER = {"prefill_tps": True, "decode_tps": True, "pg_tps": True, "ttft_ms": False,
                    "itl_ms_p50": False, "itl_ms_p90": False, "itl_ms_p99": False, "peak_rss_mb": False,
                    "energy_j_per_token": False, "energy_j": False}

BOOTSTRAP_RESAMPLES = 10_000
SEED = 20261123  # fixed: the same stored runs always give the same interval


@dataclass(frozen=True)
class CompareSettings:
    threshold: float = 0.05   # a regression is an interval wholly beyond this relative change
    min_effect: float = 0.02  # smaller significant changes are reported as "no significant change"
    alpha: float = 0.05


@dataclass(frozen=True)
class Comparison:
    case: str
    metric: str
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    ratio: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    verdict: str  # faster | slower | no significant change | too few repetitions | contended / output differs: not compared
    regression: bool
    differs: tuple[str, ...] = field(default=())  # settings that are not the same in A and B
    contended: tuple[str, ...] = field(default=())  # "A: ..." / "B: ..." where others used the device
    output_differs: tuple[str, ...] = field(default=())  # "A: ..." / "B: ..." where the gate marked the figures


def ratio_interval(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap of mean(b)/mean(a), resampling each side's processes."""
    ia = rng.integers(0, len(a), size=(BOOTSTRAP_RESAMPLES, len(a)))
    ib = rng.integers(0, len(b), size=(BOOTSTRAP_RESAMPLES, len(b)))
    ratios = b[ib].mean(axis=1) / a[ia].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def compare_values(case: str, metric: str, a: list[float], b: list[float], settings: CompareSettings,
                   differs: tuple[str, ...] = ()) -> Comparison:
    """The comparison of one case's per-process values in A and in B."""
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ratio = float(vb.mean() / va.mean())
    if len(va) < 2 or len(vb) < 2:
        return Comparison(case, metric, len(va), len(vb), float(va.mean()), float(vb.mean()), ratio, None, None,
                          None, "too few repetitions", False, differs)
    low, high = ratio_interval(va, vb, np.random.default_rng(SEED))
    p = _welch_p(va, vb)
    better = ratio > 1 if HIGHER_IS_BETTER[metric] else ratio < 1
    if p < settings.alpha and abs(ratio - 1) >= settings.min_effect:
        verdict = "faster" if better else "slower"
    else:
        verdict = "no significant change"
    worse_bound = high < 1 - settings.threshold if HIGHER_IS_BETTER[metric] else low > 1 + settings.threshold
    return Comparison(case, metric, len(va), len(vb), float(va.mean()), float(vb.mean()), ratio, low, high, p,
                      verdict, bool(worse_bound and verdict == "slower"), differs)


def _welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Welch's t-test p-value; identical samples (no variance) give 1.0 when equal, else 0.0."""
    if a.std() + b.std() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-identical inputs: the p-value is ~1 anyway
        p = float(sps.ttest_ind(a, b, equal_var=False).pvalue)
    return 1.0 if np.isnan(p) else p


def compare_frames(a: pd.DataFrame, b: pd.DataFrame, settings: CompareSettings = CompareSettings()) -> list[Comparison]:
    """Match cases of two tidy frames by what they measure (kind, prompt, generation, depth)
    and compare every metric both have; differing settings are named on each row."""
    out = []
    a_ok, b_ok = _usable(a), _usable(b)
    busy = {"A": _contended(a), "B": _contended(b)}
    coarse = ["kind", "n_prompt", "n_gen", "depth", "metric"]
    for key, group_b in b_ok.groupby([*coarse, "case"], sort=False):
        same_shape = a_ok[(a_ok[coarse] == pd.Series(key[:-1], index=coarse)).all(axis=1)]
        group_a = same_shape[same_shape["case"] == key[-1]]
        if group_a.empty and same_shape["case"].nunique() == 1:
            group_a = same_shape  # one case of this shape on each side, with other settings: compare, naming them
        if group_a.empty:
            continue
        differs = _differences(group_a.iloc[0], group_b.iloc[0])
        label = group_b.iloc[0]["case"]
        order = (KIND_ORDER.get(key[0], 9), *key[1:4], label, key[-2])
        row = compare_values(label, key[-2], list(group_a["value"]), list(group_b["value"]), settings, differs)
        contended = tuple(f"{side}: {busy[side][k]}" for side, group in (("A", group_a), ("B", group_b))
                          for k in dict.fromkeys(group["case"]) if k in busy[side])
        if contended:
            row = replace(row, verdict="contended: not compared", regression=False, contended=contended)
        wrong = tuple(f"{side}: {mark}" for side, group in (("A", group_a), ("B", group_b))
                      for mark in dict.fromkeys(group.get("output_differs", pd.Series(dtype=object)).dropna()))
        if wrong:
            row = replace(row, verdict="output differs: not compared", regression=False, output_differs=wrong)
        out.append((order, row))
    return [row for _, row in sorted(out, key=lambda pair: pair[0])]


def _usable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["status"] == "ok") & frame["value"].notna() & frame["metric"].isin(HIGHER_IS_BETTER)]


def _contended(frame: pd.DataFrame) -> dict[str, str]:
    """case label -> what others used, for the cases with a process marked contended."""
    ok = frame[(frame["status"] == "ok") & frame["value"].notna()]
    out = {}
    for case, group in ok.groupby("case", sort=False):
        flags = group[group["metric"] == "contended"]["value"]
        foreign = group[group["metric"] == "foreign_cpu_pct"]["value"]
        if (flags == 1.0).any():
            out[case] = Contention(int((flags == 1.0).sum()), len(flags), float(foreign.max()) if not foreign.empty else None).note()
    return out


def _differences(a: pd.Series, b: pd.Series) -> tuple[str, ...]:
    """What is not the same between the two sides: the comparison is of these."""
    named = []
    for column, name in (("device", "device"), ("model", "model"), ("quantization", "quantization"), ("runtime", "runtime"),
                         ("runtime_key", "runtime build"), ("case", "case")):
        if a.get(column) != b.get(column):
            named.append(f"{name}: {a.get(column)} -> {b.get(column)}")
    return tuple(named)


def comparisons_frame(rows: list[Comparison]) -> pd.DataFrame:
    return pd.DataFrame([r.__dict__ for r in rows])


def previous_run(store: "Store", run_id: str) -> str | None:
    """The latest earlier run of the same device (by identity), suite and model: what a nightly
    run is judged against."""
    run = store.run(run_id)
    for other in store.history(run.id):
        if other.id != run.id and other.status in ("finished", "failed"):
            return other.id
    return None


def regressions_since_previous(store: "Store", run_ids: list[str], settings: CompareSettings = CompareSettings()) -> list[dict]:
    """Every flagged regression of each run against its previous run, device named."""
    from harness.analysis.tables import tidy_frame

    found = []
    for run_id in run_ids:
        before = previous_run(store, run_id)
        if before is None:
            continue
        for row in compare_frames(tidy_frame(store, [before]), tidy_frame(store, [run_id]), settings):
            if row.regression:
                found.append({"device": store.run(run_id).device, "run_id": run_id, "previous": before, **row.__dict__})
    return found
