"""Inventories: devices by name, and malformed files rejected with file, line and key."""

from __future__ import annotations


import pytest

from harness.errors import ConfigError, EdgebenchError
from harness.plan.inventory import load_inventory, resolve_device

from .conftest import REPO


def test_example_inventory_loads_and_local_always_exists():
    devices = load_inventory(REPO / "devices" / "lab.example.toml")
    assert devices["pc"].driver == "local" and devices["pc"].tags == ("x86", "ci")
    assert resolve_device("local", None).driver == "local"
    assert resolve_device("pc", REPO / "devices" / "lab.example.toml").open().facts().driver == "local"


@pytest.mark.parametrize(
    "text, where, key",
    [
        ('[[device]]\nname = "a"\n', ":1", "device[0].driver"),
        ('[[device]]\nname = "a"\ndriver = "telnet"\n', ":3", "device[0].driver"),
        ('[[device]]\nname = "a"\ndriver = "local"\n\n[[device]]\nname = "b"\ndriver = "local"\nserail = "x"\n', ":8", "device[1].serail"),
        ('[[device]]\nname = "a"\ndriver = "local"\ntags = "x"\n', ":4", "device[0].tags"),
        ('[[device]]\nname = "a"\ndriver = "local"\n[[device]]\nname = "a"\ndriver = "local"\n', ":5", "device[1].name"),
        ('devices = 1\n', "", "devices"),
    ],
)
def test_malformed_inventory_names_file_line_and_key(tmp_path, text, where, key):
    path = tmp_path / "lab.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert info.value.key == key
    assert info.value.file == f"{path}{where}"


def test_unknown_device_lists_the_known_ones(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text('[[device]]\nname = "bench-pc"\ndriver = "local"\n')
    with pytest.raises(EdgebenchError, match="known devices: bench-pc, local"):
        resolve_device("pixel9", path)


def test_cli_devices_list_shows_the_inventory(tmp_path):
    from .test_cli import edgebench

    result = edgebench("devices", "list", "--inventory", str(REPO / "devices" / "lab.example.toml"), cwd=tmp_path)
    assert result.returncode == 0 and "pc" in result.stdout and "local" in result.stdout

