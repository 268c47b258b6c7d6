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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


def parse_state(files: dict[str, FileRead], ps_text: str | None, ps_error: str | None = None) -> dict[str, Any]:
    """Files read by `STATE_GLOBS` and `ps` output -> a JSON-ready state (pure)."""
    state: dict[str, Any] = {"clusters": _clusters(files), "temps_c": _temps(files), "battery": _battery(files)}
    load = files.get("/proc/loadavg")
    state["load_avg"] = [float(x) for x in load.value.split()[:3]] if load and load.value else None
    state.update(_memory(files))
    state["busiest"] = parse_ps(ps_text) if ps_text is not None else None
    state["unreadable"] = {p: r.error for p, r in files.items() if r.error}
    if ps_error:
        state["unreadable"]["ps"] = ps_error
    return state


def _clusters(files: dict[str, FileRead]) -> list[dict[str, Any]]:
    out = []
    for path in files:
        if not path.endswith("/scaling_governor") and not path.endswith("/cpuinfo_max_freq"):
            continue
        policy = str(PurePosixPath(path).parent)
        if any(c["policy"] == PurePosixPath(policy).name for c in out):
            continue

        def get(name: str, policy: str = policy) -> FileRead | None:
            return files.get(f"{policy}/{name}")

        hw_max, cap = _mhz(get("cpuinfo_max_freq")), _mhz(get("scaling_max_freq"))
        out.append({
            "policy": PurePosixPath(policy).name,
            "cpus": (get("related_cpus").value if get("related_cpus") else None),
            "governor": get("scaling_governor").value if get("scaling_governor") else None,
            "min_mhz": _mhz(get("scaling_min_freq")),
            "max_mhz": cap,
            "cur_mhz": _mhz(get("scaling_cur_freq")),
            "hw_max_mhz": hw_max,
            "capped": cap is not None and hw_max is not None and cap < hw_max,
        })
    return out


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


def _battery(files: dict[str, FileRead]) -> dict[str, Any] | None:
    for path, read in files.items():
        if path.endswith("/type") and "power_supply" in path and read.value == "Battery":
            folder = str(PurePosixPath(path).parent)
            status = files.get(f"{folder}/status")
            return {"name": PurePosixPath(folder).name, "level_pct": _num(files.get(f"{folder}/capacity")),
                    "status": status.value if status else None}
    return None


def _memory(files: dict[str, FileRead]) -> dict[str, Any]:
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
            fields = stat.value.split() if stat and stat.value else []
            zram.append({"device": dev, "disksize_mb": (_num(disk) or 0) / 2**20,
                         "orig_data_mb": float(fields[0]) / 2**20 if fields else None,
                         "compr_data_mb": float(fields[1]) / 2**20 if len(fields) > 1 else None})
    return {
        "mem_total_mb": meminfo.get("MemTotal"),
        "mem_available_mb": meminfo.get("MemAvailable"),
        "swap_total_mb": meminfo.get("SwapTotal"),
        "swap_used_mb": (meminfo["SwapTotal"] - meminfo["SwapFree"]) if "SwapTotal" in meminfo and "SwapFree" in meminfo else None,
        "zram": zram,
    }


def parse_ps(text: str) -> list[dict[str, Any]]:
    """`ps -o pid,pcpu,rss,comm` -> the busiest processes (by %CPU, which ps averages over each
    process's lifetime: a long-running hog shows, a burst of the last second may not)."""
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split(None, 3)
        if len(fields) < 4 or not fields[0].isdigit():
            continue
        try:
            rows.append({"pid": int(fields[0]), "cpu_pct": float(fields[1]), "rss_mb": int(fields[2]) / 1024,
                         "name": fields[3].strip()})
        except ValueError:
            continue
    rows = [r for r in rows if r["name"] not in ("ps", "sh")]
    return sorted(rows, key=lambda r: -r["cpu_pct"])[:BUSIEST]


def capture_state(driver: Driver, root: str = "", timeout: float = 60) -> dict[str, Any]:
    """The device's state now (see the module doc); what cannot be read is listed with why."""
    files = read_files(driver, STATE_GLOBS, root, timeout)
    try:
        done = driver.run(list(PS_ARGV), timeout=timeout)
        ps_text, ps_error = (done.stdout, None) if done.exit_code == 0 else (None, f"ps failed: {done.stderr_tail(2)}")
    except DriverError as exc:
        ps_text, ps_error = None, f"ps failed: {exc}"
    state = parse_state(files, ps_text, ps_error)
    state["captured_monotonic_s"] = time.monotonic() if driver.is_host else None
    return state


def hottest(state: dict[str, Any]) -> float | None:
    temps = state.get("temps_c") or {}
    return max(temps.values()) if temps else None


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


def format_state(state: dict[str, Any]) -> list[str]:
    """Human lines for `devices check` and `results show`."""
    lines = []
    for c in state.get("clusters") or []:
        cap = " [capped below hw max]" if c.get("capped") else ""
        lines.append(f"cpu {c.get('cpus') or c['policy']}: {c.get('governor')} {_f(c.get('min_mhz'))}-{_f(c.get('max_mhz'))} MHz "
                     f"(hw max {_f(c.get('hw_max_mhz'))}, now {_f(c.get('cur_mhz'))}){cap}")
    if not state.get("clusters"):
        lines.append("cpu: no cpufreq policy (no scaling driver; usual in VMs)")
    temps = state.get("temps_c") or {}
    lines.append("temperatures: " + (", ".join(f"{k} {v:.1f} °C" for k, v in temps.items()) or "none readable"))
    battery = state.get("battery")
    lines.append(f"battery: {battery['level_pct']}% {battery['status']}" if battery else "battery: none")
    lines.append(f"load average: {state.get('load_avg')}")
    lines.append(f"memory: {_f(state.get('mem_available_mb'))} MB available of {_f(state.get('mem_total_mb'))} MB; "
                 f"swap used {_f(state.get('swap_used_mb'))} of {_f(state.get('swap_total_mb'))} MB; "
                 f"zram: {', '.join(z['device'] for z in state.get('zram') or []) or 'none'}")
    busiest: Sequence[dict[str, Any]] = state.get("busiest") or []
    if busiest:
        lines.append("busiest: " + ", ".join(f"{p['name']} ({p['pid']}) {p['cpu_pct']:.0f}%" for p in busiest))
    for why in (state.get("unreadable") or {}).values():
        lines.append(f"unreadable: {why}")
    return lines


def _f(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def summary_parts(state: dict[str, Any]) -> dict[str, str]:
    """The state in a few named words (governors and caps, hottest sensor, load, free memory,
    battery), so a table can say once what several cases shared and per case what differed."""
    if "error" in state:
        return {"error": state["error"]}
    clusters = state.get("clusters") or []
    cpu = "; ".join(f"{c.get('governor')} ≤{_f(c.get('max_mhz'))} MHz" + (" capped" if c.get("capped") else "")
                    for c in clusters) or "no cpufreq"
    hot = hottest(state)
    load = state.get("load_avg") or [None]
    battery = state.get("battery")
    parts = {"cpu": f"cpu {cpu}", "hottest": f"hottest {hot:.1f} °C" if hot is not None else "no temperature",
             "load": f"load {load[0]}", "free": f"{_f(state.get('mem_available_mb'))} MB free"}
    if battery:
        parts["battery"] = f"battery {battery.get('level_pct')}% {battery.get('status')}"
    return parts
