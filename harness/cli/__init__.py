"""The `edgebench` command, assembled from one module per command group; each parses its options,
calls the package and prints (views.py lays out every table). Errors become exit codes in one
place (common.Failures): 0 success; 1 some processes failed; 2 bad input; 3 interrupted.
"""

from __future__ import annotations

import typer

from harness.cli import compare, devices, lab, results, run, runtime, schedule
from harness.cli.common import Failures

# A traceback never prints local variables: one of them may be a `--store` or `--broker` URL with its password.
app = typer.Typer(cls=Failures, add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="On-device LLM benchmarking: llama.cpp on hosts, phones and boards.")
app.command("run")(run.run)
app.command("claims")(compare.claims)
app.command("report")(compare.report)
app.command("compare")(compare.compare)
app.command("worker")(lab.worker)
app.command("beat")(schedule.beat)
app.add_typer(runtime.app, name="runtime")
app.add_typer(results.app, name="results")
app.add_typer(devices.app, name="devices")
app.add_typer(devices.models_app, name="model")
app.add_typer(lab.app, name="lab")
lab.app.add_typer(schedule.app, name="schedule")
