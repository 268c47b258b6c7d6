"""The host itself as a device: subprocesses, the local filesystem, psutil facts.

Processes are reaped with `os.wait4`, so the benchmark's peak RSS comes from the kernel's
rusage at exit rather than from a /proc read that races the process ending.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import psutil

from harness.credentials import child_env
from harness.drivers.base import Completed, ResourceUsage, StagingError
from harness.drivers.identity import IDENTITY_FILES, identity_from
from harness.drivers.nvml import gpu_names
from harness.hashing import sha256_file
from harness.paths import replacing, state_dir
from harness.records import DeviceFacts

REAPER = Path(__file__).with_name("reaper.py")


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

    kind = "local"
    is_host = True
    SETTINGS: dict[str, tuple[type, str]] = {
        "pseudo": (str, "a name that makes this entry a device of its own on this host (its own lab queue and history)"),
    }

    def __init__(self, name: str = "local", workdir: str | None = None, pseudo: str | None = None) -> None:
        self.name = name
        self.workdir = workdir or str(state_dir() / "device-local")
        self.pseudo = pseudo

    def facts(self) -> DeviceFacts:
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

    def identity(self) -> str:
        sections = {}
        for name, path in IDENTITY_FILES.items():
            try:
                sections[name] = Path(path).read_text(errors="replace")
            except OSError:  # absent, or root-only (DMI serials)
                continue
        host = identity_from(sections, socket.gethostname())
        return f"{host}/pseudo:{self.pseudo}" if self.pseudo else host

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> Completed:
        """Run argv under the reaper (see reaper.py) so its rusage is its own; kill it on timeout."""
        start = time.perf_counter()
        if cwd is None:  # each (pseudo-)device works in its own folder, as a remote one would
            Path(self.workdir).mkdir(parents=True, exist_ok=True)
            cwd = self.workdir
        report_r, report_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-S", "-E", str(REAPER), str(report_w), *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=child_env(env),  # without the store's and broker's credentials
                cwd=cwd,
                pass_fds=(report_w,),
                start_new_session=True,  # a timeout kills the reaper and the benchmark together
            )
        finally:
            os.close(report_w)
        with os.fdopen(report_r, encoding="utf-8") as report:
            timer: threading.Timer | None = None
            try:
                first = report.readline()
                child = int(first.split()[1]) if first.startswith("pid ") else None
                if on_start and child:
                    on_start(child)
                streams = [_Drain(proc.stdout), _Drain(proc.stderr)]
                timed_out = threading.Event()
                # On timeout kill the benchmark, not the reaper, so its rusage still comes back.
                timer = threading.Timer(timeout, _kill, (child or proc.pid, timed_out))
                timer.start()
                proc.wait()
            finally:
                if timer is not None:
                    timer.cancel()
                # anything the benchmark left behind; everything, on Ctrl-C or SIGTERM (harness.signals)
                _kill_group(proc.pid)
            final = report.readline()
        stdout, stderr = (s.text() for s in streams)
        if not final:  # the reaper itself died or could not start
            return Completed(tuple(argv), proc.returncode, stdout, stderr, time.perf_counter() - start, None, timed_out.is_set())
        result = json.loads(final)
        usage = ResourceUsage(max_rss_kb=result["max_rss_kb"], user_s=result["user_s"], system_s=result["system_s"])
        return Completed(tuple(argv), result["exit_code"], stdout, stderr, time.perf_counter() - start, usage, timed_out.is_set())

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None) -> "LocalProcess":
        """Start argv and return at once (no reaper: for helpers, not for measured benchmarks)."""
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=child_env(env), cwd=cwd, start_new_session=True,
        )
        return LocalProcess(proc, tuple(argv))

    @contextmanager
    def forward(self, remote_port: int) -> Iterator[int]:
        """The device is this machine: its loopback port is ours."""
        yield remote_port

    def push(self, local: Path, remote: str) -> int:
        """Copy under a temporary name, verify, then rename: a reader never sees half a file.
        Returns the bytes copied: 0 when the target already holds this exact file."""
        target = Path(remote)
        want = sha256_file(local)
        if target.is_file() and sha256_file(target) == want:
            return 0
        with replacing(target) as tmp:
            shutil.copyfile(local, tmp)
            if sha256_file(tmp) != want:
                raise StagingError(f"copy of {local} to {remote} does not match its sha256")
            shutil.copymode(local, tmp)
        return target.stat().st_size

    def pull(self, remote: str, local: Path) -> None:
        try:
            shutil.copyfile(remote, local)
        except OSError as exc:
            raise StagingError(f"cannot pull {remote}: {exc}") from exc

    def sha256(self, remote: str) -> str | None:
        path = Path(remote)
        return sha256_file(path) if path.is_file() else None


class LocalProcess:
    """A spawned local command: wait for it (killing its group on timeout) or kill it."""

    def __init__(self, proc: subprocess.Popen[bytes], argv: tuple[str, ...]) -> None:
        self._proc, self.argv, self.pid = proc, argv, proc.pid
        self._streams = (_Drain(proc.stdout), _Drain(proc.stderr))
        self._started = time.perf_counter()

    def kill(self) -> None:
        _kill_group(self._proc.pid)

    def wait(self, timeout: float | None = None) -> Completed:
        try:
            self._proc.wait(timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
            self._proc.wait()
        stdout, stderr = (s.text() for s in self._streams)
        return Completed(self.argv, self._proc.returncode, stdout, stderr, time.perf_counter() - self._started, None, timed_out)


class _Drain:
    """Reads a pipe to its end on a thread, so a chatty process never blocks on a full pipe."""

    def __init__(self, pipe: Any) -> None:
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=lambda: self._chunks.append(pipe.read()), daemon=True)
        self._thread.start()

    def text(self) -> str:
        self._thread.join()
        return b"".join(self._chunks).decode("utf-8", errors="replace")


def _kill(pid: int, flag: threading.Event) -> None:
    flag.set()
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _os_release() -> str:
    text = _read("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return f"{platform.system()} {platform.release()}"
