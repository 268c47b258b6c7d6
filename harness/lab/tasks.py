"""The one lab task: run a job (one `edgebench run`) on the device this worker owns.

Idempotent by construction: the job's run id was chosen at submit, so a redelivered message
(a killed worker, a broker restart) resumes that run, keeping every finished process, and a
message for a job that already ended does nothing. A lost connection to the device marks the
job `unreachable` and retries it with exponential backoff, up to the job's retries.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from harness.drivers.base import DeviceUnreachable
from harness.errors import EdgebenchError, StoreError
from harness.lab import jobs, leases
from harness.plan.suites import parse_suite
from harness.results.store import Store, now_iso
from harness.run.session import Callbacks, prepare, resume, start

log = logging.getLogger("edgebench.lab")


@dataclass(frozen=True)
class WorkerContext:
    """What the worker process was started with: where results go, its own inventory."""

    results: Path
    store_url: str | None
    inventory: str


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
            found = jobs.job(self.store, self.job_id)
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


def run_job(task, job_id: str) -> str:
    if _context is None:
        raise RuntimeError("run_job runs only in an edgebench worker (tasks.configure was not called)")
    with Store(_context.results, _context.store_url) as store:
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
        with leases.held(store, found.identity, f"lab job {found.id} ({found.lab_id})", wait=True, on_wait=log.info):
            return _attempt(task, store, found)


def _attempt(task, store: Store, job: jobs.Job) -> str:
    attempt = job.attempts + 1
    jobs.set_job(store, job.id, status="running", attempts=attempt, host=socket.gethostname(), pid=os.getpid(),
                 started_at=now_iso(), error=None)
    watch = _CancelWatch(store, job.id)
    watch.start()

    def on_result(result) -> None:
        log.info("%s: %s round %d: %s", job.id, result.step.case.label, result.step.rep + 1, result.status)
        watch.check()

    callbacks = Callbacks(status=lambda m: log.info("%s: %s", job.id, m), step_start=watch.check, step_result=on_result)
    status, error = "failed", None
    try:
        if _run_exists(store, job.run_id):
            _, steps = resume(store, job.run_id, callbacks)
        else:
            options = replace(job.options, inventory=_context.inventory)
            prepared = prepare(options, parse_suite(job.suite_text, f"lab job {job.id}"), callbacks.status)
            watch.check()
            _, steps = start(store, prepared, callbacks, run_id=job.run_id)
        failed = [s for s in steps if s.status != "ok"]
        status, error = ("failed", f"{len(failed)} process(es) failed") if failed else ("done", None)
    except JobCancelled:
        status, error = "cancelled", f"cancelled while running on {socket.gethostname()}; its benchmark was killed"
    except DeviceUnreachable as exc:
        if attempt <= job.retries:
            delay = job.backoff_s * 2 ** (attempt - 1)
            jobs.set_job(store, job.id, status="unreachable", error=f"attempt {attempt} of {job.retries + 1}: {exc}; retrying in {delay:g} s")
            log.warning("%s: device unreachable (%s); retrying in %g s", job.id, exc, delay)
            raise task.retry(countdown=delay, max_retries=None, queue=job.queue)
        status, error = "unreachable", f"{exc} (gave up after {attempt} attempts)"
    except EdgebenchError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - one job's bug is that job's failure, not the worker's
        log.exception("%s: internal error", job.id)
        error = f"internal error: {exc!r} (see the worker's log on {socket.gethostname()})"
    finally:
        watch.stop.set()
    jobs.set_job(store, job.id, status=status, error=error, finished_at=now_iso())
    log.info("%s: %s%s", job.id, status, f" ({error})" if error else "")
    return status


def _run_exists(store: Store, run_id: str) -> bool:
    try:
        return store.run(run_id)["id"] == run_id
    except StoreError:
        return False
