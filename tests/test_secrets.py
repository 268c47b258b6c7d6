"""A password given to edgebench stays where it was given: a real PostgreSQL user with a scram
password and a real Redis with one, searched for in everything edgebench writes or prints
(the leases a busy device shows, `lab status`, a failing connection, a crash's traceback, the
crontab line, the report, every row of every table, every file of the results folder) and in
the environment of the running benchmark process. Plus the masking of every URL shape, the
modes of the files edgebench keeps, and the SSH board's work folder.

The manual runs here use the stand-in llama-bench of tests/conftest.py in a runtime folder of
its own (a llama.cpp build is not what these tests are about, and takes minutes).
"""

from __future__ import annotations

import os
import pwd
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine, inspect, select

from harness.credentials import child_env, mask_url
from harness.drivers.adb import AdbDriver
from harness.drivers.base import StagingError
from harness.drivers.local import LocalDriver
from harness.drivers.ssh import SshDriver
from harness.errors import StoreError
from harness.lab.app import broker_url, make_app
from harness.lab.jobs import LabRequest
from harness.lab.schedule import cron_line
from harness.paths import cache_dir, state_dir
from harness.records import Case
from harness.store.db import Store
from harness.store.location import masked, store_url

from .conftest import REPO, fake_llama_bench
from .pg_fixture import PASSWORD
from .ports import free_port
from .sshd_fixture import Sshd

SUITE = 'name = "secrets"\nrepetitions = 1\ninprocess_repetitions = 1\nmode = "none"\n[[prefill]]\nprompt = 64\n'

# The CLI with its runtime build swapped for a folder holding the stand-in llama-bench (argv[1]);
# with EDGEBENCH_TEST_CRASH set, preparing the run raises an exception edgebench does not expect.
WRAPPER = '''
import os, sys
from pathlib import Path
from harness.run import session
from harness.runtimes.build import Manifest, Runtime

root = Path(sys.argv.pop(1))
manifest = Manifest(key="0" * 64, target="host", llama_cpp_commit="stand-in", llama_cpp_python_version="0", source_sha256="0" * 64,
                    cmake_flags=(), compiler="none", files={}, built_at="2025-01-01T00:00:00+00:00", build_seconds=0.0)
session.build_runtime = lambda target, **_: (Runtime(root, manifest), True)
if os.environ.get("EDGEBENCH_TEST_CRASH"):
    def crash(*_, **__):
        raise RuntimeError("injected crash")
    session.prepare = crash
from harness.cli import app
app(prog_name="edgebench")
'''


# --- masking ------------------------------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("postgresql://alice:pw-1@db.lab:5432/bench", "postgresql://alice:***@db.lab:5432/bench"),
    ("postgresql://alice:p@w-1@db.lab/bench", "postgresql://alice:***@db.lab/bench"),  # '@' in the password
    ("postgresql://alice:p:w-1@db.lab/bench", "postgresql://alice:***@db.lab/bench"),  # ':' in the password
    ("postgresql://alice:p/w-1@db.lab/bench", "postgresql://alice:***@db.lab/bench"),  # '/' in the password
    ("postgresql://alice:pw-1@db.lab:port/bench", "postgresql://alice:***@db.lab:port/bench"),  # SQLAlchemy rejects it
    ("alice:pw-1@db.lab/bench", "***@db.lab/bench"),  # no scheme://: all of the user information
    ("postgresql:alice:pw-1@db.lab/bench", "***@db.lab/bench"),
    ("postgresql://alice@db.lab/bench?password=pw-1&sslmode=require", "postgresql://alice@db.lab/bench?password=***&sslmode=require"),
    ("postgresql://db.lab/bench?sslmode=require&sslpassword=pw-1", "postgresql://db.lab/bench?sslmode=require&sslpassword=***"),
    ("host=db.lab password=pw-1 dbname=bench", "host=db.lab password=*** dbname=bench"),  # a libpq conninfo string
    ("host=db.lab password='pw-1 x' dbname=bench", "host=db.lab password=*** dbname=bench"),
    ("redis://:pw-1@broker:6379/0", "redis://:***@broker:6379/0"),
    ("rediss://worker:pw-1@broker:6380/0?ssl_cert_reqs=required", "rediss://worker:***@broker:6380/0?ssl_cert_reqs=required"),
    ("sqlite:////srv/results/edgebench.sqlite", "sqlite:////srv/results/edgebench.sqlite"),  # nothing to hide: unchanged
    ("postgresql://alice@db.lab/bench", "postgresql://alice@db.lab/bench"),
])
def test_every_url_shape_is_masked(url, shown):
    assert mask_url(url) == shown
    assert "pw-1" not in mask_url(url)


