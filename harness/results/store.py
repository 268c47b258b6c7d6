"""The results store: SQLite (WAL) plus an artifacts folder per run.

Raw values are stored; statistics are derived when reading. Each finished process run of a
case is committed in its own transaction, so a crash loses at most the one in flight.
The schema is versioned; migrations run forward, and a store newer than the code is refused.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from harness.errors import StoreError
from harness.plan.cases import Case
from harness.results.records import Metric

SCHEMA_VERSION = 1

_SCHEMA_V1 = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,            -- running | finished | failed | interrupted
    device TEXT NOT NULL,
    suite_name TEXT NOT NULL,
    suite_text TEXT NOT NULL,
    repetitions INTEGER NOT NULL,
    timeout_s REAL NOT NULL,
    model_sha256 TEXT NOT NULL,
    runtime_key TEXT,
    facts_json TEXT NOT NULL,
    command_json TEXT NOT NULL,
    edgebench_version TEXT NOT NULL,
    note TEXT
);
CREATE TABLE models (sha256 TEXT PRIMARY KEY, info_json TEXT NOT NULL);
CREATE TABLE runtimes (key TEXT PRIMARY KEY, manifest_json TEXT NOT NULL);
CREATE TABLE cases (
    run_id TEXT NOT NULL REFERENCES runs(id),
    case_key TEXT NOT NULL,
    position INTEGER NOT NULL,
    case_json TEXT NOT NULL,
    PRIMARY KEY (run_id, case_key)
);
CREATE TABLE executions (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id),
    case_key TEXT NOT NULL,
    rep INTEGER NOT NULL,            -- which process repetition (round) of the case
    status TEXT NOT NULL,            -- ok | failed | timeout | oom
    exit_code INTEGER,
    wall_s REAL,
    started_at TEXT NOT NULL,
    error TEXT,
    build TEXT,
    raw_json TEXT NOT NULL,
    UNIQUE (run_id, case_key, rep)
);
CREATE TABLE measurements (
    execution_id INTEGER NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    value REAL,                      -- NULL: missing, with the reason beside it
    unit TEXT NOT NULL,
    missing_reason TEXT,
    samples_json TEXT NOT NULL,
    PRIMARY KEY (execution_id, metric)
);
"""

# version N -> SQL that brings a version N-1 store to N.
MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    raw: dict[str, Any]


