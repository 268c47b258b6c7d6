"""What an Android phone is and what its battery says: pure functions over what a phone
prints (tested on traces). The adb driver runs `FACTS_SCRIPT` and hands its output to
`parse_facts`; the probe detects the battery's power convention here.

Battery current is the hard part: `/sys/class/power_supply/<battery>/current_now` is
microamps on most kernels but milliamps on some vendors' (Samsung, Huawei), and the kernel's
sign convention (negative = discharging) is inverted on many Qualcomm fuel gauges. So the
unit is detected from the magnitude, the sign from the battery status the same phone
reports, and both are recorded with the basis of the decision. A phone on a cable is
charging (or held level), which hides its draw: energy is only computed on a discharging
phone, otherwise withheld with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.boards.linux import cpu_features
from harness.records import DeviceFacts

# BatteryManager.BATTERY_STATUS_* as `dumpsys battery` prints them.
BATTERY_STATUS = {1: "unknown", 2: "charging", 3: "discharging", 4: "not charging", 5: "full"}
# PowerManager.THERMAL_STATUS_*.
THERMAL_STATUS = {0: "none", 1: "light", 2: "moderate", 3: "severe", 4: "critical", 5: "emergency", 6: "shutdown"}
# Temperature.TYPE_* (android.os.Temperature).
TEMPERATURE_TYPE = {-1: "unknown", 0: "cpu", 1: "gpu", 2: "battery", 3: "skin", 4: "usb_port", 5: "power_amplifier",
                    6: "bcl_voltage", 7: "bcl_current", 8: "bcl_percentage", 9: "npu"}

# A phone draws ~50 mA idle to ~5 A flat out; in microamps that is >= 10_000 (only a phone in
# deep sleep reads below, and then nothing is being benchmarked). Cell voltage is 3-4.5 V.
_MICRO_THRESHOLD = 10_000

_GETPROP_LINE = re.compile(r"^\[([^\]]+)\]: \[(.*)\]$")
_TEMPERATURE = re.compile(r"Temperature\{mValue=([-\d.]+), mType=(-?\d+), mName=([^,]*), mStatus=(\d+)\}")


def parse_getprop(text: str) -> dict[str, str]:
    """`getprop` listing (`[key]: [value]` lines) -> {key: value}; multi-line values are skipped."""
    props = {}
    for line in text.splitlines():
        match = _GETPROP_LINE.match(line.strip())
        if match:
            props[match.group(1)] = match.group(2)
    return props


@dataclass(frozen=True)
class BatteryState:
    """`dumpsys battery`: what the framework believes about the battery and its chargers."""

    status: str  # charging | discharging | not charging | full | unknown
    powered_by: tuple[str, ...]  # ("usb",), ("ac",) ...; empty when on battery alone
    level_pct: float | None
    voltage_mv: float | None
    temperature_c: float | None

    @property
    def on_external_power(self) -> bool:
        return bool(self.powered_by) or self.status in ("charging", "full", "not charging")


def parse_dumpsys_battery(text: str) -> BatteryState:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    if "status" not in fields:
        raise ValueError("not `dumpsys battery` output: no 'status' line")
    powered = tuple(kind for kind in ("ac", "usb", "wireless", "dock") if fields.get(f"{kind} powered") == "true")
    status_code = int(fields["status"]) if fields["status"].lstrip("-").isdigit() else 1
    level, scale = _number(fields.get("level")), _number(fields.get("scale")) or 100.0
    temperature = _number(fields.get("temperature"))  # tenths of a degree
    return BatteryState(
        status=BATTERY_STATUS.get(status_code, "unknown"),
        powered_by=powered,
        level_pct=None if level is None else 100.0 * level / scale,
        voltage_mv=_number(fields.get("voltage")),
        temperature_c=None if temperature is None else temperature / 10.0,
    )


def sysfs_status(text: str) -> str:
    """power_supply `status` ("Discharging", "Not charging"...) in BatteryState's words."""
    return text.strip().lower() or "unknown"


@dataclass(frozen=True)
class Temperature:
    name: str
    kind: str
    celsius: float
    status: str


