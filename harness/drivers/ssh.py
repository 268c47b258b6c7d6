"""Linux boards (Jetson, Raspberry Pi, any Linux) over SSH, with paramiko.

- Host keys are verified against known_hosts; an unknown host is refused with the command
  that trusts it, unless the inventory says `accept_unknown_host = true` (then the key is
  appended to known_hosts, so a later change is still caught).
- Every command is an argv list quoted with `shlex.join` and run by a small POSIX sh preamble
  that first reports its pid on stderr (stripped again here). sshd makes that shell a session
  leader, so a timeout kills the whole process group through a second channel, and the
  benchmark runs as the shell's child, so a death by signal comes back as 128+N (paramiko
  drops `exit-signal` messages).
- A connection that drops mid-command (sshd killed, cable pulled) is `DeviceUnreachable`
  naming the device and the command; the runner then stops and keeps the finished cases.
- `push` is atomic and skipped by sha256: SFTP to a temporary name, `sha256sum` on the device,
  then a rename; it returns the bytes sent (0 when the device already had the file) and adds
  them to `bytes_pushed`.
"""

from __future__ import annotations

import getpass
import hashlib
import re
import selectors
import shlex
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Mapping, Sequence

import paramiko

from harness.boards.linux import FACTS_SCRIPT, HINTS_SCRIPT, facts_sections, parse_facts, permission_hints
from harness.credentials import child_env
from harness.drivers.base import CommandFailed, Completed, DeviceUnreachable, Driver, DriverError, StagingError
from harness.drivers.identity import IDENTITY_SCRIPT, identity_from
from harness.hashing import sha256_file
from harness.paths import replacing
from harness.records import DeviceFacts

