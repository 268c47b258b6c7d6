"""A job row is data, and faults lose nothing: lab workers on real Redis and real PostgreSQL.

A hostile row (a run id that leaves the results folder, build flags, a corpus path, a model
outside the worker's model folders or with another sha256, another device's job, a suite that
names a reference path) is refused and marked failed, and nothing is run or written. A store
that stops and comes back, and a broker that restarts without its data, lose no job; a wait
that cannot finish ends, naming the jobs still open. The fast tests use jobs that end without a
benchmark (refused, or cancelled before they ran); the slow ones run real llama-bench jobs.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import kombu
import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis

from harness.lab import tasks
from harness.lab.app import RUN_JOB, make_app, queue_for
from harness.lab.jobs import (
    JOB_OPTIONS,
    RUN_ID_FORM,
    JobInputs,
    JobRefused,
    LabRequest,
    create_jobs,
    jobs_of,
    parse_job_options,
    served_devices,
    set_job,
)
from harness.lab.submit import job_inputs
from harness.lab.worker import restore_unacked
from harness.runtimes.logits import MAGIC
from harness.store import schema
from harness.store.db import Store, new_run_id

from .pg_fixture import PASSWORD
from .test_lab import (TINY, Worker, _assert_each_job_once, _inventory, _lab, _redis, _store, _suite, _until,  # noqa: F401 - fixtures
                       second_model, workers)

DEVICE = "hx-a"


def _identity(tmp_path: Path, url: str | None) -> tuple[str, str]:
    with _store(tmp_path, url) as store:
        (row,) = _until(lambda: served_devices(store), 60, "the device served")
    return row["identity"], row["queue"]


def _jobs(store: Store, lab_id: str, n: int, identity: str, models: tuple[str, ...] = ("default",)) -> list:
    request = LabRequest((DEVICE,), "lab-tiny", models, {"threads": tuple(range(1, n + 1))})
    return create_jobs(store, lab_id, request, "lab-tiny", TINY, {DEVICE: (identity, queue_for(identity))})


def _raw_options(store: Store, job_id: str) -> str:
    from sqlalchemy import select

    from harness.store.schema import lab_jobs

    with store.engine.connect() as conn:
        return conn.execute(select(lab_jobs.c.options_json).where(lab_jobs.c.id == job_id)).scalar_one()


def _tamper(store: Store, job_id: str, **changes) -> None:
    """Write into the job's options as someone with the store's password could."""
    set_job(store, job_id, options_json=json.dumps({**json.loads(_raw_options(store, job_id)), **changes}))


def _ended(store: Store, lab_id: str) -> list:
    """The lab's jobs once every one has ended, else []."""
    found = jobs_of(store, lab_id)
    return found if found and all(j.final for j in found) else []


def _publish(broker: str, jobs: list) -> None:
    app = make_app(broker)
    for job in jobs:
        app.send_task(RUN_JOB, args=[job.id], queue=job.queue)


# --- the row's own form -------------------------------------------------------------------------

def test_run_ids_edgebench_makes_have_the_form_workers_accept():
    assert all(RUN_ID_FORM.fullmatch(new_run_id()) for _ in range(20))
    assert not any(RUN_ID_FORM.fullmatch(r) for r in ("../../x", "20260101-120000-1a2b3c/..", "20260101-120000-1A2B3C", ""))


@pytest.mark.parametrize("changes, says", [
    ({"build_flags": ["-DCMAKE_C_COMPILER=/tmp/evil"]}, "'build_flags', which lab submit never writes"),
    ({"target": "host"}, "'target', which lab submit never writes"),
    ({"inventory": "/tmp/evil.toml"}, "'inventory', which lab submit never writes"),
    ({"corpus": "/etc/passwd"}, "option 'corpus' is '/etc/passwd': expected 64 lowercase hex digits"),
    ({"reference_logits": "../x"}, "option 'reference_logits'"),
    ({"corpus": "0" * 64, "corpus_name": "../../x"}, "option 'corpus_name'"),
    ({"settings": {"threads": [1, 2]}}, "option 'settings'"),
    ({"settings": {"extra_args": ["--rpc"]}}, "option 'settings'"),
    ({"repetitions": True}, "option 'repetitions'"),
    ({"model": ""}, "option 'model'"),
])
def test_options_outside_what_lab_submit_writes_are_refused(changes, says):
    written = {"device": "a", "suite": "quick", "model": "default", "repetitions": None, "settings": {"threads": [2]}}
    options, inputs = parse_job_options(written)
    assert (options.model, options.settings, options.build_flags, inputs) == ("default", {"threads": (2,)}, (), JobInputs())
    with pytest.raises(JobRefused) as refused:
        parse_job_options({**written, **changes})
    assert says in str(refused.value)
    assert set(JOB_OPTIONS) >= {"device", "model", "settings"} and "build_flags" not in JOB_OPTIONS


