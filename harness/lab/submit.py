"""Submitting a lab and following it: jobs into the store, one message per job onto its
device's queue, then status, wait, cancel and the lab's report, all read from the store.

What a job names by content is read here, on the submitting host: each model file's sha256
(the worker runs only a file of its model folders with that sha256), and the corpus and
reference logits files themselves, uploaded to the store's blobs so that no worker ever opens
a path a job row gives it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from celery import Celery
from kombu.exceptions import OperationalError

from harness.errors import EdgebenchError
from harness.lab.app import RUN_JOB, queue_for
from harness.lab.jobs import (FILE_NAME_FORM, Job, JobInputs, LabRequest, create_jobs, jobs_of, new_lab_id, served_devices, set_job,
                              store_outage, suite_references, worker_alive)
from harness.lab.worker import select_devices
from harness.plan.inventory import load_inventory
from harness.plan.suites import check_runtimes, load_suite
from harness.store.artifacts import put_blob
from harness.store.db import Store, now_iso
from harness.run.session import Callbacks, RunOptions
from harness.run.sweep import sweep_options
from harness.runtimes.corpus import resolve_corpus
from harness.runtimes.logits import MAGIC
from harness.runtimes.models import CATALOG, inspect_model, resolve_model


class WaitEnded(EdgebenchError):
    """A wait for a lab that gave up (its timeout passed, or it can never finish): names the
    jobs still open, which go on without the waiter."""


def device_queues(store: Store, inventory: Path, names: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """Each device's (identity, queue): from the worker serving it (it may be on another host),
    else from the device itself, reached from here."""
    served: dict[str, list] = {}
    for row in served_devices(store):
        served.setdefault(row["name"], []).append(row)
    specs = load_inventory(inventory)
    found = {}
    for name in names:
        rows = sorted(served.get(name, []), key=lambda r: (worker_alive(r), r["heartbeat_at"]), reverse=True)
        if rows:
            found[name] = (rows[0]["identity"], rows[0]["queue"])
        else:
            identity = specs[name].open().identity()
            found[name] = (identity, queue_for(identity))
    return found


def make_request(inventory: Path, suite: str, models: Sequence[str], settings: dict[str, tuple[Any, ...]], repeat: int | None, *,
                 names: tuple[str, ...] = (), tags: tuple[str, ...] = (), retries: int = 2, backoff_s: float = 5.0,
                 quantize: Sequence[str] = (), allow_requantize: bool = False, corpus: str | None = None,
                 reference: str | None = None, runtimes: Sequence[str] = (), callbacks: Callbacks = Callbacks()) -> LabRequest:
    """The lab's request for the inventory's devices (those named and tagged so, else all); with
    `quantize`, each model's variants are made here first and join the models, each job knowing
    its sweep, variant and reference (the base). A file is named absolutely: a job is run in
    another folder, often on another host."""
    def absolute(spec: str | None) -> str | None:
        return spec if spec is None or spec in CATALOG or spec == "self" else str(Path(spec).expanduser().resolve())

    chosen = tuple(d.name for d in select_devices(inventory, names, tags))
    specs, sweeps = [absolute(m) for m in models or ["default"]], {}
    if quantize:
        runs = [o for m in specs for o in sweep_options(RunOptions(model=m), list(quantize), allow_requantize=allow_requantize, callbacks=callbacks)]
        specs = [o.model for o in runs]
        sweeps = {o.model: {"sweep": o.sweep, "variant": o.variant, "reference": o.reference} for o in runs}
    return LabRequest(chosen, suite, tuple(specs), settings, repeat, retries, backoff_s, sweeps, absolute(corpus), absolute(reference),
                      check_runtimes(runtimes))


def submit(store: Store, app: Celery, inventory: Path, request: LabRequest, lab_id: str | None = None) -> tuple[str, list[Job]]:
    """Store the lab's jobs, then publish one message (the job id) per job to its device queue."""
    suite = load_suite(request.suite)
    named = suite_references(suite)
    if named and request.reference is None:
        raise EdgebenchError(f"suite {suite.name} names the reference(s) {', '.join(sorted(named))} as paths, which a worker never "
                             "opens: give the lab's reference with --reference (a model or a logits file, sent with each job)")
    lab_id = lab_id or new_lab_id()
    queues = device_queues(store, inventory, request.devices)
    jobs = create_jobs(store, lab_id, request, suite.name, suite.text, queues, job_inputs(store, request))
    for i, job in enumerate(jobs):
        try:
            app.send_task(RUN_JOB, args=[job.id], queue=job.queue)
        except OperationalError as exc:
            for unsent in jobs[i:]:
                set_job(store, unsent.id, status="failed", finished_at=now_iso(), error=f"never queued: broker unreachable ({exc})")
            raise EdgebenchError(f"lab {lab_id}: the broker is unreachable ({exc}); {len(jobs) - i} job(s) not queued") from None
    return lab_id, jobs


