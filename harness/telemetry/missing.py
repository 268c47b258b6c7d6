"""No sampler on the device: every figure one would give is missing, with one reason."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.drivers.base import Completed
from harness.records import Metric


class MissingTelemetry:
    """The Telemetry protocol where nothing can sample (no probe staged on the device)."""

    METRICS = (("peak_rss_mb", "MB"), ("avg_power_w", "W"), ("energy_j", "J"), ("energy_j_per_token", "J/token"),
               ("temp_max_c", "C"), ("gpu_load_pct", "%"))

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __enter__(self) -> "MissingTelemetry":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def wrap(self, argv: list[str], marks: str | None = None, cpus: Sequence[int] | None = None) -> list[str]:
        return argv

    def attach(self, pid: int) -> None:
        return None

    def marks(self) -> list[tuple[float, str]]:
        return []

    def metrics(self, completed: Completed, windows: Sequence[tuple[float, float]], tokens: int,
                no_window: str | None = None) -> list[Metric]:
        return [Metric.missing(name, unit, self.reason) for name, unit in self.METRICS]

    def write_csv(self, path: Path) -> None:
        path.write_text(f"# no telemetry: {self.reason}\n", encoding="utf-8")

    def details(self) -> dict[str, Any]:
        return {"sampler": None, "reason": self.reason}
