"""Faults of a manual run: the results database stopped mid-run, the lease heartbeat that cannot
renew, a full disk. Each stops the run with one line and exit 3, keeps what finished, and
`--resume` completes the run with every process stored once.

The servers and the faults are real: PostgreSQL stopped with `pg_ctl stop -m immediate` (from
inside the benchmark process, so it lands at a known step), a tmpfs of a few MiB filled to the
brim. The benchmark is a stand-in llama-bench that replays its JSONL and counts its starts, and
the runtime build is the one thing replaced (it takes minutes): `edgebench run` gets a runtime
folder holding that stand-in instead of compiling llama.cpp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest
from sqlalchemy import create_engine, select, text

from harness.drivers.local import LocalDriver
from harness.errors import LeaseLost
from harness.records import now_iso
from harness.store import leases
from harness.store.db import Store, server_now
from harness.store.schema import leases as leases_t

from .conftest import REPO, runtime_folder
from .pg_fixture import PASSWORD, Cluster

SUITE = """
name = "faults"
repetitions = 3
inprocess_repetitions = 1
warmup = false
mode = "none"
[[prefill]]
prompt = 16
[[decode]]
tokens = 4
"""
PROCESSES = 6  # 2 cases x 3 rounds

# Replays llama-bench's one JSONL line for the asked -p/-n/-d; `hooks.json` beside its folder
# says what its Nth start does first ({"N": {"run": argv, "sleep": s}}) and how much padding
# every line carries ({"pad": bytes}: a file bigger than what a nearly full disk has left).
FAKE = textwrap.dedent(
    """\
    #!{python}
    import json, subprocess, sys, time
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    starts = root / "starts"
    count = int(starts.read_text()) + 1 if starts.exists() else 1
    starts.write_text(str(count))
    hooks = json.loads((root / "hooks.json").read_text()) if (root / "hooks.json").exists() else {{}}
    hook = hooks.get(str(count), {{}})
    if "run" in hook:
        subprocess.run(hook["run"], check=True, capture_output=True)
    time.sleep(hook.get("sleep", 0))
    args = sys.argv[1:]
    val = lambda flag: int(args[args.index(flag) + 1]) if flag in args else 0
    reps = val("-r")
    print(json.dumps({{"build_commit": "fake", "build_number": 0, "n_prompt": val("-p"), "n_gen": val("-n"), "n_depth": val("-d"),
                      "avg_ts": 100.0 + count, "samples_ts": [100.0 + count] * reps, "start": count, "pad": "x" * hooks.get("pad", 0)}}))
    """
)

# `edgebench` with the runtime build replaced by the folder named first on its command line
# (and, with $FAULTS_LEASE, the lease's timings: heartbeat, retry, stale after, stop margin).
CLI = textwrap.dedent(
    """\
    import os, sys
    from pathlib import Path
    from harness.store import leases
    from harness.run import session
    if "FAULTS_LEASE" in os.environ:
        leases.HEARTBEAT_S, leases.RETRY_S, leases.STALE_AFTER_S, leases.STOP_MARGIN_S = map(float, os.environ["FAULTS_LEASE"].split(","))
    from harness.runtimes.build import Manifest, Runtime
    root = Path(sys.argv.pop(1))
    manifest = Manifest(key="fa" * 32, target="host", llama_cpp_commit="fake", llama_cpp_python_version="0", source_sha256="0" * 64,
                        cmake_flags=(), compiler="none", files={"bin/llama-bench": "0" * 64}, built_at="", build_seconds=0.0)
    session._runtime_if_needed = lambda prepared, callbacks: Runtime(root, manifest)
    from harness.cli import app
    app(prog_name="edgebench")
    """
)


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    return runtime_folder(tmp_path / "runtime", FAKE.format(python=sys.executable))


def edgebench(runtime: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CLI, str(runtime), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO), **(env or {})})


def _hooks(runtime: Path, **hooks: object) -> None:
    (runtime / "hooks.json").write_text(json.dumps(hooks))


def _starts(runtime: Path) -> int:
    return int((runtime / "starts").read_text())


def _up(cluster: Cluster) -> None:
    """Start the cluster again if the test stopped it (and leave it alone if it never got that far)."""
    if not (cluster.folder / "data" / "postmaster.pid").exists():
        cluster.start()


def _killed(pid: int) -> bool:
    """The process is gone (or a zombie its killed parent left for init to reap) within the
    moment a SIGKILL takes to land."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _error_line(stderr: str) -> str:
    """The one error the CLI printed (rich may fold it): never a traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return " ".join(stderr[stderr.index("error:"):].split())


def _assert_complete_and_once(store: Store, run_id: str) -> None:
    """Every process once, ok; each one's files in the store with its row, and only those."""
    executions = store.executions(run_id)
    assert sorted((e.case_key, e.rep) for e in executions) == sorted((c.key, r) for c in store.cases(run_id) for r in range(3))
    assert {e.status for e in executions} == {"ok"}
    assert store.run(run_id).status == "finished"
    stored = store.artifacts(run_id)
    rep_files = {name for name in stored if "/" in name}
    assert rep_files == {f"{e.case_key}/rep{e.rep}.{kind}" for e in executions for kind in ("stdout", "stderr", "argv.json", "telemetry.csv")}
    for e in executions:  # the stored output is the very process the row describes, whole
        line = json.loads(stored[f"{e.case_key}/rep{e.rep}.stdout"])
        assert line["start"] == e.raw.records[0]["start"]
    assert {"facts.json", "model.json", "suite.toml", "runtime.json"} <= set(stored)


