"""Lab runs: one suite on every device of an inventory at once.

One worker per device (bounded), one benchmark at a time per device (`locks`), transient
connection errors retried with backoff (resuming the same run, so nothing finished is redone),
and a device that is offline or fails never stops the others. The lab's state is a JSON file
beside per-device logs, so `--resume LAB_ID` finishes what did not succeed.
"""

from __future__ import annotations

import json
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from harness.drivers.base import DeviceUnreachable
from harness.errors import EdgebenchError
from harness.plan.inventory import DeviceSpec, load_inventory
from harness.lab.locks import DeviceBusy, device_lock
from harness.run.session import Callbacks, RunOptions, prepare, resume, start
from harness.results.store import Store, now_iso


@dataclass(frozen=True)
class DeviceOutcome:
    device: str
    status: str  # pending | ok | failed (some processes failed) | busy | unreachable | error
    run_id: str | None = None
    error: str | None = None
    attempts: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class LabPlan:
    lab_id: str
    inventory: str
    suite: str
    devices: tuple[str, ...]


def lab_dir(results: Path, lab_id: str) -> Path:
    return Path(results) / "lab" / lab_id


def select_devices(inventory: Path, tags: tuple[str, ...] = ()) -> list[DeviceSpec]:
    devices = list(load_inventory(inventory).values())
    chosen = [d for d in devices if not tags or set(tags) & set(d.tags)]
    if not chosen:
        raise EdgebenchError(f"no device in {inventory} has any of the tags {', '.join(tags)}" if tags else f"{inventory} lists no device")
    return chosen


def new_lab(results: Path, inventory: Path, suite: str, tags: tuple[str, ...] = ()) -> LabPlan:
    devices = tuple(d.name for d in select_devices(inventory, tags))
    lab_id = "lab-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    plan = LabPlan(lab_id, str(Path(inventory).resolve()), suite, devices)
    _save(results, plan, {d: DeviceOutcome(d, "pending") for d in devices})
    return plan


def load_lab(results: Path, lab_id: str) -> tuple[LabPlan, dict[str, DeviceOutcome]]:
    path = lab_dir(results, lab_id) / "state.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EdgebenchError(f"no lab run {lab_id!r} under {lab_dir(results, '')}: {exc}") from None
    plan = LabPlan(**{**data["plan"], "devices": tuple(data["plan"]["devices"])})
    return plan, {d: DeviceOutcome(**o) for d, o in data["outcomes"].items()}


def _save(results: Path, plan: LabPlan, outcomes: dict[str, DeviceOutcome]) -> None:
    folder = lab_dir(results, plan.lab_id)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps({"plan": asdict(plan), "outcomes": {d: asdict(o) for d, o in outcomes.items()}}, indent=1))
    tmp.replace(folder / "state.json")


def run_lab(
    results: Path,
    plan: LabPlan,
    outcomes: dict[str, DeviceOutcome],
    *,
    store_url: str | None = None,
    jobs: int | None = None,
    retries: int = 2,
    backoff_s: float = 2.0,
    wait_for_busy: bool = False,
    on_update: Callable[[DeviceOutcome], None] | None = None,
) -> dict[str, DeviceOutcome]:
    """Run every device whose outcome is not `ok` (all of them in a new lab), in parallel, into
    the store at `store_url` (default: the one under `results`)."""
    todo = [d for d in plan.devices if outcomes[d].status != "ok"]

    def work(device: str) -> DeviceOutcome:
        outcome = _run_device(results, store_url, plan, outcomes[device], retries, backoff_s, wait_for_busy)
        outcomes[device] = outcome
        _save(results, plan, outcomes)
        if on_update:
            on_update(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, min(jobs or len(todo) or 1, len(todo) or 1))) as pool:
        list(pool.map(work, todo))
    return outcomes


def _run_device(results: Path, store_url: str | None, plan: LabPlan, previous: DeviceOutcome, retries: int, backoff_s: float, wait: bool) -> DeviceOutcome:
    started, since = time.perf_counter(), now_iso()
    log_path = lab_dir(results, plan.lab_id) / f"{previous.device}.log"
    outcome = replace(previous, status="pending", error=None)
    with log_path.open("a", encoding="utf-8") as log:
        def say(message: str) -> None:
            log.write(f"{now_iso()} {message}\n")
            log.flush()

        callbacks = Callbacks(status=say, step_result=lambda r: say(f"{r.step.case.label} round {r.step.rep + 1}: {r.status}"))
        try:
            with device_lock(previous.device, wait=wait):
                outcome = _attempts(results, store_url, plan, outcome, retries, backoff_s, callbacks, say, since)
        except DeviceBusy as exc:
            say(str(exc))
            outcome = replace(outcome, status="busy", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - one device's bug must not stop the others
            say("internal error:\n" + traceback.format_exc())
            outcome = replace(outcome, status="error", error=f"internal error: {exc!r} (see {log_path})")
    return replace(outcome, seconds=outcome.seconds + time.perf_counter() - started)


def _attempts(results: Path, store_url: str | None, plan: LabPlan, outcome: DeviceOutcome, retries: int, backoff_s: float,
              callbacks: Callbacks, say: Callable[[str], None], since: str) -> DeviceOutcome:
    store = Store(results, store_url)  # one connection pool per worker thread
    try:
        for attempt in range(1, retries + 2):
            outcome = replace(outcome, attempts=outcome.attempts + 1)
            try:
                if outcome.run_id:
                    run_id, steps = resume(store, outcome.run_id, callbacks)
                else:
                    options = RunOptions(device=outcome.device, suite=plan.suite, inventory=plan.inventory)
                    run_id, steps = start(store, prepare(options, on_status=callbacks.status), callbacks)
                failed = [s for s in steps if s.status != "ok"]
                note = f"{len(failed)} process(es) failed" if failed else None
                return replace(outcome, status="failed" if failed else "ok", run_id=run_id, error=note)
            except DeviceUnreachable as exc:
                # The run created before the connection dropped is resumed, not started again.
                outcome = replace(outcome, status="unreachable", error=str(exc), run_id=_interrupted_run(store, outcome.device, since) or outcome.run_id)
                say(f"attempt {attempt}: {exc}")
                if attempt <= retries:
                    time.sleep(backoff_s * 2 ** (attempt - 1))
            except EdgebenchError as exc:
                say(f"error: {exc}")
                return replace(outcome, status="error", error=str(exc))
        return outcome
    finally:
        store.close()


def _interrupted_run(store: Store, device: str, since: str) -> str | None:
    """The run this worker started (after `since`) and lost the device in, if any."""
    for row in store.runs():
        if row["device"] == device and row["created_at"] >= since and row["status"] in ("interrupted", "running"):
            return row["id"]
    return None
