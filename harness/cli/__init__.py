"""The `edgebench` command: parses options, calls the modules, prints. Nothing else lives here.

Exit codes: 0 success; 1 some processes failed (their results say why); 2 bad input
(suite, model, device, options); 3 the run was interrupted (resume with --resume RUN_ID).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from harness.cli import views
from harness.errors import EdgebenchError, Interrupted, StoreGone

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 3


class _OneLineFailures(TyperGroup):
    """Every command's database, disk and network failures end as one line, never as a
    traceback (a database error's traceback prints its statement and parameters): the store
    gone mid-command, a full or failing disk, a lost connection exit 3, as `run`'s do; a path
    that does not exist or may not be written is bad input (2)."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        from harness.credentials import mask_url
        from harness.store.db import DISK_ERRORS, cause

        try:
            return super().invoke(ctx)
        except (SQLAlchemyError, OSError) as exc:
            gone = isinstance(exc, (SQLAlchemyError, ConnectionError, TimeoutError)) or exc.errno in DISK_ERRORS
            where = "results store" if isinstance(exc, SQLAlchemyError) else "disk" if exc.errno in DISK_ERRORS else "file or network"
            console.print(f"[bold red]error:[/] {escape(mask_url(f'{where}: {cause(exc)}'))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED if gone else EXIT_BAD_INPUT) from None


# A traceback never prints local variables: one of them may be a `--store` or `--broker` URL with its password.
app = typer.Typer(cls=_OneLineFailures, add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="On-device LLM benchmarking: llama.cpp on hosts, phones and boards.")
runtime_app = typer.Typer(no_args_is_help=True, help="Build and inspect llama.cpp runtimes.")
results_app = typer.Typer(no_args_is_help=True, help="Stored runs.")
devices_app = typer.Typer(no_args_is_help=True, help="Devices edgebench can benchmark.")
models_app = typer.Typer(no_args_is_help=True, help="Models: the catalog and GGUF metadata.")
app.add_typer(runtime_app, name="runtime")
app.add_typer(results_app, name="results")
app.add_typer(devices_app, name="devices")
app.add_typer(models_app, name="model")
lab_app = typer.Typer(no_args_is_help=True, help="Lab runs over an inventory: all devices at once, scheduled.")
app.add_typer(lab_app, name="lab")

console = Console(stderr=True)
out = views.output_console()

ResultsOpt = typer.Option(None, "--results", help="Results folder (default: ./results or $EDGEBENCH_RESULTS).")
StoreOpt = typer.Option(None, "--store", help="Results database URL, e.g. postgresql://user@host/db?sslmode=require for a lab "
                        "(default: $EDGEBENCH_STORE, else the SQLite file in the results folder).")
InventoryOpt = typer.Option(None, "--inventory", help="Device inventory TOML (default: $EDGEBENCH_INVENTORY, else devices/local.toml).")
FormatOpt = typer.Option("table", "--format", help="table (folds to the terminal's width, never cutting a figure), plain (no box lines), "
                         "csv or markdown (for pasting).")
QuantizeOpt = typer.Option(None, "--quantize", help="Sweep: make these variants of --model with llama-quantize (e.g. Q8_0,Q4_K_M,Q2_K) and measure each.")
AllowRequantizeOpt = typer.Option(False, "--allow-requantize", help="With --quantize: allow a base that is itself quantized.")


def _check_format(fmt: str) -> str:
    if fmt not in views.FORMATS:
        raise _fail(EdgebenchError(f"unknown format {fmt!r}; valid: {', '.join(views.FORMATS)}"))
    return fmt


def _store(results: Optional[Path], url: Optional[str] = None):
    from harness.paths import default_results_dir
    from harness.store.db import Store

    return Store(results or default_results_dir(), url)


def _fail(exc: Exception, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _build_progress() -> tuple[Progress, Any]:
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), console=console, transient=True)
    task = progress.add_task("building llama.cpp", total=100)

    def update(event) -> None:
        progress.update(task, description=escape(f"{event.stage}: {event.line[-60:]}"), completed=event.percent or 0)

    return progress, update


@app.command()
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
    no_quality: bool = typer.Option(False, "--no-quality", help="Skip the suite's quality cases (KLD/top-1 against the reference)."),
    corpus: Optional[str] = typer.Option(None, help="Text the quality cases score (default: CPython's pydoc_data.topics)."),
    reference: Optional[str] = typer.Option(None, help="Reference for the quality cases: a GGUF, or a llama-perplexity logits file (default: the model itself)."),
    quantize: Optional[str] = QuantizeOpt,
    allow_requantize: bool = AllowRequantizeOpt,
) -> None:
    """Benchmark a device with a suite and a model; print the table and write an HTML report.

    SIGTERM and SIGHUP stop it as Ctrl-C does: the device's processes are killed, the run
    stays resumable, and the exit code is 3."""
    from harness.plan.suites import parse_precision, parse_setting_overrides
    from harness.store.leases import held, manual_holder
    from harness.store.db import new_run_id
    from harness.run.session import Callbacks, RunOptions, estimate_seconds, prepare, resume as resume_run, start
    from harness.signals import stop_requests
    from harness.runtimes.quantize import parse_types
    from sqlalchemy.exc import SQLAlchemyError

    _check_format(fmt)
    begun: list[str] = []  # the run (or resumed run) now under way: what an interruption says to resume
    with stop_requests():
        try:
            store = _store(results, store_url)
            options = RunOptions(device, suite, model, target, tuple(build_flag), repeat, parse_setting_overrides(set_),
                                 str(inventory) if inventory else None, mode, minutes, remeasure_bandwidth, contention_threshold,
                                 precision=parse_precision(precision) if precision else None, max_repetitions=max_repetitions,
                                 quality=not no_quality, corpus=corpus, reference=reference)
            types = parse_types(quantize) if quantize else []
            if quantize and resume:
                raise EdgebenchError("--quantize and --resume: resume each run of the sweep by its id instead")
            if dry_run:
                prepared = prepare(options)
                _print_plan(prepared, estimate_seconds(store, prepared))
                return
            progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[last]}"), console=console,
            )
            tasks: dict[str, Any] = {}
            counts = {"done": 0, "total": 0}

            def on_start(step) -> None:
                if "run" not in tasks:
                    tasks["run"] = progress.add_task("", total=step.total, last="")
                if counts["done"] >= counts["total"]:  # the first steps, or a round a precision target or sustained mode added
                    counts["total"] += step.total
                label = f"[{step.index + 1}/{step.total}] {step.case.label} (round {step.rep + 1})"
                progress.update(tasks["run"], description=escape(label), total=counts["total"])

            def on_result(result) -> None:
                counts["done"] += 1
                progress.update(tasks["run"], advance=1, last=_figure(result))

            def on_build_event(event) -> None:
                if "build" not in tasks:
                    tasks["build"] = progress.add_task("llama.cpp", total=100, last="")
                progress.update(tasks["build"], description=escape(f"llama.cpp {event.stage}"), completed=event.percent or 0, last=escape(event.line[-50:]))
                if event.stage == "done":
                    progress.remove_task(tasks.pop("build"))

            callbacks = Callbacks(status=lambda m: console.print(f"[dim]{escape(m)}[/]"), build=on_build_event, step_start=on_start, step_result=on_result)

            def note(message: str) -> None:
                console.print(f"[yellow]{escape(message)}[/]")

            def one(options_: RunOptions):
                prepared = prepare(options_, on_status=callbacks.status)
                for label, reason in prepared.plan.skipped:
                    console.print(f"[yellow]skipped[/] {escape(label)}: {escape(reason)}")
                run_id = new_run_id()  # chosen before the lease, so the lease names the run that holds it
                begun.append(run_id)
                with held(store, prepared.driver.identity(), manual_holder(run_id), wait=wait, on_wait=note):
                    return _with(progress, lambda: start(store, prepared, callbacks, run_id=run_id))

            if resume:
                row = store.run(resume)
                begun.append(row["id"])
                with held(store, row["device_identity"] or f"name:{row['device']}", manual_holder(row["id"]), wait=wait, on_wait=note):
                    done = [_with(progress, lambda: resume_run(store, resume, callbacks))]
            elif types:
                from harness.run.sweep import sweep_options

                done = []
                for options_ in _with(progress, lambda: sweep_options(options, types, allow_requantize=allow_requantize, callbacks=callbacks)):
                    console.print(f"[bold]sweep {escape(str(options_.sweep))}: {escape(options_.variant or 'base')} ({escape(options_.model)})[/]")
                    done.append(one(options_))
            else:
                done = [one(options)]
            run_ids = [run_id for run_id, _ in done]
            _show_runs(store, run_ids, as_json, fmt, sweep=bool(types))
            _write_report(store, run_ids, report or store.artifacts_dir(run_ids[-1]) / "report.html")
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM/SIGHUP, or a lease that could not be renewed (Interrupted says which)
            what = exc.describe() if isinstance(exc, Interrupted) else "interrupted"
            again = f"edgebench run --resume {begun[-1]}{' --store ...' if store_url else ''}" if begun else "edgebench run --resume latest"
            raise _fail(EdgebenchError(f"{what}; finished cases are stored ({again})"), EXIT_INTERRUPTED)
        except EdgebenchError as exc:
            raise _fail(exc, EXIT_INTERRUPTED if _is_driver_error(exc) else EXIT_BAD_INPUT)
        except (SQLAlchemyError, OSError) as exc:  # the store or the disk failed outside a run's steps (which say more)
            raise _fail(store.gone(exc), EXIT_INTERRUPTED)
        if any(r.status != "ok" for _, results_ in done for r in results_):
            raise typer.Exit(EXIT_FAILED)