def job_inputs(store: Store, request: LabRequest) -> dict[str, JobInputs]:
    """Per model of the lab: the sha256 of each model file its jobs name, and the corpus and
    reference logits, uploaded to the store's blobs."""
    shared = JobInputs()
    if request.corpus is not None:
        corpus = resolve_corpus(request.corpus)  # UTF-8, not empty: refused here rather than on every worker
        name = corpus.name if FILE_NAME_FORM.fullmatch(corpus.name) else None
        shared = replace(shared, corpus=_upload(store, corpus.path), corpus_name=name)
    if request.reference is not None and _is_logits(request.reference):
        shared = replace(shared, reference_logits=_upload(store, Path(request.reference)))
    inputs = {}
    for model in request.models:
        reference = request.reference if request.reference is not None else request.sweeps.get(model, {}).get("reference")
        inputs[model] = replace(shared, model_sha256=_model_sha256(model),
                                reference_sha256=None if shared.reference_logits or reference in (None, "self") else _model_sha256(reference))
    return inputs


def _model_sha256(spec: str) -> str:
    """A catalog model's pinned sha256 (nothing fetched), else the file's, read as the run reads it."""
    return CATALOG[spec].sha256 if spec in CATALOG else inspect_model(resolve_model(spec)).sha256


def _is_logits(spec: str) -> bool:
    path = Path(spec)
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _upload(store: Store, path: Path) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise EdgebenchError(f"{path}: cannot be read to send with the lab ({exc.strerror})") from None
    with store.transaction() as conn:
        return put_blob(conn, data)


def wait(store: Store, lab_id: str, on_change: Callable[[Job], None] | None = None, poll_s: float = 1.0,
         timeout_s: float | None = None, gone: Callable[[], str | None] | None = None,
         on_note: Callable[[str], None] | None = None) -> list[Job]:
    """Until every job of the lab is final (done, failed, cancelled, or unreachable for good).
    WaitEnded, naming the jobs still open, once `timeout_s` has passed or `gone` gives the reason
    the lab can never finish (the worker serving it exited). A store that stops answering is
    waited for, within the timeout: the lab goes on without it being watched."""
    seen: dict[str, tuple[str, int]] = {}
    jobs: list[Job] = []
    deadline = time.monotonic() + timeout_s if timeout_s else None
    outage: str | None = None
    while True:
        try:
            jobs = jobs_of(store, lab_id)
            if outage and on_note:
                on_note(f"the store {store.where} answers again")
            outage = None
        except Exception as exc:  # noqa: BLE001 - only a store outage is waited out
            if not store_outage(exc):
                raise
            if outage is None and on_note:
                on_note(f"the store {store.where} does not answer ({type(exc).__name__}); waiting for it")
            outage = f"the store {store.where} does not answer"
        for job in jobs:
            if on_change and seen.get(job.id) != (job.status, job.attempts):
                on_change(job)
            seen[job.id] = (job.status, job.attempts)
        if jobs and not outage and all(j.final for j in jobs):
            return jobs
        reason = gone() if gone else None
        if reason is None and deadline and time.monotonic() > deadline:
            reason = f"not finished after {timeout_s:g} s" + (f" ({outage})" if outage else "")
        if reason:
            raise WaitEnded(f"lab {lab_id}: {reason}; still open: {open_jobs_text(jobs)} (edgebench lab status {lab_id})")
        time.sleep(poll_s)


def open_jobs_text(jobs: list[Job]) -> str:
    """'lab-x.1 (dev-a, queued), lab-x.2 (dev-b, running on host-a)' for the jobs not ended."""
    open_ = [j for j in jobs if not j.final]
    return ", ".join(f"{j.id} ({j.device}, {j.status}" + (f" on {j.host}" if j.status == "running" else "") + ")" for j in open_) or "none"


def where(job: Job, alive: dict[str, bool]) -> str:
    """'running on host (pid N)', with a warning when that device's worker stopped beating."""
    if job.status != "running":
        return ""
    text = f"{job.host} (pid {job.pid})"
    return text if alive.get(job.identity, True) else text + ", its worker is not answering"


def workers_alive(store: Store) -> dict[str, bool]:
    return {r["identity"]: worker_alive(r) for r in served_devices(store)}


def lab_run_ids(jobs: list[Job], store: Store) -> list[str]:
    """The runs the lab's jobs created (a job cancelled before it ran has none)."""
    known = {r.id for r in store.runs()}
    return [j.run_id for j in jobs if j.run_id in known]
