"""`edgebench devices list | facts | check` and `edgebench model info`: what can be benchmarked, with what."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from harness.cli import views
from harness.cli.common import EXIT_INTERRUPTED, FormatOpt, InventoryOpt, JsonOpt, out

app = typer.Typer(no_args_is_help=True, help="Devices edgebench can benchmark.")
models_app = typer.Typer(no_args_is_help=True, help="Models: the catalog and GGUF metadata.")


@app.command("list")
def devices_list(inventory: Optional[Path] = InventoryOpt, fmt: str = FormatOpt) -> None:
    """Devices that can be benchmarked: `local` and those in the inventory."""
    from harness.plan.inventory import LOCAL, default_inventory, load_inventory

    path = inventory or default_inventory()
    devices = {"local": LOCAL, **(load_inventory(path) if path else {})}
    rows = tuple((spec.name, spec.driver, str(spec.target), ", ".join(spec.tags), str(spec.source)) for spec in devices.values())
    views.show(out, views.Grid("", ("device", "driver", "target", "tags", "from"), rows, text=frozenset({"driver", "target", "tags", "from"}),
                               caption=(f"inventory: {path or 'none'}",)), fmt)


@app.command("facts")
def devices_facts(name: str = typer.Argument("local"), inventory: Optional[Path] = InventoryOpt) -> None:
    """What edgebench records about a device (identity, OS, memory, power source)."""
    from dataclasses import asdict

    from harness.plan.inventory import resolve_device

    facts = asdict(resolve_device(name, inventory).open().facts())
    if name == "local":
        from harness.telemetry.host import describe_host_sensors

        facts["sensors"] = describe_host_sensors()
    out.print_json(json.dumps(facts, default=str))


@app.command("check")
def devices_check(names: list[str] = typer.Argument(None, help="Devices (default: every device of the inventory, or local)."),
                  inventory: Optional[Path] = InventoryOpt, as_json: bool = JsonOpt, fmt: str = FormatOpt) -> None:
    """Each device's state now: reachable, identity, OS, free storage, power source, heat,
    governors and caps, and what is wrong (or which permission a missing metric needs).
    Exits 3 when a device cannot be reached."""
    from concurrent.futures import ThreadPoolExecutor

    from harness.plan.inventory import LOCAL, default_inventory, load_inventory, resolve_device
    from harness.run.devicecheck import check_device

    path = inventory or default_inventory()
    specs = [resolve_device(n, path) for n in names] if names else list((load_inventory(path) if path else {"local": LOCAL}).values())
    with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
        reports = list(pool.map(check_device, specs))
    if as_json:
        out.print_json(json.dumps([r.__dict__ for r in reports], default=str))
    else:
        rows = tuple((r.device, "yes" if r.reachable else "no", *("—" if c is None else str(c) for c in (
            r.identity, r.os, r.free_mb, r.power_source, r.max_temp_c, "; ".join(r.problems)))) for r in reports)
        grid = views.Grid("", ("device", "reachable", "identity", "OS", "free MB", "power", "max °C", "problems"), rows,
                          text=frozenset({"reachable", "identity", "OS", "power", "problems"}), styles=tuple("" if r.reachable else "red" for r in reports))
        views.show(out, grid, fmt)
        views.show_lines(out, [f"{r.device}: {line}" for r in reports for line in r.details], fmt)
    if any(not r.reachable for r in reports):
        raise typer.Exit(EXIT_INTERRUPTED)


@models_app.command("info")
def model_info(spec: str = typer.Argument("default", help="'default', a catalog name, or a GGUF path.")) -> None:
    """GGUF metadata and sha256 of a model (fetching the default one if needed)."""
    from harness.runtimes.models import inspect_model, resolve_model

    out.print_json(json.dumps(inspect_model(resolve_model(spec)).to_json()))
