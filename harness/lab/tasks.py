"""The one lab task: run a job (one `edgebench run`) on the device this worker owns.

Idempotent by construction: the job's run id was chosen at submit, so a redelivered message
(a killed worker, a broker restart) resumes that run, keeping every finished process, and a
message for a job that already ended does nothing. A lost connection to the device marks the
job `unreachable` and retries it with exponential backoff, up to the job's retries.

A job row is checked before anything runs (`checked_options`): the row's own form (jobs.py),
then what it names against this worker: its device, its model folders, the store's blobs. A
store that stops answering is waited for with the job's message unacknowledged, and the job
then resumes its run: its status is never left unwritten by a worker that went on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
from celery.exceptions import Retry

from harness.drivers.base import DeviceUnreachable
from harness.errors import EdgebenchError, LeaseLost, StoreGone
from harness.lab import jobs
from harness.lab.jobs import JobRefused
from harness.paths import cache_dir
from harness.plan.suites import Suite, parse_suite
from harness.store import artifacts, leases
from harness.store.db import Store, now_iso
from harness.run import orchestrate
from harness.run.orchestrate import LeaseTerms, RunRequest
from harness.run.session import Callbacks, RunOptions
from harness.runtimes.models import CATALOG, inspect_model

log = logging.getLogger("edgebench.lab")
MODEL_DIRS_ENV = "EDGEBENCH_MODEL_DIRS"
STORE_RETRY_MAX_S = 30.0


@dataclass(frozen=True)
class WorkerContext:
    """What the worker process was started with: where results go, its own inventory, and the
    one device it serves (a job for any other is refused)."""

    results: Path
    store_url: str | None
    inventory: str
    device: str
    identity: str


_context: WorkerContext | None = None


def configure(context: WorkerContext) -> None:
    global _context
    _context = context


class JobCancelled(KeyboardInterrupt):
    """`lab cancel` reached a running job: the runner stores the run as interrupted, as on Ctrl-C."""


class _CancelWatch(threading.Thread):
    """Polls the job's cancel flag; when it is set, kills the benchmark running now (this
    process's children) and makes the next step boundary raise JobCancelled."""

    def __init__(self, store: Store, job_id: str) -> None:
        super().__init__(daemon=True, name="edgebench-cancel")
        self.store, self.job_id = store, job_id
        self.stop, self.cancelled = threading.Event(), threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                found = jobs.job(self.store, self.job_id)
            except Exception as exc:  # noqa: BLE001 - a store outage is waited out; the flag is read again after it
                if not jobs.store_outage(exc):
                    raise
                continue
            if found and found.cancel:
                self.cancelled.set()
                for child in psutil.Process().children(recursive=True):
                    try:
                        child.kill()
                    except psutil.Error:
                        pass
                return

    def check(self, *_: object) -> None:
        if self.cancelled.is_set():
            raise JobCancelled()


def model_dirs() -> list[Path]:
    """The folders a lab job's model may come from on this worker: `$EDGEBENCH_MODEL_DIRS`
    (separated by `os.pathsep`), else the cache's extracted catalog models and the variants
    `--quantize` makes. A catalog name needs none: it is fetched by its pinned sha256."""
    configured = os.environ.get(MODEL_DIRS_ENV)
    if configured:
        return [Path(p).expanduser().resolve() for p in configured.split(os.pathsep) if p.strip()]
    return [(cache_dir() / "models").resolve(), (cache_dir() / "variants").resolve()]


def run_job(task, job_id: str) -> str:
    """The task: run the job, waiting out store outages with its message unacknowledged."""
    if _context is None:
        raise RuntimeError("run_job runs only in an edgebench worker (tasks.configure was not called)")
    delay, told = 1.0, False
    while True:
        try:
            with Store(_context.results, _context.store_url) as store:
                status = _run_job(task, store, job_id)
            if told:
                log.warning("%s: the store answers again", job_id)
            return status
        except Retry:
            raise
        except Exception as exc:
            if not jobs.store_outage(exc):
                raise
            if not told:
                log.warning("%s: the store does not answer (%s); the job waits for it, unacknowledged, then resumes its run",
                            job_id, type(exc).__name__)
                told = True
            time.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX_S)


def _run_job(task, store: Store, job_id: str) -> str:
    found = jobs.job(store, job_id)
    if found is None:
        log.error("job %s is not in the store %s: dropped (is the worker on the submitter's --store?)", job_id, store.where)
        return "unknown"
    if found.final:
        log.info("job %s already %s: nothing to do", job_id, found.status)
        return found.status
    if found.cancel:
        jobs.set_job(store, job_id, status="cancelled", finished_at=now_iso(), error="cancelled before it ran")
        return "cancelled"
    try:
        options, suite = checked_options(store, found)
    except EdgebenchError as exc:
        if jobs.store_outage(exc):
            raise
        jobs.set_job(store, job_id, status="failed", finished_at=now_iso(), error=str(exc))
        log.error("%s: %s", job_id, exc)
        return "failed"
    return _attempt(task, store, found, options, suite)


