"""One way into a run, for `edgebench run` and a lab job alike: prepare (every check on bad
input before the device is claimed), take the device's lease (held with a heartbeat), then
start the run or resume it; a `--quantize` sweep is one such run per model it makes.

The callers differ only in what they hand in: the CLI a new run or `--resume`, a lab job the
run id chosen at submit (a redelivered job resumes that run) and the device identity its
worker serves. What they print or record about it goes through `Callbacks`; the lease holder
names the run or job and its user, never a command line (which may hold a `--store` password).
A precision target is the runner's (rounds added per case); nothing here counts rounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from harness.errors import EdgebenchError, StoreError
from harness.plan.suites import Suite
from harness.run.runner import StepResult
from harness.run.session import Callbacks, RunOptions, prepare, resume, start
from harness.run.sweep import sweep_options
from harness.store.db import RunRecord, Store, new_run_id
from harness.store.leases import held, manual_holder


@dataclass(frozen=True)
class RunRequest:
    """What one `edgebench run` or one lab job asks for."""

    options: RunOptions
    suite: Suite | None = None  # the suite itself (a lab job carries its text); None: load `options.suite`
    resume: str | None = None  # finish this stored run (id, prefix or 'latest') with the options it was started with
    # A new run's id, chosen by the caller (a lab job's, at submit); when the store already has
    # it, that run is resumed (a redelivered job), if it was made on `identity` with `options`.
    run_id: str | None = None
    identity: str | None = None  # the device's identity where the caller knows it (a lab worker's): the lease is taken on it
    quantize: tuple[str, ...] = ()  # a sweep: these variants of `options.model`, made on the host, one run each after the base
    allow_requantize: bool = False

    def __post_init__(self) -> None:
        if self.quantize and (self.resume or self.run_id):
            raise EdgebenchError("--quantize and --resume: a sweep is one new run per model; resume each run of the sweep by its id instead")


@dataclass(frozen=True)
class LeaseTerms:
    """How a run claims its device: who holds the lease (named from the run id), whether to
    wait for another holder, and what to do once it is ours (a lab job marks itself running
    then, not before: a job waiting for a manual run is still queued)."""

    holder: Callable[[str], str] = manual_holder
    wait: bool = False
    on_held: Callable[[str], None] = lambda run_id: None


@dataclass(frozen=True)
class Outcome:
    """A finished (or failed) run: its id and every process it ran now."""

    run_id: str
    results: list[StepResult] = field(default_factory=list)

    @property
    def failed(self) -> list[StepResult]:
        return [r for r in self.results if r.status != "ok"]


def run(store: Store, request: RunRequest, callbacks: Callbacks, lease: LeaseTerms = LeaseTerms()) -> list[Outcome]:
    """Run what `request` asks for, each run under its device's lease; one outcome per run
    (a sweep's base first). Stopped anywhere (Ctrl-C, a signal, a lease that cannot be
    renewed, a job cancelled), the run is stored as interrupted and can be resumed."""
    if request.resume is not None:
        return [_resume(store, store.run(request.resume), callbacks, lease)]
    stored = _stored(store, request.run_id)
    if stored is not None:
        _check_same(stored, request)
        return [_resume(store, stored, callbacks, lease)]
    if not request.quantize:
        return [_start(store, request, request.run_id or new_run_id(), callbacks, lease)]
    outcomes = []
    for options in sweep_options(request.options, list(request.quantize), allow_requantize=request.allow_requantize, callbacks=callbacks):
        callbacks.note(f"sweep {options.sweep}: {options.variant or 'base'} ({options.model})")
        outcomes.append(_start(store, replace(request, options=options, quantize=()), new_run_id(), callbacks, lease))
    return outcomes


def _start(store: Store, request: RunRequest, run_id: str, callbacks: Callbacks, lease: LeaseTerms) -> Outcome:
    """Prepared before the lease (bad input fails without waiting for the device); the id is
    chosen before it too, so the lease names the run that holds it."""
    prepared = prepare(request.options, request.suite, callbacks.status)
    for label, reason in prepared.plan.skipped:
        callbacks.note(f"skipped {label}: {reason}")
    with held(store, request.identity or prepared.driver.identity(), lease.holder(run_id), wait=lease.wait, on_wait=callbacks.note):
        lease.on_held(run_id)
        return Outcome(*start(store, prepared, callbacks, run_id=run_id))


def _resume(store: Store, run: RunRecord, callbacks: Callbacks, lease: LeaseTerms) -> Outcome:
    run_id = run.id
    callbacks.begun(run_id)
    with held(store, run.device_key, lease.holder(run_id), wait=lease.wait, on_wait=callbacks.note):
        lease.on_held(run_id)
        return Outcome(*resume(store, run_id, callbacks))


def _stored(store: Store, run_id: str | None) -> RunRecord | None:
    """The stored run of exactly this id (not one it is a prefix of), or None."""
    if run_id is None:
        return None
    try:
        run = store.run(run_id)
    except StoreError:
        return None
    return run if run.id == run_id else None


def _check_same(run: RunRecord, request: RunRequest) -> None:
    """A run is resumed under a caller's id only if it was made with the same options on the
    same device: a row naming another run (someone's manual run with its own build flags) is
    refused."""
    if run.device_identity != request.identity or RunOptions.from_json(run.command) != request.options:
        raise EdgebenchError(f"run {run.id} in the store was not made on device {request.identity} with these options "
                             "(another device or other options); not resumed")
