"""The planner: suite x model x device -> the concrete list of cases to run (a `Plan`).

A case (harness.records.Case) is one process invocation of one engine with every
result-changing setting explicit, so its identity (a hash of its definition) changes whenever
anything that matters changes. The planner asks the engine registry which cases each engine
can run, and resolves `threads` from the device's core clusters (harness.plan.cores).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.engines import get_engine
from harness.errors import ConfigError
from harness.plan.cores import resolve_threads
from harness.plan.suites import Suite
from harness.records import Case, CoreChoice
from harness.telemetry.clusters import Cluster


@dataclass(frozen=True)
class Plan:
    """The cases to run, and the ones the suite asked for that cannot run here, with why.

    `cores`: per case key, how its threads (and mask) were chosen from the device's clusters.
    """

    cases: tuple[Case, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    repetitions: int = 1
    timeout_s: float = 900.0
    policy: "RunPolicy" = field(default_factory=lambda: RunPolicy())
    cores: Mapping[str, CoreChoice] = field(default_factory=dict)

    def describe_processes(self) -> str:
        """What --dry-run says the plan starts, e.g. "25 processes (3 rounds of 8 cases, and 1 case run once)"."""
        once = sum(1 for c in self.cases if c.runs_once)
        parts = []
        if len(self.cases) > once:
            parts.append(f"{_count(self.repetitions, 'round')} of {_count(len(self.cases) - once, 'case')}")
        if once:
            parts.append(f"{_count(once, 'case')} run once")
        return f"{_count(sum(c.processes(self.repetitions) for c in self.cases), 'process', 'processes')} ({', and '.join(parts)})"


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


@dataclass(frozen=True)
class RunPolicy:
    """How cases are paced (see `harness.plan.suites.MODES`), and how many rounds they get:
    with a `precision` target (0.02 = a 95% CI within ±2% of the mean), a case not yet within
    it gets further rounds, up to `max_repetitions` processes (harness.run.precision)."""

    mode: str = "none"
    cooldown_tolerance_c: float = 3.0
    cooldown_max_s: float = 120.0
    sustained_minutes: float = 10.0
    cooldown_poll_s: float = 2.0
    contention_threshold_pct: float = 10.0  # others' CPU (% of one core) above which a figure is contended
    quiet_max_s: float = 30.0  # burst mode: longest wait for others' CPU to drop under that threshold
    precision: float | None = None
    max_repetitions: int = 10


# (runtime, test kind) -> the engine that runs it; each engine names its runtime (Engine.runtime)
ENGINES: dict[tuple[str, str], str] = {
    **{("llama.cpp", kind): engine for kind, engine in
       {"prefill": "llamabench", "decode": "llamabench", "pg": "llamabench", "latency": "pyllama", "quality": "perplexity",
         "serve": "server"}.items()},
    **{("openvino", kind): "openvino" for kind in ("prefill", "decode", "pg", "latency", "quality")},
}


def case_label(case: Case) -> str:
    """A case's label, naming its runtime where it is not llama.cpp (the label predates the axis)."""
    runtime = get_engine(case.engine).runtime
    return case.label if runtime == "llama.cpp" else f"{case.label} on {runtime}"


# llama-perplexity --kl-divergence prints its statistics only over this many scored tokens or more
MIN_SCORED_TOKENS = 100


@dataclass(frozen=True)
class QualityInputs:
    """What the quality cases are scored on: the corpus, and each [[quality]] reference as the
    suite names it ("self", a path) -> the sha256 of the reference model (or logits file)."""

    corpus_sha256: str
    references: Mapping[str, str]


