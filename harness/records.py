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


# Why a case got no more rounds under a precision target.
STOP_REASONS = ("within-target", "max-repetitions", "failed", "no-figure")


@dataclass(frozen=True)
class Stop:
    """A precision target's verdict on one case, stored with it (harness.run.precision decides).

    `half_width` is the 95% CI half-width of `metric` as a share of its mean over the `n`
    successful processes (None below two); `processes` counts every process of the case, failed
    ones included (what `max_repetitions` bounds).
    """

    case_key: str
    reason: str
    metric: str
    target: float
    max_repetitions: int
    n: int
    processes: int
    half_width: float | None = None

    def __post_init__(self) -> None:
        if self.reason not in STOP_REASONS:
            raise ValueError(f"stop reason {self.reason!r}: expected one of {', '.join(STOP_REASONS)}")

    def describe(self) -> str:
        """One line for a table: what was reached, and why the rounds ended."""
        reached = "" if self.half_width is None else f"±{self.half_width * 100:.1f}% "
        return {
            "within-target": f"{reached}within ±{self.target * 100:g}% after {self.n}",
            "max-repetitions": f"{reached}at the {self.max_repetitions}-process limit",
            "failed": f"{reached}stopped: its last process failed",
            "no-figure": f"stopped: no {self.metric} figure",
        }[self.reason]

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> "Stop":
        return cls(**data)  # type: ignore[arg-type]
