"""Energy over measured windows: pure functions over sampled power or energy counters.

Method (why the figures can be trusted):
- Only measured windows count: the engine hands over the (start, duration) of each timed
  repetition on the device clock (llama-bench: its `--progress` marks as the probe stamped
  them, lasting its own `samples_ns`; see harness.engines.llamabench). Model load, warmup and
  the depth prefill are outside every window. Every driver and every power source (sysfs
  sensors read by the probe, board tools such as tegrastats moved onto the probe's clock,
  the host's RAPL counter) goes through the same functions here, so `energy_j` means one
  thing everywhere.
- Power samples are integrated with the trapezoid rule over the piecewise-linear power curve,
  cut exactly at the window edges; a cumulative counter (RAPL `energy_uj`) is unwrapped, then
  interpolated at the edges. A gap longer than `MAX_GAP_PERIODS` sensor periods inside a
  window means the power there is unknown: no figure, with that reason.
- A window shorter than ten sensor periods gives no figure: the sensor's own averaging would
  dominate it. The sensor period is measured from the trace (median time between changes),
  never assumed faster than the sampling interval.
- Idle baseline: the probe samples for a while before starting the benchmark; idle power is
  that window's mean. Net energy = gross - idle power x window length.
"""

from __future__ import annotations

import csv
import io
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import median

from harness.records import Metric

# Where the sensor sits, i.e. what its watts include. Ordered from widest to narrowest scope:
# the first one found is the headline figure.
MODULE_INPUT = "module input"
WALL = "wall meter"
BATTERY = "battery"
RAIL_SUM = "rail sum"
CPU_PACKAGE = "CPU package"
GPU = "GPU"
SCOPES = (MODULE_INPUT, WALL, BATTERY, RAIL_SUM, CPU_PACKAGE, GPU)

MIN_PERIODS = 10  # a window must span at least this many sensor periods
MAX_GAP_PERIODS = 5  # a hole longer than this many periods inside a window voids it


@dataclass(frozen=True)
class Trace:
    """One power figure over time, on the device clock (seconds).

    kind "power": `values` are watts at each instant (integrated by trapezoid);
    kind "energy": `values` are cumulative joules, already unwrapped (a counter).
    """

    scope: str
    source: str
    t: tuple[float, ...]
    values: tuple[float, ...]
    kind: str = "power"
    interval_s: float = 0.0  # the sampling interval (a floor for the sensor period)

    def __post_init__(self) -> None:
        if len(self.t) != len(self.values):
            raise ValueError(f"{self.source}: {len(self.t)} times but {len(self.values)} values")
        if any(b < a for a, b in zip(self.t, self.t[1:])):
            raise ValueError(f"{self.source}: times are not in order")
        if self.scope not in SCOPES:
            raise ValueError(f"{self.source}: unknown power scope {self.scope!r} (one of {', '.join(SCOPES)})")

    @property
    def period_s(self) -> float:
        """The sensor's update period: median time between changed values, at least the
        sampling interval (a sensor can not be seen updating faster than it is sampled)."""
        changes = [t for t, a, b in zip(self.t[1:], self.values, self.values[1:]) if a != b]
        steps = [b - a for a, b in zip(changes, changes[1:])]
        sampled = [b - a for a, b in zip(self.t, self.t[1:]) if b > a]
        floor = max(self.interval_s, median(sampled) if sampled else 0.0)
        return max(floor, median(steps)) if steps else floor


@dataclass(frozen=True)
class Energy:
    """Energy over one window, or why there is none (`joules` None, `reason` set)."""

    joules: float | None
    seconds: float
    reason: str | None = None

    @property
    def watts(self) -> float | None:
        return None if self.joules is None or self.seconds <= 0 else self.joules / self.seconds


def unwrap_counter(values: Sequence[float], max_range: float) -> tuple[float, ...]:
    """A wrapping counter (e.g. RAPL energy_uj, wraps at max_energy_range_uj) made monotonic.

    One wrap between two readings is undone; sampling every 50 ms, a counter that takes
    minutes to wrap can not wrap twice unseen.
    """
    out: list[float] = []
    offset = 0.0
    for before, now in zip((values[0], *values), values):
        if now < before:
            offset += max_range
        out.append(now + offset)
    return tuple(out)


