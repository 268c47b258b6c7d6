"""Host telemetry: samples this machine beside one benchmark process it has started.

One background thread reads every source at a fixed interval on `time.monotonic()`, plus one
reading as the window opens and one as it closes. Energy (RAPL) is integrated over the
engine's measured windows by harness.telemetry.energy, as on every other path; the in-process
engine stamps its windows on this same clock. Each tick also records its own cost
(`telemetry/tick_cost`), since the sampler shares the CPU with the benchmark it measures.
"""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from types import TracebackType

from harness.drivers.base import Completed
from harness.records import Metric
from harness.telemetry import Found, Sample, energy, nvml, procfs, sysfs, unreadable_reason
from harness.telemetry.rapl import Rapl


class HostTelemetry:
    """Samples the host beside one benchmark process.

    One instance, one window: use it as a context manager around the run; the driver calls
    `attach(pid)` once the child exists; after the block, `metrics(completed, windows,
    tokens)` turns the samples into figures.
    """

    def __init__(self, interval_s: float = 0.1, root: Path = Path("/"), nvml: bool = True) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.interval_s = interval_s
        self.root = root
        self.use_nvml = nvml
        self.samples: list[Sample] = []
        self._pid: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sources: _Sources | None = None

    def __enter__(self) -> "HostTelemetry":
        self._sources = _Sources.discover(self.root, self.use_nvml)
        self._stop.clear()
        self._tick()
        self._thread = threading.Thread(target=self._loop, name="edgebench-telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._tick()  # the closing reading: the window ends now, not at the last interval
        if self._sources is not None and self._sources.gpus is not None:
            self._sources.gpus.close()

    def wrap(self, argv: list[str], marks: str | None = None, cpus: Sequence[int] | None = None) -> list[str]:
        """The command as it should run: unchanged, since this sampler runs beside it in-process
        (it stamps no stderr lines: an engine here needs windows stamped in process)."""
        return argv

    def marks(self) -> list[tuple[float, str]]:
        return []

    def attach(self, pid: int) -> None:
        """Sample /proc/<pid>/status from the next tick on (called right after the child starts)."""
        self._pid = pid

    def metrics(self, completed: Completed, windows: Sequence[tuple[float, float]], tokens: int,
                no_window: str | None = None) -> list[Metric]:
        """Every host figure of the process, energy over the engine's `windows`; one that cannot
        be measured is missing with a reason."""
        sources = self._sources
        if sources is None:
            raise RuntimeError("HostTelemetry.metrics() before the sampler ran: use it as a with block")
        if self._pid is None:
            no_proc = "attach() was never called: no process was sampled"
        else:
            no_proc = f"process {self._pid} ended before the first /proc sample (interval {self.interval_s} s)"
        temps_reason = _reason(sources.thermal, sources.hwmon) or "every CPU temperature read failed"
        freq_reason = _reason(sources.cpufreq) or "every cpufreq read failed"
        if sources.gpus is None:
            gpu = nvml.missing_gpu_metrics(sources.gpu_reason)
        else:
            gpu = sources.gpus.metrics(self.samples, windows, no_window)
        return [
            procfs.peak_rss_metric(completed.rusage),
            *procfs.rss_split_metrics(self.samples, no_proc),
            sysfs.temp_max_metric(self.samples, temps_reason),
            sysfs.cpu_freq_metric(self.samples, freq_reason),
            *self._energy(windows, tokens, no_window),
            *gpu,
            self._overhead(),
        ]

    def details(self) -> dict[str, object]:
        """The sources this window read, and why each family it could not read is missing."""
        found = [f for f in (self._sources.thermal, self._sources.hwmon, self._sources.cpufreq)] if self._sources else []
        return {
            "sampler": "host (in-process)",
            "interval_s": self.interval_s,
            "sources": sorted(name for f in found for name in f.readable),
            "unreadable": {name: reason for f in found for name, reason in f.unreadable.items()},
        }

    def write_csv(self, path: Path) -> None:
        """Every raw sample, in time order, for the run's artifacts folder."""
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["t_monotonic_s", "source", "value", "unit"])
            for s in sorted(self.samples, key=lambda s: s.t):
                writer.writerow([f"{s.t:.6f}", s.source, repr(s.value), s.unit])

    def _loop(self) -> None:
        """Tick on a fixed grid; after a slow tick, skip the missed slots rather than bunch up."""
        next_t = time.monotonic() + self.interval_s
        while not self._stop.wait(max(0.0, next_t - time.monotonic())):
            self._tick()
            next_t += self.interval_s
            now = time.monotonic()
            if next_t < now:
                next_t = now + self.interval_s - (now - next_t) % self.interval_s

    def _tick(self) -> None:
        sources = self._sources
        assert sources is not None
        t = time.monotonic()
        batch = sources.read(t)
        pid = self._pid
        if pid is not None:
            try:
                batch += procfs.status_samples(t, procfs.read_status(pid, self.root))
            except OSError:
                pass  # e.g. hidepid: the rss metrics then say no sample was taken
        batch.append(Sample(t, "telemetry/tick_cost", (time.monotonic() - t) * 1000, "ms"))
        self.samples.extend(batch)

    def _energy(self, windows: Sequence[tuple[float, float]], tokens: int, no_window: str | None) -> list[Metric]:
        """RAPL over the windows; no idle baseline is sampled in process, so net figures say so."""
        assert self._sources is not None
        trace, reason = self._sources.rapl.trace(self.samples, self.interval_s)
        return energy.window_metrics([trace] if trace else [], windows, tokens, idle=None, no_power=reason,
                                     no_window=no_window)

    def _overhead(self) -> Metric:
        costs = tuple(s.value for s in self.samples if s.source == "telemetry/tick_cost")
        return Metric("telemetry_tick_ms", fmean(costs), "ms", samples=costs)


