"""GPU load (`gpu_load_pct`) over the measured windows, from every source edgebench reads: NVML on
the host (a recorded public `nvidia-smi dmon` tick replayed through the NVML code), and the sysfs
files the native probe finds and samples (kgsl, Mali, Jetson devfreq load): recorded public file
contents through the probe's discovery, the real probe on a sysfs tree under `--root`, and the
emulated phone's own /sys through ADB. Where nothing is readable, the figure is missing with the
sources tried; no test depends on the sensors this machine has."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest

from harness.drivers.devicefs import FileRead
from harness.drivers.local import LocalDriver
from harness.engines.llamabench import LlamaBench
from harness.records import Case
from harness.runtimes.native import compile_probe
from harness.telemetry import Sample, gpu, nvml
from harness.telemetry.factory import GpuBeside, telemetry_for
from harness.telemetry.probe import ProbeTelemetry, classify
from tests.adb_emulator.fixtures import adb_driver

from .conftest import DATA, fake_llama_bench

RECORDED = DATA / "telemetry" / "gpu"
REPS, SECONDS = 2, 0.6
CASE = Case("llamabench", "prefill", 64, 0, 0, inprocess_reps=REPS)


def _files(contents: dict[str, str]) -> dict[str, FileRead]:
    """What the probe's discovery command returns for these files (its first lines)."""
    return {path: FileRead(path, tuple(text.splitlines())) for path, text in contents.items()}


def _nano_load() -> str:
    """The Jetson Nano's nvgpu `load` value, from the recorded `grep . /sys/devices/gpu.0/*` (README)."""
    lines = dict(line.split(":", 1) for line in (RECORDED / "jetson-nano-gpu0.txt").read_text().splitlines())
    return lines["/sys/devices/gpu.0/load"]


# --- which files are GPU load, read as the probe reads them ---------------------------------------


def test_recorded_gpu_load_files_become_probe_sources_with_their_scale() -> None:
    found = classify(_files({
        gpu.KGSL_BUSY: "23 %\n",  # kgsl_pwrctrl.c prints "%d %%\n"; the probe samples the first word
        gpu.MALI_UTILIZATION: "58\n",  # Exynos/Pixel platform code: "%d\n"
        "/sys/class/devfreq/57000000.gpu/device/load": _nano_load() + "\n",  # recorded on a Jetson Nano: "0"
        "/sys/class/devfreq/17000000.ga10b/device/load": "512\n",  # Orin's nvgpu: permille
        "/sys/class/devfreq/ddr_devfreq/device/load": "40\n",  # a memory bus's devfreq: not the GPU
    }))
    sources = {s.name: (s.path, s.unit, s.scale) for s in found.sources if s.name.startswith(gpu.PREFIX)}
    assert sources == {
        "gpu/kgsl-3d0/busy": (gpu.KGSL_BUSY, "%", 1.0),
        "gpu/mali0/utilization": (gpu.MALI_UTILIZATION, "%", 1.0),
        "gpu/57000000.gpu/load": ("/sys/class/devfreq/57000000.gpu/device/load", "%", 0.1),
        "gpu/17000000.ga10b/load": ("/sys/class/devfreq/17000000.ga10b/device/load", "%", 0.1),
    }
    assert not found.reason("gpu")


def test_old_adreno_counters_and_no_file_at_all_say_why() -> None:
    recorded = (RECORDED / "kgsl-gpubusy-oneplus-one.txt").read_text()  # a OnePlus One: "      0       0"
    found = classify(_files({gpu.KGSL_COUNTERS: recorded}))
    assert not [s for s in found.sources if s.name.startswith(gpu.PREFIX)]
    assert "two counters (busy, total)" in found.reason("gpu") and "gpu_busy_percentage" in found.reason("gpu")
    both = classify(_files({gpu.KGSL_COUNTERS: recorded, gpu.KGSL_BUSY: "0 %\n"}))  # newer kernels have both: the percentage is read
    assert [s.name for s in both.sources if s.name.startswith(gpu.PREFIX)] == ["gpu/kgsl-3d0/busy"] and not both.reason("gpu")
    nothing = classify({})
    assert nothing.reason("gpu") == gpu.NONE_READABLE
    for tried in (gpu.KGSL_BUSY, gpu.MALI_UTILIZATION, gpu.DEVFREQ_LOAD):
        assert tried in gpu.NONE_READABLE


