"""One benchmark run from options to stored results: the sequence the CLI drives.

Every check that can fail on bad input (suite, model, device) happens before the first
process starts, so a typo never costs a half-finished run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from harness import __version__
from harness.drivers.base import CommandFailed, Driver
from harness.errors import EdgebenchError
from harness.plan.inventory import DeviceSpec, resolve_device
from harness.plan.planner import Plan, build_plan
from harness.plan.suites import Suite, load_suite, parse_suite
from harness.run.greedy import reference_inputs
from harness.run.references import QualitySources, quality_sources, references_for
from harness.run.runner import RunTargets, Step, StepResult, execute, pending_steps, resumable
from harness.runtimes import BuildProgress, Runtime, build_runtime
from harness.runtimes.models import ModelInfo, inspect_model, resolve_model
from harness.runtimes.native import BANDWIDTH_NAME
from harness.runtimes.reference import Reference
from harness.runtimes.targets import effective_target, flags_for_device
from harness.runtimes.traffic import model_traffic
from harness.store.db import Store
from harness.telemetry.bandwidth import Bandwidth, device_bandwidth, requests_for
from harness.telemetry.clusters import Cluster, read_clusters


@dataclass(frozen=True)
class RunOptions:
    """What the user asked for; stored with the run so `--resume` can rebuild the same setup."""

    device: str = "local"
    suite: str = "quick"
    model: str = "default"
    target: str | None = None  # None: the device's own (inventory), else "host"
    build_flags: tuple[str, ...] = ()
    repetitions: int | None = None
    settings: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    inventory: str | None = None
    mode: str | None = None
    minutes: float | None = None
    remeasure_bandwidth: bool = False  # ignore the cached memory-bandwidth figure for this device
    contention_threshold: float | None = None  # % of one core; None: the suite's
    precision: float | None = None  # a 95% CI target per case, as a share of its mean (0.02 = ±2%)
    max_repetitions: int | None = None
    quality: bool = True  # False: skip the suite's quality cases (--no-quality)
    corpus: str | None = None  # None: CPython's pydoc_data.topics text
    reference: str | None = None  # None: each [[quality]] entry's own ("self": the model under test)
    sweep: str | None = None  # the speed-quality sweep this run belongs to (--quantize), and its variant
    variant: str | None = None
    runtimes: tuple[str, ...] = ()  # --runtime (repeatable); none: the suite's `runtime`

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "build_flags": list(self.build_flags), "settings": {k: list(v) for k, v in self.settings.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunOptions":
        return cls(
            **{**data, "build_flags": tuple(data["build_flags"]), "settings": {k: tuple(v) for k, v in data["settings"].items()},
               "runtimes": tuple(data.get("runtimes", ()))}
        )


@dataclass
class Callbacks:
    """What a run tells its caller as it goes: progress (`status`), what the user should not
    miss (`note`: a skipped case, a wait for the device, a sweep's next model), the run now
    under way (`begun`: what an interruption names to resume), builds and processes."""

    status: Callable[[str], None] = lambda message: None
    note: Callable[[str], None] = lambda message: None
    begun: Callable[[str], None] = lambda run_id: None
    build: Callable[[BuildProgress], None] | None = None
    step_start: Callable[[Step], None] | None = None
    step_result: Callable[[StepResult], None] | None = None


@dataclass(frozen=True)
class Prepared:
    options: RunOptions
    device: DeviceSpec
    driver: Driver
    suite: Suite
    model_path: Path
    model: ModelInfo
    plan: Plan
    quality: QualitySources | None = None


def prepare(options: RunOptions, suite: Suite | None = None, on_status: Callable[[str], None] | None = None) -> Prepared:
    """Validate everything the run needs (suite, device, model) without running anything."""
    suite = (suite or load_suite(options.suite)).with_overrides(options.repetitions, options.settings, options.mode, options.minutes,
                                                                options.contention_threshold, precision=options.precision,
                                                                max_repetitions=options.max_repetitions, runtimes=options.runtimes)
    device = resolve_device(options.device, Path(options.inventory) if options.inventory else None)
    driver = device.open()
    model_path = resolve_model(options.model, on_status=on_status)
    model = inspect_model(model_path)
    quality = quality_sources(suite, options.corpus, options.reference, model, on_status) if options.quality else None
    plan = build_plan(suite, context_length=model.context_length, host=driver.is_host, clusters=_clusters(driver, on_status),
                      quality=quality.inputs if quality else None, architecture=model.architecture)
    if not plan.cases:
        raise EdgebenchError(f"suite {suite.name} has no case that can run here: " + "; ".join(r for _, r in plan.skipped))
    if quality:
        quality.check_cases(plan.cases)
    return Prepared(options, device, driver, suite, model_path, model, plan, quality)


def _clusters(driver: Driver, on_status: Callable[[str], None] | None) -> list[Cluster]:
    """The device's core clusters, read once for the plan; a device that is there but whose
    files cannot be read runs the runtime's default threads, saying so."""
    try:
        return read_clusters(driver, cores=1)
    except CommandFailed as exc:
        if on_status:
            on_status(f"core clusters of {driver.name} unreadable ({exc}): the runtime's default threads")
        return []


def estimate_seconds(store: Store, prepared: Prepared) -> float | None:
    """Wall time the plan took on this device last time, or None when it never ran here."""
    walls = store.wall_times(prepared.options.device)
    if not all(c.key in walls for c in prepared.plan.cases):
        return None
    return sum(walls[c.key] * c.processes(prepared.plan.repetitions) for c in prepared.plan.cases)


def start(store: Store, prepared: Prepared, callbacks: Callbacks, run_id: str | None = None) -> tuple[str, list[StepResult]]:
    """Build/stage the runtime, compute the quality cases' references (their errors come before the
    device runs anything), measure memory bandwidth, record the run with its facts whole (as
    `run_id` when given), and execute every case."""
    runtime = _runtime_if_needed(prepared, callbacks)
    references = references_for(prepared.quality, prepared.plan.cases, lambda: build_host(callbacks.build), callbacks.status)
    identity = prepared.driver.identity()
    facts = {**asdict(prepared.driver.facts()), "identity": identity}
    if prepared.quality:
        facts["quality"] = prepared.quality.facts(references)
    targets = _stage(prepared, runtime, callbacks, references)
    facts["bandwidth"] = _bandwidth(prepared, runtime, targets, facts, callbacks)
    run_id = store.create_run(
        device=prepared.options.device,
        device_identity=identity,
        suite_name=prepared.suite.name,
        suite_text=prepared.suite.text,
        repetitions=prepared.plan.repetitions,
        timeout_s=prepared.plan.timeout_s,
        cases=list(prepared.plan.cases),
        cores=prepared.plan.cores,
        model_sha256=prepared.model.sha256,
        # the tensor-table counts the decode roofline needs, kept with the model's facts
        model_info={**prepared.model.to_json(), "traffic": model_traffic(prepared.model_path, prepared.model.sha256).to_json()},
        runtime_key=runtime.manifest.key if runtime else None,
        runtime_manifest=runtime.manifest.to_json() if runtime else None,
        facts=facts,
        command=prepared.options.to_json(),
        version=__version__,
        run_id=run_id,
    )
    callbacks.begun(run_id)  # from here an interruption leaves a run to resume
    return run_id, _execute(store, run_id, prepared, runtime, targets, callbacks, facts)


def resume(store: Store, run_id: str, callbacks: Callbacks) -> tuple[str, list[StepResult]]:
    """Finish the processes of a stored run that have not succeeded yet, with the same setup
    (and the device facts it was recorded with: its bandwidth figure is not measured again)."""
    run = store.run(run_id)
    options = RunOptions.from_json(run.command)
    suite = parse_suite(run.suite_text, f"run {run.id}")
    prepared = prepare(options, suite, callbacks.status)
    mixed = "resuming would mix two of them in one run's figures; start a new run"
    if prepared.model.sha256 != run.model_sha256:
        raise EdgebenchError(f"run {run.id} used model sha256 {run.model_sha256[:12]}, but {options.model} is now "
                             f"{prepared.model.sha256[:12]}: {mixed} (or put the original file back)")
    runtime = _runtime_if_needed(prepared, callbacks)
    if runtime and runtime.manifest.key != run.runtime_key:
        raise EdgebenchError(f"run {run.id} used runtime {str(run.runtime_key)[:12]}, but this build is {runtime.manifest.key[:12]} "
                             f"(llama.cpp {runtime.manifest.llama_cpp_commit}): {mixed}")
    stored = {c.key for c in store.cases(run.id)}
    references = references_for(prepared.quality, [c for c in prepared.plan.cases if c.key in stored], lambda: build_host(callbacks.build),
                                callbacks.status)
    with resumable(store, run.id):
        targets = _stage(prepared, runtime, callbacks, references)
    return run.id, _execute(store, run.id, prepared, runtime, targets, callbacks, run.facts)


def build_host(on_progress: Callable[[BuildProgress], None] | None = None) -> Runtime:
    """The host CPU runtime (cached): where references are computed and variants are made."""
    return build_runtime("host", on_progress=on_progress)[0]


def _execute(store: Store, run_id: str, prepared: Prepared, runtime: Runtime | None, targets: RunTargets, callbacks: Callbacks,
             facts: dict[str, Any]) -> list[StepResult]:
    """Write the run's own files (again on resume: a first try the disk cut short left some
    out) and run the pending processes; stopped anywhere, resumable."""
    with resumable(store, run_id):
        _write_run_artifacts(store, run_id, prepared, runtime, facts)
        steps = pending_steps(store, run_id, store.cases(run_id), store.run(run_id).repetitions)
    callbacks.status(f"run {run_id}: {len(steps)} process(es) to run")
    return execute(
        store, run_id, prepared.driver, steps, targets, timeout_s=prepared.plan.timeout_s,
        on_start=callbacks.step_start, on_result=callbacks.step_result, policy=prepared.plan.policy,
    )


def _bandwidth(prepared: Prepared, runtime: Runtime | None, targets: RunTargets, facts: dict[str, Any],
               callbacks: Callbacks) -> dict[str, Any]:
    """Memory bandwidth at the run's thread counts, once per run before its cases and before the
    run is recorded, so its device facts are written once; a failure is kept as its reason."""
    binary_sha = runtime.manifest.files.get(f"bin/{BANDWIDTH_NAME}") if runtime else None
    if runtime is None or binary_sha is None or targets.runtime_dir is None:
        return {"error": f"the runtime has no {BANDWIDTH_NAME} (no llama-bench case, or built on the device)"}
    callbacks.status(f"measuring memory bandwidth on {prepared.driver.name}")
    requests = requests_for(prepared.plan.cases, prepared.plan.cores)
    bandwidth = device_bandwidth(prepared.driver, facts, targets.runtime_dir, binary_sha, requests,
                                 refresh=prepared.options.remeasure_bandwidth)
    cached = " (cached)" if bandwidth["cached"] else ""
    for result in bandwidth["results"]:
        callbacks.status(f"memory bandwidth: {Bandwidth.from_json(result).describe()}{cached}")
    for error in bandwidth["errors"]:
        callbacks.status(f"memory bandwidth not measured: {error}")
    return bandwidth


def _runtime_if_needed(prepared: Prepared, callbacks: Callbacks) -> Runtime | None:
    # llama-bench, llama-perplexity and llama-server are its programs; pyllama loads its lib/; openvino runs under its probe
    if not any(c.engine in ("llamabench", "perplexity", "pyllama", "server", "openvino") for c in prepared.plan.cases):
        return None
    target = prepared.options.target or prepared.device.target
    flags = prepared.device.build_flags + prepared.options.build_flags
    if target == "device":  # cmake on the device itself (SSH boards): nothing to stage afterwards
        from harness.runtimes.ondevice import build_on_device

        runtime, cached = build_on_device(prepared.driver, flags, on_progress=callbacks.build)
    else:
        target, fallback_note = effective_target(target, flags)
        if fallback_note:
            callbacks.status(fallback_note)
        # The device's CPU features pick the ARM arch (recorded in the manifest's flags); user flags still win.
        flags = flags_for_device(target, lambda: prepared.driver.facts().extra.get("cpu_features")) + flags
        runtime, cached = build_runtime(target, extra_flags=flags, on_progress=callbacks.build)
    callbacks.status(f"runtime {runtime.manifest.key[:12]} ({target}, llama.cpp {runtime.manifest.llama_cpp_commit}): {'cached' if cached else 'built'}")
    return runtime


def _stage(prepared: Prepared, runtime: Runtime | None, callbacks: Callbacks, references: dict[str, Reference]) -> RunTargets:
    """Put the runtime, the model and the quality cases' reference logits on the device
    (content-addressed; skipped when present)."""
    driver = prepared.driver
    greedy = _greedy_inputs(prepared, callbacks)
    if driver.is_host:
        return RunTargets(runtime_dir=str(runtime.root) if runtime else None, model_path=str(prepared.model_path),
                          inputs={key: {"logits": str(ref.path)} for key, ref in references.items()} | greedy)
    work = PurePosixPath(driver.workdir)
    model_remote = str(work / "models" / prepared.model.sha256[:16] / prepared.model.filename)
    callbacks.status(f"staging {prepared.model.filename} on {driver.name}")
    sent = driver.push(prepared.model_path, model_remote)
    inputs = {}
    for key, ref in references.items():
        logits_remote = str(work / "references" / ref.sha256[:16] / "base.logits")
        sent += driver.push(ref.path, logits_remote)
        inputs[key] = {"logits": logits_remote}
    runtime_remote = getattr(runtime, "remote_dir", None)  # built on the device: already there
    if runtime and runtime_remote is None:
        runtime_remote = str(work / "runtimes" / runtime.manifest.key[:16])
        for rel in runtime.manifest.files:
            sent += driver.push(runtime.root / rel, f"{runtime_remote}/{rel}")
    callbacks.status(f"staged on {driver.name}: {sent} bytes transferred")
    return RunTargets(runtime_dir=runtime_remote, model_path=model_remote, inputs=inputs | greedy)


def _greedy_inputs(prepared: Prepared, callbacks: Callbacks) -> dict[str, dict[str, str]]:
    """Each server case's greedy reference (a file on the host, where its client runs), computed
    once for the run; none where the run has no server case."""
    serve = [c.key for c in prepared.plan.cases if c.engine == "server"]
    if not serve:
        return {}
    if not prepared.options.quality:  # the greedy check is the servers' quality case: --no-quality skips it too
        return {key: {"greedy_missing": "quality checks were switched off (--no-quality)"} for key in serve}
    callbacks.status("greedy reference: the host llama-server on the CPU (cached)")
    found = reference_inputs(prepared.model_path, prepared.model.sha256, lambda: build_host(callbacks.build))
    if "greedy_missing" in found:
        callbacks.status(found["greedy_missing"])
    return {key: found for key in serve}


def _write_run_artifacts(store: Store, run_id: str, prepared: Prepared, runtime: Runtime | None, facts: dict[str, Any]) -> None:
    store.write_file(run_id, "facts.json", json.dumps(facts, indent=2, default=str))
    store.write_file(run_id, "model.json", json.dumps(prepared.model.to_json(), indent=2))
    store.write_file(run_id, "suite.toml", prepared.suite.text)
    if prepared.quality and any(c.kind == "quality" for c in prepared.plan.cases):
        store.write_file(run_id, "corpus.txt", prepared.quality.corpus.path.read_bytes())  # stored once per sha256 (blobs)
    if runtime:
        store.write_file(run_id, "runtime.json", json.dumps(runtime.manifest.to_json(), indent=2))