class _Sources:
    """What one window samples: found once as it opens, read each tick."""

    def __init__(self, thermal: Found, hwmon: Found, cpufreq: Found, rapl: Rapl,
                 gpus: nvml.NvmlGpus | None, gpu_reason: str) -> None:
        self.thermal, self.hwmon, self.cpufreq, self.rapl = thermal, hwmon, cpufreq, rapl
        self.gpus, self.gpu_reason = gpus, gpu_reason

    @classmethod
    def discover(cls, root: Path, use_nvml: bool) -> "_Sources":
        gpus, gpu_reason = nvml.NvmlGpus.open() if use_nvml else (None, "NVML sampling was switched off")
        return cls(
            sysfs.discover_thermal_zones(root),
            sysfs.discover_hwmon(root),
            sysfs.discover_cpufreq(root),
            Rapl.discover(root),
            gpus,
            gpu_reason,
        )

    def read(self, t: float) -> list[Sample]:
        return [
            *sysfs.read_found(self.thermal, t, sysfs.parse_millidegrees, "C"),
            *sysfs.read_found(self.hwmon, t, sysfs.parse_millidegrees, "C"),
            *sysfs.read_found(self.cpufreq, t, sysfs.parse_khz, "MHz"),
            *self.rapl.read(t),
            *(self.gpus.read(t) if self.gpus else []),
        ]


def _reason(*families: Found) -> str:
    return "; ".join(r for r in (f.reason() for f in families) if r)


def describe_host_sensors(root: Path = Path("/")) -> dict[str, str]:
    """Each telemetry source of this host -> "ok" or why it is missing (for `devices facts`).

    A family with nothing at all appears under its own name ("rapl", "thermal", ...).
    """
    report: dict[str, str] = {}
    rapl = Rapl.discover(root)
    for found in (sysfs.discover_thermal_zones(root), sysfs.discover_hwmon(root),
                  sysfs.discover_cpufreq(root), rapl.found):
        report.update({source: "ok" for source in found.readable})
        report.update(found.unreadable)
    report["proc"] = _describe_proc(root)
    gpus, reason = nvml.NvmlGpus.open()
    if gpus is None:
        report["nvml"] = reason
    else:
        try:
            report.update({f"nvml/gpu{i}:{name}": "ok" for i, name in enumerate(gpus.names())})
        finally:
            gpus.close()
    return report


def _describe_proc(root: Path) -> str:
    path = root / "proc/self/status"
    try:
        status = procfs.parse_status(path.read_text())
    except OSError as exc:
        return unreadable_reason(root, path, exc)
    if "RssAnon" not in status:
        return "no RssAnon/RssFile in /proc/<pid>/status (kernel older than 4.5): only peak_rss_mb"
    return "ok"
