"""Fixtures: a private real adb server, and emulated phones connected to it.

The adb server runs on its own free port with its own HOME, so it generates its own key
(`$HOME/.android/adbkey`), never touches the user's, and never collides with another server;
teardown kills it (and checks that its process is gone). Each phone is an EmulatedPhone in a
temporary root that trusts exactly that server's public key.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.adb_emulator.device import EmulatedPhone
from tests.ports import free_port

ANDROID_DATA = Path(__file__).resolve().parent.parent / "data" / "android"
PIXEL7 = ANDROID_DATA / "pixel7"


@dataclass
class AdbServer:
    port: int
    home: Path
    adb: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.home), "ANDROID_ADB_SERVER_PORT": str(self.port)}

    def adb_cmd(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.adb, "-P", str(self.port), *args], env=self.env(), capture_output=True, text=True, timeout=timeout)

    @property
    def public_key(self) -> str:
        return (self.home / ".android" / "adbkey.pub").read_text()

    def state(self, serial: str) -> str | None:
        for line in self.adb_cmd("devices").stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == serial:
                return parts[1]
        return None

    def wait_state(self, serial: str, want: str, timeout: float = 20) -> str | None:
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.state(serial)
            if state == want:
                return state
            time.sleep(0.2)
        return state

    def server_pids(self) -> list[int]:
        """The adb server processes listening on this port (found by their exact command line)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"fork-server" in argv and f"tcp:{self.port}".encode() in argv:
                pids.append(int(entry.name))
        return pids


def _require_tools() -> str:
    adb = shutil.which("adb")
    if adb is None:
        pytest.skip("adb is not installed (scripts/setup.sh --test installs it)")
    if os.geteuid() != 0:
        pytest.skip("the emulated phone runs commands in a private mount namespace: needs root")
    for tool in ("unshare", "chroot"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (util-linux / coreutils)")
    return adb


@pytest.fixture(scope="module")
def adb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdbServer]:
    adb = _require_tools()
    home = tmp_path_factory.mktemp("adb-home")
    server = AdbServer(free_port(), home, adb)
    started = server.adb_cmd("start-server", timeout=60)
    if started.returncode != 0:
        pytest.skip(f"cannot start an adb server: {started.stderr.strip()}")
    try:
        yield server
    finally:
        server.adb_cmd("kill-server")
        deadline = time.monotonic() + 5
        while server.server_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in server.server_pids():  # still there: end it by its own pid
            os.kill(pid, signal.SIGKILL)


PhoneFactory = Callable[..., EmulatedPhone]


@pytest.fixture
def make_phone(adb_server: AdbServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PhoneFactory]:
    """make_phone(mode="device", profile=PIXEL7, connect=True) -> a phone the server knows."""
    phones: list[EmulatedPhone] = []

    def make(mode: str = "device", profile: Path = PIXEL7, connect: bool = True) -> EmulatedPhone:
        phone = EmulatedPhone(tmp_path_factory.mktemp("phone"), profile, [adb_server.public_key], mode=mode)
        phones.append(phone)
        if connect:
            adb_server.adb_cmd("connect", phone.serial)
            want = {"device": "device", "unauthorized": "unauthorized", "offline": "offline"}[mode]
            adb_server.wait_state(phone.serial, want)
        return phone

    yield make
    for phone in phones:
        adb_server.adb_cmd("disconnect", phone.serial)
        phone.close()


@pytest.fixture
def phone(make_phone: PhoneFactory) -> EmulatedPhone:
    return make_phone()


def adb_driver(server: AdbServer, phone: EmulatedPhone, name: str = "phone"):
    from harness.drivers.adb import AdbDriver

    return AdbDriver(name, serial=phone.serial, adb_server=server.address)
