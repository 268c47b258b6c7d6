"""Runs a plan on a device: interleaved rounds of separate processes, each stored as it ends.

Round r runs every case once (case 1..n, then again 1..n), so slow drift such as heating or
background load spreads over all cases instead of landing on the last ones; a precision target
adds rounds for the cases not yet within it (harness.run.precision). A failing
process (crash, out of memory, timeout) is recorded with its stderr tail and the run goes
on; a device that vanishes stops the run, keeping everything finished so far (resumable), and
so does a store that stops taking writes (its database gone, its disk full): the process whose
row could not be written runs again on resume.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy.exc import SQLAlchemyError

from harness.drivers.base import Completed, Driver, DriverError
from harness.engines import EngineResult, Serving, backend_failure, get_engine
from harness.errors import EdgebenchError, Interrupted, StoreGone, exited
from harness.plan.cores import benchmark_cpus
from harness.plan.planner import RunPolicy
from harness.records import Case, Metric, now_iso
from harness.run.precision import further_rounds
from harness.run.watch import Watch, quiet_sample
from harness.store.db import ExecutionRaw, Store
from harness.telemetry.base import Telemetry
from harness.telemetry.clusters import Cluster, read_clusters
from harness.telemetry.contention import wait_for_quiet
from harness.telemetry.factory import telemetry_for
from harness.telemetry.state import DeviceState, capture_state, wait_for_cool


@dataclass(frozen=True)
class Step:
    """One process to run: case `case` in round `rep`."""

    index: int
    total: int
    case: Case
    rep: int


@dataclass(frozen=True)
class StepResult:
    step: Step
    status: str  # ok | failed | timeout | oom
    metrics: tuple[Metric, ...]
    error: str | None
    wall_s: float


@dataclass(frozen=True)
class RunTargets:
    """Where the runtime and the model are, as paths on the device, and per case key the other
    files a case reads there (a quality case: "logits", the reference's)."""

    runtime_dir: str | None
    model_path: str
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)


def pending_steps(store: Store, run_id: str, cases: list[Case], repetitions: int) -> list[Step]:
    """Interleaved rounds of (case, rep) that have no successful execution yet; a case that
    runs once (quality) is in the first round only."""
    done = {(e.case_key, e.rep) for e in store.executions(run_id) if e.status == "ok"}
    todo = [(rep, case) for rep in range(repetitions) for case in cases
            if (case.key, rep) not in done and rep < case.processes(repetitions)]
    return [Step(i, len(todo), case, rep) for i, (rep, case) in enumerate(todo)]


def execute(
    store: Store,
    run_id: str,
    driver: Driver,
    steps: list[Step],
    targets: RunTargets,
    *,
    timeout_s: float,
    on_start: Callable[[Step], None] | None = None,
    on_result: Callable[[StepResult], None] | None = None,
    policy: RunPolicy = RunPolicy(),
) -> list[StepResult]:
    """Run every step, committing each; returns the results. Marks the run's final status.

    burst: before each case, wait (bounded) for the device to cool back to the temperature it
    had when the run started. sustained: keep running rounds of the cases until
    `sustained_minutes` have passed, so drift under sustained load shows in the results.
    """
    results = []
    with resumable(store, run_id):
        store.mark_running(run_id)
        pace = _Pacer(driver, policy)
        for step in _paced(steps, policy, store, run_id):
            if on_start:
                on_start(step)
            result = _run_step(store, run_id, driver, step, targets, timeout_s, pace.before_case(), policy.contention_threshold_pct)
            results.append(result)
            if on_result:
                on_result(result)
        failed = [r for r in results if r.status != "ok"]
        store.finish_run(run_id, "failed" if failed else "finished", f"{len(failed)} process(es) failed" if failed else None)
    return results