def _with(progress: Progress, action):
    with progress:
        return action()


def _figure(result) -> str:
    if result.status != "ok":
        return f"[red]{result.status}[/]"
    for metric in result.metrics:
        if metric.value is not None and metric.name in ("prefill_tps", "decode_tps", "pg_tps", "ttft_ms"):
            return f"{metric.value:,.1f} {metric.unit}"
        if metric.value is not None and metric.name == "kld_mean":
            return f"KLD {metric.value:.3g}"
    return ""


def _print_plan(prepared, estimate: float | None) -> None:
    table = Table(title=escape(f"plan: suite {prepared.suite.name} on {prepared.options.device}, model {prepared.model.filename}"))
    for column in ("#", "engine", "case", "context", "in-process reps", "threads"):
        table.add_column(column)
    for i, case in enumerate(prepared.plan.cases, 1):
        how = prepared.plan.cores.get(case.key)
        threads = f"{how['n_threads']} on cores {','.join(map(str, how['cpus']))} ({how['why']})" if how else str(case.setting("threads", "runtime default"))
        table.add_row(str(i), case.engine, escape(case.label), str(case.context), str(case.inprocess_reps), escape(threads))
    out.print(table)
    for label, reason in prepared.plan.skipped:
        out.print(f"skipped {escape(label)}: {escape(reason)}")
    when = f"about {estimate / 60:.1f} min (from earlier runs on this device)" if estimate else "no estimate yet (never ran on this device)"
    out.print(f"{prepared.plan.describe_processes()}; {when}")


