"""Device state before a case: what could make its figure differ from the last one.

A governor left on `powersave`, a `scaling_max_freq` cap from a thermal daemon, a hot SoC, a
charging battery, a background job or swapping each change tokens/s. All of it is read in one
`devicefs` command plus one `ps` (works over adb/ssh), stored with every execution, and
printed by `edgebench devices check`. Parsing is pure (`parse_state`).

`wait_for_cool` is the `burst` discipline: before a case, wait (bounded) until the hottest
CPU sensor is back within a tolerance of its idle value; the wait and its outcome are recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from harness.drivers.base import Driver, DriverError
from harness.drivers.devicefs import FileRead, read_files

_POLICY = "/sys/devices/system/cpu/cpufreq/policy*"
STATE_GLOBS = (
    *(f"{_POLICY}/{name}" for name in ("related_cpus", "scaling_governor", "scaling_min_freq", "scaling_max_freq",
                                       "scaling_cur_freq", "cpuinfo_min_freq", "cpuinfo_max_freq")),
    "/sys/class/thermal/thermal_zone*/type",
    "/sys/class/thermal/thermal_zone*/temp",
    "/sys/class/power_supply/*/type",
    "/sys/class/power_supply/*/capacity",
    "/sys/class/power_supply/*/status",
    "/sys/class/power_supply/*/online",
    "/proc/loadavg",
    "/proc/meminfo",
    "/proc/swaps",
    "/sys/block/zram*/disksize",
    "/sys/block/zram*/mm_stat",
)
PS_ARGV = ("ps", "-A", "-o", "pid,pcpu,rss,comm")  # procps and toybox (Android) both take this
BUSIEST = 5


def _num(read: FileRead | None) -> float | None:
    try:
        return float(read.value) if read is not None and read.value is not None else None
    except ValueError:
        return None


def _mhz(read: FileRead | None) -> float | None:
    khz = _num(read)
    return None if khz is None else khz / 1000


@dataclass(frozen=True)
class CpuPolicy:
    """One cpufreq policy (a cluster of cores sharing a clock): its governor and limits in MHz;
    `capped` when `scaling_max_freq` sits below the hardware maximum."""

    policy: str
    cpus: str | None
    governor: str | None
    min_mhz: float | None
    max_mhz: float | None
    cur_mhz: float | None
    hw_max_mhz: float | None
    capped: bool


@dataclass(frozen=True)
class Battery:
    """The battery, if any: a charging one heats the device, a low one may make it throttle."""

    name: str
    level_pct: float | None
    status: str | None


@dataclass(frozen=True)
class Zram:
    """A compressed swap device: memory it takes from the benchmark when it fills."""

    device: str
    disksize_mb: float
    orig_data_mb: float | None
    compr_data_mb: float | None


@dataclass(frozen=True)
class Process:
    """One of the busiest other processes: the background job a slower figure may owe to."""

    pid: int
    cpu_pct: float
    rss_mb: float
    name: str


@dataclass(frozen=True)
class DeviceState:
    """The device's state before a case, as stored in each execution's raw JSON and printed by
    `devices check`. Fields are in the stored keys' order, so `to_json` writes what the dict
    it replaced wrote; a state that could not be read is only its `error` (stored as
    `{"error": ...}`), so a missing figure says why instead of looking like an idle device."""

    clusters: tuple[CpuPolicy, ...] = ()
    temps_c: dict[str, float] = field(default_factory=dict)  # "thermal_zone0:cpu-0-0-usr" -> °C
    battery: Battery | None = None
    load_avg: tuple[float, ...] | None = None
    mem_total_mb: float | None = None
    mem_available_mb: float | None = None
    swap_total_mb: float | None = None
    swap_used_mb: float | None = None
    zram: tuple[Zram, ...] = ()
    busiest: tuple[Process, ...] | None = None  # None: ps could not run
    unreadable: dict[str, str] = field(default_factory=dict)  # path (or "ps") -> why
    captured_monotonic_s: float | None = None  # on the host only: the device's clock is not ours
    error: str | None = None

    @classmethod
    def unread(cls, reason: str) -> "DeviceState":
        """A state that could not be read, with why (stored as `{"error": ...}`)."""
        return cls(error=reason)

    @property
    def hottest(self) -> float | None:
        """The hottest sensor's °C: what the `burst` cooldown waits on."""
        return max(self.temps_c.values()) if self.temps_c else None

    @property
    def capped(self) -> bool:
        """A cluster held below its hardware maximum: a figure from it is not the device's best."""
        return any(c.capped for c in self.clusters)

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        out = asdict(self)  # tuples stay tuples: JSON writes them as the lists the dict held
        del out["error"]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DeviceState":
        """Any stored state, the `{"error": ...}` form included; a key an older state lacks
        reads as unknown."""
        if "error" in data:
            return cls.unread(data["error"])
        busiest, load, battery = data.get("busiest"), data.get("load_avg"), data.get("battery")
        return cls(
            clusters=tuple(CpuPolicy(**c) for c in data.get("clusters") or ()),
            temps_c=dict(data.get("temps_c") or {}),
            battery=Battery(**battery) if battery else None,
            load_avg=None if load is None else tuple(load),
            mem_total_mb=data.get("mem_total_mb"), mem_available_mb=data.get("mem_available_mb"),
            swap_total_mb=data.get("swap_total_mb"), swap_used_mb=data.get("swap_used_mb"),
            zram=tuple(Zram(**z) for z in data.get("zram") or ()),
            busiest=None if busiest is None else tuple(Process(**p) for p in busiest),
            unreadable=dict(data.get("unreadable") or {}),
            captured_monotonic_s=data.get("captured_monotonic_s"),
        )


