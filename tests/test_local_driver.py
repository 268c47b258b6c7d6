"""The local driver: exit codes, signals, timeouts, rusage that is the benchmark's own,
arguments passed verbatim, and atomic sha256-checked pushes."""

from __future__ import annotations

import sys

import pytest

from harness.drivers.local import LocalDriver
from harness.telemetry.factory import telemetry_for

HOSTILE = ["; rm -rf /tmp/x", "$(touch /tmp/pwned)", "`id`", "it's \"quoted\"", "two\nlines", "ünïcödé ✓", ""]


def test_arguments_reach_the_process_verbatim():
    completed = LocalDriver().run([sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *HOSTILE], timeout=30)
    assert completed.ok
    import json

    assert json.loads(completed.stdout) == HOSTILE


def test_peak_rss_is_the_child_own_not_the_parent_one():
    """The harness process is large (pandas is loaded here); the child's peak must not inherit it."""
    import pandas  # noqa: F401  (makes this process's RSS far larger than the small child's)

    small = LocalDriver().run([sys.executable, "-S", "-c", "pass"], timeout=30)
    big = LocalDriver().run([sys.executable, "-S", "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"], timeout=30)
    assert small.rusage and big.rusage
    assert small.rusage.max_rss_kb < 40_000
    assert 300 * 1024 <= big.rusage.max_rss_kb < 360 * 1024


def test_exit_codes_signals_and_missing_binaries():
    driver = LocalDriver()
    assert driver.run([sys.executable, "-c", "import sys; sys.exit(3)"], timeout=30).exit_code == 3
    killed = driver.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], timeout=30)
    assert killed.exit_code == -9 and killed.oom_killed and killed.rusage is not None
    missing = driver.run(["/nonexistent/llama-bench"], timeout=30)
    assert missing.exit_code == 127 and "cannot start" in missing.stderr


def test_timeout_kills_the_process_and_keeps_its_rusage():
    started: list[int] = []
    completed = LocalDriver().run([sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(60)"], timeout=1, on_start=started.append)
    assert completed.timed_out and not completed.ok
    assert completed.stdout == "hi\n" and completed.rusage is not None
    assert started and started[0] > 0


def test_push_is_atomic_verified_and_skipped_when_identical(tmp_path):
    driver = LocalDriver(workdir=str(tmp_path / "dev"))
    src = tmp_path / "model.gguf"
    src.write_bytes(b"GGUF" + bytes(1000))
    remote = str(tmp_path / "dev" / "models" / "model.gguf")
    driver.push(src, remote)
    assert driver.sha256(remote) == driver.sha256(str(src))
    before = (tmp_path / "dev" / "models" / "model.gguf").stat().st_mtime_ns
    driver.push(src, remote)
    assert (tmp_path / "dev" / "models" / "model.gguf").stat().st_mtime_ns == before
    assert not list((tmp_path / "dev" / "models").glob(".*partial"))
    assert driver.sha256(str(tmp_path / "nope")) is None


def test_facts_describe_this_machine():
    facts = LocalDriver().facts()
    assert facts.driver == "local" and facts.cores >= 1 and facts.ram_mb > 0 and facts.arch
    assert facts.power_source


def test_unknown_drivers_list_the_valid_ones():
    from harness.drivers import driver_class
    from harness.errors import EdgebenchError

    with pytest.raises(EdgebenchError, match="valid: .*local"):
        driver_class("telnet")


def test_probe_runs_keep_the_gpu_figures_with_their_reason(tmp_path):
    """With the probe in charge, NVML's GPU figures still come back (missing here, with why)."""
    from harness.drivers.base import Completed

    probe_dir = tmp_path / "rt"
    (probe_dir / "bin").mkdir(parents=True)
    (probe_dir / "bin" / "edgebench-probe").write_text("")
    telemetry = telemetry_for(LocalDriver(workdir=str(tmp_path / "dev")), str(probe_dir))

    class Inner:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def metrics(self, completed, windows, tokens, no_window=None):
            return []

    telemetry.inner = Inner()
    with telemetry:
        pass
    names = {m.name: m for m in telemetry.metrics(Completed(("x",), 0, "", "", 0.1), (), 0)}
    assert set(names) == {"gpu_power_w", "gpu_energy_j", "gpu_mem_peak_mb", "gpu_load_pct"}
    assert all(m.value is None and "NVIDIA" in m.missing_reason for m in names.values())
