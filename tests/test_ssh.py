"""The SSH driver against a real OpenSSH server on 127.0.0.1 (tests/sshd_fixture.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.boards.linux import parse_facts, permission_hints
from harness.drivers.base import DeviceUnreachable, StagingError
from harness.drivers.ssh import ssh_permission_hints
from harness.errors import BuildError
from harness.telemetry.factory import telemetry_for

from .conftest import DATA, REPO, fake_llama_bench
from .ports import free_port
from .sshd_fixture import Sshd

HOSTILE = ["; rm -rf /", "$(id)", "`id`", "a'b\"c", "two words", "line\nbreak", "ünïcødé ✓", "", "-n", "$HOME", "*"]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.kill()


@pytest.fixture
def board(sshd):
    sshd.board(None)
    driver = sshd.driver()
    yield driver
    driver.close()


def test_hostile_arguments_arrive_unchanged(board):
    done = board.run([sys.executable, "-c", "import json,sys; print(json.dumps(sys.argv[1:]))", *HOSTILE], timeout=30)
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout) == HOSTILE


def test_exit_codes_stderr_env_cwd_and_pid(board, tmp_path):
    done = board.run(["sh", "-c", 'echo out; echo err >&2; echo "$X|$(pwd)"; exit 7'], timeout=30,
                     env={"X": "$(id) 'q'"}, cwd=str(tmp_path))
    assert (done.exit_code, done.stderr) == (7, "err\n")
    assert done.stdout == f"out\n$(id) 'q'|{tmp_path}\n"
    pids = []
    assert board.run(["true"], timeout=30, on_start=pids.append).ok and pids and pids[0] > 1
    killed = board.run(["sh", "-c", "kill -KILL $$"], timeout=30)
    assert killed.exit_code == 137 and killed.oom_killed


def test_timeout_kills_the_remote_process_group(board, tmp_path):
    marker = tmp_path / "still-running"
    nap = f"sleep 29.{os.getpid()}"  # a duration no other process on the machine sleeps for
    done = board.run(["sh", "-c", f"{nap}; touch {marker}"], timeout=1)
    assert done.timed_out and not done.ok
    time.sleep(0.5)
    assert nap not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout  # the child too


def test_push_is_atomic_sha_skipped_and_counts_bytes(board, tmp_path):
    local = tmp_path / "model file.gguf"
    local.write_bytes(os.urandom(300_000))
    remote = str(tmp_path / "device" / "dir with space" / "ünï.gguf")
    assert board.push(local, remote) == 300_000
    assert board.push(local, remote) == 0  # already there: nothing sent
    assert board.bytes_pushed == 300_000
    assert board.sha256(remote) == __import__("hashlib").sha256(local.read_bytes()).hexdigest()
    assert [p.name for p in Path(remote).parent.iterdir()] == ["ünï.gguf"]  # no temp names left
    assert board.sha256(str(tmp_path / "absent")) is None
    back = tmp_path / "back"
    board.pull(remote, back)
    assert back.read_bytes() == local.read_bytes()
    with pytest.raises(StagingError, match="cannot pull"):
        board.pull(str(tmp_path / "absent"), tmp_path / "x")


def test_unknown_host_key_is_refused_with_how_to_trust_it(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    with pytest.raises(DeviceUnreachable) as err:
        sshd.driver(known_hosts=str(empty)).run(["true"], timeout=30)
    text = str(err.value)
    assert "board: unknown host key for [127.0.0.1]" in text and "SHA256:" in text
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in text and "accept_unknown_host" in text
    trusting = sshd.driver(known_hosts=str(empty), accept_unknown_host=True)
    assert trusting.run(["true"], timeout=30).ok
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519 " in empty.read_text()
    assert sshd.driver(known_hosts=str(empty)).run(["true"], timeout=30).ok  # now it is known


def test_changed_host_key_is_refused(sshd, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, blob = other.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    with pytest.raises(DeviceUnreachable, match="does not match .* ssh-keygen -R"):
        sshd.driver(known_hosts=str(known), accept_unknown_host=True).run(["true"], timeout=30)


def test_wrong_key_is_an_authentication_error(sshd, tmp_path):
    wrong = tmp_path / "wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    with pytest.raises(DeviceUnreachable, match=f"board: authentication as {sshd.user} on .* failed with key {wrong}"):
        sshd.driver(key=str(wrong)).run(["true"], timeout=30)


def test_refused_connection(sshd):
    port = free_port()
    with pytest.raises(DeviceUnreachable, match=f"board: cannot connect to .*127.0.0.1:{port}: connection refused"):
        sshd.driver(port=port).facts()


def test_jump_host(sshd):
    jumped = sshd.driver(jump=f"{sshd.user}@127.0.0.1:{sshd.port}")
    assert jumped.run(["echo", "via jump"], timeout=30).stdout == "via jump\n"
    jumped.close()


def test_sshd_killed_mid_run_is_device_unreachable(tmp_path):
    server = Sshd(tmp_path / "sshd").start()
    driver = server.driver()
    assert driver.run(["true"], timeout=30).ok
    threading.Timer(1.0, server.kill).start()
    with pytest.raises(DeviceUnreachable, match=r"board: connection to .* lost while running sleep"):
        driver.run(["sleep", "20"], timeout=60)
    with pytest.raises(DeviceUnreachable, match="connection refused"):
        driver.run(["true"], timeout=30)


def test_facts_of_a_replayed_jetson(sshd):
    sshd.board("agx-orin")
    facts = sshd.driver().facts()
    assert facts.driver == "ssh" and facts.cores >= 1 and facts.ram_mb > 0 and facts.os == "Linux"
    assert facts.extra["power_mode"] == {"name": "MAXN", "id": 0}
    assert "tegrastats" in facts.extra["tools"]


def test_facts_parse_a_recorded_jetson_agx_orin():
    facts = parse_facts("orin", "ssh", (DATA / "jetson" / "facts-agx-orin.txt").read_text())
    assert facts.extra["model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert facts.extra["l4t"] == "35.4.1" and facts.extra["jetpack"] == "5.1.2"
    assert facts.extra["jetson_module"] == "Jetson AGX Orin" and "VIN_SYS_5V0" in facts.extra["power_scope"]
    assert facts.extra["jetson_clocks"].startswith("unavailable: sudo")
    assert (facts.arch, facts.cores, facts.ram_mb, facts.os_release) == ("aarch64", 12, 62827, "Ubuntu 20.04.6 LTS")
    assert facts.gpus == ("devfreq 17000000.ga10b",)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    """A runtime folder the loopback board can run: the probe compiled here, and a stand-in
    llama-bench (tests/conftest.py) whose windows are `reps` x `seconds`."""
    from harness.runtimes.native import compile_probe

    root = tmp_path_factory.mktemp("runtime")
    compile_probe("cc", root / "bin" / "edgebench-probe")
    return root


def _bench(runtime, reps, seconds):
    script = runtime / "bin" / f"llama-bench-{reps}x{seconds}"
    script.write_text(fake_llama_bench(reps=reps, seconds=seconds, load_s=0.5))
    script.chmod(0o755)
    return str(script)


def _measure(driver, runtime, reps=2, seconds=1.2):
    """One stand-in llama-bench process under the board's telemetry, as the runner runs it."""
    from harness.engines.llamabench import LlamaBench
    from harness.records import Case

    engine = LlamaBench()
    with telemetry_for(driver, str(runtime)) as telemetry:
        done = driver.run(telemetry.wrap([_bench(runtime, reps, seconds)], engine.marks), timeout=60, on_start=telemetry.attach)
    assert done.ok, done.stderr
    parsed = engine.parse(Case("llamabench", "prefill", 64, 0, 0, inprocess_reps=reps), done, telemetry.marks())
    assert len(parsed.windows) == reps
    return telemetry, parsed, {m.name: m for m in telemetry.metrics(done, parsed.windows, parsed.tokens)}


