"""The native probe, built for real for the host and for aarch64 (run through qemu-user).

Each architecture gets the probe compiled by the runtime builder's own step and a small C
child (tests/data/probe/child.c) that allocates a known amount, sleeps, prints phase lines or
kills itself. Sensors are a fake sysfs tree under tmp_path, read through `--root`.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from statistics import median

import pytest

from harness.drivers.base import Completed
from harness.drivers.devicefs import read_files
from harness.drivers.local import LocalDriver
from harness.engines.llamabench import LlamaBench
from harness.records import Case
from harness.runtimes.build import runtime_key
from harness.runtimes.native import compile_probe, probe_compiler, probe_sha256
from harness.telemetry.probe import DISCOVERY_GLOBS, ProbeTelemetry, classify, parse_probe

from .conftest import fake_llama_bench

DATA = Path(__file__).resolve().parent / "data" / "probe"
COMPILERS = {"host": "cc", "aarch64": "aarch64-linux-gnu-gcc"}


@pytest.fixture(scope="session", params=sorted(COMPILERS))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(probe, child) for one architecture, compiled the way the runtime builder compiles."""
    arch = request.param
    compiler = COMPILERS[arch]
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed (scripts/setup.sh --test installs it)")
    if arch == "aarch64":
        request.getfixturevalue("aarch64_binfmt")
    folder = tmp_path_factory.mktemp(f"probe-{arch}")
    probe = folder / "edgebench-probe"
    linking = compile_probe(compiler, probe)
    assert arch == "host" or linking == "static"  # a cross probe must run on any libc
    child = folder / "child"
    subprocess.run([compiler, "-O2", "-static", "-o", str(child), str(DATA / "child.c")], check=True)
    return probe, child


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _run(probe: Path, out: Path, *args: str, command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(probe), "--out", str(out), *args, "--", *command],
                          capture_output=True, text=True, timeout=120)


def test_fake_sysfs_values_are_reported_at_the_interval(built: tuple[Path, Path], tmp_path: Path) -> None:
    probe, child = built
    _tree(tmp_path / "root", {"/sys/class/thermal/thermal_zone0/temp": "47500\n",
                              "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq": "1804800\n"})
    out = tmp_path / "probe.txt"
    done = _run(probe, out, "--interval-ms", "20", "--root", str(tmp_path / "root"),
                "--source", "thermal/zone0=/sys/class/thermal/thermal_zone0/temp",
                "--source", "cpufreq/cpu0=/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq",
                "--source", "gone=/sys/class/power_supply/battery/current_now",
                command=[str(child), "sleep", "400"])
    assert done.returncode == 0, done.stderr
    trace = parse_probe(out.read_text())
    assert trace.interval_s == 0.02 and trace.sources == ("thermal/zone0", "cpufreq/cpu0", "gone")
    assert trace.source_errors == {"gone": "No such file or directory"}
    temps = [s for s in trace.samples if s.source == "thermal/zone0"]
    assert {s.value for s in temps} == {47500.0}
    assert {s.value for s in trace.samples if s.source == "cpufreq/cpu0"} == {1804800.0}
    assert not [s for s in trace.samples if s.source == "gone"]  # never a made-up value
    gaps = [b.t - a.t for a, b in zip(temps, temps[1:-1])]  # the last one is the closing read
    assert 0.018 <= median(gaps) <= 0.04  # on the 20 ms grid, never faster
    assert trace.start_t is not None and trace.exit is not None
    assert trace.start_t <= temps[1].t and trace.exit.t <= temps[-1].t
    assert trace.exit.samples == len(temps) and trace.exit.code == 0 and not trace.exit.signaled
    boot_minus_mono = time.clock_gettime(time.CLOCK_BOOTTIME) - time.clock_gettime(time.CLOCK_MONOTONIC)
    assert trace.boottime_offset_s == pytest.approx(boot_minus_mono, abs=0.01)  # the `clocks` line


def test_a_child_that_allocates_shows_that_peak(built: tuple[Path, Path], tmp_path: Path) -> None:
    probe, child = built
    out = tmp_path / "probe.txt"
    done = _run(probe, out, "--interval-ms", "20", command=[str(child), "alloc", "64", "400"])
    assert done.returncode == 0, done.stderr
    trace = parse_probe(out.read_text())
    assert trace.exit is not None
    peak_mib = trace.exit.rusage.max_rss_kb / 1024
    assert 64 <= peak_mib < 64 + 48  # the child's own peak: not the probe's, not Python's
    anon = max(s.value for s in trace.samples if s.source == "proc/RssAnon") / 1024
    assert 64 <= anon < 64 + 16


