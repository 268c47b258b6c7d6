"""Submitting a lab and following it: jobs into the store, one message per job onto its
device's queue, then status, wait, cancel and the lab's report, all read from the store.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from celery import Celery
from kombu.exceptions import OperationalError

from harness.errors import EdgebenchError
from harness.lab.app import RUN_JOB, queue_for
from harness.lab.jobs import Job, LabRequest, create_jobs, jobs_of, new_lab_id, served_devices, set_job, worker_alive
from harness.plan.inventory import load_inventory
from harness.plan.suites import load_suite
from harness.results.store import Store, now_iso


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


def submit(store: Store, app: Celery, inventory: Path, request: LabRequest, lab_id: str | None = None) -> tuple[str, list[Job]]:
    """Store the lab's jobs, then publish one message (the job id) per job to its device queue."""
    suite = load_suite(request.suite)
    lab_id = lab_id or new_lab_id()
    jobs = create_jobs(store, lab_id, request, suite.name, suite.text, device_queues(store, inventory, request.devices))
    for i, job in enumerate(jobs):
        try:
            app.send_task(RUN_JOB, args=[job.id], queue=job.queue)
        except OperationalError as exc:
            for unsent in jobs[i:]:
                set_job(store, unsent.id, status="failed", finished_at=now_iso(), error=f"never queued: broker unreachable ({exc})")
            raise EdgebenchError(f"lab {lab_id}: the broker is unreachable ({exc}); {len(jobs) - i} job(s) not queued") from None
    return lab_id, jobs


def wait(store: Store, lab_id: str, on_change: Callable[[Job], None] | None = None, poll_s: float = 1.0,
         timeout_s: float | None = None) -> list[Job]:
    """Until every job of the lab is final (done, failed, cancelled, or unreachable for good)."""
    seen: dict[str, tuple[str, int]] = {}
    deadline = time.monotonic() + timeout_s if timeout_s else None
    while True:
        jobs = jobs_of(store, lab_id)
        for job in jobs:
            if on_change and seen.get(job.id) != (job.status, job.attempts):
                on_change(job)
            seen[job.id] = (job.status, job.attempts)
        if all(j.final for j in jobs):
            return jobs
        if deadline and time.monotonic() > deadline:
            raise EdgebenchError(f"lab {lab_id}: not finished after {timeout_s:g} s (edgebench lab status {lab_id})")
        time.sleep(poll_s)


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
    known = {r["id"] for r in store.runs()}
    return [j.run_id for j in jobs if j.run_id in known]
