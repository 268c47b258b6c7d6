"""Memory bandwidth of a device: `edgebench-bandwidth` (a STREAM triad, probe/edgebench-bandwidth.c)
run through the driver from the staged runtime, once per device per run.

Why: decode reads every weight once per token, so bandwidth is the ceiling on decode tokens/s
(see `harness.analysis.roofline`). The test runs with each thread count (and cores) the run's cases use,
because one core cannot saturate the memory bus that four can. Raw per-repetition times are
kept; GB/s and its spread are derived when read. A figure is reused from a cache keyed by the
device's identity and state, the binary and the thread counts, unless a re-measure is asked for.
The program's output is parsed here too (`parse_output` -> `Bandwidth`), so analysis reads the
stored figure with the same record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

from harness.drivers.base import Driver
from harness.errors import EdgebenchError
from harness.paths import state_dir, write_atomic
from harness.records import Case, CoreChoice, now_iso
from harness.runtimes.native import BANDWIDTH_NAME
from harness.stats import summarize

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Bandwidth:
    """One parsed run of the program: raw nanoseconds per repetition, GB/s derived."""

    threads: int
    cpus: tuple[int, ...]
    array_bytes: int
    bytes_per_rep: int
    rep_ns: tuple[int, ...]
    capped: bool
    cache_bytes: int | None

    @property
    def samples_gbps(self) -> tuple[float, ...]:
        return tuple(self.bytes_per_rep / ns for ns in self.rep_ns)  # bytes per ns = GB/s (10^9)

    @property
    def gbps(self) -> float:
        """The median: robust to a repetition disturbed by other work on a shared machine."""
        return summarize(self.samples_gbps).median

    def spread(self) -> dict[str, float | None]:
        s = summarize(self.samples_gbps)
        return {"median": s.median, "mean": s.mean, "stdev": s.stdev, "min": s.minimum, "max": s.maximum, "n": s.n}

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "cpus": list(self.cpus), "rep_ns": list(self.rep_ns), "gbps": self.spread()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Bandwidth":
        return cls(int(d["threads"]), tuple(d["cpus"]), int(d["array_bytes"]), int(d["bytes_per_rep"]),
                   tuple(int(v) for v in d["rep_ns"]), bool(d["capped"]), d["cache_bytes"])

    def describe(self) -> str:
        s = self.spread()
        pinned = f" on cores {','.join(map(str, self.cpus))}" if self.cpus else ""
        return (f"{s['median']:.1f} GB/s (median of {s['n']}; min {s['min']:.1f}, max {s['max']:.1f}) "
                f"triad, {self.threads} thread(s){pinned}, 3 x {self.array_bytes / 2**20:.0f} MiB")


def parse_output(text: str) -> Bandwidth:
    """The program's stdout (format version 1) -> Bandwidth; malformed output -> EdgebenchError."""
    fields: dict[str, str] = {}
    reps: list[int] = []
    for line in text.splitlines():
        key, _, rest = line.strip().partition(" ")
        if key == "rep":
            reps.append(int(rest.split()[1]))
        elif key:
            fields[key] = rest
    if fields.get("edgebench-bandwidth") != str(FORMAT_VERSION):
        raise EdgebenchError(f"{BANDWIDTH_NAME}: expected output format {FORMAT_VERSION}, got: {text[:200]!r}")
    if fields.get("check") != "ok":
        raise EdgebenchError(f"{BANDWIDTH_NAME}: the triad's result check failed ({fields.get('check')}); the figure is not trusted")
    if not reps or min(reps) <= 0:
        raise EdgebenchError(f"{BANDWIDTH_NAME}: no timed repetitions in its output")
    try:
        cpus = () if fields["cpus"] == "-" else tuple(int(c) for c in fields["cpus"].split(","))
        cache = None if fields["cache_bytes"] == "-" else int(fields["cache_bytes"])
        return Bandwidth(int(fields["threads"]), cpus, int(fields["array_bytes"]), int(fields["bytes_per_rep"]),
                         tuple(reps), fields["capped"] == "1", cache)
    except (KeyError, ValueError) as exc:
        raise EdgebenchError(f"{BANDWIDTH_NAME}: malformed output ({exc}): {text[:200]!r}") from None


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


def requests_for(cases: Iterable[Case], cores: Mapping[str, CoreChoice]) -> list[Request]:
    """The thread counts (and cores) the run's llama-bench cases use, each once: the plan's
    choice for the device (`cores`, by case key) where it made one, else the case's own count."""
    found: list[Request] = []
    for case in cases:
        if case.engine != "llamabench":
            continue
        threads = case.setting("threads")
        if chosen := cores.get(case.key):
            request = Request(chosen.n_threads, chosen.cpus)
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
        write_atomic(path, json.dumps(data, indent=1))
    return {**data, "cached": False}
