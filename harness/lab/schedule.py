"""Scheduled labs: stored in the store, fired by Celery beat (`edgebench beat`), or printed as
a crontab line for a host without beat.

Beat is only the clock here: when a schedule is due it submits the lab (jobs into the store,
messages onto the device queues) from the beat process itself, so no worker has to serve a
queue of its own for it. Cron starts with an empty environment elsewhere, so the printed line
names the executable, the inventory and the results folder absolutely and logs to a file; the
store and broker URLs (passwords) go into a file only the user can read, which the line
sources, because a crontab is listed, mailed and logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.beat import Scheduler
from celery.schedules import crontab
from sqlalchemy import delete, select, update

from harness.credentials import BROKER_ENV, STORE_ENV, mask_url
from harness.errors import EdgebenchError
from harness.lab.app import make_app
from harness.lab.jobs import LabRequest
from harness.paths import private_dir, write_atomic
from harness.records import now_iso
from harness.store.db import Store
from harness.store.location import store_url as parse_store_url
from harness.store.schema import lab_schedules

FIRE = "edgebench.fire_schedule"
log = logging.getLogger("edgebench.lab")


@dataclass(frozen=True)
class LabSchedule:
    id: str
    cron: str | None
    every_s: float | None
    inventory: str
    request: LabRequest
    last_fired_at: str | None = None

    def when(self) -> str:
        return f"cron {self.cron}" if self.cron else f"every {self.every_s:g} s"


def cron_fields(cron: str) -> list[str]:
    fields = cron.split()
    if len(fields) != 5:
        raise EdgebenchError(f"--cron {cron!r}: expected five crontab fields (minute hour day-of-month month day-of-week), like '0 2 * * *'")
    try:
        crontab(*fields)
    except ValueError as exc:
        raise EdgebenchError(f"--cron {cron!r}: {exc}") from None
    return fields


def add_schedule(store: Store, inventory: Path, request: LabRequest, cron: str | None, every_s: float | None) -> LabSchedule:
    if (cron is None) == (every_s is None):
        raise EdgebenchError("give one of --cron '0 2 * * *' or --every SECONDS")
    if cron:
        cron = " ".join(cron_fields(cron))
    entry = LabSchedule("sched-" + uuid.uuid4().hex[:8], cron, every_s, str(Path(inventory).resolve()), request)
    with store.transaction() as conn:
        conn.execute(lab_schedules.insert().values(
            id=entry.id, cron=cron, every_s=every_s, created_at=now_iso(),
            request_json=json.dumps({"inventory": entry.inventory, "request": request.to_json()})))
    return entry


def schedules(store: Store) -> list[LabSchedule]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(lab_schedules).order_by(lab_schedules.c.created_at)).mappings().all()
    out = []
    for row in rows:
        data = json.loads(row["request_json"])
        out.append(LabSchedule(row["id"], row["cron"], row["every_s"], data["inventory"], LabRequest.from_json(data["request"]), row["last_fired_at"]))
    return out


def remove_schedule(store: Store, schedule_id: str) -> None:
    with store.transaction() as conn:
        if conn.execute(delete(lab_schedules).where(lab_schedules.c.id == schedule_id).returning(lab_schedules.c.id)).first() is None:
            raise EdgebenchError(f"no schedule {schedule_id!r} in {store.where}")


class _Context:
    """What `run_beat` hands the scheduler beat instantiates (beat takes a class, not an object)."""

    results: Path
    store_url: str | None


class LabScheduler(Scheduler):
    """Beat's scheduler whose due entries submit their lab instead of sending a task."""

    def send_task(self, name: str, args: Any = (), kwargs: Any = None, **options: Any) -> None:
        if name != FIRE:
            return super().send_task(name, args, kwargs, **options)
        from harness.lab.submit import submit

        with Store(_Context.results, _Context.store_url) as store:
            entry = next((s for s in schedules(store) if s.id == args[0]), None)
            if entry is None:
                log.warning("schedule %s was removed; not fired", args[0])
                return None
            lab_id, jobs = submit(store, self.app, Path(entry.inventory), entry.request)
            with store.transaction() as conn:
                conn.execute(update(lab_schedules).where(lab_schedules.c.id == entry.id).values(last_fired_at=now_iso()))
        log.info("schedule %s (%s): lab %s, %d job(s)", entry.id, entry.when(), lab_id, len(jobs))
        return None


