"""The two statements SQLite and PostgreSQL spell differently (both say ON CONFLICT, through
different dialect constructs): insert-or-update and insert-if-absent.

Whether a statement wrote a row is read from RETURNING, never from `rowcount`: the DB-API
leaves rowcount loose (psycopg 3 under SQLAlchemy 2.1 reports -1 for an INSERT ... ON
CONFLICT DO NOTHING on PostgreSQL), and both engines return the rows a statement wrote.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def _insert(conn: Connection, table: Table, values: dict[str, Any]):
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).values(**values)


def upsert(conn: Connection, table: Table, keys: list[str], values: dict[str, Any]) -> None:
    statement = _insert(conn, table, values)
    conn.execute(statement.on_conflict_do_update(index_elements=keys, set_={k: v for k, v in values.items() if k not in keys}))


def insert_missing(conn: Connection, table: Table, keys: list[str], values: dict[str, Any]) -> bool:
    """Insert unless a row with these keys exists; True exactly when this statement inserted it
    (of several connections racing on one key, one gets True)."""
    statement = _insert(conn, table, values).on_conflict_do_nothing(index_elements=keys).returning(*(table.c[k] for k in keys))
    return conn.execute(statement).first() is not None
