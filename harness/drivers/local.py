"""The host itself as a device: subprocesses, the local filesystem, psutil facts.

Processes are reaped with `os.wait4`, so the benchmark's peak RSS comes from the kernel's
rusage at exit rather than from a /proc read that races the process ending.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import psutil

from harness.drivers.base import Completed, DeviceFacts, ResourceUsage, StagingError
from harness.paths import cache_dir


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _cpu_model() -> str:
    cpuinfo = _read("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Model"):
            return value.strip()
    return platform.processor() or platform.machine()


def _power_source() -> str:
    battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
    if battery is None:
        return "mains (no battery found)"
    return "battery, charging" if battery.power_plugged else "battery, discharging"


def _governors() -> dict[str, str]:
    out = {}
    for cpu in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*")):
        gov = _read(str(cpu / "cpufreq" / "scaling_governor"))
        if gov:
            out[cpu.name] = gov
    return out


class LocalDriver:
    """Runs on the machine running edgebench; no copies are needed to stage files."""

    is_host = True

    def __init__(self, name: str = "local", workdir: str | None = None) -> None:
        self.name = name
        self.workdir = workdir or str(cache_dir() / "device-local")

    def facts(self) -> DeviceFacts:
        from harness.telemetry.nvml import gpu_names

        uname = platform.uname()
        governors = _governors()
        extra: dict[str, Any] = {
            "kernel": uname.release,
            "python": platform.python_version(),
            "user": getpass.getuser(),
            "load_average": list(os.getloadavg()),
            "physical_cores": psutil.cpu_count(logical=False),
            "governors": sorted(set(governors.values())),
        }
        return DeviceFacts(
            name=self.name,
            driver="local",
            os=uname.system,
            os_release=_os_release(),
            arch=uname.machine,
            cpu_model=_cpu_model(),
            cores=os.cpu_count() or 1,
            ram_mb=psutil.virtual_memory().total // 2**20,
            hostname=socket.gethostname(),
            gpus=tuple(gpu_names()),
            power_source=_power_source(),
            extra=extra,
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> Completed:
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **env} if env else None,
                cwd=cwd,
                start_new_session=True,  # a timeout kills the whole process group
            )
        except OSError as exc:
            return Completed(tuple(argv), 127, "", f"cannot start {argv[0]}: {exc}", 0.0)
        if on_start:
            on_start(proc.pid)
        out: list[bytes] = []
        err: list[bytes] = []
        readers = [
            threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
            threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True),  # type: ignore[union-attr]
        ]
        for reader in readers:
            reader.start()
        timed_out = threading.Event()

        def _kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, _kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        for reader in readers:
            reader.join()
        return Completed(
            argv=tuple(argv),
            exit_code=proc.returncode,
            stdout=b"".join(out).decode("utf-8", errors="replace"),
            stderr=b"".join(err).decode("utf-8", errors="replace"),
            wall_s=time.perf_counter() - start,
            rusage=ResourceUsage(max_rss_kb=usage.ru_maxrss, user_s=usage.ru_utime, system_s=usage.ru_stime),
            timed_out=timed_out.is_set(),
        )

    def telemetry(self) -> Any:
        from harness.telemetry.host import HostTelemetry

        return HostTelemetry()

    def push(self, local: Path, remote: str) -> None:
        """Copy under a temporary name, verify, then rename: a reader never sees half a file."""
        target = Path(remote)
        want = _sha256(local)
        if target.is_file() and _sha256(target) == want:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        shutil.copyfile(local, tmp)
        if _sha256(tmp) != want:
            tmp.unlink(missing_ok=True)
            raise StagingError(f"copy of {local} to {remote} does not match its sha256")
        shutil.copymode(local, tmp)
        os.replace(tmp, target)

    def pull(self, remote: str, local: Path) -> None:
        try:
            shutil.copyfile(remote, local)
        except OSError as exc:
            raise StagingError(f"cannot pull {remote}: {exc}") from exc

    def sha256(self, remote: str) -> str | None:
        path = Path(remote)
        return _sha256(path) if path.is_file() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _os_release() -> str:
    text = _read("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return f"{platform.system()} {platform.release()}"
