"""A real OpenSSH server on 127.0.0.1 for the SSH driver's tests: the "loopback board".

`Sshd` generates a host key and a user key, writes an sshd_config that accepts only that
key (for the user running the tests), and starts `/usr/sbin/sshd -D` in its own process
group, so `kill()` takes the listener and every session with it (the "sshd killed mid-run"
case). The session's PATH starts with a folder of replay scripts: `board("agx-orin")` makes
`tegrastats` and `nvpmodel` replay tests/data/jetson traces, `board("rpi5")` makes `vcgencmd`
replay tests/data/rpi, `board(None)` leaves a plain Linux box.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.ports import free_port

DATA = Path(__file__).resolve().parent / "data"
SSHD = "/usr/sbin/sshd"

TEGRASTATS = """#!/bin/sh
# replay of {trace}: one recorded line per --interval ms (default 1000), looping
interval=1000
while [ $# -gt 0 ]; do case "$1" in --interval) interval=$2; shift;; esac; shift; done
pause=$(printf '%d.%03d' $((interval / 1000)) $((interval % 1000)))
while :; do
  while IFS= read -r line; do printf '%s\\n' "$line"; sleep "$pause"; done < '{trace}'
done
"""
NVPMODEL = """#!/bin/sh
[ "$1" = -q ] && exec cat '{data}/nvpmodel-q.txt'
echo "nvpmodel replay: only -q is recorded" >&2; exit 1
"""
VCGENCMD = """#!/bin/sh
case "$1 $2" in
  "measure_temp "*) exec cat '{data}/measure_temp.txt';;
  "measure_clock arm") exec cat '{data}/measure_clock_arm.txt';;
  "get_throttled "*) exec cat '{data}/get_throttled.txt';;
  "pmic_read_adc "*) exec cat '{data}/pmic_read_adc.txt';;
esac
echo 'error=1 error_msg="Command not registered"'; exit 255
"""
JETSONS = {"nano", "tx2", "xavier-nx", "orin-nano", "agx-orin"}


class Sshd:
    def __init__(self, root: Path) -> None:
        if not Path(SSHD).is_file():
            pytest.skip("openssh-server is not installed (scripts/setup.sh --test installs it)")
        if shutil.which("ssh-keygen") is None:
            pytest.skip("ssh-keygen (openssh-client) is not installed")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.port = free_port()
        self.bin = root / "bin"
        self.bin.mkdir(exist_ok=True)
        self.host_key = root / "ssh_host_ed25519_key"
        self.user_key = root / "id_ed25519"
        self.known_hosts = root / "known_hosts"
        self.log = root / "sshd.log"
        for key in (self.host_key, self.user_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        public = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n")
        tools = {str(Path(p).parent) for p in (shutil.which("cmake"), shutil.which("cc"), shutil.which("sha256sum")) if p}
        path = ":".join([str(self.bin), *sorted(tools), "/usr/local/bin", "/usr/bin", "/bin"])
        user_pub = self.user_key.with_suffix(".pub").read_text().strip()
        (root / "authorized_keys").write_text(f'environment="PATH={path}" {user_pub}\n')
        (root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\nPidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            "PermitUserEnvironment yes\nAllowTcpForwarding yes\nMaxSessions 50\nMaxStartups 50\n"
            "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "Sshd":
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation folder sshd insists on
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(8).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port}: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the listener, then every session process it forked (each session is its own
        process group, so they are found as the listener's descendants) and what they ran."""
        import psutil

        if self.process is None or self.process.poll() is not None:
            return
        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for child in descendants:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass

    def board(self, kind: str | None) -> None:
        """Put the replay tools of one board kind on the session's PATH (None: none)."""
        for name in ("tegrastats", "nvpmodel", "vcgencmd"):
            (self.bin / name).unlink(missing_ok=True)
        scripts: dict[str, str] = {}
        if kind in JETSONS:
            scripts["tegrastats"] = TEGRASTATS.format(trace=DATA / "jetson" / f"{kind}.txt")
            scripts["nvpmodel"] = NVPMODEL.format(data=DATA / "jetson")
        elif kind == "rpi5":
            scripts["vcgencmd"] = VCGENCMD.format(data=DATA / "rpi")
        elif kind is not None:
            raise ValueError(f"unknown board kind {kind!r}")
        for name, text in scripts.items():
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)

    def settings(self, **overrides: object) -> dict[str, object]:
        """Inventory keys for this server (host, port, user, key, known_hosts)."""
        base = {"host": "127.0.0.1", "port": self.port, "user": self.user, "key": str(self.user_key),
                "known_hosts": str(self.known_hosts), "agent": False, "connect_timeout": 10, "telemetry_interval_ms": 100}
        return {**base, **overrides}

    def driver(self, name: str = "board", workdir: str | None = None, **overrides: object):
        from harness.drivers.ssh import SshDriver

        return SshDriver(name, workdir or str(self.root / "device"), **self.settings(**overrides))

    def inventory(self, name: str = "board", workdir: str | None = None, **overrides: object) -> str:
        """A TOML [[device]] table for this board."""
        lines = ["[[device]]", f'name = "{name}"', 'driver = "ssh"', f'workdir = "{workdir or self.root / "device"}"']
        for key, value in self.settings(**overrides).items():
            lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, int | float) else chr(34) + str(value) + chr(34)}")
        return "\n".join(lines) + "\n"
