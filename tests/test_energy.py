"""Energy integration on synthetic traces with known answers (pure functions, no device)."""

from __future__ import annotations

import pytest

from harness.telemetry import energy
from harness.telemetry.energy import Trace, case_energy, counter_trace, energy_metrics, integrate, meter_trace, windows_energy


def _grid(start: float, end: float, step: float) -> tuple[float, ...]:
    n = round((end - start) / step)
    return tuple(start + i * step for i in range(n + 1))


def _power(t: tuple[float, ...], watts, scope: str = energy.CPU_PACKAGE) -> Trace:
    return Trace(scope, "test", t, tuple(watts(x) for x in t), interval_s=0.05)


def test_constant_power_over_a_window_cut_between_samples() -> None:
    trace = _power(_grid(0, 10, 0.05), lambda x: 4.0)
    result = integrate(trace, 1.013, 3.513)
    assert result.joules == pytest.approx(10.0)
    assert result.watts == pytest.approx(4.0)


def test_step_is_integrated_as_the_line_between_its_samples() -> None:
    t = _grid(0, 4, 0.1)
    trace = _power(t, lambda x: 2.0 if x < 2.0 - 1e-9 else 6.0)
    # 0..1.9 at 2 W, a ramp 1.9..2.0 averaging 4 W, 2.0..4.0 at 6 W
    assert integrate(trace, 0.0, 4.0).joules == pytest.approx(1.9 * 2 + 0.1 * 4 + 2.0 * 6)
    assert integrate(trace, 2.5, 3.5).joules == pytest.approx(6.0)


def test_a_short_gap_is_bridged_and_a_long_one_voids_the_window() -> None:
    t = _grid(0, 10, 0.1)
    short = tuple(x for x in t if not 3.0 < x < 3.35)  # 0.4 s hole = 4 sensor periods
    assert integrate(_power(short, lambda x: 5.0), 1.0, 6.0).joules == pytest.approx(25.0)
    long = tuple(x for x in t if not 3.0 < x < 4.05)
    result = integrate(_power(long, lambda x: 5.0), 1.0, 6.0)
    assert result.joules is None and "gap" in (result.reason or "")


def test_rapl_counter_wraparound_is_undone() -> None:
    max_range = 1_000_000.0  # uJ: wraps every second at 1 W
    t = _grid(0, 3, 0.05)
    raw = [(x * 2.5e6) % max_range for x in t]  # 2.5 W: wraps several times
    trace = counter_trace(energy.CPU_PACKAGE, "rapl", t, raw, max_range, 1e-6, interval_s=0.05)
    result = integrate(trace, 0.5, 2.5)
    assert result.joules == pytest.approx(5.0)
    assert result.watts == pytest.approx(2.5)


def test_a_window_shorter_than_ten_sensor_periods_gives_no_figure() -> None:
    t = _grid(0, 10, 0.05)
    slow = _power(t, lambda x: 3.0 + int(x))  # changes once a second: a 1 s sensor
    assert slow.period_s == pytest.approx(1.0)
    result = integrate(slow, 1.0, 5.0)
    assert result.joules is None
    assert "shorter than 10 periods" in (result.reason or "")
    assert integrate(slow, 0.0, 10.0).joules is not None


def test_a_window_outside_the_samples_gives_no_figure() -> None:
    trace = _power(_grid(1, 2, 0.01), lambda x: 1.0)
    assert "does not cover" in (integrate(trace, 0.5, 1.5).reason or "")


def test_one_refused_repetition_voids_the_sum() -> None:
    trace = _power(_grid(0, 5, 0.01), lambda x: 2.0)
    assert windows_energy(trace, [(0.5, 1.5), (2.0, 3.0)]).joules == pytest.approx(4.0)
    assert windows_energy(trace, [(0.5, 1.5), (4.0, 6.0)]).joules is None