def parse_state(files: dict[str, FileRead], ps_text: str | None, ps_error: str | None = None,
                captured_monotonic_s: float | None = None) -> DeviceState:
    """Files read by `STATE_GLOBS` and `ps` output -> the state (pure)."""
    load = files.get("/proc/loadavg")
    unreadable = {p: r.error for p, r in files.items() if r.error}
    if ps_error:
        unreadable["ps"] = ps_error
    return DeviceState(
        clusters=_clusters(files), temps_c=_temps(files), battery=_battery(files),
        load_avg=tuple(float(x) for x in load.value.split()[:3]) if load and load.value else None,
        **_memory(files),
        busiest=parse_ps(ps_text) if ps_text is not None else None,
        unreadable=unreadable, captured_monotonic_s=captured_monotonic_s,
    )


def _clusters(files: dict[str, FileRead]) -> tuple[CpuPolicy, ...]:
    out: list[CpuPolicy] = []
    for path in files:
        if not path.endswith("/scaling_governor") and not path.endswith("/cpuinfo_max_freq"):
            continue
        policy = str(PurePosixPath(path).parent)
        if any(c.policy == PurePosixPath(policy).name for c in out):
            continue

        def get(name: str, policy: str = policy) -> FileRead | None:
            return files.get(f"{policy}/{name}")

        hw_max, cap = _mhz(get("cpuinfo_max_freq")), _mhz(get("scaling_max_freq"))
        related, governor = get("related_cpus"), get("scaling_governor")
        out.append(CpuPolicy(
            policy=PurePosixPath(policy).name,
            cpus=related.value if related else None,
            governor=governor.value if governor else None,
            min_mhz=_mhz(get("scaling_min_freq")),
            max_mhz=cap,
            cur_mhz=_mhz(get("scaling_cur_freq")),
            hw_max_mhz=hw_max,
            capped=cap is not None and hw_max is not None and cap < hw_max,
        ))
    return tuple(out)


def _temps(files: dict[str, FileRead]) -> dict[str, float]:
    temps = {}
    for path, read in files.items():
        if path.endswith("/temp") and "thermal_zone" in path:
            zone = str(PurePosixPath(path).parent)
            kind = files.get(f"{zone}/type")
            value = _num(read)
            if value is not None:
                temps[f"{PurePosixPath(zone).name}:{kind.value if kind else '?'}"] = value / 1000
    return temps


def _battery(files: dict[str, FileRead]) -> Battery | None:
    for path, read in files.items():
        if path.endswith("/type") and "power_supply" in path and read.value == "Battery":
            folder = str(PurePosixPath(path).parent)
            status = files.get(f"{folder}/status")
            return Battery(PurePosixPath(folder).name, _num(files.get(f"{folder}/capacity")),
                           status.value if status else None)
    return None


def _memory(files: dict[str, FileRead]) -> dict[str, Any]:
    """DeviceState's memory fields, by name."""
    meminfo: dict[str, float] = {}
    read = files.get("/proc/meminfo")
    for line in read.lines if read else ():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            meminfo[key] = float(rest.split()[0]) / 1024
    zram = []
    for path, disk in files.items():
        if path.startswith("/sys/block/zram") and path.endswith("/disksize") and _num(disk):
            dev = PurePosixPath(path).parent.name
            stat = files.get(f"/sys/block/{dev}/mm_stat")
            counts = stat.value.split() if stat and stat.value else []
            zram.append(Zram(dev, (_num(disk) or 0) / 2**20,
                             float(counts[0]) / 2**20 if counts else None,
                             float(counts[1]) / 2**20 if len(counts) > 1 else None))
    return {
        "mem_total_mb": meminfo.get("MemTotal"),
        "mem_available_mb": meminfo.get("MemAvailable"),
        "swap_total_mb": meminfo.get("SwapTotal"),
        "swap_used_mb": (meminfo["SwapTotal"] - meminfo["SwapFree"]) if "SwapTotal" in meminfo and "SwapFree" in meminfo else None,
        "zram": tuple(zram),
    }


