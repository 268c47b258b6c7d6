"""Telemetry through the native probe (probe/edgebench-probe.c), for any driver.

`ProbeTelemetry` puts the probe in front of the benchmark's argv (`wrap`); the probe runs the
benchmark as its child on the device and writes a sample file there, which is read back with
`driver.run(["cat", ...])` when the window closes. Sources are discovered per device with one
`devicefs` command, so this works the same over adb and ssh as on the host. A board tool that
is a command (tegrastats, vcgencmd: harness.telemetry.coprocess) runs beside the probe and is
moved onto its clock. The probe never reads the benchmark's argv or output: the runner says
which stderr prefix to stamp and which cores the benchmark uses, and hands back the engine's
measured windows. Parsing is pure (`parse_probe`); figures come from `metrics()`:

- peak_rss_mb from the probe's own wait4 of the benchmark (not the driver's view of the probe);
- peak_rss_anon_mb / peak_rss_file_mb, temp_max_c, cpu_freq_mhz from the samples;
- energy over the engine's measured windows (see harness.telemetry.energy), gross and net of
  the idle baseline sampled just before, per token, for the widest power scope found;
- gpu_load_pct over the measured windows, from the sysfs GPU load files discovery found
  (kgsl, Mali, Jetson devfreq: see harness.telemetry.gpu), or missing saying what was tried;
- foreign_cpu_pct: what everything but the benchmark and the probe used of the device's CPUs
  (see harness.telemetry.contention), from the per-tick /proc/stat and child CPU counters;
- probe_cpu_s: what the probe itself cost, so its overhead is on record with every figure.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from statistics import fmean
from types import TracebackType
from typing import Any

from harness.boards.android import detect_power_convention
from harness.drivers.base import Completed, Driver, ResourceUsage
from harness.drivers.devicefs import FileRead, read_files
from harness.records import Metric
from harness.telemetry import Sample, contention, energy, gpu, procfs, rapl, sysfs
from harness.telemetry.clusters import CORE_GLOBS, Cluster, clusters_from, probe_cpu
from harness.telemetry.coprocess import BoardTool

FORMAT_VERSION = 3  # what probe/edgebench-probe.c writes
# Formats this edgebench reads: 2 is 3 without the `clocks` line, so its board-tool samples
# cannot be placed on the probe's clock (said as the reason), and nothing else is lost.
READ_VERSIONS = ("2", "3")
PROC_COLUMNS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
# hwmon chips that are power monitors on a board's rails (Jetson INA3221, many INA2xx boards);
# other chips' in*/power* files (motherboard voltages, a GPU's own power) are not rail power.
POWER_MONITORS = ("ina3221", "ina2", "ina3")


# --- the probe's file -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeExit:
    """The benchmark's end as the probe saw it (wait4), and the probe's own CPU time."""

    t: float
    signaled: bool
    code: int  # exit code; -1 when signaled
    signal: int
    rusage: ResourceUsage
    probe_cpu_s: float
    samples: int

    @property
    def exit_code(self) -> int:
        """As Completed.exit_code: negative for a signal."""
        return -self.signal if self.signaled else self.code


@dataclass(frozen=True)
class ProbeTrace:
    """One probe file, parsed: times are the device's CLOCK_MONOTONIC in seconds."""

    interval_s: float
    cpu: int | None
    sources: tuple[str, ...]  # column order of the source values
    source_errors: dict[str, str]
    # raw values: unit "raw" for sources, "kB" for proc/*, "ms" for probe/cost, "jiffies" for
    # cpu/busy, cpu/total (all CPUs) and child/cpu, "s" for probe/cpu (the probe's own CPU)
    samples: tuple[Sample, ...]
    marks: tuple[tuple[float, str], ...]
    idle_t: float | None
    start_t: float | None
    child_pid: int | None
    exit: ProbeExit | None
    clk_tck: int | None = None  # jiffies per second of the /proc counters
    boottime_offset_s: float | None = None  # CLOCK_BOOTTIME - CLOCK_MONOTONIC, from the `clocks` line