def test_a_row_with_a_foreign_run_id_loads_for_status_but_is_refused(tmp_path):
    with _store(tmp_path) as store:
        (job,) = _jobs(store, "lab-rid", 1, "board:1")
        set_job(store, job.id, run_id="../../escaped")
        (loaded,) = jobs_of(store, "lab-rid")
    assert loaded.status == "queued" and "run id '../../escaped' is not one edgebench makes" in loaded.refused
    assert job.refused is None


# --- what the row names, checked against the worker ----------------------------------------------

def test_a_jobs_files_come_by_content_and_its_model_from_the_model_folders(tmp_path, store_url, default_model, monkeypatch):
    """The submitter uploads the corpus and the logits; the worker finds them by sha256 in the
    store, and the model only under its model folders with the sha256 the submitter read."""
    monkeypatch.setenv("EDGEBENCH_CACHE", str(tmp_path / "worker-cache"))
    monkeypatch.setenv(tasks.MODEL_DIRS_ENV, str(default_model.parent))
    corpus = tmp_path / "wiki.test.raw"
    corpus.write_text("Some text to score.\n" * 50)
    logits = tmp_path / "ref.logits"
    logits.write_bytes(MAGIC + bytes(range(256)))
    with Store(tmp_path / "results", store_url) as store:
        request = LabRequest((DEVICE,), "lab-tiny", (str(default_model),), corpus=str(corpus), reference=str(logits))
        (job,) = create_jobs(store, "lab-in", request, "lab-tiny", TINY, {DEVICE: ("board:1", queue_for("board:1"))},
                             job_inputs(store, request))
        raw = json.loads(_raw_options(store, job.id))
        assert str(corpus) not in json.dumps(raw) and str(logits) not in json.dumps(raw)  # contents travel, never paths
        assert raw["corpus"] == hashlib.sha256(corpus.read_bytes()).hexdigest() and raw["reference"] is None
        corpus.unlink(), logits.unlink()  # the worker never reads the submitter's files
        tasks.configure(tasks.WorkerContext(tmp_path / "results", store_url, str(tmp_path / "inv.toml"), DEVICE, "board:1"))
        options, _suite = tasks.checked_options(store, job)
        assert options.model == str(default_model.resolve()) and options.build_flags == () and options.inventory == str(tmp_path / "inv.toml")
        assert Path(options.corpus).read_text() == "Some text to score.\n" * 50 and Path(options.corpus).name == "wiki.test.raw"
        assert Path(options.reference).read_bytes() == MAGIC + bytes(range(256))

        monkeypatch.setenv(tasks.MODEL_DIRS_ENV, str(tmp_path / "elsewhere"))
        with pytest.raises(JobRefused, match="not under this worker's model folders"):
            tasks.checked_options(store, job)


def test_lab_submit_sends_contents_and_sha256s_never_the_submitters_paths(tmp_path, redis_server, default_model):
    inventory = _inventory(tmp_path, [DEVICE])
    env = {"EDGEBENCH_BROKER": redis_server.url}
    (tmp_path / "corpus.txt").write_text("Text to score.\n" * 40)
    (tmp_path / "ref.logits").write_bytes(MAGIC + bytes(64))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.gguf").symlink_to(default_model)
    submitted = _lab(tmp_path, "submit", "--inventory", str(inventory), "--suite", str(_suite(tmp_path)), "--model", "m/model.gguf",
                     "--corpus", "corpus.txt", "--reference", "ref.logits", env=env)
    assert submitted.returncode == 0, submitted.stderr
    with _store(tmp_path) as store:
        (job,) = jobs_of(store, submitted.stdout.strip())
        raw = json.loads(_raw_options(store, job.id))
    assert raw["model"] == str(default_model.resolve()) and raw["model_sha256"]  # absolute: a worker runs elsewhere == hashlib.sha256(default_model.read_bytes()).hexdigest()
    assert (raw["corpus"], raw["corpus_name"]) == (hashlib.sha256(b"Text to score.\n" * 40).hexdigest(), "corpus.txt")
    assert raw["reference_logits"] == hashlib.sha256(MAGIC + bytes(64)).hexdigest() and raw["reference"] is None
    assert "ref.logits" not in json.dumps(raw) and "build_flags" not in raw

    (tmp_path / "paths.toml").write_text(TINY + '[[quality]]\nreference = "/srv/models/base.gguf"\n')
    refused = _lab(tmp_path, "submit", "--inventory", str(inventory), "--suite", "paths.toml", env=env)
    assert refused.returncode == 2 and "--reference" in refused.stderr, refused.stderr