def test_load_counts_inside_the_windows_only_and_never_a_negative_reading() -> None:
    readings = [Sample(t, "gpu/mali0/utilization", v, "%") for t, v in ((0.5, 90.0), (1.1, 40.0), (1.3, 60.0), (2.5, 99.0))]
    metric = gpu.load_metric(readings, [(1.0, 0.5)], "unused")
    assert metric.value == 50.0 and metric.samples == (40.0, 60.0)  # not the load before or after the windows
    off = gpu.load_metric([Sample(1.2, "gpu/mali0/utilization", -1.0, "%")], [(1.0, 0.5)], "unused")
    assert off.value is None and "negative" in off.missing_reason  # Mali prints -1 with its DVFS off: no load, not 0
    between = gpu.load_metric(readings, [(3.0, 0.01)], "unused")
    assert between.value is None and "no GPU load reading fell inside the measured windows (1, 10 ms in all)" == between.missing_reason
    assert gpu.load_metric(readings, (), "unused", "the engine marks no repetition").missing_reason == "the engine marks no repetition"
    assert gpu.load_metric([], [(1.0, 0.5)], "nothing to read").missing_reason == "nothing to read"


# --- NVML: a recorded nvidia-smi dmon tick of four GPUs ---------------------------------------------


class DmonNvml:
    """pynvml's calls answered from one recorded `nvidia-smi dmon` tick (tests/data/telemetry/README.md):
    the handle is the GPU index; dmon prints no energy counter, so NVML refuses it, as on a GPU without one."""

    NVMLError = pynvml.NVMLError

    def __init__(self, text: str) -> None:
        rows = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        self.rows = {int(r[0]): {"pwr_w": int(r[1]), "sm_pct": int(r[3]), "fb_mib": int(r[11])} for r in rows}

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self.rows[handle]["pwr_w"] * 1000

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=self.rows[handle]["fb_mib"] * 2**20)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self.rows[handle]["sm_pct"], memory=0)


def test_recorded_dmon_tick_gives_the_mean_load_of_the_gpus_over_the_windows() -> None:
    api = DmonNvml((RECORDED / "nvidia-smi-dmon-4gpu.txt").read_text())
    gpus = nvml.NvmlGpus(api, sorted(api.rows))
    samples = [s for i in range(10) for s in gpus.read(i * 0.1)]  # the recorded tick, sampled ten times
    metrics = {m.name: m for m in gpus.metrics(samples, [(0.25, 0.3)], None)}
    assert metrics["gpu_load_pct"].value == pytest.approx((25 + 18 + 24 + 18) / 4)  # the host's GPU time that was busy
    assert metrics["gpu_load_pct"].samples == pytest.approx((21.25,) * 3)  # the ticks at 0.3, 0.4 and 0.5 s only
    assert metrics["gpu_power_w"].value == 111 + 111 + 112 + 86 and metrics["gpu_mem_peak_mb"].value == 11651 + 11653 + 11653 + 11660
    assert metrics["gpu_energy_j"].missing_reason.startswith("NVML refused nvml/gpu0/energy: Not Supported")
    unwindowed = {m.name: m for m in gpus.metrics(samples, (), "no --progress mark of llama-bench was stamped")}
    assert unwindowed["gpu_load_pct"].missing_reason == "no --progress mark of llama-bench was stamped"


