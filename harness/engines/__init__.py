"""Engines: how one case becomes one process on the device, and how its output becomes metrics.

Following pyperf, the engine's process measures (llama-bench's own counters, or the
in-process clock of llama-cpp-python); the orchestrator never times anything itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import EdgebenchError

if TYPE_CHECKING:  # the registry itself imports neither, so the plan can ask it without a circle
    from harness.drivers.base import Completed
    from harness.plan.cases import Case
    from harness.results.records import Metric


@dataclass(frozen=True)
class EngineResult:
    """What one process run of one case produced.

    metrics: per-process figures (their `samples` hold the in-process values);
    raw: the parsed records (e.g. llama-bench JSONL rows) kept for the store;
    build: the runtime's own build id as it reported it (e.g. llama.cpp commit).
    """

    metrics: list[Metric]
    raw: list[dict[str, Any]] = field(default_factory=list)
    build: str | None = None


class EngineOutputError(EdgebenchError):
    """The process exited 0 but its output could not be parsed into a result."""


class Engine(Protocol):
    name: str
    host_only: bool  # True: runs only on the machine running edgebench (in-process Python)

    def unsupported(self, case: Case) -> str | None: ...  # why this case cannot run, or None

    def argv(self, case: Case, *, runtime_dir: str, model_path: str) -> list[str]: ...

    def parse(self, case: Case, completed: Completed) -> EngineResult: ...


_REGISTRY = {
    "llamabench": "harness.engines.llamabench:LlamaBench",
    "pyllama": "harness.engines.pyllama:PyLlama",
}


def get_engine(name: str) -> Engine:
    try:
        module, cls = _REGISTRY[name].split(":")
    except KeyError:
        raise EdgebenchError(f"unknown engine {name!r}; valid engines: {', '.join(sorted(_REGISTRY))}") from None
    return getattr(import_module(module), cls)()


def engine_names() -> list[str]:
    return sorted(_REGISTRY)
