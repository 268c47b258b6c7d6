"""Lab jobs in the store: the matrix a submit expands to, each job's state, the devices workers
serve. Every lab process (submitter, workers on every host, beat, `lab status`) meets here.

A job is one `edgebench run` (one device, one model, one point of the settings sweep) whose
run id is chosen when it is submitted, so any later attempt resumes that run.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import RowMapping, select, update

from harness.errors import EdgebenchError
from harness.results.schema import lab_devices, lab_jobs
from harness.results.sql import upsert
from harness.results.store import Store, new_run_id, now_iso
from harness.run.session import RunOptions

FINAL = ("done", "failed", "cancelled")
# A worker that has not written its heartbeat for this long is shown dead.
DEAD_AFTER_S = 60


@dataclass(frozen=True)
class LabRequest:
    """What `lab submit` (or a schedule) asks for: every device x model x settings point."""

    devices: tuple[str, ...]
    suite: str  # a built-in name or a suite file; its text goes with each job
    models: tuple[str, ...] = ("default",)
    settings: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # each value list sweeps, one job per point
    repeat: int | None = None
    retries: int = 2
    backoff_s: float = 5.0
    # model -> its place in a `--quantize` sweep made on the submitting host: sweep, variant, reference
    sweeps: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "devices": list(self.devices), "models": list(self.models), "settings": {k: list(v) for k, v in self.settings.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LabRequest":
        return cls(**{**data, "devices": tuple(data["devices"]), "models": tuple(data["models"]),
                      "settings": {k: tuple(v) for k, v in data["settings"].items()}})

    def points(self) -> list[dict[str, tuple[Any, ...]]]:
        """The settings sweep as one dict per job (a single value each)."""
        keys = sorted(self.settings)
        return [{k: (v,) for k, v in zip(keys, values)} for values in itertools.product(*(self.settings[k] for k in keys))]


@dataclass(frozen=True)
class Job:
    id: str
    lab_id: str
    device: str
    identity: str
    queue: str
    options: RunOptions
    suite_text: str
    run_id: str
    status: str
    attempts: int
    retries: int
    backoff_s: float
    host: str | None
    pid: int | None
    submitted_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    cancel: bool

    @property
    def final(self) -> bool:
        """Nothing more will happen to it: an unreachable device is final once retries are spent."""
        return self.status in FINAL or (self.status == "unreachable" and self.attempts > self.retries)

    @classmethod
    def from_row(cls, row: RowMapping) -> "Job":
        values = {k: row[k] for k in row.keys() if k not in ("options_json", "cancel")}
        return cls(**values, options=RunOptions.from_json(json.loads(row["options_json"])), cancel=bool(row["cancel"]))


def new_lab_id() -> str:
    return "lab-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def create_jobs(store: Store, lab_id: str, request: LabRequest, suite_name: str, suite_text: str,
                queues: dict[str, tuple[str, str]]) -> list[Job]:
    """One queued job per device x model x settings point; `queues` maps each device name to its
    (identity, queue)."""
    rows = []
    for device, model, point in itertools.product(request.devices, request.models, request.points()):
        identity, queue = queues[device]
        sweep = dict(request.sweeps.get(model, {}))
        if sweep:  # each device's runs are a sweep of their own (one base each)
            sweep["sweep"] = f"{sweep['sweep']}.{device}"
        options = RunOptions(device=device, suite=suite_name, model=model, repetitions=request.repeat, settings=point, **sweep)
        rows.append({
            "id": f"{lab_id}.{len(rows) + 1}", "lab_id": lab_id, "device": device, "identity": identity, "queue": queue,
            "options_json": json.dumps(options.to_json()), "suite_text": suite_text, "run_id": new_run_id(),
            "status": "queued", "attempts": 0, "retries": request.retries, "backoff_s": request.backoff_s,
            "submitted_at": now_iso(), "cancel": 0,
        })
    with store.transaction() as conn:
        conn.execute(lab_jobs.insert(), rows)
    return jobs_of(store, lab_id)


def job(store: Store, job_id: str) -> Job | None:
    with store.engine.connect() as conn:
        row = conn.execute(select(lab_jobs).where(lab_jobs.c.id == job_id)).mappings().first()
    return Job.from_row(row) if row else None


def jobs_of(store: Store, lab_id: str) -> list[Job]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(lab_jobs).where(lab_jobs.c.lab_id == lab_id)).mappings().all()
    return sorted((Job.from_row(r) for r in rows), key=lambda j: int(j.id.rsplit(".", 1)[1]))


def latest_lab(store: Store) -> str:
    with store.engine.connect() as conn:
        row = conn.execute(select(lab_jobs.c.lab_id).order_by(lab_jobs.c.submitted_at.desc(), lab_jobs.c.lab_id.desc()).limit(1)).first()
    if row is None:
        raise EdgebenchError(f"no lab has been submitted to {store.where}")
    return row[0]


def resolve_lab(store: Store, lab: str | None) -> str:
    """A lab id, or the latest lab for None / 'latest'."""
    if lab in (None, "latest"):
        return latest_lab(store)
    if not jobs_of(store, lab):
        raise EdgebenchError(f"no lab {lab!r} in {store.where}")
    return lab


def set_job(store: Store, job_id: str, **values: Any) -> None:
    with store.transaction() as conn:
        conn.execute(update(lab_jobs).where(lab_jobs.c.id == job_id).values(**values))


def request_cancel(store: Store, lab_id: str) -> tuple[int, int]:
    """Cancel a lab: jobs not started are cancelled now; running ones are flagged, and the worker
    running each kills its benchmark and marks it. Returns (cancelled now, flagged)."""
    j = lab_jobs.c
    with store.transaction() as conn:
        now = conn.execute(update(lab_jobs).where(j.lab_id == lab_id, j.status.in_(("queued", "unreachable")))
                           .values(status="cancelled", cancel=1, finished_at=now_iso(), error="cancelled before it ran")).rowcount
        flagged = conn.execute(update(lab_jobs).where(j.lab_id == lab_id, j.status == "running").values(cancel=1)).rowcount
    return now, flagged


# --- the devices workers serve ----------------------------------------------------------------

def register_device(store: Store, identity: str, name: str, queue: str, started_at: str) -> None:
    """Written by a worker when it starts and every few seconds after (its heartbeat)."""
    with store.transaction() as conn:
        upsert(conn, lab_devices, ["identity"], {"identity": identity, "name": name, "queue": queue, "host": socket.gethostname(),
                                                 "pid": os.getpid(), "started_at": started_at, "heartbeat_at": now_iso()})


def served_devices(store: Store) -> list[RowMapping]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(lab_devices).order_by(lab_devices.c.name)).mappings().all())


def worker_alive(row: RowMapping) -> bool:
    beat = datetime.fromisoformat(row["heartbeat_at"])
    return datetime.now(timezone.utc) - beat < timedelta(seconds=DEAD_AFTER_S)

