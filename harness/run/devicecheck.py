"""`edgebench devices check`: what a lab engineer looks at before trusting a device's numbers.

Each check goes through the device's own driver, so it tests the connection the benchmark
will use; a device that fails is reported with what went wrong, never as a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.drivers.base import Driver
from harness.errors import EdgebenchError
from harness.plan.inventory import DeviceSpec
from harness.telemetry.probe import discover
from harness.telemetry.state import capture_state, format_state


@dataclass
class DeviceReport:
    device: str
    reachable: bool
    identity: str | None = None
    os: str | None = None
    free_mb: int | None = None
    power_source: str | None = None
    max_temp_c: float | None = None
    problems: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


def check_device(spec: DeviceSpec) -> DeviceReport:
    try:
        driver = spec.open()
        facts = driver.facts()
    except EdgebenchError as exc:
        return DeviceReport(spec.name, False, problems=[str(exc)])
    report = DeviceReport(spec.name, True, identity=f"{facts.cpu_model}, {facts.cores} cores, {facts.ram_mb} MB",
                          os=facts.os_release, power_source=facts.power_source)
    try:
        state = capture_state(driver)
        sensors = discover(driver)
        report.free_mb = _free_mb(driver, driver.workdir)
    except EdgebenchError as exc:
        report.problems.append(f"state could not be read: {exc}")
        return report
    report.max_temp_c = state.hottest
    report.details = format_state(state) + [f"sensors: {', '.join(s.name for s in sensors.sources) or 'none'}"]
    report.problems += [f"{family}: {reason}" for family, reason in sensors.unreadable.items()]
    hints = getattr(driver, "permission_hints", None)  # drivers that can say which group a metric needs
    if hints:
        report.problems += [f"{metric}: {need}" for metric, need in hints().items()]
    if state.capped:
        report.problems.append("a CPU cluster's scaling_max_freq is capped below its hardware maximum")
    return report


def _free_mb(driver: Driver, workdir: str) -> int | None:
    """Free space where edgebench stages files (its work folder, or the nearest existing parent)."""
    done = driver.run(["sh", "-c", 'd="$1"; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; df -k "$d"', "sh", workdir], timeout=30)
    lines = done.stdout.strip().splitlines()
    try:
        return int(lines[-1].split()[3]) // 1024
    except (IndexError, ValueError):
        return None