class ProbeFormatError(ValueError):
    """The file is not a probe file this edgebench reads."""


def parse_probe(text: str) -> ProbeTrace:
    """A probe file (format version 3, described in probe/edgebench-probe.c, or 2) -> ProbeTrace.

    A file cut short (probe killed) parses up to its last whole line with `exit` None.
    """
    lines = text.splitlines()
    if not lines or not lines[0].startswith("edgebench-probe "):
        raise ProbeFormatError("not an edgebench-probe file (no header line)")
    version = lines[0].split()[1]
    if version not in READ_VERSIONS:
        raise ProbeFormatError(f"probe file format {version}; this edgebench reads {' and '.join(READ_VERSIONS)}")
    interval_s, cpu = 0.0, None
    sources: list[str] = []
    errors: dict[str, str] = {}
    samples: list[Sample] = []
    marks: list[tuple[float, str]] = []
    idle_t = start_t = offset = None
    pid = clk_tck = None
    exit_ = None
    for line in lines[1:]:
        kind, _, rest = line.partition(" ")
        fields = rest.split()
        if kind == "s" and len(fields) == 2 + len(sources) + len(PROC_COLUMNS) + 3:
            t = int(fields[0]) / 1e9
            samples.append(Sample(t, "probe/cost", int(fields[1]) / 1e6, "ms"))
            for name, value in zip(sources, fields[2:]):
                if value != "-":
                    samples.append(Sample(t, name, float(value), "raw"))
            for key, value in zip(PROC_COLUMNS, fields[2 + len(sources):]):
                if value != "-":
                    samples.append(Sample(t, f"proc/{key}", float(value), "kB"))
            samples += _cpu_samples(t, *fields[-3:])
        elif kind == "m" and fields:
            marks.append((int(fields[0]) / 1e9, rest.partition(" ")[2]))
        elif kind == "clocks" and len(fields) == 2:
            offset = (int(fields[1]) - int(fields[0])) / 1e9 if fields[1] != "-" else None
        elif kind == "interval_ms":
            interval_s = int(fields[0]) / 1000
        elif kind == "cpu":
            cpu = int(fields[0]) if int(fields[0]) >= 0 else None
        elif kind == "clk_tck":
            clk_tck = int(fields[0])
        elif kind == "source":
            sources.append(fields[1])
        elif kind == "source_error":
            errors[sources[int(fields[0])]] = rest.split(" ", 2)[2]
        elif kind == "idle":
            idle_t = int(fields[0]) / 1e9
        elif kind == "start":
            start_t, pid = int(fields[0]) / 1e9, int(fields[1])
        elif kind == "exit":
            exit_ = _parse_exit(fields)
    return ProbeTrace(interval_s, cpu, tuple(sources), errors, tuple(samples), tuple(marks), idle_t, start_t, pid, exit_,
                      clk_tck, offset)


def _cpu_samples(t: float, stat: str, child: str, self_us: str) -> list[Sample]:
    """A tick's CPU counters: all CPUs busy and in all, the child's own, the probe's own."""
    out = []
    if stat != "-":
        times = contention.cpu_times([int(x) for x in stat.split(",")])
        out += [Sample(t, "cpu/busy", float(times.busy), "jiffies"), Sample(t, "cpu/total", float(times.total), "jiffies")]
    if child != "-":
        out.append(Sample(t, "child/cpu", float(sum(int(x) for x in child.split(","))), "jiffies"))
    return [*out, Sample(t, "probe/cpu", int(self_us) / 1e6, "s")]


