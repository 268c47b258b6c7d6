"""`edgebench lab submit | run | status | wait | cancel | report` and `edgebench worker`: a lab's
jobs, queued on the devices' workers, followed from the store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from harness.cli import views
from harness.cli.common import (EXIT_FAILED, AllowRequantizeOpt, BrokerOpt, DevicesOpt, FormatOpt, QuantizeOpt, ResultsOpt, RuntimeOpt, Stopped, StoreOpt,
                                console, names, note, open_store, out, say)
from harness.cli.results import write_report
from harness.errors import StoreError

if TYPE_CHECKING:
    import subprocess

    from harness.lab.jobs import Job, LabRequest
    from harness.store.db import Store

app = typer.Typer(no_args_is_help=True, help="Lab runs over an inventory: all devices at once, scheduled.")

InventoryReq = typer.Option(..., "--inventory", help="Inventory TOML listing the lab's devices.")
SuiteOpt = typer.Option("quick", help="Built-in suite name or suite TOML path (its text goes with each job).")
ModelsOpt = typer.Option([], "--model", help="Model per job (repeatable: one job per model and device; default: 'default').")
SetOpt = typer.Option([], "--set", help="KEY=V[,V...]: a list sweeps, one job per value (several --set: their product).")
RepeatOpt = typer.Option(None, "--repeat", "-r", min=1, help="Process repetitions per case (overrides the suite).")
TagsOpt = typer.Option([], "--tags", help="Only devices with one of these tags (repeatable).")
RetriesOpt = typer.Option(2, min=0, help="Retries (exponential backoff) when a device is unreachable.")
BackoffOpt = typer.Option(5.0, min=0, help="Seconds before the first retry (doubling after).")
CorpusOpt = typer.Option(None, "--corpus", help="Text the quality cases score (default: CPython's pydoc_data.topics); "
                         "sent to the workers through the store.")
ReferenceOpt = typer.Option(None, "--reference", help="Reference for the quality cases: a GGUF (under the workers' model folders, "
                            "$EDGEBENCH_MODEL_DIRS) or a llama-perplexity logits file, sent through the store (default: the model itself).")
LabOpt = typer.Argument(None, help="Lab id (default: the latest).")


def request(inventory: Path, suite: str, model: list[str], set_: list[str], repeat: Optional[int], tags: list[str], devices: Optional[str],
            retries: int = 2, backoff: float = 5.0, quantize: Optional[str] = None, allow_requantize: bool = False,
            corpus: Optional[str] = None, reference: Optional[str] = None, runtime: Sequence[str] = ()) -> LabRequest:
    """The lab's request from its options (a sweep's variants are made here, on this host)."""
    from harness.lab.submit import make_request
    from harness.plan.suites import parse_setting_overrides
    from harness.run.session import Callbacks
    from harness.runtimes.quantize import parse_types

    return make_request(inventory, suite, model, parse_setting_overrides(set_), repeat, names=names(devices), tags=tuple(tags), retries=retries,
                        backoff_s=backoff, quantize=parse_types(quantize) if quantize else (), allow_requantize=allow_requantize,
                        corpus=corpus, reference=reference, runtimes=runtime, callbacks=Callbacks(status=say, note=note))


def _submit(store: Store, broker: str, inventory: Path, lab_request: LabRequest, lab_id: Optional[str] = None) -> str:
    from harness.lab.app import make_app
    from harness.lab.submit import submit

    lab_id, jobs = submit(store, make_app(broker), inventory, lab_request, lab_id)
    console.print(f"lab {lab_id}: {len(jobs)} job(s) on {len(lab_request.devices)} device(s), suite {lab_request.suite}", markup=False)
    return lab_id


def _job_line(job: Job) -> None:
    where = f" on {job.host}" if job.status == "running" else ""
    console.print(f"{job.id} {job.device} {job.options.model}: {job.status}{where}" + (f" ({job.error})" if job.error else ""), markup=False)


def _show_lab(store: Store, lab_id: str, fmt: str) -> bool:
    """Print the lab's jobs; True when every one is done."""
    from harness.lab.jobs import jobs_of
    from harness.lab.submit import where, workers_alive

    jobs, alive = jobs_of(store, lab_id), workers_alive(store)
    rows = tuple((j.id, j.device, j.options.model, ",".join(f"{k}={v[0]}" for k, v in j.options.settings.items()) or "—", j.status,
                  where(j, alive), str(j.attempts), j.run_id, j.error or "") for j in jobs)
    styles = tuple({"done": "", "queued": "", "running": "cyan", "cancelled": "yellow"}.get(j.status, "red") for j in jobs)
    counts = {s: sum(j.status == s for j in jobs) for s in dict.fromkeys(j.status for j in jobs)}
    views.show(out, views.Grid(f"lab {lab_id}", ("job", "device", "model", "settings", "status", "where", "attempts", "run", "reason"), rows,
                               text=frozenset({"device", "model", "settings", "status", "where", "run", "reason"}), styles=styles,
                               caption=(", ".join(f"{n} {s}" for s, n in counts.items()),)), fmt)
    return all(j.status == "done" for j in jobs)


