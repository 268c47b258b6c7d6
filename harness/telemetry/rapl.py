"""x86 package energy from RAPL (`/sys/class/powercap/intel-rapl:*`).

`energy_uj` is a cumulative counter that wraps at `max_energy_range_uj`; the counter is sampled
each tick and unwrapped (one wrap between two ticks, minutes apart at full load, is undone
exactly), then integrated over the engine's measured windows by harness.telemetry.energy.
Since the PLATYPUS fix (CVE-2020-8694) `energy_uj` is readable by root only, which is the
usual reason this figure is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from harness.telemetry import Found, Sample, energy, shown, unreadable_reason


def parse_uj(text: str) -> int:
    """A powercap counter or range file (integer micro-joules)."""
    return int(text.strip())


@dataclass(frozen=True)
class RaplDomain:
    source: str  # "rapl/intel-rapl:0/package-0"
    energy_path: Path
    max_range_uj: int


@dataclass(frozen=True)
class Rapl:
    """The package domains found (one per socket) and why the others cannot be used."""

    domains: tuple[RaplDomain, ...]
    unreadable: dict[str, str] = field(default_factory=dict)

    @classmethod
    def discover(cls, root: Path = Path("/")) -> "Rapl":
        base = root / "sys/class/powercap"
        zones = sorted(base.glob("intel-rapl:*"))
        domains = []
        unreadable: dict[str, str] = {}
        names = []
        for zone in zones:
            try:
                name = (zone / "name").read_text().strip()
            except OSError as exc:
                unreadable[f"rapl/{zone.name}"] = unreadable_reason(root, zone / "name", exc)
                continue
            names.append(name)
            # Sub-zones (core, uncore, dram) are inside the package and psys spans the
            # platform: only package-N domains add up to the CPU's energy without overlap.
            if not name.startswith("package"):
                continue
            source = f"rapl/{zone.name}/{name}"
            try:
                parse_uj((zone / "energy_uj").read_text())
                max_range = parse_uj((zone / "max_energy_range_uj").read_text())
            except OSError as exc:
                unreadable[source] = unreadable_reason(root, Path(exc.filename or zone), exc)
                continue
            except ValueError:
                unreadable[source] = f"{shown(root, zone)} holds a non-numeric energy counter"
                continue
            domains.append(RaplDomain(source, zone / "energy_uj", max_range))
        if not zones:
            unreadable["rapl"] = f"no RAPL domain under {shown(root, base)}"
        elif not domains and not unreadable:
            seen = ", ".join(names)
            unreadable["rapl"] = f"no RAPL package domain under {shown(root, base)} (domains: {seen})"
        return cls(tuple(domains), unreadable)

    @property
    def found(self) -> Found:
        return Found({d.source: d.energy_path for d in self.domains}, dict(self.unreadable))

    def read(self, t: float) -> list[Sample]:
        """One raw counter reading per domain; a failed read is skipped, never zeroed."""
        samples = []
        for domain in self.domains:
            try:
                value = parse_uj(domain.energy_path.read_text())
            except (OSError, ValueError):
                continue
            samples.append(Sample(t, domain.source, float(value), "uJ"))
        return samples

    def trace(self, samples: Sequence[Sample], interval_s: float) -> tuple[energy.Trace | None, str]:
        """Every package summed as one counter trace (see `package_trace`), or None and why."""
        if self.unreadable or not self.domains:  # a sum over some sockets is not the CPU's energy
            return None, self.found.reason()
        series = {d.source: [s for s in samples if s.source == d.source] for d in self.domains}
        short = [name for name, readings in series.items() if len(readings) < 2]
        if short:
            return None, f"fewer than two readings of {short[0]} in the window"
        ranges = {d.source: float(d.max_range_uj) for d in self.domains}
        return package_trace(series, ranges, interval_s), ""


def package_trace(series: dict[str, Sequence[Sample]], ranges: dict[str, float], interval_s: float) -> energy.Trace:
    """All package domains summed (one per socket), each unwrapped at its own range, on the
    first domain's ticks: the CPU's energy in joules, as a counter (readings in uJ)."""
    names = list(series)
    t = tuple(s.t for s in series[names[0]])
    joules = [0.0] * len(t)
    for name in names:
        unwrapped = energy.unwrap_counter([s.value for s in series[name]], ranges.get(name, float(2**32)))
        for i, v in enumerate(unwrapped[: len(t)]):
            joules[i] += v / 1e6
    return energy.Trace(energy.CPU_PACKAGE, "+".join(names), t, tuple(joules), "energy", interval_s)
