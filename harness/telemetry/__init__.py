"""Telemetry: what the device did while a benchmark ran (memory, heat, clocks, energy).

Every source is found by discovery, which says for each sensor either that it is readable or
why not, so a figure that cannot be measured is stored missing with that reason, never as 0.
Parsers are pure functions over sysfs/procfs text; samplers stamp values on `time.monotonic()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One raw reading: kept as read (counters stay counters) so figures are derived late."""

    t: float  # time.monotonic() seconds on the sampling host
    source: str  # family/sensor, e.g. "rapl/intel-rapl:0/package-0", "proc/RssAnon"
    value: float
    unit: str


@dataclass(frozen=True)
class Found:
    """The result of one discovery pass over a sensor family.

    `readable` maps a sample source name to the file to read each tick; `unreadable` maps a
    source (or the family name, when nothing exists at all) to the reason it cannot be used.
    """

    readable: dict[str, Path] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)

    def reason(self) -> str:
        """Why this family gives no figure: every problem, joined, for the missing metric."""
        return "; ".join(self.unreadable.values())


def shown(root: Path, path: Path) -> str:
    """A path as it is on the device, so reasons read `/sys/...` even under a test root."""
    return "/" + str(path.relative_to(root)) if root != Path("/") and path.is_relative_to(root) else str(path)


def unreadable_reason(root: Path, path: Path, exc: OSError) -> str:
    """Turn a failed read into the reason a person can act on (root, a missing driver...)."""
    if isinstance(exc, PermissionError):
        return f"permission denied reading {shown(root, path)} (root needed)"
    if isinstance(exc, FileNotFoundError):
        return f"{shown(root, path)} does not exist"
    return f"cannot read {shown(root, path)}: {exc.strerror or exc}"


# Imported after Sample and Found exist: the host module builds on them.
from harness.telemetry.host import HostTelemetry, describe_host_sensors  # noqa: E402

__all__ = ["Found", "HostTelemetry", "Sample", "describe_host_sensors", "shown", "unreadable_reason"]
