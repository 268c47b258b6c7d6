"""Command telemetry sources (`tegrastats`, `vcgencmd`) as co-processes on the device clock.

Until the native probe runs them itself, each source is one long-lived shell loop on the
device, started through `driver.spawn` as a case window opens and killed as it closes:

- tegrastats: `tegrastats --interval MS | while read line; do read up </proc/uptime; ...`:
  every line is prefixed with the device's uptime as it arrives (`read` is a shell builtin,
  so no process is forked per sample);
- vcgencmd: a loop printing `@ <uptime>` and then `measure_temp`, `measure_clock arm`,
  `get_throttled`, `pmic_read_adc` (four short processes per tick: keep the interval >= 200 ms).

The benchmark is wrapped in a small sh script that reads /proc/uptime just before and just
after the benchmark and polls its VmHWM, so samples and the case window share one clock
(/proc/uptime is CLOCK_BOOTTIME, which equals CLOCK_MONOTONIC unless the board suspends).
Peak RSS here is polled every 0.2 s; the probe's `wait4` rusage is exact.
"""

from __future__ import annotations

import csv
import threading
import uuid
from pathlib import Path, PurePosixPath
from statistics import fmean
from typing import Any

from harness.drivers.base import Completed, DeviceFacts, DriverError
from harness.results.records import Metric
from harness.telemetry import Sample, tegrastats, vcgencmd
from harness.telemetry.boards import jetson_module

TEGRASTATS_LOOP = (
    'tegrastats --interval "$0" | while IFS= read -r line; do '
    'read up _ </proc/uptime; printf "%s %s\\n" "$up" "$line"; done'
)
VCGENCMD_LOOP = (
    'while :; do read up _ </proc/uptime; echo "@ $up"; vcgencmd measure_temp; vcgencmd measure_clock arm; '
    'vcgencmd get_throttled; vcgencmd pmic_read_adc 2>/dev/null; sleep "$0"; done'
)
# $0 = the window file; "$@" = the benchmark. Exit status of the benchmark is kept.
WINDOW_WRAPPER = (
    'read s _ </proc/uptime; "$@" & p=$!; h=0; '
    'while kill -0 "$p" 2>/dev/null; do '
    'while read k v _; do [ "$k" = VmHWM: ] && h=$v; done <"/proc/$p/status" 2>/dev/null; sleep 0.2; done; '
    'wait "$p"; r=$?; read e _ </proc/uptime; echo "$s $e $h" >"$0"; exit "$r"'
)


