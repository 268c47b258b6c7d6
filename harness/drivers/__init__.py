"""Device drivers behind one small protocol (`base.Driver`); pick one with `get_driver`."""

from __future__ import annotations

from importlib import import_module

from harness.drivers.base import Driver
from harness.errors import EdgebenchError

# Lazy "module:Class" entries so paramiko/adbutils load only when that driver is chosen.
_REGISTRY = {"local": "harness.drivers.local:LocalDriver"}


def get_driver(kind: str, **settings: object) -> Driver:
    """Instantiate the driver registered under `kind`; unknown names list the valid ones."""
    try:
        target = _REGISTRY[kind]
    except KeyError:
        raise EdgebenchError(f"unknown device or driver {kind!r}; valid: {', '.join(sorted(_REGISTRY))}") from None
    module, cls = target.split(":")
    return getattr(import_module(module), cls)(**settings)
