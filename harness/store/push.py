"""Copy runs, with their process runs, metrics and artifacts, from one store into another (a
laptop's field runs into the lab's shared store).

Idempotent: a run already there is updated only where the source moved on (its status, a
process run tried again, a new file), so pushing twice copies nothing the second time. Each
run is copied in one transaction of the target.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, delete, select, update

from harness.store.db import Store
from harness.store.schema import artifacts, blobs, cases, executions, measurements, models, runs, runtimes
from harness.store.sql import insert_missing

# The run columns a later finish or resume changes (facts: only in stores written before a run's
# facts were written once, when its bandwidth figure was added after the run was created).
_MUTABLE = ("finished_at", "status", "repetitions", "facts_json", "note")


@dataclass(frozen=True)
class Pushed:
    runs: int  # new or updated
    executions: int
    artifacts: int


def push(source: Store, target: Store, run_ids: list[str]) -> Pushed:
    totals = [0, 0, 0]
    with source.engine.connect() as src:
        for run_id in run_ids:
            with target.transaction() as dst:
                counts = _push_run(src, dst, run_id)
            totals = [a + b for a, b in zip(totals, counts)]
    return Pushed(*totals)


def _push_run(src: Connection, dst: Connection, run_id: str) -> tuple[int, int, int]:
    run = src.execute(select(runs).where(runs.c.id == run_id)).mappings().one()
    for table, key, value in ((models, "sha256", run["model_sha256"]), (runtimes, "key", run["runtime_key"])):
        row = src.execute(select(table).where(table.c[key] == value)).mappings().first()
        if row is not None:
            insert_missing(dst, table, [key], dict(row))
    there = dst.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    changed = there is None or any(there[c] != run[c] for c in _MUTABLE)
    if there is None:
        dst.execute(runs.insert().values(**run))
    elif changed:
        dst.execute(update(runs).where(runs.c.id == run_id).values(**{c: run[c] for c in _MUTABLE}))
    for row in src.execute(select(cases).where(cases.c.run_id == run_id)).mappings():
        insert_missing(dst, cases, ["run_id", "case_key"], dict(row))
    return int(changed), _push_executions(src, dst, run_id), _push_artifacts(src, dst, run_id)


def _push_executions(src: Connection, dst: Connection, run_id: str) -> int:
    """Process runs by their identity (case, rep); one the target holds as it is stays."""
    e = executions.c
    held = {(r.case_key, r.rep): (r.status, r.started_at, r.raw_json)
            for r in dst.execute(select(e.case_key, e.rep, e.status, e.started_at, e.raw_json).where(e.run_id == run_id))}
    copied = 0
    for row in src.execute(select(executions).where(e.run_id == run_id).order_by(e.id)).mappings():
        if held.get((row["case_key"], row["rep"])) == (row["status"], row["started_at"], row["raw_json"]):
            continue
        dst.execute(delete(executions).where(e.run_id == run_id, e.case_key == row["case_key"], e.rep == row["rep"]))
        new_id = dst.execute(executions.insert().values(**{k: v for k, v in row.items() if k != "id"})).inserted_primary_key[0]
        values = [{**dict(m), "execution_id": new_id}
                  for m in src.execute(select(measurements).where(measurements.c.execution_id == row["id"])).mappings()]
        if values:
            dst.execute(measurements.insert(), values)
        copied += 1
    return copied


def _push_artifacts(src: Connection, dst: Connection, run_id: str) -> int:
    a = artifacts.c
    held = dict(dst.execute(select(a.path, a.sha256).where(a.run_id == run_id)).all())
    copied = 0
    for path, sha in src.execute(select(a.path, a.sha256).where(a.run_id == run_id)).all():
        if held.get(path) == sha:
            continue
        if dst.execute(select(blobs.c.sha256).where(blobs.c.sha256 == sha)).first() is None:  # another push may add it meanwhile
            insert_missing(dst, blobs, ["sha256"], dict(src.execute(select(blobs).where(blobs.c.sha256 == sha)).mappings().one()))
        dst.execute(delete(artifacts).where(a.run_id == run_id, a.path == path))
        dst.execute(artifacts.insert().values(run_id=run_id, path=path, sha256=sha))
        copied += 1
    return copied
