"""Host telemetry: parsers on recorded text, samplers on fake sysfs trees and a real child.

This machine has no RAPL, no CPU thermal zone and no NVIDIA GPU, so the readable paths run on
trees built in tmp_path and the GPU is replaced by recorded NVML readings; the unreadable paths
run on the real host and must come back missing with a reason, never 0.
"""

from __future__ import annotations

import csv
import errno
import json
import sys
import threading
import time
from pathlib import Path
from statistics import median
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from harness.drivers.base import Completed, ResourceUsage
from harness.drivers.local import LocalDriver
from harness.drivers.nvml import gpu_names
from harness.records import Metric
from harness.telemetry import HostTelemetry, Sample, describe_host_sensors, nvml, procfs, rapl, sysfs

DATA = Path(__file__).resolve().parent / "data" / "telemetry"
RAPL_RANGE_UJ = 262_143_328_850  # max_energy_range_uj of a real Intel package domain


def _by_name(metrics: list[Metric]) -> dict[str, Metric]:
    return {m.name: m for m in metrics}


def _completed(rusage: ResourceUsage | None = None) -> Completed:
    return Completed(argv=("bench",), exit_code=0, stdout="", stderr="", wall_s=1.0, rusage=rusage)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake_host(tmp_path: Path) -> Path:
    """A sysfs tree shaped like an Intel desktop's, with a few non-CPU sensors to ignore."""
    sys_ = tmp_path / "sys"
    for zone, kind, temp in (("thermal_zone0", "acpitz", "27800"), ("thermal_zone1", "x86_pkg_temp", "67000"),
                             ("thermal_zone2", "iwlwifi_1", "41000")):
        _write(sys_ / "class/thermal" / zone / "type", f"{kind}\n")
        _write(sys_ / "class/thermal" / zone / "temp", f"{temp}\n")
    _write(sys_ / "class/hwmon/hwmon0/name", "nvme\n")
    _write(sys_ / "class/hwmon/hwmon0/temp1_input", "45850\n")
    _write(sys_ / "class/hwmon/hwmon1/name", "coretemp\n")
    _write(sys_ / "class/hwmon/hwmon1/temp1_input", "69000\n")
    _write(sys_ / "class/hwmon/hwmon1/temp2_input", "66000\n")
    for cpu, khz in (("cpu0", "2400000"), ("cpu1", "3000000")):
        _write(sys_ / "devices/system/cpu" / cpu / "cpufreq/scaling_cur_freq", f"{khz}\n")
    _write(sys_ / "devices/system/cpu/cpufreq/policy0/scaling_cur_freq", "2400000\n")  # not a core
    for zone, name in (("intel-rapl:0", "package-0"), ("intel-rapl:0:0", "core"), ("intel-rapl:1", "psys"),
                       ("intel-rapl-mmio:0", "package-0")):  # mmio mirrors package-0: must not double count
        _write(sys_ / "class/powercap" / zone / "name", f"{name}\n")
        _write(sys_ / "class/powercap" / zone / "energy_uj", "1000000\n")
        _write(sys_ / "class/powercap" / zone / "max_energy_range_uj", f"{RAPL_RANGE_UJ}\n")
    _write(tmp_path / "proc/self/status", (DATA / "proc_status_cat.txt").read_text())
    return tmp_path


def _set(root: Path, rel: str, value: int) -> None:
    (root / rel).write_text(f"{value}\n")


# --- procfs -----------------------------------------------------------------------------


def test_parse_status_recorded() -> None:
    status = procfs.parse_status((DATA / "proc_status_cat.txt").read_text())
    assert status["VmRSS"] == 1744 and status["VmHWM"] == 1744
    assert (status["RssAnon"], status["RssFile"], status["RssShmem"]) == (112, 1632, 0)
    assert "Pid" not in status and "Threads" not in status  # only kB lines


def test_parse_status_python_holding_64mib() -> None:
    status = procfs.parse_status((DATA / "proc_status_python_64mib.txt").read_text())
    assert status["RssAnon"] >= 64 * 1024
    assert status["VmRSS"] == status["RssAnon"] + status["RssFile"] + status["RssShmem"]


