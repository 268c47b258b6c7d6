"""Suite x model x device -> the concrete list of cases to run.

A case is one process invocation of one engine with every result-changing setting explicit,
so its identity (a hash of its definition) changes whenever anything that matters changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.plan.cores import Cluster
    from harness.plan.suites import Suite

# llama-bench settings that change the result: suite key -> (llama-bench flag, JSONL field).
LLAMABENCH_SETTINGS: dict[str, tuple[str, str]] = {
    "threads": ("-t", "n_threads"),
    "cpu_mask": ("-C", "cpu_mask"),
    "cpu_strict": ("--cpu-strict", "cpu_strict"),
    "poll": ("--poll", "poll"),
    "n_gpu_layers": ("-ngl", "n_gpu_layers"),
    "flash_attn": ("-fa", "flash_attn"),
    "cache_type_k": ("-ctk", "type_k"),
    "cache_type_v": ("-ctv", "type_v"),
    "batch": ("-b", "n_batch"),
    "ubatch": ("-ub", "n_ubatch"),
    "load_mode": ("-lm", "load_mode"),
    "delay": ("--delay", "delay"),  # seconds of cool-off before the test, outside its measured repetitions
}
# Settings that reach the benchmark process as environment variables, not flags: suite key ->
# variable. The Vulkan backend takes only discrete and integrated GPUs unless told which devices
# to use, so a CPU Vulkan device (Mesa's lavapipe) runs a case only when it is named here.
ENV_SETTINGS: dict[str, str] = {
    "vk_visible_devices": "GGML_VK_VISIBLE_DEVICES",
}


def env_prefix(case: Case) -> list[str]:
    """`env NAME=VALUE ...` to put before a case's program for its environment settings (none: []).
    In the argv, not the driver's environment, because the argv is what every driver runs, what
    the probe wraps and what is stored with each process: the device selection is recorded."""
    pairs = [f"{ENV_SETTINGS[key]}={value}" for key, value in case.settings if key in ENV_SETTINGS]
    return ["env", *pairs] if pairs else []


# The figure a case is run for: what a precision target is about, and what the progress shows.
PRIMARY_METRIC = {"prefill": "prefill_tps", "decode": "decode_tps", "pg": "pg_tps", "latency": "ttft_ms", "quality": "kld_mean"}


@dataclass(frozen=True)
class Case:
    """One benchmark test, run as `repetitions` separate processes by the runner.

    kind: "prefill" (n_prompt tokens, no generation), "decode" (n_gen tokens after `depth`
    tokens of context), "pg" (prompt then generation in one test), "latency" (pyllama:
    time to first token and inter-token latency for an n_prompt prompt and n_gen tokens), or
    "quality" (llama-perplexity: the output against the reference's over `chunks` windows of
    n_prompt tokens; `quality` names the chunks, corpus and reference by sha256, so a case
    scored against another reference is another case).
    """

    engine: str
    kind: str
    n_prompt: int
    n_gen: int
    depth: int
    settings: tuple[tuple[str, Any], ...] = ()
    inprocess_reps: int = 1
    warmup: bool = True
    quality: tuple[tuple[str, Any], ...] = ()

    def setting(self, name: str, default: Any = None) -> Any:
        return dict(self.settings).get(name, default)

    def quality_value(self, name: str) -> Any:
        return dict(self.quality).get(name)

    @property
    def runs_once(self) -> bool:
        """A quality case computes the same figures every time: one process, not one per round."""
        return self.kind == "quality"

    def processes(self, repetitions: int) -> int:
        """How many processes the case gets in a plan of `repetitions` rounds (before a precision target adds rounds)."""
        return 1 if self.runs_once else repetitions

    @property
    def primary_metric(self) -> str:
        return PRIMARY_METRIC[self.kind]

    @property
    def label(self) -> str:
        """Short human name, e.g. `prefill p512`, `decode n64 @d2048`."""
        parts = {
            "prefill": f"p{self.n_prompt}",
            "decode": f"n{self.n_gen}" + (f" @d{self.depth}" if self.depth else ""),
            "pg": f"p{self.n_prompt}+n{self.n_gen}",
            "latency": f"p{self.n_prompt}+n{self.n_gen}",
            "quality": f"c{self.n_prompt} x{self.quality_value('chunks')}"
            + (f" override {self.quality_value('override_kv')}" if self.quality_value("override_kv") else ""),
        }[self.kind]
        extra = " ".join(f"{k}={v}" for k, v in self.settings)
        return f"{self.kind} {parts}" + (f" [{extra}]" if extra else "")

    @property
    def context(self) -> int:
        """The context length the case exercises: what tables and plots use as x."""
        return {"prefill": self.n_prompt, "decode": self.depth, "pg": self.n_prompt, "latency": self.n_prompt,
                "quality": self.n_prompt}[self.kind]

    def to_json(self) -> dict[str, Any]:
        # "quality" only where there is one, so the keys of the speed cases stay what they were
        return ({"quality": dict(self.quality)} if self.quality else {}) | {
            "engine": self.engine,
            "kind": self.kind,
            "n_prompt": self.n_prompt,
            "n_gen": self.n_gen,
            "depth": self.depth,
            "settings": dict(self.settings),
            "inprocess_reps": self.inprocess_reps,
            "warmup": self.warmup,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Case":
        return cls(
            engine=data["engine"],
            kind=data["kind"],
            n_prompt=data["n_prompt"],
            n_gen=data["n_gen"],
            depth=data["depth"],
            settings=tuple(sorted(data["settings"].items())),
            inprocess_reps=data["inprocess_reps"],
            warmup=data["warmup"],
            quality=tuple(sorted(data.get("quality", {}).items())),
        )

    @property
    def key(self) -> str:
        """Stable hash of the definition: equal keys measure the same thing."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


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
    cores: Mapping[str, dict[str, Any]] = field(default_factory=dict)

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