@dataclass(frozen=True)
class ThermalState:
    status: str  # none | light | moderate | severe | critical | emergency | shutdown
    status_code: int
    temperatures: tuple[Temperature, ...]

    @property
    def throttling(self) -> bool:
        return self.status_code >= 2  # MODERATE: the framework asks apps to shed load

    def hottest(self, kind: str | None = None) -> Temperature | None:
        pool = [t for t in self.temperatures if kind is None or t.kind == kind]
        return max(pool, key=lambda t: t.celsius) if pool else None


def parse_thermalservice(text: str) -> ThermalState:
    """`dumpsys thermalservice` (Android 10+): the overall status and the HAL's current temperatures."""
    match = re.search(r"^Thermal Status: (\d+)", text, re.MULTILINE)
    if match is None:
        raise ValueError("not `dumpsys thermalservice` output: no 'Thermal Status' line")
    code = int(match.group(1))
    current = text.split("Current temperatures from HAL:", 1)
    section = current[1].split("Current cooling devices", 1)[0] if len(current) == 2 else text
    temperatures = tuple(
        Temperature(name=m.group(3), kind=TEMPERATURE_TYPE.get(int(m.group(2)), "unknown"), celsius=float(m.group(1)),
                    status=THERMAL_STATUS.get(int(m.group(4)), "unknown"))
        for m in _TEMPERATURE.finditer(section)
    )
    return ThermalState(THERMAL_STATUS.get(code, "unknown"), code, temperatures)


@dataclass(frozen=True)
class PowerConvention:
    """How one phone reports its battery: detected, with the evidence, and stored with results."""

    current_unit: str  # "uA" | "mA"
    voltage_unit: str  # "uV" | "mV"
    discharge_sign: int  # the sign current_now has while the battery discharges: -1 (kernel ABI) or +1
    basis: str  # why: which status the sign was read against, or that it was assumed

    @property
    def amps_per_unit(self) -> float:
        return 1e-6 if self.current_unit == "uA" else 1e-3

    @property
    def volts_per_unit(self) -> float:
        return 1e-6 if self.voltage_unit == "uV" else 1e-3

    def discharge_watts(self, current_raw: float, voltage_raw: float) -> float:
        """Power drawn from the battery, positive while discharging, in watts."""
        return self.discharge_sign * current_raw * self.amps_per_unit * voltage_raw * self.volts_per_unit

    def to_json(self) -> dict[str, object]:
        return {"current_unit": self.current_unit, "voltage_unit": self.voltage_unit,
                "discharge_sign": self.discharge_sign, "basis": self.basis}


def detect_power_convention(current_raw: float, voltage_raw: float, status: str) -> PowerConvention:
    """Units from magnitudes; the sign from the battery status reported at the same moment.

    Status "discharging": the current's sign *is* the discharge sign. "charging": the opposite.
    Anything else (full, not charging, unknown) says nothing about the sign, so the kernel ABI
    convention (negative = discharging) is assumed and the basis says so.
    """
    current_unit = "uA" if abs(current_raw) >= _MICRO_THRESHOLD else "mA"
    voltage_unit = "uV" if abs(voltage_raw) >= 100_000 else "mV"
    if current_raw != 0 and status in ("discharging", "charging"):
        sign = 1 if current_raw > 0 else -1
        discharge_sign = sign if status == "discharging" else -sign
        basis = f"current_now {current_raw:+g} while the battery reports {status}"
    else:
        discharge_sign = -1
        basis = f"assumed the kernel convention (negative = discharging): status {status!r} with current_now {current_raw:+g} does not show the sign"
    return PowerConvention(current_unit, voltage_unit, discharge_sign, basis)


def energy_withheld_reason(battery: BatteryState, sysfs_state: str | None = None) -> str | None:
    """Why energy figures cannot be trusted on this phone now, or None when it is discharging.

    On external power the charger feeds the phone and the battery current no longer shows the
    benchmark's draw (it may even be charging while the benchmark runs).
    """
    states = {battery.status} | ({sysfs_state} if sysfs_state else set())
    if battery.powered_by:
        return f"the phone is on external power ({', '.join(battery.powered_by)}): its draw is hidden by the charger; unplug it (Wi-Fi ADB) for energy figures"
    if states != {"discharging"}:
        return f"the battery is not discharging (status: {', '.join(sorted(states))}): energy needs a discharging phone"
    return None


