"""Memory bandwidth of a device: `edgebench-bandwidth` (a STREAM triad, probe/edgebench-bandwidth.c)
run through the driver from the staged runtime, once per device per run.

Why: decode reads every weight once per token, so bandwidth is the ceiling on decode tokens/s
(see `harness.analysis.roofline`). The test runs with each thread count (and cores) the run's cases use,
because one core cannot saturate the memory bus that four can. Raw per-repetition times are
kept; GB/s and its spread are derived when read. A figure is reused from a cache keyed by the
device's identity and state, the binary and the thread counts, unless a re-measure is asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

from harness.drivers.base import Driver
from harness.errors import EdgebenchError
from harness.paths import state_dir
from harness.plan.planner import Case
from harness.results.bandwidth import parse_output
from harness.runtimes.native import BANDWIDTH_NAME
from harness.store.db import now_iso

REPETITIONS = 7
TIMEOUT_S = 300.0
# What makes a bandwidth figure belong to a device as it is now (not its load or battery).
_IDENTITY_FACTS = ("name", "driver", "hostname", "arch", "cpu_model", "cores", "ram_mb", "os_release")
_IDENTITY_EXTRA = ("kernel", "model", "power_mode", "governors", "jetson_clocks")


@dataclass(frozen=True)
class Request:
    """One measurement: `threads` None = the program's default (one per physical core, as
    llama.cpp counts them); `cpus` pins thread i to cpus[i]."""

    threads: int | None
    cpus: tuple[int, ...] = ()


def requests_for(cases: Iterable[Case], cores: Mapping[str, Mapping[str, Any]]) -> list[Request]:
    """The thread counts (and cores) the run's llama-bench cases use, each once: the plan's
    choice for the device (`cores`, by case key) where it made one, else the case's own count."""
    found: list[Request] = []
    for case in cases:
        if case.engine != "llamabench":
            continue
        threads = case.setting("threads")
        if chosen := cores.get(case.key):
            request = Request(chosen["n_threads"], tuple(chosen["cpus"]))
        else:
            request = Request(threads if isinstance(threads, int) and not isinstance(threads, bool) else None)
        if request not in found:
            found.append(request)
    return found


def argv(runtime_dir: str, request: Request, repetitions: int = REPETITIONS) -> list[str]:
    command = [str(PurePosixPath(runtime_dir) / "bin" / BANDWIDTH_NAME), "--reps", str(repetitions)]
    if request.threads is not None:
        command += ["--threads", str(request.threads)]
    if request.cpus:
        command += ["--cpus", ",".join(map(str, request.cpus))]
    return command


def measure(driver: Driver, runtime_dir: str, requests: list[Request]) -> dict[str, Any]:
    """Run the program once per request; a failure is recorded with its reason, never fatal."""
    results, errors = [], []
    for request in requests:
        command = argv(runtime_dir, request)
        try:
            done = driver.run(command, timeout=TIMEOUT_S)
            if not done.ok:
                raise EdgebenchError(f"{BANDWIDTH_NAME} exited with {done.exit_code}: {done.stderr_tail(5)}")
            results.append(parse_output(done.stdout).to_json())
        except EdgebenchError as exc:
            errors.append(f"threads={request.threads or 'default'}: {exc}")
    return {"kernel": "triad", "measured_at": now_iso(), "results": results, "errors": errors}


def device_bandwidth(driver: Driver, facts: Mapping[str, Any], runtime_dir: str, binary_sha256: str,
                     requests: list[Request], *, refresh: bool = False) -> dict[str, Any]:
    """The cached figure for this device as it is now, else a fresh measurement (cached when
    every request succeeded). `refresh` measures again whatever the cache holds."""
    identity = {k: facts.get(k) for k in _IDENTITY_FACTS} | {k: facts.get("extra", {}).get(k) for k in _IDENTITY_EXTRA}
    blob = json.dumps([identity, binary_sha256, [asdict(r) for r in requests]], sort_keys=True, default=str)
    path = state_dir() / "bandwidth" / f"{hashlib.sha256(blob.encode()).hexdigest()[:32]}.json"
    if not refresh and path.is_file():
        try:
            return {**json.loads(path.read_text()), "cached": True}
        except ValueError:
            pass  # a damaged cache entry is measured again
    data = measure(driver, runtime_dir, requests)
    if data["results"] and not data["errors"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    return {**data, "cached": False}
