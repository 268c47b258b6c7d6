"""The bandwidth program, compiled the way runtimes compile it and run for real on this host."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from harness.analysis.roofline import bandwidth_for
from harness.drivers.local import LocalDriver
from harness.errors import EdgebenchError
from harness.plan.cores import resolve_threads
from harness.records import Case
from harness.runtimes.native import BANDWIDTH_NAME, compile_probe
from harness.telemetry.bandwidth import Request, device_bandwidth, parse_output, requests_for
from harness.telemetry.clusters import Cluster

# Recorded from this program on a 2-core AMD EPYC VM (the host the tests were written on).
RECORDED = """edgebench-bandwidth 1
kernel triad
threads 2
cpus -
cache_bytes 33554432
array_bytes 134217728
capped 0
bytes_per_rep 402653184
rep 0 9386019
rep 1 11196680
rep 2 7695719
rep 3 6812861
rep 4 11120165
check ok
"""


@pytest.fixture(scope="module")
def runtime_dir(tmp_path_factory):
    """A folder laid out like a runtime, holding only the bandwidth program."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    root = tmp_path_factory.mktemp("runtime")
    compile_probe("cc", root / "bin" / BANDWIDTH_NAME, name=BANDWIDTH_NAME)
    return root


def test_parse_recorded_output():
    result = parse_output(RECORDED)
    assert result.threads == 2 and result.cpus == () and result.cache_bytes == 32 << 20
    assert result.samples_gbps[0] == pytest.approx(402653184 / 9386019)
    assert result.gbps == pytest.approx(402653184 / 9386019)  # the median of five
    spread = result.spread()
    assert spread["min"] == pytest.approx(402653184 / 11196680) and spread["max"] == pytest.approx(402653184 / 6812861)


@pytest.mark.parametrize("text, message", [
    (RECORDED.replace("check ok", "check bad"), "check failed"),
    (RECORDED.replace("edgebench-bandwidth 1", "edgebench-bandwidth 9"), "format"),
    ("\n".join(l for l in RECORDED.splitlines() if not l.startswith("rep ")), "no timed repetitions"),
    (RECORDED.replace("array_bytes 134217728\n", ""), "malformed"),
])
def test_bad_output_is_refused(text, message):
    with pytest.raises(EdgebenchError, match=message):
        parse_output(text)


def test_real_program_threads_pins_and_checks(runtime_dir):
    done = subprocess.run([str(runtime_dir / "bin" / BANDWIDTH_NAME), "--threads", "2", "--array-mb", "8", "--reps", "3"],
                          capture_output=True, text=True, timeout=120)
    result = parse_output(done.stdout)
    assert result.threads == 2 and len(result.rep_ns) == 3 and result.array_bytes == 8 << 20 and result.gbps > 0
    pinned = parse_output(subprocess.run([str(runtime_dir / "bin" / BANDWIDTH_NAME), "--cpus", "0", "--array-mb", "8", "--reps", "2"],
                                         capture_output=True, text=True, timeout=120).stdout)
    assert pinned.threads == 1 and pinned.cpus == (0,)
    bad = subprocess.run([str(runtime_dir / "bin" / BANDWIDTH_NAME), "--threads", "2", "--cpus", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "one core per thread" in bad.stderr


def test_requests_follow_the_cases_threads():
    decode = Case("llamabench", "decode", 0, 8, 0)
    clusters = [Cluster((4, 5, 6, 7), 1024, 2800.0), Cluster((0, 1, 2, 3), 400, 1800.0)]
    wanted = [decode, Case("llamabench", "decode", 0, 8, 0, (("threads", 2),)), Case("llamabench", "decode", 0, 8, 0, (("threads", "all"),)),
              Case("pyllama", "latency", 8, 8, 0)]
    planned = [resolve_threads(case, clusters, takes_mask=case.engine == "llamabench") for case in wanted]  # as the plan does
    cases, cores = [case for case, _ in planned], {case.key: how for case, how in planned if how}
    assert requests_for(cases, cores) == [Request(4, (4, 5, 6, 7)), Request(2), Request(8, (4, 5, 6, 7, 0, 1, 2, 3))]
    assert requests_for([decode], {}) == [Request(None)]  # one cluster: no choice, llama.cpp's default


def test_measured_once_then_cached_unless_refreshed(runtime_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEBENCH_STATE", str(tmp_path))
    driver = LocalDriver()
    facts = {"name": "local", "cores": 2, "extra": {"kernel": "x"}}
    first = device_bandwidth(driver, facts, str(runtime_dir), "sha", [Request(1)])
    assert first["cached"] is False and not first["errors"] and first["results"][0]["threads"] == 1
    again = device_bandwidth(driver, facts, str(runtime_dir), "sha", [Request(1)])
    assert again["cached"] is True and again["results"] == first["results"]
    fresh = device_bandwidth(driver, facts, str(runtime_dir), "sha", [Request(1)], refresh=True)
    assert fresh["cached"] is False and fresh["measured_at"] >= first["measured_at"]
    other_state = device_bandwidth(driver, {**facts, "extra": {"kernel": "x", "power_mode": "MAXN"}}, str(runtime_dir), "sha", [Request(1)])
    assert other_state["cached"] is False  # another power mode is another figure
    found, why = bandwidth_for(first, 1)
    assert found is not None and found.threads == 1 and why == ""
    assert bandwidth_for(first, 4) == (None, "bandwidth measured at 1 thread(s), the case ran 4")


def test_failure_is_a_reason_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEBENCH_STATE", str(tmp_path))
    data = device_bandwidth(LocalDriver(), {"name": "local"}, str(tmp_path / "nowhere"), "sha", [Request(None)])
    assert data["results"] == [] and data["errors"] and not list(tmp_path.glob("bandwidth/*.json"))
    assert bandwidth_for(data, 2)[0] is None
