"""`edgebench run`: its options into a request for harness.run.orchestrate, its progress, tables and report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from harness.cli import views
from harness.cli.common import (EXIT_FAILED, AllowRequantizeOpt, FormatOpt, InventoryOpt, QuantizeOpt, ResultsOpt, RuntimeOpt, Stopped, StoreOpt, console,
                                note, open_store, out, say)
from harness.cli.results import show_runs, write_report
from harness.errors import Interrupted

if TYPE_CHECKING:
    from harness.run.runner import Step, StepResult
    from harness.run.session import Callbacks, Prepared
    from harness.runtimes import BuildProgress


def run(
    device: str = typer.Option("local", help="Device name ('local' is this machine)."),
    suite: str = typer.Option("quick", help="Built-in suite name or path to a suite TOML."),
    model: str = typer.Option("default", help="'default' (SmolLM2-135M Q4_1 from PyPI), a catalog name, or a GGUF path."),
    repeat: Optional[int] = typer.Option(None, "--repeat", "-r", min=1, help="Process repetitions per case (overrides the suite)."),
    set_: list[str] = typer.Option([], "--set", help="Override a llama-bench setting: KEY=V[,V...] (a list sweeps)."),
    target: Optional[str] = typer.Option(None, help="Runtime build target (default: the device's, else host)."),
    build_flag: list[str] = typer.Option([], "--build-flag", help="Extra cmake -D flag for the runtime build (repeatable)."),
    inventory: Optional[Path] = InventoryOpt,
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
    report: Optional[Path] = typer.Option(None, help="HTML report path (default: <results>/runs/<id>/report.html)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the planned cases and a time estimate; run nothing."),
    resume: Optional[str] = typer.Option(None, help="Finish an interrupted run (its id, an id prefix, or 'latest')."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    fmt: str = FormatOpt,
    wait: bool = typer.Option(False, help="If another run (a lab job, another user) holds the device, wait for it instead of exiting."),
    mode: Optional[str] = typer.Option(None, help="burst (cool down before each case), sustained (loop for --minutes) or none."),
    minutes: Optional[float] = typer.Option(None, min=0.1, help="Sustained mode: how long to keep running rounds."),
    remeasure_bandwidth: bool = typer.Option(False, "--remeasure-bandwidth", help="Measure memory bandwidth again instead of using this device's cached figure."),
    contention_threshold: Optional[float] = typer.Option(
        None, "--contention-threshold", help="Others' CPU (% of one core) above which a figure is marked contended (default: the suite's, 10)."),
    precision: Optional[str] = typer.Option(None, help="Add rounds until each case's 95% CI is within this share of its mean, e.g. 2%."),
    max_repetitions: Optional[int] = typer.Option(None, "--max-repetitions", min=1, help="With --precision: the most processes per case (default: the suite's, else 10)."),
    no_quality: bool = typer.Option(False, "--no-quality", help="Skip the suite's quality cases (KLD/top-1 against the reference) and the server cases' greedy check."),
    corpus: Optional[str] = typer.Option(None, help="Text the quality cases score (default: CPython's pydoc_data.topics)."),
    reference: Optional[str] = typer.Option(None, help="Reference for the quality cases: a GGUF, or a llama-perplexity logits file (default: the model itself)."),
    quantize: Optional[str] = QuantizeOpt,
    allow_requantize: bool = AllowRequantizeOpt,
    endpoint: Optional[str] = typer.Option(None, help="Run the suite's [[serve]] cases against this model server's URL (Ollama, vLLM, LM Studio, llama-server...) instead of a device."),
    served_model: Optional[str] = typer.Option(None, "--served-model", help="With --endpoint: the model name the server serves."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="With --endpoint: the environment variable holding its API key (never printed or stored)."),
    ca_cert: Optional[Path] = typer.Option(None, "--ca-cert", help="With --endpoint: a CA certificate to verify its TLS certificate with (a private CA)."),
    runtime: list[str] = RuntimeOpt,
) -> None:
    """Benchmark a device with a suite and a model; print the table and write an HTML report.

    SIGTERM and SIGHUP stop it as Ctrl-C does: the device's processes are killed, the run
    stays resumable, and the exit code is 3."""
    from sqlalchemy.exc import SQLAlchemyError

    from harness.plan.suites import parse_precision, parse_setting_overrides
    from harness.run import orchestrate
    from harness.run.session import RunOptions, estimate_seconds, prepare
    from harness.signals import stop_requests
    from harness.runtimes.quantize import parse_types

    store = open_store(results, store_url)
    if endpoint is not None or served_model is not None:
        _run_endpoint(store, endpoint, served_model, api_key_env, ca_cert, suite, repeat, as_json, fmt, report)
        return
    options = RunOptions(device, suite, model, target, tuple(build_flag), repeat, parse_setting_overrides(set_),
                         str(inventory) if inventory else None, mode, minutes, remeasure_bandwidth, contention_threshold,
                         precision=parse_precision(precision) if precision else None, max_repetitions=max_repetitions,
                         quality=not no_quality, corpus=corpus, reference=reference, runtimes=tuple(runtime))
    request = orchestrate.RunRequest(options, resume=resume, quantize=tuple(parse_types(quantize)) if quantize else (),
                                     allow_requantize=allow_requantize)
    if dry_run:
        prepared = prepare(options)
        _show_plan(prepared, estimate_seconds(store, prepared), fmt)
        return
    begun: list[str] = []  # the run (or resumed run) now under way: what an interruption says to resume
    progress = _progress()
    with stop_requests():
        try:
            with progress:
                outcomes = orchestrate.run(store, request, _callbacks(progress, begun.append), orchestrate.LeaseTerms(wait=wait))
            run_ids = [o.run_id for o in outcomes]
            show_runs(store, run_ids, as_json, fmt, sweep=bool(request.quantize))
            write_report(store, run_ids, report or store.artifacts_dir(run_ids[-1]) / "report.html")
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM/SIGHUP, or a lease that could not be renewed (Interrupted says which)
            what = exc.describe() if isinstance(exc, Interrupted) else "interrupted"
            if not begun:  # stopped while building or staging, before the run was recorded
                raise Stopped(f"{what} before the run was recorded; nothing to resume") from None
            raise Stopped(f"{what}; finished cases are stored (edgebench run --resume {begun[-1]}{' --store ...' if store_url else ''})") from None
        except (SQLAlchemyError, OSError) as exc:  # the store or the disk failed outside a run's steps (which say more)
            raise store.gone(exc) from None
    if any(o.failed for o in outcomes):
        raise typer.Exit(EXIT_FAILED)


def _run_endpoint(store: Any, endpoint: str | None, served_model: str | None, api_key_env: str | None, ca_cert: Path | None,
                  suite: str, repeat: int | None, as_json: bool, fmt: str, report: Path | None) -> None:
    """`--endpoint`: the suite's serve cases against a server someone else runs (harness.run.endpoint)."""
    from harness.errors import EdgebenchError
    from harness.run.endpoint import EndpointOptions, run_endpoint

    if not endpoint or not served_model:
        raise EdgebenchError("--endpoint URL and --served-model NAME go together")
    options = EndpointOptions(endpoint, served_model, api_key_env, str(ca_cert) if ca_cert else None)
    begun: list[str] = []
    progress = _progress()
    with progress:
        run_id, results = run_endpoint(store, options, suite, _callbacks(progress, begun.append), repeat)
    show_runs(store, [run_id], as_json, fmt)
    write_report(store, [run_id], report or store.artifacts_dir(run_id) / "report.html")
    if any(r.status != "ok" for r in results):
        raise typer.Exit(EXIT_FAILED)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[last]}"), console=console)