def _show_runs(store, run_ids: list[str], as_json: bool, fmt: str = "table", *, sweep: bool = False) -> None:
    """Each run; after a sweep, its frontier (with --json: one document holding them all)."""
    from harness.analysis.quality import frontier_frame

    frontier = frontier_frame(store, run_ids) if sweep else None
    if as_json:
        payload = _run_payload(store, run_ids[0]) if frontier is None else {
            "runs": [_run_payload(store, run_id) for run_id in run_ids], "frontier": json.loads(frontier.to_json(orient="records"))}
        out.print_json(json.dumps(payload, default=str))
        return
    for run_id in run_ids:
        views.show_run(out, store, run_id, fmt)
    if frontier is not None:
        views.show(out, views.frontier_grid(frontier), fmt)


def _run_payload(store, run_id: str) -> dict[str, Any]:
    from harness.analysis.tables import contended_processes, summary_frame, tidy_frame
    from harness.analysis.quality import quality_results
    from harness.analysis.roofline import roofline_frame

    row = store.run(run_id)
    summary = summary_frame(tidy_frame(store, [row["id"]]))
    payload = {"run": {k: row[k] for k in row.keys() if not k.endswith("_text")}, "summary": json.loads(summary.to_json(orient="records")),
               "quality": [q.to_json() for q in quality_results(store, row["id"])],
               "contended": contended_processes(store, row["id"]),
               "roofline": json.loads(roofline_frame(store, [row["id"]]).to_json(orient="records")),
               "stops": [{"case": label, **stop.to_json(), "text": stop.describe()} for label, stop in views.stops_by_label(store, row["id"]).items()]}
    return payload


def _write_report(store, run_ids: list[str], output: Path) -> None:
    from harness.report.html import render_report

    path = render_report(store, run_ids, output)
    console.print(f"report: {path}")


@app.command("claims")
def claims_cmd(
    run: Optional[str] = typer.Option(None, "--run", help="Check against this run only (default: the latest run of each device and model)."),
    claims_dir: Optional[Path] = typer.Option(None, "--claims", help="Folder of claim TOML files (default: the ones edgebench ships)."),
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
    as_json: bool = typer.Option(False, "--json", help="Every claim, tested or not, as JSON."),
    fmt: str = FormatOpt,
) -> None:
    """Published figures against stored runs: measured / claimed, with every differing condition
    named; the claims no stored run tests are one line saying which devices and models would."""
    from harness.analysis.claims import CLAIMS_DIR, check_claims, load_claims, ratio_checks_for

    _check_format(fmt)
    try:
        store = _store(results, store_url)
        claims = load_claims(claims_dir or CLAIMS_DIR)
        run_ids = [store.run(run)["id"]] if run else None
        checks = check_claims(store, claims, run_ids)
        # ratio claims need a sweep's base and variants: every stored run unless one is named
        ratios = ratio_checks_for(store, claims, run_ids or [r["id"] for r in store.runs()])
    except EdgebenchError as exc:
        raise _fail(exc)
    if as_json:
        out.print_json(json.dumps([c.to_json() for c in checks] + [c.to_json() for c in ratios]))
        return
    views.show(out, views.claims_grid(checks), fmt)
    views.show_lines(out, [c.describe() for c in ratios], fmt)


@app.command("report")
def report_cmd(
    runs: list[str] = typer.Argument(None, help="Run ids or prefixes (default: the latest run)."),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="HTML file to write."),
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
) -> None:
    """Write one self-contained HTML report of stored runs."""
    try:
        store = _store(results, store_url)
        _write_report(store, [store.run(r)["id"] for r in (runs or ["latest"])], output)
    except EdgebenchError as exc:
        raise _fail(exc)


@app.command()
def compare(
    run_a: str = typer.Argument(..., help="Baseline run (id, prefix or 'latest')."),
    run_b: str = typer.Argument(..., help="Run to compare with the baseline."),
    threshold: float = typer.Option(5.0, help="Regression threshold in percent: flagged when the whole 95% interval is beyond it."),
    min_effect: float = typer.Option(2.0, help="Smallest change in percent that earns a faster/slower verdict."),
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
    as_json: bool = typer.Option(False, "--json"),
    fmt: str = FormatOpt,
) -> None:
    """B/A per case with 95% intervals and verdicts; exits 1 when a regression is flagged."""
    from harness.analysis.tables import tidy_frame
    from harness.analysis.compare import CompareSettings, compare_frames

    _check_format(fmt)
    try:
        store = _store(results, store_url)
        a, b = store.run(run_a)["id"], store.run(run_b)["id"]
        rows = compare_frames(tidy_frame(store, [a]), tidy_frame(store, [b]), CompareSettings(threshold / 100, min_effect / 100))
    except EdgebenchError as exc:
        raise _fail(exc)
    if as_json:
        out.print_json(json.dumps([r.__dict__ for r in rows]))
    else:
        views.show(out, views.compare_grid(a, b, rows, threshold), fmt)
        views.show_lines(out, [f"differs {note}" for note in sorted({d for r in rows for d in r.differs})], fmt, "yellow")
        views.show_lines(out, [f"{case}: {note}" for case, note in dict.fromkeys((r.case, n) for r in rows for n in r.contended)], fmt, "yellow")
        for side, run_id in (("A", a), ("B", b)):
            views.show_quality(out, store, run_id, fmt, f"{side}: ")
        views.show_roofline(out, store, [a, b], fmt)
    if any(r.regression for r in rows):
        raise typer.Exit(EXIT_FAILED)