def test_hostile_job_rows_are_refused_by_a_real_worker(tmp_path, redis_server, pg_url, workers, default_model):
    """Each row is marked failed with the reason, acknowledged, and nothing is run or written."""
    inventory = _inventory(tmp_path, [DEVICE])
    env = {"EDGEBENCH_BROKER": redis_server.url, "EDGEBENCH_STORE": pg_url, tasks.MODEL_DIRS_ENV: str(default_model.parent)}
    workers.append(worker := Worker(tmp_path, inventory, env))
    identity, queue = _identity(tmp_path, pg_url)
    _until(lambda: "ready." in worker.text(), 60, "the device worker")
    passwd_sha = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    hostile = {
        "run id": ({"run_id": "../../escaped"}, {}, "is not one edgebench makes"),
        "build flag": ({}, {"build_flags": ["-DGGML_NATIVE=OFF", "-DCMAKE_C_COMPILER=/tmp/evil"]}, "'build_flags', which lab submit never writes"),
        "corpus path": ({}, {"corpus": "/etc/passwd"}, "option 'corpus' is '/etc/passwd'"),
        "model outside": ({}, {"model": "/etc/passwd", "model_sha256": passwd_sha}, "/etc/passwd is not under this worker's model folders"),
        "model link out": ({}, {"model": str(default_model.parent / ".." / ".." / "etc" / "passwd"), "model_sha256": passwd_sha},
                           "is not under this worker's model folders"),
        "model swapped": ({}, {"model": str(default_model), "model_sha256": "0" * 64}, "the job recorded 000000000000: another file"),
        "other device": ({}, {"device": "someone-else"}, "but this worker serves 'hx-a'"),
        "suite reference": ({"suite_text": TINY + '[[quality]]\nreference = "/etc/passwd"\n'}, {}, "names the reference(s) /etc/passwd"),
    }
    with _store(tmp_path, pg_url) as store:
        jobs = _jobs(store, "lab-hostile", len(hostile), identity)
        for job, (row, options, _) in zip(jobs, hostile.values()):
            if options:
                _tamper(store, job.id, **options)
            if row:
                set_job(store, job.id, **row)
        _publish(redis_server.url, jobs)
        ended = _until(lambda: _ended(store, "lab-hostile"), 120, "every job refused")
        for job, (what, (_, _, says)) in zip(ended, hostile.items()):
            assert job.status == "failed" and says in (job.error or ""), (what, job.error, worker.text()[-2000:])
        assert store.runs() == [] and not (tmp_path / "escaped").exists() and not (tmp_path / "results" / "runs").exists()
    with _redis(redis_server) as client:  # each refusal was written, so its message acknowledged
        assert client.llen(queue) == 0 and not client.hgetall("unacked")


# --- faults ----------------------------------------------------------------------------------

def _device_workers(worker: Worker) -> list[int]:
    import psutil

    return sorted(c.pid for c in psutil.Process(worker.process.pid).children() if "harness.lab.worker" in " ".join(c.cmdline()))