def counter_trace(scope: str, source: str, t: Sequence[float], counter: Sequence[float], max_range: float,
                  scale: float, interval_s: float = 0.0) -> Trace:
    """A cumulative counter (raw units x `scale` = joules) as an energy Trace."""
    joules = tuple(v * scale for v in unwrap_counter(counter, max_range))
    return Trace(scope, source, tuple(t), joules, "energy", interval_s)


def integrate(trace: Trace, start: float, end: float) -> Energy:
    """Energy of `trace` over [start, end] (see the module doc for the method and the refusals)."""
    seconds = end - start
    if seconds <= 0:
        return Energy(None, seconds, f"empty window ({seconds:.3f} s)")
    t = trace.t
    if len(t) < 2 or t[0] > start or t[-1] < end:
        covered = f"{t[0]:.3f}..{t[-1]:.3f}" if t else "nothing"
        return Energy(None, seconds, f"{trace.source} does not cover the window {start:.3f}..{end:.3f} s (samples: {covered})")
    period = trace.period_s
    if seconds < MIN_PERIODS * period * (1 - 1e-9):  # a hair of float slack: 10 x 0.1 s is 1 s
        return Energy(None, seconds, f"window of {seconds:.3f} s is shorter than {MIN_PERIODS} periods of {trace.source} "
                                     f"({MIN_PERIODS} x {period:.3f} s)")
    lo, hi = bisect_right(t, start) - 1, bisect_right(t, end)
    inside = t[lo:hi + 1] if hi < len(t) else t[lo:]
    gap = max(b - a for a, b in zip(inside, inside[1:]))
    if gap > MAX_GAP_PERIODS * period:
        return Energy(None, seconds, f"{trace.source} has a {gap:.3f} s gap in the window "
                                     f"(more than {MAX_GAP_PERIODS} sensor periods of {period:.3f} s)")
    return Energy(_cumulative(trace, end) - _cumulative(trace, start), seconds)


def _cumulative(trace: Trace, x: float) -> float:
    """Joules from the first sample to x (exact for piecewise-linear power)."""
    t, v = trace.t, trace.values
    i = min(max(bisect_right(t, x) - 1, 0), len(t) - 2)
    span = t[i + 1] - t[i]
    frac = (x - t[i]) / span if span > 0 else 0.0
    if trace.kind == "energy":
        return v[i] + (v[i + 1] - v[i]) * frac
    before = sum((t[k + 1] - t[k]) * (v[k] + v[k + 1]) / 2 for k in range(i))
    dx = x - t[i]
    at_x = v[i] + (v[i + 1] - v[i]) * frac
    return before + dx * (v[i] + at_x) / 2


def windows_energy(trace: Trace, windows: Iterable[tuple[float, float]]) -> Energy:
    """Total over several windows (the repetitions of one case); one refused window voids all,
    since a sum over some repetitions would look like a smaller, wrong figure."""
    total, seconds = 0.0, 0.0
    for start, end in windows:
        part = integrate(trace, start, end)
        if part.joules is None:
            return Energy(None, seconds + part.seconds, part.reason)
        total += part.joules
        seconds += part.seconds
    if seconds == 0:
        return Energy(None, 0.0, "no measured window")
    return Energy(total, seconds)


@dataclass(frozen=True)
class CaseEnergy:
    """Gross and net energy of one process's measured windows, per token."""

    scope: str
    source: str
    gross: Energy
    idle_w: float | None
    idle_reason: str | None
    tokens: int

    @property
    def net_j(self) -> float | None:
        if self.gross.joules is None or self.idle_w is None:
            return None
        return self.gross.joules - self.idle_w * self.gross.seconds