@pytest.mark.parametrize("url", ["postgresql://alice:pw-1@db.lab:port/bench", "postgresql://alice:p@w-1@db.lab/bench",
                                 "postgres:alice:pw-1@db.lab/bench", "mysql://alice:pw-1@db.lab/bench"])
def test_a_bad_store_url_is_refused_without_quoting_it_or_the_parser(tmp_path, url):
    with pytest.raises(StoreError) as refused:
        store_url(tmp_path, url)
    message = str(refused.value)
    assert "pw-1" not in message and "w-1" not in message and "invalid literal" not in message
    chained = refused.value.__cause__ or (None if refused.value.__suppress_context__ else refused.value.__context__)
    assert chained is None  # nor in a chained exception a traceback would show


def test_a_store_where_is_masked_whatever_the_query(tmp_path):
    url = store_url(tmp_path, "postgresql://alice:pw-1@db.lab/bench?sslmode=require&password=pw-1")
    assert masked(url) == "postgresql+psycopg://alice:***@db.lab/bench?password=***&sslmode=require"


# --- environment ----------------------------------------------------------------------------

SECRETS = {"EDGEBENCH_STORE": "postgresql://u:pw-store@h/db", "EDGEBENCH_BROKER": "redis://:pw-broker@h/0", "PGPASSWORD": "pw-libpq"}


def test_benchmark_processes_get_no_credential(monkeypatch, tmp_path):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("EDGEBENCH_TEST_KEPT", "yes")
    driver = LocalDriver(workdir=str(tmp_path / "dev"))
    for env in (None, {"EXTRA": "1"}):
        seen = driver.run(["sh", "-c", "tr '\\0' '\\n' < /proc/$$/environ"], timeout=30, env=env).stdout
        assert "EDGEBENCH_TEST_KEPT=yes" in seen and not any(name in seen or value in seen for name, value in SECRETS.items())
        spawned = driver.spawn(["sh", "-c", "tr '\\0' '\\n' < /proc/$$/environ"], env=env).wait(30).stdout
        assert "EDGEBENCH_TEST_KEPT=yes" in spawned and "pw-" not in spawned
    # Remote drivers send only what they are given, and never a credential even then.
    remote = SshDriver("board", str(tmp_path), host="nowhere").command_line(["true"], {**SECRETS, "X": "1"})
    assert "export X=1" in remote and "pw-" not in remote
    assert "pw-" not in AdbDriver.command_line(["true"], env={**SECRETS, "X": "1"})
    assert child_env({"X": "1"}, base={}) == {"X": "1"}


# --- file modes -----------------------------------------------------------------------------

def _private(path: Path, mode: int) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == mode