BrokerOpt = typer.Option(None, "--broker", help="Celery broker URL, e.g. redis://:PASSWORD@lab-host:6379/0 (rediss:// for TLS) "
                         "(default: $EDGEBENCH_BROKER, else an embedded one in the results folder: one host, no server).")
DevicesOpt = typer.Option(None, "--devices", help="Only these devices of the inventory: NAME[,NAME...].")


def _names(devices: Optional[str]) -> tuple[str, ...]:
    return tuple(n.strip() for n in devices.split(",") if n.strip()) if devices else ()


@app.command("worker")
def worker_cmd(
    inventory: Path = typer.Option(..., "--inventory", help="This host's inventory: the devices plugged into or reachable from it."),
    devices: Optional[str] = DevicesOpt,
    broker: Optional[str] = BrokerOpt,
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
) -> None:
    """Serve this host's devices to the lab: one queue per device, one job at a time on each."""
    import signal
    import threading

    from harness.credentials import mask_url
    from harness.lab.app import broker_url
    from harness.lab.worker import serve
    from harness.paths import default_results_dir

    root = results or default_results_dir()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        url = broker_url(root, broker)
        console.print(escape(f"worker on broker {mask_url(url)}"))
        serve(inventory, _names(devices), url, root, store_url, lambda m: console.print(escape(m)), stop)
    except EdgebenchError as exc:
        raise _fail(exc, EXIT_INTERRUPTED if _is_driver_error(exc) else EXIT_BAD_INPUT)


@app.command("beat")
def beat_cmd(broker: Optional[str] = BrokerOpt, results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt) -> None:
    """Fire the stored lab schedules (`lab schedule add`) when they are due; run one per lab."""
    from harness.lab.app import broker_url
    from harness.lab.schedule import run_beat
    from harness.paths import default_results_dir

    root = results or default_results_dir()
    try:
        run_beat(broker_url(root, broker), root, store_url)
    except EdgebenchError as exc:
        raise _fail(exc)


def _lab_request(inventory: Path, suite: str, model: list[str], set_: list[str], repeat: Optional[int], tags: list[str],
                 devices: Optional[str], retries: int, backoff: float, quantize: Optional[str] = None, allow_requantize: bool = False,
                 corpus: Optional[str] = None, reference: Optional[str] = None):
    """The lab's request; with --quantize, each model's variants are made here first and join
    the models, each job knowing its sweep, variant and reference (the base). A file is named
    absolutely: a job is run in another folder, often on another host."""
    from harness.lab.jobs import LabRequest
    from harness.lab.worker import select_devices
    from harness.plan.suites import parse_setting_overrides
    from harness.run.session import Callbacks, RunOptions
    from harness.run.sweep import sweep_options
    from harness.runtimes.models import CATALOG
    from harness.runtimes.quantize import parse_types

    def absolute(spec: Optional[str]) -> Optional[str]:
        return spec if spec is None or spec in CATALOG or spec == "self" else str(Path(spec).expanduser().resolve())

    chosen = tuple(d.name for d in select_devices(inventory, _names(devices), tuple(tags)))
    models, sweeps = [absolute(m) for m in model or ["default"]], {}
    if quantize:
        types, callbacks = parse_types(quantize), Callbacks(status=lambda m: console.print(f"[dim]{escape(m)}[/]"))
        runs = [o for m in models for o in sweep_options(RunOptions(model=m), types, allow_requantize=allow_requantize, callbacks=callbacks)]
        models = [o.model for o in runs]
        sweeps = {o.model: {"sweep": o.sweep, "variant": o.variant, "reference": o.reference} for o in runs}
    return LabRequest(chosen, suite, tuple(models), parse_setting_overrides(set_), repeat, retries, backoff, sweeps, absolute(corpus),
                      absolute(reference))


LabCorpusOpt = typer.Option(None, "--corpus", help="Text the quality cases score (default: CPython's pydoc_data.topics); "
                            "sent to the workers through the store.")
LabReferenceOpt = typer.Option(None, "--reference", help="Reference for the quality cases: a GGUF (under the workers' model folders, "
                               "$EDGEBENCH_MODEL_DIRS) or a llama-perplexity logits file, sent through the store (default: the model itself).")


def _submit(store, broker: str, inventory: Path, request, lab_id: Optional[str] = None) -> str:
    from harness.lab.app import make_app
    from harness.lab.submit import submit

    lab_id, jobs = submit(store, make_app(broker), inventory, request, lab_id)
    console.print(escape(f"lab {lab_id}: {len(jobs)} job(s) on {len(request.devices)} device(s), suite {request.suite}"))
    return lab_id


def _job_line(job) -> None:
    where = f" on {job.host}" if job.status == "running" else ""
    console.print(escape(f"{job.id} {job.device} {job.options.model}: {job.status}{where}" + (f" ({job.error})" if job.error else "")))


