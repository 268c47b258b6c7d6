"""The results store: one interface over SQLite (the default, a file under `--results`) and
PostgreSQL (a store a lab shares), on SQLAlchemy Core; plus an artifacts folder per run.

Raw values are stored; statistics are derived when reading. Each finished process run of a
case is committed in its own transaction, so a crash loses at most the one in flight, and an
execution is known by (run, case, rep): writing it again replaces it, never duplicates it.
The schema is versioned (`migrations`); a store newer than the code is refused.

A run's files are written whole or not at all (`harness.paths.write_atomic`), and a process's files reach the
store only in its execution's transaction: a file left by a process whose row never got in (the
database went away, the disk filled) is never stored, and the process runs again on resume.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from sqlalchemy import URL, Connection, Engine, Executable, RowMapping, create_engine, delete, event, func, select, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from harness.errors import StoreError, StoreGone
from harness.paths import private_file, write_atomic
from harness.records import Case, CoreChoice, Metric, Stop, Window, now_iso
from harness.store import artifacts, schema
from harness.store.location import masked, store_url
from harness.store.migrations import migrate
from harness.store.schema import (
    SCHEMA_VERSION,
    cases as cases_t,
    executions as executions_t,
    measurements as measurements_t,
    models,
    runs as runs_t,
    runtimes,
)
from harness.store.sql import upsert
from harness.telemetry.state import DeviceState

__all__ = ["SCHEMA_VERSION", "Execution", "ExecutionRaw", "RunRecord", "Store", "cause", "new_run_id", "server_now"]

# Seconds a connection attempt to a database server may take: past it, a store behind a dead
# network fails with a message instead of hanging for the kernel's minutes of SYN retries.
CONNECT_TIMEOUT_S = 10


def server_now(conn: Connection) -> str:
    """The database server's clock, spelled as `now_iso` spells it: what every host of a lab
    compares lease heartbeats against, so one host's wrong clock can neither make a live lease
    look stale nor keep a dead one. (SQLite's CURRENT_TIMESTAMP is UTC without a zone.)"""
    value = conn.execute(select(func.now())).scalar_one()
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="seconds")


def cause(exc: BaseException) -> str:
    """A database or disk error in one line: the driver's own first line (SQLAlchemy's text
    adds the statement and its parameters), or the OS's reason and the file."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class RunRecord:
    """One stored run, a field per column of `runs`: its device facts and the options it was
    run with are parsed here, once, so no caller reads the JSON columns itself."""

    id: str
    created_at: str
    finished_at: str | None
    status: str  # running | finished | failed | interrupted
    device: str  # the inventory name
    suite_name: str
    suite_text: str
    repetitions: int
    timeout_s: float
    model_sha256: str
    runtime_key: str | None
    facts: dict[str, Any]  # the driver's DeviceFacts, its identity, quality sources, bandwidth
    command: dict[str, Any]  # run.session.RunOptions.to_json(): the store comes before run/, so it stays a dict here
    edgebench_version: str
    note: str | None
    device_identity: str | None  # drivers/identity.py; None for runs stored before it was

    @classmethod
    def from_row(cls, row: RowMapping) -> "RunRecord":
        columns = {k: v for k, v in row.items() if k not in ("facts_json", "command_json")}
        return cls(**columns, facts=json.loads(row["facts_json"]), command=json.loads(row["command_json"]))

    @property
    def device_key(self) -> str:
        """What makes two runs the same device: its identity; the inventory name only for runs
        stored before identities were (those cannot be told apart any better)."""
        return self.device_identity or f"name:{self.device}"


@dataclass(frozen=True)
class ExecutionRaw:
    """What one process leaves beside its metrics, kept whole in the execution's `raw_json`, so a
    figure can be traced to what it rests on. Fields are in the stored keys' order, so `to_json`
    writes what the runner's dict wrote; a key an older row lacks reads as empty (None: unknown)."""

    argv: tuple[str, ...] = ()
    records: tuple[dict[str, Any], ...] = ()  # the engine's parsed records (e.g. llama-bench JSONL rows)
    state: DeviceState | None = None  # before the process
    cooldown: dict[str, Any] | None = None  # burst mode's wait before the process (Cooldown and its quiet wait)
    telemetry: dict[str, Any] = field(default_factory=dict)  # the sampler's details: power scope, sources
    contention: dict[str, Any] = field(default_factory=dict)  # others' CPU during the windows, the busiest
    windows: tuple[Window, ...] = ()  # the measured repetitions on the device clock
    effective: dict[str, Any] = field(default_factory=dict)  # the settings the engine reported it ran with

    def to_json(self) -> dict[str, Any]:
        return {"argv": list(self.argv), "records": list(self.records),
                "state": self.state.to_json() if self.state is not None else None, "cooldown": self.cooldown,
                "telemetry": self.telemetry, "contention": self.contention, "windows": [list(w) for w in self.windows],
                "effective": self.effective}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ExecutionRaw":
        state = data.get("state")
        return cls(
            argv=tuple(data.get("argv") or ()), records=tuple(data.get("records") or ()),
            state=DeviceState.from_json(state) if state is not None else None, cooldown=data.get("cooldown"),
            telemetry=data.get("telemetry") or {}, contention=data.get("contention") or {},
            windows=tuple((start, duration) for start, duration in data.get("windows") or ()),
            effective=data.get("effective") or {},
        )


