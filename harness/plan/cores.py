"""Which cores a case's benchmark runs on: a `threads` setting resolved against the device's
CPU clusters (harness.telemetry.clusters) when the plan is made.

Phones and boards mix fast and slow cores; `-t 8` on a 4+4 phone puts half the threads on
little cores and the figure then measures the slowest core. The default is the performance
cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from harness.records import Case, CoreChoice
from harness.telemetry.clusters import Cluster


def _mask(cpus: Sequence[int]) -> str:
    return hex(sum(1 << c for c in cpus))


def choose(clusters: Sequence[Cluster], threads: Literal["big", "all"]) -> CoreChoice:
    """`threads` = "big" (the fastest cluster, the default) or "all" -> threads, cores and mask
    to run on. A count or a list of cores in a suite is passed to the engine as it is."""
    if threads == "big":
        cpus = clusters[0].cpus
        why = f"the fastest of {len(clusters)} cluster(s)" if len(clusters) > 1 else "all cores (one cluster)"
    else:
        cpus, why = tuple(cpu for cluster in clusters for cpu in cluster.cpus), "all cores"
    return CoreChoice(threads, len(cpus), tuple(cpus), _mask(cpus), why)


def resolve_threads(case: Case, clusters: Sequence[Cluster], *, takes_mask: bool = True) -> tuple[Case, CoreChoice | None]:
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
    settings["threads"] = choice.n_threads
    why = choice.why
    if takes_mask:
        settings.setdefault("cpu_mask", choice.cpu_mask)
    else:
        why += f"; {case.engine} takes a thread count, not a mask: the scheduler places the threads"
    return replace(case, settings=tuple(sorted(settings.items()))), replace(choice, cpu_mask=settings.get("cpu_mask"), why=why)


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