# --- the real probe: a sysfs tree under --root, and the emulated phone --------------------------


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probe compiled as the runtime builder compiles it, and a stand-in llama-bench."""
    folder = tmp_path_factory.mktemp("runtime")
    compile_probe("cc", folder / "bin" / "edgebench-probe")
    bench = folder / "bin" / "llama-bench"
    bench.write_text(fake_llama_bench(reps=REPS, seconds=SECONDS))
    bench.chmod(0o755)
    return folder


def _measure(driver, telemetry, runtime_dir: str) -> dict:
    """One process as the runner runs it: wrap, run, windows from the stamped marks, metrics."""
    engine = LlamaBench()
    with telemetry:
        done = driver.run(telemetry.wrap([f"{runtime_dir}/bin/llama-bench"], engine.marks), timeout=120, on_start=telemetry.attach)
    assert done.ok, done.stderr
    parsed = engine.parse(CASE, done, telemetry.marks())
    assert len(parsed.windows) == REPS
    return {m.name: m for m in telemetry.metrics(done, parsed.windows, parsed.tokens, parsed.no_window)}


def test_the_probe_samples_a_kgsl_file_beside_the_benchmark(tmp_path: Path, runtime: Path) -> None:
    root = tmp_path / "root"
    (root / gpu.KGSL_BUSY.lstrip("/")).parent.mkdir(parents=True)
    (root / gpu.KGSL_BUSY.lstrip("/")).write_text("37 %\n")
    driver = LocalDriver(workdir=str(tmp_path / "work"))
    telemetry = ProbeTelemetry(driver, str(runtime / "bin/edgebench-probe"), driver.workdir, interval_ms=20, idle_s=0, root=str(root))
    metrics = _measure(driver, telemetry, str(runtime))
    assert metrics["gpu_load_pct"].value == 37.0 and len(metrics["gpu_load_pct"].samples) >= REPS  # readings inside the windows only
    assert "gpu/kgsl-3d0/busy" in telemetry.details()["sources"]


def test_a_host_with_no_gpu_stores_the_load_missing_with_every_source_tried(tmp_path: Path, runtime: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    no_nvml = "no NVIDIA GPU found: NVML library not found (libnvidia-ml.so.1 comes with the driver)"
    monkeypatch.setattr(nvml.NvmlGpus, "open", classmethod(lambda cls: (None, no_nvml)))  # as on a host without the driver
    driver = LocalDriver(workdir=str(tmp_path / "work"))
    (tmp_path / "root").mkdir()  # a sysfs with nothing in it: no GPU file
    probe = ProbeTelemetry(driver, str(runtime / "bin/edgebench-probe"), driver.workdir, interval_ms=20, idle_s=0, root=str(tmp_path / "root"))
    metrics = _measure(driver, GpuBeside(probe), str(runtime))
    load = metrics["gpu_load_pct"]
    assert load.value is None and load.missing_reason == f"{gpu.NONE_READABLE}; {no_nvml}"
    assert metrics["gpu_power_w"].missing_reason == no_nvml
    assert list(metrics).count("gpu_load_pct") == 1  # one figure: the probe's and NVML's reasons together


MALI = "/sys/class/misc/mali0/device/utilization"  # a Pixel 7 (Tensor G2) has a Mali-G710


def _on_phone(adb_server, phone, runtime: Path) -> dict:
    android = adb_driver(adb_server, phone)
    remote = f"{android.workdir}/runtimes/test"
    for name in ("edgebench-probe", "llama-bench"):
        android.push(runtime / "bin" / name, f"{remote}/bin/{name}")
    return _measure(android, telemetry_for(android, remote), remote)


def test_the_emulated_pixel_reports_its_mali_load_through_adb(adb_server, phone, runtime: Path) -> None:
    phone.fs.write(MALI, "58\n")
    assert _on_phone(adb_server, phone, runtime)["gpu_load_pct"].value == 58.0


def test_a_phone_with_a_kgsl_file_reports_it_through_adb(adb_server, phone, runtime: Path) -> None:
    phone.fs.write(gpu.KGSL_BUSY, "12 %\n")  # the Adreno layout, on the emulated phone's /sys
    assert _on_phone(adb_server, phone, runtime)["gpu_load_pct"].value == 12.0


def test_a_phone_whose_gpu_file_selinux_denies_says_so(adb_server, phone, runtime: Path) -> None:
    phone.fs.write(MALI, "58\n")
    phone.deny(MALI)
    load = _on_phone(adb_server, phone, runtime)["gpu_load_pct"]
    assert load.value is None and MALI in load.missing_reason and "permission denied" in load.missing_reason


def test_a_phone_without_a_gpu_file_says_what_was_tried(adb_server, phone, runtime: Path) -> None:
    load = _on_phone(adb_server, phone, runtime)["gpu_load_pct"]
    assert load.value is None and load.missing_reason == gpu.NONE_READABLE