@contextmanager
def resumable(store: Store, run_id: str) -> Iterator[None]:
    """A run stopped early (Ctrl-C, SIGTERM/SIGHUP, a lost lease, a lost device, a store that
    stops taking writes) is marked interrupted, saying how to resume it; a database or disk
    error becomes `StoreGone`, one line naming the store and the run to resume."""
    try:
        yield
    except (DriverError, KeyboardInterrupt) as exc:
        mark_interrupted(store, run_id, exc)
        raise
    except (SQLAlchemyError, OSError) as exc:
        gone = store.gone(exc)
        mark_interrupted(store, run_id, gone)
        raise StoreGone(f"{gone}; the processes that finished are stored: when it works again, "
                        f"edgebench run --resume {run_id}") from exc


def mark_interrupted(store: Store, run_id: str, exc: EdgebenchError | KeyboardInterrupt) -> None:
    """The run stopped early: say why and how to resume. When the store is what failed this
    write may fail too: the run then stays `running` until `--resume` finishes it."""
    if isinstance(exc, Interrupted):
        reason = exc.describe()  # the signal's name, or why the lease was lost
    elif isinstance(exc, KeyboardInterrupt):
        reason = "interrupted by the user"
    else:
        reason = str(exc)
    try:
        store.finish_run(run_id, "interrupted", f"{reason}; resume with: edgebench run --resume {run_id}")
    except (SQLAlchemyError, OSError):
        pass


class _Pacer:
    """Burst mode's waits before each case: to cool down to the idle temperature (read once,
    when the run starts), then for others' CPU to drop under the contention threshold."""

    def __init__(self, driver: Driver, policy: RunPolicy) -> None:
        self.driver, self.policy = driver, policy
        self.idle_c = self._hottest() if policy.mode == "burst" else None

    def _hottest(self) -> float | None:
        try:
            return capture_state(self.driver).hottest
        except DriverError:
            return None

    def before_case(self) -> dict[str, Any] | None:
        if self.policy.mode != "burst":
            return None
        cooldown = wait_for_cool(self._hottest, self.idle_c, tolerance_c=self.policy.cooldown_tolerance_c,
                                 max_wait_s=self.policy.cooldown_max_s, poll_s=self.policy.cooldown_poll_s)
        quiet = wait_for_quiet(lambda: quiet_sample(self.driver), self.policy.contention_threshold_pct, self.policy.quiet_max_s)
        return {**asdict(cooldown), "quiet": asdict(quiet)}


def _paced(steps: list[Step], policy: RunPolicy, store: Store, run_id: str) -> Iterator[Step]:
    """The steps; then, with a precision target, rounds for the cases not yet within it; in
    sustained mode, further rounds of the same cases until time is up."""
    yield from steps
    if policy.precision is not None:
        for todo in further_rounds(store, run_id, policy):
            yield from (Step(i, len(todo), case, rep) for i, (case, rep) in enumerate(todo))
        return
    cases = list(dict.fromkeys(s.case for s in steps if not s.case.runs_once))
    if policy.mode != "sustained" or not cases:
        return
    deadline = time.monotonic() + policy.sustained_minutes * 60
    rep = max(s.rep for s in steps) + 1
    while time.monotonic() < deadline:
        for i, case in enumerate(cases):
            yield Step(i, len(cases), case, rep)
        store.set_repetitions(run_id, rep + 1)
        rep += 1