def _parse_exit(fields: list[str]) -> ProbeExit:
    kv = dict(f.split("=", 1) for f in fields[1:])
    usage = ResourceUsage(int(kv["maxrss_kb"]), int(kv["utime_us"]) / 1e6, int(kv["stime_us"]) / 1e6)
    return ProbeExit(
        t=int(fields[0]) / 1e9,
        signaled=kv["status"] == "signaled",
        code=int(kv["code"]),
        signal=int(kv["signal"]),
        rusage=usage,
        probe_cpu_s=(int(kv["probe_utime_us"]) + int(kv["probe_stime_us"])) / 1e6,
        samples=int(kv["samples"]),
    )


# --- sources ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One file the probe reads each tick: value = raw x scale, in `unit`."""

    name: str
    path: str
    unit: str
    scale: float


@dataclass(frozen=True)
class Discovery:
    """What one device offers the probe, and why the rest is missing."""

    sources: tuple[Source, ...] = ()
    unreadable: dict[str, str] = field(default_factory=dict)
    rapl_ranges: dict[str, float] = field(default_factory=dict)  # source -> max_energy_range_uj
    battery_status: dict[str, str] = field(default_factory=dict)  # power_supply name -> status

    def reason(self, prefix: str) -> str:
        return "; ".join(r for name, r in self.unreadable.items() if name.startswith(prefix))


DISCOVERY_GLOBS = (
    "/sys/class/thermal/thermal_zone*/type",
    "/sys/class/thermal/thermal_zone*/temp",
    "/sys/class/hwmon/hwmon*/name",
    "/sys/class/hwmon/hwmon*/temp*_input",
    "/sys/class/hwmon/hwmon*/in*_input",
    "/sys/class/hwmon/hwmon*/in*_label",
    "/sys/class/hwmon/hwmon*/curr*_input",
    "/sys/class/hwmon/hwmon*/power*_input",
    "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq",
    "/sys/class/powercap/intel-rapl:*/name",
    "/sys/class/powercap/intel-rapl:*/energy_uj",
    "/sys/class/powercap/intel-rapl:*/max_energy_range_uj",
    "/sys/class/power_supply/*/type",
    "/sys/class/power_supply/*/status",
    "/sys/class/power_supply/*/current_now",
    "/sys/class/power_supply/*/voltage_now",
    *gpu.GLOBS,
)


def discover(driver: Driver, root: str = "") -> Discovery:
    """The device's sensors, read once through the driver (see `classify`)."""
    return classify(read_files(driver, DISCOVERY_GLOBS, root))


