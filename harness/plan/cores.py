"""CPU clusters (big.LITTLE and friends) and which cores a benchmark, and the probe, use.

Phones and boards mix fast and slow cores; `-t 8` on a 4+4 phone puts half the threads on
little cores and the figure then measures the slowest core. Clusters come from
`cpu_capacity` (the scheduler's own ranking, Arm) or else `cpuinfo_max_freq`; a machine where
neither exists (x86 VMs) is one cluster. The default is the performance cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from harness.plan.planner import Case

if TYPE_CHECKING:  # pure: the files are read by harness.drivers.devicefs.read_clusters
    from harness.drivers.devicefs import FileRead

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


@dataclass(frozen=True)
class CoreChoice:
    """What a `threads` setting turned into on one device, recorded with the run."""

    threads: int
    cpus: tuple[int, ...]
    mask: str  # llama-bench -C form, e.g. "0xf0"
    why: str


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


def clusters_from(files: dict[str, "FileRead"], cores: int) -> list[Cluster]:
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


def _mask(cpus: Sequence[int]) -> str:
    return hex(sum(1 << c for c in cpus))


def choose(clusters: Sequence[Cluster], threads: str | int | Sequence[int]) -> CoreChoice:
    """`threads` = "big" (the fastest cluster, the default), "all", N (N cores, fastest first)
    or a list of core numbers -> threads, cores and mask to run on."""
    fastest_first = [cpu for cluster in clusters for cpu in cluster.cpus]
    if threads == "big":
        cpus = clusters[0].cpus
        why = f"the fastest of {len(clusters)} cluster(s)" if len(clusters) > 1 else "all cores (one cluster)"
    elif threads == "all":
        cpus, why = tuple(fastest_first), "all cores"
    elif isinstance(threads, int) and not isinstance(threads, bool):
        if not 1 <= threads <= len(fastest_first):
            raise ValueError(f"threads = {threads}: the device has {len(fastest_first)} cores")
        cpus, why = tuple(sorted(fastest_first[:threads])), f"{threads} core(s), fastest first"
    elif isinstance(threads, (list, tuple)) and threads:
        unknown = sorted(set(threads) - set(fastest_first))
        if unknown:
            raise ValueError(f"threads = {list(threads)}: no core {unknown} on this device (cores: {sorted(fastest_first)})")
        cpus, why = tuple(sorted(set(threads))), "the listed cores"
    else:
        raise ValueError(f'threads = {threads!r}: expected "big", "all", a positive integer or a list of cores')
    return CoreChoice(len(cpus), tuple(cpus), _mask(cpus), why)


def probe_cpu(clusters: Sequence[Cluster], busy: Sequence[int]) -> int | None:
    """A core for the probe that the benchmark does not use: the slowest free one, or None
    when the benchmark uses every core (the probe then floats, costing a tick's worth)."""
    for cluster in reversed(clusters):
        free = [cpu for cpu in cluster.cpus if cpu not in busy]
        if free:
            return free[-1]
    return None


def resolve_threads(case: Case, clusters: Sequence[Cluster], *, takes_mask: bool = True) -> tuple[Case, dict[str, Any] | None]:
    """The case as it runs on this device: `threads = "big" | "all"` become a thread count and,
    for an engine that takes one (`takes_mask`), a CPU mask (unless the suite set `cpu_mask`
    itself). An unset `threads` means "big" where the cores differ (the performance cluster,
    not the little cores), and is left to the runtime's own default where they are all alike.
    Returns the case to run and what was chosen, or None. The plan calls this once, so the
    stored case is the one that runs."""
    settings = dict(case.settings)
    wanted = settings.get("threads")
    if wanted is None and len(clusters) > 1:
        wanted = "big"
    if wanted not in ("big", "all") or not clusters:
        return case, None
    choice = choose(clusters, wanted)
    settings["threads"] = choice.threads
    why = choice.why
    if takes_mask:
        settings.setdefault("cpu_mask", choice.mask)
    else:
        why += f"; {case.engine} takes a thread count, not a mask: the scheduler places the threads"
    chosen = {"threads": wanted, "n_threads": choice.threads, "cpus": list(choice.cpus),
              "cpu_mask": settings.get("cpu_mask"), "why": why}
    return replace(case, settings=tuple(sorted(settings.items()))), chosen


def benchmark_cpus(case: Case, clusters: Sequence[Cluster]) -> list[int] | None:
    """The cores a resolved case runs on, from its settings: its `cpu_mask`, else its first
    `threads` cores fastest first; None when the settings leave it to the OS."""
    mask = case.setting("cpu_mask")
    if mask is not None:
        bits = int(str(mask), 16)
        return [cpu for cluster in clusters for cpu in cluster.cpus if bits >> cpu & 1]
    threads = case.setting("threads")
    if isinstance(threads, int) and not isinstance(threads, bool):
        return [cpu for cluster in clusters for cpu in cluster.cpus][:threads]
    return None
