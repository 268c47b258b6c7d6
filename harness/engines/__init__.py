"""Engines: how one case becomes one process on the device, and how its output becomes metrics.

Following pyperf, the engine's process measures (llama-bench's own counters, or the
in-process clock of llama-cpp-python); the orchestrator never times anything itself. A server
(`Serving`) is the one exception: its process does not exit by itself and its figures are what
a client sees, so a client on the host runs beside it and is what measures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Protocol, runtime_checkable

from harness.drivers.base import Completed, Driver
from harness.errors import EdgebenchError, exited
from harness.records import Case, Mark, Metric, Window


# Settings that reach the benchmark process as environment variables, not flags: suite key ->
# variable. The Vulkan backend takes only discrete and integrated GPUs unless told which devices
# to use, so a CPU Vulkan device (Mesa's lavapipe) runs a case only when it is named here.
ENV_SETTINGS: dict[str, str] = {
    "vk_visible_devices": "GGML_VK_VISIBLE_DEVICES",
}


def env_prefix(case: Case) -> list[str]:
    """`env NAME=VALUE ...` to put before a case's program for its environment settings (none: []).
    In the argv, not the driver's environment, because the argv is what every driver runs, what
    the probe wraps and what is stored with each process: the device selection is recorded."""
    pairs = [f"{ENV_SETTINGS[key]}={value}" for key, value in case.settings if key in ENV_SETTINGS]
    return ["env", *pairs] if pairs else []


# What ggml's CUDA backend (and its ROCm and MUSA builds, which share its code) prints when it
# cannot start: no driver, no device. The program then goes on on the CPU with exit 0, and
# llama-bench still reports the backend by name, so its figures would pass for GPU figures.
# Not anchored: the programs built on llama.cpp's common log put a time and level before it.
_GPU_INIT_FAILED = re.compile(r"ggml_cuda_init: failed to initialize (\w+): (.*)$", re.MULTILINE)


def backend_failure(stderr: str) -> str | None:
    """Why a llama.cpp process must not count: its GPU backend could not start, so what it
    measured was the CPU under the GPU backend's name; None where no backend said so."""
    if match := _GPU_INIT_FAILED.search(stderr):
        backend, reason = match.group(1), match.group(2).strip()
        return (f"no {backend} device: the runtime's {backend} backend could not start ({reason}); the process ran on the CPU "
                f"instead, so its figures are not stored as {backend} figures (run a CPU target such as `host` for CPU figures)")
    return None


@dataclass(frozen=True)
class EngineResult:
    """What one process run of one case produced: everything engine-specific, parsed, so
    telemetry and analysis never read an engine's output or argv.

    metrics: per-process figures (their `samples` hold the in-process values);
    windows: the measured repetitions on the device clock, which telemetry integrates over;
    tokens: tokens processed inside those windows (for J/token);
    no_window: why `windows` is empty, when it is;
    raw: the parsed records (e.g. llama-bench JSONL rows) kept for the store;
    build: the runtime's own build id as it reported it (e.g. llama.cpp commit);
    effective: the settings the engine reports it ran with (n_threads, cpu_mask, type_k,
    type_v, n_gpu_layers, backends, ...), stored with the execution and read by analysis.
    """

    metrics: list[Metric]
    windows: tuple[Window, ...] = ()
    tokens: int = 0
    no_window: str | None = None
    raw: list[dict[str, Any]] = field(default_factory=list)
    build: str | None = None
    effective: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.windows and not self.no_window:
            raise ValueError("an engine result without measured windows must say why (no_window)")


class EngineOutputError(EdgebenchError):
    """The process exited 0 but its output could not be parsed into a result."""