def classify(files: dict[str, FileRead]) -> Discovery:
    """Files read at discovery -> the sources to sample and the reasons for the rest (pure)."""
    sources: list[Source] = []
    unreadable: dict[str, str] = {}
    ranges: dict[str, float] = {}
    status: dict[str, str] = {}

    def add(name: str, path: str, unit: str, scale: float) -> None:
        read = files.get(path)
        if read is None:
            return
        # the probe samples a file's first word ("23 %": 23), so that is what must be a number
        if read.value is None or not _is_number(read.value.split()[0] if read.value else None):
            unreadable[name] = read.error or f"{path} does not hold a number"
        else:
            sources.append(Source(name, path, unit, scale))

    def label(path: str) -> str:
        read = files.get(path)
        return (read.value or "") if read else ""

    for path in files:
        p = PurePosixPath(path)
        folder = str(p.parent)
        if p.name == "temp" and p.parent.name.startswith("thermal_zone"):
            kind = label(f"{folder}/type")
            if _is_cpu(kind, sysfs.CPU_THERMAL_TYPES):
                add(f"thermal/{p.parent.name}:{kind}", path, "C", 1e-3)
        elif p.parent.parent.name == "hwmon" and p.name.endswith("_input"):
            chip = f"{p.parent.name}:{label(f'{folder}/name')}"
            channel = p.name.removesuffix("_input")
            if channel.startswith("temp") and _is_cpu(chip, sysfs.CPU_HWMON_NAMES):
                add(f"hwmon/{chip}/{channel}", path, "C", 1e-3)
            elif channel.startswith(("in", "curr", "power")) and _is_cpu(chip, POWER_MONITORS):
                number = channel.lstrip("incurpowe")
                rail = label(f"{folder}/in{number}_label") or f"ch{number}"
                quantity, unit, scale = {"in": ("voltage", "V", 1e-3), "curr": ("current", "A", 1e-3),
                                         "power": ("power", "W", 1e-6)}[channel.rstrip("0123456789")]
                add(f"rail/{chip}/{rail}/{quantity}", path, unit, scale)
        elif p.name == "scaling_cur_freq":
            add(f"cpufreq/{p.parent.parent.name}", path, "MHz", 1e-3)
        elif p.name == "energy_uj":
            name = label(f"{folder}/name")
            if name.startswith("package"):
                source = f"rapl/{p.parent.name}/{name}"
                add(source, path, "uJ", 1.0)
                span = label(f"{folder}/max_energy_range_uj")
                if _is_number(span):
                    ranges[source] = float(span)
        elif p.parent.parent.name == "power_supply" and p.name in ("current_now", "voltage_now"):
            if label(f"{folder}/type") == "Battery":
                status[p.parent.name] = label(f"{folder}/status")
                # Vendors report uA/uV or mA/mV: the magnitudes read now tell which.
                convention = detect_power_convention(_number(label(f"{folder}/current_now")),
                                                     _number(label(f"{folder}/voltage_now")), (status[p.parent.name] or "").lower())
                unit, scale = ("A", convention.amps_per_unit) if p.name == "current_now" else ("V", convention.volts_per_unit)
                add(f"battery/{p.parent.name}/{p.name.removesuffix('_now')}", path, unit, scale)
    gpu_sources, gpu_notes = gpu.load_files(files)
    for name, path, scale in gpu_sources:
        add(name, path, gpu.UNIT, scale)
    unreadable.update(gpu_notes)
    for family, prefixes, what in _FAMILIES:
        if not any(s.name.startswith(prefixes) for s in sources) and not any(n.startswith(prefixes) for n in unreadable):
            unreadable[family] = what
    return Discovery(tuple(sources), unreadable, ranges, status)


# family -> the source prefixes that belong to it, and what to say when a device has none.
_FAMILIES = (
    ("thermal", ("thermal/", "hwmon/"), "no CPU temperature sensor (thermal zone or hwmon) found"),
    ("cpufreq", ("cpufreq/",), "no cpufreq scaling_cur_freq found (no scaling driver; usual in VMs)"),
    ("power", ("rapl/", "battery/", "rail/"), "no power sensor found (RAPL package, battery, INA rails)"),
    ("gpu", (gpu.PREFIX,), gpu.NONE_READABLE),
)


def _number(text: str | None) -> float:
    return float(text) if _is_number(text) else 0.0


def _is_number(text: str | None) -> bool:
    try:
        float(text or "")
    except ValueError:
        return False
    return True


def _is_cpu(label: str, hints: Sequence[str]) -> bool:
    return any(hint in label.lower() for hint in hints)


