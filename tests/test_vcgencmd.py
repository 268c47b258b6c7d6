"""Raspberry Pi vcgencmd parsing: the recorded Pi 5 PMIC output and the co-process's stream."""

from __future__ import annotations

import pytest

from harness.telemetry.vcgencmd import parse_pmic, parse_stream, pmic_power_w

from .conftest import DATA

RPI = DATA / "rpi"


def test_pmic_sum_pairs_rails_by_name_and_skips_unpaired_input():
    text = (RPI / "pmic_read_adc.txt").read_text()
    rails = parse_pmic(text)
    assert rails["VDD_CORE"] == (0.86173300, 6.22421000)
    assert rails["EXT5V"] == (5.09066000, None) and rails["BATT"] == (0.0, None)
    expected = sum(v * a for v, a in rails.values() if v is not None and a is not None)
    assert pmic_power_w(text) == pytest.approx(expected)
    assert pmic_power_w(text) == pytest.approx(7.24, abs=0.01)
    assert pmic_power_w("temp=40.0'C") is None


def test_coprocess_stream_blocks():
    body = "".join((RPI / f).read_text() for f in ("measure_temp.txt", "measure_clock_arm.txt", "get_throttled.txt", "pmic_read_adc.txt"))
    samples = parse_stream(f"@ 100.50\n{body}@ 100.75\ntemp=41.0'C\n")
    by = {(s.t, s.source): s.value for s in samples}
    assert by[(100.5, "vcgencmd/temp")] == 39.5 and by[(100.5, "vcgencmd/arm_freq")] == 2400.0
    assert by[(100.5, "vcgencmd/throttled")] == 0x50005 and by[(100.5, "power/board")] == pytest.approx(7.24, abs=0.01)
    assert by[(100.75, "vcgencmd/temp")] == 41.0 and (100.75, "power/board") not in by