def _lab_report(store: Store, lab_id: str, output: Optional[Path] = None) -> None:
    from harness.lab.jobs import jobs_of
    from harness.lab.submit import lab_run_ids

    run_ids = lab_run_ids(jobs_of(store, lab_id), store)
    if run_ids:
        write_report(store, run_ids, output or store.root / "lab" / lab_id / "report.html", lab=True)


@app.command("submit")
def lab_submit(inventory: Path = InventoryReq, suite: str = SuiteOpt, model: list[str] = ModelsOpt, set_: list[str] = SetOpt,
               repeat: Optional[int] = RepeatOpt, tags: list[str] = TagsOpt, devices: Optional[str] = DevicesOpt, retries: int = RetriesOpt,
               backoff: float = BackoffOpt, broker: Optional[str] = BrokerOpt, results: Optional[Path] = ResultsOpt,
               store_url: Optional[str] = StoreOpt, quantize: Optional[str] = QuantizeOpt, allow_requantize: bool = AllowRequantizeOpt,
               corpus: Optional[str] = CorpusOpt, reference: Optional[str] = ReferenceOpt, runtime: list[str] = RuntimeOpt) -> None:
    """Queue devices x models x settings as jobs on the devices' queues; print the lab id."""
    from harness.lab.app import broker_url

    store = open_store(results, store_url)
    lab_request = request(inventory, suite, model, set_, repeat, tags, devices, retries, backoff, quantize, allow_requantize, corpus, reference, runtime)
    out.print(_submit(store, broker_url(store.root, broker), inventory, lab_request), highlight=False)


@app.command("run")
def lab_run(inventory: Path = InventoryReq, suite: str = SuiteOpt, model: list[str] = ModelsOpt, set_: list[str] = SetOpt,
            repeat: Optional[int] = RepeatOpt, tags: list[str] = TagsOpt, devices: Optional[str] = DevicesOpt, retries: int = RetriesOpt,
            backoff: float = BackoffOpt, broker: Optional[str] = BrokerOpt, results: Optional[Path] = ResultsOpt,
            store_url: Optional[str] = StoreOpt, quantize: Optional[str] = QuantizeOpt, allow_requantize: bool = AllowRequantizeOpt,
            corpus: Optional[str] = CorpusOpt, reference: Optional[str] = ReferenceOpt, runtime: list[str] = RuntimeOpt,
            timeout: Optional[float] = typer.Option(None, min=1, help="Stop waiting after this many seconds, naming the jobs still open (exit 3)."),
            fmt: str = FormatOpt) -> None:
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
    signal.signal(signal.SIGTERM, stop_waiting)
    lab_id, worker = None, None
    try:
        store = open_store(results, store_url)
        url = broker_url(store.root, broker)
        lab_request = request(inventory, suite, model, set_, repeat, tags, devices, retries, backoff, quantize, allow_requantize, corpus, reference, runtime)
        if is_embedded(url):
            worker = start_embedded(inventory, lab_request.devices, store.root, store_url, url)
        # A signal while submitting waits until every job is on its queue: none is left behind half-submitted.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, _frame: deferred.append(signum))
        lab_id = new_lab_id()
        _submit(store, url, inventory, lab_request, lab_id)
        signal.signal(signal.SIGTERM, stop_waiting)
        signal.signal(signal.SIGINT, stop_waiting)
        if deferred:
            raise KeyboardInterrupt
        wait(store, lab_id, _job_line, timeout_s=timeout, gone=lambda: _exited(worker), on_note=note)
    except WaitEnded as exc:
        alive = f"; the worker this command started goes on (pid {worker.pid}; stop it with kill {worker.pid})" if worker and worker.poll() is None else ""
        raise WaitEnded(f"{exc}{alive}") from None
    except KeyboardInterrupt:
        if lab_id is None:  # nothing submitted: nothing for a worker of ours to do
            if worker:
                worker.terminate()
            raise
        by = f"the worker this command started (pid {worker.pid}; stop it with kill {worker.pid})" if worker else "the lab's workers"
        raise Stopped(f"stopped waiting; lab {lab_id} goes on on {by}. Watch it: edgebench lab status {lab_id}, "
                      f"or edgebench lab wait {lab_id}") from None
    except Exception:
        if worker:
            worker.terminate()
        raise
    if worker:
        worker.terminate()
        worker.wait()
    all_done = _show_lab(store, lab_id, fmt)
    _lab_report(store, lab_id)
    if not all_done:
        raise typer.Exit(EXIT_FAILED)