def _callbacks(progress: Progress, begun: Callable[[str], None]) -> Callbacks:
    """The run's lines: status and notes above the bar; the bar counts processes, rounds a
    precision target or sustained mode adds included; a llama.cpp build has a bar of its own."""
    from harness.plan.planner import case_label
    from harness.run.session import Callbacks

    tasks: dict[str, Any] = {}
    counts = {"done": 0, "total": 0}

    def on_start(step: Step) -> None:
        if "run" not in tasks:
            tasks["run"] = progress.add_task("", total=step.total, last="")
        if counts["done"] >= counts["total"]:  # the first steps, or a round a precision target or sustained mode added
            counts["total"] += step.total
        label = f"[{step.index + 1}/{step.total}] {case_label(step.case)} (round {step.rep + 1})"
        progress.update(tasks["run"], description=escape(label), total=counts["total"])

    def on_result(result: StepResult) -> None:
        counts["done"] += 1
        progress.update(tasks["run"], advance=1, last=_figure(result))

    def on_build_event(event: BuildProgress) -> None:
        if "build" not in tasks:
            tasks["build"] = progress.add_task("llama.cpp", total=100, last="")
        progress.update(tasks["build"], description=escape(f"llama.cpp {event.stage}"), completed=event.percent or 0, last=escape(event.line[-50:]))
        if event.stage == "done":
            progress.remove_task(tasks.pop("build"))

    return Callbacks(status=say, note=note, begun=begun, build=on_build_event, step_start=on_start, step_result=on_result)


def _figure(result: StepResult) -> str:
    if result.status != "ok":
        return f"[red]{result.status}[/]"
    for metric in result.metrics:
        if metric.value is not None and metric.name in ("prefill_tps", "decode_tps", "pg_tps", "ttft_ms", "agg_tps"):
            return f"{metric.value:,.1f} {metric.unit}"
        if metric.value is not None and metric.name == "kld_mean":
            return f"KLD {metric.value:.3g}"
    return ""


def _show_plan(prepared: Prepared, estimate: float | None, fmt: str) -> None:
    rows = []
    for i, case in enumerate(prepared.plan.cases, 1):
        how = prepared.plan.cores.get(case.key)
        threads = f"{how.n_threads} on cores {','.join(map(str, how.cpus))} ({how.why})" if how else str(case.setting("threads", "runtime default"))
        rows.append((str(i), case.engine, case.label, str(case.context), str(case.inprocess_reps), threads))
    title = f"plan: suite {prepared.suite.name} on {prepared.options.device}, model {prepared.model.filename}"
    grid = views.Grid(title, ("#", "engine", "case", "context", "in-process reps", "threads"), tuple(rows),
                      text=frozenset({"engine", "case", "threads"}))
    views.show(out, grid, fmt)
    when = f"about {estimate / 60:.1f} min (from earlier runs on this device)" if estimate else "no estimate yet (never ran on this device)"
    views.show_lines(out, [f"skipped {label}: {reason}" for label, reason in prepared.plan.skipped]
                     + [f"{prepared.plan.describe_processes()}; {when}"], fmt)
