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
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port

USER, PASSWORD = "edgebench", "s3cret-pw"


@dataclass(frozen=True)
class Cluster:
    folder: Path
    port: int
    bin_dir: Path | None = None
    as_user: tuple[str, ...] = ()

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (`immediate`: as a crash or a pulled cable looks to its clients)."""
        self._pg_ctl("-m", mode, "-w", "stop")

    def start(self) -> None:
        """Start it again on the same port and data (what it had committed is there)."""
        self._pg_ctl("-l", str(self.folder / "server.log"), "-w", "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1",
                     "start")

    def pg_ctl_argv(self, *args: str) -> list[str]:
        """The command line of `pg_ctl ARGS` on this cluster (for a process that stops it from inside a test's run)."""
        assert self.bin_dir is not None, "a cluster made by throwaway_cluster"
        return [*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), *args]

    def _pg_ctl(self, *args: str) -> None:
        done = subprocess.run(self.pg_ctl_argv(*args), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser, outside a transaction (CREATE DATABASE needs that)."""
        import psycopg

        with psycopg.connect(host=str(self.folder), port=self.port, user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(sql)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"


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
    data = folder / "data"

    def run(*argv: str) -> None:
        done = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    cluster = Cluster(folder, free_port(), bin_dir, tuple(as_user))
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256")
        cluster.start()
        try:
            cluster.admin(f"CREATE USER {USER} PASSWORD '{PASSWORD}' CREATEDB")
            yield cluster
        finally:
            if (data / "postmaster.pid").exists():  # a test may have stopped it
                cluster.stop("fast")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    try:
        with throwaway_cluster() as cluster:
            yield cluster
    except PostgresMissing as exc:
        pytest.skip(str(exc))


@contextmanager
def fresh_database(cluster: Cluster) -> Iterator[str]:
    """A new database owned by the password user, as its URL; dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    cluster.admin(f"CREATE DATABASE {name} OWNER {USER}")
    yield cluster.url(name)
    cluster.admin(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh database for one test."""
    with fresh_database(pg_cluster) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """The store URL a test runs against: None (the default SQLite file) or a fresh PostgreSQL."""
    return None if request.param == "sqlite" else request.getfixturevalue("pg_url")