def _exited(worker: subprocess.Popen | None) -> Optional[str]:
    """Why `lab run`'s own worker can run nothing more (None while it runs, or when there is none)."""
    if worker is None or worker.poll() is None:
        return None
    return f"the worker this command started exited ({worker.returncode}), so its jobs cannot finish"


@app.command("status")
def lab_status(lab: Optional[str] = LabOpt, results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt, fmt: str = FormatOpt) -> None:
    """The lab's jobs: queued, running where, done, failed with the reason."""
    from harness.lab.jobs import resolve_lab

    store = open_store(results, store_url)
    _show_lab(store, resolve_lab(store, lab), fmt)


@app.command("wait")
def lab_wait(lab: Optional[str] = LabOpt, timeout: Optional[float] = typer.Option(None, min=1, help="Give up after this many seconds (exit 3)."),
             results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt, fmt: str = FormatOpt) -> None:
    """Wait until every job of the lab has ended; exit 0 only if all are done."""
    from harness.lab.jobs import resolve_lab
    from harness.lab.submit import wait

    try:
        store = open_store(results, store_url)
    except StoreError as exc:  # the lab's jobs go on without this waiter: an interrupted wait, not bad input
        raise Stopped(str(exc)) from None
    lab_id = resolve_lab(store, lab)  # no such lab: bad input, there is nothing to wait for
    wait(store, lab_id, _job_line, timeout_s=timeout, on_note=note)  # gave up (WaitEnded): the jobs named go on, exit 3
    if not _show_lab(store, lab_id, fmt):
        raise typer.Exit(EXIT_FAILED)


@app.command("cancel")
def lab_cancel(lab: Optional[str] = LabOpt, results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt) -> None:
    """Cancel a lab: queued jobs at once; running ones have their benchmark killed by their worker."""
    from harness.lab.jobs import request_cancel, resolve_lab

    store = open_store(results, store_url)
    lab_id = resolve_lab(store, lab)
    now, flagged = request_cancel(store, lab_id)
    console.print(f"lab {lab_id}: {now} queued job(s) cancelled, {flagged} running job(s) being stopped by their workers", markup=False)


@app.command("report")
def lab_report(lab: Optional[str] = LabOpt,
               output: Optional[Path] = typer.Option(None, "-o", "--output", help="HTML file (default: <results>/lab/<lab>/report.html)."),
               results: Optional[Path] = ResultsOpt, store_url: Optional[str] = StoreOpt) -> None:
    """The lab's HTML report: each device's regressions against its previous run first."""
    from harness.lab.jobs import resolve_lab

    store = open_store(results, store_url)
    _lab_report(store, resolve_lab(store, lab), output)


def worker(inventory: Path = typer.Option(..., "--inventory", help="This host's inventory: the devices plugged into or reachable from it."),
           devices: Optional[str] = DevicesOpt, broker: Optional[str] = BrokerOpt, results: Optional[Path] = ResultsOpt,
           store_url: Optional[str] = StoreOpt) -> None:
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
    url = broker_url(root, broker)
    console.print(f"worker on broker {mask_url(url)}", markup=False)
    serve(inventory, names(devices), url, root, store_url, lambda m: console.print(m, markup=False), stop)