def parse_ps(text: str) -> tuple[Process, ...]:
    """`ps -o pid,pcpu,rss,comm` -> the busiest processes (by %CPU, which ps averages over each
    process's lifetime: a long-running hog shows, a burst of the last second may not)."""
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split(None, 3)
        if len(fields) < 4 or not fields[0].isdigit():
            continue
        try:
            rows.append(Process(int(fields[0]), float(fields[1]), int(fields[2]) / 1024, fields[3].strip()))
        except ValueError:
            continue
    rows = [r for r in rows if r.name not in ("ps", "sh")]
    return tuple(sorted(rows, key=lambda r: -r.cpu_pct)[:BUSIEST])


def capture_state(driver: Driver, root: str = "", timeout: float = 60) -> DeviceState:
    """The device's state now (see the module doc); what cannot be read is listed with why."""
    files = read_files(driver, STATE_GLOBS, root, timeout)
    try:
        done = driver.run(list(PS_ARGV), timeout=timeout)
        ps_text, ps_error = (done.stdout, None) if done.exit_code == 0 else (None, f"ps failed: {done.stderr_tail(2)}")
    except DriverError as exc:
        ps_text, ps_error = None, f"ps failed: {exc}"
    return parse_state(files, ps_text, ps_error, time.monotonic() if driver.is_host else None)


@dataclass(frozen=True)
class Cooldown:
    """How a `burst` wait went: recorded with the case it preceded."""

    waited_s: float
    start_c: float | None
    end_c: float | None
    target_c: float | None
    reached: bool
    reason: str | None = None


def wait_for_cool(read_temp: Callable[[], float | None], idle_c: float | None, *, tolerance_c: float = 3.0,
                  max_wait_s: float = 120.0, poll_s: float = 2.0,
                  sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> Cooldown:
    """Wait until `read_temp()` is within `tolerance_c` of `idle_c`, at most `max_wait_s`."""
    first = read_temp()
    if idle_c is None or first is None:
        return Cooldown(0.0, first, first, None, False, "no CPU temperature to wait on")
    target = idle_c + tolerance_c
    start, now_c = clock(), first
    while now_c is not None and now_c > target and clock() - start < max_wait_s:
        sleep(poll_s)
        now_c = read_temp()
    waited = clock() - start
    reached = now_c is not None and now_c <= target
    reason = None if reached else f"still {now_c} °C after {waited:.0f} s (target {target:.1f} °C)"
    return Cooldown(waited, first, now_c, target, reached, reason)


def format_state(state: DeviceState) -> list[str]:
    """Human lines for `devices check` and `results show`."""
    lines = []
    for c in state.clusters:
        cap = " [capped below hw max]" if c.capped else ""
        lines.append(f"cpu {c.cpus or c.policy}: {c.governor} {_f(c.min_mhz)}-{_f(c.max_mhz)} MHz "
                     f"(hw max {_f(c.hw_max_mhz)}, now {_f(c.cur_mhz)}){cap}")
    if not state.clusters:
        lines.append("cpu: no cpufreq policy (no scaling driver; usual in VMs)")
    lines.append("temperatures: " + (", ".join(f"{k} {v:.1f} °C" for k, v in state.temps_c.items()) or "none readable"))
    battery = state.battery
    lines.append(f"battery: {battery.level_pct}% {battery.status}" if battery else "battery: none")
    lines.append(f"load average: {None if state.load_avg is None else list(state.load_avg)}")
    lines.append(f"memory: {_f(state.mem_available_mb)} MB available of {_f(state.mem_total_mb)} MB; "
                 f"swap used {_f(state.swap_used_mb)} of {_f(state.swap_total_mb)} MB; "
                 f"zram: {', '.join(z.device for z in state.zram) or 'none'}")
    if state.busiest:
        lines.append("busiest: " + ", ".join(f"{p.name} ({p.pid}) {p.cpu_pct:.0f}%" for p in state.busiest))
    for why in state.unreadable.values():
        lines.append(f"unreadable: {why}")
    return lines


def _f(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def summary_parts(state: DeviceState) -> dict[str, str]:
    """The state in a few named words (governors and caps, hottest sensor, load, free memory,
    battery), so a table can say once what several cases shared and per case what differed."""
    if state.error is not None:
        return {"error": state.error}
    cpu = "; ".join(f"{c.governor} ≤{_f(c.max_mhz)} MHz" + (" capped" if c.capped else "")
                    for c in state.clusters) or "no cpufreq"
    hot = state.hottest
    load = state.load_avg[0] if state.load_avg else None
    parts = {"cpu": f"cpu {cpu}", "hottest": f"hottest {hot:.1f} °C" if hot is not None else "no temperature",
             "load": f"load {load}", "free": f"{_f(state.mem_available_mb)} MB free"}
    if state.battery:
        parts["battery"] = f"battery {state.battery.level_pct}% {state.battery.status}"
    return parts