def test_postgres_stopped_mid_run_stops_it_keeps_what_finished_and_resume_completes_it(tmp_path, runtime, pg_cluster, pg_url):
    (tmp_path / "faults.toml").write_text(SUITE)
    _hooks(runtime, **{"3": {"run": pg_cluster.pg_ctl_argv("-m", "immediate", "-w", "stop")}})
    results = tmp_path / "results"
    try:
        cut = edgebench(runtime, "run", "--suite", "faults.toml", "--store", pg_url, "--results", str(results), cwd=tmp_path)
        assert cut.returncode == 3, cut.stderr
        message = _error_line(cut.stderr)
        assert PASSWORD not in cut.stderr + cut.stdout
        port = pg_url.rsplit(":", 1)[1].split("/")[0]
        assert f"results store postgresql+psycopg://edgebench:***@127.0.0.1:{port}/" in message
        run_id = message.split("edgebench run --resume ")[1].split()[0]

        down = edgebench(runtime, "run", "--resume", run_id, "--store", pg_url, "--results", str(results), cwd=tmp_path)
        assert down.returncode == 2, down.stderr  # a store that cannot be opened: before anything runs
        assert "cannot open results store postgresql+psycopg://edgebench:***@" in _error_line(down.stderr)
        assert PASSWORD not in down.stderr and _starts(runtime) == 3
    finally:
        _up(pg_cluster)

    store = Store(results, pg_url)
    kept = {(e.case_key, e.rep): e.id for e in store.executions(run_id)}
    assert len(kept) == 2  # the two processes before the stop; the third ran, but its row never got in
    rows = {name for name in store.artifacts(run_id) if "/" in name}
    assert rows == {f"{key}/rep{rep}.{kind}" for key, rep in kept for kind in ("stdout", "stderr", "argv.json", "telemetry.csv")}

    resumed = edgebench(runtime, "run", "--resume", run_id, "--store", pg_url, "--results", str(results), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    _assert_complete_and_once(store, run_id)
    after = {(e.case_key, e.rep): e.id for e in store.executions(run_id)}
    assert all(after[key] == kept_id for key, kept_id in kept.items())  # finished ones kept, not redone
    assert _starts(runtime) == PROCESSES + 1  # only the cut process ran twice
    store.close()


@pytest.fixture
def quick_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lease timings short enough for a test: a heartbeat every 0.3 s, stale after 10 s, the
    run stopped 6 s after the last renewal (4 s before)."""
    monkeypatch.setattr(leases, "HEARTBEAT_S", 0.3)
    monkeypatch.setattr(leases, "RETRY_S", 0.2)
    monkeypatch.setattr(leases, "STALE_AFTER_S", 10.0)
    monkeypatch.setattr(leases, "STOP_MARGIN_S", 4.0)


def test_a_lease_that_cannot_be_renewed_stops_the_benchmark_before_it_goes_stale(tmp_path, pg_cluster, pg_url, quick_lease):
    store = Store(tmp_path, pg_url)
    seen: list[int] = []
    try:
        with pytest.raises(LeaseLost) as lost:
            with leases.held(store, "device-a", "run test by tester", wait=False):
                time.sleep(2 * leases.HEARTBEAT_S)  # a heartbeat or two got in
                stopped = time.monotonic()
                pg_cluster.stop("immediate")
                LocalDriver().run(["sh", "-c", "echo $$ > sleeper.pid; exec sleep 60"], timeout=120, cwd=str(tmp_path),
                                  on_start=seen.append)
        raised = time.monotonic()
        # The last heartbeat was at most HEARTBEAT_S before the stop: the lease goes stale no
        # sooner than STALE_AFTER_S - HEARTBEAT_S after it. The benchmark is gone by then.
        assert raised - stopped < leases.STALE_AFTER_S - leases.HEARTBEAT_S
        assert _killed(int((tmp_path / "sleeper.pid").read_text()))
        message = str(lost.value)
        assert "lease of device device-a could not be renewed" in message and "postgresql+psycopg://edgebench:***@" in message
        assert PASSWORD not in message
    finally:
        _up(pg_cluster)
    with store.transaction() as conn:  # the store was down, so the lease could not be let go: it ages out
        assert conn.execute(select(leases_t.c.pid).where(leases_t.c.identity == "device-a")).scalar_one() == os.getpid()
    deadline = time.monotonic() + 3 * leases.STALE_AFTER_S
    while leases.try_acquire(store, "device-a", "the next run") is not None:
        assert time.monotonic() < deadline, "the lease never went stale"
        time.sleep(0.5)
    store.close()


def test_a_run_whose_lease_cannot_be_renewed_stops_mid_benchmark_and_resume_completes_it(tmp_path, runtime, pg_cluster, pg_url):
    """The database goes while a benchmark runs long: the heartbeat, not the next write, stops the run."""
    (tmp_path / "faults.toml").write_text(SUITE)
    _hooks(runtime, **{"3": {"run": pg_cluster.pg_ctl_argv("-m", "immediate", "-w", "stop"), "sleep": 120}})
    results = tmp_path / "results"
    try:
        cut = edgebench(runtime, "run", "--suite", "faults.toml", "--store", pg_url, "--results", str(results), cwd=tmp_path,
                        env={"FAULTS_LEASE": "0.3,0.2,10,4"})
    finally:
        _up(pg_cluster)
    assert cut.returncode == 3, cut.stderr
    message = _error_line(cut.stderr)
    assert "the lease of device machine-id:" in message and "could not be renewed for 6 s" in message
    assert "results store postgresql+psycopg://edgebench:***@" in message and PASSWORD not in cut.stderr
    store = Store(results, pg_url)
    run_id = store.run("latest").id
    assert len(store.executions(run_id)) == 2

    resumed = edgebench(runtime, "run", "--resume", run_id, "--store", pg_url, "--results", str(results), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    _assert_complete_and_once(store, run_id)
    assert _starts(runtime) == PROCESSES + 1
    store.close()


def test_the_heartbeat_rides_out_a_short_outage(tmp_path, pg_cluster, pg_url, quick_lease, monkeypatch):
    monkeypatch.setattr(leases, "STALE_AFTER_S", 30.0)  # room for a restart on a busy machine: 26 s
    store = Store(tmp_path, pg_url)

    def heartbeat() -> str:
        with store.transaction() as conn:
            return conn.execute(select(leases_t.c.heartbeat_at).where(leases_t.c.identity == "device-b")).scalar_one()

    try:
        with leases.held(store, "device-b", "run test by tester", wait=False):
            first = heartbeat()
            pg_cluster.stop("immediate")
            time.sleep(1.0)  # failed writes, retried
            pg_cluster.start()
            deadline = time.monotonic() + leases.STALE_AFTER_S - leases.STOP_MARGIN_S
            while (last := heartbeat()) <= first:
                assert time.monotonic() < deadline, "no heartbeat after the outage"
                time.sleep(0.3)
    finally:
        _up(pg_cluster)
    assert last > first
    store.close()


@pytest.mark.parametrize("skew, taken", [("-1 hour", False), ("+1 hour", True)])
def test_leases_age_by_the_database_servers_clock(tmp_path, pg_url, skew, taken):
    """The server's clock is an hour off this host's. A holder on another host heartbeating by
    the server's clock is alive, though its heartbeat is an hour old by this host's; one whose
    last heartbeat is this host's now is an hour dead by the server's, and is taken over."""
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:  # now() reads the shifted clock; CURRENT_TIMESTAMP and pg_catalog are untouched
        conn.execute(text(f"CREATE FUNCTION public.now() RETURNS timestamptz AS $$ SELECT pg_catalog.now() + interval '{skew}' $$ "
                          "LANGUAGE sql STABLE"))
        conn.execute(text(f"ALTER DATABASE {pg_url.rsplit('/', 1)[1]} SET search_path = public, pg_catalog"))
    engine.dispose()
    store = Store(tmp_path, pg_url)
    with store.transaction() as conn:
        beat = now_iso() if taken else server_now(conn)
        conn.execute(leases_t.insert().values(identity="device-c", holder="run old by someone", host=f"other-{uuid.uuid4().hex}",
                                              pid=1, since=beat, heartbeat_at=beat))
    busy = leases.try_acquire(store, "device-c", "run new by tester")
    assert (busy is None) is taken
    store.close()


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 16 MiB tmpfs for the results folder (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for a full disk needs root")
    folder = tmp_path / "results"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_stops_the_run_half_written_files_are_not_trusted_and_resume_completes_it(tmp_path, runtime, tiny_disk):
    (tmp_path / "faults.toml").write_text(SUITE)
    filler = tiny_disk / "filler"
    # Start 3 fills the disk but for 64 KiB; each output line is 256 KiB: its file cannot be written whole.
    fill = ("import os\nf = open(%r, 'wb')\ntry:\n    while True: f.write(b'0' * 65536); f.flush()\nexcept OSError: pass\n"
            "f.close(); os.truncate(%r, os.path.getsize(%r) - 65536)\n") % (str(filler), str(filler), str(filler))
    _hooks(runtime, pad=256 * 1024, **{"3": {"run": [sys.executable, "-c", fill]}})
    cut = edgebench(runtime, "run", "--suite", "faults.toml", "--results", str(tiny_disk), cwd=tmp_path)
    assert cut.returncode == 3, cut.stderr
    message = _error_line(cut.stderr)
    assert "No space left on device" in message or "disk is full" in message, message
    assert str(tiny_disk) in message
    run_id = message.split("edgebench run --resume ")[1].split()[0]
    on_disk = [p for p in (tiny_disk / "runs" / run_id).rglob("*") if p.is_file()]
    for stdout in (p for p in on_disk if p.name.endswith(".stdout")):
        json.loads(stdout.read_text())  # whole, or not there at all
    assert not [p for p in on_disk if p.name.startswith(".")]  # no write in progress left behind

    filler.unlink()
    resumed = edgebench(runtime, "run", "--resume", run_id, "--results", str(tiny_disk), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    store = Store(tiny_disk)
    _assert_complete_and_once(store, run_id)
    assert _starts(runtime) == PROCESSES + 1
    store.close()

