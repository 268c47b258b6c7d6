"""The protocol every sampler implements (probe, host, board tools, none): what the runner
holds around one benchmark process. Which one a device gets is harness.telemetry.factory's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from harness.drivers.base import Completed
from harness.records import Mark, Metric, Window


class Telemetry(Protocol):
    """Samples a device beside one benchmark process (a context manager around the run).

    It never reads the benchmark's argv or output: the runner hands it what it needs.
    `wrap` may put a sampler in front of the command (the native probe does), told which
    stderr line prefix to stamp (`marks`, the engine's) and which cores the benchmark runs on
    (`cpus`, from the case's resolved settings; None: unknown); `attach` gets the benchmark's
    pid once it runs; `marks()` returns the stamped lines for the engine to find its windows
    in; `metrics` turns what was sampled into metrics, each measured or missing with its
    reason, with energy integrated over the engine's measured `windows` ((start, duration) on
    the device clock, processing `tokens`), or missing saying `no_window` when there are none.
    """

    def __enter__(self) -> "Telemetry": ...

    def __exit__(self, *exc: object) -> None: ...

    def wrap(self, argv: list[str], marks: str | None = None, cpus: Sequence[int] | None = None) -> list[str]: ...

    def attach(self, pid: int) -> None: ...

    def marks(self) -> list[Mark]: ...

    def metrics(self, completed: Completed, windows: Sequence[Window], tokens: int,
                no_window: str | None = None) -> list[Metric]: ...

    def write_csv(self, path: Path) -> None: ...

    def details(self) -> dict[str, Any]: ...  # what the figures rest on: sources, power scope
