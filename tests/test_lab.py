"""The lab on Celery with real parts: Redis (`redis-server` with a password), worker processes
standing for lab hosts, PostgreSQL or SQLite stores, llama-bench on local pseudo-devices.

Pseudo-devices are `local` entries with `pseudo = NAME`: each has its own identity, so its
own queue and lease, as separate boards would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from kombu import Connection, Exchange, Producer
from sqlalchemy import text

from harness.lab.app import RUN_JOB, queue_for
from harness.lab.jobs import LabRequest, jobs_of, served_devices
from harness.lab.schedule import cron_line
from harness.store.db import Store

from .test_cli import REPO, edgebench

# One prefill process of 16 tokens per job: seconds on a busy 2-core host.
TINY = """
name = "lab-tiny"
repetitions = 1
inprocess_repetitions = 1
mode = "none"
[[prefill]]
prompt = 16
"""


def _suite(tmp_path: Path, repetitions: int = 1) -> Path:
    path = tmp_path / f"tiny{repetitions}.toml"
    path.write_text(TINY.replace("repetitions = 1\n", f"repetitions = {repetitions}\n", 1))
    return path


def _inventory(tmp_path: Path, names: list[str], file: str = "lab.toml") -> Path:
    text_ = "".join(
        f'[[device]]\nname = "{n}"\ndriver = "local"\npseudo = "{n}"\nworkdir = "{tmp_path / "dev" / n}"\ntags = ["{"odd" if i % 2 else "even"}"]\n\n'
        for i, n in enumerate(names)
    )
    path = tmp_path / file
    path.write_text(text_)
    return path


class Worker:
    """`edgebench worker` as its own process group (a lab host): killed whole with kill -9."""

    def __init__(self, tmp_path: Path, inventory: Path, env: dict[str, str], devices: str | None = None, tag: str = "w") -> None:
        self.log = tmp_path / f"worker-{tag}.log"
        argv = [sys.executable, "-m", "harness", "worker", "--inventory", str(inventory), "--results", str(tmp_path / "results")]
        self.argv = argv + (["--devices", devices] if devices else [])
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **env}
        self.tmp_path = tmp_path
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.tmp_path, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def kill9(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill9()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def workers():
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def _lab(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return edgebench("lab", *args, "--results", str(tmp_path / "results"), cwd=tmp_path, env=env)


def _until(condition, timeout_s: float = 300, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _lab_ids(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return sorted({r[0] for r in conn.execute(text("SELECT lab_id FROM lab_jobs"))})


def _store(tmp_path: Path, url: str | None = None) -> Store:
    return Store(tmp_path / "results", url)


def _assert_each_job_once(store: Store, lab_id: str, reps: int = 1) -> list:
    """Every job done, its own run holding exactly one execution per case and round."""
    jobs = jobs_of(store, lab_id)
    assert [j.status for j in jobs] == ["done"] * len(jobs), [(j.id, j.status, j.error) for j in jobs]
    for job in jobs:
        run = store.run(job.run_id)
        assert run.status == "finished" and run.device_identity == job.identity
        executions = store.executions(job.run_id)
        assert sorted((e.case_key, e.rep) for e in executions) == sorted({(e.case_key, r) for e in executions for r in range(reps)})
        assert all(e.status == "ok" for e in executions)
    assert len({j.run_id for j in jobs}) == len(jobs)
    return jobs


@pytest.fixture(scope="session")
def second_model(default_model, tmp_path_factory) -> Path:
    """The default model's weights in a second file with another sha256 (trailing bytes that
    llama.cpp ignores): a second model for the store without a second download. A worker runs
    it only from a model folder of its own: tests give them `_model_dirs(second_model)`."""
    path = tmp_path_factory.mktemp("models") / "second.gguf"
    path.write_bytes(default_model.read_bytes() + bytes(64))
    return path


def _model_dirs(model: Path) -> dict[str, str]:
    """The worker's model folders: the given model's folder besides the cache's catalog models."""
    from harness.paths import cache_dir

    return {"EDGEBENCH_MODEL_DIRS": os.pathsep.join([str(model.parent), str(cache_dir() / "models")])}


