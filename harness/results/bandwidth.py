"""Memory bandwidth figures: the `edgebench-bandwidth` output parsed, GB/s derived, looked up.

Pure: measuring needs a driver and lives in `harness.telemetry.bandwidth`; this side only reads what
was stored, so the roofline and the report never reach a device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from harness.errors import EdgebenchError
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


def bandwidth_for(stored: Mapping[str, Any] | None, n_threads: int | None) -> tuple[Bandwidth | None, str]:
    """The stored measurement made with `n_threads` threads, or (None, why there is none)."""
    if not stored:
        return None, "no memory bandwidth was measured on this run"
    if "error" in stored:
        return None, f"memory bandwidth not measured: {stored['error']}"
    results = [Bandwidth.from_json(r) for r in stored.get("results", [])]
    for result in results:
        if n_threads is None or result.threads == n_threads:
            return result, ""
    measured = ", ".join(str(r.threads) for r in results) or "none"
    errors = "; ".join(stored.get("errors", []))
    return None, f"bandwidth measured at {measured} thread(s), the case ran {n_threads}" + (f" ({errors})" if errors else "")