class CommandTelemetry:
    """Telemetry for one benchmark process on a remote Linux device (a context manager)."""

    def __init__(self, driver: Any, facts: DeviceFacts, interval_ms: int = 200) -> None:
        self.driver = driver
        self.facts = facts
        self.interval_ms = interval_ms
        tools = set(facts.extra.get("tools", ()))
        self.source = "tegrastats" if "tegrastats" in tools else "vcgencmd" if "vcgencmd" in tools else None
        self.samples: list[Sample] = []
        self.window: tuple[float, float] | None = None
        self.peak_hwm_kb: int | None = None
        self.window_file = str(PurePosixPath(driver.workdir) / f".window-{uuid.uuid4().hex[:12]}")
        self._process: Any = None
        self._raw: list[str] = []
        self._reader: threading.Thread | None = None
        self.error: str | None = None

    def __enter__(self) -> "CommandTelemetry":
        self.driver.run(["mkdir", "-p", "--", self.driver.workdir], timeout=60)
        if self.source == "tegrastats":
            self._start(["sh", "-c", TEGRASTATS_LOOP, str(self.interval_ms)])
        elif self.source == "vcgencmd":
            self._start(["sh", "-c", VCGENCMD_LOOP, f"{self.interval_ms / 1000:.3f}"])
        return self

    def _start(self, argv: list[str]) -> None:
        self._process = self.driver.spawn(argv)
        self._reader = threading.Thread(target=lambda: self._raw.extend(self._process.lines()), daemon=True)
        self._reader.start()
        self._process.wait_pid(30)

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.kill()
            if self._reader is not None:
                self._reader.join(timeout=10)
        text = "\n".join(self._raw)
        self.samples = tegrastats.parse_tegrastats(text) if self.source == "tegrastats" else vcgencmd.parse_stream(text)
        if self.source == "tegrastats":
            module = jetson_module(str(self.facts.extra.get("model", "")), tegrastats.rails(self.samples))
            if module is not None:
                self.samples += tegrastats.board_power(self.samples, module)
        if exc[0] is None or not issubclass(exc[0], DriverError):  # type: ignore[arg-type]
            self._read_window()

    def _read_window(self) -> None:
        done = self.driver.run(["sh", "-c", 'cat -- "$0" && rm -f -- "$0"', self.window_file], timeout=60)
        parts = done.stdout.split()
        if done.exit_code == 0 and len(parts) >= 2:
            self.window = (float(parts[0]), float(parts[1]))
            self.peak_hwm_kb = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() and int(parts[2]) > 0 else None
        else:
            self.error = f"no case window came back from the device ({done.stderr.strip()[-200:] or 'empty'})"

    def wrap(self, argv: list[str]) -> list[str]:
        return ["sh", "-c", WINDOW_WRAPPER, self.window_file, *argv]

    def attach(self, pid: int) -> None:
        """The wrapper shell's pid on the device; the wrapper itself samples the benchmark."""

    def in_window(self, source_prefix: str) -> list[Sample]:
        if self.window is None:
            return []
        start, end = self.window
        return [s for s in self.samples if s.source.startswith(source_prefix) and start <= s.t <= end]

    def metrics(self, completed: Completed) -> list[Metric]:
        where = f"on {self.driver.name}"
        if self.window is None:
            reason = self.error or "no case window"
            return [Metric.missing(n, u, reason) for n, u in (("peak_rss_mb", "MB"), ("avg_power_w", "W"), ("energy_j", "J"), ("temp_max_c", "C"))]
        start, end = self.window
        out = [
            Metric("peak_rss_mb", self.peak_hwm_kb / 1024, "MB")
            if self.peak_hwm_kb
            else Metric.missing("peak_rss_mb", "MB", "process ended before the first VmHWM poll (0.2 s)"),
            Metric("window_s", end - start, "s"),
        ]
        if self.source is None:
            none = f"no tegrastats or vcgencmd {where} (facts list the tools found)"
            return out + [Metric.missing("avg_power_w", "W", none), Metric.missing("energy_j", "J", none), Metric.missing("temp_max_c", "C", none)]
        power = self.in_window("power/board")
        interval = f"{self.interval_ms} ms {self.source} interval"
        if power:
            avg = fmean(s.value for s in power)
            out += [Metric("avg_power_w", avg, "W", samples=tuple(s.value for s in power)), Metric("energy_j", avg * (end - start), "J")]
        else:
            reason = f"no board power sample inside the {end - start:.2f} s window ({interval})"
            if not any(s.source == "power/board" for s in self.samples):
                reason = f"{self.source} {where} reported no board power rail (module not recognised, or rails need root)"
            out += [Metric.missing("avg_power_w", "W", reason), Metric.missing("energy_j", "J", reason)]
        temps = tegrastats.temperatures(self.in_window("tegrastats/temp/")) if self.source == "tegrastats" else self.in_window("vcgencmd/temp")
        out.append(
            Metric("temp_max_c", max(s.value for s in temps), "C")
            if temps
            else Metric.missing("temp_max_c", "C", f"no temperature sample inside the {end - start:.2f} s window ({interval})")
        )
        gpu = self.in_window("tegrastats/gpu_load")
        if gpu:
            out.append(Metric("gpu_load_pct", fmean(s.value for s in gpu), "%", samples=tuple(s.value for s in gpu)))
        throttle = self.in_window("vcgencmd/throttled")
        if throttle:
            now = [int(s.value) & 0xF for s in throttle]
            out.append(Metric("throttled", float(any(now)), "bool", samples=tuple(float(v) for v in now)))
        return out

    def details(self) -> dict[str, Any]:
        """Which command was sampled (its board-power scope comes with its metrics)."""
        return {"sampler": f"{self.source} co-process" if self.source else None, "interval_ms": self.interval_ms, "error": self.error}

    def write_csv(self, path: Path) -> None:
        """Every sample on the device clock, plus the window's edges, in time order."""
        rows = [(s.t, s.source, s.value, s.unit) for s in self.samples]
        if self.window:
            rows += [(self.window[0], "window/start", 0.0, "s"), (self.window[1], "window/end", 0.0, "s")]
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["t_device_s", "source", "value", "unit"])
            for t, source, value, unit in sorted(rows, key=lambda r: r[0]):
                writer.writerow([f"{t:.3f}", source, repr(value), unit])