def test_parse_status_without_rss_split_gives_missing_reason() -> None:
    status = procfs.parse_status((DATA / "proc_status_no_rss_split.txt").read_text())
    assert "RssAnon" not in status and status["VmRSS"] == 1744
    metrics = _by_name(procfs.rss_split_metrics(procfs.status_samples(1.0, status), "unused"))
    assert metrics["peak_rss_anon_mb"].value is None
    assert "older than 4.5" in (metrics["peak_rss_anon_mb"].missing_reason or "")


def test_parse_status_zombie_has_no_memory() -> None:
    assert procfs.parse_status((DATA / "proc_status_zombie.txt").read_text()) == {}


def test_read_status_of_gone_process_is_empty(tmp_path: Path) -> None:
    assert procfs.read_status(123456, root=tmp_path) == {}


def test_peak_rss_from_rusage_or_missing() -> None:
    assert procfs.peak_rss_metric(ResourceUsage(204800, 0.1, 0.1)).value == 200.0
    assert procfs.peak_rss_metric(None).missing_reason


def test_real_child_anon_peak_sampled() -> None:
    code = "b = bytearray(200 * 1024 * 1024); import time; time.sleep(1)"
    with HostTelemetry(interval_s=0.05, nvml=False) as tel:
        # Through the local driver: a child forked straight from this (large) test process
        # would inherit its RSS high-water mark in ru_maxrss.
        completed = LocalDriver().run([sys.executable, "-c", code], timeout=60, on_start=tel.attach)
    assert completed.exit_code == 0
    metrics = _by_name(tel.metrics(completed, (), 0))
    anon = metrics["peak_rss_anon_mb"]
    assert anon.value is not None and 190 <= anon.value < 260
    assert len(anon.samples) >= 5
    assert metrics["peak_rss_file_mb"].value is not None
    peak = metrics["peak_rss_mb"].value
    assert peak is not None and anon.value <= peak < 300


def test_never_attached_says_so(tmp_path: Path) -> None:
    with HostTelemetry(root=tmp_path, nvml=False) as tel:
        pass
    metrics = _by_name(tel.metrics(_completed(), (), 0))
    assert "attach() was never called" in (metrics["peak_rss_anon_mb"].missing_reason or "")
    assert metrics["peak_rss_mb"].missing_reason


# --- sysfs: temperature and clock ---------------------------------------------------------


def test_discovery_keeps_cpu_sensors_only(fake_host: Path) -> None:
    assert list(sysfs.discover_thermal_zones(fake_host).readable) == ["thermal/thermal_zone1:x86_pkg_temp"]
    assert list(sysfs.discover_hwmon(fake_host).readable) == [
        "hwmon/hwmon1:coretemp/temp1",
        "hwmon/hwmon1:coretemp/temp2",
    ]
    assert list(sysfs.discover_cpufreq(fake_host).readable) == ["cpufreq/cpu0", "cpufreq/cpu1"]


def test_non_cpu_zones_only_names_what_was_seen(tmp_path: Path) -> None:
    _write(tmp_path / "sys/class/thermal/thermal_zone0/type", "acpitz\n")
    _write(tmp_path / "sys/class/thermal/thermal_zone0/temp", "27800\n")
    found = sysfs.discover_thermal_zones(tmp_path)
    assert not found.readable
    assert found.reason() == "no CPU thermal zone under /sys/class/thermal (types: acpitz)"


