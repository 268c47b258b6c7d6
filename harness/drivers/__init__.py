"""Device drivers behind one small protocol (`base.Driver`).

Registered as lazy "module:Class" entries so paramiko/adbutils load only when that driver is
chosen; each class declares the inventory settings it takes in `SETTINGS`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from harness.errors import EdgebenchError

DRIVERS = {"local": "harness.drivers.local:LocalDriver", "adb": "harness.drivers.adb:AdbDriver", "ssh": "harness.drivers.ssh:SshDriver"}


def driver_class(kind: str) -> Any:
    """The driver class registered under `kind`; unknown names list the valid ones."""
    try:
        module, cls = DRIVERS[kind].split(":")
    except KeyError:
        raise EdgebenchError(f"unknown driver {kind!r}; valid: {', '.join(sorted(DRIVERS))}") from None
    return getattr(import_module(module), cls)
