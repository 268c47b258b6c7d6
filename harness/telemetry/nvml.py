"""NVIDIA GPU power, energy, memory and load through NVML (`nvidia-ml-py`, imported as `pynvml`).

NVML's total-energy counter (Volta and later) is the GPU's own integral, so gpu_energy_j is a
counter delta rather than power samples integrated at our tick rate. Memory is device-wide
(`used`), which on a benchmark host is the benchmark plus the driver's own reservation. Load is
`nvmlDeviceGetUtilizationRates().gpu`: the share of the driver's last sample period (1/6 s to 1 s)
in which a kernel ran; with several GPUs, their mean per tick (the share of the host's GPU time
that was busy), over the engine's measured windows (harness.telemetry.gpu).
The NVML API object is passed in, so tests replay recorded readings through the same code.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean
from typing import Any, Callable, Sequence

from harness.drivers.nvml import device_name, start_nvml
from harness.records import Metric, Window
from harness.telemetry import Sample, gpu

_BYTES_PER_MB = 2**20  # MiB, as everywhere in edgebench


def mw_to_w(milliwatts: int) -> float:
    """nvmlDeviceGetPowerUsage reports milliwatts."""
    return milliwatts / 1000


def energy_delta_j(start_mj: int, end_mj: int) -> float:
    """Joules between two nvmlDeviceGetTotalEnergyConsumption readings (mJ, 64-bit: no wrap)."""
    return (end_mj - start_mj) / 1000


def bytes_to_mb(count: int) -> float:
    """nvmlDeviceGetMemoryInfo reports bytes."""
    return count / _BYTES_PER_MB


# What one tick reads of each GPU: (quantity, unit, read(api, handle) -> value in that unit).
_READINGS: tuple[tuple[str, str, Callable[[Any, Any], float]], ...] = (
    ("power", "W", lambda api, h: mw_to_w(api.nvmlDeviceGetPowerUsage(h))),
    ("energy", "mJ", lambda api, h: float(api.nvmlDeviceGetTotalEnergyConsumption(h))),
    ("memory_used", "MB", lambda api, h: bytes_to_mb(api.nvmlDeviceGetMemoryInfo(h).used)),
    ("load", gpu.UNIT, lambda api, h: float(api.nvmlDeviceGetUtilizationRates(h).gpu)),
)


class NvmlGpus:
    """Every GPU NVML sees, read once per tick; `api` is pynvml or a stand-in with its calls."""

    def __init__(self, api: Any, handles: Sequence[Any]) -> None:
        self.api = api
        self.handles = tuple(handles)
        # source -> why NVML refused it (e.g. no energy counter before Volta); filled on first refusal
        self.refused: dict[str, str] = {}

    @classmethod
    def open(cls) -> tuple["NvmlGpus | None", str]:
        """All GPUs, or None and why there are none."""
        api, reason = start_nvml()
        if api is None:
            return None, reason
        count = api.nvmlDeviceGetCount()
        if count == 0:
            api.nvmlShutdown()
            return None, "no NVIDIA GPU found: NVML sees no device"
        return cls(api, [api.nvmlDeviceGetHandleByIndex(i) for i in range(count)]), "ok"

    def names(self) -> list[str]:
        return [device_name(self.api, handle) for handle in self.handles]

    def close(self) -> None:
        self.api.nvmlShutdown()

    def read(self, t: float) -> list[Sample]:
        """Power (W), the energy counter (mJ, raw), used memory (MB) and load (%) of each GPU."""
        samples = []
        for index, handle in enumerate(self.handles):
            for quantity, unit, read in _READINGS:
                source = f"nvml/gpu{index}/{quantity}"
                if source in self.refused:
                    continue
                try:
                    samples.append(Sample(t, source, read(self.api, handle), unit))
                except self.api.NVMLError as exc:
                    self.refused[source] = f"NVML refused {source}: {exc}"
        return samples

    def metrics(self, samples: Sequence[Sample], windows: Sequence[Window] = (), no_window: str | None = None) -> list[Metric]:
        """gpu_power_w (mean of all-GPU totals per tick), gpu_energy_j, gpu_mem_peak_mb over the
        whole process; gpu_load_pct (all GPUs' mean per tick) over the measured `windows`."""
        return [
            self._per_tick(samples, "power", "gpu_power_w", "W", fmean),
            self._energy(samples),
            self._per_tick(samples, "memory_used", "gpu_mem_peak_mb", "MB", max),
            gpu.load_metric([Sample(t, "nvml/load", fmean(values), gpu.UNIT) for t, values in self._ticks(samples, "load").items()],
                            windows, self._reason("load"), no_window),
        ]

    def _reason(self, quantity: str) -> str:
        refused = [why for source, why in self.refused.items() if source.endswith(f"/{quantity}")]
        return "; ".join(refused) or f"no NVML {quantity} reading in the window"

    def _per_tick(
        self, samples: Sequence[Sample], quantity: str, name: str, unit: str, reduce: Callable[..., float]
    ) -> Metric:
        totals = {t: sum(values) for t, values in self._ticks(samples, quantity).items()}
        if not totals:
            return Metric.missing(name, unit, self._reason(quantity))
        values = tuple(totals[t] for t in sorted(totals))
        return Metric(name, reduce(values), unit, samples=values)

    @staticmethod
    def _ticks(samples: Sequence[Sample], quantity: str) -> dict[float, list[float]]:
        """Each tick's readings of `quantity`, one per GPU, in time order."""
        ticks: dict[float, list[float]] = defaultdict(list)
        for s in sorted(samples, key=lambda s: s.t):
            if s.source.startswith("nvml/") and s.source.endswith(f"/{quantity}"):
                ticks[s.t].append(s.value)
        return ticks

    def _energy(self, samples: Sequence[Sample]) -> Metric:
        total = 0.0
        for index in range(len(self.handles)):
            readings = [s.value for s in samples if s.source == f"nvml/gpu{index}/energy"]
            if len(readings) < 2:
                reason = self._reason("energy") if not readings else "one NVML energy reading in the window"
                return Metric.missing("gpu_energy_j", "J", reason)
            total += energy_delta_j(int(readings[0]), int(readings[-1]))
        return Metric("gpu_energy_j", total, "J")


def missing_gpu_metrics(reason: str) -> list[Metric]:
    """The GPU figures of a host where NVML gives nothing, each saying why."""
    return [
        Metric.missing("gpu_power_w", "W", reason),
        Metric.missing("gpu_energy_j", "J", reason),
        Metric.missing("gpu_mem_peak_mb", "MB", reason),
        Metric.missing(gpu.NAME, gpu.UNIT, reason),
    ]


def nvml_available() -> tuple[bool, str]:
    """(True, "ok") when NVML runs and sees a GPU, else (False, why not)."""
    gpus, reason = NvmlGpus.open()
    if gpus is None:
        return False, reason
    gpus.close()
    return True, "ok"