def test_a_pickled_message_is_refused_and_logged(tmp_path, redis_server, workers):
    inventory = _inventory(tmp_path, ["pk-a"])
    env = {"EDGEBENCH_BROKER": redis_server.url}
    workers.append(worker := Worker(tmp_path, inventory, env))
    with _store(tmp_path) as store:
        (device,) = _until(lambda: served_devices(store), 60, "registration")
    _until(lambda: "ready." in worker.text(), 60, "the device worker")
    queue = queue_for(device["identity"])
    with Connection(redis_server.url) as conn:
        Producer(conn).publish([["x"], {}, {}], exchange=Exchange(queue, "direct"), routing_key=queue, serializer="pickle",
                               headers={"task": RUN_JOB, "id": "pickled-1", "argsrepr": "", "kwargsrepr": ""}, declare=[])
    _until(lambda: "pickle" in worker.text(), 30, "the refusal in the log")
    log = worker.text()
    assert "Refusing to deserialize untrusted content of type pickle" in log or "ContentDisallowed" in log
    assert worker.process.poll() is None
    with _redis(redis_server) as client:
        assert client.llen(queue) == 0 and not client.hgetall("unacked")  # rejected, not left to come back


def _redis(server) -> redis.Redis:
    return redis.Redis(port=server.port, password=server.password)


