"""The results store on both engines (SQLite file, real PostgreSQL): the same suite for each.

Writes and reads through the public interface, replacing a process run without duplicating
it, refusing a newer schema, migrating at most once when opened at the same moment, the
migration of a store written by the first release (tests/data/store/v1.sqlite, made with the
schema-1 code), and credentials that never appear in what the tool prints.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from dataclasses import fields
from types import SimpleNamespace
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from harness.errors import EdgebenchError, StoreError
from harness.plan.planner import Plan
from harness.records import Case, Metric
from harness.run.session import estimate_seconds
from harness.store.db import ExecutionRaw, RunRecord, Store
from harness.store.location import store_url as resolve_url
from harness.store.schema import SCHEMA_VERSION, runs, schema_version

from .conftest import DATA, REPO
from .pg_fixture import PASSWORD

CASES = [Case("llamabench", "prefill", 16, 0, 0, inprocess_reps=2), Case("llamabench", "decode", 0, 4, 16, inprocess_reps=2)]


def new_run(store: Store, device: str = "local", facts: dict | None = None) -> str:
    return store.create_run(
        device=device, suite_name="t", suite_text="", repetitions=2, timeout_s=30, cases=CASES,
        model_sha256="0" * 64, model_info={"filename": "m.gguf"}, runtime_key="rt", runtime_manifest={"target": "host"},
        facts=facts or {"name": device}, command={}, version="test",
    )


def record(store: Store, run_id: str, case: Case, rep: int, value: float, status: str = "ok") -> int:
    return store.record_execution(
        run_id, case, rep, status=status, exit_code=0, wall_s=1.0 + rep, started_at="2026-01-01T00:00:00+00:00",
        error=None, build="b", raw=ExecutionRaw(argv=(f"rep{rep}",)),
        metrics=[Metric("decode_tps", value, "tok/s", samples=(value, value)), Metric.missing("avg_power_w", "W", "no sensor")],
    )


@pytest.fixture
def store(tmp_path: Path, store_url: str | None):
    with Store(tmp_path / "results", store_url) as opened:
        yield opened


def test_a_run_round_trips(store):
    run_id = new_run(store, facts={"name": "local", "bandwidth": {"gbs": 12.5}})
    for rep in range(2):
        for case in CASES:
            record(store, run_id, case, rep, 100.0 + rep)
    store.finish_run(run_id, "finished", "all good")
    row = store.run(run_id)
    assert (row.status, row.note, row.device) == ("finished", "all good", "local")
    assert row.facts == {"name": "local", "bandwidth": {"gbs": 12.5}} and row.command == {} and row.device_key == "name:local"
    assert store.run(run_id[:10]).id == run_id and store.run("latest").id == run_id
    assert [c.key for c in store.cases(run_id)] == [c.key for c in CASES]
    assert [(e.case_key, e.rep, e.raw) for e in store.executions(run_id)] == [
        (c.key, rep, ExecutionRaw(argv=(f"rep{rep}",))) for rep in range(2) for c in CASES
    ]
    rows = list(store.measurements([run_id]))
    assert len(rows) == 8
    missing = [m for m in rows if m["metric"] == "avg_power_w"]
    assert all(m["value"] is None and m["missing_reason"] == "no sensor" for m in missing)
    assert store.model_info("0" * 64) == {"filename": "m.gguf"} and store.runtime_manifest("rt") == {"target": "host"}
    assert store.wall_times("local") == {CASES[0].key: 1.5, CASES[1].key: 1.5}
    store.mark_running(run_id)
    assert store.run(run_id).status == "running" and store.run(run_id).finished_at is None


def test_a_run_record_has_a_field_per_column():
    """A column added to `runs` needs its field: the record is built from the row whole."""
    parsed = {"facts_json": "facts", "command_json": "command"}
    assert [f.name for f in fields(RunRecord)] == [parsed.get(c.name, c.name) for c in runs.columns]


def test_the_dry_run_estimate_counts_a_quality_case_once(store):
    quality = Case("perplexity", "quality", 256, 0, 0, quality=(("chunks", 1),))
    run_id = new_run(store)
    record(store, run_id, CASES[0], 0, 100.0)  # 1.0 s
    store.record_execution(run_id, quality, 0, status="ok", exit_code=0, wall_s=40.0, started_at="2026-01-01T00:00:00+00:00",
                           error=None, build="b", raw=ExecutionRaw(), metrics=[])
    prepared = SimpleNamespace(options=SimpleNamespace(device="local"), plan=Plan((CASES[0], quality), repetitions=3))
    assert estimate_seconds(store, prepared) == 3 * 1.0 + 40.0  # three rounds of the speed case, the quality case once
    assert prepared.plan.describe_processes() == "4 processes (3 rounds of 1 case, and 1 case run once)"
    prepared.plan = Plan((CASES[0], CASES[1]), repetitions=2)
    assert estimate_seconds(store, prepared) is None  # CASES[1] never ran on this device


def test_writing_a_process_run_again_replaces_it(store):
    run_id = new_run(store)
    record(store, run_id, CASES[0], 0, 1.0, status="failed")
    record(store, run_id, CASES[0], 0, 2.0)
    (execution,) = store.executions(run_id)
    assert execution.status == "ok"
    assert sorted(m["value"] or 0 for m in store.measurements([run_id]) if m["metric"] == "decode_tps") == [2.0]
    new_run(store)  # the same model and runtime again: upserted, not a conflict
    assert len(store.runs()) == 2


def test_unknown_and_ambiguous_runs_are_errors(store):
    with pytest.raises(StoreError, match="not in the store"):
        store.run("nope")
    new_run(store), new_run(store)
    with pytest.raises(StoreError, match="matches several runs"):
        store.run("2")


def test_a_newer_schema_is_refused(tmp_path, store_url):
    with Store(tmp_path, store_url) as store, store.engine.begin() as conn:
        conn.execute(schema_version.update().values(version=SCHEMA_VERSION + 1))
    with pytest.raises(StoreError, match="newer than this edgebench"):
        Store(tmp_path, store_url)


def test_stores_opened_at_once_migrate_once(tmp_path, store_url):
    errors: list[Exception] = []

    def open_store() -> None:
        try:
            Store(tmp_path / "shared", store_url).close()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store(tmp_path / "shared", store_url) as store:
        assert store.schema_version() == SCHEMA_VERSION
        with store.engine.connect() as conn:
            assert conn.execute(schema_version.select()).scalars().all() == [SCHEMA_VERSION]


def _shape(url) -> dict:
    """Tables, columns, unique keys and indexes of a store, as the database reports them.

    Types are compared by the Python type they hold (SQLite's REAL and FLOAT are one type), and
    NULL-ability only off the primary key (SQLite lets a TEXT PRIMARY KEY hold NULL unless told).
    """
    engine = create_engine(url)
    try:
        found = inspect(engine)

        def column(c: dict, key: list[str]) -> tuple:
            return c["name"], c["type"].python_type, c["nullable"] and c["name"] not in key

        return {
            t: (
                [column(c, found.get_pk_constraint(t)["constrained_columns"]) for c in found.get_columns(t)],
                sorted(tuple(u["column_names"]) for u in found.get_unique_constraints(t)),
                sorted((i["name"], tuple(i["column_names"])) for i in found.get_indexes(t)),
            )
            for t in sorted(found.get_table_names())
        }
    finally:
        engine.dispose()


def test_a_store_from_the_first_release_is_migrated_with_its_data(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(DATA / "store" / "v1.sqlite", old / "edgebench.sqlite")
    with Store(old) as store:
        assert store.schema_version() == SCHEMA_VERSION
        (row,) = store.runs()
        assert (row.status, row.suite_name, row.runtime_key) == ("finished", "quick", "host-abc")
        assert [(e.rep, e.status) for e in store.executions(row.id)] == [(0, "ok"), (0, "ok"), (1, "ok"), (1, "ok")]
        values = sorted((m["metric"], m["value"]) for m in store.measurements([row.id]) if m["value"] is not None)
        assert values == [("decode_tps", 101.0), ("decode_tps", 102.0), ("prefill_tps", 100.0), ("prefill_tps", 101.0)]
        record(store, row.id, CASES[0], 2, 5.0)  # and it takes new runs
    Store(tmp_path / "fresh").close()
    assert _shape(resolve_url(old)) == _shape(resolve_url(tmp_path / "fresh"))


def test_postgres_credentials_are_never_printed_and_sslmode_passes_through(tmp_path, pg_url):
    with Store(tmp_path, pg_url + "?sslmode=disable") as store:
        assert PASSWORD not in store.where and "***" in store.where
        new_run(store)
    wrong = pg_url.replace(PASSWORD, "not-" + PASSWORD)
    with pytest.raises(StoreError) as failed:
        Store(tmp_path, wrong)
    assert "not-" + PASSWORD not in str(failed.value) and "password authentication failed" in str(failed.value)
    with pytest.raises(StoreError, match="SSL"):  # this server has no TLS: require must reach the driver
        Store(tmp_path, pg_url + "?sslmode=require")


def test_the_cli_reads_a_postgres_store_from_option_or_environment(tmp_path, pg_url):
    with Store(tmp_path, pg_url) as store:
        run_id = new_run(store)

    def edgebench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        import os

        return subprocess.run([sys.executable, "-m", "harness", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO), **(env or {})})

    listed = edgebench("results", "list", "--store", pg_url)
    assert listed.returncode == 0, listed.stderr
    assert run_id in listed.stdout
    from_env = edgebench("results", "list", env={"EDGEBENCH_STORE": pg_url})
    assert run_id in from_env.stdout
    unknown = edgebench("results", "show", "nope", "--store", pg_url)
    assert unknown.returncode == 2 and "not in the store" in unknown.stderr and PASSWORD not in unknown.stderr
    assert not (tmp_path / "results").exists()  # nothing written locally for a remote store


def test_many_writer_processes_lose_and_duplicate_nothing_when_one_is_killed(tmp_path, store_url):
    """4 processes x 50 process runs into one store; one is SIGKILLed midway (often inside a
    transaction). The others' runs are complete, nothing is there twice, every execution the
    killed writer committed is there with all its metrics, and resuming it fills in the rest."""
    import os
    import signal

    from .store_writer import METRICS

    url, count = store_url or "-", 50
    Store(tmp_path, store_url).close()  # migrated once, before the writers race
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def writer(*extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "tests.store_writer", str(tmp_path), url, str(count), *extra],
                                cwd=REPO, stdout=subprocess.PIPE, text=True, env=env)

    procs = [writer() for _ in range(4)]
    victim_lines: list[str] = []
    for line in procs[0].stdout:  # the victim: killed after 20 commits, while it writes the next
        victim_lines.append(line.split(maxsplit=1)[1].strip())
        if len(victim_lines) == 21:
            os.kill(procs[0].pid, signal.SIGKILL)
            break
    victim_lines += [line.split(maxsplit=1)[1].strip() for line in procs[0].stdout]
    procs[0].wait()
    assert procs[0].returncode == -signal.SIGKILL
    others = [p.communicate(timeout=300)[0] for p in procs[1:]]
    assert all(p.returncode == 0 for p in procs[1:])

    with Store(tmp_path, store_url) as store:
        for out in others:
            run_id = out.split()[1]
            keys = [(e.case_key, e.rep) for e in store.executions(run_id)]
            assert len(keys) == count and len(set(keys)) == count
        victim = victim_lines[0]
        committed = {tuple(line.rsplit(" ", 1)) for line in victim_lines[1:]}
        stored = [(e.case_key, str(e.rep)) for e in store.executions(victim)]
        assert len(stored) == len(set(stored)) and committed <= set(stored) and len(stored) <= len(committed) + 1
        per_execution: dict[tuple, set] = {}
        for m in store.measurements([victim]):
            per_execution.setdefault((m["case_key"], m["rep"]), set()).add(m["metric"])
        assert all(metrics == set(METRICS) for metrics in per_execution.values()) and len(per_execution) == len(stored)

    resumed = writer("--resume", victim)
    assert resumed.wait(timeout=300) == 0
    with Store(tmp_path, store_url) as store:
        keys = [(e.case_key, e.rep) for e in store.executions(victim)]
        assert len(keys) == count and len(set(keys)) == count


# Identity files recorded on two hosts whose inventories both call them "local", and a phone.
PC = {"product_name": "OptiPlex 7090\n", "product_serial": "4XKQ2M3\n", "machine_id": "0f8e...\n"}
BOARD = {"product_serial": "To Be Filled By O.E.M.\n", "board_serial": "10000000a1b2c3d4\x00", "machine_id": "9d2c\n"}


def test_identity_prefers_the_most_stable_source_and_skips_placeholders():
    from harness.drivers.identity import adb_identity, identity_from

    assert identity_from(PC, "pc") == "dmi:OptiPlex 7090:4XKQ2M3"
    assert identity_from(BOARD, "pi") == "board:10000000a1b2c3d4"
    assert identity_from({"machine_id": "abc\n"}, "vm") == "machine-id:abc"
    assert identity_from({}, "bare") == "hostname:bare"
    assert adb_identity("R5CT1234\n", "192.168.1.7:5555") == "android:R5CT1234"
    assert adb_identity("", "emulator-5554") == "android:emulator-5554"


def test_identity_keeps_two_local_hosts_apart_and_joins_one_device_under_two_names(store):
    from harness.drivers.identity import identity_from
    from harness.analysis.tables import history_frame
    from harness.analysis.compare import previous_run

    pc, board = identity_from(PC, "pc"), identity_from(BOARD, "pi")

    def finished_run(name: str, identity: str, value: float) -> str:
        run_id = store.create_run(
            device=name, device_identity=identity, suite_name="t", suite_text="", repetitions=1, timeout_s=30,
            cases=CASES, model_sha256="0" * 64, model_info={}, runtime_key=None, runtime_manifest=None,
            facts={"name": name, "identity": identity}, command={}, version="test",
        )
        record(store, run_id, CASES[1], 0, value)
        store.finish_run(run_id, "finished")
        return run_id

    pc_first = finished_run("local", pc, 10.0)
    finished_run("local", board, 99.0)  # later, same name, another machine
    pc_renamed = finished_run("office-pc", pc, 11.0)  # the PC under another inventory's name
    assert previous_run(store, pc_renamed) == pc_first
    means = sorted(history_frame(store, [pc_renamed])["mean"])
    assert means == [10.0, 11.0]  # the board's 99 never mixes in


def _run_with_files(store: Store) -> str:
    """A run whose folder holds what the runner and session write: per-process files and facts."""
    run_id = new_run(store)
    folder = store.artifacts_dir(run_id)
    (folder / "facts.json").write_text('{"name": "local"}')
    for rep in range(2):
        for case in CASES:
            (folder / case.key).mkdir(exist_ok=True)
            (folder / case.key / f"rep{rep}.stdout").write_text(f'{{"rep": {rep}}}\n' * 50)
            (folder / case.key / f"rep{rep}.telemetry.csv").write_text("t,rss\n0,1\n")
            record(store, run_id, case, rep, 100.0 + rep)
    store.finish_run(run_id, "finished")
    (folder / "report.html").write_text("<html>")  # derived: never stored
    return run_id


def test_artifacts_are_stored_with_the_run_and_exported_as_files(store, tmp_path):
    run_id = _run_with_files(store)
    stored = store.artifacts(run_id)
    folder = store.artifacts_dir(run_id)
    expected = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "report.html"}
    assert stored == expected and len(stored) == 9
    with store.engine.connect() as conn:  # identical telemetry files are one blob, compressed
        from sqlalchemy import func, select

        from harness.store.schema import blobs

        count, size, packed = conn.execute(select(func.count(), func.sum(blobs.c.size), func.sum(func.length(blobs.c.data)))).one()
    assert count == 4 and packed < size  # two stdouts (per rep), one telemetry csv, facts
    written = store.export_artifacts(run_id, tmp_path / "out")
    assert {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in written} == expected


def test_push_copies_runs_with_artifacts_once(tmp_path, store_url):
    with Store(tmp_path / "laptop") as laptop, Store(tmp_path / "lab", store_url) as lab:
        first, second = _run_with_files(laptop), _run_with_files(laptop)
        from harness.store.push import push

        pushed = push(laptop, lab, [first, second])
        assert (pushed.runs, pushed.executions, pushed.artifacts) == (2, 8, 18)
        again = push(laptop, lab, [first, second])
        assert (again.runs, again.executions, again.artifacts) == (0, 0, 0)
        for run_id in (first, second):
            assert [(e.case_key, e.rep, e.status) for e in lab.executions(run_id)] == [
                (e.case_key, e.rep, e.status) for e in laptop.executions(run_id)]
            assert sorted(map(tuple, map(dict.values, map(dict, lab.measurements([run_id]))))) == sorted(
                map(tuple, map(dict.values, map(dict, laptop.measurements([run_id])))))
            assert lab.artifacts(run_id) == laptop.artifacts(run_id)
        record(laptop, first, CASES[0], 0, 7.0, status="failed")  # the field run moved on: only that travels
        assert push(laptop, lab, [first]) == type(pushed)(runs=0, executions=1, artifacts=0)
        assert len(lab.executions(first)) == 4 and {len(lab.runs()), len(laptop.runs())} == {2}


def test_push_from_the_cli_masks_the_password(tmp_path, pg_url):
    with Store(tmp_path / "results") as laptop:
        run_id = _run_with_files(laptop)
    import os

    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "harness", "results", "push", "--to", pg_url, "--results", str(tmp_path / "results")]
    done = [subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env) for _ in range(2)]
    assert [d.returncode for d in done] == [0, 0], done[0].stderr
    assert "1 new or updated, 4 process run(s), 9 file(s) copied" in done[0].stdout
    assert "0 new or updated, 0 process run(s), 0 file(s) copied" in done[1].stdout
    assert all(PASSWORD not in d.stdout + d.stderr and "***" in d.stdout for d in done)
    exported = subprocess.run([sys.executable, "-m", "harness", "results", "export", run_id[:12], "--store", pg_url,
                               "--results", str(tmp_path / "elsewhere"), "--artifacts", str(tmp_path / "files")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "files" / "facts.json").read_text() == '{"name": "local"}'


# --- what a write reports: RETURNING, never rowcount (-1 for an INSERT on PostgreSQL + psycopg 3) ---

def _lease(identity: str, holder: str, pid: int) -> dict:
    import socket

    from harness.records import now_iso

    return {"identity": identity, "holder": holder, "host": socket.gethostname(), "pid": pid, "since": now_iso(), "heartbeat_at": now_iso()}


def test_insert_missing_is_true_exactly_when_it_inserted(store):
    from sqlalchemy import select

    from harness.store.schema import leases
    from harness.store.sql import insert_missing

    with store.transaction() as conn:
        assert insert_missing(conn, leases, ["identity"], _lease("dev", "first", 1)) is True
    with store.transaction() as conn:
        assert insert_missing(conn, leases, ["identity"], _lease("dev", "second", 2)) is False
        assert insert_missing(conn, leases, ["identity"], _lease("other", "third", 3)) is True
    with store.engine.connect() as conn:
        assert dict(conn.execute(select(leases.c.identity, leases.c.holder)).all()) == {"dev": "first", "other": "third"}


def test_insert_missing_racing_on_one_key_is_true_once(store):
    """Eight connections insert one key at once, each holding its transaction open a moment
    after the insert, so on PostgreSQL the others wait on the uncommitted row and then find it."""
    import time

    from sqlalchemy import func, select

    from harness.store.schema import leases
    from harness.store.sql import insert_missing

    start, answers, errors = threading.Barrier(8), [], []

    def insert(n: int) -> None:
        try:
            start.wait()
            with store.transaction() as conn:
                answers.append(insert_missing(conn, leases, ["identity"], _lease("dev", f"thread {n}", n)))
                time.sleep(0.2)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=insert, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(answers) == [False] * 7 + [True]
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(leases)).scalar() == 1


def test_a_lease_is_taken_fresh_taken_over_when_stale_and_refused_when_held(store):
    from sqlalchemy import select

    from harness.store.leases import try_acquire
    from harness.store.schema import leases

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    assert try_acquire(store, "free", "me") is None  # an empty table: taken (the bug: refused by itself)
    with store.transaction() as conn:
        conn.execute(leases.insert().values(**_lease("dead", "a run that died", int(gone))))
    assert try_acquire(store, "dead", "me") is None  # its pid is gone on this host: taken over
    import os

    with store.engine.connect() as conn:
        held = dict(conn.execute(select(leases.c.identity, leases.c.pid)).all())
    assert held == {"free": os.getpid(), "dead": os.getpid()}
    busy = try_acquire(store, "dead", "someone else")  # held, alive: refused, naming the holder
    assert busy is not None and busy["pid"] == os.getpid()


def test_lab_cancel_counts_what_it_cancelled_and_flagged(store):
    from sqlalchemy import update

    from harness.lab.jobs import LabRequest, create_jobs, jobs_of, request_cancel
    from harness.store.schema import lab_jobs

    request = LabRequest(devices=("a", "b", "c"), suite="quick")
    jobs = create_jobs(store, "lab-1", request, "quick", "", {d: (f"id:{d}", f"q.{d}") for d in request.devices})
    with store.transaction() as conn:
        conn.execute(update(lab_jobs).where(lab_jobs.c.id == jobs[0].id).values(status="running"))
        conn.execute(update(lab_jobs).where(lab_jobs.c.id == jobs[1].id).values(status="done"))
    assert request_cancel(store, "lab-1") == (1, 1)
    assert [(j.status, j.cancel) for j in jobs_of(store, "lab-1")] == [("running", True), ("done", False), ("cancelled", True)]
    assert request_cancel(store, "lab-1") == (0, 1) and request_cancel(store, "no-such-lab") == (0, 0)


def test_removing_a_schedule_removes_it_once(store, tmp_path):
    from harness.lab.jobs import LabRequest
    from harness.lab.schedule import add_schedule, remove_schedule, schedules

    entry = add_schedule(store, tmp_path / "lab.toml", LabRequest(devices=("a",), suite="quick"), None, 60.0)
    remove_schedule(store, entry.id)
    assert schedules(store) == []
    with pytest.raises(EdgebenchError, match=f"no schedule '{entry.id}'"):
        remove_schedule(store, entry.id)


# --- files out of the store: bounded, checked, never written through a link -----------------

def _plant_blob(store: Store, run_id: str, path: str, size: int, data: bytes, sha: str) -> None:
    from harness.store.schema import artifacts, blobs

    with store.transaction() as conn:
        conn.execute(blobs.insert().values(sha256=sha, size=size, data=data))
        conn.execute(artifacts.insert().values(run_id=run_id, path=path, sha256=sha))


@pytest.mark.parametrize("what, size, payload, message", [
    ("bomb", 10, b"\0" * (8 << 20), "does not inflate to its recorded 10 bytes"),
    ("short", 100, b"only these", "does not inflate to its recorded 100 bytes"),
    ("huge claim", 2**31 - 1, b"x", "beyond the"),  # the most an INTEGER holds
    ("other content", 3, b"abc", "does not match its sha256"),
])
def test_a_stored_blob_is_inflated_no_further_than_its_recorded_size(store, tmp_path, what, size, payload, message):
    import hashlib
    import zlib

    run_id = new_run(store)
    sha = hashlib.sha256(b"xyz" if what == "other content" else payload).hexdigest()
    _plant_blob(store, run_id, "case/rep0.stdout", size, zlib.compress(payload), sha)
    with pytest.raises(StoreError, match=message):
        store.artifacts(run_id)
    with pytest.raises(StoreError, match=message):
        store.export_artifacts(run_id, tmp_path / "out")
    assert not (tmp_path / "out" / "case").exists()


def test_export_never_writes_through_a_link_it_did_not_make(store, tmp_path):
    import os

    run_id = _run_with_files(store)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    case = CASES[0].key
    (out / case).mkdir(parents=True)
    (out / case / "rep0.stdout").symlink_to(victim)  # a link where an artifact goes
    with pytest.raises(StoreError, match="rep0.stdout is a symbolic link; not written through"):
        store.export_artifacts(run_id, out)
    exported = _cli(store, "results", "export", run_id, "--artifacts", str(out))
    assert exported.returncode == 2 and "is a symbolic link; not written through" in exported.stderr
    assert victim.read_text() == "keep me"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out2 = tmp_path / "out2"
    out2.mkdir()
    (out2 / case).symlink_to(elsewhere, target_is_directory=True)  # a link where a folder goes
    with pytest.raises(StoreError, match="is not a folder edgebench made"):
        store.export_artifacts(run_id, out2)
    assert list(elsewhere.iterdir()) == []

    out3 = tmp_path / "out3"
    (out3 / case).mkdir(parents=True)
    os.link(victim, out3 / case / "rep0.stdout")  # a hard link: replaced, not written through
    written = store.export_artifacts(run_id, out3)
    assert victim.read_text() == "keep me" and len(written) == 9
    assert (out3 / case / "rep0.stdout").read_bytes() == store.artifacts(run_id)[f"{case}/rep0.stdout"]
    assert [p.name for p in out3.rglob(".*")] == []  # no partial file left behind


def test_the_power_chart_reads_the_store_not_the_run_folder(store, tmp_path):
    """A report built on another host: the run folder is not there, the stored telemetry is."""
    import shutil as sh

    from harness.analysis.tables import power_series

    run_id = new_run(store)
    folder = store.artifacts_dir(run_id)
    (folder / CASES[0].key).mkdir()
    (folder / CASES[0].key / "rep0.telemetry.csv").write_text("t_monotonic_s,source,value,unit\n1.0,battery,3.5,W\n1.1,cpu,40,C\n1.2,battery,3.7,W\n")
    record(store, run_id, CASES[0], 0, 100.0)
    store.finish_run(run_id, "finished")
    sh.rmtree(folder)
    series = power_series(store, run_id)
    assert list(series["value"]) == [3.5, 3.7] and set(series["window"]) == {f"{CASES[0].key}/rep0"}
    assert not folder.exists()  # reading made no empty run folder either


def _cli(store: Store, *args: str) -> subprocess.CompletedProcess[str]:
    """`edgebench ARGS` against this store (its results folder, and its URL where not the default file)."""
    import os

    where = ["--results", str(store.root)]
    if store.url.get_backend_name() != "sqlite":
        where += ["--store", store.url.render_as_string(hide_password=False)]
    return subprocess.run([sys.executable, "-m", "harness", *args, *where], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)})


def test_results_list_takes_every_format(store, tmp_path):
    import csv
    import io

    from harness.cli.views import FORMATS

    run_id = new_run(store)
    store.finish_run(run_id, "finished")
    shown = {fmt: _cli(store, "results", "list", "--format", fmt) for fmt in FORMATS}
    assert all(done.returncode == 0 for done in shown.values()), {f: d.stderr for f, d in shown.items()}
    rows = list(csv.reader(io.StringIO(shown["csv"].stdout)))
    assert rows == [["run", "created", "status", "device", "suite", "model"],
                    [run_id, store.run(run_id).created_at, "finished", "local", "t", "m.gguf"]]
    assert f"| {run_id} |" in shown["markdown"].stdout and "| run | created |" in shown["markdown"].stdout
    assert all(run_id in shown[f].stdout and "m.gguf" in shown[f].stdout for f in ("table", "plain"))
    assert "─" in shown["table"].stdout and "─" not in shown["plain"].stdout
    bad = _cli(store, "results", "list", "--format", "yaml")
    assert bad.returncode == 2 and "unknown format 'yaml'" in bad.stderr


def test_lab_wait_for_an_unknown_lab_is_bad_input(tmp_path):
    import os

    done = subprocess.run([sys.executable, "-m", "harness", "lab", "wait", "lab-nope", "--results", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2 and "no lab 'lab-nope'" in done.stderr


def test_an_execution_raw_reads_and_writes_the_stored_json_unchanged():
    """Raws stored before the record existed (the runner's dict, an unread state as `{"error": ...}`)
    read back and write the same bytes, keys in the same order."""
    stored = [
        {"argv": ["llama-bench", "-p", "0"], "records": [{"avg_ts": 1.5}], "state": {"error": "device state could not be read: gone"},
         "cooldown": None, "telemetry": {"power_scope": "cpu package (RAPL)"}, "contention": {"busiest": []},
         "windows": [[1.0, 0.5], [2.0, 0.5]], "effective": {"n_threads": 2}},
        {"argv": [], "records": [], "state": None, "cooldown": {"waited_s": 0.0, "quiet": {"samples": 1}}, "telemetry": {},
         "contention": {}, "windows": [], "effective": {}},
    ]
    for raw in stored:
        text = json.dumps(raw)
        assert json.dumps(ExecutionRaw.from_json(json.loads(text)).to_json()) == text
    assert ExecutionRaw.from_json(stored[0]).state.error == "device state could not be read: gone"