def test_a_child_killed_by_a_signal_is_reported_and_mirrored(built: tuple[Path, Path], tmp_path: Path) -> None:
    probe, child = built
    out = tmp_path / "probe.txt"
    done = _run(probe, out, command=[str(child), "kill", str(int(signal.SIGKILL))])
    assert done.returncode == -signal.SIGKILL  # the probe dies the same way
    trace = parse_probe(out.read_text())
    assert trace.exit is not None and trace.exit.signaled
    assert trace.exit.signal == signal.SIGKILL and trace.exit.exit_code == -9


def test_stderr_is_forwarded_and_marked_and_exit_code_passes(built: tuple[Path, Path], tmp_path: Path) -> None:
    probe, child = built
    out = tmp_path / "probe.txt"
    done = _run(probe, out, "--mark", "phase: ", command=[str(child), "marks"])
    assert done.returncode == 3
    assert done.stdout == "stdout line\n"
    assert done.stderr == "phase: one\nnot a mark\nphase: two\n"
    trace = parse_probe(out.read_text())
    assert [text for _, text in trace.marks] == ["phase: one", "phase: two"]
    assert trace.exit is not None and trace.exit.code == 3


def test_a_command_that_cannot_start_exits_127(built: tuple[Path, Path], tmp_path: Path) -> None:
    probe, _ = built
    done = _run(probe, tmp_path / "probe.txt", command=[str(tmp_path / "missing")])
    assert done.returncode == 127 and "cannot start" in done.stderr


def test_idle_baseline_is_sampled_before_the_child(built: tuple[Path, Path], tmp_path: Path) -> None:
    probe, child = built
    _tree(tmp_path / "root", {"/v": "5\n"})
    out = tmp_path / "probe.txt"
    done = _run(probe, out, "--interval-ms", "10", "--idle-ms", "100", "--root", str(tmp_path / "root"),
                "--source", "v=/v", command=[str(child), "sleep", "50"])
    assert done.returncode == 0, done.stderr
    trace = parse_probe(out.read_text())
    assert trace.idle_t is not None and trace.start_t is not None
    before = [s for s in trace.samples if s.source == "v" and s.t < trace.start_t]
    assert len(before) >= 5 and trace.start_t - trace.idle_t >= 0.1


def test_bad_usage_is_refused(built: tuple[Path, Path], tmp_path: Path) -> None:
    probe, _ = built
    done = subprocess.run([str(probe), "--out", str(tmp_path / "x"), "--interval-ms", "0", "--", "true"],
                          capture_output=True, text=True)
    assert done.returncode == 125 and "--interval-ms" in done.stderr


# --- the Python side: discovery, the telemetry protocol, windows ------------------------------


def test_probe_source_changes_the_runtime_key() -> None:
    flags = ("-DCMAKE_BUILD_TYPE=Release",)
    assert runtime_key("a" * 64, "host", flags, probe_sha256()) != runtime_key("a" * 64, "host", flags, "0" * 64)
    assert runtime_key("a" * 64, "host", flags, probe_sha256()) != runtime_key("a" * 64, "host", flags)
    assert probe_compiler(["-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc"]) == "aarch64-linux-gnu-gcc"
    assert probe_compiler(["-DGGML_NATIVE=ON"]) == "cc"
    ndk = probe_compiler(["-DANDROID_NDK=/opt/ndk", "-DANDROID_ABI=arm64-v8a", "-DANDROID_PLATFORM=android-28"])
    assert ndk.startswith("/opt/ndk/toolchains/llvm/prebuilt/") and ndk.endswith("/bin/aarch64-linux-android28-clang")