def test_jetson_board_power_is_integrated_over_the_measured_windows(sshd, runtime, tmp_path):
    sshd.board("agx-orin")
    telemetry, parsed, metrics = _measure(sshd.driver(), runtime)
    board_w = 5.139 + 3.268 + 5.5  # AGX Orin: the module rails summed (no module-input rail)
    assert metrics["avg_power_w"].value == pytest.approx(board_w)
    assert metrics["energy_j"].value == pytest.approx(board_w * 2.4)  # the windows only, not the 0.5 s load
    assert metrics["energy_j_per_token"].value == pytest.approx(board_w * 2.4 / parsed.tokens)
    assert metrics["idle_power_w"].value == pytest.approx(board_w)  # the probe's idle second, from tegrastats
    assert 52.968 in metrics["temp_max_c"].samples and metrics["temp_max_c"].value >= 52.968
    assert metrics["gpu_load_pct"].value == 12
    assert metrics["peak_rss_mb"].value > 0 and metrics["probe_cpu_s"].value is not None  # the probe's wait4
    details = telemetry.details()
    assert details["sampler"] == "edgebench-probe" and details["power_scope"] == "rail sum"
    assert details["board_tool"]["tool"] == "tegrastats" and "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0" in details["board_tool"]["power_scope"]
    telemetry.write_csv(tmp_path / "t.csv")
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[0] == "t_monotonic_s,source,value,unit" and any(",power/board,13.907,W" in r for r in rows)


