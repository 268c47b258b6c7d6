"""How much of the device others used while the benchmark ran, and who (pure functions).

A figure measured while another job kept the cores busy is a different figure; nothing in the
figure itself shows it. So every process gets:

- foreign CPU, in % of one core: (Δ busy jiffies of all CPUs − Δ the benchmark's own CPU −
  Δ the sampler's own) / Δt, clamped at 0 (the kernel counts /proc/stat by ticks and a task's
  time by its scaled runtime, so the two differ by a jiffy or so). busy = user + nice + system
  + irq + softirq + steal of /proc/stat's aggregate `cpu` line; guest time is already inside
  user/nice, idle and iowait are not busy. The native probe copies these counters every tick
  on the device clock (`CpuSeries`); the figure is taken over the measured windows an engine
  hands over, with the cumulative counters interpolated at their edges, or over the process's
  whole life when there are none or they total under `MIN_WINDOWS_S` (a 10 ms jiffy on each
  CPU at each edge would swamp a shorter span).
- the 1-minute load average right before the process (context: it includes the tail of the
  previous case, so it is not the verdict);
- `contended` when foreign CPU exceeds a threshold (suite key `contention_threshold_pct`);
- the busiest other processes, from two snapshots of /proc/[0-9]*/stat right before and right
  after the process (`busiest`): the benchmark and the probe live only between the two, so
  they cannot appear; a process born in between counts all its CPU.

`wait_for_quiet` is burst mode's second wait: before a case, until a short sample of foreign CPU
(`quiet_argv`, read on the device, nothing of edgebench running) is under the threshold.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from harness.drivers.base import DriverError
from harness.drivers.devicefs import FileRead
from harness.records import Metric

FOREIGN_UNIT = "% of one core"
DEFAULT_THRESHOLD_PCT = 10.0
MIN_WINDOWS_S = 1.0
BUSIEST = 3
# Read together right before and right after the process. /proc/self/stat is the reading shell
# itself (devicefs reads with shell builtins), so it can be left out of the busiest.
SNAPSHOT_GLOBS = ("/proc/self/stat", "/proc/loadavg", "/proc/[0-9]*/stat", "/proc/stat")


# --- /proc parsers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuTimes:
    """/proc/stat's aggregate line: jiffies busy, and in all (busy + idle + iowait), over every CPU."""

    busy: int
    total: int


def cpu_times(numbers: Sequence[int]) -> CpuTimes:
    """The numbers after `cpu` (user nice system idle iowait irq softirq steal guest guest_nice);
    kernels before 2.6.11 have fewer: the absent ones were not counted, i.e. 0."""
    if len(numbers) < 4:
        raise ValueError(f"/proc/stat cpu line with {len(numbers)} numbers; at least 4 expected")
    user, nice, system, idle, iowait, irq, softirq, steal = (*numbers[:8], *(0,) * (8 - min(len(numbers), 8)))
    busy = user + nice + system + irq + softirq + steal
    return CpuTimes(busy, busy + idle + iowait)


@dataclass(frozen=True)
class ProcStat:
    """What one read of /proc/stat tells: the aggregate times and how many CPUs are online."""

    cpu: CpuTimes
    online_cpus: int


def parse_proc_stat(lines: Iterable[str]) -> ProcStat:
    """/proc/stat (or just its `cpu*` lines) -> aggregate times and the online CPU count."""
    aggregate, online = None, 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name == "cpu":
            aggregate = cpu_times([int(x) for x in rest.split()])
        elif name.startswith("cpu") and name[3:].isdigit():
            online += 1
    if aggregate is None:
        raise ValueError("no aggregate `cpu` line in /proc/stat")
    return ProcStat(aggregate, max(online, 1))


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """/proc/loadavg -> the 1, 5 and 15 minute load averages."""
    one, five, fifteen = (float(x) for x in text.split()[:3])
    return one, five, fifteen


@dataclass(frozen=True)
class Task:
    """One line of /proc/<pid>/stat: who, and the CPU it has used (jiffies)."""

    pid: int
    name: str
    cpu: int  # utime + stime (fields 14, 15); waited children are the children's own
    start: int  # starttime (field 22), jiffies after boot: tells a reused pid apart