def _fake_device(root: Path) -> None:
    _tree(root, {
        "/sys/class/thermal/thermal_zone0/type": "x86_pkg_temp\n",
        "/sys/class/thermal/thermal_zone0/temp": "61000\n",
        "/sys/class/thermal/thermal_zone1/type": "iwlwifi_1\n",
        "/sys/class/thermal/thermal_zone1/temp": "41000\n",
        "/sys/devices/system/cpu/online": "0-3\n",
        "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq": "2400000\n",
        "/sys/class/powercap/intel-rapl:0/name": "package-0\n",
        "/sys/class/powercap/intel-rapl:0/energy_uj": "0\n",
        "/sys/class/powercap/intel-rapl:0/max_energy_range_uj": "262143328850\n",
        "/sys/class/powercap/intel-rapl:0:0/name": "core\n",
        "/sys/class/power_supply/AC/type": "Mains\n",
        "/sys/class/hwmon/hwmon0/name": "ina3221\n",
        "/sys/class/hwmon/hwmon0/in1_label": "VDD_IN\n",
        "/sys/class/hwmon/hwmon0/in1_input": "5000\n",
        "/sys/class/hwmon/hwmon0/curr1_input": "1200\n",
    })


def test_discovery_through_the_driver_finds_what_the_tree_has(tmp_path: Path) -> None:
    _fake_device(tmp_path)
    (tmp_path / "sys/class/thermal/thermal_zone2").mkdir()
    (tmp_path / "sys/class/thermal/thermal_zone2/type").write_text("cpu-thermal\n")
    (tmp_path / "sys/class/thermal/thermal_zone2/temp").write_text("")  # a driver that returns nothing
    found = classify(read_files(LocalDriver(), DISCOVERY_GLOBS,
                                str(tmp_path)))
    names = {s.name: s for s in found.sources}
    assert set(names) == {"thermal/thermal_zone0:x86_pkg_temp", "cpufreq/cpu0", "rapl/intel-rapl:0/package-0",
                          "rail/hwmon0:ina3221/VDD_IN/voltage", "rail/hwmon0:ina3221/VDD_IN/current"}
    assert names["cpufreq/cpu0"].path == "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"
    assert "thermal/thermal_zone2:cpu-thermal" in found.unreadable
    assert "empty" in found.unreadable["thermal/thermal_zone2:cpu-thermal"]
    assert found.rapl_ranges == {"rapl/intel-rapl:0/package-0": 262143328850.0}


def test_discovery_of_this_host_says_why_sensors_are_missing() -> None:
    found = classify(read_files(LocalDriver(), DISCOVERY_GLOBS))
    for family in ("thermal", "cpufreq", "power"):
        if not any(s.name.startswith(family[:4]) for s in found.sources):
            assert found.reason(family) or any(k.startswith(family) for k in found.unreadable)


def test_probe_telemetry_measures_energy_over_the_marked_windows(tmp_path: Path) -> None:
    """A fake RAPL counter rising at exactly 10 W (a writer thread computes it from the clock)."""
    root = tmp_path / "root"
    _fake_device(root)
    shutil.rmtree(root / "sys/class/hwmon")  # leave RAPL as the only power sensor
    counter = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    stop = threading.Event()
    t0 = time.monotonic()

    def write() -> None:  # in place and fixed width, as sysfs: the probe keeps its file open
        with counter.open("r+") as fh:
            while not stop.wait(0.005):
                fh.seek(0)
                fh.write(f"{int((time.monotonic() - t0) * 10e6):020d}\n")
                fh.flush()

    runtime = tmp_path / "runtime"
    compile_probe("cc", runtime / "bin" / "edgebench-probe")
    bench = runtime / "bin" / "llama-bench"
    bench.write_text(fake_llama_bench(reps=2, seconds=0.6))
    bench.chmod(0o755)
    driver = LocalDriver(workdir=str(tmp_path / "work"))
    writer = threading.Thread(target=write)
    writer.start()
    engine = LlamaBench()
    try:
        telemetry = ProbeTelemetry(driver, str(runtime / "bin/edgebench-probe"), driver.workdir, interval_ms=20,
                                   idle_s=0.5, root=str(root))
        with telemetry:
            argv = telemetry.wrap([str(bench), "-p", "64", "--progress"], engine.marks, cpus=[0])
            completed = driver.run(argv, timeout=60, on_start=telemetry.attach)
    finally:
        stop.set()
        writer.join()
    assert completed.ok, completed.stderr
    assert "llama-bench: benchmark 1/1: prompt run 2/2" in completed.stderr  # forwarded untouched
    assert argv[argv.index("--cpu") + 1] == "3"  # off the benchmark's core 0, on the last free one
    parsed = engine.parse(Case("llamabench", "prefill", 64, 0, 0, inprocess_reps=2), completed, telemetry.marks())
    assert [round(d, 3) for _, d in parsed.windows] == [0.6, 0.6] and parsed.tokens == 128
    metrics = {m.name: m for m in telemetry.metrics(completed, parsed.windows, parsed.tokens)}
    assert metrics["avg_power_w"].value == pytest.approx(10.0, rel=0.05)
    assert metrics["energy_j"].value == pytest.approx(12.0, rel=0.05)  # 2 x 0.6 s, not load or warmup
    assert metrics["idle_power_w"].value == pytest.approx(10.0, rel=0.05)
    assert abs(metrics["energy_j_net"].value) < 0.6
    assert metrics["energy_j_per_token"].value == pytest.approx(12.0 / 128, rel=0.05)
    assert metrics["temp_max_c"].value == 61.0 and metrics["cpu_freq_mhz"].value == 2400.0
    assert metrics["probe_cpu_s"].value is not None and metrics["probe_cpu_s"].value >= 0
    assert telemetry.details()["power_scope"] == "CPU package"
    csv_path = tmp_path / "rep0.telemetry.csv"
    telemetry.write_csv(csv_path)
    assert "rapl/intel-rapl:0/package-0" in csv_path.read_text()
    assert (tmp_path / "rep0.telemetry.probe.txt").read_text().startswith("edgebench-probe 3\n")
    assert not list((tmp_path / "work" / "probe").iterdir())  # the device file is cleaned up


