"""The records every layer passes around: a case, a metric, a precision verdict, a core choice,
a measured window, the device's facts, and the clock they are stamped with.

A leaf: it imports nothing of edgebench, so the planner, the engines, telemetry, the store and
analysis can all share these types without importing each other (tests/test_layout.py).
A metric is either measured (value + unit) or missing with a reason: never a silent zero.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

Window = tuple[float, float]  # (start_s, duration_s) of one measured repetition, on the device clock
Mark = tuple[float, str]  # (t_s on the device clock, the stderr line) as the sampler stamped it


def now_iso() -> str:
    """This host's UTC clock, to the second: how every stored time is spelled."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


@dataclass(frozen=True)
class CoreChoice:
    """What a case's `threads` setting ("big" or "all") became on one device (harness.plan.cores
    decides): stored with the case, shown by the plan, and the thread counts the bandwidth figure
    is measured at (harness.telemetry.bandwidth), so it lives here, below all three."""

    threads: str  # what the suite asked: "big" | "all"
    n_threads: int
    cpus: tuple[int, ...]
    cpu_mask: str | None  # the mask the case runs with, llama-bench -C form ("0xf0"); None: the engine takes none
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"threads": self.threads, "n_threads": self.n_threads, "cpus": list(self.cpus), "cpu_mask": self.cpu_mask, "why": self.why}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CoreChoice":
        return cls(data["threads"], int(data["n_threads"]), tuple(data["cpus"]), data["cpu_mask"], data["why"])


# The figure a case is run for: what a precision target is about, and what the progress shows.
PRIMARY_METRIC = {"prefill": "prefill_tps", "decode": "decode_tps", "pg": "pg_tps", "latency": "ttft_ms", "quality": "kld_mean",
                  "serve": "agg_tps"}


@dataclass(frozen=True)
class Case:
    """One benchmark test, run as `repetitions` separate processes by the runner.

    kind: "prefill" (n_prompt tokens, no generation), "decode" (n_gen tokens after `depth`
    tokens of context), "pg" (prompt then generation in one test), "latency" (pyllama:
    time to first token and inter-token latency for an n_prompt prompt and n_gen tokens), or
    "serve" (llama-server: n_prompt-token prompts, n_gen tokens each, with the `concurrency` and
    `requests` settings: see harness.engines.server), or
    "quality" (llama-perplexity: the output against the reference's over `chunks` windows of
    n_prompt tokens; `quality` names the chunks, corpus and reference by sha256, so a case
    scored against another reference is another case).
    """

    engine: str
    kind: str
    n_prompt: int
    n_gen: int
    depth: int
    settings: tuple[tuple[str, Any], ...] = ()
    inprocess_reps: int = 1
    warmup: bool = True
    quality: tuple[tuple[str, Any], ...] = ()

    def setting(self, name: str, default: Any = None) -> Any:
        return dict(self.settings).get(name, default)

    def quality_value(self, name: str) -> Any:
        return dict(self.quality).get(name)

    @property
    def runs_once(self) -> bool:
        """A quality case computes the same figures every time: one process, not one per round."""
        return self.kind == "quality"

    def processes(self, repetitions: int) -> int:
        """How many processes the case gets in a plan of `repetitions` rounds (before a precision target adds rounds)."""
        return 1 if self.runs_once else repetitions

    @property
    def primary_metric(self) -> str:
        return PRIMARY_METRIC[self.kind]

    @property
    def label(self) -> str:
        """Short human name, e.g. `prefill p512`, `decode n64 @d2048`."""
        parts = {
            "prefill": f"p{self.n_prompt}",
            "decode": f"n{self.n_gen}" + (f" @d{self.depth}" if self.depth else ""),
            "pg": f"p{self.n_prompt}+n{self.n_gen}",
            "latency": f"p{self.n_prompt}+n{self.n_gen}",
            "serve": f"p{self.n_prompt}+n{self.n_gen}",
            "quality": f"c{self.n_prompt} x{self.quality_value('chunks')}"
            + (f" override {self.quality_value('override_kv')}" if self.quality_value("override_kv") else ""),
        }[self.kind]
        extra = " ".join(f"{k}={v}" for k, v in self.settings)
        return f"{self.kind} {parts}" + (f" [{extra}]" if extra else "")

    @property
    def context(self) -> int:
        """The context length the case exercises: what tables and plots use as x."""
        return {"prefill": self.n_prompt, "decode": self.depth, "pg": self.n_prompt, "latency": self.n_prompt,
                "serve": self.n_prompt, "quality": self.n_prompt}[self.kind]

    def to_json(self) -> dict[str, Any]:
        # "quality" only where there is one, so the keys of the speed cases stay what they were
        return ({"quality": dict(self.quality)} if self.quality else {}) | {
            "engine": self.engine,
            "kind": self.kind,
            "n_prompt": self.n_prompt,
            "n_gen": self.n_gen,
            "depth": self.depth,
            "settings": dict(self.settings),
            "inprocess_reps": self.inprocess_reps,
            "warmup": self.warmup,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Case":
        return cls(
            engine=data["engine"],
            kind=data["kind"],
            n_prompt=data["n_prompt"],
            n_gen=data["n_gen"],
            depth=data["depth"],
            settings=tuple(sorted(data["settings"].items())),
            inprocess_reps=data["inprocess_reps"],
            warmup=data["warmup"],
            quality=tuple(sorted(data.get("quality", {}).items())),
        )

    @property
    def key(self) -> str:
        """Stable hash of the definition: equal keys measure the same thing."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class DeviceFacts:
    """What the device is: stored with every run so a figure carries its device state."""

    name: str
    driver: str
    os: str
    os_release: str
    arch: str
    cpu_model: str
    cores: int
    ram_mb: int
    hostname: str = ""
    gpus: tuple[str, ...] = ()
    power_source: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
