"""The driver protocol every device implements, and the typed errors it raises.

Commands are argv lists; a driver that goes through a shell quotes them with `shlex.join`.
Exit codes come back on every transport. A command that times out or is killed for memory is
not an error: it comes back as a `Completed` (`timed_out`, `oom_killed`), so the runner records
that process as failed and goes on with the next, as it does for any other exit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Mapping, Protocol, Sequence

from harness.errors import EdgebenchError, exited
from harness.records import DeviceFacts


class DriverError(EdgebenchError):
    """Base of the errors a driver raises."""


class DeviceUnreachable(DriverError):
    """The device cannot be reached (or vanished mid-run): the run stops, finished cases stay."""


class CommandFailed(DriverError):
    def __init__(self, argv: Sequence[str], exit_code: int, stderr_tail: str) -> None:
        self.argv, self.exit_code, self.stderr_tail = list(argv), exit_code, stderr_tail
        super().__init__(f"{argv[0]} {exited(exit_code)}: {stderr_tail.strip()[-500:]}")


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


class RemoteProcess(Protocol):
    """A started command: stream it, wait for it, kill it."""

    pid: int

    def wait(self, timeout: float | None = None) -> Completed: ...

    def kill(self) -> None: ...


class Driver(Protocol):
    """Transport to one device. `kind` is its registry name (harness.drivers.DRIVERS), by which
    the layers above pick what goes with it (harness.telemetry.factory.telemetry_for)."""

    kind: str
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
        on_start: Callable[[int], None] | None = None,
    ) -> Completed: ...

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None) -> RemoteProcess: ...

    # atomic (a partial name, verified by sha256, renamed); the bytes sent, 0 when the device had it
    def push(self, local: Path, remote: str) -> int: ...

    def pull(self, remote: str, local: Path) -> None: ...

    def sha256(self, remote: str) -> str | None: ...

    # a TCP port on this host that reaches `remote_port` on the device's loopback while the block
    # lasts (loopback: the port itself; adb: `adb forward`; ssh: a direct-tcpip channel per connection)
    def forward(self, remote_port: int) -> ContextManager[int]: ...