_ENGINE_OF_KIND = {"prefill": "llamabench", "decode": "llamabench", "pg": "llamabench", "latency": "pyllama",
                   "quality": "perplexity"}


# llama-perplexity --kl-divergence prints its statistics only over this many scored tokens or more
MIN_SCORED_TOKENS = 100


@dataclass(frozen=True)
class QualityInputs:
    """What the quality cases are scored on: the corpus, and each [[quality]] reference as the
    suite names it ("self", a path) -> the sha256 of the reference model (or logits file)."""

    corpus_sha256: str
    references: Mapping[str, str]


def build_plan(suite: "Suite", *, context_length: int | None, host: bool, clusters: Sequence["Cluster"] = (),
               quality: QualityInputs | None = None) -> Plan:
    """Expand every sweep of the suite into cases for this device, dropping those that cannot run here.

    `threads` is resolved here from the device's core `clusters` into what the case's engine
    takes (llama-bench: a count and a mask; llama-cpp-python: a count), so the case that is
    checked, stored and compared is the one that runs. Cases longer than the model's context,
    in-process (host only) engines on a remote device, and settings an engine cannot apply
    are listed in `skipped` with their reason rather than silently dropped. A quality case
    keeps only the settings that change what the backend computes (so a batch-size sweep does
    not repeat it); without `quality` (--no-quality) it is skipped, and one longer than the
    model's context is an error, since its figure would be of another case.
    """
    from harness.engines import get_engine  # engines import Case from here
    from harness.plan.cores import resolve_threads  # cores imports Case from here

    cases: list[Case] = []
    cores: dict[str, dict[str, Any]] = {}
    skipped: list[tuple[str, str]] = []
    for spec in suite.tests:
        engine = get_engine(_ENGINE_OF_KIND[spec.kind])
        settings = {**suite.settings, **spec.settings}
        if spec.kind == "quality":
            settings = {k: v for k, v in settings.items() if k in engine.settings}
        for values in _product(spec.values):
            if spec.kind == "quality" and (why := _quality_problem(values, context_length, quality, suite.source)):
                skipped.append((f"quality c{values['context']}", why))
                continue
            for chosen in _product(settings):
                case, how = resolve_threads(_make_case(spec.kind, values, chosen, suite, quality), clusters,
                                            takes_mask="cpu_mask" in engine.settings)
                tokens = case.n_prompt + case.n_gen + case.depth
                if context_length is not None and tokens > context_length:
                    skipped.append((case.label, f"needs {tokens} tokens of context; the model has {context_length}"))
                elif engine.host_only and not host:
                    skipped.append((case.label, f"the {case.engine} engine runs on the host only"))
                elif case.setting("threads") in ("big", "all"):
                    skipped.append((case.label, f"threads = {case.setting('threads')!r}: the device's cores could not be read"))
                elif reason := engine.unsupported(case):
                    skipped.append((case.label, reason))
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
    from harness.errors import ConfigError

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


def _make_case(kind: str, values: dict[str, Any], settings: dict[str, Any], suite: "Suite",
               quality: QualityInputs | None = None) -> Case:
    if kind == "quality" and quality is not None:
        chosen = {"chunks": values["chunks"], "corpus": quality.corpus_sha256,
                  "reference": quality.references[values["reference"]], "override_kv": values.get("override_kv")}
        return Case(engine="perplexity", kind=kind, n_prompt=values["context"], n_gen=0, depth=0,
                    settings=tuple(sorted(settings.items())), inprocess_reps=1, warmup=False,
                    quality=tuple(sorted((k, v) for k, v in chosen.items() if v is not None)))
    n_prompt = values.get("prompt", 0) if kind != "decode" else 0
    n_gen = values.get("tokens", 0)
    return Case(
        engine=_ENGINE_OF_KIND[kind],
        kind=kind,
        n_prompt=n_prompt,
        n_gen=n_gen,
        depth=values.get("depth", 0),
        settings=tuple(sorted(settings.items())),
        inprocess_reps=suite.inprocess_repetitions,
        warmup=suite.warmup,
    )
