"""A real PostgreSQL for the store tests: a throwaway cluster in a temp folder.

Debian's `postgresql` package (installed by `scripts/setup.sh --test`) provides the server;
the cluster is initialised and run as the `postgres` user when the tests run as root
(`initdb` refuses root), listens on a free loopback port and a socket in its own folder,
and is stopped at the end of the session. Superuser access goes over the socket (trust);
edgebench connects over TCP as a user with a password (scram), as a lab would. Where the
server is not installed the tests that need it skip, saying so.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

USER, PASSWORD = "edgebench", "s3cret-pw"


@dataclass(frozen=True)
class Cluster:
    folder: Path
    port: int

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser, outside a transaction (CREATE DATABASE needs that)."""
        import psycopg

        with psycopg.connect(host=str(self.folder), port=self.port, user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(sql)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresMissing(Exception):
    """The server cannot be run here; the message says why."""


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """Initialise, start and (at the end) stop and delete a cluster (also used by benchmarks/)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise PostgresMissing("PostgreSQL is not installed (scripts/setup.sh --test installs Debian's postgresql)")
    bin_dir = Path(found[-1]).parent
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="edgebench-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresMissing("running as root and there is no `postgres` user to run the server as") from None
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()

    def run(*argv: str) -> None:
        done = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w",
            "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start")
        try:
            cluster = Cluster(folder, port)
            cluster.admin(f"CREATE USER {USER} PASSWORD '{PASSWORD}' CREATEDB")
            yield cluster
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    try:
        with throwaway_cluster() as cluster:
            yield cluster
    except PostgresMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh database for one test, owned by the password user; dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    pg_cluster.admin(f"CREATE DATABASE {name} OWNER {USER}")
    yield pg_cluster.url(name)
    pg_cluster.admin(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """The store URL a test runs against: None (the default SQLite file) or a fresh PostgreSQL."""
    return None if request.param == "sqlite" else request.getfixturevalue("pg_url")
