"""Contention: what others used of the device while a benchmark ran, and who.

The parsers and the arithmetic run over /proc samples recorded on a real machine
(tests/data/contention/README.md has the hand checks). The mechanism runs for real: the native
probe with a spinning child (tests/data/probe/child.c), alone and with busy-loop hogs beside it.

This machine is shared and noisy (others used 95-200% of a core of its 2 while these tests were
written), so no assertion trusts the box to be quiet. Each real check brackets the probe run with
the test's own /proc/stat reads: what others used can never exceed everything the box did in the
bracket minus the benchmark's own CPU, and is at least what the hogs used (read from their own
/proc/<pid>/stat), whatever else runs.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.drivers.devicefs import parse_reads
from harness.drivers.local import LocalDriver
from harness.runtimes.native import compile_probe
from harness.telemetry import contention
from harness.telemetry.probe import ProbeTrace, contention_metric, parse_probe

from .test_runner import runtime  # noqa: F401 - the stand-in llama-bench runtime fixture

DATA = Path(__file__).resolve().parent / "data"
RECORDED = DATA / "contention"
TICK = os.sysconf("SC_CLK_TCK")


# --- pure: recorded samples -------------------------------------------------------------------


def test_proc_stat_loadavg_and_task_stat_parse() -> None:
    stat = contention.parse_proc_stat((RECORDED / "proc-stat.txt").read_text().splitlines())
    # cpu  72014 44727 16396 50829 490 0 141 160 0 0: busy = user+nice+system+irq+softirq+steal
    assert stat == contention.ProcStat(contention.CpuTimes(133438, 184757), online_cpus=2)
    assert contention.parse_loadavg((RECORDED / "loadavg.txt").read_text()) == (2.13, 2.18, 1.38)
    odd = contention.parse_task_stat((RECORDED / "task-stat-odd-name.txt").read_text())
    assert odd == contention.Task(pid=8655, name="a) b (c", cpu=3, start=93246)
    assert contention.cpu_times([10, 0, 5, 100]) == contention.CpuTimes(15, 115)  # a pre-2.6.11 kernel's four
    with pytest.raises(ValueError):
        contention.parse_proc_stat(["intr 1 2 3"])


def test_recorded_probe_files_give_the_hand_checked_figure() -> None:
    hog = parse_probe((RECORDED / "probe-hog.txt").read_text())
    assert hog.clk_tck == 100
    # (3.02 s busy - 0.824329 s the child's own - 0.003758 s the probe's own) / 1.503308 s
    assert contention_metric(hog).value == pytest.approx(145.81, abs=0.01)
    assert contention_metric(hog).unit == "% of one core"
    alone = contention_metric(parse_probe((RECORDED / "probe-alone.txt").read_text())).value
    assert alone is not None and alone < contention_metric(hog).value  # others' builds only, no hog


def test_windows_cut_the_counters_and_short_ones_fall_back_to_the_whole_process() -> None:
    series = contention.CpuSeries((0.0, 1.0, 2.0), (0.0, 1.5, 2.0), (0.0, 1.0, 1.2))
    assert contention.foreign_cpu(series).pct == pytest.approx(40.0)  # (2.0 - 1.2) / 2 s
    # [0.2, 1.2]: busy 0.3 -> 1.6, own 0.2 -> 1.04: (1.3 - 0.84) / 1 s
    assert contention.foreign_cpu(series, [(0.2, 1.2)]).pct == pytest.approx(46.0)
    assert contention.foreign_cpu(series, [(0.0, 0.5), (1.0, 1.6)]).pct == pytest.approx(100 * (0.75 - 0.5 + 0.3 - 0.12) / 1.1)
    assert contention.foreign_cpu(series, [(0.5, 1.0)]).pct == pytest.approx(40.0)  # 0.5 s (50% in it): whole process
    assert contention.foreign_cpu(series, [(1.0, 3.0)]).reason.startswith("window 1.000..3.000 s is outside")
    assert contention.foreign_cpu(contention.CpuSeries((0.0, 1.0), (0.0, 0.5), (0.0, 0.6))).pct == 0.0  # clamped
    assert contention.foreign_cpu(contention.CpuSeries((0.0,), (0.0,), (0.0,))).pct is None


def test_real_windows_add_up_to_the_whole_process() -> None:
    trace = parse_probe((RECORDED / "probe-hog.txt").read_text())
    t = [s.t for s in trace.samples if s.source == "cpu/busy"]
    first, last = t[0], t[-1]
    middle = (first + last) / 2
    assert contention_metric(trace, [(first, middle), (middle, last)]).value == pytest.approx(contention_metric(trace).value)


def test_contended_is_the_threshold_and_a_missing_figure_says_why() -> None:
    assert contention.contended_metric(contention.foreign_metric(contention.Foreign(25.0, 1.0)), 10).value == 1.0
    assert contention.contended_metric(contention.foreign_metric(contention.Foreign(5.0, 1.0)), 10).value == 0.0
    unknown = contention.contended_metric(contention.foreign_metric(contention.Foreign(None, 0, "no /proc/stat")), 10)
    assert unknown.value is None and "no /proc/stat" in (unknown.missing_reason or "")


def test_busiest_between_recorded_snapshots_is_the_hog() -> None:
    before = contention.parse_snapshot(parse_reads((RECORDED / "snapshot-before.txt").read_text()))
    after = contention.parse_snapshot(parse_reads((RECORDED / "snapshot-after.txt").read_text()))
    assert (before.reader_pid, after.reader_pid, before.load, before.error) == (8477, 8505, (2.14, 2.18, 1.37), None)
    top = contention.busiest(before, after)
    assert len(top) == 3 and top[0]["pid"] == 8464 and top[0]["cpu_pct"] == pytest.approx(100 * 91 / 152.5)
    assert not {8477, 8505} & {row["pid"] for row in top}  # never the shells that read the snapshots
    assert 8464 not in {row["pid"] for row in contention.busiest(before, after, exclude=[8464])}


def test_quiet_sample_and_the_bounded_wait() -> None:
    assert contention.parse_quiet((RECORDED / "quiet-hog.txt").read_text()) == pytest.approx(135 / 99.5 * 100)
    readings = iter([80.0, 40.0, 5.0])
    clock = iter(range(100))
    done = contention.wait_for_quiet(lambda: next(readings), 10, 30, clock=lambda: float(next(clock)))
    assert done.reached and done.samples == 3 and done.foreign_cpu_pct == 5.0
    busy = contention.wait_for_quiet(lambda: 80.0, 10, 5, clock=lambda: float(next(clock)))
    assert not busy.reached and busy.samples == 5 and "80%" in (busy.reason or "")

    def broken() -> float:
        raise ValueError("no /proc/stat")

    failed = contention.wait_for_quiet(broken, 10, 5)
    assert not failed.reached and failed.samples == 1 and "no /proc/stat" in (failed.reason or "")


# --- real processes ---------------------------------------------------------------------------


class _Hogs:
    """One busy-loop process per core (up to 4), for as long as the block runs."""

    def __enter__(self) -> list[int]:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(min(os.cpu_count() or 1, 4))]
        time.sleep(0.3)
        return [p.pid for p in self.procs]

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def probe_and_child(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("contention")
    compile_probe("cc", folder / "edgebench-probe")
    subprocess.run(["cc", "-O2", "-o", str(folder / "child"), str(DATA / "probe" / "child.c")], check=True)
    return folder / "edgebench-probe", folder / "child"


def _busy_s() -> float:
    return contention.parse_proc_stat(Path("/proc/stat").read_text().splitlines()).cpu.busy / TICK


def _task_cpu_s(pid: int) -> float:
    return contention.parse_task_stat(Path(f"/proc/{pid}/stat").read_text()).cpu / TICK


def _bracketed(probe: Path, child: Path, out: Path) -> tuple[ProbeTrace, float]:
    """A 1.5 s spinning child under the probe, and every CPU's busy seconds around it."""
    before = _busy_s()
    subprocess.run([str(probe), "--out", str(out), "--interval-ms", "50", "--", str(child), "spin", "1500"], check=True, timeout=60)
    return parse_probe(out.read_text()), _busy_s() - before


