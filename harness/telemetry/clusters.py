"""The device's CPU clusters (big.LITTLE and friends), read through its driver, and the core
the probe takes beside a benchmark.

Clusters come from `cpu_capacity` (the scheduler's own ranking, Arm) or else
`cpuinfo_max_freq`; a machine where neither exists (x86 VMs) is one cluster. The plan resolves
`threads` against them (harness.plan.cores); the probe sits on a core they leave free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.drivers.base import Driver
from harness.drivers.devicefs import FileRead, read_files

CORE_GLOBS = (
    "/sys/devices/system/cpu/cpu[0-9]*/cpu_capacity",
    "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq",
    "/sys/devices/system/cpu/online",
)


@dataclass(frozen=True)
class Cluster:
    """Cores of one kind, fastest cluster first in every list this module returns."""

    cpus: tuple[int, ...]
    capacity: int | None  # cpu_capacity (1024 = the fastest core), when the kernel has it
    max_mhz: float | None


def parse_online(text: str) -> list[int]:
    """`/sys/devices/system/cpu/online` ("0-3,6") -> [0, 1, 2, 3, 6]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-")
            cpus.extend(range(int(lo), int(hi) + 1))
        elif part:
            cpus.append(int(part))
    return cpus


def clusters_from(files: dict[str, FileRead], cores: int) -> list[Cluster]:
    """Group cores by (capacity, max frequency), fastest first (pure)."""
    online = files.get("/sys/devices/system/cpu/online")
    cpus = parse_online(online.value) if online and online.value else list(range(cores))
    groups: dict[tuple[int | None, float | None], list[int]] = {}
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}"
        cap = files.get(f"{base}/cpu_capacity")
        freq = files.get(f"{base}/cpufreq/cpuinfo_max_freq")
        key = (int(cap.value) if cap and cap.value and cap.value.isdigit() else None,
               int(freq.value) / 1000 if freq and freq.value and freq.value.isdigit() else None)
        groups.setdefault(key, []).append(cpu)
    ranked = sorted(groups.items(), key=lambda kv: (-(kv[0][0] or 0), -(kv[0][1] or 0)))
    return [Cluster(tuple(c), cap, mhz) for (cap, mhz), c in ranked]


def read_clusters(driver: Driver, cores: int, root: str = "") -> list[Cluster]:
    """The device's CPU clusters, read through its driver (one command)."""
    return clusters_from(read_files(driver, CORE_GLOBS, root), cores)


def probe_cpu(clusters: Sequence[Cluster], busy: Sequence[int]) -> int | None:
    """A core for the probe that the benchmark does not use: the slowest free one, or None
    when the benchmark uses every core (the probe then floats, costing a tick's worth)."""
    for cluster in reversed(clusters):
        free = [cpu for cpu in cluster.cpus if cpu not in busy]
        if free:
            return free[-1]
    return None
