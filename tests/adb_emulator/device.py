"""An emulated Android phone: adbd's side of the ADB protocol over TCP, for the real adb server.

The adb server reaches it with `adb connect 127.0.0.1:PORT`, exactly as it reaches a phone on
Wi-Fi ADB: CNXN, AUTH (the server's RSA signature over a random token is checked against
its public key, as adbd checks ~/.android/adbkey.pub), then OPEN/OKAY/WRTE/CLSE streams for
the services `shell,v2:`, `shell:`, `exec:`, `sync:` (SEND/RECV/STAT/LIST, STA2/LST2/LIS2) and
`tcp:PORT` (what `adb forward` opens per connection: a TCP connection to the phone's loopback,
which here is the host's, since the phone's commands share its network namespace).
Commands run in the phone's root folder (see rootfs.py). Knobs make it misbehave on demand:
`mode` (device / unauthorized / offline), `drop_push_after` (bytes of a SEND, then the TCP
connection is cut), `drop_on_command` (a command containing this text starts, and after
`drop_after_s` the connection is cut) and `deny(path)` (EACCES on read, like SELinux).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

from tests.adb_emulator.protocol import (
    A_AUTH,
    A_CLSE,
    A_CNXN,
    A_OKAY,
    A_OPEN,
    A_VERSION,
    A_WRTE,
    AUTH_RSAPUBLICKEY,
    AUTH_SIGNATURE,
    AUTH_TOKEN,
    HEADER,
    MAX_PAYLOAD,
    TOKEN_SIZE,
    Message,
    PublicKey,
    pack,
    parse_public_key,
    unpack_header,
)
from tests.adb_emulator.rootfs import SHELL_UID, PhoneRoot

FEATURES = ("shell_v2", "cmd", "stat_v2", "ls_v2", "fixed_push_mkdir")
SYNC_DATA_MAX = 64 * 1024
_SHELL_STDIN, _SHELL_STDOUT, _SHELL_STDERR, _SHELL_EXIT, _SHELL_CLOSE_STDIN = 0, 1, 2, 3, 4


class ConnectionDropped(Exception):
    """The TCP connection to the adb server is gone (cut on purpose or by the server)."""


class EmulatedPhone:
    """One phone listening on 127.0.0.1; `serial` is what `adb devices` lists after connect."""

    def __init__(self, root: Path, profile: Path, authorized_keys: list[str], mode: str = "device") -> None:
        if mode not in ("device", "unauthorized", "offline"):
            raise ValueError(f"mode must be device, unauthorized or offline, not {mode!r}")
        self.fs = PhoneRoot(root, profile)
        self.keys: list[PublicKey] = [parse_public_key(k) for k in authorized_keys]
        self.mode = mode
        self.drop_push_after: int | None = None
        self.drop_on_command: str | None = None
        self.drop_after_s = 0.5
        self.commands: list[str] = []  # every command a shell service ran, for assertions
        self.pushed_paths: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.serial = f"127.0.0.1:{self.port}"
        self._connections: list[_Connection] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"phone-{self.port}", daemon=True)
        self._thread.start()

    def deny(self, device_path: str) -> None:
        self.fs.deny(device_path)

    def banner(self) -> bytes:
        props = self.props()
        fields = [f"ro.product.{key}={props.get(f'ro.product.{key}', '')}" for key in ("name", "model", "device")]
        return ("device::" + ";".join(fields) + ";features=" + ",".join(FEATURES)).encode()

    def props(self) -> dict[str, str]:
        from harness.boards.android import parse_getprop

        return parse_getprop((self.fs.profile / "getprop.txt").read_text())

    def drop_connections(self) -> None:
        """Cut every TCP connection now, as a cable pulled or Wi-Fi lost would."""
        for conn in list(self._connections):
            conn.drop()

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() below: close() alone does not on Linux
        except OSError:
            pass  # never connected to: nothing to wake
        self._listener.close()
        self.drop_connections()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            conn = _Connection(self, sock)
            self._connections.append(conn)
            threading.Thread(target=conn.serve, name=f"phone-{self.port}-conn", daemon=True).start()


class _Connection:
    """One TCP connection from the adb server: the transport and its streams."""

    def __init__(self, phone: EmulatedPhone, sock: socket.socket) -> None:
        self.phone = phone
        self.sock = sock
        self.max_payload = 4096
        self.online = False
        self.token = b""
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.write_lock = threading.Lock()
        self.processes: set[subprocess.Popen[bytes]] = set()
        self.dropped = threading.Event()

    # --- transport -------------------------------------------------------------------------
    def send(self, message: Message) -> None:
        if self.dropped.is_set():
            raise ConnectionDropped()
        try:
            with self.write_lock:
                self.sock.sendall(pack(message))
        except OSError as exc:
            self.drop()
            raise ConnectionDropped() from exc

    def _recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionDropped()
            data += chunk
        return data

    def drop(self) -> None:
        if self.dropped.is_set():
            return
        self.dropped.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for proc in list(self.processes):  # adbd's shells die with their transport
            _kill_group(proc)
        for stream in list(self.streams.values()):
            stream.closed_by_host()
        if self in self.phone._connections:
            self.phone._connections.remove(self)

    def serve(self) -> None:
        try:
            while True:
                command, arg0, arg1, length = unpack_header(self._recv_exact(HEADER.size))
                data = self._recv_exact(length) if length else b""
                self.handle(Message(command, arg0, arg1, data))
        except (ConnectionDropped, OSError, ValueError):
            self.drop()

    def handle(self, msg: Message) -> None:
        if msg.command == A_CNXN:
            self.max_payload = min(msg.arg1, MAX_PAYLOAD)
            if self.phone.mode == "offline":
                return  # never answers: the server lists the device as offline
            self._challenge()
        elif msg.command == A_AUTH:
            self._auth(msg)
        elif not self.online:
            return
        elif msg.command == A_OPEN:
            self._open(msg.arg0, msg.data.rstrip(b"\x00").decode("utf-8", errors="replace"))
        elif msg.command == A_WRTE:
            stream = self.streams.get(msg.arg1)
            if stream is not None:
                stream.feed(msg.data)
                self.send(Message(A_OKAY, stream.local_id, stream.remote_id))
        elif msg.command == A_OKAY:
            stream = self.streams.get(msg.arg1)
            if stream is not None:
                stream.remote_id = msg.arg0
                stream.acked.set()
        elif msg.command == A_CLSE:
            stream = self.streams.get(msg.arg1)
            if stream is not None:
                stream.closed_by_host()

    def _challenge(self) -> None:
        self.token = secrets.token_bytes(TOKEN_SIZE)
        self.send(Message(A_AUTH, AUTH_TOKEN, 0, self.token))

    def _auth(self, msg: Message) -> None:
        if msg.arg0 == AUTH_SIGNATURE:
            if self.phone.mode == "device" and any(key.verifies(self.token, msg.data) for key in self.phone.keys):
                self.online = True
                self.send(Message(A_CNXN, A_VERSION, MAX_PAYLOAD, self.phone.banner()))
            else:
                self._challenge()  # adb tries its next key, then offers its public key
        elif msg.arg0 == AUTH_RSAPUBLICKEY:
            pass  # a phone shows "Allow USB debugging?" and waits: the device stays unauthorized

    def _open(self, remote_id: int, service: str) -> None:
        handler = _service(service)
        if handler is None:
            self.send(Message(A_CLSE, 0, remote_id))
            return
        stream = _Stream(self, self.next_id, remote_id)
        self.next_id += 1
        self.streams[stream.local_id] = stream
        self.send(Message(A_OKAY, stream.local_id, remote_id))
        threading.Thread(target=self._run_service, args=(handler, stream, service), daemon=True).start()

    def _run_service(self, handler, stream: _Stream, service: str) -> None:
        try:
            handler(self, stream, service.partition(":")[2])
        except ConnectionDropped:
            pass
        finally:
            stream.close()
            self.streams.pop(stream.local_id, None)

    # --- processes -------------------------------------------------------------------------
    def start(self, command: str) -> subprocess.Popen[bytes]:
        self.phone.commands.append(command)
        proc = self.phone.fs.popen(command)
        self.processes.add(proc)
        marker = self.phone.drop_on_command
        if marker and marker in command:
            self.phone.drop_on_command = None  # one-shot
            threading.Timer(self.phone.drop_after_s, self.drop).start()
        return proc


class _Stream:
    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self.acked = threading.Event()
        self.acked.set()
        self._buffer = bytearray()
        self._cond = threading.Condition()
        self._host_closed = False
        self._closed = False

    def feed(self, data: bytes) -> None:
        with self._cond:
            self._buffer += data
            self._cond.notify_all()

    def closed_by_host(self) -> None:
        with self._cond:
            self._host_closed = True
            self._cond.notify_all()
        self.acked.set()

    @property
    def host_closed(self) -> bool:
        return self._host_closed

    def read_exact(self, n: int) -> bytes:
        with self._cond:
            while len(self._buffer) < n and not self._host_closed:
                self._cond.wait()
            if len(self._buffer) < n:
                raise ConnectionDropped()
            data = bytes(self._buffer[:n])
            del self._buffer[:n]
            return data

    def read_available(self) -> bytes:
        """Whatever is buffered now (possibly nothing), without waiting."""
        with self._cond:
            data = bytes(self._buffer)
            self._buffer.clear()
            return data

    def write(self, data: bytes) -> None:
        for start in range(0, len(data), self.conn.max_payload):
            while not self.acked.wait(0.5):  # one WRTE in flight until the host says OKAY
                if self.conn.dropped.is_set():
                    raise ConnectionDropped()
            if self._host_closed:
                raise ConnectionDropped()
            self.acked.clear()
            self.conn.send(Message(A_WRTE, self.local_id, self.remote_id, data[start:start + self.conn.max_payload]))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._host_closed and not self.conn.dropped.is_set():
            try:
                self.conn.send(Message(A_CLSE, self.local_id, self.remote_id))
            except ConnectionDropped:
                pass


def _service(service: str):
    name, _, _ = service.partition(":")
    base = name.split(",")[0]
    if base == "shell" and "v2" in name.split(",")[1:]:
        return _shell_v2
    return {"shell": _raw_shell, "exec": _raw_shell, "sync": _sync, "tcp": _tcp}.get(base)


def _tcp(conn: _Connection, stream: _Stream, port: str) -> None:
    """`tcp:PORT`: bytes both ways between the stream and 127.0.0.1:PORT, as adbd does for a
    forward; the stream closes when the phone-side connection does."""
    try:
        sock = socket.create_connection(("127.0.0.1", int(port)), timeout=5)
    except (OSError, ValueError):
        return  # adbd closes the stream: the host's connection is refused
    sock.settimeout(None)
    threading.Thread(target=_to_socket, args=(stream, sock), daemon=True).start()
    try:
        _pump(sock.makefile("rb"), stream.write)
    finally:
        sock.close()


def _to_socket(stream: _Stream, sock: socket.socket) -> None:
    try:
        while True:
            sock.sendall(stream.read_exact(1) + stream.read_available())
    except (ConnectionDropped, OSError):
        pass


# --- shell services ------------------------------------------------------------------------
def _exit_status(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N: 128+N, as adbd reports it


def _shell_v2(conn: _Connection, stream: _Stream, command: str) -> None:
    """Shell protocol v2: stdout, stderr and the exit code as separate packets."""
    proc = conn.start(command or "sh")
    lock = threading.Lock()

    def packet(kind: int, data: bytes) -> None:
        with lock:
            stream.write(bytes([kind]) + struct.pack("<I", len(data)) + data)

    pumps = [threading.Thread(target=_pump, args=(pipe, lambda d, k=kind: packet(k, d)), daemon=True)
             for pipe, kind in ((proc.stdout, _SHELL_STDOUT), (proc.stderr, _SHELL_STDERR))]
    for pump in pumps:
        pump.start()
    threading.Thread(target=_feed_stdin_v2, args=(stream, proc), daemon=True).start()
    _finish(conn, stream, proc, pumps, lambda code: packet(_SHELL_EXIT, bytes([code & 0xFF])))


def _raw_shell(conn: _Connection, stream: _Stream, command: str) -> None:
    """`shell:` (protocol v1) and `exec:`: output only, no exit code (adbd just closes)."""
    proc = conn.start(command or "sh")
    pumps = [threading.Thread(target=_pump, args=(pipe, stream.write), daemon=True) for pipe in (proc.stdout, proc.stderr)]
    for pump in pumps:
        pump.start()
    _finish(conn, stream, proc, pumps, None)


def _finish(conn: _Connection, stream: _Stream, proc, pumps, on_exit) -> None:
    while proc.poll() is None:
        if stream.host_closed or conn.dropped.is_set():  # the client went away: adbd hangs up
            _kill_group(proc)
        time.sleep(0.02)
    for pump in pumps:
        pump.join()
    conn.processes.discard(proc)
    if on_exit is not None and not stream.host_closed:
        on_exit(_exit_status(proc.returncode))


def _pump(pipe, write) -> None:
    try:
        while chunk := pipe.read1(SYNC_DATA_MAX):
            write(chunk)
    except (ConnectionDropped, OSError, ValueError):
        pass


def _feed_stdin_v2(stream: _Stream, proc: subprocess.Popen[bytes]) -> None:
    try:
        while True:
            kind, length = struct.unpack("<BI", stream.read_exact(5))
            data = stream.read_exact(length) if length else b""
            if kind == _SHELL_STDIN:
                proc.stdin.write(data)
                proc.stdin.flush()
            elif kind == _SHELL_CLOSE_STDIN:
                proc.stdin.close()
    except (ConnectionDropped, OSError, ValueError):
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- sync service ----------------------------------------------------------------------------
def _sync(conn: _Connection, stream: _Stream, _arg: str) -> None:
    fs = conn.phone.fs
    while True:
        ident, length = struct.unpack("<4sI", stream.read_exact(8))
        path = stream.read_exact(length).decode("utf-8", errors="surrogateescape")
        if ident == b"QUIT":
            return
        if ident == b"STAT":
            st = _lstat(fs.host_path(path))
            stream.write(b"STAT" + struct.pack("<III", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)) if st
                         else b"STAT" + bytes(12))
        elif ident in (b"STA2", b"LST2"):
            host = fs.host_path(path)
            st = _lstat(host) if ident == b"LST2" else _stat(host)
            stream.write(ident + (_stat_v2(st) if st else struct.pack("<I", 2) + bytes(64)))
        elif ident in (b"LIST", b"LIS2"):
            _list(stream, fs.host_path(path), v2=ident == b"LIS2")
        elif ident == b"SEND":
            if not _send(conn, stream, path):
                return
        elif ident == b"RECV":
            _recv(stream, fs, path)
        else:
            _fail(stream, f"unknown sync command {ident!r}")
            return


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _stat_v2(st: os.stat_result) -> bytes:
    return struct.pack("<IQQIIIIQqqq", 0, st.st_dev, st.st_ino, st.st_mode, st.st_nlink, SHELL_UID, SHELL_UID,
                       st.st_size, int(st.st_atime), int(st.st_mtime), int(st.st_ctime))


def _list(stream: _Stream, folder: Path, v2: bool) -> None:
    entries = sorted(os.listdir(folder)) if folder.is_dir() else []
    for name in entries:
        st = _lstat(folder / name)
        if st is None:
            continue
        raw = name.encode("utf-8", errors="surrogateescape")
        if v2:
            stream.write(b"DNT2" + _stat_v2(st) + struct.pack("<I", len(raw)) + raw)
        else:
            stream.write(b"DENT" + struct.pack("<IIII", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(raw)) + raw)
    stream.write(b"DONE" + (bytes(72) if v2 else bytes(16)))


def _fail(stream: _Stream, message: str) -> None:
    raw = message.encode()
    stream.write(b"FAIL" + struct.pack("<I", len(raw)) + raw)


def _send(conn: _Connection, stream: _Stream, spec: str) -> bool:
    """Write straight to the destination, as adbd does: a cut connection leaves half a file."""
    path, _, mode_text = spec.rpartition(",")
    mode = int(mode_text) if mode_text.isdigit() else 0o100644
    target = conn.phone.fs.host_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(target, "wb") as out:
        while True:
            ident, value = struct.unpack("<4sI", stream.read_exact(8))
            if ident == b"DONE":
                break
            if ident != b"DATA":
                _fail(stream, f"expected DATA or DONE, got {ident!r}")
                return False
            chunk = stream.read_exact(value)
            limit = conn.phone.drop_push_after
            if limit is not None and written + len(chunk) >= limit:
                out.write(chunk[: max(0, limit - written)])
                out.flush()
                conn.phone.drop_push_after = None  # one-shot
                conn.drop()
                return False
            out.write(chunk)
            written += len(chunk)
    os.chown(target, SHELL_UID, SHELL_UID)
    os.chmod(target, stat.S_IMODE(mode))
    os.utime(target, (value, value))
    conn.phone.pushed_paths.append(path)
    stream.write(b"OKAY" + bytes(4))
    return True


def _recv(stream: _Stream, fs: PhoneRoot, path: str) -> None:
    if str(Path("/", path)) in fs.denied:
        _fail(stream, f"open failed: Permission denied: {path}")
        return
    try:
        handle = open(fs.host_path(path), "rb")
    except OSError as exc:
        _fail(stream, f"open failed: {exc.strerror}")
        return
    with handle:
        while chunk := handle.read(SYNC_DATA_MAX):
            stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
    stream.write(b"DONE" + bytes(4))