def _span(trace: ProbeTrace) -> float:
    ticks = [s.t for s in trace.samples if s.source == "cpu/busy" and trace.start_t is not None and s.t >= trace.start_t]
    return ticks[-1] - ticks[0]


def test_a_spinning_benchmark_alone_is_not_marked_by_its_own_cpu(probe_and_child, tmp_path) -> None:
    trace, bracket_busy_s = _bracketed(*probe_and_child, tmp_path / "alone.txt")
    assert trace.exit is not None
    own_s = trace.exit.rusage.user_s + trace.exit.rusage.system_s
    assert own_s > 0.1  # it spun: its own CPU is what must not count as others'
    foreign = contention_metric(trace)
    assert foreign.value is not None
    # Whatever else this box ran is inside the bracket too, so others used at most the bracket's
    # busy time less the benchmark's own. The test's threshold sits half the benchmark's CPU
    # above that: never crossed when the benchmark is subtracted, always when it is not.
    threshold = 100 * (bracket_busy_s - own_s / 2) / _span(trace)
    print(f"alone: others {foreign.value:.1f}% of a core; benchmark {100 * own_s / _span(trace):.1f}%; test threshold {threshold:.1f}%")
    assert contention.contended_metric(foreign, threshold).value == 0.0


def test_a_real_cpu_hog_beside_the_benchmark_marks_it(probe_and_child, tmp_path) -> None:
    with _Hogs() as hogs:  # one per core: others get a large share even on a busy box
        hog_before, t0 = sum(_task_cpu_s(pid) for pid in hogs), time.monotonic()
        trace, _ = _bracketed(*probe_and_child, tmp_path / "hog.txt")
        hog_s, bracket_s = sum(_task_cpu_s(pid) for pid in hogs) - hog_before, time.monotonic() - t0
    span = _span(trace)
    # The hogs used at most one core each outside the probe's span; the rest was inside it.
    hog_inside_pct = 100 * (hog_s - len(hogs) * (bracket_s - span)) / span
    foreign = contention_metric(trace)
    assert foreign.value is not None
    slack_pct = 100 * 4 * (os.cpu_count() or 1) / TICK / span  # a jiffy per CPU and counter at each end
    print(f"hog: others {foreign.value:.1f}% of a core, of which the hogs {hog_inside_pct:.1f}%")
    assert foreign.value >= hog_inside_pct - slack_pct  # the hogs are in it, whatever else ran
    # With a hog per core, the cores are full: others used whatever the benchmark did not get,
    # at least half a core even on a one-core box, so far above the default threshold.
    assert foreign.value > 3 * contention.DEFAULT_THRESHOLD_PCT
    assert contention.contended_metric(foreign, contention.DEFAULT_THRESHOLD_PCT).value == 1.0