def parse_task_stat(line: str) -> Task:
    """/proc/<pid>/stat -> Task. The name (field 2) may hold spaces and ')': the fields are
    counted from its last ')'."""
    head, _, tail = line.rpartition(")")
    pid, _, name = head.partition(" (")
    fields = tail.split()  # fields[0] is field 3 (state)
    if not head or len(fields) < 20:
        raise ValueError(f"not a /proc/<pid>/stat line: {line[:80]!r}")
    return Task(int(pid), name, int(fields[11]) + int(fields[12]), int(fields[19]))


# --- foreign CPU over windows -----------------------------------------------------------------


@dataclass(frozen=True)
class CpuSeries:
    """Cumulative CPU seconds on the device clock: of every CPU together (`busy_s`) and of what
    edgebench itself ran there, the benchmark plus its sampler (`own_s`)."""

    t: tuple[float, ...]
    busy_s: tuple[float, ...]
    own_s: tuple[float, ...]

    def __post_init__(self) -> None:
        if not len(self.t) == len(self.busy_s) == len(self.own_s):
            raise ValueError("CpuSeries columns differ in length")
        if any(b < a for a, b in zip(self.t, self.t[1:])):
            raise ValueError("CpuSeries times are not in order")


@dataclass(frozen=True)
class Foreign:
    """Others' CPU over a span, or why there is no figure (`pct` None)."""

    pct: float | None
    seconds: float
    reason: str | None = None


def foreign_cpu(series: CpuSeries, windows: Sequence[tuple[float, float]] | None = None) -> Foreign:
    """Others' CPU in % of one core over `windows` ([start, end] on the device clock), or over
    the whole series when there are none or they total under `MIN_WINDOWS_S` (see the module doc)."""
    t = series.t
    if len(t) < 2 or t[-1] <= t[0]:
        return Foreign(None, 0.0, f"{len(t)} CPU counter reading(s) over the process: at least two, apart, are needed")
    spans = list(windows or ())
    if sum(end - start for start, end in spans) < MIN_WINDOWS_S:
        spans = [(t[0], t[-1])]
    outside = [(s, e) for s, e in spans if s < t[0] or e > t[-1] or e <= s]
    if outside:
        s, e = outside[0]
        return Foreign(None, 0.0, f"window {s:.3f}..{e:.3f} s is outside the CPU counters ({t[0]:.3f}..{t[-1]:.3f} s)")
    busy = own = seconds = 0.0
    for start, end in spans:
        busy += _at(t, series.busy_s, end) - _at(t, series.busy_s, start)
        own += _at(t, series.own_s, end) - _at(t, series.own_s, start)
        seconds += end - start
    return Foreign(max(0.0, 100 * (busy - own) / seconds), seconds)


def _at(t: Sequence[float], values: Sequence[float], x: float) -> float:
    """A cumulative counter at x, linear between the readings around it."""
    i = min(max(bisect_right(t, x) - 1, 0), len(t) - 2)
    span = t[i + 1] - t[i]
    return values[i] + (values[i + 1] - values[i]) * ((x - t[i]) / span if span > 0 else 0.0)


def foreign_metric(result: Foreign) -> Metric:
    if result.pct is None:
        return Metric.missing("foreign_cpu_pct", FOREIGN_UNIT, result.reason or "no figure")
    return Metric("foreign_cpu_pct", result.pct, FOREIGN_UNIT)


def contended_metric(foreign: Metric, threshold_pct: float) -> Metric:
    """contended (1.0 / 0.0): did others use more than `threshold_pct` of one core?"""
    if foreign.value is None:
        return Metric.missing("contended", "bool", f"others' CPU is unknown: {foreign.missing_reason}")
    return Metric("contended", 1.0 if foreign.value > threshold_pct else 0.0, "bool")


# --- who: snapshots of every process ----------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Every process's CPU, the load and /proc/stat at one moment, or why not (`error`)."""

    stat: ProcStat | None
    load: tuple[float, float, float] | None
    tasks: dict[int, Task]
    reader_pid: int | None
    error: str | None = None