def test_the_store_broker_cache_and_state_are_the_users_alone(tmp_path, monkeypatch):
    results = tmp_path / "results"
    with Store(results) as store:
        store.create_run(device="local", suite_name="t", suite_text="", repetitions=1, timeout_s=1, model_sha256="0" * 64,
                         cases=[Case("llamabench", "prefill", 16, 0, 0)], model_info={}, runtime_key=None, runtime_manifest=None,
                         facts={}, command={}, version="t")
        database = results / "edgebench.sqlite"
        assert _private(database, 0o600) and _private(results / "edgebench.sqlite-wal", 0o600)  # SQLite gives its WAL the file's mode

    url = broker_url(results)
    make_app(url).send_task("edgebench.nothing", queue="secrets-test")  # kombu creates its tables and writes a message
    lab = results / "lab"
    assert _private(lab, 0o700) and all(_private(f, 0o600) for f in lab.iterdir()), [(f.name, oct(f.stat().st_mode)) for f in lab.iterdir()]

    monkeypatch.delenv("EDGEBENCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "edgebench").mkdir(parents=True, mode=0o755)
    (tmp_path / "xdg" / "edgebench").chmod(0o755)  # an older edgebench's cache, open to all: closed again
    assert cache_dir() == tmp_path / "xdg" / "edgebench" and _private(cache_dir(), 0o700)
    monkeypatch.setenv("EDGEBENCH_STATE", str(tmp_path / "state"))
    assert _private(state_dir(), 0o700)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    theirs.chmod(0o755)
    if os.geteuid() == 0:  # a folder another user chose for us is left as it is
        os.chown(theirs, pwd.getpwnam("nobody").pw_uid, -1)
        monkeypatch.setenv("EDGEBENCH_CACHE", str(theirs))
        assert cache_dir() == theirs and _private(theirs, 0o755)


# --- the crontab line -------------------------------------------------------------------------

def _sourced_file(line: str) -> Path:
    """The file a crontab line sources (`. FILE`), its `\\%` read back as cron does."""
    words = shlex.split(line.split(" ", 5)[5].replace("\\%", "%"))
    return Path(words[words.index(".") + 1])


def test_the_cron_line_names_no_password_and_reaches_the_same_store(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEBENCH_STORE", raising=False)
    monkeypatch.delenv("EDGEBENCH_BROKER", raising=False)
    inventory = tmp_path / "lab.toml"
    inventory.write_text('[[device]]\nname = "x"\ndriver = "local"\n')
    results = tmp_path / "res 100%"  # a % in the line must reach the shell as a %
    store, broker = "postgresql://alice:p%40w'$(id)%x@db.lab/bench", "redis://:pw-1@broker:6379/0"
    line = cron_line("0 2 * * *", inventory, LabRequest(("x",), "quick", ("default",)), results, store, broker)
    assert "pw-1" not in line and "p%40w" not in line and "id)" not in line
    fields, command = line.split(" ", 5)[:5], line.split(" ", 5)[5]
    assert fields == ["0", "2", "*", "*", "*"] and "%" not in command.replace("\\%", "")
    env_file = _sourced_file(line)
    assert env_file.parent == results.resolve() / "lab" and _private(env_file, 0o600) and _private(env_file.parent, 0o700)
    shown = subprocess.run(["sh", "-c", '. "$1" && printf "%s\\n%s" "$EDGEBENCH_STORE" "$EDGEBENCH_BROKER"', "sh", str(env_file)],
                           capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert shown.stdout == f"{store}\n{broker}"  # exactly the URLs given, whatever they hold
    again = cron_line("0 2 * * *", inventory, LabRequest(("x",), "quick", ("default",)), results, store.replace("%x", "%y"), broker)
    assert again == line and "%y@" in env_file.read_text()  # another password for the same store: the same file, rewritten
    with pytest.raises(StoreError):
        cron_line("0 2 * * *", inventory, LabRequest(("x",), "quick", ("default",)), results, "postgresql://a:pw-1@h:port/db", None)


# --- the SSH board's work folder -----------------------------------------------------------------

@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.kill()


def test_the_board_work_folder_is_private_and_ours(sshd, tmp_path):
    sshd.board(None)
    fresh = tmp_path / "fresh" / "work"
    assert sshd.driver(workdir=str(fresh)).workdir == str(fresh) and _private(fresh, 0o700)
    opened = tmp_path / "opened"
    opened.mkdir(mode=0o755)
    opened.chmod(0o755)
    assert sshd.driver(workdir=str(opened)).workdir == str(opened) and _private(opened, 0o700)
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(StagingError, match="not .*'s own folder"):
        _ = sshd.driver(workdir=str(tmp_path / "link")).workdir
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, pwd.getpwnam("nobody").pw_uid, -1)
        with pytest.raises(StagingError, match="set `workdir` in the inventory"):
            _ = sshd.driver(workdir=str(theirs)).workdir
    home = pwd.getpwnam(sshd.user).pw_dir
    default = SshDriver("board", None, **sshd.settings())
    assert default.workdir == f"{home}/.cache/edgebench/device" and _private(Path(default.workdir), 0o700)
    default.close()


# --- end to end: PostgreSQL with a scram password, Redis with one ----------------------------------


@pytest.fixture
def stand_in(tmp_path):
    """A runtime folder whose llama-bench writes its pid, then waits for `go` before measuring."""
    root = tmp_path / "runtime"
    (root / "bin").mkdir(parents=True)
    script = fake_llama_bench(reps=1, seconds=0.1, load_s=0.1).split("\n", 1)
    wait = f'echo $$ > {tmp_path / "bench.pid"}\nwhile [ ! -e {tmp_path / "go"} ]; do sleep 0.05; done\n'
    (root / "bin" / "llama-bench").write_text(f"{script[0]}\n{wait}{script[1]}")
    (root / "bin" / "llama-bench").chmod(0o755)
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    return root


def _edgebench(tmp_path: Path, runtime: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True):
    argv = [sys.executable, str(tmp_path / "wrapper.py"), str(runtime), *args]
    full = {**child_env(), "COLUMNS": "200", "PYTHONPATH": str(REPO), **(env or {})}
    if not wait:
        return subprocess.Popen(argv, cwd=tmp_path, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, cwd=tmp_path, env=full, capture_output=True, text=True, timeout=600)


def _until(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {seconds:g} s")


def test_a_password_is_found_nowhere(tmp_path, pg_url, redis_server, stand_in, default_model):
    secrets = (PASSWORD, redis_server.password)

    def clean(text: str) -> bool:
        return not any(secret in text for secret in secrets)

    (tmp_path / "s.toml").write_text(SUITE)
    inventory = tmp_path / "lab.toml"
    inventory.write_text(f'[[device]]\nname = "box"\ndriver = "local"\npseudo = "secrets"\nworkdir = "{tmp_path / "dev"}"\n')
    results = tmp_path / "results"
    common = ("--results", str(results))
    lab_env = {"EDGEBENCH_STORE": pg_url, "EDGEBENCH_BROKER": redis_server.url}
    printed = []

    # A manual run given the store on its command line and in its environment; its benchmark waits for `go`.
    first = _edgebench(tmp_path, stand_in, "run", "--device", "box", "--inventory", str(inventory), "--suite", "s.toml",
                       "--no-quality", "--store", pg_url, *common, env=lab_env, wait=False)
    try:
        pid = int(_until(lambda: (tmp_path / "bench.pid").is_file() and (tmp_path / "bench.pid").read_text().strip(), 300,
                         "benchmark process"))
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        assert "PYTHONPATH=" in environ  # read from the benchmark itself, which inherits the rest
        assert clean(environ) and "EDGEBENCH_STORE" not in environ and "EDGEBENCH_BROKER" not in environ

        # Another manual run meets the busy device: the holder is who and what, never a command line.
        busy = _edgebench(tmp_path, stand_in, "run", "--device", "box", "--inventory", str(inventory), "--suite", "s.toml",
                          "--no-quality", "--store", pg_url, *common)
        message = " ".join(busy.stderr.split())
        assert busy.returncode == 2 and "is busy: held by run " in message, busy.stderr
        assert f"by {pwd.getpwuid(os.getuid()).pw_name} (pid " in message and "--store" not in message and "postgresql" not in message
        printed += [busy.stdout, busy.stderr]

        submitted = _edgebench(tmp_path, stand_in, "lab", "submit", "--inventory", str(inventory), "--suite", "s.toml",
                               "--store", pg_url, "--broker", redis_server.url, *common)
        assert submitted.returncode == 0, submitted.stderr
        status = _edgebench(tmp_path, stand_in, "lab", "status", "--store", pg_url, *common)
        assert status.returncode == 0 and "queued" in status.stdout, status.stderr
        printed += [submitted.stdout, submitted.stderr, status.stdout, status.stderr]
    finally:
        (tmp_path / "go").touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    printed += [out, err]

    # Connections that fail: a wrong port, a URL SQLAlchemy cannot parse, one with an '@' in the password.
    port = pg_url.rsplit(":", 1)[1].split("/")[0]
    for url in (pg_url.replace(f":{port}/", f":{free_port()}/"), pg_url.replace(f":{port}/", ":port/"),
                pg_url.replace(f":{PASSWORD}@", f":{PASSWORD}@x@")):
        failed = _edgebench(tmp_path, stand_in, "results", "list", "--store", url, *common)
        assert failed.returncode != 0 and "edgebench:***@" in " ".join(failed.stderr.split()), failed.stderr
        printed += [failed.stdout, failed.stderr]

    # An exception edgebench does not expect: its traceback shows no local variable (one holds the URL).
    crashed = _edgebench(tmp_path, stand_in, "run", "--store", pg_url, *common, env={"EDGEBENCH_TEST_CRASH": "1"})
    assert crashed.returncode != 0 and "injected crash" in crashed.stderr, crashed.stderr
    printed += [crashed.stdout, crashed.stderr]

    line = _edgebench(tmp_path, stand_in, "lab", "schedule", "add", "--inventory", str(inventory), "--suite", "s.toml", "--cron",
                      "0 2 * * *", "--print", *common, env=lab_env)
    assert line.returncode == 0 and ". " in line.stdout, line.stderr
    printed += [line.stdout, line.stderr]
    # The line's environment file reaches the same store: the run above is listed from it.
    listed = subprocess.run(["sh", "-c", '. "$1" && exec "$2" -m harness results list --results "$3"', "sh", _sourced_file(line.stdout),
                             sys.executable, str(results)], cwd=tmp_path, capture_output=True, text=True,
                            env={**child_env(), "COLUMNS": "200", "PYTHONPATH": str(REPO)})
    assert listed.returncode == 0 and "secrets" in listed.stdout, listed.stderr  # the suite of the run stored in PostgreSQL

    assert all(clean(text) for text in printed), [t for t in printed if not clean(t)]
    reports = list(results.rglob("report.html"))
    assert reports and all(clean(r.read_text(errors="replace")) for r in reports)
    for path in results.rglob("*"):  # the facts, the raw logs, the report, the lab folder (but the 0600 cron file)
        if path.is_file() and path.suffix != ".env":
            assert clean(path.read_bytes().decode(errors="replace")), path
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        tables = inspect(engine).get_table_names()
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            dumped = {name: [tuple(row) for row in conn.execute(select(meta.tables[name]))] for name in tables}
    finally:
        engine.dispose()
    assert {"runs", "leases", "lab_jobs", "executions", "measurements"} <= set(tables) and dumped["runs"] and dumped["lab_jobs"]
    assert all(clean(repr(rows)) for rows in dumped.values()), [n for n, rows in dumped.items() if not clean(repr(rows))]
