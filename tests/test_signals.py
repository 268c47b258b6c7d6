"""SIGTERM and SIGHUP stop a run as Ctrl-C does: what it started on the device is killed, the
run is marked interrupted (exit 3) and `--resume` finishes it.

The signals are real (os.kill), the processes are real: a real `edgebench run` on the local
device, and each driver's `run` (local, the loopback sshd board, the emulated ADB phone)
interrupted mid-command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from harness.errors import Interrupted
from harness.signals import stop_requests
from harness.store.db import Store

from .conftest import REPO
from .sshd_fixture import Sshd
from .test_cli import edgebench

# Long enough a decode that the signal lands while llama-bench runs (round 1, second case).
LONG_DECODE = """
name = "signalled"
repetitions = 2
inprocess_repetitions = 1
warmup = false
mode = "none"
[[prefill]]
prompt = 16
[[decode]]
tokens = 512
"""


def _alive(pids: list[int]) -> list[int]:
    """Those of `pids` still running (a zombie runs nothing: it only waits to be reaped)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_sigterm_kills_the_benchmark_marks_the_run_interrupted_and_resume_finishes_it(tmp_path, host_runtime, default_model):
    (tmp_path / "long.toml").write_text(LONG_DECODE)
    results = tmp_path / "results"
    run = subprocess.Popen([sys.executable, "-m", "harness", "run", "--suite", "long.toml", "--results", str(results)], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)})
    try:
        def decoding() -> dict[int, str]:
            """The run's process tree (pid -> name) once llama-bench decodes; short-lived helpers
            may end while it is read."""
            tree, decodes = {}, False
            for proc in psutil.Process(run.pid).children(recursive=True):
                try:
                    tree[proc.pid] = proc.name()
                    decodes = decodes or (tree[proc.pid] == "llama-bench" and "512" in proc.cmdline())
                except psutil.Error:
                    pass
            return tree if decodes else {}

        tree = _wait_for(decoding, 600, "llama-bench decoding 512 tokens")
        assert set(tree.values()) >= {"llama-bench", "edgebench-probe"}
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 3, stderr
    assert "interrupted by SIGTERM" in " ".join(stderr.split())
    assert _alive(list(tree)) == []  # llama-bench, the probe and the reaper went with it
    store = Store(results)
    row = store.run("latest")
    assert row.status == "interrupted" and f"--resume {row.id}" in row.note and "SIGTERM" in row.note
    before = {(e.case_key, e.rep): e.id for e in store.executions(row.id) if e.status == "ok"}
    assert len(before) == 1  # the first prefill finished; the decode was cut

    resumed = edgebench("run", "--resume", "latest", "--results", str(results), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    store = Store(results)
    after = {(e.case_key, e.rep): e.id for e in store.executions(row.id) if e.status == "ok"}
    assert len(after) == 4 and all(after[k] == v for k, v in before.items())  # finished processes are not redone
    assert store.run(row.id).status == "finished"


def test_a_second_signal_does_not_cut_the_cleanup_short():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="SIGHUP"):
        with stop_requests():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)  # the handler raises here
    raised_again = []
    with stop_requests():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Interrupted:
            try:
                os.kill(os.getpid(), signal.SIGTERM)  # while unwinding: noted, not raised
                time.sleep(0.2)
            except Interrupted:
                raised_again.append(True)
    assert raised_again == []
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handlers are back


# --- every driver kills what it started when its `run` is interrupted -------------------------

MARK = "61.4142"  # a sleep nobody else runs, so its processes can be found on this machine


def _sleepers() -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] and proc.info["cmdline"][:2] == ["sleep", MARK]:
            found.append(proc.pid)
    return _alive(found)


def _interrupted_mid_command(driver, sig: signal.Signals) -> None:
    """Run two background sleeps and a foreground one on the device; signal this process once
    they run; the driver must leave none of them behind."""
    command = ["sh", "-c", f"sleep {MARK} & sleep {MARK} & sleep {MARK}; wait"]
    timer = threading.Thread(target=lambda: (_wait_for(lambda: len(_sleepers()) == 3, 60, "the sleeps"), os.kill(os.getpid(), sig)))
    with stop_requests():
        timer.start()
        with pytest.raises(Interrupted, match=sig.name):
            driver.run(command, timeout=120)
    timer.join()
    _wait_for(lambda: not _sleepers() or None, 15, "the device's processes to be killed")


@pytest.fixture
def board(tmp_path):
    server = Sshd(tmp_path / "sshd").start()
    driver = server.driver()
    yield driver
    driver.close()
    server.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_local_run_kills_its_process_group(sig):
    from harness.drivers.local import LocalDriver

    _interrupted_mid_command(LocalDriver(), sig)


def test_ssh_run_kills_the_remote_process_group(board):
    _interrupted_mid_command(board, signal.SIGTERM)
    assert board.run(["true"], timeout=30).ok  # the connection is still usable afterwards


def test_adb_run_kills_the_program_and_its_children(adb_server, phone):
    from tests.adb_emulator.fixtures import adb_driver

    _interrupted_mid_command(adb_driver(adb_server, phone), signal.SIGTERM)
