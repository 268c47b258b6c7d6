"""Statistics with known answers."""

from __future__ import annotations

import math

import pytest

from harness.stats import pooled_cv, summarize


def test_summary_matches_hand_computed_t_interval():
    s = summarize([10.0, 12.0, 14.0])
    assert s.mean == 12.0 and s.median == 12.0 and s.stdev == pytest.approx(2.0)
    half = 4.302652729911275 * 2.0 / math.sqrt(3)  # t(0.975, df=2)
    assert (s.ci_low, s.ci_high) == (pytest.approx(12 - half), pytest.approx(12 + half))
    assert s.cv == pytest.approx(2 / 12)
    assert (s.minimum, s.maximum) == (10.0, 14.0)


def test_single_value_has_no_spread():
    s = summarize([5.0])
    assert s.stdev is None and s.ci_low is None and s.cv is None and s.mean == 5.0


def test_empty_input_is_an_error():
    with pytest.raises(ValueError):
        summarize([])


def test_pooled_cv_is_rms_of_within_group_cvs():
    cv = pooled_cv([[9.0, 11.0], [100.0, 100.0], [7.0]])
    one = math.sqrt(2) / 10
    assert cv == pytest.approx(math.sqrt((one**2 + 0.0) / 2))
    assert pooled_cv([[1.0]]) is None
