"""`edgebench lab schedule add | list | remove` and `edgebench beat`: labs fired on a schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from harness.cli import views
from harness.cli.common import BrokerOpt, DevicesOpt, FormatOpt, ResultsOpt, StoreOpt, console, open_store, out
from harness.cli.lab import InventoryReq, ModelsOpt, RepeatOpt, SetOpt, SuiteOpt, TagsOpt, request
from harness.errors import EdgebenchError

app = typer.Typer(no_args_is_help=True, help="Labs fired on a schedule by `edgebench beat` (or cron).")


@app.command("add")
def schedule_add(
    inventory: Path = InventoryReq,
    suite: str = SuiteOpt,
    cron: Optional[str] = typer.Option(None, "--cron", help="Five crontab fields in UTC, e.g. '0 2 * * *' (02:00 every day)."),
    every: Optional[float] = typer.Option(None, "--every", min=1, help="Or: every this many seconds."),
    model: list[str] = ModelsOpt,
    set_: list[str] = SetOpt,
    repeat: Optional[int] = RepeatOpt,
    tags: list[str] = TagsOpt,
    devices: Optional[str] = DevicesOpt,
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
    broker: Optional[str] = BrokerOpt,
    print_only: bool = typer.Option(False, "--print", help="Print a crontab line (for a host without beat) instead of storing it; "
                                    "the store and broker URLs go into a file only you can read, which the line sources."),
) -> None:
    """Store a lab schedule for `edgebench beat`, or print the crontab line that runs it."""
    from harness.lab.schedule import add_schedule, cron_line
    from harness.paths import default_results_dir

    lab_request = request(inventory, suite, model, set_, repeat, tags, devices)
    if print_only:
        if not cron:
            raise EdgebenchError("--print needs --cron (cron has no --every)")
        out.print(cron_line(cron, inventory, lab_request, results or default_results_dir(), store_url, broker), highlight=False, markup=False,
                  soft_wrap=True)
        return
    entry = add_schedule(open_store(results, store_url), inventory, lab_request, cron, every)
    console.print(f"schedule {entry.id}: {entry.when()}; `edgebench beat` fires it (restart a running beat to pick it up)", markup=False)


@app.command("list")
def schedule_list(results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt, fmt: str = FormatOpt) -> None:
    """Stored lab schedules."""
    from harness.lab.schedule import schedules

    rows = tuple((s.id, s.when(), ", ".join(s.request.devices), s.request.suite, ", ".join(s.request.models), s.last_fired_at or "never")
                 for s in schedules(open_store(results, store_url)))
    views.show(out, views.Grid("", ("schedule", "when", "devices", "suite", "models", "last fired"), rows,
                               text=frozenset({"when", "devices", "suite", "models", "last fired"})), fmt)


@app.command("remove")
def schedule_remove(schedule_id: str = typer.Argument(...), results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt) -> None:
    """Delete a stored schedule."""
    from harness.lab.schedule import remove_schedule

    remove_schedule(open_store(results, store_url), schedule_id)


def beat(broker: Optional[str] = BrokerOpt, results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt) -> None:
    """Fire the stored lab schedules (`lab schedule add`) when they are due; run one per lab."""
    from harness.lab.app import broker_url
    from harness.lab.schedule import run_beat
    from harness.paths import default_results_dir

    root = results or default_results_dir()
    run_beat(broker_url(root, broker), root, store_url)