def test_gross_net_and_per_token() -> None:
    t = _grid(0, 6, 0.01)
    trace = _power(t, lambda x: 1.5 if x < 2.0 else 9.5)  # idle 1.5 W, then the benchmark
    result = case_energy(trace, [(3.0, 4.0), (4.5, 5.5)], idle=(0.0, 1.9), tokens=400)
    assert result.gross.joules == pytest.approx(19.0)
    assert result.idle_w == pytest.approx(1.5)
    assert result.net_j == pytest.approx(16.0)
    metrics = {m.name: m for m in energy_metrics(result, {})}
    assert metrics["energy_j_per_token"].value == pytest.approx(19.0 / 400)
    assert metrics["energy_j_per_token_net"].value == pytest.approx(16.0 / 400)
    assert metrics["avg_power_w"].value == pytest.approx(9.5)


def test_no_idle_baseline_leaves_net_missing_with_its_reason() -> None:
    trace = _power(_grid(0, 6, 0.01), lambda x: 3.0)
    metrics = {m.name: m for m in energy_metrics(case_energy(trace, [(1.0, 3.0)], None, 10), {})}
    assert metrics["energy_j"].value == pytest.approx(6.0)
    assert metrics["energy_j_net"].value is None and "idle" in (metrics["energy_j_net"].missing_reason or "")


def test_a_charging_battery_gives_no_battery_figure() -> None:
    trace = _power(_grid(0, 6, 0.01), lambda x: 3.0, scope=energy.BATTERY)
    result = case_energy(trace, [(1.0, 3.0)], (0.0, 1.0), 10)
    metrics = energy_metrics(result, {"battery": "Charging"})
    assert all(m.value is None and "charging" in (m.missing_reason or "") for m in metrics)


def test_meter_csv_is_aligned_by_the_clock_offset() -> None:
    text = "time,watts\n" + "".join(f"{i * 0.1:.1f},{12.0 if i >= 50 else 4.0}\n" for i in range(200))
    trace = meter_trace(text, offset_s=1000.0)
    assert trace.scope == energy.WALL and trace.t[0] == pytest.approx(1000.0)
    assert integrate(trace, 1006.0, 1016.0).joules == pytest.approx(120.0)
    with pytest.raises(ValueError, match="not `time,watts`"):
        meter_trace("0,1\nx,y\n", 0.0)


def test_headline_is_the_widest_scope() -> None:
    t = _grid(0, 1, 0.1)
    cpu = _power(t, lambda x: 1.0)
    battery = _power(t, lambda x: 1.0, scope=energy.BATTERY)
    assert energy.headline([cpu, battery]) is battery
    assert energy.headline([]) is None
    with pytest.raises(ValueError, match="scope"):
        Trace("toaster", "x", (0.0,), (1.0,))


def test_window_metrics_integrate_start_and_duration_and_say_why_there_is_none() -> None:
    trace = _power(_grid(0, 6, 0.01), lambda x: 1.0 if x < 2.0 else 4.0)
    # idle asked from before the first sample: clipped to where the trace begins, not refused
    metrics = {m.name: m for m in energy.window_metrics([trace], [(3.0, 1.0), (4.5, 1.0)], 100, idle=(-5.0, 1.9),
                                                         no_power="unused", no_window=None)}
    assert metrics["energy_j"].value == pytest.approx(8.0) and metrics["avg_power_w"].value == pytest.approx(4.0)
    assert metrics["idle_power_w"].value == pytest.approx(1.0) and metrics["energy_j_net"].value == pytest.approx(6.0)
    assert metrics["energy_j_per_token"].value == pytest.approx(0.08)
    failed = energy.window_metrics([trace], [], 0, idle=None, no_power="unused", no_window="the process failed")
    assert {m.missing_reason for m in failed} == {"the process failed"}
    blind = energy.window_metrics([], [(3.0, 1.0)], 10, idle=None, no_power="no power sensor", no_window=None)
    assert [m.name for m in blind] == [name for name, _ in energy.ENERGY_METRICS]
    assert {m.missing_reason for m in blind} == {"no power sensor"}
