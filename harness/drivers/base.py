"""The driver protocol every device implements, and the typed errors it raises.

Commands are argv lists; a driver that goes through a shell quotes them with `shlex.join`.
Exit codes come back on every transport.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from harness.errors import EdgebenchError, exited


class DriverError(EdgebenchError):
    """Base of the errors a driver raises."""


class DeviceUnreachable(DriverError):
    """The device cannot be reached (or vanished mid-run): the run stops, finished cases stay."""


class CommandFailed(DriverError):
    def __init__(self, argv: Sequence[str], exit_code: int, stderr_tail: str) -> None:
        self.argv, self.exit_code, self.stderr_tail = list(argv), exit_code, stderr_tail
        super().__init__(f"{argv[0]} {exited(exit_code)}: {stderr_tail.strip()[-500:]}")


class CommandTimeout(DriverError):
    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self.argv, self.timeout = list(argv), timeout
        super().__init__(f"{argv[0]} did not finish within {timeout:.0f} s and was killed")


class OutOfMemory(CommandFailed):
    """The process was killed for memory (exit 137 / SIGKILL / oom-killer)."""


class StagingError(DriverError):
    """A file could not be pushed, verified or pulled."""


@dataclass(frozen=True)
class ResourceUsage:
    """The child's `wait4` rusage: taken when it is reaped, so it cannot race its exit."""

    max_rss_kb: int
    user_s: float
    system_s: float


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    exit_code: int  # negative: killed by that signal
    stdout: str
    stderr: str
    wall_s: float
    rusage: ResourceUsage | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def oom_killed(self) -> bool:
        return self.exit_code in (137, -9)

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(self.stderr.rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class DeviceFacts:
    """What the device is: stored with every run so a figure carries its device state."""

    name: str
    driver: str
    os: str
    os_release: str
    arch: str
    cpu_model: str
    cores: int
    ram_mb: int
    hostname: str = ""
    gpus: tuple[str, ...] = ()
    power_source: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class Telemetry(Protocol):
    """Samples a device beside one benchmark process (a context manager around the run).

    It never reads the benchmark's argv or output: the runner hands it what it needs.
    `wrap` may put a sampler in front of the command (the native probe does), told which
    stderr line prefix to stamp (`marks`, the engine's) and which cores the benchmark runs on
    (`cpus`, from the case's resolved settings; None: unknown); `attach` gets the benchmark's
    pid once it runs; `marks()` returns the stamped lines for the engine to find its windows
    in; `metrics` turns what was sampled into metrics, each measured or missing with its
    reason, with energy integrated over the engine's measured `windows` ((start, duration) on
    the device clock, processing `tokens`), or missing saying `no_window` when there are none.
    """

    def __enter__(self) -> "Telemetry": ...

    def __exit__(self, *exc: object) -> None: ...

    def wrap(self, argv: list[str], marks: str | None = None, cpus: Sequence[int] | None = None) -> list[str]: ...

    def attach(self, pid: int) -> None: ...

    def marks(self) -> list[tuple[float, str]]: ...

    def metrics(self, completed: Completed, windows: Sequence[tuple[float, float]], tokens: int,
                no_window: str | None = None) -> list[Any]: ...

    def write_csv(self, path: Path) -> None: ...

    def details(self) -> dict[str, Any]: ...  # what the figures rest on: sources, power scope


class RemoteProcess(Protocol):
    """A started command: stream it, wait for it, kill it."""

    pid: int

    def wait(self, timeout: float | None = None) -> Completed: ...

    def kill(self) -> None: ...


class Driver(Protocol):
    name: str
    workdir: str
    is_host: bool  # True: the device is this machine: no copies to stage, in-process engines can run

    def facts(self) -> DeviceFacts: ...

    def identity(self) -> str: ...  # stable across hosts and inventories (drivers/identity.py)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        on_start: Any = None,
    ) -> Completed: ...

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None) -> RemoteProcess: ...

    def telemetry(self, runtime_dir: str | None = None) -> Telemetry: ...

    def push(self, local: Path, remote: str) -> None: ...

    def pull(self, remote: str, local: Path) -> None: ...

    def sha256(self, remote: str) -> str | None: ...
