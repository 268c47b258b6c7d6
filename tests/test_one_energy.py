"""One energy meaning on every driver: one recorded power trace, fed through the local, ADB and
SSH paths, gives the same J/token on each.

The trace is a public tegrastats line of a Jetson Orin Nano (tests/data/jetson/orin-nano.txt,
`VDD_IN 5704mW`: module input). The local and ADB paths read it as the INA3221 hwmon file the
probe samples (a sysfs tree under the probe's `--root` here, the emulated phone's own /sys
there); the SSH board replays the line through `tegrastats`, which runs beside the probe and is
moved onto its clock. Each path runs the same stand-in llama-bench ("model load", then timed
repetitions, announced as `--progress` announces them) under its driver's telemetry, and the
windows come from the marks its probe stamped, as the runner does it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.drivers.local import LocalDriver
from harness.engines.llamabench import LlamaBench
from harness.records import Case
from harness.runtimes.native import compile_probe
from harness.telemetry import energy, tegrastats
from harness.telemetry.factory import telemetry_for
from harness.telemetry.probe import ProbeTelemetry
from tests.adb_emulator.fixtures import adb_driver
from tests.sshd_fixture import Sshd

from .conftest import DATA, fake_llama_bench

REPS, SECONDS, LOAD_S = 2, 1.2, 0.8
CASE = Case("llamabench", "prefill", 64, 0, 0, inprocess_reps=REPS)
HWMON = "/sys/class/hwmon/hwmon0"


def _recorded_vdd_in_w() -> float:
    (line,) = (DATA / "jetson" / "orin-nano.txt").read_text().splitlines()
    (mw,) = [s.value for s in tegrastats.parse_line(line, 0.0) if s.source == "tegrastats/rail/VDD_IN"]
    return mw / 1000


def _ina3221(write, watts: float) -> None:
    """The module-input rail as the ina3221 hwmon driver shows it (power in uW)."""
    for name, value in (("name", "ina3221"), ("in1_label", "VDD_IN"), ("power1_input", str(round(watts * 1e6)))):
        write(f"{HWMON}/{name}", f"{value}\n")


def _runtime(folder: Path) -> Path:
    compile_probe("cc", folder / "bin" / "edgebench-probe")
    bench = folder / "bin" / "llama-bench"
    bench.write_text(fake_llama_bench(reps=REPS, seconds=SECONDS, load_s=LOAD_S))
    bench.chmod(0o755)
    return folder


def _measure(driver, telemetry, runtime_dir: str) -> tuple[dict, dict]:
    """One process, as the runner's step runs it: wrap, run, parse with the stamped marks, metrics."""
    engine = LlamaBench()
    with telemetry:
        done = driver.run(telemetry.wrap([f"{runtime_dir}/bin/llama-bench"], engine.marks), timeout=120,
                          on_start=telemetry.attach)
    assert done.ok, done.stderr
    parsed = engine.parse(CASE, done, telemetry.marks())
    assert [round(d, 9) for _, d in parsed.windows] == [SECONDS] * REPS and parsed.tokens == 64 * REPS
    return {m.name: m for m in telemetry.metrics(done, parsed.windows, parsed.tokens, parsed.no_window)}, telemetry.details()


@pytest.fixture
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.kill()


def test_one_recorded_trace_gives_the_same_j_per_token_on_local_adb_and_ssh(tmp_path, adb_server, phone, sshd):
    watts = _recorded_vdd_in_w()
    assert watts == 5.704
    runtime = _runtime(tmp_path / "runtime")
    paths = {}

    root = tmp_path / "local-root"  # local: the probe reads a sysfs tree under --root
    _ina3221(lambda path, text: (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
             or (root / path.lstrip("/")).write_text(text), watts)
    local = LocalDriver(workdir=str(tmp_path / "local-work"))
    paths["local"] = _measure(local, ProbeTelemetry(local, str(runtime / "bin/edgebench-probe"), local.workdir,
                                                    root=str(root)), str(runtime))

    _ina3221(phone.fs.write, watts)  # adb: the phone's own /sys, through the driver's telemetry
    android = adb_driver(adb_server, phone)
    remote = f"{android.workdir}/runtimes/test"
    for name in ("edgebench-probe", "llama-bench"):
        android.push(runtime / "bin" / name, f"{remote}/bin/{name}")
    paths["adb"] = _measure(android, telemetry_for(android, remote), remote)

    sshd.board("orin-nano")  # ssh: the same line from tegrastats, beside the probe
    board = sshd.driver()
    paths["ssh"] = _measure(board, telemetry_for(board, str(runtime)), str(runtime))
    board.close()

    expected = watts * REPS * SECONDS / (64 * REPS)  # the timed repetitions only: not the load, not the warmup
    for name, (metrics, details) in paths.items():
        assert details["power_scope"] == energy.MODULE_INPUT, name
        assert metrics["energy_j_per_token"].value == pytest.approx(expected, rel=1e-9), name
        assert metrics["avg_power_w"].value == pytest.approx(watts, rel=1e-9), name
        assert metrics["idle_power_w"].value == pytest.approx(watts, rel=1e-9), name
        assert abs(metrics["energy_j_net"].value) < 1e-9, name
    assert paths["ssh"][1]["power_source"].startswith("tegrastats:")
    assert paths["local"][1]["power_source"] == paths["adb"][1]["power_source"] == "rail/hwmon0:ina3221/VDD_IN"