_PID_MARK = "edgebench-pid "
# Make the work folder ($1, else the default in $HOME) and print it, only if it is a real folder we own, closed to others.
_PRIVATE_WORKDIR = ('d="${1:-$HOME/.cache/edgebench/device}"; mkdir -p -- "$d" && [ -d "$d" ] && [ ! -L "$d" ] && [ -O "$d" ] '
                    '&& chmod 700 -- "$d" && printf %s "$d"')
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SshDriver:
    """A Linux device reached over SSH; nothing connects until the first call."""

    kind = "ssh"
    is_host = False
    SETTINGS: dict[str, tuple[Any, str]] = {
        "host": (str, "a host name or address"),
        "port": (int, "a TCP port (default 22)"),
        "user": (str, "the login user (default: yours)"),
        "key": (str, "a private key file (default: the ssh-agent, then ~/.ssh/id_*)"),
        "agent": (bool, "true/false: offer ssh-agent keys (default true)"),
        "known_hosts": (str, "a known_hosts file (default ~/.ssh/known_hosts)"),
        "accept_unknown_host": (bool, "true/false: trust and record an unknown host key (default false)"),
        "jump": (str, "a jump host as [user@]host[:port] (like ssh -J)"),
        "connect_timeout": ((int, float), "seconds to wait for the connection (default 15)"),
        "keepalive": (int, "seconds between keep-alives (default 15)"),
        "telemetry_interval_ms": (int, "tegrastats/vcgencmd sampling interval in ms (default 200)"),
    }

    def __init__(
        self,
        name: str,
        workdir: str | None = None,
        *,
        host: str,
        port: int = 22,
        user: str | None = None,
        key: str | None = None,
        agent: bool = True,
        known_hosts: str | None = None,
        accept_unknown_host: bool = False,
        jump: str | None = None,
        connect_timeout: float = 15,
        keepalive: int = 15,
        telemetry_interval_ms: int = 200,
    ) -> None:
        self.name = name
        self.host, self.port, self.user = host, port, user or getpass.getuser()
        self._workdir_given = workdir
        self._workdir: str | None = None
        self.key = str(Path(key).expanduser()) if key else None
        self.agent = agent
        self.known_hosts = str(Path(known_hosts or "~/.ssh/known_hosts").expanduser())
        self.accept_unknown_host = accept_unknown_host
        self.jump = jump
        self.connect_timeout = float(connect_timeout)
        self.keepalive = keepalive
        self.telemetry_interval_ms = telemetry_interval_ms
        self.bytes_pushed = 0
        self._clients: list[paramiko.SSHClient] = []
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._facts: DeviceFacts | None = None
        self._lock = threading.Lock()

    # --- connection -----------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def _connected(self) -> paramiko.Transport:
        with self._lock:
            if self._transport is not None and self._transport.is_active():
                return self._transport
            self.close()
            sock = None
            if self.jump:
                user, host, port = _parse_jump(self.jump, self.user)
                jump_transport = self._connect(host, port, user, None, f"jump host {user}@{host}:{port}")
                try:
                    sock = jump_transport.open_channel("direct-tcpip", (self.host, self.port), ("127.0.0.1", 0), timeout=self.connect_timeout)
                except (paramiko.SSHException, OSError) as exc:
                    raise DeviceUnreachable(f"{self.name}: jump host {host}:{port} cannot reach {self.host}:{self.port}: {exc}") from None
            self._transport = self._connect(self.host, self.port, self.user, sock, self.address)
            return self._transport

    def _connect(self, host: str, port: int, user: str, sock: Any, label: str) -> paramiko.Transport:
        client = paramiko.SSHClient()
        known = Path(self.known_hosts)
        if known.is_file():
            client.get_host_keys().load(str(known))
        client.set_missing_host_key_policy(_Trust(self, known) if self.accept_unknown_host else _Refuse(self, known))
        try:
            client.connect(
                host, port, username=user, key_filename=self.key, allow_agent=self.agent,
                look_for_keys=self.key is None, timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout, sock=sock,
            )
        except DriverError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            hostport = host if port == 22 else f"[{host}]:{port}"
            raise DeviceUnreachable(
                f"{self.name}: the host key of {label} does not match {known} ({_fingerprint(exc.key)} offered, "
                f"{_fingerprint(exc.expected_key)} recorded): it changed, or this is not the device; if the change is "
                f"expected: ssh-keygen -R '{hostport}' -f {known}"
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            how = f"key {self.key}" if self.key else "the ssh-agent and ~/.ssh keys"
            raise DeviceUnreachable(f"{self.name}: authentication as {user} on {label} failed with {how}: {exc}") from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise DeviceUnreachable(f"{self.name}: no answer from {label} within {self.connect_timeout:.0f} s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            reason = "connection refused (is sshd running, is the port right?)" if _refused(exc) else str(exc) or type(exc).__name__
            raise DeviceUnreachable(f"{self.name}: cannot connect to {label}: {reason}") from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(self.keepalive)
        self._clients.append(client)
        return transport

    def close(self) -> None:
        """Drop the connection (a later call reconnects)."""
        for client in reversed(self._clients):
            client.close()
        self._clients, self._transport, self._sftp = [], None, None

    def _lost(self, doing: str) -> DeviceUnreachable:
        return DeviceUnreachable(f"{self.name}: connection to {self.address} lost while {doing}")

    @property
    def workdir(self) -> str:
        """Where edgebench stages and works on the board: the inventory's `workdir`, else
        `~/.cache/edgebench/device` in the login user's home (a fixed /tmp name could be made
        first by another user, who would then own what we stage and run). Made on first use,
        0700, and refused unless it is a folder (not a link) of the login user's."""
        if self._workdir is None:
            done = self.run(["sh", "-c", _PRIVATE_WORKDIR, "edgebench", self._workdir_given or ""], timeout=60)
            if not done.ok:
                where = self._workdir_given or "~/.cache/edgebench/device"
                raise StagingError(f"{self.name}: work folder {where} on {self.address} is not {self.user}'s own folder "
                                   f"(another user's, a link, or not creatable: {done.stderr.strip()[-200:] or 'no reason given'}); "
                                   "set `workdir` in the inventory to a folder of yours")
            self._workdir = done.stdout
        return self._workdir

    # --- commands ---------------------------------------------------------------------------

    def command_line(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
        """The shell line sent for argv: pid report, cd, exports, the command quoted by shlex.join."""
        if not argv:
            raise ValueError("empty argv")
        parts = [f"printf '%s\\n' \"{_PID_MARK}$$\" >&2"]
        if cwd:
            parts.append(f"cd -- {shlex.quote(cwd)} || exit 125")
        for key, value in child_env(env, base={}).items():  # only what the caller gave, never a credential
            if not _NAME.fullmatch(key):
                raise ValueError(f"not an environment variable name: {key!r}")
            parts.append(f"export {key}={shlex.quote(value)}")
        parts += [shlex.join(argv), "exit $?"]
        return "; ".join(parts)

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None) -> "SshProcess":
        """Start argv and return at once: stream its stdout lines, wait for it, kill it."""
        transport = self._connected()
        try:
            channel = transport.open_session(timeout=self.connect_timeout)
            channel.exec_command(self.command_line(argv, env, cwd))
        except (paramiko.SSHException, OSError, EOFError):
            raise self._lost(f"starting {argv[0]}") from None
        return SshProcess(self, channel, tuple(argv))

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> Completed:
        process = self.spawn(argv, env=env, cwd=cwd)
        try:
            if on_start is not None and process.wait_pid(timeout):
                on_start(process.pid)
            return process.wait(timeout)
        except BaseException:  # Ctrl-C, SIGTERM (harness.signals), a bug: nothing stays running on the board
            process.kill()
            raise

    def _check(self, argv: Sequence[str], timeout: float = 120) -> Completed:
        done = self.run(argv, timeout=timeout)
        if not done.ok:
            raise CommandFailed(argv, done.exit_code, done.stderr)
        return done

    def kill_group(self, pid: int) -> None:
        """SIGKILL the process group led by `pid` (the shell of one of our commands)."""
        try:
            channel = self._connected().open_session(timeout=self.connect_timeout)
            channel.exec_command(f"kill -KILL -- -{int(pid)} 2>/dev/null || kill -KILL {int(pid)} 2>/dev/null")
            channel.recv_exit_status()
            channel.close()
        except (paramiko.SSHException, OSError, EOFError, DriverError):
            pass  # the device is gone: so is the process

    @contextmanager
    def forward(self, remote_port: int) -> Iterator[int]:
        """A port on this host's loopback whose every connection is carried to the board's
        127.0.0.1:`remote_port` by its own `direct-tcpip` channel of this SSH connection (as
        `ssh -L`), so a server that listens on the board's loopback only is reachable here."""
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.2)
        done = threading.Event()
        threading.Thread(target=self._tunnel, args=(listener, int(remote_port), done), daemon=True,
                         name=f"ssh-forward-{remote_port}").start()
        try:
            yield listener.getsockname()[1]
        finally:
            done.set()
            listener.close()

    def _tunnel(self, listener: socket.socket, remote_port: int, done: threading.Event) -> None:
        while not done.is_set():
            try:
                conn, peer = listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                channel = self._connected().open_channel("direct-tcpip", ("127.0.0.1", remote_port), peer, timeout=self.connect_timeout)
            except (paramiko.SSHException, OSError, DriverError):
                conn.close()  # the client sees the refusal as a closed connection
                continue
            threading.Thread(target=_pump, args=(conn, channel, done), daemon=True).start()

    # --- files ------------------------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        transport = self._connected()
        if self._sftp is None or self._sftp.sock.closed:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(transport)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise DeviceUnreachable(f"{self.name}: cannot open SFTP on {self.address}: {exc}") from None
        assert self._sftp is not None
        return self._sftp

    def sha256(self, remote: str) -> str | None:
        done = self.run(["sha256sum", "--", remote], timeout=600)
        if done.exit_code != 0:
            return None
        first = done.stdout.split(maxsplit=1)[0] if done.stdout.strip() else ""
        digest = first.lstrip("\\")  # sha256sum escapes names holding '\' or newlines this way
        return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None

    def push(self, local: Path, remote: str) -> int:
        """Copy under a temporary name, verify its sha256 on the device, rename. Returns bytes sent."""
        local = Path(local)
        want = sha256_file(local)
        if self.sha256(remote) == want:
            return 0
        target = PurePosixPath(remote)
        self._check(["mkdir", "-p", "--", str(target.parent)])
        tmp = str(target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}"))
        sftp = self._sftp_client()
        try:
            sftp.put(str(local), tmp)
            sftp.chmod(tmp, local.stat().st_mode & 0o777)
        except (paramiko.SSHException, EOFError) as exc:
            raise self._lost(f"pushing {local.name} to {remote}") from exc
        except OSError as exc:
            if not self._connected_now():
                raise self._lost(f"pushing {local.name} to {remote}") from exc
            raise StagingError(f"{self.name}: cannot write {tmp}: {exc}") from exc
        got = self.sha256(tmp)
        if got != want:
            self.run(["rm", "-f", "--", tmp], timeout=60)
            raise StagingError(f"{self.name}: {remote} arrived with sha256 {got}, expected {want}")
        try:
            sftp.posix_rename(tmp, remote)
        except OSError as exc:
            raise StagingError(f"{self.name}: cannot rename {tmp} to {remote}: {exc}") from exc
        size = local.stat().st_size
        self.bytes_pushed += size
        return size

    def pull(self, remote: str, local: Path) -> None:
        with replacing(Path(local)) as tmp:
            try:
                self._sftp_client().get(remote, str(tmp))
            except (paramiko.SSHException, EOFError) as exc:
                raise self._lost(f"pulling {remote}") from exc
            except OSError as exc:
                if not self._connected_now():
                    raise self._lost(f"pulling {remote}") from exc
                raise StagingError(f"{self.name}: cannot pull {remote}: {exc}") from exc

    def _connected_now(self) -> bool:
        return self._transport is not None and self._transport.is_active()

    # --- what the device is -------------------------------------------------------------------

    def permission_hints(self) -> dict[str, str]:
        """Which group or sudoers line each metric this user cannot read would need."""
        return ssh_permission_hints(self)

    def facts(self) -> DeviceFacts:
        if self._facts is None:
            done = self.run(["sh", "-c", FACTS_SCRIPT], timeout=120)
            self._facts = parse_facts(self.name, "ssh", done.stdout, address=self.address)
        return self._facts

    def identity(self) -> str:
        done = self.run(["sh", "-c", IDENTITY_SCRIPT], timeout=60)
        return identity_from(facts_sections(done.stdout), self.facts().hostname)

class SshProcess:
    """One command on the device: its stdout as lines while it runs, then a `Completed`."""

    def __init__(self, driver: SshDriver, channel: paramiko.Channel, argv: tuple[str, ...]) -> None:
        self.driver, self.channel, self.argv = driver, channel, argv
        self.pid = 0
        self._started = time.perf_counter()
        self._pid_seen = threading.Event()
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []
        self._lines: list[str] | None = None
        self._cond = threading.Condition()
        self._out_done = False
        self._timed_out = False
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        stream = self.channel.makefile("rb")
        try:
            for chunk in iter(lambda: stream.readline(), b""):
                with self._cond:
                    self._stdout.append(chunk)
                    self._cond.notify_all()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            with self._cond:
                self._out_done = True
                self._cond.notify_all()

    def _read_stderr(self) -> None:
        stream = self.channel.makefile_stderr("rb")
        try:
            first = stream.readline()
            text = first.decode("utf-8", "replace")
            if text.startswith(_PID_MARK) and text.strip()[len(_PID_MARK):].isdigit():
                self.pid = int(text.strip()[len(_PID_MARK):])
            else:
                self._stderr.append(first)
            self._pid_seen.set()
            for chunk in iter(lambda: stream.read(65536), b""):
                self._stderr.append(chunk)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            self._pid_seen.set()

    def wait_pid(self, timeout: float) -> bool:
        self._pid_seen.wait(timeout)
        return self.pid > 0

    def lines(self) -> Iterator[str]:
        """stdout line by line as it arrives, until the command ends."""
        index = 0
        while True:
            with self._cond:
                while index >= len(self._stdout) and not self._out_done:
                    self._cond.wait(0.5)
                if index >= len(self._stdout):
                    return
                chunk = self._stdout[index]
            index += 1
            yield chunk.decode("utf-8", "replace").rstrip("\n")

    def kill(self) -> None:
        self._timed_out = self._timed_out or False
        if self.wait_pid(self.driver.connect_timeout):
            self.driver.kill_group(self.pid)
        self.channel.close()

    def wait(self, timeout: float | None = None) -> Completed:
        """The finished command; on timeout its process group is killed (timed_out=True)."""
        if not self.channel.status_event.wait(timeout):
            self._timed_out = True
            if self.wait_pid(5):
                self.driver.kill_group(self.pid)
            self.channel.status_event.wait(30)
        for thread in self._threads:
            thread.join(timeout=30)
        got_status = self.channel.exit_status_ready() and self.channel.exit_status >= 0
        transport = self.channel.get_transport()
        self.channel.close()
        if self._timed_out:
            code = self.channel.exit_status if got_status else -9
        elif got_status:
            code = self.channel.exit_status
        elif transport is None or not transport.is_active():
            raise self.driver._lost(f"running {self.argv[0]} (its result never came back)")
        else:
            code = -1  # killed by a signal sshd reported as exit-signal, which paramiko drops
        stdout = b"".join(self._stdout).decode("utf-8", "replace")
        stderr = b"".join(self._stderr).decode("utf-8", "replace")
        return Completed(self.argv, code, stdout, stderr, time.perf_counter() - self._started, None, self._timed_out)


class _Refuse(paramiko.MissingHostKeyPolicy):
    def __init__(self, driver: SshDriver, known: Path) -> None:
        self.driver, self.known = driver, known

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        host, _, port = hostname.strip("[").partition("]:")
        scan = f"ssh-keyscan -p {port} {host}" if port else f"ssh-keyscan {hostname}"
        raise DeviceUnreachable(
            f"{self.driver.name}: unknown host key for {hostname} ({key.get_name()} {_fingerprint(key)}), not in "
            f"{self.known}; check the fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_{key.get_name().split('-')[-1]}_key.pub), "
            f"then trust it with: {scan} >> {self.known}  (or connect once with ssh; or set accept_unknown_host = true in the inventory)"
        )


class _Trust(paramiko.MissingHostKeyPolicy):
    """Trust on first use, explicitly enabled: record the key so a later change is refused."""

    def __init__(self, driver: SshDriver, known: Path) -> None:
        self.driver, self.known = driver, known

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.known.parent.mkdir(parents=True, exist_ok=True)
        with self.known.open("a", encoding="utf-8") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


def _pump(conn: socket.socket, channel: paramiko.Channel, done: threading.Event) -> None:
    """Copy bytes both ways between a local connection and its channel until either closes.
    Waits with a selector (epoll), not select(): select() refuses descriptors above 1023, which a
    long-lived process (a lab worker, a test session) reaches, and the tunnel would die silently."""
    selector = selectors.DefaultSelector()
    try:
        selector.register(conn, selectors.EVENT_READ, channel)
        selector.register(channel, selectors.EVENT_READ, conn)
        while not done.is_set():
            for key, _ in selector.select(0.2):
                data = key.fileobj.recv(65536)
                if not data:
                    return
                key.data.sendall(data)
    except (OSError, ValueError, paramiko.SSHException):
        pass
    finally:
        selector.close()
        channel.close()
        conn.close()


def _fingerprint(key: paramiko.PKey | None) -> str:
    if key is None:
        return "?"
    import base64

    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _refused(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionRefusedError):
        return True
    errors = getattr(exc, "errors", None)  # paramiko's NoValidConnectionsError: one per address
    return bool(errors) and all(isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == 111 for e in errors.values())


def _parse_jump(spec: str, default_user: str) -> tuple[str, str, int]:
    """`[user@]host[:port]` -> (user, host, port)."""
    user, _, rest = spec.rpartition("@")
    host, _, port = rest.partition(":")
    if not host or (port and not port.isdigit()):
        raise DriverError(f"jump host {spec!r}: expected [user@]host[:port]")
    return user or default_user, host, int(port or 22)


def ssh_permission_hints(driver: Driver) -> dict[str, str]:
    """For `devices check`: which group or sudoers line each missing metric needs on this device."""
    done = driver.run(["sh", "-c", HINTS_SCRIPT], timeout=60)
    return permission_hints(done.stdout)