def checked_options(store: Store, job: jobs.Job) -> tuple[RunOptions, Suite]:
    """The run's options rebuilt from the job's fields for this worker (its inventory, its
    files); JobRefused when the row is not a job `lab submit` writes or names what is not here."""
    assert _context is not None
    if job.refused:
        raise JobRefused(job.refused)
    if (job.device, job.identity, job.options.device) != (_context.device, _context.identity, _context.device):
        raise JobRefused(f"job {job.id} is for device {job.options.device!r} ({job.identity}), but this worker serves "
                         f"{_context.device!r} ({_context.identity}); not run")
    suite = parse_suite(job.suite_text, f"lab job {job.id}")
    inputs, options = job.inputs, job.options
    named = jobs.suite_references(suite)
    if named and options.reference is None and inputs.reference_logits is None:
        raise JobRefused(f"job {job.id}: its suite names the reference(s) {', '.join(sorted(named))} as paths; a lab job's "
                         "reference comes with the job (lab submit --reference), never from a path on the worker")
    reference = options.reference
    if reference not in (None, "self"):
        reference = _model_file(job, reference, inputs.reference_sha256, "reference")
    if inputs.reference_logits:
        reference = str(_blob_file(store, job, inputs.reference_logits, "reference.logits"))
    corpus = str(_blob_file(store, job, inputs.corpus, inputs.corpus_name or "corpus.txt")) if inputs.corpus else None
    return replace(options, model=_model_file(job, options.model, inputs.model_sha256, "model"), reference=reference, corpus=corpus,
                   inventory=_context.inventory), suite


def _model_file(job: jobs.Job, spec: str, sha256: str | None, what: str) -> str:
    """A catalog name (fetched by its pinned sha256), or a file under this worker's model
    folders whose sha256 is the one the submitter read."""
    if spec in CATALOG:
        if sha256 not in (None, CATALOG[spec].sha256):
            raise JobRefused(f"job {job.id}: {what} {spec} is pinned at sha256 {CATALOG[spec].sha256[:12]}, the job recorded {sha256[:12]}")
        return spec
    if sha256 is None:
        raise JobRefused(f"job {job.id}: {what} {spec} comes without the sha256 lab submit records for a model file")
    path = Path(spec)
    dirs = model_dirs()
    real = path.resolve() if path.is_absolute() else None
    if real is None or not any(real.is_relative_to(d) for d in dirs):
        raise JobRefused(f"job {job.id}: {what} {spec} is not under this worker's model folders ({', '.join(map(str, dirs))}; "
                         f"${MODEL_DIRS_ENV} sets them)")
    if not real.is_file():
        raise JobRefused(f"job {job.id}: {what} {spec}: no such file on {socket.gethostname()}")
    found = inspect_model(real).sha256
    if found != sha256:
        raise JobRefused(f"job {job.id}: {what} {spec} on {socket.gethostname()} has sha256 {found[:12]}, the job recorded {sha256[:12]}: "
                         "another file than the one submitted")
    return str(real)


def _blob_file(store: Store, job: jobs.Job, sha256: str, name: str) -> Path:
    """The store's blob as a file in this worker's cache (fetched once, checked by content)."""
    path = cache_dir() / "lab-inputs" / sha256 / name
    if path.is_file():
        return path
    with store.engine.connect() as conn:
        data = artifacts.get_blob(conn, sha256)
    if data is None:
        raise JobRefused(f"job {job.id}: its {name} (sha256 {sha256[:12]}) is not in the store {store.where}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return path


def _attempt(task, store: Store, job: jobs.Job, options: RunOptions, suite: Suite) -> str:
    """One try of the job, through the run's one entry point (harness.run.orchestrate): the
    device's lease is the job's, the run is the job's run id (resumed when a redelivered
    message finds it stored), and the job is marked running once the lease is its own."""
    attempt = job.attempts + 1
    watch = _CancelWatch(store, job.id)
    watch.start()

    def running(_run_id: str) -> None:
        watch.check()
        jobs.set_job(store, job.id, status="running", attempts=attempt, host=socket.gethostname(), pid=os.getpid(),
                     started_at=now_iso(), error=None)

    def on_result(result) -> None:
        log.info("%s: %s round %d: %s", job.id, result.step.case.label, result.step.rep + 1, result.status)
        watch.check()

    def say(message: str) -> None:
        log.info("%s: %s", job.id, message)

    callbacks = Callbacks(status=say, note=say, step_start=watch.check, step_result=on_result)
    request = RunRequest(options, suite, run_id=job.run_id, identity=job.identity)
    lease = LeaseTerms(holder=lambda _run_id: leases.job_holder(job.id), wait=True, on_held=running)
    status, error = "failed", None
    try:
        (outcome,) = orchestrate.run(store, request, callbacks, lease)
        status, error = ("failed", f"{len(outcome.failed)} process(es) failed") if outcome.failed else ("done", None)
    except JobCancelled:
        status, error = "cancelled", f"cancelled while running on {socket.gethostname()}; its benchmark was killed"
    except LeaseLost as exc:  # the device's lease could not be renewed: its benchmark is killed, and the job
        raise StoreGone(str(exc)) from None  # waits, unacknowledged, as for any store outage, then resumes its run
    except DeviceUnreachable as exc:
        if attempt <= job.retries:
            delay = job.backoff_s * 2 ** (attempt - 1)
            jobs.set_job(store, job.id, status="unreachable", attempts=attempt,
                         error=f"attempt {attempt} of {job.retries + 1}: {exc}; retrying in {delay:g} s")
            log.warning("%s: device unreachable (%s); retrying in %g s", job.id, exc, delay)
            raise task.retry(countdown=delay, max_retries=None, queue=job.queue)
        status, error = "unreachable", f"{exc} (gave up after {attempt} attempts)"
    except Exception as exc:  # noqa: BLE001 - one job's bug is that job's failure, not the worker's
        if jobs.store_outage(exc):
            raise  # nobody's failure: run_job waits for the store, then this job resumes its run
        if isinstance(exc, EdgebenchError):
            error = str(exc)
        else:
            log.exception("%s: internal error", job.id)
            error = f"internal error: {exc!r} (see the worker's log on {socket.gethostname()})"
    finally:
        watch.stop.set()
    jobs.set_job(store, job.id, status=status, attempts=attempt, error=error, finished_at=now_iso())
    log.info("%s: %s%s", job.id, status, f" ({error})" if error else "")
    return status