def build_plan(suite: Suite, *, context_length: int | None, host: bool, clusters: Sequence[Cluster] = (),
               quality: QualityInputs | None = None, architecture: str | None = None) -> Plan:
    """Expand every sweep of the suite into cases for this device, dropping those that cannot run here.

    `threads` is resolved here from the device's core `clusters` into what the case's engine
    takes (llama-bench: a count and a mask; llama-cpp-python: a count), so the case that is
    checked, stored and compared is the one that runs. Cases longer than the model's context,
    in-process (host only) engines on a remote device, and settings an engine cannot apply
    are listed in `skipped` with their reason rather than silently dropped. A quality case
    keeps only the settings that change what the backend computes (so a batch-size sweep does
    not repeat it); without `quality` (--no-quality) it is skipped, and one longer than the
    model's context is an error, since its figure would be of another case.

    Each test runs once per runtime of the suite (`runtime`), by that runtime's engine; a case
    drops the settings only another of the suite's runtimes takes (a kv_cache_precision sweep
    does not repeat the llama.cpp cases), and a runtime that cannot run a case here (not
    installed, no device plugin, an architecture it cannot read: `architecture` is the GGUF's)
    skips it with that runtime's reason.
    """
    cases: list[Case] = []
    cores: dict[str, CoreChoice] = {}
    skipped: list[tuple[str, str]] = []
    for spec, runtime in [(spec, runtime) for spec in suite.tests for runtime in suite.runtimes]:
        if (runtime, spec.kind) not in ENGINES:  # e.g. [[serve]]: llama-server is llama.cpp's
            skipped.append((f"{spec.kind} on {runtime}", f"the {runtime} runtime has no engine for {spec.kind} tests"))
            continue
        engine = get_engine(ENGINES[runtime, spec.kind])
        others = {key for other in suite.runtimes if other != runtime and (other, spec.kind) in ENGINES
                  for key in get_engine(ENGINES[other, spec.kind]).settings}
        settings = {k: v for k, v in {**suite.settings, **spec.settings}.items() if k in engine.settings or k not in others}
        if spec.kind == "quality":
            settings = {k: v for k, v in settings.items() if k in engine.settings}
        for values in _product(spec.values):
            if spec.kind == "quality" and (why := _quality_problem(values, context_length, quality, suite.source)):
                skipped.append((f"quality c{values['context']}" + ("" if runtime == "llama.cpp" else f" on {runtime}"), why))
                continue
            for chosen in _product(settings):
                case, how = resolve_threads(_make_case(engine.name, spec.kind, values, chosen, suite, quality), clusters,
                                            takes_mask="cpu_mask" in engine.settings)
                tokens = case.n_prompt + case.n_gen + case.depth
                label = case_label(case)
                if context_length is not None and tokens > context_length:
                    skipped.append((label, f"needs {tokens} tokens of context; the model has {context_length}"))
                elif engine.host_only and not host:
                    skipped.append((label, f"the {case.engine} engine runs on the host only"))
                elif case.setting("threads") in ("big", "all"):
                    skipped.append((label, f"threads = {case.setting('threads')!r}: the device's cores could not be read"))
                elif reason := engine.unsupported(case) or engine.unsupported_model(architecture):
                    skipped.append((label, reason))
                elif case not in cases:
                    cases.append(case)
                    if how:
                        cores[case.key] = how
    policy = RunPolicy(suite.mode, suite.cooldown_tolerance_c, suite.cooldown_max_s, suite.sustained_minutes,
                       contention_threshold_pct=suite.contention_threshold_pct, quiet_max_s=suite.quiet_max_s,
                       precision=suite.precision, max_repetitions=suite.max_repetitions)
    return Plan(cases=tuple(cases), skipped=tuple(skipped), repetitions=suite.repetitions, timeout_s=suite.timeout_s,
                policy=policy, cores=cores)


def _product(sweeps: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for key, values in sweeps.items():
        combos = [{**combo, key: value} for combo in combos for value in values]
    return combos


def _quality_problem(values: dict[str, Any], context_length: int | None, quality: QualityInputs | None, source: str) -> str | None:
    """Why a quality case is not planned (skipped), or None; raises where it is an input error."""
    if quality is None:
        return "quality cases are off (--no-quality)"
    if context_length is not None and values["context"] > context_length:
        raise ConfigError(source, "quality.context", f"at most the model's context length ({context_length})", values["context"])
    scored = (values["context"] - 1 - values["context"] // 2) * values["chunks"]
    if scored < MIN_SCORED_TOKENS:  # below this llama-perplexity prints no statistics at all
        raise ConfigError(source, "quality.chunks", f"enough chunks to score at least {MIN_SCORED_TOKENS} tokens (each chunk scores "
                          f"the second half of its window: {values['context'] - 1 - values['context'] // 2} at context {values['context']})",
                          values["chunks"])
    return None


def _make_case(engine: str, kind: str, values: dict[str, Any], settings: dict[str, Any], suite: Suite,
               quality: QualityInputs | None = None) -> Case:
    if kind == "quality" and quality is not None:
        chosen = {"chunks": values["chunks"], "corpus": quality.corpus_sha256,
                  "reference": quality.references[values["reference"]], "override_kv": values.get("override_kv")}
        return Case(engine=engine, kind=kind, n_prompt=values["context"], n_gen=0, depth=0,
                    settings=tuple(sorted(settings.items())), inprocess_reps=1, warmup=False,
                    quality=tuple(sorted((k, v) for k, v in chosen.items() if v is not None)))
    if kind == "serve":  # its sweep keys are the server run's, kept with the settings so they name the case
        concurrency = values.get("concurrency", 1)
        settings = {**settings, "concurrency": concurrency, "requests": values.get("requests", 4 * concurrency)}
    n_prompt = values.get("prompt", 0) if kind != "decode" else 0
    n_gen = values.get("tokens", 0)
    return Case(
        engine=engine,
        kind=kind,
        n_prompt=n_prompt,
        n_gen=n_gen,
        depth=values.get("depth", 0),
        settings=tuple(sorted(settings.items())),
        inprocess_reps=suite.inprocess_repetitions,
        warmup=suite.warmup,
    )