def battery_supply(names: Iterable[str], types: Mapping[str, str]) -> str | None:
    """The power_supply entry that is the battery: type "Battery" first, then a name like it."""
    names = list(names)
    for name in names:
        if types.get(name, "").strip().lower() == "battery":
            return name
    for name in names:
        if name.lower() in ("battery", "bms", "main-battery"):
            return name
    return None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


# One shell line that dumps every power_supply entry's interesting files; a file the shell
# user may not read (SELinux) prints its error instead, so the denial is reported, not hidden.
POWER_SUPPLY_SCRIPT = (
    "for d in /sys/class/power_supply/*; do echo \"== ${d##*/}\"; "
    "for f in type status online current_now voltage_now; do "
    "[ -e \"$d/$f\" ] && { printf '%s=' \"$f\"; cat \"$d/$f\" 2>&1 | head -n 1; }; done; done; true"
)


@dataclass(frozen=True)
class BatteryReading:
    """One look at a phone's battery: raw sysfs values, what the framework says, what follows."""

    supply: str | None  # the power_supply entry used as the battery
    current_raw: float | None
    voltage_raw: float | None
    battery: BatteryState
    convention: PowerConvention | None
    unreadable: dict[str, str]  # device path -> the error the shell printed
    energy_withheld: str | None  # None: energy figures can be computed

    def to_json(self) -> dict[str, object]:
        return {
            "supply": self.supply, "current_now": self.current_raw, "voltage_now": self.voltage_raw,
            "status": self.battery.status, "powered_by": list(self.battery.powered_by),
            "convention": self.convention.to_json() if self.convention else None,
            "unreadable": dict(self.unreadable), "energy_withheld": self.energy_withheld,
        }


def parse_power_supply_dump(text: str) -> dict[str, dict[str, str]]:
    """Output of POWER_SUPPLY_SCRIPT -> {supply: {file: first line}}."""
    supplies: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("== "):
            current = supplies.setdefault(line[3:].strip(), {})
        elif current is not None and "=" in line:
            key, _, value = line.partition("=")
            current[key] = value.strip()
    return supplies


def battery_reading(power_dump: str, dumpsys_battery: str) -> BatteryReading:
    """Units, sign and whether energy may be computed, from one power_supply dump and
    `dumpsys battery` taken together (see `detect_power_convention`)."""
    supplies = parse_power_supply_dump(power_dump)
    battery = parse_dumpsys_battery(dumpsys_battery)
    name = battery_supply(supplies, {n: v.get("type", "") for n, v in supplies.items()})
    values = supplies.get(name or "", {})
    unreadable: dict[str, str] = {}
    numbers: dict[str, float | None] = {}
    for key in ("current_now", "voltage_now"):
        raw = values.get(key)
        try:
            numbers[key] = float(raw) if raw is not None else None
        except ValueError:
            numbers[key] = None
            unreadable[f"/sys/class/power_supply/{name}/{key}"] = raw or "unreadable"
    current, voltage = numbers["current_now"], numbers["voltage_now"]
    sysfs_state = sysfs_status(values["status"]) if "status" in values else None
    convention = None
    if current is not None and voltage is not None:
        convention = detect_power_convention(current, voltage, sysfs_state or battery.status)
    if name is None:
        withheld: str | None = "no battery in /sys/class/power_supply"
    elif convention is None:
        missing = ", ".join(f"{path}: {why}" for path, why in unreadable.items()) or "current_now/voltage_now absent"
        withheld = f"battery current/voltage not readable by the shell user ({missing})"
    else:
        withheld = energy_withheld_reason(battery, sysfs_state)
    return BatteryReading(name, current, voltage, battery, convention, unreadable, withheld)