def power_traces(trace: ProbeTrace, discovery: Discovery) -> list[energy.Trace]:
    """Every power figure the samples allow, each with its scope (pure)."""
    by_source: dict[str, list[Sample]] = {}
    for s in trace.samples:
        by_source.setdefault(s.source, []).append(s)
    scales = {src.name: src.scale for src in discovery.sources}
    out: list[energy.Trace] = []
    packages = [n for n in trace.sources if n.startswith("rapl/") and n in by_source]
    if packages and len(packages) == len([n for n in trace.sources if n.startswith("rapl/")]):
        out.append(rapl.package_trace({n: by_source[n] for n in packages}, discovery.rapl_ranges, trace.interval_s))
    for name in sorted({n.rsplit("/", 1)[0] for n in trace.sources if n.startswith("battery/")}):
        watts = _product(by_source.get(f"{name}/current", []), by_source.get(f"{name}/voltage", []), scales,
                         f"{name}/current", f"{name}/voltage")
        if watts:
            out.append(energy.Trace(energy.BATTERY, name, *watts, interval_s=trace.interval_s))
    rails = sorted({n.rsplit("/", 1)[0] for n in trace.sources if n.startswith("rail/")})
    rail_traces = []
    for rail in rails:
        if f"{rail}/power" in by_source:
            series = by_source[f"{rail}/power"]
            watts = (tuple(s.t for s in series), tuple(s.value * scales[f"{rail}/power"] for s in series))
        else:
            watts = _product(by_source.get(f"{rail}/current", []), by_source.get(f"{rail}/voltage", []), scales,
                             f"{rail}/current", f"{rail}/voltage")
        if watts:
            rail_traces.append((rail, watts))
    inputs = [(r, w) for r, w in rail_traces if "IN" in r.rsplit("/", 1)[1].upper()]
    if inputs:
        rail, watts = inputs[0]
        out.append(energy.Trace(energy.MODULE_INPUT, rail, *watts, interval_s=trace.interval_s))
    elif rail_traces and all(len(w[0]) == len(rail_traces[0][1][0]) for _, w in rail_traces):
        t = rail_traces[0][1][0]
        total = tuple(sum(w[1][i] for _, w in rail_traces) for i in range(len(t)))
        out.append(energy.Trace(energy.RAIL_SUM, "+".join(r for r, _ in rail_traces), t, total, interval_s=trace.interval_s))
    return out


