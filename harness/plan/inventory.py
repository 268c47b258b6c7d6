"""Device inventories (TOML): which devices a lab has and how to reach each.

`local` (this machine) always exists; other names come from an inventory file given with
`--inventory`, `$EDGEBENCH_INVENTORY`, or `devices/local.toml` when it exists. Each driver
declares the settings it takes (`SETTINGS`), so a typo in a key is an error naming the file,
the line and the key, never a silently ignored option.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.drivers import DRIVERS, driver_class
from harness.drivers.base import Driver
from harness.errors import ConfigError, EdgebenchError

COMMON_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "name": (str, "a device name"),
    "driver": (str, "one of the drivers"),
    "target": (str, "a runtime target (host, host-cuda, linux-aarch64, device ...)"),
    "build_flags": (list, "a list of CMake definitions like '-DGGML_CUDA=ON'"),
    "workdir": (str, "a folder on the device for edgebench's files"),
    "tags": (list, "a list of strings"),
    "description": (str, "a string"),
}


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    driver: str
    settings: dict[str, Any] = field(default_factory=dict)
    target: str = "host"
    build_flags: tuple[str, ...] = ()
    workdir: str | None = None
    tags: tuple[str, ...] = ()
    source: str = "builtin"

    def open(self) -> Driver:
        """The driver for this device (nothing is connected until it is first used)."""
        return driver_class(self.driver)(name=self.name, workdir=self.workdir, **self.settings)


LOCAL = DeviceSpec(name="local", driver="local")


def default_inventory() -> Path | None:
    explicit = os.environ.get("EDGEBENCH_INVENTORY")
    if explicit:
        return Path(explicit)
    fallback = Path("devices/local.toml")
    return fallback if fallback.is_file() else None


def resolve_device(name: str, inventory: Path | None = None) -> DeviceSpec:
    """The named device from the inventory; `local` works without one."""
    path = inventory or default_inventory()
    devices = load_inventory(path) if path else {}
    if name in devices:
        return devices[name]
    if name == "local":
        return LOCAL
    where = f"not in inventory {path}" if path else "no inventory given (--inventory FILE or $EDGEBENCH_INVENTORY)"
    known = ", ".join(sorted({"local", *devices}))
    raise EdgebenchError(f"unknown device {name!r}: {where}; known devices: {known}")


def load_inventory(path: Path) -> dict[str, DeviceSpec]:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "(file)", "a readable inventory TOML file", exc.strerror) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(syntax)", "valid TOML", str(exc)) from None
    for key in data:
        if key != "device":
            raise ConfigError(source, key, "[[device]] tables only", "unknown key")
    entries = data.get("device", [])
    if not isinstance(entries, list):
        raise ConfigError(source, "device", "[[device]] tables (an array of tables)")
    devices: dict[str, DeviceSpec] = {}
    for index, entry in enumerate(entries):
        spec = _device(entry, index, source, text)
        if spec.name in devices:
            raise ConfigError(_at(source, text, "name", index), f"device[{index}].name", "a name used once", spec.name)
        devices[spec.name] = spec
    return devices


def _device(entry: dict[str, Any], index: int, source: str, text: str) -> DeviceSpec:
    def fail(key: str, expected: str, got: object = None) -> ConfigError:
        return ConfigError(_at(source, text, key, index), f"device[{index}].{key}", expected, got)

    for key in ("name", "driver"):
        if key not in entry:
            raise fail(key, COMMON_KEYS[key][1], "missing")
    if entry["driver"] not in DRIVERS:
        raise fail("driver", "one of " + ", ".join(sorted(DRIVERS)), entry["driver"])
    schema = {**COMMON_KEYS, **driver_class(entry["driver"]).SETTINGS}
    for key, value in entry.items():
        if key not in schema:
            raise fail(key, f"a key among {', '.join(sorted(schema))}", "unknown key")
        kind, expected = schema[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise fail(key, expected, value)
    for key in ("build_flags", "tags"):
        if not all(isinstance(v, str) for v in entry.get(key, [])):
            raise fail(key, COMMON_KEYS[key][1], entry[key])
    settings = {k: v for k, v in entry.items() if k not in COMMON_KEYS}
    return DeviceSpec(
        name=entry["name"],
        driver=entry["driver"],
        settings=settings,
        target=entry.get("target", "host"),
        build_flags=tuple(entry.get("build_flags", ())),
        workdir=entry.get("workdir"),
        tags=tuple(entry.get("tags", ())),
        source=source,
    )


def _at(source: str, text: str, key: str, index: int) -> str:
    """`file:line` of `key` inside the index-th [[device]] table (tomllib gives no positions)."""
    starts = [m.start() for m in re.finditer(r"(?m)^\s*\[\[device\]\]", text)]
    if index >= len(starts):
        return source
    end = starts[index + 1] if index + 1 < len(starts) else len(text)
    match = re.search(rf"(?m)^\s*{re.escape(key)}\s*=", text[starts[index]:end])
    offset = starts[index] + (match.start() if match else 0)
    return f"{source}:{text.count(chr(10), 0, offset) + 1}"

