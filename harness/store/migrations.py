"""Schema versions: create a new store, bring an old one forward, refuse a newer one.

Everything happens in one transaction that first takes the store's writer lock (SQLite:
`BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped advisory lock), so stores opened at the
same moment migrate once, and a failed step leaves the store as it was (DDL is transactional
on both engines). A new store is made from `schema` directly and stamped, as Alembic does;
`UPGRADES[n]` brings a version n-1 store to n. The first released schema (version 1) is the
one `tests/data/store/v1.sqlite` was written with.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import Connection, inspect, text

from harness.errors import StoreError
from harness.store import schema

_PG_LOCK_KEY = 0x6564_6762  # "edgb": the advisory lock id every edgebench store migration takes


def _v2(conn: Connection) -> None:
    """Indexes for reports over long histories: a run's executions, runs by device and suite."""
    conn.execute(text("CREATE INDEX IF NOT EXISTS runs_by_device_suite ON runs (device, suite_name, created_at)"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at)"))


def _v3(conn: Connection) -> None:
    """Devices known by identity, not by inventory name (drivers/identity.py)."""
    conn.execute(text("ALTER TABLE runs ADD COLUMN device_identity TEXT"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS runs_by_identity ON runs (device_identity, suite_name, created_at)"))


def _v4(conn: Connection) -> None:
    """Artifacts in the store, content-addressed. (Should these tables change later, copy their
    version-4 shape here first: an upgrade step must not move with the schema.)"""
    schema.blobs.create(conn)
    schema.artifacts.create(conn)


def _v5(conn: Connection) -> None:
    """The lab's tables (devices served, jobs, leases, schedules); same caveat as _v4."""
    for table in (schema.lab_devices, schema.lab_jobs, schema.leases, schema.lab_schedules):
        table.create(conn)


def _v6(conn: Connection) -> None:
    """Per case: the plan's thread choice for the device, and a precision target's verdict."""
    conn.execute(text("ALTER TABLE cases ADD COLUMN cores_json TEXT"))
    conn.execute(text("ALTER TABLE cases ADD COLUMN stop_json TEXT"))


UPGRADES: dict[int, Callable[[Connection], None]] = {2: _v2, 3: _v3, 4: _v4, 5: _v5, 6: _v6}


def migrate(conn: Connection, where: str) -> None:
    """Run inside a write transaction on `conn` (the caller commits)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    schema.schema_version.create(conn, checkfirst=True)
    current = conn.execute(schema.schema_version.select()).scalar() or 0
    if current > schema.SCHEMA_VERSION:
        raise StoreError(
            f"results store {where} has schema version {current}, newer than this edgebench "
            f"({schema.SCHEMA_VERSION}); upgrade edgebench or use another store"
        )
    if current == schema.SCHEMA_VERSION:
        return
    if current == 0 and not inspect(conn).has_table("runs"):
        schema.metadata.create_all(conn)
    else:
        for version in range(current + 1, schema.SCHEMA_VERSION + 1):
            UPGRADES[version](conn)
    conn.execute(schema.schema_version.delete())
    conn.execute(schema.schema_version.insert().values(version=schema.SCHEMA_VERSION))