def test_raspberry_pi_power_temperature_and_throttling(sshd, runtime):
    """vcgencmd ticks slowly (here every 0.4 s): the window spans over ten ticks, and the last
    one is covered because the tool runs on until it has sampled past the benchmark's end
    (killed as the benchmark returned, it had mostly not: energy went missing at random)."""
    sshd.board("rpi5")
    driver = sshd.driver(telemetry_interval_ms=400)
    assert "sum of Raspberry Pi 5 PMIC" in driver.facts().extra["power_scope"]
    _, _, metrics = _measure(driver, runtime, reps=1, seconds=5.0)
    assert metrics["avg_power_w"].value == pytest.approx(7.24, abs=0.01), metrics["avg_power_w"].missing_reason
    assert 39.5 in metrics["temp_max_c"].samples and metrics["throttled"].value == 1.0


def test_plain_linux_says_why_there_is_no_board_power(board, runtime):
    telemetry, _, metrics = _measure(board, runtime, reps=1, seconds=0.3)
    absent = "no tegrastats or vcgencmd on board"
    assert telemetry.details()["board_tool"]["tool"] is None and absent in telemetry.details()["board_tool"]["reason"]
    if metrics["avg_power_w"].value is None:  # unless this machine has a power sensor of its own
        assert absent in metrics["avg_power_w"].missing_reason
    assert metrics["peak_rss_mb"].value is not None


def test_without_a_runtime_every_figure_says_so(board):
    with telemetry_for(board) as telemetry:
        done = board.run(telemetry.wrap(["true"]), timeout=30)
    metrics = telemetry.metrics(done, (), 0, "no window")
    assert metrics and all(m.value is None and "probe not available" in m.missing_reason for m in metrics)


def test_permission_hints():
    text = "user pi\nvcgencmd denied video\nina3221 denied /sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/in1_input\njetson_clocks denied /usr/bin/jetson_clocks\ndmesg denied\n"
    hints = permission_hints(text)
    assert "sudo usermod -aG video pi" in hints["vcgencmd"]
    assert "pi ALL=(root) NOPASSWD: /usr/bin/jetson_clocks --show" in hints["jetson_clocks"]
    assert "ina3221" in hints and "dmesg_restrict" in hints["dmesg"]
    assert permission_hints("user pi\nvcgencmd ok\n") == {}


def test_permission_hints_on_the_loopback_board(sshd):
    sshd.board("rpi5")
    assert "vcgencmd" not in ssh_permission_hints(sshd.driver())


TINY_CMAKE = "cmake_minimum_required(VERSION 3.16)\nproject(tiny C)\nset(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)\nadd_executable(llama-bench main.c)\nadd_executable(llama-perplexity main.c)\nadd_executable(llama-server main.c)\n"


def test_build_on_the_device_streams_progress_and_caches_by_key(sshd, tmp_path, monkeypatch):
    import shutil

    from harness.runtimes.ondevice import build_jobs, build_on_device

    if shutil.which("cmake") is None or shutil.which("cc") is None:
        pytest.skip("needs cmake and a C compiler on the loopback board")
    monkeypatch.setenv("EDGEBENCH_CACHE", str(tmp_path / "cache"))
    project = tmp_path / "tiny"
    project.mkdir()
    (project / "CMakeLists.txt").write_text(TINY_CMAKE)
    (project / "main.c").write_text('#include <stdio.h>\nint main(void) { return puts("built on the board") < 0; }\n')
    sshd.board(None)
    driver = sshd.driver(workdir=str(tmp_path / "device"))
    events = []
    runtime, cached = build_on_device(driver, ["-DEDGEBENCH_TEST=1"], source=project, on_progress=events.append)
    assert not cached and runtime.remote_dir.startswith(str(tmp_path / "device" / "runtimes"))
    assert {e.stage for e in events} >= {"configure", "build", "done"} and events[-1].percent == 100
    assert any(e.percent == 100 for e in events if e.stage == "build")
    assert "-DEDGEBENCH_TEST=1" in runtime.manifest.cmake_flags and runtime.manifest.target == "device"
    assert driver.run([runtime.binary()], timeout=30).stdout == "built on the board\n"
    assert driver.run([runtime.binary("edgebench-probe"), "--version"], timeout=30).stdout == "edgebench-probe 3\n"
    assert set(runtime.manifest.files) == {"bin/llama-bench", "bin/llama-perplexity", "bin/llama-server", "bin/edgebench-probe"}
    assert any("edgebench-probe: static binary, compiled on board" in e.line for e in events)
    again, cached = build_on_device(driver, ["-DEDGEBENCH_TEST=1"], source=project)
    assert cached and again.manifest == runtime.manifest
    (project / "main.c").write_text("int main(void) { return undeclared; }\n")
    with pytest.raises(BuildError, match="build failed"):
        build_on_device(driver, ["-DEDGEBENCH_TEST=1"], source=project)
    assert build_jobs(12, 60000) == 12 and build_jobs(6, 3000) == 1 and build_jobs(8, 100) == 1