def test_a_worker_survives_a_postgresql_outage_and_writes_every_job_after_it(tmp_path, redis_server, pg_cluster, pg_url, workers):
    """The store stops (pg_ctl -m immediate) under a serving worker: its heartbeat loop and
    device worker go on, a job that arrives meanwhile waits unacknowledged, and once the store
    is back each job ends in a real state, written once; `lab wait` waits through it."""
    inventory = _inventory(tmp_path, [DEVICE])
    # unwrapped, unbuffered lines: the test reads the worker's log as it is written
    env = {"EDGEBENCH_BROKER": redis_server.url, "EDGEBENCH_STORE": pg_url, "COLUMNS": "300", "PYTHONUNBUFFERED": "1"}
    workers.append(worker := Worker(tmp_path, inventory, env))
    identity, queue = _identity(tmp_path, pg_url)
    _until(lambda: "ready." in worker.text(), 60, "the device worker")
    device_pids = _device_workers(worker)
    with _store(tmp_path, pg_url) as store:
        refused, cancelled = _jobs(store, "lab-pg", 2, identity)
        _tamper(store, refused.id, build_flags=["-DX=1"])
        set_job(store, cancelled.id, cancel=1)
        before = served_devices(store)[0]["heartbeat_at"]
    waited = tmp_path / "wait.log"
    waiter = subprocess.Popen([sys.executable, "-m", "harness", "lab", "wait", "lab-pg", "--timeout", "300", "--results",
                               str(tmp_path / "results")], cwd=tmp_path, env=worker.env, stdout=waited.open("wb"), stderr=subprocess.STDOUT)
    _until(lambda: "lab-pg.2" in waited.read_text(), 60, "`lab wait` to be watching")
    pg_cluster.stop("immediate")
    try:
        _until(lambda: "does not answer" in worker.text(), 60, "the supervisor to meet the outage")
        _publish(redis_server.url, [refused, cancelled])
        _until(lambda: "waits for it, unacknowledged" in worker.text(), 60, "the device worker to meet the outage")
        with _redis(redis_server) as client:
            assert len(client.hgetall("unacked")) == 1  # held, not acknowledged: a killed worker would give it back
        time.sleep(3)
    finally:
        pg_cluster.start()
    with _store(tmp_path, pg_url) as store:
        ended = _until(lambda: _ended(store, "lab-pg"), 120, "both jobs ended")
        assert [(j.status, j.attempts) for j in ended] == [("failed", 0), ("cancelled", 0)], [(j.status, j.error) for j in ended]
        assert "build_flags" in ended[0].error
        _until(lambda: served_devices(store)[0]["heartbeat_at"] > before, 60, "heartbeats after the outage")
    assert worker.process.poll() is None and _device_workers(worker) == device_pids, worker.text()[-3000:]
    assert "answers again" in worker.text()
    waiter.wait(timeout=120)
    out = waited.read_text()
    assert waiter.returncode == 1 and "does not answer" in out and "answers again" in out and "1 failed, 1 cancelled" in out, out
    with _redis(redis_server) as client:
        assert client.llen(queue) == 0 and not client.hgetall("unacked")


def _wipe(redis_server) -> None:
    """Redis restarted without its data (a new instance, a lost disk)."""
    with _redis(redis_server) as client:
        client.flushall()
    redis_server.restart()


def test_a_worker_queues_again_the_jobs_a_broker_lost(tmp_path, redis_server, workers):
    inventory = _inventory(tmp_path, [DEVICE])
    env = {"EDGEBENCH_BROKER": redis_server.url}
    workers.append(worker := Worker(tmp_path, inventory, env))
    identity, queue = _identity(tmp_path, None)
    worker.stop()
    with _store(tmp_path) as store:
        refused, cancelled = _jobs(store, "lab-lost", 2, identity)
        _tamper(store, refused.id, build_flags=["-DX=1"])
        set_job(store, cancelled.id, cancel=1)
        _publish(redis_server.url, [refused, cancelled])
        _wipe(redis_server)
        with _redis(redis_server) as client:
            assert client.llen(queue) == 0
        worker.start()
        ended = _until(lambda: _ended(store, "lab-lost"), 120, "both jobs ended")
        assert [j.status for j in ended] == ["failed", "cancelled"]
    assert "2 job(s) the store lists as not ended queued again" in worker.text()


def test_a_wait_that_cannot_finish_ends_naming_the_open_jobs(tmp_path, redis_server):
    """No worker serves the device: `lab wait --timeout` and `lab run --timeout` give up, exit 3."""
    inventory = _inventory(tmp_path, ["nw-a"])
    env = {"EDGEBENCH_BROKER": redis_server.url}
    with _store(tmp_path) as store:
        request = LabRequest(("nw-a",), "lab-tiny", settings={"threads": (1, 2)})
        create_jobs(store, "lab-open", request, "lab-tiny", TINY, {"nw-a": ("board:nw", queue_for("board:nw"))})
    waited = _lab(tmp_path, "wait", "lab-open", "--timeout", "1", env=env)
    assert waited.returncode == 3, waited.stdout + waited.stderr
    assert "lab lab-open: not finished after 1 s; still open: lab-open.1 (nw-a, queued), lab-open.2 (nw-a, queued)" in waited.stderr
    ran = _lab(tmp_path, "run", "--inventory", str(inventory), "--suite", str(_suite(tmp_path)), "--timeout", "2", env=env)
    assert ran.returncode == 3 and "not finished after 2 s; still open:" in ran.stdout + ran.stderr, ran.stdout + ran.stderr


# --- kombu's Redis layout, which restore_unacked reads ---------------------------------------------