def case_energy(trace: Trace, windows: Sequence[tuple[float, float]], idle: tuple[float, float] | None,
                tokens: int) -> CaseEnergy:
    """Energy of the measured windows and of the idle baseline before them."""
    if idle is None:
        idle_w, idle_reason = None, "no idle baseline was sampled before the benchmark"
    else:
        baseline = integrate(trace, *idle)
        idle_w, idle_reason = baseline.watts, baseline.reason
    return CaseEnergy(trace.scope, trace.source, windows_energy(trace, windows), idle_w, idle_reason, tokens)


def meter_trace(text: str, offset_s: float, source: str = "meter") -> Trace:
    """An external power meter's CSV (`time,watts` per row, a header row allowed) on the device
    clock: device time = meter time + `offset_s` (found e.g. from a marked load step)."""
    t: list[float] = []
    watts: list[float] = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 2 or not row[0].strip():
            continue
        try:
            when, power = float(row[0]), float(row[1])
        except ValueError:
            if t:  # only the first row may be a header
                raise ValueError(f"{source}: row {row!r} is not `time,watts`") from None
            continue
        t.append(when + offset_s)
        watts.append(power)
    return Trace(WALL, source, tuple(t), tuple(watts))


def headline(traces: Sequence[Trace]) -> Trace | None:
    """The widest-scope trace: what a person means by "the device's power"."""
    ranked = sorted(traces, key=lambda tr: SCOPES.index(tr.scope))
    return ranked[0] if ranked else None


# Every energy figure of one process, in the order they are stored.
ENERGY_METRICS = (("energy_j", "J"), ("avg_power_w", "W"), ("idle_power_w", "W"), ("energy_j_net", "J"),
                  ("energy_j_per_token", "J/token"), ("energy_j_per_token_net", "J/token"))


def missing_energy(reason: str) -> list[Metric]:
    return [Metric.missing(name, unit, reason) for name, unit in ENERGY_METRICS]


def window_metrics(traces: Sequence[Trace], windows: Sequence[tuple[float, float]], tokens: int, *,
                   idle: tuple[float, float] | None, no_power: str, no_window: str | None,
                   battery_status: dict[str, str] | None = None) -> list[Metric]:
    """The energy figures of one process: the headline trace integrated over the engine's
    measured windows ((start, duration) on the trace's clock), with the idle baseline
    sampled over `idle` (clipped to where the headline trace begins)."""
    trace = headline(traces)
    if trace is None:
        return missing_energy(no_power)
    if not windows:
        return missing_energy(no_window or "the engine reported no measured window")
    if idle is not None and trace.t:
        idle = (max(idle[0], trace.t[0]), idle[1])
    result = case_energy(trace, [(start, start + duration) for start, duration in windows], idle, tokens)
    return energy_metrics(result, battery_status or {})


def energy_metrics(result: CaseEnergy, battery_status: dict[str, str]) -> list[Metric]:
    """The energy figures of one process; a charging battery voids battery-scope figures."""
    charging = [name for name, state in battery_status.items() if state in ("Charging", "Full")]
    if result.scope == BATTERY and charging:
        return missing_energy(f"battery {', '.join(charging)} is charging or full: USB power hides the discharge")
    gross = result.gross
    if gross.joules is None:
        return missing_energy(gross.reason or "no figure")
    idle_reason = result.idle_reason or "no idle figure"
    net = result.net_j
    out = [
        Metric("energy_j", gross.joules, "J"),
        Metric("avg_power_w", gross.joules / gross.seconds, "W"),
        Metric("idle_power_w", result.idle_w, "W") if result.idle_w is not None else Metric.missing("idle_power_w", "W", idle_reason),
        Metric("energy_j_net", net, "J") if net is not None else Metric.missing("energy_j_net", "J", idle_reason),
    ]
    if result.tokens <= 0:
        out += [Metric.missing("energy_j_per_token", "J/token", "the case produced no tokens"),
                Metric.missing("energy_j_per_token_net", "J/token", "the case produced no tokens")]
        return out
    out.append(Metric("energy_j_per_token", gross.joules / result.tokens, "J/token"))
    out.append(Metric("energy_j_per_token_net", net / result.tokens, "J/token") if net is not None
               else Metric.missing("energy_j_per_token_net", "J/token", idle_reason))
    return out