def worker_record(completed: Completed, engine: str) -> dict[str, Any]:
    """The one JSON line an in-process engine's worker (`python -m harness.engines.<engine>`)
    prints on stdout, as a dict naming that engine; EngineOutputError with the stderr tail otherwise."""
    tail = completed.stderr_tail(10)
    if completed.exit_code != 0:
        raise EngineOutputError(f"{engine} worker {exited(completed.exit_code)}; stderr tail:\n{tail}")
    lines = [line.strip() for line in completed.stdout.splitlines() if line.strip()]
    if len(lines) != 1:
        raise EngineOutputError(f"{engine} worker printed {len(lines)} lines, expected one JSON line; stderr tail:\n{tail}")
    try:
        record = json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise EngineOutputError(f"{engine} worker printed non-JSON ({exc}): {lines[0][:200]}; stderr tail:\n{tail}") from None
    if not isinstance(record, dict) or record.get("engine") != engine:
        raise EngineOutputError(f"not a {engine} worker record: {lines[0][:200]}")
    return record


class Engine(Protocol):
    """One kind of benchmark process. `argv` already asks the program for whatever marks
    its measured repetitions; `marks` is the stderr line prefix of those marks, which the
    sampler stamps on the device clock as they arrive (None: the engine stamps its own
    windows in process); `parse` gets those stamped lines back and computes the windows."""

    name: str
    runtime: str  # the runtime family a case of this engine runs on ("llama.cpp", "openvino"): the suite's `runtime` axis
    host_only: bool  # True: runs only on the machine running edgebench (in-process Python)
    marks: str | None
    settings: tuple[str, ...]  # the suite settings it can apply (the plan resolves threads to these)

    def unsupported(self, case: Case) -> str | None: ...  # why this case cannot run, or None

    def unsupported_model(self, architecture: str | None) -> str | None: ...  # why it cannot read this GGUF architecture, or None

    # inputs: other files the case reads, staged on the device (e.g. "logits": the reference's)
    def argv(self, case: Case, *, runtime_dir: str, model_path: str, inputs: Mapping[str, str] | None = None) -> list[str]: ...

    def parse(self, case: Case, completed: Completed, marks: Sequence[Mark] = ()) -> EngineResult: ...


class Client(Protocol):
    """The host side of a server case: `start` when the process has started (its pid), `finish`
    once it has ended, then `parse` in place of the engine's, since the figures are the client's."""

    def start(self, pid: int) -> None: ...

    def finish(self) -> None: ...

    def parse(self, case: Case, completed: Completed, marks: Sequence[Mark] = ()) -> EngineResult: ...


@runtime_checkable
class Serving(Protocol):
    """An engine whose process is a long-running server, which the `Engine` protocol (argv -> one
    process that exits with its figures in its output) cannot describe on its own: the runner
    still runs its argv as one process (under the probe, so every device figure is measured as
    for llama-bench), but a `Client` from `client` sends it requests meanwhile, stops it when
    done, and parses the case. The smallest change that keeps one process per case and the
    probe's windows; `argv` says where the server listens, so the client reads it from there."""

    def client(self, case: Case, driver: Driver, argv: Sequence[str], timeout_s: float,
               inputs: Mapping[str, str] | None = None) -> Client: ...


class LlamaCppEngine:
    """What the engines of the llama.cpp runtime share: their runtime's name, and a reader for
    every GGUF architecture (a model llama.cpp cannot load fails inspection before the plan)."""

    runtime = "llama.cpp"

    def unsupported_model(self, architecture: str | None) -> str | None:
        return None


_REGISTRY = {
    "llamabench": "harness.engines.llamabench:LlamaBench",
    "pyllama": "harness.engines.pyllama:PyLlama",
    "perplexity": "harness.engines.perplexity:Perplexity",
    "server": "harness.engines.server:Server",
    "openvino": "harness.engines.openvino:OpenVino",
}


def get_engine(name: str) -> Engine:
    try:
        module, cls = _REGISTRY[name].split(":")
    except KeyError:
        raise EdgebenchError(f"unknown engine {name!r}; valid engines: {', '.join(sorted(_REGISTRY))}") from None
    return getattr(import_module(module), cls)()
