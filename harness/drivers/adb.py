"""Android phones through an adb server (adbutils): USB, Wi-Fi ADB, or another machine's server.

Commands run through the shell protocol v2 (`shell,v2,raw:`), so stdout, stderr and the
exit code come back separately, exactly; argv is quoted with `shlex.join`. Files go through
the sync service to a temporary name next to the target, are verified with `sha256sum` on
the phone, then renamed: a copy cut off midway is never found under the real name, and a
file already there with the right sha256 is not pushed again.
"""

from __future__ import annotations

import shlex
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from harness.boards.android import FACTS_SCRIPT, parse_facts
from harness.credentials import child_env
from harness.drivers.base import CommandFailed, Completed, DeviceUnreachable, DriverError, StagingError
from harness.drivers.identity import adb_identity
from harness.hashing import sha256_file
from harness.paths import replacing
from harness.records import DeviceFacts

DEFAULT_SERVER = "127.0.0.1:5037"
DEFAULT_WORKDIR = "/data/local/tmp/edgebench"
_PID_MARKER = "@edgebench-pid "
_STDOUT, _STDERR, _EXIT = 1, 2, 3


def _adb_imports() -> Any:
    import adbutils  # imported here so edgebench starts without it unless an adb device is used

    return adbutils


class AdbDriver:
    """One phone, by serial, on the adb server at `adb_server` ("host:port")."""

    kind = "adb"
    is_host = False
    SETTINGS: dict[str, tuple[type, str]] = {
        "serial": (str, "the device serial as `adb devices` lists it (USB serial or host:port for Wi-Fi ADB)"),
        "adb_server": (str, "the adb server as host:port (default 127.0.0.1:5037)"),
        "connect": (bool, "true: `adb connect <serial>` first (Wi-Fi ADB)"),
    }

    def __init__(self, name: str, workdir: str | None = None, serial: str | None = None,
                 adb_server: str = DEFAULT_SERVER, connect: bool = False) -> None:
        self.name = name
        self.workdir = workdir or DEFAULT_WORKDIR
        self.serial = serial
        host, _, port = adb_server.rpartition(":")
        if not host or not port.isdigit():
            raise DriverError(f"device {name}: adb_server must be host:port, got {adb_server!r}")
        self.server_host, self.server_port = host, int(port)
        self.connect = connect
        self._device: Any = None
        self._hasher: list[str] | None = None
        self._lost_while: str | None = None  # what was happening when the connection last dropped

    @property
    def where(self) -> str:
        return f"{self.serial or '(any)'} on the adb server at {self.server_host}:{self.server_port}"

    # --- connection ------------------------------------------------------------------------
    def _client(self) -> Any:
        try:
            socket.create_connection((self.server_host, self.server_port), timeout=3).close()
        except OSError as exc:
            # Checked first: adbutils would otherwise start a server of its own on port 5037.
            raise DeviceUnreachable(
                f"{self.name}: no adb server at {self.server_host}:{self.server_port} ({exc.strerror or exc}); "
                f"start one with `adb -P {self.server_port} start-server`"
            ) from None
        return _adb_imports().AdbClient(host=self.server_host, port=self.server_port)

    def device(self) -> Any:
        """The adbutils device, after checking it is attached, authorized and online."""
        if self._device is not None:
            return self._device
        client = self._client()
        adbutils = _adb_imports()
        if self.connect and self.serial:
            said = client.connect(self.serial, timeout=10)
            if "connected" not in said or "unable" in said or "failed" in said:
                raise DeviceUnreachable(f"{self.name}: adb connect {self.serial}: {said}")
        try:
            listed = {info.serial: info.state for info in client.list()}
        except adbutils.AdbError as exc:
            raise DeviceUnreachable(f"{self.name}: the adb server at {self.server_host}:{self.server_port} failed: {exc}") from None
        serial = self.serial
        if serial is None:
            if len(listed) != 1:
                raise DriverError(f"{self.name}: set `serial` in the inventory; the adb server lists {_listing(listed)}")
            serial = next(iter(listed))
        state = listed.get(serial)
        if state != "device":
            raise DeviceUnreachable(self._state_problem(serial, state, listed) + self._after_loss())
        self.serial = serial
        self._device = client.device(serial)
        self._lost_while = None
        return self._device

    def _state_problem(self, serial: str, state: str | None, listed: Mapping[str, str]) -> str:
        if state is None:
            return f"{self.name}: no device {serial!r} on the adb server at {self.server_host}:{self.server_port} (it lists {_listing(listed)})"
        if state == "unauthorized":
            return f"{self.name}: device {serial} is unauthorized: accept the 'Allow USB debugging?' prompt on the phone for this computer's adb key"
        if state == "offline":
            return f"{self.name}: device {serial} is offline: reconnect it (cable, Wi-Fi) or run `adb reconnect`"
        return f"{self.name}: device {serial} is in state {state!r}, not 'device'"

    def _after_loss(self) -> str:
        return f" (the connection was lost while {self._lost_while})" if self._lost_while else ""

    def _lost(self, doing: str, exc: BaseException | None = None) -> DeviceUnreachable:
        """The error for a transport that went away mid-operation, naming device and action."""
        self._device = None
        self._lost_while = doing
        detail = f" ({exc})" if exc else ""
        return DeviceUnreachable(f"{self.name}: lost the connection to {self.where} while {doing}{detail}")

    # --- commands --------------------------------------------------------------------------
    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None) -> AdbProcess:
        """Start argv on the phone and return at once; output streams in on a thread."""
        if not argv:
            raise ValueError("empty argv")
        device = self.device()
        adbutils = _adb_imports()
        try:
            conn = device.open_transport(timeout=None)
            conn.send_command("shell,v2,raw:" + self.command_line(argv, env=env, cwd=cwd))
            conn.check_okay()
        except (adbutils.AdbError, OSError, EOFError) as exc:
            self._device = None
            raise self._lost(f"starting {argv[0]}", exc) from None
        return AdbProcess(self, list(argv), conn)

    @staticmethod
    def command_line(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
        """The shell line for argv: every word quoted, the program's pid reported on stderr
        first (so a timeout can kill exactly it), then exec'd with env and cwd applied."""
        words = list(argv)
        env = child_env(env, base={})  # only what the caller gave, never a credential
        if env:
            words = ["env", *(f"{k}={v}" for k, v in env.items()), *words]
        script = f'echo "{_PID_MARKER}$$" >&2; exec "$@"'
        if cwd is not None:
            script = 'cd -- "$1" || exit 125; shift; ' + script
            words = [cwd, *words]
        return shlex.join(["sh", "-c", script, "edgebench", *words])

    def run(self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
            cwd: str | None = None, on_start: Callable[[int], None] | None = None) -> Completed:
        process = self.spawn(argv, env=env, cwd=cwd)
        try:
            if on_start is not None:
                pid = process.wait_pid(timeout)
                if pid is not None:
                    on_start(pid)
            return process.wait(timeout)
        except BaseException:  # Ctrl-C, SIGTERM (harness.signals), a bug: nothing stays running on the phone
            process.kill()
            raise

    def _check(self, argv: Sequence[str], timeout: float = 120) -> Completed:
        done = self.run(argv, timeout=timeout)
        if not done.ok:
            raise CommandFailed(argv, done.exit_code, done.stderr_tail())
        return done

    def kill_remote(self, pid: int) -> None:
        """SIGKILL the program and its children (a shell script's `sleep`, the probe's
        benchmark). The parent is stopped first so it can neither go on when its child dies nor
        start another; children die before it, or they would be re-parented out of reach."""
        try:
            self.run(["sh", "-c", 'kill -STOP "$1"; pkill -9 -P "$1"; kill -9 "$1"', "edgebench", str(pid)], timeout=30)
        except DriverError:
            pass

    @contextmanager
    def forward(self, remote_port: int) -> Iterator[int]:
        """`adb forward tcp:<free port here> tcp:<remote_port>` through the adb server, removed
        afterwards (only ours: other forwards of the phone stay)."""
        adbutils = _adb_imports()
        device = self.device()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            local = probe.getsockname()[1]
        try:
            device.forward(f"tcp:{local}", f"tcp:{int(remote_port)}")
        except (adbutils.AdbError, OSError) as exc:
            raise self._lost(f"forwarding port {remote_port}", exc) from None
        try:
            yield local
        finally:
            try:
                device.forward_remove(f"tcp:{local}", raise_non_found=False)
            except (adbutils.AdbError, OSError):
                pass  # the server or the phone is gone, and the forward with it

    # --- files -----------------------------------------------------------------------------
    def push(self, local: Path, remote: str) -> int:
        """Copy to `.<name>.partial` beside the target, check its sha256 on the phone, rename.
        Returns the bytes sent: 0 when the phone already had this exact file."""
        local = Path(local)
        want = sha256_file(local)
        if self.sha256(remote) == want:
            return 0
        target = PurePosixPath(remote)
        partial = str(target.with_name(f".{target.name}.partial"))
        self._check(["mkdir", "-p", str(target.parent)])
        adbutils = _adb_imports()
        mode = local.stat().st_mode & 0o777
        try:
            sent = self.device().sync.push(local, partial, mode=mode)
        except (adbutils.AdbError, OSError, EOFError, struct.error) as exc:
            if not self._still_there():
                raise self._lost(f"pushing {local.name} to {remote} (the partial copy {partial} is never used)", exc) from None
            raise StagingError(f"{self.name}: push of {local} to {partial} failed: {exc}") from None
        got = self.sha256(partial)
        if got != want:
            self.run(["rm", "-f", partial], timeout=60)
            raise StagingError(f"{self.name}: {remote} arrived with sha256 {got}, expected {want}; removed it")
        self._check(["mv", "-f", partial, remote])
        return sent

    def pull(self, remote: str, local: Path) -> None:
        adbutils = _adb_imports()
        with replacing(Path(local)) as tmp:
            try:
                self.device().sync.pull_file(remote, tmp)
            except (adbutils.AdbError, OSError, EOFError) as exc:
                if not self._still_there():
                    raise self._lost(f"pulling {remote}", exc) from None
                raise StagingError(f"{self.name}: cannot pull {remote}: {exc}") from None

    def sha256(self, remote: str) -> str | None:
        """sha256 computed on the phone (`sha256sum`, else `toybox sha256sum`, else pulled and
        hashed here on phones whose toybox predates it); None when the file does not exist."""
        exists = self.run(["test", "-f", remote], timeout=60)
        if exists.exit_code != 0:
            return None
        for hasher in ([self._hasher] if self._hasher else [["sha256sum"], ["toybox", "sha256sum"]]):
            done = self.run([*hasher, remote], timeout=600)
            if done.exit_code == 0 and done.stdout.split():
                self._hasher = hasher
                return done.stdout.split()[0].lower()
            if done.exit_code not in (126, 127) and "applet not found" not in done.stderr and "Unknown command" not in done.stderr:
                raise StagingError(f"{self.name}: cannot hash {remote}: {done.stderr.strip() or f'exit {done.exit_code}'}")
        with tempfile.TemporaryDirectory(prefix="edgebench-sha-") as folder:
            copy = Path(folder) / "file"
            self.pull(remote, copy)
            return sha256_file(copy)

    def _still_there(self) -> bool:
        self._device = None
        try:
            self.device()
            return True
        except DriverError:
            return False

    # --- facts and telemetry ---------------------------------------------------------------
    def identity(self) -> str:
        done = self._check(["getprop", "ro.serialno"])
        return adb_identity(done.stdout, self.serial or "")

    def facts(self) -> DeviceFacts:
        done = self._check(["sh", "-c", FACTS_SCRIPT])
        return parse_facts(self.name, done.stdout, self.serial, f"{self.server_host}:{self.server_port}")


class AdbProcess:
    """A command running on the phone: one shell-v2 stream, read on a thread."""

    def __init__(self, driver: AdbDriver, argv: list[str], conn: Any) -> None:
        self.driver, self.argv, self._conn = driver, argv, conn
        self.pid: int | None = None
        self._pid_seen = threading.Event()
        self._stdout, self._stderr = bytearray(), bytearray()
        self._exit: int | None = None
        self._error: Exception | None = None  # the transport's, when it went away mid-command
        self._bug: BaseException | None = None  # anything else the reader hit: raised by wait() as itself
        self._started = time.perf_counter()
        self._done = threading.Event()
        threading.Thread(target=self._read, name=f"adb-{argv[0]}", daemon=True).start()

    def _read(self) -> None:
        adbutils = _adb_imports()
        try:
            while True:
                header = self._conn.read_exact(5)
                kind, length = header[0], struct.unpack("<I", header[1:])[0]
                data = self._conn.read_exact(length) if length else b""
                if kind == _STDOUT:
                    self._stdout += data
                elif kind == _STDERR:
                    self._stderr += data
                    self._find_pid()
                elif kind == _EXIT:
                    self._exit = data[0] if data else 255
                    return
        except (adbutils.AdbError, OSError, EOFError) as exc:  # EOF or a reset: the transport is gone
            self._error = exc
        except BaseException as exc:  # not the transport: a bug must not read as "device lost"
            self._bug = exc
        finally:
            self._pid_seen.set()
            self._done.set()
            self._conn.close()

    def _find_pid(self) -> None:
        if self.pid is not None:
            return
        marker = _PID_MARKER.encode()
        if self._stderr.startswith(marker) and b"\n" in self._stderr:
            line, _, rest = bytes(self._stderr).partition(b"\n")
            self.pid = int(line[len(marker):])
            self._stderr[:] = rest
            self._pid_seen.set()

    def wait_pid(self, timeout: float) -> int | None:
        self._pid_seen.wait(timeout)
        return self.pid

    def kill(self) -> None:
        if self.wait_pid(30) is not None and not self._done.is_set():
            self.driver.kill_remote(self.pid)

    def wait(self, timeout: float | None = None) -> Completed:
        timed_out = not self._done.wait(timeout)
        if timed_out:
            self.kill()
            if not self._done.wait(30):
                self._conn.close()
                self._done.wait(5)
        if self._bug is not None:
            raise self._bug
        if self._exit is None and not timed_out:
            raise self.driver._lost(f"running {_describe(self.argv)}", self._error)
        exit_code = self._exit if self._exit is not None else 137
        return Completed(
            argv=tuple(self.argv), exit_code=exit_code, stdout=self._stdout.decode("utf-8", errors="replace"),
            stderr=self._stderr.decode("utf-8", errors="replace"), wall_s=time.perf_counter() - self._started,
            rusage=None, timed_out=timed_out,
        )


def _describe(argv: Sequence[str]) -> str:
    """A command for an error line: a wrapper's own options (the probe's) are elided, so the
    command it runs (after `--`) is what the user reads."""
    words = list(argv)
    if "--" in words[1:]:
        inner = words[words.index("--", 1) + 1:]
        words = [PurePosixPath(words[0]).name, "...", "--", PurePosixPath(inner[0]).name, *inner[1:]] if inner else words
    text = shlex.join(words)
    return text if len(text) <= 400 else text[:397] + "..."


def _listing(listed: Mapping[str, str]) -> str:
    return ", ".join(f"{s} ({state})" for s, state in listed.items()) or "no devices"
