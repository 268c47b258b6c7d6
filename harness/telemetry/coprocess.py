"""Board tools that are commands, not files (`tegrastats`, `vcgencmd`): co-processes beside the probe.

The native probe samples sysfs itself; what only a vendor tool prints comes from one
long-lived shell loop on the device, started through `driver.spawn` as the probe's window
opens and killed once it has printed a sample stamped after the benchmark's end:

- tegrastats: `tegrastats --interval MS | while read line; do read up </proc/uptime; ...`:
  every line is prefixed with the device's uptime as it arrives (`read` is a shell builtin,
  so no process is forked per sample);
- vcgencmd: a loop printing `@ <uptime>` and then `measure_temp`, `measure_clock arm`,
  `get_throttled`, `pmic_read_adc` (four short processes per tick: keep the interval >= 200 ms).

/proc/uptime is CLOCK_BOOTTIME (10 ms resolution); the probe stamps everything on
CLOCK_MONOTONIC and records both clocks once, so `to_probe` moves these samples onto the
probe's clock (the two differ by the time the board spent suspended). Board power becomes an
`energy.Trace` with its scope, integrated over the engine's windows by the same code as every
sysfs sensor; peak RSS, the process span and the windows all come from the probe.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from harness.boards.power import RPI_PMIC_SCOPE, jetson_module
from harness.records import DeviceFacts, Metric, Window
from harness.telemetry import Sample, energy, gpu, tegrastats, vcgencmd

if TYPE_CHECKING:  # paramiko loads only when an SSH device is used
    from harness.drivers.ssh import SshDriver

TEGRASTATS_LOOP = (
    'tegrastats --interval "$0" | while IFS= read -r line; do '
    'read up _ </proc/uptime; printf "%s %s\\n" "$up" "$line"; done'
)
VCGENCMD_LOOP = (
    'while :; do read up _ </proc/uptime; echo "@ $up"; vcgencmd measure_temp; vcgencmd measure_clock arm; '
    'vcgencmd get_throttled; vcgencmd pmic_read_adc 2>/dev/null; sleep "$0"; done'
)
BOARD_POWER = "power/board"
# How long `stop` waits for the tool to sample past the benchmark's end: this many intervals,
# plus slack for a tick's own commands and the transport.
STOP_GRACE_INTERVALS = 3
STOP_GRACE_S = 2.0


class BoardTool:
    """tegrastats or vcgencmd (whichever the facts list) beside one benchmark process.

    `start` and `stop` bracket the probe's whole file (idle baseline included); afterwards
    `samples` are on CLOCK_BOOTTIME seconds, and every method taking `offset_s` (boottime -
    monotonic, from the probe's `clocks` line) answers on the probe's clock.
    """

    def __init__(self, driver: SshDriver, facts: DeviceFacts, interval_ms: int = 200) -> None:
        self.driver, self.facts, self.interval_ms = driver, facts, interval_ms
        tools = set(facts.extra.get("tools", ()))
        self.tool = "tegrastats" if "tegrastats" in tools else "vcgencmd" if "vcgencmd" in tools else None
        self.samples: list[Sample] = []
        self.scope_text: str | None = None  # what board power covers, in words
        self._process: Any = None
        self._raw: list[str] = []
        self._arrived = threading.Condition()  # notified at each line the reader appends to _raw, and at its end
        self._ended = False  # the tool's output has ended (it exited, or the device went away)
        self._reader: threading.Thread | None = None

    @property
    def absent(self) -> str:
        return f"no tegrastats or vcgencmd on {self.driver.name} (facts list the tools found)"

    def start(self) -> None:
        if self.tool == "tegrastats":
            argv = ["sh", "-c", TEGRASTATS_LOOP, str(self.interval_ms)]
        elif self.tool == "vcgencmd":
            argv = ["sh", "-c", VCGENCMD_LOOP, f"{self.interval_ms / 1000:.3f}"]
        else:
            return
        self._process = self.driver.spawn(argv)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._process.wait_pid(30)

    def _read(self) -> None:
        try:
            for line in self._process.lines():
                with self._arrived:
                    self._raw.append(line)
                    self._arrived.notify_all()
        finally:
            with self._arrived:
                self._ended = True
                self._arrived.notify_all()

    def stop(self, until_boottime: float | None = None) -> None:
        """Kill the tool; first, given the benchmark's end (device CLOCK_BOOTTIME), wait until
        a complete sample stamped at or after it has arrived (at most a few intervals): killed
        at once, the tool would often not yet have sampled past the last measured window, whose
        energy would then be missing for want of a sample tens of milliseconds later."""
        if self._process is None:
            return
        if until_boottime is not None:
            with self._arrived:
                self._arrived.wait_for(lambda: self._ended or self._complete_through() >= until_boottime,
                                       timeout=STOP_GRACE_INTERVALS * self.interval_ms / 1000 + STOP_GRACE_S)
        self._process.kill()
        if self._reader is not None:
            self._reader.join(timeout=10)
        self.load("\n".join(self._raw))

    def _complete_through(self) -> float:
        """The stamp (device uptime) of the latest sample printed whole (-inf before the first):
        each tegrastats line is whole; a vcgencmd tick is whole once the next one has begun."""
        if self.tool == "tegrastats":
            stamped = self._raw
        else:
            stamped = [line[2:] for line in self._raw if line.startswith("@ ")][:-1]
        for line in reversed(stamped):
            try:
                return float(line.split(maxsplit=1)[0])
            except (ValueError, IndexError):
                continue
        return -math.inf

    def load(self, text: str) -> None:
        """The tool's stamped output -> `samples` (board power among them) and its scope (pure)."""
        if self.tool == "tegrastats":
            self.samples = tegrastats.parse_tegrastats(text)
            module = jetson_module(str(self.facts.extra.get("model", "")), tegrastats.rails(self.samples))
            if module is not None:
                self.samples += tegrastats.board_power(self.samples, module)
                self.scope_text = module.scope
        elif self.tool == "vcgencmd":
            self.samples = vcgencmd.parse_stream(text)
            self.scope_text = RPI_PMIC_SCOPE

    def power_traces(self, offset_s: float) -> list[energy.Trace]:
        """Board power (W) on the probe's clock: module input where the module has that rail
        (boards.py), else a rail sum (AGX Orin's module rails, the Pi 5 PMIC's outputs)."""
        power = [s for s in self.samples if s.source == BOARD_POWER]
        if len(power) < 2 or self.scope_text is None:
            return []
        scope = energy.MODULE_INPUT if self.scope_text.startswith("module input") else energy.RAIL_SUM
        source = f"{self.tool}:{self.scope_text.split(' (')[0]}"
        return [energy.Trace(scope, source, tuple(s.t - offset_s for s in power), tuple(s.value for s in power),
                             interval_s=self.interval_ms / 1000)]

    def no_power(self) -> str:
        """Why `power_traces` is empty."""
        if self.tool is None:
            return self.absent
        if not self.samples:
            return f"{self.tool} on {self.driver.name} printed nothing parseable"
        return f"{self.tool} on {self.driver.name} reported no board power rail (module not recognised, or rails need root)"

    def metrics(self, start: float, end: float, offset_s: float, windows: Sequence[Window] = (),
                no_window: str | None = None) -> list[Metric]:
        """temp_max_c and throttled over the benchmark process [start, end], gpu_load_pct over
        its measured `windows` (all on the probe clock)."""
        if self.tool is None:
            return []
        moved = self.on_probe_clock(offset_s)
        inside = [s for s in moved if start <= s.t <= end]
        span = f"the {end - start:.2f} s process ({self.interval_ms} ms {self.tool} interval)"
        temps = tegrastats.temperatures(_of(inside, "tegrastats/temp/")) if self.tool == "tegrastats" else _of(inside, "vcgencmd/temp")
        out = [Metric("temp_max_c", max(s.value for s in temps), "C", samples=tuple(s.value for s in temps)) if temps
               else Metric.missing("temp_max_c", "C", f"no {self.tool} temperature sample inside {span}")]
        if load := _of(moved, "tegrastats/gpu_load"):
            out.append(gpu.load_metric(load, windows, f"no {self.tool} GPU load sample", no_window))
        if throttle := _of(inside, "vcgencmd/throttled"):
            now = [int(s.value) & 0xF for s in throttle]
            out.append(Metric("throttled", float(any(now)), "bool", samples=tuple(float(v) for v in now)))
        return out

    def on_probe_clock(self, offset_s: float) -> list[Sample]:
        return [replace(s, t=s.t - offset_s) for s in self.samples]

    def details(self) -> dict[str, Any]:
        """Which command was sampled and what its board power covers."""
        return {"tool": self.tool, "interval_ms": self.interval_ms, "power_scope": self.scope_text,
                **({} if self.tool else {"reason": self.absent})}


def _of(samples: Sequence[Sample], prefix: str) -> list[Sample]:
    return [s for s in samples if s.source.startswith(prefix)]
