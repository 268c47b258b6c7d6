"""Which telemetry samples beside a benchmark on each kind of driver: the native probe on every
device, NVML's GPU figures beside it on the host, the board's own tool (tegrastats, vcgencmd)
beside it over SSH, and nothing (every figure missing, saying why) where no runtime was staged.

Chosen here by the driver's `kind`, not by the drivers: a driver is transport only, and the
samplers it would otherwise build sit above it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.drivers.base import Completed, Driver
from harness.records import Mark, Metric, Window
from harness.telemetry.base import Telemetry
from harness.telemetry.coprocess import BoardTool
from harness.telemetry.host import HostTelemetry
from harness.telemetry.missing import MissingTelemetry
from harness.telemetry.probe import ProbeTelemetry, merged

if TYPE_CHECKING:  # paramiko loads only when an SSH device is used
    from harness.drivers.ssh import SshDriver


def telemetry_for(driver: Driver, runtime_dir: str | None = None) -> Telemetry:
    """The sampler for one benchmark process on `driver`, with the runtime staged at
    `runtime_dir` (where its probe is), or None when no runtime was staged."""
    return _BY_KIND[driver.kind](driver, runtime_dir)


def _local(driver: Driver, runtime_dir: str | None) -> Telemetry:
    """The runtime's native probe when there is one (it runs the benchmark as its child), with
    the host's GPUs beside it; else the in-process host sampler (pyllama cases, no runtime)."""
    probe = Path(runtime_dir or "") / "bin" / "edgebench-probe"
    if runtime_dir and probe.is_file():
        return GpuBeside(ProbeTelemetry(driver, str(probe), driver.workdir))
    return HostTelemetry()


def _adb(driver: Driver, runtime_dir: str | None) -> Telemetry:
    """The native probe (staged with the runtime) sampling on the phone beside the benchmark,
    as its parent; without a staged runtime every on-device metric is missing, saying so."""
    if runtime_dir is None:
        return MissingTelemetry("probe not available: no runtime was staged on the device")
    return ProbeTelemetry(driver, f"{runtime_dir}/bin/edgebench-probe", driver.workdir)


def _ssh(driver: SshDriver, runtime_dir: str | None) -> Telemetry:
    """The runtime's native probe, as on every device, with the board's own tool (tegrastats,
    vcgencmd) beside it on the probe's clock; without a runtime every figure is missing."""
    if runtime_dir is None:
        return MissingTelemetry("probe not available: no runtime on the board")
    tool = BoardTool(driver, driver.facts(), interval_ms=driver.telemetry_interval_ms)
    return ProbeTelemetry(driver, f"{runtime_dir}/bin/edgebench-probe", driver.workdir, beside=tool)


_BY_KIND: dict[str, Callable[[Any, str | None], Telemetry]] = {"local": _local, "adb": _adb, "ssh": _ssh}


class GpuBeside:
    """The probe's figures plus the host's NVIDIA GPU power, energy, memory and load (NVML),
    which the probe does not read: a GPU's figures come from the driver's library, not from
    sysfs (the probe's GPU load, from sysfs where a board has it, stands where NVML has none)."""

    def __init__(self, inner: Telemetry) -> None:
        self.inner = inner
        self.host = HostTelemetry()

    def __enter__(self) -> "GpuBeside":
        self.host.__enter__()
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.inner.__exit__(*exc)
        finally:
            self.host.__exit__(*exc)

    def wrap(self, argv: list[str], marks: str | None = None, cpus: Sequence[int] | None = None) -> list[str]:
        return self.inner.wrap(argv, marks, cpus)

    def attach(self, pid: int) -> None:
        self.inner.attach(pid)

    def marks(self) -> list[Mark]:
        return self.inner.marks()

    def metrics(self, completed: Completed, windows: Sequence[Window], tokens: int,
                no_window: str | None = None) -> list[Metric]:
        gpu = [m for m in self.host.metrics(completed, windows, tokens, no_window) if m.name.startswith("gpu_")]
        return merged(self.inner.metrics(completed, windows, tokens, no_window), gpu)

    def write_csv(self, path: Path) -> None:
        self.inner.write_csv(path)

    def details(self) -> dict[str, Any]:
        return self.inner.details()