def read_battery(driver: object) -> BatteryReading:
    """Read the battery through any driver (one shell command): before each energy case."""
    marker = "----edgebench-dumpsys----"
    done = driver.run(["sh", "-c", f"{POWER_SUPPLY_SCRIPT}; echo {marker}; dumpsys battery"], timeout=60)  # type: ignore[attr-defined]
    power, _, dumpsys = done.stdout.partition(marker + "\n")
    return battery_reading(power, dumpsys)


# One round trip gathers everything `parse_facts` needs; the sections are split by _SECTION.
_SECTION = "----edgebench-section----"
FACTS_SCRIPT = f"; echo {_SECTION}; ".join(
    ["getprop", "cat /proc/cpuinfo", "cat /proc/meminfo", "uname -r", "dumpsys battery", POWER_SUPPLY_SCRIPT])


def parse_facts(name: str, text: str, serial: str | None, adb_server: str) -> DeviceFacts:
    """`FACTS_SCRIPT` output -> DeviceFacts (pure; the emulated phone's tests feed it)."""
    getprop, cpuinfo, meminfo, kernel, battery_text, power_dump = (part.strip("\n") for part in text.split(_SECTION + "\n"))
    props = parse_getprop(getprop)
    cores = cpuinfo.count("processor\t:") or cpuinfo.count("processor")
    try:
        reading: BatteryReading | None = battery_reading(power_dump, battery_text)
        battery: BatteryState | None = reading.battery
        power = f"{'+'.join(battery.powered_by) or 'battery'}, {battery.status}"
    except ValueError:  # no `dumpsys battery` (not a full Android system)
        reading, battery, power = None, None, None
    soc = " ".join(v for v in (props.get("ro.soc.manufacturer"), props.get("ro.soc.model")) if v) or props.get("ro.board.platform", "")
    release, sdk = props.get("ro.build.version.release", "?"), props.get("ro.build.version.sdk", "?")
    extra: dict[str, Any] = {
        "serial": serial,
        "adb_server": adb_server,
        "model": props.get("ro.product.model"),
        "manufacturer": props.get("ro.product.manufacturer"),
        "device": props.get("ro.product.device"),
        "soc": soc,
        "abi": props.get("ro.product.cpu.abi"),
        "abilist": props.get("ro.product.cpu.abilist", "").split(","),
        "android_version": release,
        "sdk": sdk,
        "build_fingerprint": props.get("ro.build.fingerprint"),
        "kernel": kernel.strip(),
        "cpu_features": cpu_features(cpuinfo),
        "cpu_cores": _core_summary(cpuinfo),
        "battery": None if battery is None else {"status": battery.status, "powered_by": list(battery.powered_by),
                                                 "level_pct": battery.level_pct, "temperature_c": battery.temperature_c},
        "battery_power": None if reading is None else reading.to_json(),  # detected units/sign, energy eligibility
    }
    return DeviceFacts(
        name=name,
        driver="adb",
        os="Android",
        os_release=f"Android {release} (API {sdk})",
        arch=props.get("ro.product.cpu.abi", "unknown"),
        cpu_model=f"{soc} ({extra['cpu_cores']})" if extra["cpu_cores"] else soc,
        cores=cores,
        ram_mb=_meminfo_total_mb(meminfo),
        hostname=f"{props.get('ro.product.manufacturer', '')} {props.get('ro.product.model', '')}".strip(),
        power_source=power,
        extra=extra,
    )


# CPU part numbers (MIDR) of Arm cores found in phones, for a readable cpu_model.
ARM_CORES = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd4d": "Cortex-A715",
    "0xd4e": "Cortex-X3", "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4",
}


def _meminfo_total_mb(meminfo: str) -> int:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def _core_summary(cpuinfo: str) -> str:
    """"4x Cortex-A55 + 2x Cortex-A78 + 2x Cortex-X1" from the per-processor CPU part lines."""
    counts: dict[str, int] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "CPU part":
            core = ARM_CORES.get(value.strip().lower(), f"part {value.strip()}")
            counts[core] = counts.get(core, 0) + 1
    return " + ".join(f"{n}x {core}" for core, n in counts.items())
