"""Contention around one benchmark process, read through its driver (the figures are pure:
harness.telemetry.contention).

`Watch` sits inside the telemetry's block, right around `driver.run`: one snapshot of every
process, the load and /proc/stat before, one after (one `devicefs` command each). It names the
busiest other processes, gives load_avg_1m, and turns the telemetry's foreign_cpu_pct into
`contended`. A sampler that has no foreign CPU figure (only the native probe counts per tick)
gets one on the host, where edgebench's own CPU (it and its waited children, the benchmark
among them) is known exactly from `os.times`; elsewhere it stays missing, saying why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.drivers.base import Driver, DriverError
from harness.drivers.devicefs import read_files
from harness.records import Metric
from harness.telemetry import contention

QUIET_SAMPLE_S = 1.0


def quiet_sample(driver: Driver, seconds: float = QUIET_SAMPLE_S) -> float:
    """Others' CPU on the device over `seconds`, in % of one core, while edgebench runs nothing
    there (raises DriverError or ValueError when it cannot be read)."""
    done = driver.run(contention.quiet_argv(seconds), timeout=seconds + 60)
    if done.exit_code != 0:
        raise ValueError(f"the CPU sample failed: {done.stderr_tail(3)}")
    return contention.parse_quiet(done.stdout)


class Watch:
    """Before/after snapshots around one process (a context manager around `driver.run`)."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.before: contention.Snapshot | None = None
        self.after: contention.Snapshot | None = None
        self._host: list[tuple[float, float, contention.CpuTimes]] = []  # (monotonic, own CPU s, /proc/stat)

    def __enter__(self) -> "Watch":
        self.before = self._snapshot()
        self._host_reading()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:  # a device that just failed is not asked again
            self._host_reading()
            self.after = self._snapshot()

    def metrics(self, measured: Sequence[Metric], threshold_pct: float) -> list[Metric]:
        """load_avg_1m, contended, and foreign_cpu_pct where the telemetry had none."""
        out = []
        foreign = next((m for m in measured if m.name == "foreign_cpu_pct"), None)
        if foreign is None:
            foreign = self._host_foreign()
            out.append(foreign)
        before = self.before
        if before is not None and before.load is not None:
            out.append(Metric("load_avg_1m", before.load[0], "tasks"))
        else:
            out.append(Metric.missing("load_avg_1m", "tasks", (before.error if before else None) or "/proc/loadavg could not be read"))
        return [*out, contention.contended_metric(foreign, threshold_pct)]

    def details(self) -> dict[str, Any]:
        """For the execution's raw record: the busiest other processes, the load, any error."""
        before, after = self.before, self.after
        info: dict[str, Any] = {"load_avg": list(before.load) if before and before.load else None,
                                "busiest": contention.busiest(before, after) if before and after else []}
        errors = [s.error for s in (before, after) if s is not None and s.error]
        if errors:
            info["error"] = "; ".join(errors)
        return info

    def _snapshot(self) -> contention.Snapshot:
        try:
            return contention.parse_snapshot(read_files(self.driver, contention.SNAPSHOT_GLOBS))
        except DriverError as exc:
            return contention.Snapshot(None, None, {}, None, f"process snapshot failed: {exc}")

    def _host_reading(self) -> None:
        if not self.driver.is_host:
            return
        try:
            stat = contention.parse_proc_stat(Path("/proc/stat").read_text().splitlines())
        except (OSError, ValueError):
            return
        times = os.times()
        self._host.append((time.monotonic(), times.user + times.system + times.children_user + times.children_system, stat.cpu))

    def _host_foreign(self) -> Metric:
        if not self.driver.is_host:
            return Metric.missing("foreign_cpu_pct", contention.FOREIGN_UNIT,
                                  "only the native probe counts others' CPU beside a process on this device")
        if len(self._host) != 2:
            return Metric.missing("foreign_cpu_pct", contention.FOREIGN_UNIT, "/proc/stat could not be read")
        (t0, own0, cpu0), (t1, own1, cpu1) = self._host
        tick = os.sysconf("SC_CLK_TCK")
        series = contention.CpuSeries((t0, t1), (cpu0.busy / tick, cpu1.busy / tick), (own0, own1))
        return contention.foreign_metric(contention.foreign_cpu(series))
