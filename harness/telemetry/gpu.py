"""GPU load (`gpu_load_pct`): the share of time the GPU was busy, over the engine's measured windows.

Where a figure comes from, each read the way the vendor's own tools read it:

- NVIDIA GPUs on the host: NVML's `nvmlDeviceGetUtilizationRates().gpu` (harness.telemetry.nvml),
  itself averaged by the driver over its sample period (1/6 s to 1 s);
- Jetson: tegrastats' `GR3D_FREQ` (harness.telemetry.tegrastats) and, where tegrastats is absent,
  the nvgpu driver's `load` file (permille) under the GPU's devfreq device, as jtop reads it;
- Adreno: kgsl's `gpu_busy_percentage` ("NN %", kgsl_pwrctrl.c);
- Mali: `utilization` under the mali0 device (percent; Samsung's and Google's platform code, which
  print -1 while the driver's DVFS, which computes it, is off).

The sysfs files are found and sampled by the native probe like every other sysfs sensor
(harness.telemetry.probe's discovery reads `GLOBS`; the probe samples the first number of each
file); this module says which of the files read are GPU load and turns samples into the figure.
A window that holds no reading gives no figure, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from statistics import fmean

from harness.drivers.devicefs import FileRead
from harness.records import Metric, Window
from harness.telemetry import Sample

NAME, UNIT = "gpu_load_pct", "%"
KGSL_BUSY = "/sys/class/kgsl/kgsl-3d0/gpu_busy_percentage"
KGSL_COUNTERS = "/sys/class/kgsl/kgsl-3d0/gpubusy"
MALI_UTILIZATION = "/sys/class/misc/mali0/device/utilization"
DEVFREQ_LOAD = "/sys/class/devfreq/*/device/load"
GLOBS = (KGSL_BUSY, KGSL_COUNTERS, MALI_UTILIZATION, DEVFREQ_LOAD)
# devfreq devices that are a Jetson's integrated GPU, by name (57000000.gpu, 17000000.ga10b, ...):
# the nvgpu chips jtop looks for, and the name JetPack 6 gives them.
JETSON_GPUS = ("gpu", "gm20b", "gp10b", "gv11b", "ga10b")
PREFIX = "gpu/"  # every GPU load source's name starts so
# What the probe's discovery says where no file is there (on the host, NVML's own reason follows).
NONE_READABLE = ("no GPU load source readable on this device: tried " + ", ".join(
    (f"{KGSL_BUSY} (Adreno)", f"{MALI_UTILIZATION} (Mali)", f"{DEVFREQ_LOAD} (Jetson iGPU)")))


def load_files(files: Mapping[str, FileRead]) -> tuple[list[tuple[str, str, float]], dict[str, str]]:
    """The GPU load files among those read at discovery: (source, path, scale to %) for each one
    to sample, and why a file that is there is not sampled (pure)."""
    found: list[tuple[str, str, float]] = []
    notes: dict[str, str] = {}
    for path in files:
        p = PurePosixPath(path)
        if path == KGSL_BUSY:
            found.append((f"{PREFIX}kgsl-3d0/busy", path, 1.0))
        elif path == MALI_UTILIZATION:
            found.append((f"{PREFIX}mali0/utilization", path, 1.0))
        elif p.match(DEVFREQ_LOAD):
            device = p.parents[1].name
            if device.rsplit(".", 1)[-1].lower() in JETSON_GPUS:
                found.append((f"{PREFIX}{device}/load", path, 0.1))  # nvgpu prints permille
    if KGSL_COUNTERS in files and KGSL_BUSY not in files:
        notes[f"{PREFIX}kgsl-3d0/gpubusy"] = (f"{KGSL_COUNTERS} holds two counters (busy, total) and this kernel has no "
                                              f"{PurePosixPath(KGSL_BUSY).name}; the probe samples one number per file")
    return found, notes


def load_metric(readings: Sequence[Sample], windows: Sequence[Window], reason: str, no_window: str | None = None) -> Metric:
    """gpu_load_pct: the mean of the GPU load `readings` (%) inside the measured windows ((start,
    duration), on the readings' clock); a negative reading (Mali with DVFS off) is no load and is
    left out. Missing with `reason` where nothing was read, or saying why none of it counts."""
    if not readings:
        return Metric.missing(NAME, UNIT, reason)
    if not windows:
        return Metric.missing(NAME, UNIT, no_window or "the engine marked no measured window")
    inside = [s.value for s in readings if any(start <= s.t <= start + duration for start, duration in windows)]
    values = tuple(v for v in inside if v >= 0)
    if not values:
        span = sum(duration for _, duration in windows)
        why = (f"every GPU load reading inside the measured windows was negative (the driver does not compute it; Mali does so while its DVFS is off)"
               if inside else f"no GPU load reading fell inside the measured windows ({len(windows)}, {span * 1000:.0f} ms in all)")
        return Metric.missing(NAME, UNIT, why)
    return Metric(NAME, fmean(values), UNIT, samples=values)