def _run_step(store: Store, run_id: str, driver: Driver, step: Step, targets: RunTargets, timeout_s: float,
              cooldown: dict[str, Any] | None = None, contention_threshold_pct: float = RunPolicy.contention_threshold_pct) -> StepResult:
    case = step.case
    engine = get_engine(case.engine)
    state, clusters = _device_state(driver)
    inputs = targets.inputs.get(case.key)
    argv = engine.argv(case, runtime_dir=targets.runtime_dir or "", model_path=targets.model_path, inputs=inputs)
    client = engine.client(case, driver, argv, timeout_s, inputs) if isinstance(engine, Serving) else None
    started = now_iso()
    with telemetry_for(driver, targets.runtime_dir) as telemetry, Watch(driver) as watch:
        wrapped = telemetry.wrap(argv, engine.marks, benchmark_cpus(case, clusters))
        try:
            completed = driver.run(wrapped, timeout=timeout_s, on_start=_both(telemetry.attach, client.start) if client else telemetry.attach)
        finally:
            if client:
                client.finish()
    _write_artifacts(store.artifacts_dir(run_id) / case.key, step.rep, completed, telemetry)
    marks = telemetry.marks()
    parse = client.parse if client else engine.parse
    status, error, parsed = _outcome(lambda c, done: parse(c, done, marks), case, completed, timeout_s)
    # energy over the engine's measured windows only (one meaning on every driver)
    windows, tokens = (parsed.windows, parsed.tokens) if parsed else ((), 0)
    no_window = parsed.no_window if parsed else f"no measured window: the process ended {status} (see its error)"
    metrics = (parsed.metrics if parsed else []) + telemetry.metrics(completed, windows, tokens, no_window)
    metrics += watch.metrics(metrics, contention_threshold_pct)
    raw = ExecutionRaw(argv=tuple(argv), records=tuple(parsed.raw) if parsed else (), state=state, cooldown=cooldown,
                       telemetry=telemetry.details(), contention=watch.details(), windows=tuple(windows),
                       effective=dict(parsed.effective) if parsed else {})
    store.record_execution(
        run_id, case, step.rep, status=status, exit_code=completed.exit_code, wall_s=completed.wall_s,
        started_at=started, error=error, build=parsed.build if parsed else None, raw=raw, metrics=metrics,
    )
    return StepResult(step, status, tuple(metrics), error, completed.wall_s)


def _both(first: Callable[[int], None], second: Callable[[int], None]) -> Callable[[int], None]:
    """One on_start callback that calls two, in order."""
    return lambda pid: (first(pid), second(pid))[-1]


def _device_state(driver: Driver) -> tuple[DeviceState, list[Cluster]]:
    """The device's state right before the case (governors, caps, heat, load, memory), and its
    core clusters (which cores the case's settings name, so the probe keeps off them); a
    device whose files cannot be read gets the reason and no clusters."""
    try:
        return capture_state(driver), read_clusters(driver, cores=1)
    except DriverError as exc:
        return DeviceState.unread(f"device state could not be read: {exc}"), []


def _outcome(
    parse: Callable[[Case, Completed], EngineResult], case: Case, completed: Completed, timeout_s: float
) -> tuple[str, str | None, EngineResult | None]:
    tail = completed.stderr_tail()
    if completed.timed_out:
        return "timeout", f"killed after the {timeout_s:.0f} s timeout; stderr tail:\n{tail}", None
    if completed.oom_killed:
        return "oom", f"killed by SIGKILL (exit {completed.exit_code}): out of memory?; stderr tail:\n{tail}", None
    if completed.exit_code != 0:
        return "failed", f"{exited(completed.exit_code)}; stderr tail:\n{tail}", None
    if failure := backend_failure(completed.stderr):
        return "failed", failure, None
    try:
        return "ok", None, parse(case, completed)
    except EdgebenchError as exc:
        return "failed", str(exc), None


def _write_artifacts(folder: Path, rep: int, completed: Completed, telemetry: Telemetry) -> None:
    """The process's files (`rep<N>.*`: output, argv, telemetry), written in a hidden folder and
    then moved in, each whole, in place of an earlier try's, so the execution's row stores
    exactly this try's files; a full disk leaves none half-written under a real name."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".rep{rep}.", dir=folder))
    try:
        (staging / f"rep{rep}.stdout").write_text(completed.stdout, encoding="utf-8")
        (staging / f"rep{rep}.stderr").write_text(completed.stderr, encoding="utf-8")
        (staging / f"rep{rep}.argv.json").write_text(json.dumps(list(completed.argv)), encoding="utf-8")
        telemetry.write_csv(staging / f"rep{rep}.telemetry.csv")
        for earlier in folder.glob(f"rep{rep}.*"):
            earlier.unlink()
        for written in staging.iterdir():
            os.replace(written, folder / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
