"""The ADB driver against the real Debian adb server and an emulated phone (tests/adb_emulator),
plus the aarch64 runtime targets, and `edgebench run` end to end on the emulated phone."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from harness.boards.linux import cpu_features
from harness.drivers.adb import AdbDriver
from harness.drivers.base import DeviceUnreachable, StagingError
from harness.errors import BuildError
from harness.runtimes.targets import arm_arch, effective_target, flags_for_device, get_target
from tests.adb_emulator.fixtures import PIXEL7, adb_driver
from tests.ports import free_port
from tests.test_cli import edgebench

from .conftest import REPO

WORK = "/data/local/tmp/edgebench"


# --- connection errors: one clear line each -------------------------------------------------
def test_no_adb_server_is_one_clear_error_and_starts_none():
    port = free_port()
    driver = AdbDriver("pixel", serial="x", adb_server=f"127.0.0.1:{port}")
    with pytest.raises(DeviceUnreachable, match=rf"pixel: no adb server at 127\.0\.0\.1:{port}.*adb -P {port} start-server"):
        driver.run(["true"], timeout=10)


def test_wrong_serial_unauthorized_and_offline_devices_are_named(adb_server, make_phone):
    wrong = AdbDriver("pixel", serial="not-a-phone", adb_server=adb_server.address)
    with pytest.raises(DeviceUnreachable, match="no device 'not-a-phone' on the adb server"):
        wrong.facts()
    locked = make_phone(mode="unauthorized")
    assert adb_server.state(locked.serial) == "unauthorized"
    with pytest.raises(DeviceUnreachable, match=f"{locked.serial} is unauthorized: accept the 'Allow USB debugging"):
        adb_driver(adb_server, locked).run(["true"], timeout=10)
    silent = make_phone(mode="offline")
    assert adb_server.state(silent.serial) == "offline"
    with pytest.raises(DeviceUnreachable, match=f"{silent.serial} is offline"):
        adb_driver(adb_server, silent).push(PIXEL7 / "getprop.txt", f"{WORK}/x")


def test_cli_prints_one_error_line_and_exits_non_zero(adb_server, make_phone, tmp_path):
    locked = make_phone(mode="unauthorized")
    inventory = tmp_path / "lab.toml"
    devices = {"gone": f"127.0.0.1:{free_port()}", "wrong": adb_server.address, "locked": adb_server.address}
    inventory.write_text("".join(
        f'[[device]]\nname = "{name}"\ndriver = "adb"\nserial = "{locked.serial if name == "locked" else "nope"}"\n'
        f'adb_server = "{server}"\ntarget = "linux-aarch64"\n\n' for name, server in devices.items()))
    for name, says in (("gone", "no adb server"), ("wrong", "no device 'nope'"), ("locked", "unauthorized")):
        done = subprocess.run([sys.executable, "-m", "harness", "devices", "facts", name, "--inventory", str(inventory)],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300"})
        assert done.returncode == 3, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], done.stderr
        assert "Traceback" not in done.stderr


# --- facts ------------------------------------------------------------------------------------
def test_facts_come_from_getprop_cpuinfo_meminfo(adb_server, phone):
    facts = adb_driver(adb_server, phone).facts()
    assert (facts.driver, facts.os, facts.os_release, facts.arch) == ("adb", "Android", "Android 14 (API 34)", "arm64-v8a")
    assert facts.cores == 8 and 7000 < facts.ram_mb < 8192
    assert facts.cpu_model == "Google GS201 (4x Cortex-A55 + 2x Cortex-A78 + 2x Cortex-X1)"
    assert facts.extra["model"] == "Pixel 7" and facts.extra["abi"] == "arm64-v8a"
    assert "asimddp" in facts.extra["cpu_features"] and "i8mm" not in facts.extra["cpu_features"]
    assert facts.power_source == "battery, discharging"
    power = facts.extra["battery_power"]
    assert power["convention"]["current_unit"] == "uA" and power["convention"]["discharge_sign"] == -1
    assert power["energy_withheld"] is None


# --- files ------------------------------------------------------------------------------------
def test_push_is_verified_renamed_and_skipped_when_the_same(adb_server, phone, tmp_path):
    driver = adb_driver(adb_server, phone)
    local = tmp_path / "llama-bench"
    local.write_bytes(os.urandom(300_000))
    local.chmod(0o755)
    remote = f"{WORK}/runtimes/abc/bin/llama-bench"
    assert driver.push(local, remote) == 300_000
    assert driver.sha256(remote) == __import__("hashlib").sha256(local.read_bytes()).hexdigest()
    listing = driver.run(["ls", "-la", f"{WORK}/runtimes/abc/bin"], timeout=30).stdout
    assert "llama-bench" in listing and ".partial" not in listing and "rwx" in listing
    assert driver.push(local, remote) == 0  # already there: nothing sent
    assert phone.pushed_paths.count(f"{WORK}/runtimes/abc/bin/.llama-bench.partial") == 1
    back = tmp_path / "back"
    driver.pull(remote, back)
    assert back.read_bytes() == local.read_bytes()


def test_a_push_cut_midway_leaves_nothing_a_later_run_trusts(adb_server, phone, tmp_path):
    driver = adb_driver(adb_server, phone)
    model = tmp_path / "model.gguf"
    model.write_bytes(os.urandom(2_000_000))
    remote = f"{WORK}/models/m/model.gguf"
    phone.drop_push_after = 700_000
    with pytest.raises(DeviceUnreachable, match=rf"phone: lost the connection to {phone.serial}.* while pushing model.gguf to {remote}"):
        driver.push(model, remote)
    half = phone.fs.host_path(f"{WORK}/models/m/.model.gguf.partial")
    assert half.is_file() and 0 < half.stat().st_size < 2_000_000  # adbd wrote in place: the cut is real
    assert adb_server.wait_state(phone.serial, "device") == "device"  # the server reconnects Wi-Fi ADB devices
    assert driver.sha256(remote) is None  # the real name never held the half file
    assert driver.push(model, remote) == 2_000_000
    assert driver.push(model, remote) == 0


def test_pull_of_a_file_selinux_denies_is_a_staging_error(adb_server, phone, tmp_path):
    driver = adb_driver(adb_server, phone)
    path = "/sys/class/power_supply/battery/current_now"
    phone.deny(path)
    done = driver.run(["cat", path], timeout=30)
    assert done.exit_code == 1 and "Permission denied" in done.stderr
    with pytest.raises(StagingError, match="cannot pull /sys/class/power_supply/battery/current_now: .*Permission denied"):
        driver.pull(path, tmp_path / "x")
    with pytest.raises(StagingError):
        driver.pull(f"{WORK}/does-not-exist", tmp_path / "y")


def test_the_adb_command_line_tools_work_with_the_emulator_too(adb_server, phone, tmp_path):
    """`adb push/pull/shell` use STA2/LST2 and shell v2 on their own: the emulator is a fair device."""
    local = tmp_path / "f.bin"
    local.write_bytes(b"edgebench" * 1000)
    assert adb_server.adb_cmd("-s", phone.serial, "push", str(local), f"{WORK}/f.bin").returncode == 0
    assert adb_server.adb_cmd("-s", phone.serial, "pull", f"{WORK}/f.bin", str(tmp_path / "g.bin")).returncode == 0
    assert (tmp_path / "g.bin").read_bytes() == local.read_bytes()
    shell = adb_server.adb_cmd("-s", phone.serial, "shell", "getprop ro.product.model; exit 7")
    assert shell.returncode == 7 and shell.stdout.strip() == "Pixel 7"


# --- running ----------------------------------------------------------------------------------
def test_a_connection_cut_mid_run_names_the_device_and_the_command(adb_server, phone):
    driver = adb_driver(adb_server, phone)
    phone.drop_on_command, phone.drop_after_s = "sleep 30", 0.3
    with pytest.raises(DeviceUnreachable, match=rf"phone: lost the connection to {phone.serial} .* while running sh -c 'sleep 30'"):
        driver.run(["sh", "-c", "sleep 30"], timeout=60)


def test_aarch64_binaries_run_on_the_phone(adb_server, phone, tmp_path, aarch64_binfmt):
    import shutil

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc is not installed (scripts/setup.sh --test installs it)")
    source = tmp_path / "hello.c"
    source.write_text('#include <stdio.h>\nint main(int c, char **v) { printf("%s|%d\\n", v[1], c); return 5; }\n')
    binary = tmp_path / "hello"
    subprocess.run(["aarch64-linux-gnu-gcc", "-static", "-O1", "-o", str(binary), str(source)], check=True)
    driver = adb_driver(adb_server, phone)
    driver.push(binary, f"{WORK}/bin/hello")
    done = driver.run([f"{WORK}/bin/hello", "$(id); rm -rf /"], timeout=120)
    assert (done.exit_code, done.stdout) == (5, "$(id); rm -rf /|2\n")


# --- runtime targets for phones -----------------------------------------------------------------
def test_arm_arch_follows_the_cpu_feature_bits():
    pixel7 = cpu_features((PIXEL7 / "cpuinfo.txt").read_text())
    assert arm_arch(pixel7) == "armv8.2-a+fp16+dotprod"
    assert arm_arch(["fp", "asimd", "evtstrm", "crc32", "cpuid"]) == "armv8-a"  # Cortex-A53/A72 (Raspberry Pi 4)
    assert arm_arch(["asimd", "asimddp", "i8mm", "sve", "asimdhp"]) == "armv8.2-a+fp16+dotprod+i8mm"
    assert arm_arch(["asimd", "asimddp", "i8mm", "sve", "asimdhp"], sve=True).endswith("+sve")
    mixed = "processor\t: 0\nFeatures\t: fp asimd asimddp\n\nprocessor\t: 1\nFeatures\t: fp asimd\n"
    assert cpu_features(mixed) == ["asimd", "fp"]  # a build must run on every core


def test_linux_aarch64_is_a_static_cross_build_with_the_device_arch():
    flags = get_target("linux-aarch64").flags({})
    for flag in ("-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc", "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++",
                 "-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64", "-DGGML_NATIVE=OFF",
                 "-DGGML_OPENMP=OFF", "-DCMAKE_EXE_LINKER_FLAGS=-static", "-DGGML_CPU_ARM_ARCH=armv8-a"):
        assert flag in flags
    pixel7 = cpu_features((PIXEL7 / "cpuinfo.txt").read_text())
    assert flags_for_device("linux-aarch64", lambda: pixel7) == ("-DGGML_CPU_ARM_ARCH=armv8.2-a+fp16+dotprod",)
    assert flags_for_device("host", lambda: pytest.fail("host builds never ask the device")) == ()
    user = {"GGML_CPU_ARM_ARCH": "armv8.2-a+dotprod"}
    assert "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod" in get_target("linux-aarch64").flags(user)


def test_android_ndk_builds_with_the_ndk_toolchain_or_falls_back(monkeypatch, tmp_path):
    monkeypatch.delenv("ANDROID_NDK_HOME", raising=False)
    assert effective_target("android-ndk")[0] == "linux-aarch64"
    assert "no Android NDK given" in effective_target("android-ndk")[1]
    with pytest.raises(BuildError, match="--ndk PATH or set ANDROID_NDK_HOME"):
        get_target("android-ndk").flags({})
    ndk = tmp_path / "android-ndk-r26d"
    monkeypatch.setenv("ANDROID_NDK_HOME", str(ndk))
    assert effective_target("android-ndk") == ("android-ndk", None)
    flags = get_target("android-ndk").flags({"GGML_VULKAN": "ON"})
    assert f"-DCMAKE_TOOLCHAIN_FILE={ndk}/build/cmake/android.toolchain.cmake" in flags
    assert "-DANDROID_ABI=arm64-v8a" in flags and "-DANDROID_PLATFORM=android-28" in flags
    assert "-DGGML_OPENMP=OFF" in flags and "-DGGML_NATIVE=OFF" in flags
    explicit = get_target("android-ndk").flags({"ANDROID_NDK": "/opt/ndk"})
    assert "-DCMAKE_TOOLCHAIN_FILE=/opt/ndk/build/cmake/android.toolchain.cmake" in explicit


# --- end to end ---------------------------------------------------------------------------------
TINY = """
name = "tiny-phone"
repetitions = 1
inprocess_repetitions = 1
[[prefill]]
prompt = 16
[[decode]]
tokens = 4
"""


def _run_args(tmp_path: Path, adb_server, phone) -> tuple[str, ...]:
    """`edgebench run` on the emulated phone: its inventory and the tiny suite written to tmp_path."""
    import shutil

    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ is not installed (scripts/setup.sh --test installs it)")
    inventory = tmp_path / "lab.toml"
    inventory.write_text(f'[[device]]\nname = "pixel7"\ndriver = "adb"\nserial = "{phone.serial}"\n'
                         f'adb_server = "{adb_server.address}"\ntarget = "linux-aarch64"\n')
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    return ("run", "--device", "pixel7", "--inventory", str(inventory), "--suite", str(suite), "--results", str(tmp_path / "results"))


@pytest.mark.slow
def test_edgebench_run_on_the_emulated_phone(adb_server, phone, tmp_path, aarch64_binfmt, default_model):
    """Cross-built static llama-bench + the real model, pushed through adb, run under qemu."""
    args = _run_args(tmp_path, adb_server, phone)
    results = tmp_path / "results"
    first = edgebench(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "staged on pixel7: 0 bytes" not in first.stderr
    shown = json.loads(edgebench("results", "show", "--json", "--results", str(results), cwd=tmp_path).stdout)
    assert shown["run"]["status"] == "finished"
    values = {(r["case"], r["metric"]): r for r in shown["summary"]}
    assert values[("prefill p16", "prefill_tps")]["mean"] > 0 and values[("decode n4", "decode_tps")]["mean"] > 0
    run_dir = results / "runs" / shown["run"]["id"]
    facts = json.loads((run_dir / "facts.json").read_text())
    assert facts["driver"] == "adb" and facts["extra"]["model"] == "Pixel 7" and facts["os_release"] == "Android 14 (API 34)"
    manifest = json.loads((run_dir / "runtime.json").read_text())
    assert manifest["target"] == "linux-aarch64" and "-DGGML_CPU_ARM_ARCH=armv8.2-a+fp16+dotprod" in manifest["cmake_flags"]
    argv = json.loads(next(run_dir.glob("*/rep0.argv.json")).read_text())
    assert any(a.startswith(f"{WORK}/runtimes/") for a in argv) and f"{WORK}/models/" in " ".join(argv)
    second = edgebench(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "staged on pixel7: 0 bytes transferred" in second.stderr


@pytest.mark.slow
def test_phone_lost_mid_run_keeps_finished_cases(adb_server, phone, tmp_path, aarch64_binfmt, default_model):
    args = _run_args(tmp_path, adb_server, phone)
    results = tmp_path / "results"
    phone.drop_on_command, phone.drop_after_s = "-n 4", 0.5  # only the decode case's argv has it
    run = edgebench(*args, cwd=tmp_path)
    assert run.returncode == 3, run.stdout + run.stderr
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("error: pixel7:") and phone.serial in error, run.stderr
    assert "connection was lost while running" in error or "lost the connection" in error
    assert "llama-bench" in error and "-n 4" in error  # what was running when the phone went away
    db = sqlite3.connect(results / "edgebench.sqlite")
    status, note = db.execute("select status, note from runs").fetchone()
    assert status == "interrupted" and "resume with" in note
    done = db.execute("select count(*) from executions where status = 'ok'").fetchone()[0]
    assert done == 1  # the prefill case finished before the phone went away, and stays stored


@pytest.mark.slow
def test_quality_on_the_emulated_phone_passes_the_gate(adb_server, phone, tmp_path, aarch64_binfmt, default_model):
    """The linux-aarch64 llama-perplexity (ARM kernels, under qemu) scored against the host CPU's
    logits (x86 kernels) of the same model: close, not equal, and inside the gate."""
    args = _run_args(tmp_path, adb_server, phone)
    (tmp_path / "tiny.toml").write_text(TINY + "[[quality]]\ncontext = 256\nchunks = 1\n")  # 127 tokens scored: over the 100 statistics need
    run = edgebench(*args, "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    payload = json.loads(run.stdout)
    (quality,) = payload["quality"]
    print(f"aarch64 vs host: KLD {quality['kld_mean']} (p99 {quality['kld_p99']}), top-1 {quality['top1_agreement']}%, "
          f"RMS dp {quality['rms_dp']}%, PPL {quality['ppl']} vs base {quality['ppl_base']}")
    assert quality["status"] == "ok" and quality["against_model"] and quality["differs"] is False
    assert quality["kld_mean"] < 0.02 and quality["top1_agreement"] >= 95
    assert not any(r["output_differs"] for r in payload["summary"])
    run_dir = tmp_path / "results" / "runs" / payload["run"]["id"]
    quality_case = next(c for c in payload["run"]["facts"]["quality"]["references"])
    argv = json.loads((run_dir / quality_case / "rep0.argv.json").read_text())
    assert f"{WORK}/references/" in " ".join(argv) and any(a.endswith("bin/llama-perplexity") for a in argv)