def _lab_table(store, lab_id: str) -> bool:
    """Print the lab's jobs; True when every one is done."""
    from harness.lab.jobs import jobs_of
    from harness.lab.submit import where, workers_alive

    jobs, alive = jobs_of(store, lab_id), workers_alive(store)
    table = Table(title=escape(f"lab {lab_id}"))
    for column in ("job", "device", "model", "settings", "status", "where", "attempts", "run", "reason"):
        table.add_column(column)
    colours = {"done": "green", "running": "cyan", "queued": "white", "cancelled": "yellow"}
    for j in jobs:
        settings = ",".join(f"{k}={v[0]}" for k, v in j.options.settings.items()) or "—"
        colour = colours.get(j.status, "red")
        table.add_row(escape(j.id), escape(j.device), escape(j.options.model), escape(settings), f"[{colour}]{j.status}[/]",
                      escape(where(j, alive)), str(j.attempts), j.run_id, escape(j.error or ""))
    out.print(table)
    counts = {s: sum(j.status == s for j in jobs) for s in dict.fromkeys(j.status for j in jobs)}
    out.print(escape(", ".join(f"{n} {s}" for s, n in counts.items())), highlight=False)
    return all(j.status == "done" for j in jobs)


def _lab_report(store, lab_id: str, output: Optional[Path] = None) -> None:
    from harness.lab.jobs import jobs_of
    from harness.lab.submit import lab_run_ids
    from harness.report.html import render_report

    run_ids = lab_run_ids(jobs_of(store, lab_id), store)
    if run_ids:
        path = render_report(store, run_ids, output or store.root / "lab" / lab_id / "report.html", lab=True)
        console.print(f"report: {path}")


@lab_app.command("submit")
def lab_submit(
    inventory: Path = typer.Option(..., "--inventory", help="Inventory TOML listing the lab's devices."),
    suite: str = typer.Option("quick", help="Built-in suite name or suite TOML path (its text goes with each job)."),
    model: list[str] = typer.Option([], "--model", help="Model per job (repeatable: one job per model and device; default: 'default')."),
    set_: list[str] = typer.Option([], "--set", help="KEY=V[,V...]: a list sweeps, one job per value (several --set: their product)."),
    repeat: Optional[int] = typer.Option(None, "--repeat", "-r", min=1, help="Process repetitions per case (overrides the suite)."),
    tags: list[str] = typer.Option([], "--tags", help="Only devices with one of these tags (repeatable)."),
    devices: Optional[str] = DevicesOpt,
    retries: int = typer.Option(2, min=0, help="Retries (exponential backoff) when a device is unreachable."),
    backoff: float = typer.Option(5.0, min=0, help="Seconds before the first retry (doubling after)."),
    broker: Optional[str] = BrokerOpt,
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
    quantize: Optional[str] = QuantizeOpt,
    allow_requantize: bool = AllowRequantizeOpt,
    corpus: Optional[str] = LabCorpusOpt,
    reference: Optional[str] = LabReferenceOpt,
) -> None:
    """Queue devices x models x settings as jobs on the devices' queues; print the lab id."""
    from harness.lab.app import broker_url

    try:
        store = _store(results, store_url)
        request = _lab_request(inventory, suite, model, set_, repeat, tags, devices, retries, backoff, quantize, allow_requantize,
                               corpus, reference)
        lab_id = _submit(store, broker_url(store.root, broker), inventory, request)
    except EdgebenchError as exc:
        raise _fail(exc)
    out.print(lab_id, highlight=False)


@lab_app.command("run")
def lab_run(
    inventory: Path = typer.Option(..., "--inventory", help="Inventory TOML listing the lab's devices."),
    suite: str = typer.Option("quick", help="Built-in suite name or suite TOML path."),
    model: list[str] = typer.Option([], "--model", help="Model per job (repeatable)."),
    set_: list[str] = typer.Option([], "--set", help="KEY=V[,V...]: a list sweeps, one job per value."),
    repeat: Optional[int] = typer.Option(None, "--repeat", "-r", min=1),
    tags: list[str] = typer.Option([], "--tags", help="Only devices with one of these tags (repeatable)."),
    devices: Optional[str] = DevicesOpt,
    retries: int = typer.Option(2, min=0, help="Retries (exponential backoff) when a device is unreachable."),
    backoff: float = typer.Option(5.0, min=0, help="Seconds before the first retry (doubling after)."),
    broker: Optional[str] = BrokerOpt,
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
    quantize: Optional[str] = QuantizeOpt,
    allow_requantize: bool = AllowRequantizeOpt,
    corpus: Optional[str] = LabCorpusOpt,
    reference: Optional[str] = LabReferenceOpt,
    timeout: Optional[float] = typer.Option(None, min=1, help="Stop waiting after this many seconds, naming the jobs still open (exit 3)."),
) -> None:
    """Submit a lab and wait for it; with the embedded broker, serve its devices from here too.
    Exit 0 only if every job is done. Ctrl-C or SIGTERM stops the waiting, not the jobs; so do
    --timeout and the end of the worker this command started (the lab could not finish then)."""
    import signal

    from harness.lab.app import broker_url, is_embedded
    from harness.lab.jobs import new_lab_id
    from harness.lab.submit import WaitEnded, wait
    from harness.lab.worker import start_embedded

    def stop_waiting(*_) -> None:
        raise KeyboardInterrupt

    deferred: list[int] = []

    def defer(signum, _frame) -> None:
        deferred.append(signum)

    signal.signal(signal.SIGTERM, stop_waiting)
    lab_id, worker = None, None
    try:
        store = _store(results, store_url)
        url = broker_url(store.root, broker)
        request = _lab_request(inventory, suite, model, set_, repeat, tags, devices, retries, backoff, quantize, allow_requantize,
                               corpus, reference)
        if is_embedded(url):
            worker = start_embedded(inventory, request.devices, store.root, store_url, url)
        # A signal while submitting waits until every job is on its queue: none is left behind half-submitted.
        signal.signal(signal.SIGTERM, defer)
        signal.signal(signal.SIGINT, defer)
        lab_id = new_lab_id()
        _submit(store, url, inventory, request, lab_id)
        signal.signal(signal.SIGTERM, stop_waiting)
        signal.signal(signal.SIGINT, stop_waiting)
        if deferred:
            raise KeyboardInterrupt
        wait(store, lab_id, _job_line, timeout_s=timeout, gone=lambda: _exited(worker), on_note=_note)
    except WaitEnded as exc:
        alive = f"; the worker this command started goes on (pid {worker.pid}; stop it with kill {worker.pid})" if worker and worker.poll() is None else ""
        console.print(f"[red]{escape(str(exc) + alive)}[/]")
        raise typer.Exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        if lab_id is None:  # nothing submitted: nothing for a worker of ours to do
            if worker:
                worker.terminate()
            raise typer.Exit(EXIT_INTERRUPTED)
        by = f"the worker this command started (pid {worker.pid}; stop it with kill {worker.pid})" if worker else "the lab's workers"
        console.print(escape(f"stopped waiting; lab {lab_id} goes on on {by}. Watch it: edgebench lab status {lab_id}, "
                             f"or edgebench lab wait {lab_id}"))
        raise typer.Exit(EXIT_INTERRUPTED)
    except EdgebenchError as exc:
        if worker:
            worker.terminate()
        raise _fail(exc)
    if worker:
        worker.terminate()
        worker.wait()
    all_done = _lab_table(store, lab_id)
    _lab_report(store, lab_id)
    if not all_done:
        raise typer.Exit(EXIT_FAILED)