def test_without_windows_energy_is_missing_with_the_engines_reason(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _fake_device(root)
    probe = tmp_path / "edgebench-probe"
    compile_probe("cc", probe)
    driver = LocalDriver(workdir=str(tmp_path / "work"))
    telemetry = ProbeTelemetry(driver, str(probe), driver.workdir, interval_ms=10, idle_s=0, root=str(root))
    with telemetry:
        argv = telemetry.wrap(["sleep", "0.2"])
        completed = driver.run(argv, timeout=60)
    assert "--mark" not in argv and "--cpu" not in argv  # nothing to stamp; cores unknown: all of them busy
    metrics = {m.name: m for m in telemetry.metrics(completed, (), 0, "the engine marks no repetition")}
    assert metrics["energy_j"].value is None and metrics["energy_j"].missing_reason == "the engine marks no repetition"
    assert metrics["peak_rss_mb"].value is not None and telemetry.marks() == []


def test_a_probe_file_cut_short_parses_without_exit() -> None:
    text = "edgebench-probe 3\nclock CLOCK_MONOTONIC\nclocks 900000000 1900000000\ninterval_ms 50\ncpu 3\nclk_tck 100\n" \
           "source 0 a /a\nproc VmRSS VmHWM RssAnon RssFile\ncputime stat child self_us\nstart 1000000000 42\n" \
           "s 1050000000 2000 7 100 100 60 40 10,1,5,900,3,2,1,0,0,0 4,1,0,0 1500\ns 1100000"
    trace = parse_probe(text)
    assert trace.exit is None and trace.cpu == 3 and trace.child_pid == 42 and trace.clk_tck == 100
    assert trace.boottime_offset_s == 1.0  # CLOCK_BOOTTIME - CLOCK_MONOTONIC, from the `clocks` line
    assert [(s.source, s.value) for s in trace.samples if s.source != "probe/cost"] == [
        ("a", 7.0), ("proc/VmRSS", 100.0), ("proc/VmHWM", 100.0), ("proc/RssAnon", 60.0), ("proc/RssFile", 40.0),
        ("cpu/busy", 19.0), ("cpu/total", 922.0), ("child/cpu", 5.0), ("probe/cpu", 0.0015)]


def test_other_probe_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="format 4"):
        parse_probe("edgebench-probe 4\n")
    # format 1 lines lack the CPU counters: read as such they would lose contention silently
    with pytest.raises(ValueError, match="format 1; this edgebench reads 2 and 3"):
        parse_probe("edgebench-probe 1\nclock CLOCK_MONOTONIC\ninterval_ms 50\n")
    # format 2 is 3 without `clocks`: read, with no offset to place a board tool's samples by
    assert parse_probe("edgebench-probe 2\nclock CLOCK_MONOTONIC\ninterval_ms 50\n").boottime_offset_s is None


