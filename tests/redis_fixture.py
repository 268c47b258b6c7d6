"""A real Redis (Debian's `redis-server`) on a free loopback port with a password, for the lab
tests; it can be restarted in place (same port, same data) to play a broker restart.

Persistence is the append-only file, synced on every write, as a lab's broker should run:
a restart then keeps every queued and unacknowledged message. Skips, saying why, when
`redis-server` is not installed (`scripts/setup.sh --test` installs it).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import redis

from tests.ports import free_port


@dataclass
class RedisServer:
    port: int
    password: str
    folder: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--requirepass", self.password, "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder)],
            stdout=(self.folder / "redis.log").open("ab"), stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    client.close()
                    return
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server did not start: {(self.folder / 'redis.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def restart(self, down_s: float = 2.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh --test installs Debian's redis-server)")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(free_port(), secrets.token_hex(12), folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