def _exited(worker) -> Optional[str]:
    """Why `lab run`'s own worker can run nothing more (None while it runs, or when there is none)."""
    if worker is None or worker.poll() is None:
        return None
    return f"the worker this command started exited ({worker.returncode}), so its jobs cannot finish"


def _note(message: str) -> None:
    console.print(f"[yellow]{escape(message)}[/]")


@lab_app.command("status")
def lab_status(lab: Optional[str] = typer.Argument(None, help="Lab id (default: the latest)."),
               results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt) -> None:
    """The lab's jobs: queued, running where, done, failed with the reason."""
    from harness.lab.jobs import resolve_lab

    try:
        store = _store(results, store_url)
        _lab_table(store, resolve_lab(store, lab))
    except EdgebenchError as exc:
        raise _fail(exc)


@lab_app.command("wait")
def lab_wait(lab: Optional[str] = typer.Argument(None, help="Lab id (default: the latest)."),
             timeout: Optional[float] = typer.Option(None, min=1, help="Give up after this many seconds (exit 3)."),
             results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt) -> None:
    """Wait until every job of the lab has ended; exit 0 only if all are done."""
    from harness.lab.jobs import resolve_lab
    from harness.lab.submit import WaitEnded, wait

    try:
        store = _store(results, store_url)
    except EdgebenchError as exc:
        raise _fail(exc, EXIT_INTERRUPTED)
    try:
        lab_id = resolve_lab(store, lab)
    except EdgebenchError as exc:  # no such lab: bad input, there is nothing to wait for
        raise _fail(exc)
    try:
        wait(store, lab_id, _job_line, timeout_s=timeout, on_note=_note)
    except WaitEnded as exc:  # the jobs named go on: exit 3, as an interrupted wait
        raise _fail(exc, EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED)
    except EdgebenchError as exc:
        raise _fail(exc, EXIT_INTERRUPTED)
    if not _lab_table(store, lab_id):
        raise typer.Exit(EXIT_FAILED)


@lab_app.command("cancel")
def lab_cancel(lab: Optional[str] = typer.Argument(None, help="Lab id (default: the latest)."),
               results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt) -> None:
    """Cancel a lab: queued jobs at once; running ones have their benchmark killed by their worker."""
    from harness.lab.jobs import request_cancel, resolve_lab

    try:
        store = _store(results, store_url)
        lab_id = resolve_lab(store, lab)
        now, flagged = request_cancel(store, lab_id)
    except EdgebenchError as exc:
        raise _fail(exc)
    console.print(escape(f"lab {lab_id}: {now} queued job(s) cancelled, {flagged} running job(s) being stopped by their workers"))


@lab_app.command("report")
def lab_report(lab: Optional[str] = typer.Argument(None, help="Lab id (default: the latest)."),
               output: Optional[Path] = typer.Option(None, "-o", "--output", help="HTML file (default: <results>/lab/<lab>/report.html)."),
               results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt) -> None:
    """The lab's HTML report: each device's regressions against its previous run first."""
    from harness.lab.jobs import resolve_lab

    try:
        store = _store(results, store_url)
        _lab_report(store, resolve_lab(store, lab), output)
    except EdgebenchError as exc:
        raise _fail(exc)


schedule_app = typer.Typer(no_args_is_help=True, help="Labs fired on a schedule by `edgebench beat` (or cron).")
lab_app.add_typer(schedule_app, name="schedule")