def test_missing_probe_file_makes_every_metric_missing(tmp_path: Path) -> None:
    driver = LocalDriver(workdir=str(tmp_path / "work"))
    telemetry = ProbeTelemetry(driver, "/nonexistent/edgebench-probe", driver.workdir, root=str(tmp_path))
    with telemetry:
        completed = driver.run(telemetry.wrap(["true"]), timeout=30)
    assert isinstance(completed, Completed) and completed.exit_code != 0
    metrics = telemetry.metrics(completed, (), 0, "the process failed")
    assert metrics and all(m.value is None and "probe" in (m.missing_reason or "") for m in metrics)


@pytest.mark.slow
def test_a_host_run_stores_the_probe_series_state_and_scope(tmp_path: Path, host_runtime, default_model) -> None:
    """`edgebench run` on this host: the runtime's probe samples every llama-bench process."""
    from harness.store.db import Store

    from .test_cli import edgebench

    assert host_runtime.binary("edgebench-probe").is_file()
    suite = tmp_path / "probe.toml"
    suite.write_text('name = "probe"\nrepetitions = 1\ninprocess_repetitions = 2\n[[prefill]]\nprompt = 16\n')
    results = tmp_path / "results"
    run = edgebench("run", "--suite", str(suite), "--results", str(results), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    shown = edgebench("results", "show", "--results", str(results), cwd=tmp_path).stdout
    assert "before prefill p16: power scope none (no power sensor), cpu " in shown
    (folder,) = [p for p in (results / "runs").iterdir() if p.is_dir()]
    (case_dir,) = [p for p in folder.iterdir() if p.is_dir()]
    trace = parse_probe((case_dir / "rep0.telemetry.probe.txt").read_text())
    assert [text for _, text in trace.marks if ": prompt run" in text] == [
        "llama-bench: benchmark 1/1: prompt run 1/2", "llama-bench: benchmark 1/1: prompt run 2/2"]
    assert "proc/RssFile" in (case_dir / "rep0.telemetry.csv").read_text()
    store = Store(results)
    (execution,) = store.executions(store.runs()[0].id)
    assert execution.raw.telemetry["sampler"] == "edgebench-probe"
    assert len(execution.raw.windows) == 2 and execution.raw.effective["backends"] == "CPU"  # from the engine
    assert execution.raw.state is not None and execution.raw.state.load_avg is not None
    summary = json.loads(edgebench("results", "show", "--json", "--results", str(results), cwd=tmp_path).stdout)
    metrics = {r["metric"]: r for r in summary["summary"]}
    assert metrics["peak_rss_mb"]["n"] == 1 and metrics["probe_cpu_s"]["n"] == 1


def test_battery_units_follow_what_the_phone_reports():
    """mA/mV phones (older Huawei/Samsung kernels) must not come out 1000x too small."""
    from harness.drivers.devicefs import FileRead
    from harness.telemetry.probe import classify

    def files(current: str, voltage: str) -> dict:
        folder = "/sys/class/power_supply/battery"
        values = {"type": "Battery", "status": "Discharging", "current_now": current, "voltage_now": voltage}
        return {f"{folder}/{name}": FileRead(path=f"{folder}/{name}", lines=(value,)) for name, value in values.items()}

    micro = {s.name: s.scale for s in classify(files("-412500", "3900000")).sources}
    milli = {s.name: s.scale for s in classify(files("-412", "3900")).sources}
    assert micro == {"battery/battery/current": 1e-6, "battery/battery/voltage": 1e-6}
    assert milli == {"battery/battery/current": 1e-3, "battery/battery/voltage": 1e-3}


def test_the_native_programs_build_and_run_without_the_linux_only_parts(tmp_path: Path) -> None:
    """The README says what the probe does off Linux (macOS): compiled here with `__linux__`
    undefined, the guarded parts are left out and both programs still measure."""
    from harness.telemetry.bandwidth import parse_output
    from harness.runtimes.native import BANDWIDTH_NAME, CFLAGS, NATIVE_PROGRAMS, PROBE_NAME

    built = {}
    for name, (source, flags) in NATIVE_PROGRAMS.items():
        built[name] = tmp_path / name
        subprocess.run(["cc", *CFLAGS, "-Werror", *flags, "-U__linux__", "-o", str(built[name]), str(source)], check=True)
    out = tmp_path / "probe.txt"
    done = _run(built[PROBE_NAME], out, "--cpu", "0", "--interval-ms", "10", command=["sleep", "0.1"])
    assert done.returncode == 0, done.stderr
    trace = parse_probe(out.read_text())
    assert trace.exit is not None and trace.exit.code == 0 and trace.exit.rusage.max_rss_kb > 0
    assert [m for _, m in trace.marks] == ["edgebench-probe: cannot pin to cpu 0: no CPU affinity call on this OS"]
    measured = parse_output(subprocess.run([str(built[BANDWIDTH_NAME]), "--cpus", "0,1", "--array-mb", "8", "--reps", "2"],
                                           capture_output=True, text=True, timeout=120, check=True).stdout)
    assert measured.threads == 2 and measured.cpus == () and measured.gbps > 0  # two threads, pinned nowhere


def test_a_board_tools_power_lands_on_the_probes_clock_and_integrates_the_same():
    """One varying VDD_IN curve, as the probe's INA3221 samples (CLOCK_MONOTONIC) and as
    tegrastats lines stamped with /proc/uptime (CLOCK_BOOTTIME, here 1000 s ahead: a board that
    was suspended): over the same windows both give the same joules."""
    from types import SimpleNamespace

    from harness.records import DeviceFacts
    from harness.telemetry import energy
    from harness.telemetry.coprocess import BoardTool
    from harness.drivers.devicefs import FileRead
    from harness.telemetry.probe import power_traces

    line = (DATA.parent / "jetson" / "orin-nano.txt").read_text().strip()  # public Orin Nano line: VDD_IN 5704mW
    mw = [5704 + 400 * (i % 7) - 150 * (i % 3) for i in range(60)]  # a curve that changes every tick
    t0 = 100.0  # CLOCK_MONOTONIC seconds of the first tick
    folder = "/sys/class/hwmon/hwmon0"
    files = {f"{folder}/{name}": FileRead(path=f"{folder}/{name}", lines=(value,))
             for name, value in (("name", "ina3221"), ("in1_label", "VDD_IN"), ("power1_input", "5704000"))}
    found = classify(files)
    rows = "".join(f"s {round((t0 + i * 0.1) * 1e9)} 1000 {w * 1000} - - - - - - 0\n" for i, w in enumerate(mw))
    text = (f"edgebench-probe 3\nclock CLOCK_MONOTONIC\nclocks {round(t0 * 1e9)} {round((t0 + 1000) * 1e9)}\n"
            f"interval_ms 100\ncpu -1\nclk_tck 100\nsource 0 rail/hwmon0:ina3221/VDD_IN/power {folder}/power1_input\n"
            f"proc VmRSS VmHWM RssAnon RssFile\ncputime stat child self_us\n{rows}")
    trace = parse_probe(text)
    facts = DeviceFacts("orin", "ssh", "Linux", "", "aarch64", "", 6, 7620, extra={"tools": ["tegrastats"], "model": ""})
    tool = BoardTool(SimpleNamespace(name="orin"), facts, interval_ms=100)
    tool.load("\n".join(f"{t0 + 1000 + i * 0.1:.2f} {line.replace('VDD_IN 5704mW/5704mW', f'VDD_IN {w}mW/{w}mW')}"
                        for i, w in enumerate(mw)))
    (sysfs_power,) = power_traces(trace, found)
    (board_power,) = tool.power_traces(trace.boottime_offset_s)
    assert sysfs_power.scope == board_power.scope == energy.MODULE_INPUT
    windows = [(101.03, 1.5), (103.2, 2.1)]
    same = [{m.name: m.value for m in energy.window_metrics([tr], windows, 400, idle=(100.0, 101.0), no_power="-",
                                                             no_window=None)} for tr in (sysfs_power, board_power)]
    assert same[0]["energy_j"] is not None and same[0]["idle_power_w"] is not None
    assert same[1] == pytest.approx(same[0], rel=1e-12)
    assert same[0]["energy_j"] != pytest.approx(5.704 * 3.6, rel=1e-3)  # the curve varies: not a constant
    lost = {m.name: m for m in energy.window_metrics(tool.power_traces(0.0), windows, 400, idle=None, no_power="-",
                                                      no_window=None)}
    assert "does not cover" in lost["energy_j"].missing_reason  # left on CLOCK_BOOTTIME it misses every window