def _product(current: list[Sample], voltage: list[Sample], scales: dict[str, float], cname: str, vname: str
             ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """|I| x V per tick where both were read in the same tick (discharge sign varies by vendor)."""
    volts = {s.t: s.value * scales[vname] for s in voltage}
    pairs = [(s.t, abs(s.value * scales[cname]) * volts[s.t]) for s in current if s.t in volts]
    if len(pairs) < 2:
        return None
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


# --- the telemetry --------------------------------------------------------------------------


class ProbeTelemetry:
    """The Telemetry protocol (harness.telemetry.base) through the probe, for any driver.

    `probe` and `workdir` are paths on the device; `root` prefixes every sysfs path (tests);
    `cpu` pins the probe: a core number, None (no pinning) or "auto" (the slowest core the
    benchmark's cores, as `wrap` is told them, leave free: see harness.telemetry.clusters.probe_cpu);
    `idle_s` of idle baseline is sampled before the benchmark when a power source exists;
    `beside` is a board tool run next to the probe (SSH boards: tegrastats, vcgencmd).
    """

    def __init__(self, driver: Driver, probe: str, workdir: str, *, interval_ms: int = 50, idle_s: float = 1.0,
                 cpu: int | str | None = "auto", root: str = "", timeout: float = 120,
                 beside: BoardTool | None = None) -> None:
        if interval_ms < 1:
            raise ValueError(f"interval_ms must be >= 1, got {interval_ms}")
        self.driver, self.probe, self.root = driver, probe, root
        self.interval_ms, self.idle_s, self.cpu, self.timeout = interval_ms, idle_s, cpu, timeout
        self.beside = beside
        self.out = str(PurePosixPath(workdir) / "probe" / f"{uuid.uuid4().hex}.txt")
        self.discovery: Discovery | None = None
        self.clusters: list[Cluster] = []
        self.text: str | None = None
        self.trace: ProbeTrace | None = None
        self.read_error: str | None = None

    def __enter__(self) -> "ProbeTelemetry":
        files = read_files(self.driver, DISCOVERY_GLOBS + CORE_GLOBS, self.root)
        self.discovery = classify(files)
        self.clusters = clusters_from(files, cores=1)
        self.driver.run(["mkdir", "-p", str(PurePosixPath(self.out).parent)], timeout=self.timeout)
        if self.beside is not None:
            self.beside.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self._read()
        finally:
            if self.beside is not None:  # after the read: it says when the benchmark ended on the device
                trace = self.trace
                ended = (trace.exit.t + trace.boottime_offset_s
                         if exc_type is None and trace is not None and trace.exit is not None and trace.boottime_offset_s is not None
                         else None)
                self.beside.stop(until_boottime=ended)

    def _read(self) -> None:
        done = self.driver.run(["cat", self.out], timeout=self.timeout)
        if done.exit_code != 0:
            self.read_error = f"the probe wrote no file ({self.out}): {done.stderr_tail(3)}"
            return
        self.driver.run(["rm", "-f", self.out], timeout=self.timeout)
        self.text = done.stdout
        try:
            self.trace = parse_probe(done.stdout)
        except ProbeFormatError as err:
            self.read_error = f"{self.out}: {err}"

    def wrap(self, argv: list[str], marks: str | None = None, cpus: Sequence[int] | None = None) -> list[str]:
        """The probe, its options, then the benchmark unchanged; stderr lines starting with
        `marks` are stamped, and the probe keeps off `cpus` (the benchmark's cores)."""
        assert self.discovery is not None, "use ProbeTelemetry as a with block"
        options = ["--out", self.out, "--interval-ms", str(self.interval_ms)]
        if self.root:
            options += ["--root", self.root]
        for source in self.discovery.sources:
            options += ["--source", f"{source.name}={source.path}"]
        cpu = self._probe_cpu(cpus) if self.cpu == "auto" else self.cpu
        if cpu is not None:
            options += ["--cpu", str(cpu)]
        if self.idle_s > 0 and self._has_power():
            options += ["--idle-ms", str(self._idle_ms())]
        if marks:
            options += ["--mark", marks]
        return [self.probe, *options, "--", *argv]

    def attach(self, pid: int) -> None:
        """Nothing to do: the probe found its child itself (`pid` is the probe's)."""

    def marks(self) -> list[tuple[float, str]]:
        """The stderr lines the probe stamped, on the device's CLOCK_MONOTONIC."""
        return list(self.trace.marks) if self.trace is not None else []

    def metrics(self, completed: Completed, windows: Sequence[tuple[float, float]], tokens: int,
                no_window: str | None = None) -> list[Metric]:
        """Every figure of the process, each measured or missing with its reason; energy over
        `windows` ((start, duration) on the probe's clock) processing `tokens`."""
        trace, found = self.trace, self.discovery
        if trace is None or found is None or trace.exit is None:
            reason = self.read_error or "the probe was killed before it recorded the benchmark's exit"
            return [Metric.missing(name, unit, reason) for name, unit in _ALL_METRICS]
        samples = self._scaled(trace, found)
        no_proc = f"the benchmark ended before the probe's first /proc sample ({trace.interval_s * 1000:.0f} ms)"
        idle = (trace.idle_t, trace.start_t) if trace.idle_t is not None and trace.start_t is not None else None
        traces, no_power = self._power(trace, found)
        own = [
            procfs.peak_rss_metric(trace.exit.rusage),
            *procfs.rss_split_metrics(samples, no_proc),
            sysfs.temp_max_metric(samples, _reasons(found, "thermal", "hwmon") or "every temperature read failed"),
            sysfs.cpu_freq_metric(samples, found.reason("cpufreq") or "every cpufreq read failed"),
            *energy.window_metrics(traces, windows, tokens, idle=idle, no_power=no_power, no_window=no_window,
                                   battery_status=found.battery_status),
            gpu.load_metric([s for s in samples if s.source.startswith(gpu.PREFIX)], windows,
                            _reasons(found, "gpu") or "every GPU load read failed", no_window),
            contention_metric(trace, [(start, start + duration) for start, duration in windows]),
            Metric("probe_cpu_s", trace.exit.probe_cpu_s, "s"),
            Metric("probe_tick_ms", fmean(s.value for s in samples if s.source == "probe/cost"), "ms")
            if any(s.source == "probe/cost" for s in samples) else Metric.missing("probe_tick_ms", "ms", "no sample"),
        ]
        if self.beside is None or trace.boottime_offset_s is None or trace.start_t is None:
            return own
        return merged(own, self.beside.metrics(trace.start_t, trace.exit.t, trace.boottime_offset_s, windows, no_window))

    def details(self) -> dict[str, Any]:
        """What the figures rest on, for the execution's raw record: sources, power scope, board tool."""
        found, trace = self.discovery, self.trace
        info: dict[str, Any] = {"sampler": "edgebench-probe", "interval_ms": self.interval_ms,
                                "probe_cpu": trace.cpu if trace else None}
        if found is not None:
            info["sources"] = [s.name for s in found.sources]
            info["unreadable"] = dict(found.unreadable)
            headline = energy.headline(self._power(trace, found)[0]) if trace else None
            info["power_scope"] = headline.scope if headline else None
            info["power_source"] = headline.source if headline else None
            info["battery_status"] = dict(found.battery_status)
        if self.beside is not None:
            info["board_tool"] = self.beside.details()
        if trace is not None and trace.exit is not None:
            info["exit"] = {"code": trace.exit.exit_code, "samples": trace.exit.samples}
        if self.read_error:
            info["error"] = self.read_error
        return info

    def write_csv(self, path: Path) -> None:
        """Every sample in its unit (the host sampler's columns), a board tool's moved onto the
        probe's clock, plus the probe file as read, raw, beside it (`<name>.probe.txt`), since
        marks and exit records are not samples."""
        rows: list[Sample] = []
        if self.trace is not None and self.discovery is not None:
            rows = self._scaled(self.trace, self.discovery)
            if self.beside is not None and self.trace.boottime_offset_s is not None:
                rows = sorted(rows + self.beside.on_probe_clock(self.trace.boottime_offset_s), key=lambda s: s.t)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["t_monotonic_s", "source", "value", "unit"])
            for s in rows:
                writer.writerow([f"{s.t:.6f}", s.source, repr(s.value), s.unit])
        if self.text is not None:
            path.with_name(path.name.removesuffix(".csv") + ".probe.txt").write_text(self.text, encoding="utf-8")

    def _probe_cpu(self, busy: Sequence[int] | None) -> int | None:
        """The core for the probe: off the benchmark's cores (all of them when not told)."""
        every = [cpu for cluster in self.clusters for cpu in cluster.cpus]
        return probe_cpu(self.clusters, every if busy is None else list(busy))

    def _idle_ms(self) -> int:
        """The idle baseline's length: `idle_s`, but long enough that a board tool's slower
        samples still give it a figure (energy refuses spans under MIN_PERIODS periods; a
        tool's period runs past its interval by what each tick costs, hence the half again)."""
        tool_ms = energy.MIN_PERIODS * 3 // 2 * self.beside.interval_ms if self.beside and self.beside.tool else 0
        return max(round(self.idle_s * 1000), tool_ms)

    def _has_power(self) -> bool:
        assert self.discovery is not None
        on_board = self.beside is not None and self.beside.tool is not None
        return on_board or any(s.name.startswith(("rapl/", "battery/", "rail/")) for s in self.discovery.sources)

    def _power(self, trace: ProbeTrace, found: Discovery) -> tuple[list[energy.Trace], str]:
        """Every power trace on the probe's clock (sysfs sensors, then a board tool's), and why
        there are none."""
        traces = power_traces(trace, found)
        reasons = [_reasons(found, "power", "rapl", "battery", "rail") or "every power sensor read failed"]
        if self.beside is not None:
            if trace.boottime_offset_s is None:
                reasons.append("the probe file has no CLOCK_BOOTTIME reading (`clocks`), so board tool samples cannot be placed on its clock")
            else:
                traces += self.beside.power_traces(trace.boottime_offset_s)
                reasons.append(self.beside.no_power())
        return traces, "; ".join(reasons)

    def _scaled(self, trace: ProbeTrace, found: Discovery) -> list[Sample]:
        units = {s.name: (s.unit, s.scale) for s in found.sources}
        out = []
        for s in trace.samples:
            if s.unit == "raw" and s.source in units:
                unit, scale = units[s.source]
                out.append(Sample(s.t, s.source, s.value * scale, unit))
            elif s.unit != "raw":
                out.append(s)
        return out