def test_a_quiet_wait_with_a_hog_running_gives_up_at_its_bound() -> None:
    from harness.run.watch import quiet_sample

    looks = itertools.count()  # a clock that ticks once a look: the bound counts looks, not a busy box's seconds
    with _Hogs():
        done = contention.wait_for_quiet(lambda: quiet_sample(LocalDriver(), 0.5), contention.DEFAULT_THRESHOLD_PCT, 3,
                                         clock=lambda: float(next(looks)))
    assert not done.reached and done.samples == 3 and done.waited_s >= 3
    assert done.foreign_cpu_pct is not None and done.foreign_cpu_pct > contention.DEFAULT_THRESHOLD_PCT
    roomy = contention.wait_for_quiet(lambda: quiet_sample(LocalDriver(), 0.2), 100 * (os.cpu_count() or 1) + 1, 0)
    assert roomy.reached and roomy.samples == 1  # a threshold no box can cross: one sample, no wait


# --- the runner: stored with every process ----------------------------------------------------


def test_the_runner_stores_contention_load_and_the_busiest_with_every_process(tmp_path, runtime) -> None:
    """The stand-in llama-bench of test_runner (no probe: edgebench's own CPU comes from os.times)."""
    from harness.plan.planner import RunPolicy
    from harness.store.db import Store

    from .test_runner import _new_run, _run

    store = Store(tmp_path / "results")
    hogged = _new_run(store, repetitions=1)
    with _Hogs() as hogs:
        _run(store, hogged, runtime, policy=RunPolicy(mode="burst", quiet_max_s=0))
    never = _new_run(store, repetitions=1)
    _run(store, never, runtime, policy=RunPolicy(contention_threshold_pct=100 * (os.cpu_count() or 1) + 1))

    def figures(run_id: str) -> dict[tuple[str, int, str], float | None]:
        return {(m["case_key"], m["rep"], m["metric"]): m["value"] for m in store.measurements([run_id])}

    hogged_figures = figures(hogged)
    for execution in store.executions(hogged):
        key = (execution.case_key, execution.rep)
        assert hogged_figures[(*key, "foreign_cpu_pct")] > 3 * contention.DEFAULT_THRESHOLD_PCT
        assert hogged_figures[(*key, "contended")] == 1.0 and hogged_figures[(*key, "load_avg_1m")] is not None
        busiest = execution.raw.contention["busiest"]
        assert 0 < len(busiest) <= 3 and {"pid", "name", "cpu_pct"} <= set(busiest[0])
        assert set(hogs) & {row["pid"] for row in busiest} or len(busiest) == 3  # a hog, unless three others used more
        assert execution.raw.cooldown is not None
        quiet = execution.raw.cooldown["quiet"]
        assert quiet["samples"] == 1 and not quiet["reached"] and quiet["foreign_cpu_pct"] > contention.DEFAULT_THRESHOLD_PCT
    assert {v for (_, _, metric), v in figures(never).items() if metric == "contended"} == {0.0}