def test_inventory_accepts_ssh_keys(sshd, tmp_path):
    from harness.plan.inventory import load_inventory

    path = tmp_path / "lab.toml"
    path.write_text(sshd.inventory("orin") + 'build_flags = ["-DGGML_CUDA=ON"]\n')
    spec = load_inventory(path)["orin"]
    assert spec.open().run(["echo", "ok"], timeout=30).stdout == "ok\n"
    path.write_text(sshd.inventory("orin") + "hots = 'typo'\n")
    with pytest.raises(Exception, match="hots"):
        load_inventory(path)


TINY_SUITE = 'name = "tiny-ssh"\nrepetitions = 2\ninprocess_repetitions = 2\n[[prefill]]\nprompt = 16\n[[decode]]\ntokens = 4\n'


@pytest.mark.slow
def test_edgebench_run_over_ssh_end_to_end(sshd, tmp_path, host_runtime, default_model):
    """The real llama-bench and model staged over SFTP and run over SSH, with replayed tegrastats."""
    sshd.board("agx-orin")
    inventory = tmp_path / "lab.toml"
    inventory.write_text(sshd.inventory("orin-loopback", workdir=str(tmp_path / "device")) + 'target = "host"\n')
    (tmp_path / "tiny.toml").write_text(TINY_SUITE)
    results = tmp_path / "results"

    def edgebench(*args):
        return subprocess.run(
            [sys.executable, "-m", "harness", *args], cwd=tmp_path, capture_output=True, text=True, timeout=900,
            env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)},
        )

    args = ("run", "--device", "orin-loopback", "--inventory", str(inventory), "--suite", "tiny.toml", "--results", str(results))
    first = edgebench(*args)
    assert first.returncode == 0, first.stderr + first.stdout
    sent = int(first.stderr.split("staged on orin-loopback: ")[1].split(" bytes")[0].replace("\n", ""))
    assert sent >= default_model.stat().st_size
    second = edgebench(*args)
    assert second.returncode == 0, second.stderr
    assert "staged on orin-loopback: 0 bytes transferred" in " ".join(second.stderr.split())
    shown = json.loads(edgebench("results", "show", "--json", "--results", str(results)).stdout)
    assert shown["run"]["status"] == "finished"
    by = {(r["case"], r["metric"]): r for r in shown["summary"]}
    assert by[("prefill p16", "prefill_tps")]["mean"] > 0
    assert by[("decode n4", "temp_max_c")]["mean"] >= 52.968  # tegrastats' hottest zone, over the process
    assert by[("decode n4", "peak_rss_mb")]["mean"] > 50  # the probe's wait4 of llama-bench on the board
    from harness.store.db import Store

    store = Store(results)
    power = [m for m in store.measurements([shown["run"]["id"]]) if m["metric"] == "energy_j"]
    # 16 tokens take a few ms: far under 10 tegrastats periods, so no figure, saying why (never a whole-process mean)
    assert power and all(m["value"] is None and "shorter than 10 periods" in m["missing_reason"] for m in power)
    execution = store.executions(shown["run"]["id"])[0]
    assert execution.raw.telemetry["board_tool"]["tool"] == "tegrastats" and len(execution.raw.windows) == 2
    run_dir = results / "runs" / shown["run"]["id"]
    facts = json.loads((run_dir / "facts.json").read_text())
    assert facts["driver"] == "ssh" and facts["extra"]["power_mode"]["name"] == "MAXN"
    csv_text = next(run_dir.glob("*/rep0.telemetry.csv")).read_text()
    assert csv_text.startswith("t_monotonic_s,source,value,unit") and ",power/board,13.907,W" in csv_text