def _reasons(found: Discovery, *prefixes: str) -> str:
    return "; ".join(r for r in (found.reason(p) for p in prefixes) if r)


def merged(own: list[Metric], tool: list[Metric]) -> list[Metric]:
    """The probe's figures with another sampler's (a board tool's, the host's NVML): the other
    fills what the probe could not measure (GPU load where no sysfs file has it), adds what only
    it has (throttling, GPU power), and temp_max_c is the hottest reading of both (a tool reads
    sensors sysfs may not show); a figure neither measured keeps both reasons."""
    out = {m.name: m for m in own}
    for metric in tool:
        mine = out.get(metric.name)
        if mine is None or (mine.value is None and metric.value is not None):
            out[metric.name] = metric
        elif mine.value is None and metric.value is None:
            out[metric.name] = Metric.missing(metric.name, metric.unit, f"{mine.missing_reason}; {metric.missing_reason}")
        elif metric.name == "temp_max_c" and metric.value is not None:
            out[metric.name] = Metric("temp_max_c", max(mine.value, metric.value), "C", samples=mine.samples + metric.samples)
    return list(out.values())


_ALL_METRICS = (("peak_rss_mb", "MB"), ("peak_rss_anon_mb", "MB"), ("peak_rss_file_mb", "MB"), ("temp_max_c", "C"),
                ("cpu_freq_mhz", "MHz"), *energy.ENERGY_METRICS, (gpu.NAME, gpu.UNIT), ("foreign_cpu_pct", contention.FOREIGN_UNIT),
                ("probe_cpu_s", "s"))


