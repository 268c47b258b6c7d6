"""What every command module shares: the two consoles, the options several commands take,
and the one place an error becomes an exit code.

Exit codes (README): 0 success; 1 some processes failed, or a comparison flagged a
regression; 2 bad input (suite, model, device, options, a store that cannot be opened); 3
interrupted: a device or the results store gone, a full disk, Ctrl-C or a signal, a wait that
gave up. Commands raise; `Failures` prints one line and exits.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import click
import typer
from rich.markup import escape
from typer.core import TyperGroup

from harness.cli import views
from harness.errors import EdgebenchError, StoreGone

if TYPE_CHECKING:
    from harness.store.db import Store

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 3

console = views.status_console()
out = views.output_console()


class Stopped(EdgebenchError):
    """A command stopped before its end and says what goes on without it (the run to resume,
    the lab left to its workers): exit 3, as an interruption."""


def exit_code(exc: Exception) -> int:
    """The one mapping of a user-facing error to its exit code: a device, the store or a wait
    that went away mid-command is an interruption (3); anything else was bad input (2)."""
    from harness.drivers.base import DriverError
    from harness.lab.submit import WaitEnded

    return EXIT_INTERRUPTED if isinstance(exc, (DriverError, StoreGone, Stopped, WaitEnded)) else EXIT_BAD_INPUT


class Failures(TyperGroup):
    """Every command's failures end as one line, never as a traceback (a database error's
    traceback prints its statement and parameters): an EdgebenchError by `exit_code`; the store
    gone mid-command, a full or failing disk, a lost connection exit 3; a path that does not
    exist or may not be written is bad input (2); Ctrl-C exits 3."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        from harness.credentials import mask_url
        from harness.store.db import DISK_ERRORS, cause

        try:
            return super().invoke(ctx)
        except EdgebenchError as exc:
            message, code = str(exc), exit_code(exc)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (SQLAlchemyError, OSError) as exc:
            gone = isinstance(exc, (SQLAlchemyError, ConnectionError, TimeoutError)) or exc.errno in DISK_ERRORS
            where = "results store" if isinstance(exc, SQLAlchemyError) else "disk" if exc.errno in DISK_ERRORS else "file or network"
            message, code = mask_url(f"{where}: {cause(exc)}"), EXIT_INTERRUPTED if gone else EXIT_BAD_INPUT
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None


def check_format(fmt: str) -> str:
    if fmt not in views.FORMATS:
        raise EdgebenchError(f"unknown format {fmt!r}; valid: {', '.join(views.FORMATS)}")
    return fmt


def open_store(results: Optional[Path], url: Optional[str] = None) -> Store:
    from harness.paths import default_results_dir
    from harness.store.db import Store

    return Store(results or default_results_dir(), url)


def say(message: str) -> None:
    """A status line: what is being done now."""
    console.print(f"[dim]{escape(message)}[/]")


def note(message: str) -> None:
    """A line the user should not miss: a skipped case, a wait, a sweep's next model."""
    console.print(f"[yellow]{escape(message)}[/]")


def names(devices: Optional[str]) -> tuple[str, ...]:
    return tuple(n.strip() for n in devices.split(",") if n.strip()) if devices else ()


ResultsOpt = typer.Option(None, "--results", help="Results folder (default: ./results or $EDGEBENCH_RESULTS).")
StoreOpt = typer.Option(None, "--store", help="Results database URL, e.g. postgresql://user@host/db?sslmode=require for a lab "
                        "(default: $EDGEBENCH_STORE, else the SQLite file in the results folder).")
InventoryOpt = typer.Option(None, "--inventory", help="Device inventory TOML (default: $EDGEBENCH_INVENTORY, else devices/local.toml).")
FormatOpt = typer.Option("table", "--format", callback=check_format,
                         help="table (folds to the terminal's width, never cutting a figure), plain (no box lines), "
                         "csv or markdown (for pasting), json (one object per table).")
JsonOpt = typer.Option(False, "--json", help="The whole result as one JSON document on stdout.")
RuntimeOpt = typer.Option([], "--runtime", help="Run the suite's tests on this runtime: llama.cpp, openvino (repeatable: side by side; default: the suite's `runtime`).")
QuantizeOpt = typer.Option(None, "--quantize", help="Sweep: make these variants of --model with llama-quantize (e.g. Q8_0,Q4_K_M,Q2_K) and measure each.")
AllowRequantizeOpt = typer.Option(False, "--allow-requantize", help="With --quantize: allow a base that is itself quantized.")
BrokerOpt = typer.Option(None, "--broker", help="Celery broker URL, e.g. redis://:PASSWORD@lab-host:6379/0 (rediss:// for TLS) "
                         "(default: $EDGEBENCH_BROKER, else an embedded one in the results folder: one host, no server).")
DevicesOpt = typer.Option(None, "--devices", help="Only these devices of the inventory: NAME[,NAME...].")