def test_unreadable_zone_gives_reason(tmp_path: Path) -> None:
    (tmp_path / "sys/class/thermal/thermal_zone0/temp").mkdir(parents=True)  # read fails with EISDIR
    _write(tmp_path / "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    found = sysfs.discover_thermal_zones(tmp_path)
    assert found.unreadable == {
        "thermal/thermal_zone0:cpu-thermal": "cannot read /sys/class/thermal/thermal_zone0/temp: Is a directory"
    }


def _sampled_window(tel: HostTelemetry) -> list[tuple[float, float]]:
    """One window over everything sampled: (first reading, span)."""
    first = min(s.t for s in tel.samples)
    return [(first, max(s.t for s in tel.samples) - first)]


def _ticks(tel: HostTelemetry) -> list[float]:
    """When the sampler ticked (each tick records its own cost), in order."""
    return sorted(s.t for s in list(tel.samples) if s.source == "telemetry/tick_cost")


def _sample_a_while(tel: HostTelemetry, seconds: float = 1.0, ticks: int = 12) -> None:
    """Let the sampler run `seconds` and at least `ticks` ticks: a window over them spans more
    than the 10 sensor periods energy needs even where a busy box stretched the ticks."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(_ticks(tel)) < ticks:
        time.sleep(0.05)


def test_fake_host_metrics_equal_tree_values(fake_host: Path) -> None:
    with HostTelemetry(interval_s=0.05, root=fake_host, nvml=False) as tel:
        _set(fake_host, "sys/class/hwmon/hwmon1/temp2_input", 88500)  # read at the latest by the closing tick
        _set(fake_host, "sys/class/powercap/intel-rapl:0/energy_uj", 6_000_000)
        _sample_a_while(tel)
    window = _sampled_window(tel)
    metrics = _by_name(tel.metrics(_completed(), window, 100))
    assert metrics["temp_max_c"].value == 88.5
    assert 67.0 in metrics["temp_max_c"].samples and 27.8 not in metrics["temp_max_c"].samples
    freq = metrics["cpu_freq_mhz"]
    assert freq.value == pytest.approx(2700.0) and set(freq.samples) == {2400.0, 3000.0}
    assert metrics["energy_j"].value == pytest.approx(5.0)
    assert metrics["avg_power_w"].value == pytest.approx(5.0 / window[0][1])
    assert metrics["energy_j_per_token"].value == pytest.approx(0.05)
    assert "idle baseline" in metrics["energy_j_net"].missing_reason  # none is sampled in process


def test_host_energy_counts_the_engines_windows_only(fake_host: Path) -> None:
    """A RAPL counter rising at exactly 10 W (computed from the clock by a writer thread that
    replaces the file whole, so no read sees it half written)."""
    counter = fake_host / "sys/class/powercap/intel-rapl:0/energy_uj"
    staging = counter.with_name("energy_uj.next")
    stop = threading.Event()
    t0 = time.monotonic()

    def write() -> None:
        while not stop.wait(0.005):
            staging.write_text(f"{int((time.monotonic() - t0) * 10e6)}\n")
            staging.replace(counter)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        with HostTelemetry(interval_s=0.02, root=fake_host, nvml=False) as tel:
            time.sleep(3.0)
    finally:
        stop.set()
        writer.join()
    ticks = _ticks(tel)
    # Two windows of 12 sampling periods as this (possibly busy) box kept them, with a gap.
    length = max(0.4, 12 * median(b - a for a, b in zip(ticks, ticks[1:])))
    windows = [(ticks[0] + 0.3, length), (ticks[0] + 0.5 + length, length)]
    assert windows[-1][0] + length < ticks[-1], f"the box sampled too slowly for this test: {length / 12:.3f} s a tick"
    metrics = _by_name(tel.metrics(_completed(), windows, 64))
    energy_j = metrics["energy_j"]
    assert energy_j.value == pytest.approx(20.0 * length, rel=0.05), energy_j.missing_reason  # 10 W over both windows only
    assert metrics["avg_power_w"].value == pytest.approx(10.0, rel=0.05)
    missing = _by_name(tel.metrics(_completed(), (), 0, "the worker stamped no rep"))
    assert missing["energy_j"].missing_reason == "the worker stamped no rep"


# --- RAPL ---------------------------------------------------------------------------------


def test_rapl_wraparound_in_window(fake_host: Path) -> None:
    _set(fake_host, "sys/class/powercap/intel-rapl:0/energy_uj", RAPL_RANGE_UJ - 4_000_000)
    with HostTelemetry(interval_s=0.05, root=fake_host, nvml=False) as tel:
        _set(fake_host, "sys/class/powercap/intel-rapl:0/energy_uj", 3_000_000)
        _sample_a_while(tel)
    assert _by_name(tel.metrics(_completed(), _sampled_window(tel), 1))["energy_j"].value == pytest.approx(7.0)


def test_rapl_sums_packages_only(fake_host: Path) -> None:
    domains = rapl.Rapl.discover(fake_host).domains
    assert [d.source for d in domains] == ["rapl/intel-rapl:0/package-0"]
    assert domains[0].max_range_uj == RAPL_RANGE_UJ


def test_rapl_energy_uj_root_only(fake_host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """We run as root, where chmod does not bite: fail the read the way the kernel does for a user."""
    real_read_text = Path.read_text

    def read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        if self.name == "energy_uj":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    reason = "permission denied reading /sys/class/powercap/intel-rapl:0/energy_uj (root needed)"
    assert rapl.Rapl.discover(fake_host).unreadable == {"rapl/intel-rapl:0/package-0": reason}
    with HostTelemetry(root=fake_host, nvml=False) as tel:
        pass
    metrics = _by_name(tel.metrics(_completed(), [(0.0, 1.0)], 1))
    assert metrics["energy_j"] == Metric.missing("energy_j", "J", reason)
    assert metrics["avg_power_w"].missing_reason == reason
    assert describe_host_sensors(fake_host)["rapl/intel-rapl:0/package-0"] == reason


def test_rapl_one_socket_unreadable_gives_no_partial_sum(fake_host: Path) -> None:
    _write(fake_host / "sys/class/powercap/intel-rapl:2/name", "package-1\n")
    _write(fake_host / "sys/class/powercap/intel-rapl:2/energy_uj", "12345\n")  # no max_energy_range_uj
    with HostTelemetry(root=fake_host, nvml=False) as tel:
        pass
    energy = _by_name(tel.metrics(_completed(), [(0.0, 1.0)], 1))["energy_j"]
    assert energy.missing_reason == "/sys/class/powercap/intel-rapl:2/max_energy_range_uj does not exist"


def test_rapl_absent_or_without_package(tmp_path: Path) -> None:
    assert rapl.Rapl.discover(tmp_path).unreadable == {"rapl": "no RAPL domain under /sys/class/powercap"}
    _write(tmp_path / "sys/class/powercap/intel-rapl:1/name", "psys\n")
    assert "(domains: psys)" in rapl.Rapl.discover(tmp_path).unreadable["rapl"]


# --- NVML ---------------------------------------------------------------------------------


class RecordedNvml:
    """Stands in for pynvml where no GPU exists: replays one recorded reading per call."""

    NVMLError = pynvml.NVMLError

    def __init__(self, recording: dict[str, Any], refuse: tuple[str, ...] = ()) -> None:
        self.recording, self.refuse = recording, refuse
        self.calls: dict[str, int] = {}
        self.shut_down = False

    def _next(self, key: str) -> int:
        if key in self.refuse or key not in self.recording["ticks"][0]:  # not recorded: as a GPU that lacks it
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        index = self.calls.get(key, 0)
        self.calls[key] = index + 1
        ticks = self.recording["ticks"]
        return ticks[min(index, len(ticks) - 1)][key]

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        return self._next("power_mw")

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int:
        return self._next("total_energy_mj")

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> SimpleNamespace:
        used = self._next("memory_used_bytes")
        total = self.recording["memory_total_bytes"]
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._next("utilization_gpu_pct"), memory=0)

    def nvmlDeviceGetName(self, handle: object) -> str:
        return self.recording["name"]

    def nvmlShutdown(self) -> None:
        self.shut_down = True


@pytest.fixture
def recording() -> dict[str, Any]:
    return json.loads((DATA / "nvml_rtx4090.json").read_text())


def test_nvml_conversions() -> None:
    assert nvml.mw_to_w(187430) == 187.43
    assert nvml.energy_delta_j(51_234_567_890, 51_234_578_824) == pytest.approx(10.934)
    assert nvml.bytes_to_mb(5 * 2**20) == 5.0


def test_nvml_recorded_readings_to_metrics(recording: dict[str, Any]) -> None:
    gpus = nvml.NvmlGpus(RecordedNvml(recording), [object()])
    ticks = recording["ticks"]
    samples = [s for i in range(len(ticks)) for s in gpus.read(i * recording["interval_s"])]
    metrics = _by_name(gpus.metrics(samples))
    power = [t["power_mw"] / 1000 for t in ticks]
    assert metrics["gpu_power_w"].value == pytest.approx(sum(power) / len(power))
    assert metrics["gpu_power_w"].samples == pytest.approx(power)
    energy_j = (ticks[-1]["total_energy_mj"] - ticks[0]["total_energy_mj"]) / 1000
    assert metrics["gpu_energy_j"].value == pytest.approx(energy_j)
    assert metrics["gpu_mem_peak_mb"].value == max(t["memory_used_bytes"] for t in ticks) / 2**20
    assert gpus.names() == ["NVIDIA GeForce RTX 4090"]


def test_nvml_energy_not_supported(recording: dict[str, Any]) -> None:
    gpus = nvml.NvmlGpus(RecordedNvml(recording, refuse=("total_energy_mj",)), [object()])
    samples = gpus.read(0.0) + gpus.read(0.1)
    metrics = _by_name(gpus.metrics(samples))
    assert metrics["gpu_energy_j"].missing_reason == "NVML refused nvml/gpu0/energy: Not Supported"
    assert metrics["gpu_power_w"].value is not None


def test_host_telemetry_with_recorded_gpu(
    tmp_path: Path, recording: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = RecordedNvml(recording)
    monkeypatch.setattr(nvml.NvmlGpus, "open", classmethod(lambda cls: (cls(api, [object()]), "ok")))
    with HostTelemetry(interval_s=60, root=tmp_path) as tel:
        pass  # exactly the opening and closing readings: ticks 0 and 1 of the recording
    metrics = _by_name(tel.metrics(_completed(), (), 0))
    ticks = recording["ticks"]
    assert metrics["gpu_energy_j"].value == pytest.approx(
        (ticks[1]["total_energy_mj"] - ticks[0]["total_energy_mj"]) / 1000
    )
    assert metrics["gpu_power_w"].samples == (31.25, 187.43)
    assert api.shut_down


def test_nvml_available_reason_on_this_host() -> None:
    ok, reason = nvml.nvml_available()
    if ok:
        pytest.skip("this host has an NVIDIA GPU")
    assert "no NVIDIA GPU found" in reason or "not installed" in reason
    assert gpu_names() == []


# --- the real host, the CSV and the sensor report -------------------------------------------


def test_this_host_missing_sources_have_reasons_not_zeros() -> None:
    report = describe_host_sensors()
    with HostTelemetry(interval_s=0.02) as tel:
        pass
    metrics = _by_name(tel.metrics(_completed(), [(0.0, 1.0)], 1))
    for name in ("energy_j", "avg_power_w"):
        if "rapl" in report:
            assert metrics[name].value is None and metrics[name].missing_reason == report["rapl"]
    if "nvml" in report:
        for name in ("gpu_power_w", "gpu_energy_j", "gpu_mem_peak_mb"):
            assert metrics[name].value is None and metrics[name].missing_reason == report["nvml"]
    for metric in metrics.values():
        assert metric.value is not None or metric.missing_reason
        assert metric.value != 0 or metric.name == "telemetry_tick_ms"


def test_write_csv_keeps_every_sample(fake_host: Path, tmp_path: Path) -> None:
    with HostTelemetry(interval_s=0.01, root=fake_host, nvml=False) as tel:
        pass
    out = tmp_path / "telemetry.csv"
    tel.write_csv(out)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(tel.samples)
    assert set(rows[0]) == {"t_monotonic_s", "source", "value", "unit"}
    energy = [r for r in rows if r["source"] == "rapl/intel-rapl:0/package-0"]
    assert energy and all(float(r["value"]) == 1_000_000 and r["unit"] == "uJ" for r in energy)
    assert [float(r["t_monotonic_s"]) for r in rows] == sorted(float(r["t_monotonic_s"]) for r in rows)


def test_describe_host_sensors_fake_tree(fake_host: Path) -> None:
    report = describe_host_sensors(fake_host)
    for source in ("thermal/thermal_zone1:x86_pkg_temp", "hwmon/hwmon1:coretemp/temp1", "cpufreq/cpu1",
                   "rapl/intel-rapl:0/package-0", "proc"):
        assert report[source] == "ok"
    assert "thermal" not in report and "rapl" not in report


def test_samples_are_timestamped_on_monotonic_clock(fake_host: Path) -> None:
    before = time.monotonic()
    with HostTelemetry(interval_s=0.01, root=fake_host, nvml=False) as tel:
        time.sleep(0.2)
    after = time.monotonic()
    assert all(isinstance(s, Sample) and before <= s.t <= after for s in tel.samples)
    assert len({s.t for s in tel.samples}) >= 3  # opening, at least one interval tick, closing
