"""Comparison statistics on synthetic samples with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness.analysis.compare import CompareSettings, compare_frames, compare_values
from harness.stats import drift, local_score, percentile

RNG = np.random.default_rng(7)


def _noisy(mean: float, n: int = 10, cv: float = 0.02) -> list[float]:
    return list(mean * (1 + cv * RNG.standard_normal(n)))


def test_a_real_ten_percent_slowdown_is_flagged():
    result = compare_values("decode n64", "decode_tps", _noisy(100.0), _noisy(90.0), CompareSettings())
    assert result.verdict == "slower" and result.regression
    assert result.ratio == pytest.approx(0.9, abs=0.03)
    assert result.ci_low < result.ratio < result.ci_high < 0.95


def test_pure_noise_is_not_flagged():
    flagged = 0
    for _ in range(20):
        result = compare_values("decode n64", "decode_tps", _noisy(100.0), _noisy(100.0), CompareSettings())
        flagged += result.regression
        assert result.verdict in ("no significant change", "faster", "slower")
    assert flagged == 0


def test_direction_depends_on_the_metric():
    lower_latency = compare_values("latency", "ttft_ms", _noisy(300.0), _noisy(240.0), CompareSettings())
    assert lower_latency.verdict == "faster" and not lower_latency.regression
    higher_latency = compare_values("latency", "ttft_ms", _noisy(300.0), _noisy(360.0), CompareSettings())
    assert higher_latency.verdict == "slower" and higher_latency.regression


def test_small_significant_change_below_minimum_effect_is_not_a_verdict():
    result = compare_values("p", "prefill_tps", _noisy(100.0, n=40, cv=0.001), _noisy(101.0, n=40, cv=0.001), CompareSettings(min_effect=0.02))
    assert result.p_value < 0.05 and result.verdict == "no significant change"


def test_single_process_cannot_be_compared():
    assert compare_values("p", "prefill_tps", [100.0], [90.0], CompareSettings()).verdict == "too few repetitions"


def _frame(case: str, values: list[float], **extra) -> pd.DataFrame:
    base = {"device": "local", "model": "m.gguf", "quantization": "Q4_1", "runtime_key": "k1", "case": case,
            "kind": "decode", "n_prompt": 0, "n_gen": 64, "depth": 0, "metric": "decode_tps", "status": "ok"}
    return pd.DataFrame([{**base, **extra, "value": v, "rep": i} for i, v in enumerate(values)])


def test_cases_differing_in_settings_are_named():
    a = _frame("decode n64 [threads=2]", _noisy(100.0))
    b = _frame("decode n64 [threads=4]", _noisy(100.0), runtime_key="k2")
    (row,) = compare_frames(a, b)
    assert "runtime build: k1 -> k2" in row.differs
    assert any(d.startswith("case: decode n64 [threads=2] -> decode n64 [threads=4]") for d in row.differs)


def test_drift_detects_later_samples_slower_and_ignores_noise():
    throttled = [100 - i * 1.5 for i in range(12)]
    assert drift(throttled) == pytest.approx((sum(throttled[-4:]) / 4 - sum(throttled[:4]) / 4) / (sum(throttled[:4]) / 4))
    assert drift(_noisy(100.0, n=12, cv=0.01)) is None


def test_percentile_matches_numpy_and_local_score_form():
    data = _noisy(50.0, n=33)
    assert percentile(data, 99) == pytest.approx(np.percentile(data, 99))
    assert local_score(400.0, 100.0, 250.0) == pytest.approx(10 * (400 * 100 * 1000 / 250) ** (1 / 3))


def test_a_contended_side_is_not_called_faster_or_slower():
    def run(values: list[float], contended: list[float], foreign: list[float]) -> pd.DataFrame:
        figures = _frame("decode n64", values)
        flags = _frame("decode n64", contended, metric="contended")
        others = _frame("decode n64", foreign, metric="foreign_cpu_pct")
        return pd.concat([figures, flags, others], ignore_index=True)

    quiet = run(_noisy(100.0), [0.0] * 10, [2.0] * 10)
    busy = run(_noisy(60.0), [0.0] * 8 + [1.0] * 2, [3.0] * 8 + [150.0, 120.0])
    (row,) = compare_frames(quiet, busy)
    assert row.verdict == "contended: not compared" and not row.regression
    assert row.contended == ("B: contended: others used up to 150% of a core in 2 of 10 processes",)
    (again,) = compare_frames(busy, quiet)
    assert again.contended[0].startswith("A: ") and again.verdict == "contended: not compared"
    (plain,) = compare_frames(quiet, run(_noisy(60.0), [0.0] * 10, [2.0] * 10))
    assert plain.verdict == "slower" and plain.regression and plain.contended == ()