@dataclass(frozen=True)
class Execution:
    """One process run of one case, as stored."""

    id: int
    case_key: str
    rep: int
    status: str
    exit_code: int | None
    wall_s: float | None
    error: str | None
    build: str | None
    raw: ExecutionRaw


# Files in a run folder made from the store, not stored in it.
DERIVED = frozenset({"report.html"})


SQLITE_BUSY_S = 30  # how long a SQLite connection waits for another's lock


def _wal(cursor: sqlite3.Cursor) -> None:
    """Put the SQLite file in WAL mode (kept in the file, so only a new store's first connections
    switch it). Switching needs the file to itself, and SQLite answers "database is locked" at once
    there rather than waiting: stores opened at the same moment retry, up to the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _engine(url: URL) -> Engine:
    if url.get_backend_name() != "sqlite":
        timeout = {} if "connect_timeout" in url.query else {"connect_timeout": CONNECT_TIMEOUT_S}
        return create_engine(url, pool_pre_ping=True, connect_args=timeout)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        # pysqlite would begin transactions itself, and not before DDL; we begin them (below).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        _wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A writer takes the lock up front: a deferred transaction that reads, then writes, fails
        # at once when another writer got in between, instead of waiting its turn.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("writer") else "BEGIN")

    return engine


def _private_database(url: URL) -> None:
    """Create the SQLite file readable by the user only; SQLite gives its WAL and journal the
    same mode. A folder that does not exist is left for SQLite to report."""
    path = Path(url.database or "")
    if url.database and url.database != ":memory:" and path.parent.is_dir():
        try:
            private_file(path)
        except OSError as exc:
            raise StoreError(f"cannot open results store {path}: {exc.strerror}") from None


# What a failed write() of a file reports, without naming the file.
DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})


def _under(filename: object, root: Path) -> bool:
    return isinstance(filename, str) and Path(filename).resolve().is_relative_to(root.resolve())


class Store:
    """Open (creating or migrating) the store at `url` (default: `<root>/edgebench.sqlite`,
    or `$EDGEBENCH_STORE`); run artifacts go under `<root>/runs/`."""

    def __init__(self, root: Path, url: str | None = None) -> None:
        self.root = Path(root)
        self.url = store_url(self.root, url)
        self.where = masked(self.url)
        try:
            if self.url.get_backend_name() == "sqlite":
                self.root.mkdir(parents=True, exist_ok=True)
                _private_database(self.url)
            self.engine = _engine(self.url)
            with self.transaction() as conn:
                migrate(conn, self.where)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot open results store {self._scrub(cause(exc))}") from None

    def close(self) -> None:
        self.engine.dispose()

    def _scrub(self, reason: str) -> str:
        """`<masked store>: reason`, the password cut out of the reason too should a driver echo it."""
        password = self.url.password
        return f"{self.where}: {reason.replace(password, '***') if password else reason}"

    def gone(self, exc: SQLAlchemyError | OSError) -> StoreGone:
        """The error for a database or disk failure after the store opened, in one line naming
        the store (or the file) and the cause."""
        if isinstance(exc, SQLAlchemyError):
            return StoreGone(f"results store {self._scrub(cause(exc))}")
        disk = _under(exc.filename, self.root) or (exc.filename is None and exc.errno in DISK_ERRORS)
        return StoreGone(f"results folder {self.root}: {cause(exc)}" if disk else cause(exc))

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        with self.engine.connect().execution_options(writer=True) as conn, conn.begin():
            yield conn

    def _read(self, statement: Executable) -> list[RowMapping]:
        with self.engine.connect() as conn:
            return list(conn.execute(statement).mappings().all())

    # --- writing -------------------------------------------------------------------------

    def artifacts_dir(self, run_id: str) -> Path:
        path = self.root / "runs" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write_file(self, run_id: str, name: str, data: str | bytes) -> Path:
        """Write one file of the run's folder, whole or not at all (`write_atomic`)."""
        path = self.artifacts_dir(run_id) / name
        write_atomic(path, data)
        return path

    def create_run(
        self,
        *,
        device: str,
        suite_name: str,
        suite_text: str,
        repetitions: int,
        timeout_s: float,
        cases: list[Case],
        model_sha256: str,
        model_info: dict[str, Any],
        runtime_key: str | None,
        runtime_manifest: dict[str, Any] | None,
        facts: dict[str, Any],
        command: dict[str, Any],
        version: str,
        device_identity: str | None = None,
        run_id: str | None = None,
        cores: Mapping[str, CoreChoice] | None = None,
    ) -> str:
        """Record a new run and its cases (with how each one's threads were chosen, `cores`);
        `run_id` (from `new_run_id`) when the caller chose it beforehand, as a lab job does so
        that a redelivered job finds the run its first attempt created."""
        run_id = run_id or new_run_id()
        with self.transaction() as conn:
            upsert(conn, models, ["sha256"], {"sha256": model_sha256, "info_json": json.dumps(model_info)})
            if runtime_key and runtime_manifest:
                upsert(conn, runtimes, ["key"], {"key": runtime_key, "manifest_json": json.dumps(runtime_manifest)})
            conn.execute(runs_t.insert().values(
                id=run_id, created_at=now_iso(), status="running", device=device, suite_name=suite_name,
                suite_text=suite_text, repetitions=repetitions, timeout_s=timeout_s, model_sha256=model_sha256,
                runtime_key=runtime_key, facts_json=json.dumps(facts), command_json=json.dumps(command),
                edgebench_version=version, device_identity=device_identity,
            ))
            conn.execute(cases_t.insert(), [
                {"run_id": run_id, "case_key": c.key, "position": i, "case_json": json.dumps(c.to_json()),
                 "cores_json": json.dumps(cores[c.key].to_json()) if cores and c.key in cores else None}
                for i, c in enumerate(cases)
            ])
        self.artifacts_dir(run_id)
        return run_id

    def record_execution(
        self,
        run_id: str,
        case: Case,
        rep: int,
        *,
        status: str,
        exit_code: int | None,
        wall_s: float | None,
        started_at: str,
        error: str | None,
        build: str | None,
        raw: ExecutionRaw,
        metrics: list[Metric],
    ) -> int:
        """Store one process run, its metrics and its files (`<case>/rep<N>.*` in the run's
        folder) atomically, replacing an earlier try."""
        with self.transaction() as conn:
            conn.execute(delete(executions_t).where(
                executions_t.c.run_id == run_id, executions_t.c.case_key == case.key, executions_t.c.rep == rep))
            inserted = conn.execute(executions_t.insert().values(
                run_id=run_id, case_key=case.key, rep=rep, status=status, exit_code=exit_code, wall_s=wall_s,
                started_at=started_at, error=error, build=build, raw_json=json.dumps(raw.to_json()),
            ))
            execution_id = int(inserted.inserted_primary_key[0])
            if metrics:
                conn.execute(measurements_t.insert(), [
                    {"execution_id": execution_id, "metric": m.name, "value": m.value, "unit": m.unit,
                     "missing_reason": m.missing_reason, "samples_json": json.dumps(list(m.samples))}
                    for m in metrics
                ])
            folder = self.artifacts_dir(run_id)
            artifacts.save(conn, run_id, folder, (folder / case.key).glob(f"rep{rep}.*"))
        return execution_id

    def _update_run(self, run_id: str, **values: Any) -> None:
        with self.transaction() as conn:
            conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(**values))

    def finish_run(self, run_id: str, status: str, note: str | None = None) -> None:
        """Mark the run done and store the rest of its folder: the run's own files (facts,
        manifests, suite), not the case folders, whose files `record_execution` stores with
        their rows; a file there without its row is never stored. (A name starting with `.`
        is a write in progress.)"""
        with self.transaction() as conn:
            conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(status=status, finished_at=now_iso(), note=note))
            folder = self.artifacts_dir(run_id)
            artifacts.save(conn, run_id, folder,
                           (f for f in folder.iterdir() if f.is_file() and f.name not in DERIVED and not f.name.startswith(".")))

    def set_repetitions(self, run_id: str, repetitions: int) -> None:
        """Sustained mode decides the number of rounds as it goes."""
        self._update_run(run_id, repetitions=repetitions)

    def set_stop(self, run_id: str, stop: Stop) -> None:
        """Why a precision target gave its case no more rounds (replacing an earlier verdict)."""
        with self.transaction() as conn:
            conn.execute(update(cases_t).where(cases_t.c.run_id == run_id, cases_t.c.case_key == stop.case_key)
                         .values(stop_json=json.dumps(stop.to_json())))

    def mark_running(self, run_id: str) -> None:
        self._update_run(run_id, status="running", finished_at=None)

    # --- reading -------------------------------------------------------------------------

    def _runs(self, statement: Executable) -> list[RunRecord]:
        return [RunRecord.from_row(r) for r in self._read(statement)]

    def run(self, run_id: str) -> RunRecord:
        """The run of this id, or the one run whose id starts with it, or (`latest`) the newest."""
        rows = self._runs(select(runs_t).where(runs_t.c.id == run_id))
        return rows[0] if rows else self._by_prefix(run_id)

    def _by_prefix(self, prefix: str) -> RunRecord:
        rows = self._runs(select(runs_t).where(runs_t.c.id.startswith(prefix, autoescape=True)).order_by(runs_t.c.id))
        if len(rows) == 1:
            return rows[0]
        if prefix == "latest":
            latest = self._runs(select(runs_t).order_by(runs_t.c.created_at.desc(), runs_t.c.id.desc()).limit(1))
            if latest:
                return latest[0]
        known = ", ".join(r.id for r in self.runs()[:5]) or "none yet"
        what = "matches several runs" if rows else "is not in the store"
        raise StoreError(f"run {prefix!r} {what} ({self.where}); recent runs: {known}")

    def runs(self) -> list[RunRecord]:
        """Every run, newest first."""
        return self._runs(select(runs_t).order_by(runs_t.c.created_at.desc(), runs_t.c.id.desc()))

    def history(self, run_id: str, limit: int | None = None) -> list[RunRecord]:
        """Runs of the same device (by identity), suite and model as this one, created up to it
        (itself included), newest first: one indexed query, not a scan of every run."""
        this = self.run(run_id)
        r = runs_t.c
        same_device = (r.device_identity == this.device_identity if this.device_identity
                       else (r.device_identity.is_(None) & (r.device == this.device)))
        return self._runs(
            select(runs_t).where(same_device, r.suite_name == this.suite_name, r.model_sha256 == this.model_sha256,
                                 r.created_at <= this.created_at)
            .order_by(r.created_at.desc(), r.id.desc()).limit(limit)
        )

    def cases(self, run_id: str) -> list[Case]:
        rows = self._read(select(cases_t.c.case_json).where(cases_t.c.run_id == run_id).order_by(cases_t.c.position))
        return [Case.from_json(json.loads(r["case_json"])) for r in rows]

    def case_cores(self, run_id: str) -> dict[str, CoreChoice]:
        """Per case key: how its threads were chosen for the device (cases without a choice are absent)."""
        c = cases_t.c
        rows = self._read(select(c.case_key, c.cores_json).where(c.run_id == run_id, c.cores_json.is_not(None)))
        return {r["case_key"]: CoreChoice.from_json(json.loads(r["cores_json"])) for r in rows}

    def stops(self, run_id: str) -> dict[str, Stop]:
        """Per case key: why a precision target stopped its rounds (absent: no target)."""
        c = cases_t.c
        rows = self._read(select(c.stop_json).where(c.run_id == run_id, c.stop_json.is_not(None)).order_by(c.position))
        return {stop.case_key: stop for stop in (Stop.from_json(json.loads(r["stop_json"])) for r in rows)}

    def executions(self, run_id: str) -> list[Execution]:
        rows = self._read(select(executions_t).where(executions_t.c.run_id == run_id).order_by(executions_t.c.id))
        return [
            Execution(
                id=r["id"], case_key=r["case_key"], rep=r["rep"], status=r["status"], exit_code=r["exit_code"],
                wall_s=r["wall_s"], error=r["error"], build=r["build"], raw=ExecutionRaw.from_json(json.loads(r["raw_json"])),
            )
            for r in rows
        ]

    def measurements(self, run_ids: list[str]) -> Iterator[RowMapping]:
        e, m = executions_t.c, measurements_t.c
        yield from self._read(
            select(e.run_id, e.case_key, e.rep, e.status, e.build, m.metric, m.value, m.unit, m.missing_reason, m.samples_json)
            .join_from(measurements_t, executions_t, e.id == m.execution_id)
            .where(e.run_id.in_(run_ids))
            .order_by(e.run_id, e.case_key, e.rep)
        )

    def model_info(self, sha256: str) -> dict[str, Any]:
        rows = self._read(select(models.c.info_json).where(models.c.sha256 == sha256))
        return json.loads(rows[0]["info_json"]) if rows else {}

    def runtime_manifest(self, key: str | None) -> dict[str, Any]:
        rows = self._read(select(runtimes.c.manifest_json).where(runtimes.c.key == key))
        return json.loads(rows[0]["manifest_json"]) if rows else {}

    def wall_times(self, device: str) -> dict[str, float]:
        """Mean wall seconds per case key on this device, over every stored run (for --dry-run)."""
        e = executions_t.c
        rows = self._read(
            select(e.case_key, func.avg(e.wall_s).label("wall"))
            .join_from(executions_t, runs_t, runs_t.c.id == e.run_id)
            .where(runs_t.c.device == device, e.wall_s.is_not(None))
            .group_by(e.case_key)
        )
        return {r["case_key"]: float(r["wall"]) for r in rows}

    def artifacts(self, run_id: str, pattern: str = "*") -> dict[str, bytes]:
        """The run's stored files by name (relative to its folder), those matching `pattern`."""
        with self.engine.connect() as conn:
            return artifacts.load(conn, run_id, pattern)

    def export_artifacts(self, run_id: str, dest: Path) -> list[Path]:
        return artifacts.write_out(self.artifacts(run_id), Path(dest))

    def schema_version(self) -> int:
        return int(self._read(select(schema.schema_version.c.version))[0]["version"])
