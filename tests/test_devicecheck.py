"""`devices check` over an inventory: every device checked at once, an unreachable one named
with what went wrong (a refused loopback port, nothing mocked), and the exit code says so."""

from __future__ import annotations

import json

from .ports import free_port
from .test_cli import edgebench


def test_check_reports_every_device_and_names_the_unreachable_one(tmp_path):
    inventory = tmp_path / "lab.toml"
    inventory.write_text(
        f'[[device]]\nname = "board"\ndriver = "ssh"\nhost = "127.0.0.1"\nport = {free_port()}\nuser = "bench"\n\n'
        f'[[device]]\nname = "pc"\ndriver = "local"\nworkdir = "{tmp_path / "pc"}"\n'
    )
    result = edgebench("devices", "check", "--inventory", str(inventory), "--json", cwd=tmp_path)
    assert result.returncode == 3
    reports = {r["device"]: r for r in json.loads(result.stdout)}
    assert reports["pc"]["reachable"] and reports["pc"]["free_mb"] > 0 and reports["pc"]["os"]
    assert not reports["board"]["reachable"] and "refused" in reports["board"]["problems"][0]
