"""Records shared by engines, telemetry, the store and analysis.

A metric is either measured (value + unit) or missing with a reason: never a silent zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Metric:
    """One figure of one process run of one case.

    `samples` keeps the raw in-process values (e.g. llama-bench `samples_ts`) so statistics
    are derived late, from raw data, never stored instead of it.
    """

    name: str
    value: float | None
    unit: str
    missing_reason: str | None = None
    samples: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.value is None and not self.missing_reason:
            raise ValueError(f"metric {self.name}: a missing value needs a reason")

    @classmethod
    def missing(cls, name: str, unit: str, reason: str) -> "Metric":
        return cls(name=name, value=None, unit=unit, missing_reason=reason)
