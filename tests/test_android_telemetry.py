"""Android battery/thermal parsing on traces from several vendors (tests/data/android/README.md),
and the same parsing through the ADB driver on the emulated phone (SELinux denial, USB power)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.boards.android import (
    battery_reading,
    detect_power_convention,
    parse_dumpsys_battery,
    parse_getprop,
    parse_thermalservice,
    read_battery,
)
from tests.adb_emulator.fixtures import ANDROID_DATA, adb_driver


def _dump(folder: Path) -> str:
    """The power_supply dump the phone's shell prints (POWER_SUPPLY_SCRIPT), built from a trace folder."""
    out = []
    for supply in sorted((folder / "power_supply").iterdir()):
        out.append(f"== {supply.name}")
        out += [f"{f}={(supply / f).read_text().strip()}" for f in ("type", "status", "online", "current_now", "voltage_now") if (supply / f).exists()]
    return "\n".join(out) + "\n"


def _reading(name: str):
    folder = ANDROID_DATA / name
    return battery_reading(_dump(folder), (folder / "dumpsys_battery.txt").read_text())


@pytest.mark.parametrize(
    "trace, unit, volt_unit, sign, watts",
    [
        ("pixel7", "uA", "uV", -1, 0.412500 * 4.1275),  # kernel ABI: negative while discharging
        ("mi_a1", "uA", "uV", +1, 0.523437 * 3.9125),  # Qualcomm fuel gauge: positive while discharging
        ("p8lite2017", "mA", "mV", -1, 0.318 * 3.853),  # HiSilicon: milliamps and millivolts
    ],
)
def test_units_and_sign_are_detected_per_vendor(trace, unit, volt_unit, sign, watts):
    reading = _reading(trace)
    convention = reading.convention
    assert (convention.current_unit, convention.voltage_unit, convention.discharge_sign) == (unit, volt_unit, sign)
    assert "discharging" in convention.basis
    assert convention.discharge_watts(reading.current_raw, reading.voltage_raw) == pytest.approx(watts)
    assert reading.energy_withheld is None


@pytest.mark.parametrize("trace, sign", [("mi8_charging", +1), ("pixel7_usb", -1)])
def test_a_charging_phone_gets_no_energy_figures(trace, sign):
    reading = _reading(trace)
    assert reading.battery.status == "charging" and reading.battery.on_external_power
    assert reading.convention.discharge_sign == sign  # still learned: charging shows the opposite sign
    assert "external power" in reading.energy_withheld and "unplug" in reading.energy_withheld


def test_unknown_status_assumes_the_kernel_sign_and_says_so():
    convention = detect_power_convention(1200, 3_900_000, "full")
    assert convention.discharge_sign == -1 and convention.basis.startswith("assumed")


def test_dumpsys_getprop_and_thermalservice_parse():
    battery = parse_dumpsys_battery((ANDROID_DATA / "pixel7_usb" / "dumpsys_battery.txt").read_text())
    assert (battery.status, battery.powered_by, battery.level_pct, battery.voltage_mv, battery.temperature_c) == (
        "charging", ("usb",), 79.0, 4262.0, 30.1)
    props = parse_getprop((ANDROID_DATA / "pixel7" / "getprop.txt").read_text())
    assert props["ro.product.model"] == "Pixel 7" and props["ro.soc.model"] == "GS201"
    thermal = parse_thermalservice((ANDROID_DATA / "pixel7" / "dumpsys_thermalservice.txt").read_text())
    assert thermal.status == "none" and not thermal.throttling
    assert thermal.hottest("cpu").name == "BIG" and thermal.hottest("cpu").celsius == pytest.approx(36.875)
    assert thermal.hottest("battery").celsius == pytest.approx(29.6)
    with pytest.raises(ValueError):
        parse_dumpsys_battery("Can't find service: battery")


# --- through the driver, on the emulated phone --------------------------------------------------
def test_battery_read_through_adb_on_a_discharging_phone(adb_server, phone):
    reading = read_battery(adb_driver(adb_server, phone))
    assert reading.supply == "battery" and reading.current_raw == -412500
    assert reading.convention.current_unit == "uA" and reading.energy_withheld is None


def test_selinux_denied_current_is_reported_not_zero(adb_server, phone):
    phone.deny("/sys/class/power_supply/battery/current_now")
    reading = read_battery(adb_driver(adb_server, phone))
    assert reading.current_raw is None and reading.convention is None
    denied = reading.unreadable["/sys/class/power_supply/battery/current_now"]
    assert "Permission denied" in denied
    assert "not readable by the shell user" in reading.energy_withheld and "Permission denied" in reading.energy_withheld


def test_plugging_usb_in_withholds_energy(adb_server, phone):
    usb = ANDROID_DATA / "pixel7_usb"
    for rel in ("power_supply/battery/current_now", "power_supply/battery/status", "power_supply/usb/online"):
        phone.fs.write(f"/sys/class/{rel}", (usb / rel).read_text())
    phone.fs.write("/system/etc/edgebench-replay/dumpsys_battery.txt", (usb / "dumpsys_battery.txt").read_text())
    driver = adb_driver(adb_server, phone)
    reading = read_battery(driver)
    assert reading.battery.powered_by == ("usb",) and "external power (usb)" in reading.energy_withheld
    assert driver.facts().power_source == "usb, charging"
