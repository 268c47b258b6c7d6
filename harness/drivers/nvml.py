"""NVIDIA's management library (NVML: `nvidia-ml-py`, imported as `pynvml`) opened on this host:
the transport both the host's facts (which GPUs it has) and its GPU telemetry
(harness.telemetry.nvml) read through. pynvml is imported only when a caller asks.
"""

from __future__ import annotations

from typing import Any


def start_nvml() -> tuple[Any | None, str]:
    """pynvml, initialised, or None and the reason it cannot be used on this machine."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return None, "no NVIDIA GPU found: NVML library not found (libnvidia-ml.so.1 comes with the driver)"
    except pynvml.NVMLError_DriverNotLoaded:
        return None, "no NVIDIA GPU found: the NVIDIA kernel driver is not loaded"
    except pynvml.NVMLError as exc:
        return None, f"NVML failed to initialise: {exc}"
    return pynvml, "ok"


def device_name(api: Any, handle: Any) -> str:
    """One GPU's name (older pynvml releases return bytes)."""
    name = api.nvmlDeviceGetName(handle)
    return name.decode() if isinstance(name, bytes) else name


def gpu_names() -> list[str]:
    """Names of the NVIDIA GPUs on this host, for device facts; [] where there are none."""
    api, _ = start_nvml()
    if api is None:
        return []
    try:
        return [device_name(api, api.nvmlDeviceGetHandleByIndex(i)) for i in range(api.nvmlDeviceGetCount())]
    finally:
        api.nvmlShutdown()
