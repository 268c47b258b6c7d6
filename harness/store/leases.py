"""One benchmark at a time per device, across hosts and users: a lease row per device identity
in the shared store, taken by every lab job and every manual `edgebench run`.

The device queue already makes lab jobs take turns; the lease is what a manual run meets.
Its holder writes a heartbeat; a lease whose holder died (its pid gone on this host, or no
heartbeat for `STALE_AFTER_S` from another host) is taken over, so a power cut never leaves
a device locked. Heartbeats and staleness read the database server's clock, the one clock
every host shares. A holder that cannot renew (the store is down, or another host took the
lease) stops its run `STOP_MARGIN_S` before the lease would go stale, so two benchmarks never
share the device.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Callable, Iterator

import psutil
from sqlalchemy import Connection, RowMapping, delete, select, update
from sqlalchemy.exc import SQLAlchemyError

from harness.errors import EdgebenchError, Interrupted, LeaseLost
from harness.signals import raiser
from harness.store.db import Store, server_now
from harness.store.schema import leases
from harness.store.sql import insert_missing

HEARTBEAT_S = 5.0
RETRY_S = 1.0  # after a failed heartbeat write
STALE_AFTER_S = 30.0
STOP_MARGIN_S = 10.0  # kept free before the lease goes stale: to kill the benchmark, then let go


class DeviceBusy(EdgebenchError):
    """Another run (a lab job or a manual run) holds this device."""


def describe(row: RowMapping) -> str:
    return f"held by {row['holder']} (pid {row['pid']} on {row['host']}) since {row['since']}"


def manual_holder(run_id: str) -> str:
    """Who holds the device, for the lease row others read: what and who, never the command
    line (which may hold a `--store` password)."""
    return _holder(f"run {run_id}")


def job_holder(job_id: str) -> str:
    return _holder(f"lab job {job_id}")


def _holder(what: str) -> str:
    return f"{what} by {getpass.getuser()}"


def _stale(row: RowMapping, now: str) -> bool:
    """Its holder's pid is gone from this host, or its last heartbeat is older than
    STALE_AFTER_S at `now` (the server's clock)."""
    if row["host"] == socket.gethostname() and not psutil.pid_exists(row["pid"]):
        return True
    return datetime.fromisoformat(now) - datetime.fromisoformat(row["heartbeat_at"]) > timedelta(seconds=STALE_AFTER_S)


def try_acquire(store: Store, identity: str, holder: str) -> RowMapping | None:
    """Take the lease; None when taken, else the row of whoever holds it."""
    with store.transaction() as conn:
        now = server_now(conn)
        mine = {"identity": identity, "holder": holder, "host": socket.gethostname(), "pid": os.getpid(), "since": now, "heartbeat_at": now}
        if insert_missing(conn, leases, ["identity"], mine):
            return None
        row = conn.execute(select(leases).where(leases.c.identity == identity)).mappings().first()
        if row is None or not _stale(row, now):
            return row
        # Taken over only if nobody else did in between (same pid and heartbeat as read); RETURNING
        # says whether this UPDATE matched, rowcount is not trusted (harness/store/sql.py).
        took = conn.execute(update(leases).where(leases.c.identity == identity, leases.c.pid == row["pid"], leases.c.host == row["host"],
                                                 leases.c.heartbeat_at == row["heartbeat_at"]).values(**mine)
                            .returning(leases.c.identity)).first() is not None
        return None if took else row


@contextmanager
def held(store: Store, identity: str, holder: str, *, wait: bool, poll_s: float = 1.0,
         on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the device's lease for the block; wait for it, or raise DeviceBusy naming the holder.
    A lease that cannot be renewed raises LeaseLost in the block (see `_Keeper`)."""
    told = False
    while (busy := try_acquire(store, identity, holder)) is not None:
        if not wait:
            raise DeviceBusy(f"device {identity} is busy: {describe(busy)}; wait for it (--wait) or try later")
        if on_wait and not told:
            on_wait(f"waiting for device {identity}: {describe(busy)}")
            told = True
        time.sleep(poll_s)
    try:
        with raiser() as stop_run, _Keeper(store, identity, stop_run):  # the keeper stops before the lease goes
            yield
    finally:
        _release(store, identity)


def _release(store: Store, identity: str) -> None:
    """Let go of the lease. A store that is down cannot take the delete: the lease then goes
    stale by itself (this pid ends, or its heartbeat ages), so the run's own error stands."""
    try:
        with store.transaction() as conn:
            conn.execute(delete(leases).where(leases.c.identity == identity, leases.c.pid == os.getpid(),
                                              leases.c.host == socket.gethostname()))
    except SQLAlchemyError:
        pass


def _renew(conn: Connection, identity: str) -> bool:
    """Write a heartbeat at the server's time; False when the lease is no longer ours."""
    mine = (leases.c.identity == identity, leases.c.pid == os.getpid(), leases.c.host == socket.gethostname())
    return conn.execute(update(leases).where(*mine).values(heartbeat_at=server_now(conn)).returning(leases.c.identity)).first() is not None


class _Keeper:
    """Renews the lease every HEARTBEAT_S, a failed write again every RETRY_S; stops the run
    (`stop_run`, which raises LeaseLost in the thread holding the lease) once the lease is
    someone else's, or when no renewal got through for STALE_AFTER_S - STOP_MARGIN_S. That
    deadline is a timer of its own, measured from the start of the last write that got
    through (its heartbeat is no later than that), so a write hanging on a dead network
    cannot hold it back."""

    def __init__(self, store: Store, identity: str, stop_run: Callable[[Interrupted], None]) -> None:
        self.store, self.identity, self.stop_run = store, identity, stop_run
        self.stop = threading.Event()
        self.error = ""
        self.deadline: threading.Timer | None = None
        self.beat = threading.Thread(target=self._beat, daemon=True, name="edgebench-lease")

    def __enter__(self) -> "_Keeper":
        self._arm(time.monotonic())
        self.beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.deadline:
            self.deadline.cancel()
        self.beat.join(timeout=HEARTBEAT_S)  # a write hung on a dead network is left to its daemon thread

    def _arm(self, renewed: float) -> None:
        if self.deadline:
            self.deadline.cancel()
        left = STALE_AFTER_S - STOP_MARGIN_S - (time.monotonic() - renewed)
        self.deadline = threading.Timer(max(left, 0.0), self._give_up)
        self.deadline.daemon = True
        self.deadline.start()

    def _beat(self) -> None:
        wait = HEARTBEAT_S
        while not self.stop.wait(wait):
            started = time.monotonic()
            self.error = f"results store {self.store.where}: a heartbeat write did not return"
            try:
                with self.store.transaction() as conn:
                    mine = _renew(conn, self.identity)
            except (SQLAlchemyError, OSError) as exc:
                self.error, wait = str(self.store.gone(exc)), RETRY_S
                continue
            if self.stop.is_set():
                return
            if not mine:
                self.stop_run(LeaseLost(f"the lease of device {self.identity} was taken over by another run "
                                        f"(no heartbeat of this one reached {self.store.where} in time); stopped"))
                return
            self._arm(started)
            wait = HEARTBEAT_S

    def _give_up(self) -> None:
        if not self.stop.is_set():
            self.stop_run(LeaseLost(f"the lease of device {self.identity} could not be renewed for "
                                    f"{STALE_AFTER_S - STOP_MARGIN_S:g} s ({self.error}); "
                                    f"stopped before another run may take the device"))
