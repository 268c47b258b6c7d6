"""Lab jobs in the store: the matrix a submit expands to, each job's state, the devices workers
serve. Every lab process (submitter, workers on every host, beat, `lab status`) meets here.

A job is one `edgebench run` (one device, one model, one point of the settings sweep) whose
run id is chosen when it is submitted, so any later attempt resumes that run.

A job row is data, not a command: anyone who can write to the shared store can write one, so
a worker rebuilds the run's options only from the fields `lab submit` writes (`JOB_OPTIONS`,
each with its type) and refuses any other. Files travel by content: a model or reference model
by its path and the sha256 the submitter read (the worker checks both against its own model
folders), a corpus or reference logits file as a blob of the store, named by sha256.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import RowMapping, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from harness.errors import EdgebenchError, StoreGone
from harness.plan.suites import RUNTIMES, SETTING_CHECKS, Suite
from harness.records import now_iso
from harness.run.session import RunOptions
from harness.store.db import Store, new_run_id
from harness.store.schema import lab_devices, lab_jobs
from harness.store.sql import upsert

FINAL = ("done", "failed", "cancelled")
OPEN = ("queued", "running", "unreachable")
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
    corpus: str | None = None  # a text file on the submitting host, uploaded to the store (None: the default)
    reference: str | None = None  # "self", a model, or a logits file on the submitting host (uploaded)
    runtimes: tuple[str, ...] = ()  # --runtime: every job runs these (none: the suite's `runtime`)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "devices": list(self.devices), "models": list(self.models), "settings": {k: list(v) for k, v in self.settings.items()},
                "runtimes": list(self.runtimes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LabRequest":
        return cls(**{**data, "devices": tuple(data["devices"]), "models": tuple(data["models"]),
                      "settings": {k: tuple(v) for k, v in data["settings"].items()}, "runtimes": tuple(data.get("runtimes", ()))})

    def points(self) -> list[dict[str, tuple[Any, ...]]]:
        """The settings sweep as one dict per job (a single value each)."""
        keys = sorted(self.settings)
        return [{k: (v,) for k, v in zip(keys, values)} for values in itertools.product(*(self.settings[k] for k in keys))]


# What `results.store.new_run_id` makes; a run id names a folder, so no other is used.
RUN_ID_FORM = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
SHA256_FORM = re.compile(r"[0-9a-f]{64}")
FILE_NAME_FORM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class JobRefused(EdgebenchError):
    """A job row that `lab submit` could not have written, or that names files this worker does
    not hold: never run, marked failed with this message."""


@dataclass(frozen=True)
class JobInputs:
    """The files a job names by content; the worker finds each in its own folders or the store."""

    model_sha256: str | None = None  # of the model file (a catalog name pins its own)
    reference_sha256: str | None = None  # of the reference model file, when the reference is one
    reference_logits: str | None = None  # sha256 of a logits file the submitter uploaded (store blobs)
    corpus: str | None = None  # sha256 of a corpus text the submitter uploaded (None: the default corpus)
    corpus_name: str | None = None  # its file name on the submitting host, for the report


def _text(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _sha(v: Any) -> bool:
    return isinstance(v, str) and SHA256_FORM.fullmatch(v) is not None


def _settings_point(v: Any) -> bool:
    """One point of the sweep: each llama-bench setting with exactly one value that passes its check."""
    return isinstance(v, dict) and all(
        k in SETTING_CHECKS and isinstance(vs, list) and len(vs) == 1 and SETTING_CHECKS[k][0](vs[0]) for k, vs in v.items())


# Every key `create_jobs` writes, with its check: nothing else is accepted (no build flags, no
# target, no file path but the model's and the reference model's, each with its sha256).
JOB_OPTIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "device": (_text, "a device name"),
    "suite": (_text, "a suite name"),
    "model": (_text, "a catalog name or a model file"),
    "repetitions": (_optional(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1), "a positive integer or null"),
    "settings": (_settings_point, "one value for each llama-bench setting, each a list of one valid value"),
    "sweep": (_optional(_text), "a sweep id or null"),
    "variant": (_optional(_text), "a quantization type or null"),
    "reference": (_optional(_text), '"self", a catalog name or a model file, or null'),
    "runtimes": (lambda v: isinstance(v, list) and all(r in RUNTIMES for r in v), "a list of runtimes among " + ", ".join(RUNTIMES)),
    "model_sha256": (_optional(_sha), "64 lowercase hex digits or null"),
    "reference_sha256": (_optional(_sha), "64 lowercase hex digits or null"),
    "reference_logits": (_optional(_sha), "64 lowercase hex digits or null"),
    "corpus": (_optional(_sha), "64 lowercase hex digits or null"),
    "corpus_name": (_optional(lambda v: isinstance(v, str) and FILE_NAME_FORM.fullmatch(v) is not None), "a plain file name or null"),
}
_RUN_KEYS = ("device", "suite", "model", "repetitions", "settings", "sweep", "variant", "reference", "runtimes")


def job_options_json(options: RunOptions, inputs: JobInputs) -> dict[str, Any]:
    """The job row's options: exactly the keys of `JOB_OPTIONS`."""
    run = options.to_json()
    return {**{k: run[k] for k in _RUN_KEYS}, **asdict(inputs)}


