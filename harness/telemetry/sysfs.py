"""CPU temperature (thermal zones, hwmon) and clock (cpufreq) from sysfs.

Heat and clock explain a throughput figure: a decode rate that drops while temp_max_c climbs
and cpu_freq_mhz falls is throttling, not the model. Only CPU sensors count; a wifi or battery
zone says nothing about the benchmark.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Callable, Sequence

from harness.records import Metric
from harness.telemetry import Found, Sample, shown, unreadable_reason

# Substrings of thermal zone types / hwmon names that measure the CPU package or cores:
# x86_pkg_temp (Intel), coretemp (Intel), k10temp/zenpower (AMD), cpu-thermal / cpu_thermal
# (Raspberry Pi, many Arm SoCs), soc_thermal (Rockchip), mtktscpu (MediaTek).
CPU_THERMAL_TYPES = ("cpu", "x86_pkg", "soc")
CPU_HWMON_NAMES = ("coretemp", "k10temp", "zenpower", "cpu", "soc")


def parse_millidegrees(text: str) -> float:
    """A sysfs temperature (milli-°C, e.g. "45000") in °C."""
    return int(text.strip()) / 1000


def parse_khz(text: str) -> float:
    """A cpufreq frequency (kHz, e.g. "2400000") in MHz."""
    return int(text.strip()) / 1000


def _probe(root: Path, path: Path, parse: Callable[[str], float]) -> str | None:
    """None if `path` reads and parses now, else why not (checked once, at discovery)."""
    try:
        parse(path.read_text())
    except OSError as exc:
        return unreadable_reason(root, path, exc)
    except ValueError:
        return f"{shown(root, path)} does not hold a number"
    return None


def _add(found: Found, source: str, root: Path, path: Path, parse: Callable[[str], float]) -> None:
    problem = _probe(root, path, parse)
    if problem is None:
        found.readable[source] = path
    else:
        found.unreadable[source] = problem


def _is_cpu(label: str, hints: Sequence[str]) -> bool:
    return any(hint in label.lower() for hint in hints)


def _label(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def discover_thermal_zones(root: Path = Path("/")) -> Found:
    """CPU thermal zones: `thermal/<zone>:<type>` -> its `temp` file."""
    base = root / "sys/class/thermal"
    zones = sorted(base.glob("thermal_zone*"))
    found = Found()
    types = []
    for zone in zones:
        kind = _label(zone / "type")
        types.append(kind or "?")
        if _is_cpu(kind, CPU_THERMAL_TYPES):
            _add(found, f"thermal/{zone.name}:{kind}", root, zone / "temp", parse_millidegrees)
    if not found.readable and not found.unreadable:
        seen = f" (types: {', '.join(types)})" if types else ""
        found.unreadable["thermal"] = f"no CPU thermal zone under {shown(root, base)}{seen}"
    return found


def discover_hwmon(root: Path = Path("/")) -> Found:
    """CPU hwmon temperatures: `hwmon/<hwmonN>:<name>/<tempK>` -> its `tempK_input` file."""
    base = root / "sys/class/hwmon"
    found = Found()
    names = []
    for chip in sorted(base.glob("hwmon*")):
        name = _label(chip / "name")
        names.append(name or "?")
        if _is_cpu(name, CPU_HWMON_NAMES):
            for temp in sorted(chip.glob("temp*_input")):
                sensor = temp.name.removesuffix("_input")
                _add(found, f"hwmon/{chip.name}:{name}/{sensor}", root, temp, parse_millidegrees)
    if not found.readable and not found.unreadable:
        seen = f" (chips: {', '.join(names)})" if names else ""
        found.unreadable["hwmon"] = f"no CPU hwmon sensor under {shown(root, base)}{seen}"
    return found


def discover_cpufreq(root: Path = Path("/")) -> Found:
    """Per-core current clock: `cpufreq/cpuN` -> its `scaling_cur_freq` file."""
    base = root / "sys/devices/system/cpu"
    found = Found()
    for cpu in sorted(base.glob("cpu[0-9]*"), key=lambda p: int(p.name[3:])):
        path = cpu / "cpufreq" / "scaling_cur_freq"
        if path.parent.is_dir():
            _add(found, f"cpufreq/{cpu.name}", root, path, parse_khz)
    if not found.readable and not found.unreadable:
        reason = f"no cpufreq/scaling_cur_freq under {shown(root, base)} (no scaling driver; usual in VMs)"
        found.unreadable["cpufreq"] = reason
    return found


def read_found(found: Found, t: float, parse: Callable[[str], float], unit: str) -> list[Sample]:
    """One tick over every readable file; a read that fails now is skipped, never zeroed."""
    samples = []
    for source, path in found.readable.items():
        try:
            samples.append(Sample(t, source, parse(path.read_text()), unit))
        except (OSError, ValueError):
            continue
    return samples


def temp_max_metric(samples: Sequence[Sample], reason: str) -> Metric:
    """temp_max_c: the hottest CPU reading in the window, thermal zones and hwmon together."""
    values = tuple(s.value for s in samples if s.source.startswith(("thermal/", "hwmon/")))
    if not values:
        return Metric.missing("temp_max_c", "C", reason)
    return Metric("temp_max_c", max(values), "C", samples=values)


def cpu_freq_metric(samples: Sequence[Sample], reason: str) -> Metric:
    """cpu_freq_mhz: mean of every per-core reading in the window; the readings are kept."""
    values = tuple(s.value for s in samples if s.source.startswith("cpufreq/"))
    if not values:
        return Metric.missing("cpu_freq_mhz", "MHz", reason)
    return Metric("cpu_freq_mhz", fmean(values), "MHz", samples=values)