def test_a_beat_schedule_fires_a_lab(tmp_path, redis_server):
    inventory = _inventory(tmp_path, ["bt-a", "bt-b"])
    suite = _suite(tmp_path)
    env = {"EDGEBENCH_BROKER": redis_server.url}
    added = _lab(tmp_path, "schedule", "add", "--inventory", str(inventory), "--suite", str(suite), "--every", "2", env=env)
    assert added.returncode == 0, added.stderr
    listed = _lab(tmp_path, "schedule", "list", env=env)
    assert "every 2 s" in listed.stdout and "bt-a, bt-b" in listed.stdout
    beat = subprocess.Popen([sys.executable, "-m", "harness", "beat", "--results", str(tmp_path / "results")], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        with _store(tmp_path) as store:
            lab_ids = _until(lambda: len(_lab_ids(store)) >= 2 and _lab_ids(store), 60, "two firings")
            jobs = jobs_of(store, lab_ids[0])
        assert sorted(j.device for j in jobs) == ["bt-a", "bt-b"] and {j.status for j in jobs} == {"queued"}
        with _redis(redis_server) as client:  # each firing published its jobs to the device queues
            assert client.llen(jobs[0].queue) >= 2
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(timeout=30)
    line = _lab(tmp_path, "schedule", "add", "--inventory", str(inventory), "--suite", str(suite), "--cron", "30 2 * * *", "--print", env=env)
    assert line.stdout.startswith("30 2 * * * mkdir -p") and f"--inventory {inventory.resolve()}" in line.stdout
    bad = _lab(tmp_path, "schedule", "add", "--inventory", str(inventory), "--cron", "99 2 * * *", env=env)
    assert bad.returncode == 2 and "--cron" in bad.stderr


def test_cron_line_names_everything_absolutely(tmp_path):
    inventory = _inventory(tmp_path, ["x"])
    line = cron_line("0 2 * * *", inventory, LabRequest(("x",), "quick", ("default", "other.gguf"), {"threads": (1, 2)}, 3), tmp_path / "results")
    assert line.startswith("0 2 * * * mkdir -p ")
    assert "--model default --model other.gguf --set threads=1,2 --repeat 3" in line and "cron.log 2>&1" in line


@pytest.mark.slow
def test_two_models_on_four_devices_over_two_workers_land_in_one_postgresql(tmp_path, redis_server, pg_url, workers, host_runtime,
                                                                            second_model):
    inventory = _inventory(tmp_path, ["mx-a", "mx-b", "mx-c", "mx-d"])
    env = {"EDGEBENCH_BROKER": redis_server.url, "EDGEBENCH_STORE": pg_url, **_model_dirs(second_model)}
    workers.append(Worker(tmp_path, inventory, env, "mx-a,mx-b", "host-a"))
    workers.append(Worker(tmp_path, inventory, env, "mx-c,mx-d", "host-b"))
    with _store(tmp_path, pg_url) as store:
        _until(lambda: len(served_devices(store)) == 4, 60, "four devices served")
        submitted = _lab(tmp_path, "submit", "--inventory", str(inventory), "--suite", str(_suite(tmp_path)), "--model", "default",
                         "--model", str(second_model), env=env)
        assert submitted.returncode == 0, submitted.stderr
        lab_id = submitted.stdout.strip()
        waited = _lab(tmp_path, "wait", lab_id, "--timeout", "600", env=env)
        assert waited.returncode == 0, waited.stdout + waited.stderr
        jobs = _assert_each_job_once(store, lab_id)
        assert len(jobs) == 8 and len(store.runs()) == 8
        assert {(j.device, j.options.model) for j in jobs} == {(d, m) for d in ("mx-a", "mx-b", "mx-c", "mx-d") for m in ("default", str(second_model))}
        assert len({store.run(j.run_id).model_sha256 for j in jobs}) == 2
        assert len({j.identity for j in jobs}) == 4 and len({j.pid for j in jobs}) == 4  # one device worker process per device
    status = _lab(tmp_path, "status", lab_id, env=env)
    assert status.stdout.count("done") >= 8 and "8 done" in status.stdout


@pytest.mark.slow
def test_a_worker_killed_mid_benchmark_resumes_its_job_on_restart(tmp_path, redis_server, workers, host_runtime, default_model):
    inventory = _inventory(tmp_path, ["kill-a"])
    env = {"EDGEBENCH_BROKER": redis_server.url}
    workers.append(worker := Worker(tmp_path, inventory, env))
    submitted = _lab(tmp_path, "submit", "--inventory", str(inventory), "--suite", str(_suite(tmp_path, 4)), env=env)
    assert submitted.returncode == 0, submitted.stderr
    lab_id = submitted.stdout.strip()
    with _store(tmp_path) as store:
        (job,) = jobs_of(store, lab_id)
        first = _until(lambda: [e for e in store.executions(job.run_id) if e.status == "ok"] if job.run_id in {r.id for r in store.runs()} else [],
                       300, "a finished process")
        worker.kill9()
        kept = {(e.case_key, e.rep): (e.id, e.wall_s) for e in store.executions(job.run_id)}
        assert jobs_of(store, lab_id)[0].status == "running"  # nobody told the store: the host died
        worker.start()
        waited = _lab(tmp_path, "wait", lab_id, "--timeout", "600", env=env)
        assert waited.returncode == 0, waited.stdout + waited.stderr + worker.text()[-3000:]
        (job,) = _assert_each_job_once(store, lab_id, reps=4)
        assert job.attempts == 2 and "put back" in worker.text()
        after = {(e.case_key, e.rep): (e.id, e.wall_s) for e in store.executions(job.run_id)}
        assert len(after) == 4 and all(after[k] == v for k, v in kept.items()), (kept, after)  # finished ones not redone
        assert len(first) >= 1 and len(store.runs()) == 1


@pytest.mark.slow
def test_a_broker_restart_mid_lab_loses_no_job(tmp_path, redis_server, workers, host_runtime, second_model):
    inventory = _inventory(tmp_path, ["rs-a", "rs-b"])
    env = {"EDGEBENCH_BROKER": redis_server.url, **_model_dirs(second_model)}
    workers.append(worker := Worker(tmp_path, inventory, env))
    submitted = _lab(tmp_path, "submit", "--inventory", str(inventory), "--suite", str(_suite(tmp_path)), "--model", "default",
                     "--model", str(second_model), env=env)
    lab_id = submitted.stdout.strip()
    with _store(tmp_path) as store:
        _until(lambda: any(j.status == "running" for j in jobs_of(store, lab_id)), 300, "a running job")
        redis_server.restart()
        waited = _lab(tmp_path, "wait", lab_id, "--timeout", "600", env=env)
        assert waited.returncode == 0, waited.stdout + waited.stderr + worker.text()[-3000:]
        assert len(_assert_each_job_once(store, lab_id)) == 4 and len(store.runs()) == 4


@pytest.mark.slow
def test_lab_cancel_kills_the_running_benchmark(tmp_path, redis_server, workers, host_runtime, default_model):
    inventory = _inventory(tmp_path, ["cn-a"])
    env = {"EDGEBENCH_BROKER": redis_server.url}
    workers.append(Worker(tmp_path, inventory, env))
    lab_id = _lab(tmp_path, "submit", "--inventory", str(inventory), "--suite", str(_suite(tmp_path, 30)), "--model", "default",
                  "--repeat", "30", env=env).stdout.strip()
    second = _lab(tmp_path, "submit", "--inventory", str(inventory), "--suite", str(_suite(tmp_path)), env=env).stdout.strip()
    with _store(tmp_path) as store:
        _until(lambda: jobs_of(store, lab_id)[0].status == "running", 300, "the job to start")
        cancelled = _lab(tmp_path, "cancel", lab_id, env=env)
        assert "1 running job(s) being stopped" in cancelled.stderr, cancelled.stderr
        (job,) = _until(lambda: [j for j in jobs_of(store, lab_id) if j.final], 120, "the cancellation")
        assert job.status == "cancelled" and "killed" in job.error
        assert store.run(job.run_id).status == "interrupted" and len(store.executions(job.run_id)) < 30
        waited = _lab(tmp_path, "wait", second, "--timeout", "300", env=env)  # the device's next job runs
        assert waited.returncode == 0, waited.stdout + waited.stderr


@pytest.mark.slow
def test_the_embedded_broker_runs_the_matrix_and_a_manual_run_meets_the_lease(tmp_path, host_runtime, second_model):
    names = ["em-a", "em-b", "em-c", "em-d"]
    inventory = _inventory(tmp_path, names)
    env = {"EDGEBENCH_BROKER": "", "EDGEBENCH_STORE": "", **_model_dirs(second_model)}
    long_suite = _suite(tmp_path, 3)
    lab = subprocess.Popen(
        [sys.executable, "-m", "harness", "lab", "run", "--inventory", str(inventory), "--suite", str(long_suite), "--model", "default",
         "--model", str(second_model), "--results", str(tmp_path / "results")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with _store(tmp_path) as store:
            def busy_a():
                return [j for lid in _lab_ids(store) for j in jobs_of(store, lid) if j.device == "em-a" and j.status == "running"]

            (job,) = _until(busy_a, 300, "a lab job on em-a")
            manual = edgebench("run", "--device", "em-a", "--inventory", str(inventory), "--suite", str(_suite(tmp_path)),
                               "--results", str(tmp_path / "results"), cwd=tmp_path, env=env)
            assert manual.returncode == 2, manual.stderr
            assert f"lab job {job.id}" in manual.stderr and "since" in manual.stderr
            waited = edgebench("run", "--device", "em-a", "--wait", "--inventory", str(inventory), "--suite", str(_suite(tmp_path)),
                               "--results", str(tmp_path / "results"), "--json", cwd=tmp_path, env=env)
            assert waited.returncode == 0, waited.stderr
            assert "waiting for device" in waited.stderr
            out, err = lab.communicate(timeout=900)
            assert lab.returncode == 0, out + err
            lab_id = jobs_of(store, job.lab_id)[0].lab_id
            jobs = _assert_each_job_once(store, lab_id, reps=3)
            assert len(jobs) == 8
            manual_run = json.loads(waited.stdout)["run"]
            lab_runs = [store.run(j.run_id) for j in jobs if j.device == "em-a"]
            # The manual run started after the lab job it waited for had finished: never beside it.
            assert manual_run["created_at"] >= min(r.finished_at for r in lab_runs)
        assert (tmp_path / "results" / "lab" / lab_id / "report.html").exists() and "8 done" in out
    finally:
        if lab.poll() is None:
            lab.kill()


@pytest.mark.slow
def test_a_board_that_drops_is_unreachable_and_retried_with_backoff(tmp_path, redis_server, workers, host_runtime, default_model):
    from .sshd_fixture import Sshd

    sshd = Sshd(tmp_path / "sshd").start()
    inventory = tmp_path / "boards.toml"
    inventory.write_text(sshd.inventory("board", workdir=str(tmp_path / "board"), connect_timeout=3))
    env = {"EDGEBENCH_BROKER": redis_server.url}
    workers.append(worker := Worker(tmp_path, inventory, env))
    try:
        with _store(tmp_path) as store:
            _until(lambda: served_devices(store), 60, "the board served")
            sshd.kill()  # the board drops off the network
            gave_up = _lab(tmp_path, "submit", "--inventory", str(inventory), "--suite", str(_suite(tmp_path)), "--retries", "1",
                           "--backoff", "0.5", env=env).stdout.strip()
            waited = _lab(tmp_path, "wait", gave_up, "--timeout", "120", env=env)
            (job,) = jobs_of(store, gave_up)
            assert waited.returncode == 1 and (job.status, job.attempts) == ("unreachable", 2), (job, worker.text()[-2000:])
            assert "gave up after 2 attempts" in job.error and "unreachable" in waited.stdout

            back = _lab(tmp_path, "submit", "--inventory", str(inventory), "--suite", str(_suite(tmp_path)), "--retries", "4",
                        "--backoff", "2", env=env).stdout.strip()
            (job,) = _until(lambda: [j for j in jobs_of(store, back) if j.status == "unreachable"], 120, "the job marked unreachable")
            assert "retrying in 2 s" in job.error
            sshd.start()  # back on the network during the backoff
            waited = _lab(tmp_path, "wait", back, "--timeout", "300", env=env)
            assert waited.returncode == 0, waited.stdout + waited.stderr + worker.text()[-3000:]
            (job,) = _assert_each_job_once(store, back)
            assert job.attempts >= 2 and "retrying in" in worker.text()
    finally:
        sshd.kill()


def test_sigterm_of_lab_run_stops_only_the_waiting(tmp_path, redis_server):
    inventory = _inventory(tmp_path, ["tm-a"])
    env = {"EDGEBENCH_BROKER": redis_server.url}
    lab = subprocess.Popen([sys.executable, "-m", "harness", "lab", "run", "--inventory", str(inventory), "--suite", str(_suite(tmp_path)),
                            "--results", str(tmp_path / "results")], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **env},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with _store(tmp_path) as store:
        (lab_id,) = _until(lambda: _lab_ids(store), 60, "the lab submitted")
        (job,) = jobs_of(store, lab_id)
        lab.send_signal(signal.SIGTERM)
        _, err = lab.communicate(timeout=60)
        assert lab.returncode == 3 and f"edgebench lab status {lab_id}" in err, err
        assert jobs_of(store, lab_id)[0].status == "queued"  # left to the workers
    with _redis(redis_server) as client:
        assert client.llen(job.queue) == 1


def test_a_submit_to_an_unreachable_broker_says_so_and_queues_nothing(tmp_path):
    inventory = _inventory(tmp_path, ["nb-a"])
    from tests.ports import free_port

    env = {"EDGEBENCH_BROKER": f"redis://:s3cr3tpw@127.0.0.1:{free_port()}/0"}
    submitted = _lab(tmp_path, "submit", "--inventory", str(inventory), "--suite", str(_suite(tmp_path)), env=env)
    assert submitted.returncode == 2 and "broker is unreachable" in submitted.stderr and "s3cr3tpw" not in submitted.stderr
    with _store(tmp_path) as store:
        (job,) = jobs_of(store, _lab_ids(store)[0])
        assert job.status == "failed" and job.error.startswith("never queued")


def test_status_shows_a_running_job_whose_worker_stopped_beating(tmp_path):
    from datetime import datetime, timedelta, timezone

    from harness.lab.jobs import create_jobs, register_device, set_job
    from harness.store.schema import lab_devices

    with _store(tmp_path) as store:
        register_device(store, "board:1", "hb-a", queue_for("board:1"), "2026-01-01T00:00:00+00:00")
        (job,) = create_jobs(store, "lab-hb", LabRequest(("hb-a",), "quick"), "quick", "", {"hb-a": ("board:1", queue_for("board:1"))})
        set_job(store, job.id, status="running", host="host-a", pid=4242)
        shown = _lab(tmp_path, "status", "lab-hb", env={})
        assert "host-a (pid 4242)" in shown.stdout and "not answering" not in shown.stdout
        old = (datetime.now(timezone.utc) - timedelta(seconds=61)).isoformat(timespec="seconds")
        with store.transaction() as conn:
            conn.execute(lab_devices.update().values(heartbeat_at=old))
    shown = _lab(tmp_path, "status", "lab-hb", env={})
    assert "its worker is not answering" in shown.stdout, shown.stdout


def test_a_worker_serves_the_devices_that_answer_and_names_the_others(tmp_path, redis_server, workers):
    from .sshd_fixture import Sshd

    sshd = Sshd(tmp_path / "sshd")  # configured, never started: the board is off
    inventory = _inventory(tmp_path, ["on-a"])
    inventory.write_text(inventory.read_text() + sshd.inventory("off-board", connect_timeout=2))
    workers.append(worker := Worker(tmp_path, inventory, {"EDGEBENCH_BROKER": redis_server.url}))
    with _store(tmp_path) as store:
        assert [r["name"] for r in _until(lambda: served_devices(store), 60, "registration")] == ["on-a"]
    _until(lambda: "off-board: not served" in worker.text(), 30, "the board named")
    assert worker.process.poll() is None


def test_a_quantize_sweep_gives_each_device_its_own_sweep_of_jobs(tmp_path):
    """`lab submit --quantize`: the variants made on the submitting host are models of the lab,
    each job carrying its variant and the base as reference; each device's jobs are one sweep."""
    from harness.lab.jobs import create_jobs

    store = Store(tmp_path / "results")
    sweeps = {"/m/base.gguf": {"sweep": "s1", "variant": None, "reference": "/m/base.gguf"},
              "/m/base.Q8_0.gguf": {"sweep": "s1", "variant": "Q8_0", "reference": "/m/base.gguf"}}
    request = LabRequest(("a", "b"), "quick", tuple(sweeps), sweeps=sweeps)
    assert LabRequest.from_json(json.loads(json.dumps(request.to_json()))) == request
    jobs = create_jobs(store, "lab-q", request, "quick", "", {d: (f"board:{d}", queue_for(f"board:{d}")) for d in ("a", "b")})
    got = {(j.device, j.options.variant): (j.options.sweep, j.options.reference, j.options.model) for j in jobs}
    assert got == {("a", None): ("s1.a", "/m/base.gguf", "/m/base.gguf"), ("a", "Q8_0"): ("s1.a", "/m/base.gguf", "/m/base.Q8_0.gguf"),
                   ("b", None): ("s1.b", "/m/base.gguf", "/m/base.gguf"), ("b", "Q8_0"): ("s1.b", "/m/base.gguf", "/m/base.Q8_0.gguf")}