def run_beat(broker: str, results: Path, store_url: str | None) -> None:
    """Celery beat over every stored schedule (read when it starts: restart it after a change)."""
    with Store(results, store_url) as store:
        stored = schedules(store)
    if not stored:
        raise EdgebenchError("no lab schedule is stored; add one with: edgebench lab schedule add --cron '0 2 * * *' ...")
    app = make_app(broker)
    app.conf.beat_schedule = {
        s.id: {"task": FIRE, "schedule": crontab(*s.cron.split()) if s.cron else s.every_s, "args": [s.id]} for s in stored
    }
    _Context.results, _Context.store_url = Path(results), store_url
    app.Beat(scheduler=LabScheduler, max_interval=1, loglevel="INFO").run()


def edgebench_executable() -> str:
    """The `edgebench` beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "edgebench"
    found = str(beside) if beside.exists() else shutil.which("edgebench")
    if not found:
        raise EdgebenchError("cannot find the edgebench executable to schedule; install the package (scripts/setup.sh)")
    return found


def cron_line(cron: str, inventory: Path, request: LabRequest, results: Path, store_url: str | None = None,
              broker: str | None = None) -> str:
    """The crontab line that runs `edgebench lab run` for this request on the store and broker
    given here (`--store`/`--broker`, else their variables), which it reads from `cron_env`'s file."""
    fields = cron_fields(cron)
    if not Path(inventory).is_file():
        raise EdgebenchError(f"inventory {inventory} does not exist")
    suite = str(Path(request.suite).resolve()) if Path(request.suite).suffix == ".toml" else request.suite
    root = Path(results).resolve()
    argv = [edgebench_executable(), "lab", "run", "--inventory", str(Path(inventory).resolve()), "--suite", suite, "--results", str(root),
            "--devices", ",".join(request.devices)]
    for model in request.models:
        argv += ["--model", model]
    for key, values in request.settings.items():
        argv += ["--set", f"{key}={','.join(map(str, values))}"]
    if request.repeat:
        argv += ["--repeat", str(request.repeat)]
    log_file = root / "lab" / "cron.log"
    env_file = cron_env(root, store_url, broker)
    sourced = f". {shlex.quote(str(env_file))} && " if env_file else ""
    command = f"mkdir -p {shlex.quote(str(log_file.parent))} && {{ {sourced}{shlex.join(argv)}; }} >> {shlex.quote(str(log_file))} 2>&1"
    return " ".join(fields) + " " + command.replace("%", r"\%")  # cron reads a bare % as a newline


def cron_env(root: Path, store_url: str | None, broker: str | None) -> Path | None:
    """A file (0600, in the lab folder) exporting the store and broker URLs given here, for a
    crontab line to source; None when both are the results folder's defaults. Named by the
    masked URLs, so a changed password replaces the file rather than adding one, and the name
    tells nothing of the password."""
    values = {name: value for name, value in ((STORE_ENV, store_url or os.environ.get(STORE_ENV)),
                                              (BROKER_ENV, broker or os.environ.get(BROKER_ENV))) if value}
    if not values:
        return None
    if STORE_ENV in values:
        parse_store_url(root, values[STORE_ENV])  # a bad URL is refused now, not at 2 a.m.
    name = hashlib.sha256("\n".join(f"{k}={mask_url(v)}" for k, v in values.items()).encode()).hexdigest()[:12]
    text = "# edgebench: the store and broker of a scheduled `lab run` (sourced by its crontab line)\n"
    text += "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())
    return write_atomic(private_dir(root / "lab") / f"cron-{name}.env", text)