def test_kombus_redis_layout_that_restore_unacked_reads_is_still_there(redis_server):
    """restore_unacked leans on names kombu does not publish; this fails, naming what changed,
    when a kombu release moves them (then rewrite harness/lab/worker.py:restore_unacked)."""
    where = f"kombu {kombu.__version__}: harness/lab/worker.py:restore_unacked needs"
    for name in ("client", "qos", "unacked_key"):
        assert hasattr(kombu_redis.Channel, name), f"{where} kombu.transport.redis.Channel.{name}, which is gone"
    params = list(inspect.signature(kombu_redis.QoS.restore_by_tag).parameters)
    assert params[:4] == ["self", "tag", "client", "leftmost"], f"{where} QoS.restore_by_tag(tag, client, leftmost); it is now {params}"

    queue = "edgebench.device.layout-check"
    app = make_app(redis_server.url)
    app.send_task(RUN_JOB, args=["lab-x.1"], queue=queue)
    with Connection(redis_server.url) as conn:
        held = conn.SimpleQueue(queue).get(timeout=10)  # delivered, never acknowledged
        with _redis(redis_server) as client:
            entries = [json.loads(raw) for raw in client.hgetall(kombu_redis.Channel.unacked_key).values()]
            assert [e[2] for e in entries] == [queue], f"{where} unacked entries shaped [message, exchange, routing_key]; got {entries}"
            assert restore_unacked(app, [queue]) == 1, f"{where} restore_by_tag to put a message back"
            assert client.llen(queue) == 1 and not client.hgetall("unacked")
        assert held.payload[0] == ["lab-x.1"]


# --- real benchmarks under the same faults ---------------------------------------------------------

@pytest.mark.slow
def test_postgresql_stopped_mid_benchmark_the_job_resumes_its_run(tmp_path, redis_server, pg_cluster, pg_url, workers, host_runtime,
                                                                   default_model):
    inventory = _inventory(tmp_path, [DEVICE])
    env = {"EDGEBENCH_BROKER": redis_server.url, "EDGEBENCH_STORE": pg_url}
    workers.append(worker := Worker(tmp_path, inventory, env))
    submitted = _lab(tmp_path, "submit", "--inventory", str(inventory), "--suite", str(_suite(tmp_path, 4)), env=env)
    assert submitted.returncode == 0, submitted.stderr
    lab_id = submitted.stdout.strip()
    with _store(tmp_path, pg_url) as store:
        (job,) = jobs_of(store, lab_id)
        _until(lambda: job.run_id in {r.id for r in store.runs()} and any(e.status == "ok" for e in store.executions(job.run_id)),
               300, "a finished process")
        kept = {(e.case_key, e.rep): e.id for e in store.executions(job.run_id) if e.status == "ok"}
    pg_cluster.stop("immediate")
    time.sleep(5)
    pg_cluster.start()
    waited = _lab(tmp_path, "wait", lab_id, "--timeout", "600", env=env)
    assert waited.returncode == 0, waited.stdout + waited.stderr + worker.text()[-3000:]
    status = _lab(tmp_path, "status", lab_id, env=env)
    with _store(tmp_path, pg_url) as store:
        (job,) = _assert_each_job_once(store, lab_id, reps=4)
        after = {(e.case_key, e.rep): e.id for e in store.executions(job.run_id)}
        assert all(after[k] == v for k, v in kept.items()) and len(store.runs()) == 1
        with store.engine.connect() as conn:  # every row of every table, the lease holders and job rows included
            rows = repr([conn.execute(table.select()).all() for table in schema.metadata.sorted_tables])
    # a lab job on a scram-password store and a password broker, through an outage's error messages
    said = worker.text() + waited.stdout + waited.stderr + status.stdout + status.stderr + rows
    assert PASSWORD not in said and redis_server.password not in said


@pytest.mark.slow
def test_redis_restarted_without_its_data_loses_no_job(tmp_path, redis_server, workers, host_runtime, second_model):
    inventory = _inventory(tmp_path, ["rd-a", "rd-b"])
    env = {"EDGEBENCH_BROKER": redis_server.url, "EDGEBENCH_MODEL_DIRS": str(second_model.parent)}
    submitted = _lab(tmp_path, "submit", "--inventory", str(inventory), "--suite", str(_suite(tmp_path)), "--model", "default",
                     "--model", str(second_model), env=env)
    assert submitted.returncode == 0, submitted.stderr
    lab_id = submitted.stdout.strip()
    _wipe(redis_server)
    workers.append(worker := Worker(tmp_path, inventory, env))
    waited = _lab(tmp_path, "wait", lab_id, "--timeout", "600", env=env)
    assert waited.returncode == 0, waited.stdout + waited.stderr + worker.text()[-3000:]
    with _store(tmp_path) as store:
        assert len(_assert_each_job_once(store, lab_id)) == 4 and len(store.runs()) == 4
