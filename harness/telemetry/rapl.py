"""x86 package energy from RAPL (`/sys/class/powercap/intel-rapl:*`).

`energy_uj` is a cumulative counter that wraps at `max_energy_range_uj`; the counter is sampled
each tick and the energy is the sum of tick-to-tick deltas, so a wrap between two ticks (minutes
apart at full load) is undone exactly. Since the PLATYPUS fix (CVE-2020-8694) `energy_uj` is
readable by root only, which is the usual reason this figure is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from harness.results.records import Metric
from harness.telemetry import Found, Sample, shown, unreadable_reason


def parse_uj(text: str) -> int:
    """A powercap counter or range file (integer micro-joules)."""
    return int(text.strip())


def energy_delta_j(start_uj: int, end_uj: int, max_range_uj: int) -> float:
    """Joules between two readings of one counter, allowing one wraparound between them."""
    if end_uj >= start_uj:
        return (end_uj - start_uj) / 1e6
    return (max_range_uj - start_uj + end_uj) / 1e6


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

    def metrics(self, samples: Sequence[Sample]) -> list[Metric]:
        """energy_j (all packages, summed) and avg_power_w over the sampled window."""
        if self.unreadable or not self.domains:  # a sum over some sockets is not the CPU's energy
            reason = self.found.reason()
            return [Metric.missing("energy_j", "J", reason), Metric.missing("avg_power_w", "W", reason)]
        energy = 0.0
        span = 0.0
        for domain in self.domains:
            readings = [s for s in samples if s.source == domain.source]
            if len(readings) < 2:
                reason = f"fewer than two readings of {domain.source} in the window"
                return [Metric.missing("energy_j", "J", reason), Metric.missing("avg_power_w", "W", reason)]
            for before, after in zip(readings, readings[1:]):
                energy += energy_delta_j(int(before.value), int(after.value), domain.max_range_uj)
            span = max(span, readings[-1].t - readings[0].t)
        power = Metric("avg_power_w", energy / span, "W") if span > 0 else (
            Metric.missing("avg_power_w", "W", "the window has zero length"))
        return [Metric("energy_j", energy, "J"), power]
