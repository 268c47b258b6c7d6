"""One benchmark at a time per device, across hosts and users: a lease row per device identity
in the shared store, taken by every lab job and every manual `edgebench run`.

The device queue already makes lab jobs take turns; the lease is what a manual run meets.
Its holder writes a heartbeat; a lease whose holder died (its pid gone on this host, or no
heartbeat for `STALE_AFTER_S` from another host) is taken over, so a power cut never leaves
a device locked.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator

import psutil
from sqlalchemy import RowMapping, delete, select, update

from harness.errors import EdgebenchError
from harness.results.schema import leases
from harness.results.sql import insert_missing
from harness.results.store import Store, now_iso

HEARTBEAT_S = 5.0
STALE_AFTER_S = 30.0


class DeviceBusy(EdgebenchError):
    """Another run (a lab job or a manual run) holds this device."""


def describe(row: RowMapping) -> str:
    return f"held by {row['holder']} (pid {row['pid']} on {row['host']}) since {row['since']}"


def manual_holder(command: str) -> str:
    return f"a manual run by {getpass.getuser()} ({command})"


def _stale(row: RowMapping) -> bool:
    if row["host"] == socket.gethostname() and not psutil.pid_exists(row["pid"]):
        return True
    return datetime.now(timezone.utc) - datetime.fromisoformat(row["heartbeat_at"]) > timedelta(seconds=STALE_AFTER_S)


def try_acquire(store: Store, identity: str, holder: str) -> RowMapping | None:
    """Take the lease; None when taken, else the row of whoever holds it."""
    mine = {"identity": identity, "holder": holder, "host": socket.gethostname(), "pid": os.getpid(), "since": now_iso(), "heartbeat_at": now_iso()}
    with store.transaction() as conn:
        if insert_missing(conn, leases, ["identity"], mine):
            return None
        row = conn.execute(select(leases).where(leases.c.identity == identity)).mappings().first()
        if row is None or not _stale(row):
            return row
        # Taken over only if nobody else did in between (same pid and heartbeat as read).
        took = conn.execute(update(leases).where(leases.c.identity == identity, leases.c.pid == row["pid"], leases.c.host == row["host"],
                                                 leases.c.heartbeat_at == row["heartbeat_at"]).values(**mine)).rowcount
        return None if took else row


@contextmanager
def held(store: Store, identity: str, holder: str, *, wait: bool, poll_s: float = 1.0,
         on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the device's lease for the block; wait for it, or raise DeviceBusy naming the holder."""
    told = False
    while (busy := try_acquire(store, identity, holder)) is not None:
        if not wait:
            raise DeviceBusy(f"device {identity} is busy: {describe(busy)}; wait for it (--wait) or try later")
        if on_wait and not told:
            on_wait(f"waiting for device {identity}: {describe(busy)}")
            told = True
        time.sleep(poll_s)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(store, identity, stop), daemon=True, name="edgebench-lease")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with store.transaction() as conn:
            conn.execute(delete(leases).where(leases.c.identity == identity, leases.c.pid == os.getpid(),
                                              leases.c.host == socket.gethostname()))


def _heartbeat(store: Store, identity: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with store.transaction() as conn:
            conn.execute(update(leases).where(leases.c.identity == identity, leases.c.pid == os.getpid()).values(heartbeat_at=now_iso()))


def holders(store: Store) -> dict[str, RowMapping]:
    with store.engine.connect() as conn:
        return {r["identity"]: r for r in conn.execute(select(leases)).mappings().all()}