@pytest.mark.slow
def test_a_hog_beside_a_real_llama_bench_run_is_shown_contended_and_not_compared(tmp_path, host_runtime, default_model) -> None:
    """`edgebench run` twice with the default model: A with a threshold no box can cross (so
    never marked: the option reaches the runner), B at the suite's 10% with hogs beside it."""
    import json

    from harness.store.db import Store

    from .test_cli import edgebench

    suite = tmp_path / "c.toml"
    suite.write_text('name = "c"\nrepetitions = 2\ninprocess_repetitions = 2\nmode = "none"\ncontention_threshold_pct = 10\n'
                     "[[prefill]]\nprompt = 64\n")
    results = tmp_path / "results"
    a = edgebench("run", "--suite", str(suite), "--results", str(results), "--wait",
                  "--contention-threshold", str(100 * (os.cpu_count() or 1) + 1), cwd=tmp_path)
    assert a.returncode == 0, a.stderr
    with _Hogs():
        b = edgebench("run", "--suite", str(suite), "--results", str(results), "--wait", cwd=tmp_path)
    assert b.returncode == 0, b.stderr
    assert "contended" not in a.stdout
    assert "* prefill p64: contended: others used up to" in b.stdout and "contended: prefill p64 round 1: others used" in b.stdout
    store = Store(results)
    run_b, run_a = (r.id for r in store.runs())
    values = {(m["run_id"], m["rep"], m["metric"]): m["value"] for m in store.measurements([run_a, run_b])}
    for rep in (0, 1):
        assert values[(run_a, rep, "contended")] == 0.0 and values[(run_a, rep, "foreign_cpu_pct")] is not None
        assert values[(run_b, rep, "contended")] == 1.0
        assert values[(run_b, rep, "foreign_cpu_pct")] > 3 * contention.DEFAULT_THRESHOLD_PCT
    shown = json.loads(edgebench("results", "show", run_b, "--json", "--results", str(results), cwd=tmp_path).stdout)
    assert [(p["case"], p["rep"]) for p in shown["contended"]] == [("prefill p64", 0), ("prefill p64", 1)]
    assert all(p["busiest"] for p in shown["contended"])
    compared = edgebench("compare", run_a, run_b, "--results", str(results), cwd=tmp_path)
    assert compared.returncode == 0 and "contended: not compared" in compared.stdout
    assert "faster" not in compared.stdout and "slower" not in compared.stdout
    report = (results / "runs" / run_b / "report.html").read_text()
    assert "contended: others used up to" in report