def parse_job_options(data: Any) -> tuple[RunOptions, JobInputs]:
    """A job row's options, refused (JobRefused) unless `lab submit` could have written them."""
    if not isinstance(data, dict):
        raise JobRefused("its options are not a JSON object")
    unknown = sorted(set(data) - set(JOB_OPTIONS))
    if unknown:
        raise JobRefused(f"its options hold {', '.join(map(repr, unknown))}, which lab submit never writes (build flags come from "
                         "the worker's inventory; a corpus or reference file travels through the store by sha256)")
    missing = [k for k in ("device", "suite", "model", "settings") if k not in data]
    if missing:
        raise JobRefused(f"its options lack {', '.join(missing)}")
    for key, value in data.items():
        check, expected = JOB_OPTIONS[key]
        if not check(value):
            raise JobRefused(f"its option {key!r} is {str(value)[:80]!r}: expected {expected}")
    if data.get("reference") is not None and data.get("reference_logits") is not None:
        raise JobRefused("its options give both a reference model and reference logits")
    options = RunOptions(**{k: data[k] for k in _RUN_KEYS if k in data and k not in ("settings", "runtimes")},
                         settings={k: tuple(v) for k, v in data["settings"].items()}, runtimes=tuple(data.get("runtimes", ())))
    return options, JobInputs(**{f.name: data.get(f.name) for f in fields(JobInputs)})


def suite_references(suite: Suite) -> set[str]:
    """The references the suite's quality cases name; a lab job's references other than "self"
    come with the job (`lab submit --reference`), never from a path in the suite's text."""
    return {name for spec in suite.tests if spec.kind == "quality" for name in spec.values["reference"]} - {"self"}


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
    inputs: JobInputs = JobInputs()
    refused: str | None = None  # why the row is not a job `lab submit` writes (then never run)

    @property
    def final(self) -> bool:
        """Nothing more will happen to it: an unreachable device is final once retries are spent."""
        return self.status in FINAL or (self.status == "unreachable" and self.attempts > self.retries)

    @classmethod
    def from_row(cls, row: RowMapping) -> "Job":
        """A job as stored; a row `lab submit` could not have written still loads (status and
        cancel show it), with `refused` saying why no worker will run it."""
        values = {k: row[k] for k in row.keys() if k not in ("options_json", "cancel")}
        options, inputs, refused = RunOptions(device=row["device"], model="?"), JobInputs(), None
        try:
            if not isinstance(row["run_id"], str) or not RUN_ID_FORM.fullmatch(row["run_id"]):
                raise JobRefused(f"its run id {str(row['run_id'])[:80]!r} is not one edgebench makes (like 20260101-120000-1a2b3c)")
            options, inputs = parse_job_options(json.loads(row["options_json"]))
        except (JobRefused, ValueError) as exc:
            refused = f"job {row['id']} refused: {exc}"
        return cls(**values, options=options, cancel=bool(row["cancel"]), inputs=inputs, refused=refused)


def store_outage(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from, is the store failing under the lab (a
    database stopped, restarted or out of reach; StoreGone, as the runner reports it): nobody's
    fault, so the lab waits for the store and loses nothing, where any other error is the job's own."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (StoreGone, OperationalError, InterfaceError)) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def new_lab_id() -> str:
    return "lab-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def create_jobs(store: Store, lab_id: str, request: LabRequest, suite_name: str, suite_text: str,
                queues: dict[str, tuple[str, str]], inputs: dict[str, JobInputs] | None = None) -> list[Job]:
    """One queued job per device x model x settings point; `queues` maps each device name to its
    (identity, queue), `inputs` each model to the files its jobs name by content."""
    rows = []
    for device, model, point in itertools.product(request.devices, request.models, request.points()):
        identity, queue = queues[device]
        sweep = dict(request.sweeps.get(model, {}))
        if sweep:  # each device's runs are a sweep of their own (one base each)
            sweep["sweep"] = f"{sweep['sweep']}.{device}"
        files = (inputs or {}).get(model, JobInputs())
        if request.reference is not None:  # given logits travel as a blob, named in `files`
            sweep["reference"] = None if files.reference_logits else request.reference
        options = RunOptions(device=device, suite=suite_name, model=model, repetitions=request.repeat, settings=point,
                             runtimes=request.runtimes, **sweep)
        rows.append({
            "id": f"{lab_id}.{len(rows) + 1}", "lab_id": lab_id, "device": device, "identity": identity, "queue": queue,
            "options_json": json.dumps(job_options_json(options, files)), "suite_text": suite_text, "run_id": new_run_id(),
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


def open_jobs(store: Store, identity: str) -> list[Job]:
    """The device's jobs that have not ended, oldest first: what its queue should hold."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(lab_jobs).where(lab_jobs.c.identity == identity, lab_jobs.c.status.in_(OPEN))
                            .order_by(lab_jobs.c.submitted_at, lab_jobs.c.id)).mappings().all()
    return [j for j in map(Job.from_row, rows) if not j.final]


def set_job(store: Store, job_id: str, **values: Any) -> None:
    with store.transaction() as conn:
        conn.execute(update(lab_jobs).where(lab_jobs.c.id == job_id).values(**values))


def request_cancel(store: Store, lab_id: str) -> tuple[int, int]:
    """Cancel a lab: jobs not started are cancelled now; running ones are flagged, and the worker
    running each kills its benchmark and marks it. Returns (cancelled now, flagged)."""
    j = lab_jobs.c
    with store.transaction() as conn:
        # Counted from RETURNING, not rowcount (harness/store/sql.py says why).
        now = conn.execute(update(lab_jobs).where(j.lab_id == lab_id, j.status.in_(("queued", "unreachable")))
                           .values(status="cancelled", cancel=1, finished_at=now_iso(), error="cancelled before it ran").returning(j.id)).all()
        flagged = conn.execute(update(lab_jobs).where(j.lab_id == lab_id, j.status == "running").values(cancel=1).returning(j.id)).all()
    return len(now), len(flagged)


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

