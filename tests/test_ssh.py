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

from harness.drivers.base import DeviceUnreachable, StagingError
from harness.drivers.ssh import parse_facts, permission_hints, ssh_permission_hints
from harness.errors import BuildError

from .conftest import DATA, REPO
from .sshd_fixture import Sshd, free_port

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
    done = board.run(["sh", "-c", f"sleep 30; touch {marker}"], timeout=1)
    assert done.timed_out and not done.ok
    time.sleep(0.5)
    assert "sleep 30" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


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


def test_jetson_telemetry_is_aligned_to_the_case_window(sshd, tmp_path):
    sshd.board("agx-orin")
    driver = sshd.driver()
    with driver.telemetry() as telemetry:
        done = driver.run(telemetry.wrap(["sh", "-c", "sleep 1; echo done"]), timeout=30)
    assert done.stdout == "done\n"
    start, end = telemetry.window
    assert 0.9 <= end - start < 5
    metrics = {m.name: m for m in telemetry.metrics(done)}
    assert metrics["avg_power_w"].value == pytest.approx(5.139 + 3.268 + 5.5)
    assert len(metrics["avg_power_w"].samples) >= 3  # 100 ms replay over a 1 s window
    assert metrics["temp_max_c"].value == pytest.approx(52.968) and metrics["gpu_load_pct"].value == 12
    assert metrics["energy_j"].value == pytest.approx(13.907 * (end - start))
    assert metrics["peak_rss_mb"].value > 0
    telemetry.write_csv(tmp_path / "t.csv")
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[0] == "t_device_s,source,value,unit" and any(",window/start," in r for r in rows)
    assert any(",power/board,13.907,W" in r for r in rows)


def test_raspberry_pi_telemetry_power_temperature_and_throttling(sshd):
    sshd.board("rpi5")
    driver = sshd.driver()
    assert "sum of Raspberry Pi 5 PMIC" in driver.facts().extra["power_scope"]
    with driver.telemetry() as telemetry:
        done = driver.run(telemetry.wrap(["sleep", "1"]), timeout=30)
    metrics = {m.name: m for m in telemetry.metrics(done)}
    assert metrics["avg_power_w"].value == pytest.approx(7.24, abs=0.01)
    assert metrics["temp_max_c"].value == 39.5 and metrics["throttled"].value == 1.0


def test_plain_linux_says_why_there_is_no_power(board):
    with board.telemetry() as telemetry:
        done = board.run(telemetry.wrap(["true"]), timeout=30)
    metrics = {m.name: m for m in telemetry.metrics(done)}
    assert metrics["avg_power_w"].value is None and "no tegrastats or vcgencmd" in metrics["avg_power_w"].missing_reason


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


TINY_CMAKE = "cmake_minimum_required(VERSION 3.16)\nproject(tiny C)\nset(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)\nadd_executable(llama-bench main.c)\n"


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
    assert by[("prefill p16", "avg_power_w")]["mean"] == pytest.approx(13.907)
    assert by[("decode n4", "temp_max_c")]["mean"] == pytest.approx(52.968)
    run_dir = results / "runs" / shown["run"]["id"]
    facts = json.loads((run_dir / "facts.json").read_text())
    assert facts["driver"] == "ssh" and facts["extra"]["power_mode"]["name"] == "MAXN"
    csv_text = (run_dir / "prefill-p16" if (run_dir / "prefill-p16").exists() else next(p for p in run_dir.iterdir() if p.is_dir())).joinpath("rep0.telemetry.csv").read_text()
    assert "window/start" in csv_text and "power/board" in csv_text
