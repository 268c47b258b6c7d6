"""Memory of the benchmark process from `/proc/<pid>/status`.

RssAnon is what the model's buffers and KV cache cost; RssFile is the mmap'd weights, which
the kernel may drop and re-read, so the two are reported apart. Peak RSS itself comes from the
`wait4` rusage, which the kernel fills as the process is reaped and so cannot miss its last peak.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from harness.drivers.base import ResourceUsage
from harness.records import Metric
from harness.telemetry import Sample

# The status keys sampled each tick (all kB); kernels before 4.5 have no Rss* split.
SAMPLED_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSwap")
_KIB_PER_MB = 1024  # "MB" throughout edgebench is MiB, as /proc's "kB" is KiB


def parse_status(text: str) -> dict[str, int]:
    """Every `Key:  <n> kB` line of a status file, in kB; other lines are skipped.

    A zombie (exited, not yet reaped) has no Vm*/Rss* lines at all, and old kernels lack
    RssAnon/RssFile: callers get the keys that exist and decide what a gap means.
    """
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if sep and len(fields) == 2 and fields[1] == "kB" and fields[0].isdigit():
            values[key.strip()] = int(fields[0])
    return values


def read_status(pid: int, root: Path = Path("/")) -> dict[str, int]:
    """The parsed status of `pid`, or {} once the process is gone (it has no memory left)."""
    try:
        return parse_status((root / "proc" / str(pid) / "status").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return {}


def status_samples(t: float, status: dict[str, int]) -> list[Sample]:
    """The sampled keys of one status read, as `proc/<Key>` samples in kB."""
    return [Sample(t, f"proc/{key}", float(status[key]), "kB") for key in SAMPLED_KEYS if key in status]


def peak_rss_metric(rusage: ResourceUsage | None) -> Metric:
    """peak_rss_mb from wait4's ru_maxrss (kB on Linux)."""
    if rusage is None:
        return Metric.missing("peak_rss_mb", "MB", "the driver returned no wait4 rusage for this process")
    return Metric("peak_rss_mb", rusage.max_rss_kb / _KIB_PER_MB, "MB")


def rss_split_metrics(samples: Sequence[Sample], no_samples_reason: str) -> list[Metric]:
    """peak_rss_anon_mb and peak_rss_file_mb: the largest sampled RssAnon / RssFile.

    `no_samples_reason` explains an empty window (never attached, or the process ended before
    the first tick); a window with samples but no Rss* keys means an old kernel.
    """
    metrics = []
    for key, name in (("RssAnon", "peak_rss_anon_mb"), ("RssFile", "peak_rss_file_mb")):
        values = tuple(s.value / _KIB_PER_MB for s in samples if s.source == f"proc/{key}")
        if values:
            metrics.append(Metric(name, max(values), "MB", samples=values))
        elif any(s.source.startswith("proc/") for s in samples):
            reason = f"no {key} in /proc/<pid>/status (kernel older than 4.5)"
            metrics.append(Metric.missing(name, "MB", reason))
        else:
            metrics.append(Metric.missing(name, "MB", no_samples_reason))
    return metrics