def contention_metric(trace: ProbeTrace, windows: Sequence[tuple[float, float]] | None = None) -> Metric:
    """foreign_cpu_pct over `windows` (the process's whole life when None), from the ticks
    of the benchmark's life: its own CPU is its /proc/<pid>/stat times, and at the closing
    tick (it is reaped by then) its wait4 rusage."""
    exit_, tick = trace.exit, trace.clk_tck
    if exit_ is None or tick is None or trace.start_t is None:
        return Metric.missing("foreign_cpu_pct", contention.FOREIGN_UNIT, "the probe file has no clock tick rate or no child")
    ticks: dict[float, dict[str, float]] = {}
    for s in trace.samples:
        if s.source in ("cpu/busy", "child/cpu", "probe/cpu") and s.t >= trace.start_t:
            ticks.setdefault(s.t, {})[s.source] = s.value
    rows = []
    for t, v in sorted(ticks.items()):
        if "child/cpu" in v:
            child_s = v["child/cpu"] / tick
        elif t >= exit_.t:  # the closing tick: the child is reaped and its rusage is final
            child_s = exit_.rusage.user_s + exit_.rusage.system_s
        else:
            continue
        if "cpu/busy" in v:
            rows.append((t, v["cpu/busy"] / tick, child_s + v["probe/cpu"]))
    if not rows and not any(s.source == "cpu/busy" for s in trace.samples):
        return Metric.missing("foreign_cpu_pct", contention.FOREIGN_UNIT, "/proc/stat could not be read on the device")
    t, busy, own = zip(*rows) if rows else ((), (), ())
    return contention.foreign_metric(contention.foreign_cpu(contention.CpuSeries(t, busy, own), windows))