@schedule_app.command("add")
def schedule_add(
    inventory: Path = typer.Option(..., "--inventory"),
    suite: str = typer.Option("quick"),
    cron: Optional[str] = typer.Option(None, "--cron", help="Five crontab fields in UTC, e.g. '0 2 * * *' (02:00 every day)."),
    every: Optional[float] = typer.Option(None, "--every", min=1, help="Or: every this many seconds."),
    model: list[str] = typer.Option([], "--model", help="Model per job (repeatable)."),
    set_: list[str] = typer.Option([], "--set", help="KEY=V[,V...]: a list sweeps, one job per value."),
    repeat: Optional[int] = typer.Option(None, "--repeat", "-r", min=1),
    tags: list[str] = typer.Option([], "--tags"),
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

    try:
        request = _lab_request(inventory, suite, model, set_, repeat, tags, devices, 2, 5.0)
        if print_only:
            if not cron:
                raise EdgebenchError("--print needs --cron (cron has no --every)")
            out.print(cron_line(cron, inventory, request, results or default_results_dir(), store_url, broker), highlight=False, markup=False,
                      soft_wrap=True)
            return
        entry = add_schedule(_store(results, store_url), inventory, request, cron, every)
    except EdgebenchError as exc:
        raise _fail(exc)
    console.print(escape(f"schedule {entry.id}: {entry.when()}; `edgebench beat` fires it (restart a running beat to pick it up)"))


@schedule_app.command("list")
def schedule_list(results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt) -> None:
    """Stored lab schedules."""
    from harness.lab.schedule import schedules

    try:
        stored = schedules(_store(results, store_url))
    except EdgebenchError as exc:
        raise _fail(exc)
    table = Table()
    for column in ("schedule", "when", "devices", "suite", "models", "last fired"):
        table.add_column(column)
    for s in stored:
        table.add_row(*(escape(c) for c in (s.id, s.when(), ", ".join(s.request.devices), s.request.suite, ", ".join(s.request.models), s.last_fired_at or "never")))
    out.print(table)


@schedule_app.command("remove")
def schedule_remove(schedule_id: str = typer.Argument(...), results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt) -> None:
    """Delete a stored schedule."""
    from harness.lab.schedule import remove_schedule

    try:
        remove_schedule(_store(results, store_url), schedule_id)
    except EdgebenchError as exc:
        raise _fail(exc)


@runtime_app.command("build")
def runtime_build(
    target: str = typer.Option("host", help="host, host-cuda, linux-aarch64, android-ndk ..."),
    build_flag: list[str] = typer.Option([], "--build-flag", help="Extra cmake -D flag (repeatable)."),
    force: bool = typer.Option(False, help="Rebuild even when the cache has this key."),
    jobs: Optional[int] = typer.Option(None, "-j", help="Parallel compile jobs (default: CPU count)."),
    ndk: Optional[Path] = typer.Option(None, "--ndk", help="Android NDK for --target android-ndk (default: $ANDROID_NDK_HOME)."),
) -> None:
    """Build the runtime (llama-bench, llama-perplexity; llama-quantize on the host) from the llama.cpp
    source pinned by llama-cpp-python (cached by content)."""
    from harness.runtimes import build_runtime
    from harness.runtimes.targets import effective_target

    build_flag = build_flag + ([f"-DANDROID_NDK={ndk}"] if ndk and target == "android-ndk" else [])
    target, fallback_note = effective_target(target, build_flag)
    if fallback_note:
        console.print(f"[yellow]{escape(fallback_note)}[/]")
    progress, update = _build_progress()
    try:
        with progress:
            runtime, cached = build_runtime(target, extra_flags=build_flag, force=force, jobs=jobs, on_progress=update)
    except EdgebenchError as exc:
        raise _fail(exc)
    m = runtime.manifest
    verdict = "already built (cache hit), nothing to do" if cached else f"built in {m.build_seconds:.0f} s"
    programs = "\n  ".join(str(runtime.root / rel) for rel in sorted(m.files))
    out.print(f"{target}: {verdict}\n  key {m.key}\n  llama.cpp {m.llama_cpp_commit} (llama-cpp-python {m.llama_cpp_python_version})\n  {programs}")


@results_app.command("list")
def results_list(results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt, fmt: str = FormatOpt) -> None:
    """Stored runs, newest first."""
    _check_format(fmt)
    try:
        store = _store(results, store_url)
        rows = tuple((row["id"], row["created_at"], row["status"], row["device"], row["suite_name"],
                      store.model_info(row["model_sha256"]).get("filename", "?")) for row in store.runs())
    except EdgebenchError as exc:
        raise _fail(exc)
    grid = views.Grid("", ("run", "created", "status", "device", "suite", "model"), tuple(tuple(map(str, r)) for r in rows),
                      text=frozenset({"status", "device", "suite", "model"}))
    views.show(out, grid, fmt)


@results_app.command("show")
def results_show(run_id: str = typer.Argument("latest"), results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt, as_json: bool = typer.Option(False, "--json"),
                 fmt: str = FormatOpt) -> None:
    """The summary table of one run (statistics recomputed from its raw values)."""
    _check_format(fmt)
    try:
        _show_runs(_store(results, store_url), [run_id], as_json, fmt)
    except EdgebenchError as exc:
        raise _fail(exc)


@results_app.command("export")
def results_export(
    run_id: str = typer.Argument("latest"),
    fmt: str = typer.Option("csv", "--format", help="csv, json or parquet."),
    output: Optional[Path] = typer.Option(None, "-o", help="File to write (default: stdout)."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", help="Write the run's stored files (raw output, telemetry, facts, "
                                             "manifests) under this folder instead; the table only with -o."),
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
) -> None:
    """Export the per-process tidy table of a run, or its stored files (--artifacts)."""
    from harness.analysis.tables import tidy_frame

    try:
        store = _store(results, store_url)
        run_id = store.run(run_id)["id"]
        if artifacts:
            written = store.export_artifacts(run_id, artifacts)
            console.print(escape(f"{run_id}: {len(written)} file(s) written under {artifacts}"))
            if output is None:
                return
        frame = tidy_frame(store, [run_id])
        if fmt == "parquet":
            if output is None:
                raise EdgebenchError("--format parquet needs -o FILE (it is binary)")
            frame.assign(samples=frame["samples"].map(json.dumps)).to_parquet(output, index=False)
            return
        writers = {"csv": lambda f: f.to_csv(index=False), "json": lambda f: f.to_json(orient="records")}
        if fmt not in writers:
            raise EdgebenchError(f"unknown format {fmt!r}; valid: csv, json, parquet")
        text = writers[fmt](frame)
    except EdgebenchError as exc:
        raise _fail(exc)
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


@results_app.command("push")
def results_push(
    runs: list[str] = typer.Argument(None, help="Run ids or prefixes (default: every run of the local store)."),
    to: str = typer.Option(..., "--to", help="The store to copy into, e.g. postgresql://user@lab-host/edgebench (password: "
                           "in the URL, PGPASSFILE or PGPASSWORD; never printed)."),
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
) -> None:
    """Copy runs with their artifacts into another store; pushing again copies nothing new."""
    from harness.paths import default_results_dir
    from harness.store.push import push
    from harness.store.db import Store

    try:
        source = _store(results, store_url)
        target = Store(results or default_results_dir(), to)
        ids = [source.run(r)["id"] for r in runs] if runs else [r["id"] for r in reversed(source.runs())]
        pushed = push(source, target, ids)
    except EdgebenchError as exc:
        raise _fail(exc)
    out.print(escape(f"pushed {len(ids)} run(s) to {target.where}: {pushed.runs} new or updated, "
                     f"{pushed.executions} process run(s), {pushed.artifacts} file(s) copied"), highlight=False)


@devices_app.command("list")
def devices_list(inventory: Optional[Path] = InventoryOpt) -> None:
    """Devices that can be benchmarked: `local` and those in the inventory."""
    from harness.plan.inventory import LOCAL, default_inventory, load_inventory

    path = inventory or default_inventory()
    try:
        devices = {"local": LOCAL, **(load_inventory(path) if path else {})}
    except EdgebenchError as exc:
        raise _fail(exc)
    table = Table(caption=escape(f"inventory: {path or 'none'}"))
    for column in ("device", "driver", "target", "tags", "from"):
        table.add_column(column)
    for spec in devices.values():
        table.add_row(*(escape(str(c)) for c in (spec.name, spec.driver, spec.target, ", ".join(spec.tags), spec.source)))
    out.print(table)


@devices_app.command("facts")
def devices_facts(name: str = typer.Argument("local"), inventory: Optional[Path] = InventoryOpt) -> None:
    """What edgebench records about a device (identity, OS, memory, power source)."""
    from dataclasses import asdict

    from harness.plan.inventory import resolve_device

    try:
        facts = asdict(resolve_device(name, inventory).open().facts())
    except EdgebenchError as exc:
        raise _fail(exc, EXIT_INTERRUPTED if _is_driver_error(exc) else EXIT_BAD_INPUT)
    if name == "local":
        from harness.telemetry.host import describe_host_sensors

        facts["sensors"] = describe_host_sensors()
    out.print_json(json.dumps(facts, default=str))


@devices_app.command("check")
def devices_check(names: list[str] = typer.Argument(None, help="Devices (default: every device of the inventory, or local)."),
                  inventory: Optional[Path] = InventoryOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """Each device's state now: reachable, identity, OS, free storage, power source, heat,
    governors and caps, and what is wrong (or which permission a missing metric needs)."""
    from concurrent.futures import ThreadPoolExecutor

    from harness.run.devicecheck import check_device
    from harness.plan.inventory import LOCAL, default_inventory, load_inventory, resolve_device

    try:
        path = inventory or default_inventory()
        specs = [resolve_device(n, path) for n in names] if names else list((load_inventory(path) if path else {"local": LOCAL}).values())
    except EdgebenchError as exc:
        raise _fail(exc)
    with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
        reports = list(pool.map(check_device, specs))
    if as_json:
        out.print_json(json.dumps([r.__dict__ for r in reports], default=str))
    else:
        table = Table()
        for column in ("device", "reachable", "identity", "OS", "free MB", "power", "max °C", "problems"):
            table.add_column(column)
        for r in reports:
            cells = (r.identity, r.os, r.free_mb, r.power_source, r.max_temp_c, "; ".join(r.problems))
            table.add_row(escape(r.device), "yes" if r.reachable else "[red]no[/]", *(escape("—" if c is None else str(c)) for c in cells))
        out.print(table)
        for r in reports:
            for line in r.details:
                out.print(escape(f"{r.device}: {line}"), highlight=False)
    if any(not r.reachable for r in reports):
        raise typer.Exit(EXIT_INTERRUPTED)


def _is_driver_error(exc: Exception) -> bool:
    """A device or the results store went away mid-command (exit 3), rather than bad input (2)."""
    from harness.drivers.base import DriverError

    return isinstance(exc, (DriverError, StoreGone))


@models_app.command("info")
def model_info(spec: str = typer.Argument("default", help="'default', a catalog name, or a GGUF path.")) -> None:
    """GGUF metadata and sha256 of a model (fetching the default one if needed)."""
    from harness.runtimes.models import inspect_model, resolve_model

    try:
        info = inspect_model(resolve_model(spec))
    except EdgebenchError as exc:
        raise _fail(exc)
    out.print_json(json.dumps(info.to_json()))