class Store:
    """Open (creating or migrating) `<root>/edgebench.sqlite`; artifacts under `<root>/runs/`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "edgebench.sqlite"
        try:
            self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open results store {self.path}: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        """Bring the schema up to date; a lock file serialises stores opened at the same moment
        (lab workers, two lab runs), which would otherwise both create the tables."""
        with (self.root / ".edgebench.sqlite.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._migrate_locked()

    def _migrate_locked(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.db.execute("SELECT version FROM schema_version").fetchone()
        current = row["version"] if row else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"results store {self.path} has schema version {current}, newer than this edgebench "
                f"({SCHEMA_VERSION}); upgrade edgebench or use another --results folder"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self.db:
                self.db.executescript(MIGRATIONS[version])
                self.db.execute("DELETE FROM schema_version")
                self.db.execute("INSERT INTO schema_version VALUES (?)", (version,))

    # --- writing -------------------------------------------------------------------------

    def artifacts_dir(self, run_id: str) -> Path:
        path = self.root / "runs" / run_id
        path.mkdir(parents=True, exist_ok=True)
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
        command: list[str],
        version: str,
    ) -> str:
        run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?)", (model_sha256, json.dumps(model_info))
            )
            if runtime_key and runtime_manifest:
                self.db.execute(
                    "INSERT OR REPLACE INTO runtimes VALUES (?, ?)", (runtime_key, json.dumps(runtime_manifest))
                )
            self.db.execute(
                "INSERT INTO runs (id, created_at, status, device, suite_name, suite_text, repetitions, timeout_s,"
                " model_sha256, runtime_key, facts_json, command_json, edgebench_version)"
                " VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id, now_iso(), device, suite_name, suite_text, repetitions, timeout_s, model_sha256,
                    runtime_key, json.dumps(facts), json.dumps(command), version,
                ),
            )
            self.db.executemany(
                "INSERT INTO cases VALUES (?, ?, ?, ?)",
                [(run_id, c.key, i, json.dumps(c.to_json())) for i, c in enumerate(cases)],
            )
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
        raw: dict[str, Any],
        metrics: list[Metric],
    ) -> int:
        """Store one process run and its metrics atomically (replacing an earlier failed try)."""
        with self.db:
            self.db.execute("DELETE FROM executions WHERE run_id=? AND case_key=? AND rep=?", (run_id, case.key, rep))
            cur = self.db.execute(
                "INSERT INTO executions (run_id, case_key, rep, status, exit_code, wall_s, started_at, error, build,"
                " raw_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, case.key, rep, status, exit_code, wall_s, started_at, error, build, json.dumps(raw)),
            )
            execution_id = int(cur.lastrowid or 0)
            self.db.executemany(
                "INSERT INTO measurements VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (execution_id, m.name, m.value, m.unit, m.missing_reason, json.dumps(list(m.samples)))
                    for m in metrics
                ],
            )
        return execution_id

    def finish_run(self, run_id: str, status: str, note: str | None = None) -> None:
        with self.db:
            self.db.execute(
                "UPDATE runs SET status=?, finished_at=?, note=? WHERE id=?", (status, now_iso(), note, run_id)
            )

    def set_repetitions(self, run_id: str, repetitions: int) -> None:
        """Sustained mode decides the number of rounds as it goes."""
        with self.db:
            self.db.execute("UPDATE runs SET repetitions=? WHERE id=?", (repetitions, run_id))

    def set_facts(self, run_id: str, facts: dict[str, Any]) -> None:
        """Add to a run's device facts what is measured after the run is created (bandwidth)."""
        with self.db:
            self.db.execute("UPDATE runs SET facts_json=? WHERE id=?", (json.dumps(facts), run_id))

    def mark_running(self, run_id: str) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET status='running', finished_at=NULL WHERE id=?", (run_id,))

    # --- reading -------------------------------------------------------------------------

    def run(self, run_id: str) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            row = self._by_prefix(run_id)
        return row

    def _by_prefix(self, prefix: str) -> sqlite3.Row:
        rows = self.db.execute("SELECT * FROM runs WHERE id LIKE ? ORDER BY id", (prefix + "%",)).fetchall()
        if len(rows) == 1:
            return rows[0]
        if prefix == "latest":
            latest = self.db.execute("SELECT * FROM runs ORDER BY created_at DESC, id DESC LIMIT 1").fetchone()
            if latest is not None:
                return latest
        known = ", ".join(r["id"] for r in self.runs()[:5]) or "none yet"
        what = "matches several runs" if rows else "is not in the store"
        raise StoreError(f"run {prefix!r} {what} ({self.path}); recent runs: {known}")

    def runs(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM runs ORDER BY created_at DESC, id DESC").fetchall()

    def cases(self, run_id: str) -> list[Case]:
        rows = self.db.execute("SELECT case_json FROM cases WHERE run_id=? ORDER BY position", (run_id,)).fetchall()
        return [Case.from_json(json.loads(r["case_json"])) for r in rows]

    def executions(self, run_id: str) -> list[Execution]:
        rows = self.db.execute("SELECT * FROM executions WHERE run_id=? ORDER BY id", (run_id,)).fetchall()
        return [
            Execution(
                id=r["id"], case_key=r["case_key"], rep=r["rep"], status=r["status"], exit_code=r["exit_code"],
                wall_s=r["wall_s"], error=r["error"], build=r["build"], raw=json.loads(r["raw_json"]),
            )
            for r in rows
        ]

    def measurements(self, run_ids: list[str]) -> Iterator[sqlite3.Row]:
        marks = ",".join("?" * len(run_ids))
        yield from self.db.execute(
            "SELECT e.run_id, e.case_key, e.rep, e.status, e.build, m.metric, m.value, m.unit, m.missing_reason,"
            f" m.samples_json FROM measurements m JOIN executions e ON e.id = m.execution_id WHERE e.run_id IN ({marks})"
            " ORDER BY e.run_id, e.case_key, e.rep",
            run_ids,
        )

    def model_info(self, sha256: str) -> dict[str, Any]:
        row = self.db.execute("SELECT info_json FROM models WHERE sha256=?", (sha256,)).fetchone()
        return json.loads(row["info_json"]) if row else {}

    def runtime_manifest(self, key: str | None) -> dict[str, Any]:
        row = self.db.execute("SELECT manifest_json FROM runtimes WHERE key=?", (key,)).fetchone()
        return json.loads(row["manifest_json"]) if row else {}

    def wall_times(self, device: str) -> dict[str, float]:
        """Mean wall seconds per case key on this device, over every stored run (for --dry-run)."""
        rows = self.db.execute(
            "SELECT e.case_key, AVG(e.wall_s) AS wall FROM executions e JOIN runs r ON r.id = e.run_id"
            " WHERE r.device=? AND e.wall_s IS NOT NULL GROUP BY e.case_key",
            (device,),
        ).fetchall()
        return {r["case_key"]: r["wall"] for r in rows}
