"""Raspberry Pi vcgencmd parsing: the recorded Pi 5 PMIC output and every get_throttled bit."""

from __future__ import annotations

import pytest

from harness.telemetry.vcgencmd import (
    THROTTLED_BITS, parse_clock_mhz, parse_pmic, parse_stream, parse_temp, parse_throttled, pmic_power_w,
)

from .conftest import DATA

RPI = DATA / "rpi"

FIELDS = {
    0: "under_voltage", 1: "freq_capped", 2: "throttled", 3: "soft_temp_limit",
    16: "under_voltage_occurred", 17: "freq_capped_occurred", 18: "throttled_occurred", 19: "soft_temp_limit_occurred",
}


@pytest.mark.parametrize("bit", sorted(FIELDS))
def test_every_throttled_bit_decodes_alone(bit):
    decoded = parse_throttled(f"throttled={hex(1 << bit)}\n")
    assert {name for name in FIELDS.values() if getattr(decoded, name)} == {FIELDS[bit]}
    assert decoded.reasons == [THROTTLED_BITS[bit]]
    assert decoded.now == (bit < 4)


def test_recorded_throttled_value_and_zero():
    decoded = parse_throttled((RPI / "get_throttled.txt").read_text())  # 0x50005
    assert decoded.under_voltage and decoded.throttled and decoded.under_voltage_occurred and decoded.throttled_occurred
    assert not (decoded.freq_capped or decoded.soft_temp_limit or decoded.freq_capped_occurred or decoded.soft_temp_limit_occurred)
    clean = parse_throttled("throttled=0x0")
    assert clean.raw == 0 and clean.reasons == [] and not clean.now
    assert parse_throttled("throttled=0x100000").reasons == ["bit 20"]
    with pytest.raises(ValueError):
        parse_throttled("error=1")


def test_pmic_sum_pairs_rails_by_name_and_skips_unpaired_input():
    text = (RPI / "pmic_read_adc.txt").read_text()
    rails = parse_pmic(text)
    assert rails["VDD_CORE"] == (0.86173300, 6.22421000)
    assert rails["EXT5V"] == (5.09066000, None) and rails["BATT"] == (0.0, None)
    expected = sum(v * a for v, a in rails.values() if v is not None and a is not None)
    assert pmic_power_w(text) == pytest.approx(expected)
    assert pmic_power_w(text) == pytest.approx(7.24, abs=0.01)
    assert pmic_power_w("temp=40.0'C") is None


def test_temp_and_clock():
    assert parse_temp((RPI / "measure_temp.txt").read_text()) == 39.5
    assert parse_clock_mhz((RPI / "measure_clock_arm.txt").read_text()) == 2400.0
    assert parse_clock_mhz("frequency(48)=1500398464") == pytest.approx(1500.398464)


def test_coprocess_stream_blocks():
    body = "".join((RPI / f).read_text() for f in ("measure_temp.txt", "measure_clock_arm.txt", "get_throttled.txt", "pmic_read_adc.txt"))
    samples = parse_stream(f"@ 100.50\n{body}@ 100.75\ntemp=41.0'C\n")
    by = {(s.t, s.source): s.value for s in samples}
    assert by[(100.5, "vcgencmd/temp")] == 39.5 and by[(100.5, "vcgencmd/arm_freq")] == 2400.0
    assert by[(100.5, "vcgencmd/throttled")] == 0x50005 and by[(100.5, "power/board")] == pytest.approx(7.24, abs=0.01)
    assert by[(100.75, "vcgencmd/temp")] == 41.0 and (100.75, "power/board") not in by