def parse_snapshot(files: dict[str, FileRead]) -> Snapshot:
    """Files read by `SNAPSHOT_GLOBS` -> Snapshot; a process that ended while it was read is skipped."""
    tasks: dict[int, Task] = {}
    reader = None
    for path, read in files.items():
        if not (path.startswith("/proc/") and path.endswith("/stat") and read.value):
            continue
        try:
            task = parse_task_stat(read.value)
        except ValueError:
            continue
        if path == "/proc/self/stat":
            reader = task.pid
        elif path != "/proc/stat":
            tasks[task.pid] = task
    stat_read = files.get("/proc/stat")
    load_read = files.get("/proc/loadavg")
    try:
        stat = parse_proc_stat(stat_read.lines) if stat_read and not stat_read.error else None
        load = parse_loadavg(load_read.value) if load_read and load_read.value else None
    except ValueError as exc:
        return Snapshot(None, None, tasks, reader, f"unexpected /proc content: {exc}")
    errors = [r.error for r in (stat_read, load_read) if r is not None and r.error]
    if stat_read is None:
        errors.append("/proc/stat does not exist")
    return Snapshot(stat, load, tasks, reader, "; ".join(errors) or None)


def busiest(before: Snapshot, after: Snapshot, exclude: Iterable[int] = (), top: int = BUSIEST) -> list[dict[str, object]]:
    """The `top` processes by CPU used between the snapshots, in % of one core, leaving out
    `exclude` and the shells that read the snapshots. A pid seen with another start time is a
    new process: all its CPU counts."""
    if before.stat is None or after.stat is None:
        return []
    elapsed = (after.stat.cpu.total - before.stat.cpu.total) / after.stat.online_cpus  # jiffies per CPU
    if elapsed <= 0:
        return []
    skip = {*exclude, before.reader_pid, after.reader_pid}
    used = []
    for pid, task in after.tasks.items():
        earlier = before.tasks.get(pid)
        delta = task.cpu - (earlier.cpu if earlier is not None and earlier.start == task.start else 0)
        if pid not in skip and delta > 0:
            used.append({"pid": pid, "name": task.name, "cpu_pct": 100 * delta / elapsed})
    return sorted(used, key=lambda row: -float(row["cpu_pct"]))[:top]  # type: ignore[arg-type]


# --- burst mode: wait for quiet ---------------------------------------------------------------

# $1 = seconds. Prints /proc/stat's cpu lines, `--`, sleeps, prints them again: shell builtins
# only, so the sample itself costs the device nothing but the sleep's exec.
_QUIET_SCRIPT = r"""
cpu() { while IFS= read -r line; do case $line in cpu*) printf '%s\n' "$line";; esac; done < /proc/stat; }
cpu; echo --; sleep "$1"; cpu
"""


def quiet_argv(seconds: float) -> list[str]:
    """The command that samples everything's CPU on the device for `seconds`."""
    return ["sh", "-c", _QUIET_SCRIPT, "edgebench-quiet", f"{seconds:g}"]


def parse_quiet(text: str) -> float:
    """`quiet_argv`'s output -> others' CPU in % of one core (nothing of edgebench runs then).
    Elapsed time is the total jiffies over the online CPUs, so no clock tick rate is needed."""
    first, sep, second = text.partition("--")
    if not sep:
        raise ValueError(f"not a quiet sample: {text[:80]!r}")
    a, b = parse_proc_stat(first.splitlines()), parse_proc_stat(second.splitlines())
    elapsed = (b.cpu.total - a.cpu.total) / b.online_cpus
    if elapsed <= 0:
        raise ValueError("the two /proc/stat reads are no time apart")
    return 100 * (b.cpu.busy - a.cpu.busy) / elapsed


@dataclass(frozen=True)
class Quiet:
    """How a burst-mode wait for quiet went: recorded with the case it preceded."""

    waited_s: float
    foreign_cpu_pct: float | None  # the last sample
    threshold_pct: float
    reached: bool
    samples: int
    reason: str | None = None


def wait_for_quiet(sample: Callable[[], float], threshold_pct: float, max_wait_s: float,
                   clock: Callable[[], float] = time.monotonic) -> Quiet:
    """Take samples (each lasts as long as it samples) until one is under `threshold_pct`, for
    at most `max_wait_s`; the first is always taken. A sample that fails ends the wait."""
    start, n = clock(), 0
    while True:
        n += 1
        try:
            last = sample()
        except (DriverError, ValueError) as exc:
            return Quiet(clock() - start, None, threshold_pct, False, n, f"others' CPU could not be sampled: {exc}")
        if last < threshold_pct or clock() - start >= max_wait_s:
            break
    waited = clock() - start
    reached = last < threshold_pct
    reason = None if reached else f"others still used {last:.0f}% of a core after {waited:.0f} s"
    return Quiet(waited, last, threshold_pct, reached, n, reason)
