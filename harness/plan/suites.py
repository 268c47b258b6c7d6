"""Suite files (TOML) -> validated, frozen dataclasses.

A suite is data, not code: which tests to run (prefill, decode at depth, latency), how often,
and every llama-bench setting that changes the result, each a value or a list to sweep.
Every validation error names the file, the key and what was expected.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

from harness.engines import ENV_SETTINGS
from harness.engines.llamabench import LLAMABENCH_SETTINGS
from harness.engines.openvino import DEVICE_SETTING, OPENVINO_PROPERTIES
from harness.engines.server import SERVER_SETTINGS
from harness.errors import ConfigError

GGML_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
FLASH_ATTN = ("on", "off", "auto")
LOAD_MODES = ("auto", "none", "mmap", "mlock", "mmap+mlock", "dio")
# burst: before each case wait (bounded) until the device is back near its idle temperature;
# sustained: repeat the suite's rounds for `sustained_minutes` and report the drift;
# none: run back to back.
MODES = ("burst", "sustained", "none")
# the runtime axis: suite key `runtime` (a list sweeps) and `--runtime`; each runs its own engines (harness.plan.planner)
RUNTIMES = ("llama.cpp", "openvino")
DEFAULT_RUNTIMES = ("llama.cpp",)
# Gate defaults, set from measurements (see the quality section of the README): a device whose
# backend computes right stays far inside both; a lossy setting or a wrong kernel lands outside.
QUALITY_MAX_KLD = 0.02
QUALITY_MIN_TOP1 = 90.0
# The server's greedy check (docs/quality.md): a backend that computes right matches the host's
# greedy tokens on most prompts; a near-tie may flip one prompt's token on another backend, so
# one prompt of the four may differ. A wrong setting (rope base) matches none.
GREEDY_MIN_EXACT = 75.0


def _int_in(lo: int, hi: int | None = None) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: v in choices


PRECISION_EXPECTED = 'a percentage above 0 and below 100, like "2%"'


def _percent(value: Any) -> float | None:
    """"2%" (or 2, or "2") -> 0.02; None when it is not a percentage in (0, 100)."""
    text = value.strip().removesuffix("%").strip() if isinstance(value, str) else value
    try:
        number = float(text) if not isinstance(text, bool) else None
    except (TypeError, ValueError):
        return None
    return number / 100 if number is not None and 0 < number < 100 else None


def parse_precision(value: Any, source: str = "--precision") -> float:
    """A precision target as given (`--precision 2%`) -> the share of the mean (0.02)."""
    share = _percent(value)
    if share is None:
        raise ConfigError(source, "precision", PRECISION_EXPECTED, value)
    return share


# setting -> (check, what was expected). Booleans are accepted where llama-bench takes 0|1.
SETTING_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    # "big": the performance cluster, "all": every core (resolved per device by harness.plan.cores)
    "threads": (lambda v: v in ("big", "all") or _int_in(1)(v), 'a positive integer, "big" or "all"'),
    "cpu_mask": (lambda v: isinstance(v, str) and re.fullmatch(r"0x[0-9a-fA-F]+", v) is not None, 'a hex mask like "0x3"'),
    "cpu_strict": (lambda v: isinstance(v, bool) or v in (0, 1), "true/false or 0/1"),
    "poll": (_int_in(0, 100), "an integer from 0 to 100"),
    "n_gpu_layers": (_int_in(-1), "an integer >= -1 (-1: all layers)"),
    "flash_attn": (_one_of(FLASH_ATTN), "one of " + ", ".join(FLASH_ATTN)),
    "cache_type_k": (_one_of(GGML_CACHE_TYPES), "one of " + ", ".join(GGML_CACHE_TYPES)),
    "cache_type_v": (_one_of(GGML_CACHE_TYPES), "one of " + ", ".join(GGML_CACHE_TYPES)),
    "batch": (_int_in(1), "a positive integer"),
    "ubatch": (_int_in(1), "a positive integer"),
    "load_mode": (_one_of(LOAD_MODES), "one of " + ", ".join(LOAD_MODES)),
    "delay": (_int_in(0), "whole seconds >= 0"),
    "vk_visible_devices": (lambda v: re.fullmatch(r"\d+(,\d+)*", str(v)) is not None and not isinstance(v, bool),
                           'Vulkan device indices like 0 or "0,1"'),
    # OpenVINO's (harness.engines.openvino): names checked here, values by OpenVINO when the case loads
    DEVICE_SETTING: (lambda v: isinstance(v, str) and re.fullmatch(r"[A-Z]+(\.\d+)?", v) is not None, 'an OpenVINO device: "CPU", "GPU", "GPU.1", "NPU"'),
    "kv_cache_precision": (lambda v: isinstance(v, str) and v != "", 'an element type OpenVINO takes, e.g. "u8", "f16", "f32"'),
    "inference_precision": (lambda v: isinstance(v, str) and v != "", 'an element type OpenVINO takes, e.g. "bf16", "f16", "f32"'),
    "dynamic_quantization_group_size": (_int_in(0), "an integer >= 0 (0: no dynamic quantization)"),
    "num_streams": (_int_in(1), "a positive integer"),
    "rope_freq_base": (lambda v: _is_number(v) and v > 0, "a positive number (llama-server --rope-freq-base)"),
}
assert set(SETTING_CHECKS) == (set(LLAMABENCH_SETTINGS) | set(ENV_SETTINGS) | set(SERVER_SETTINGS) | set(OPENVINO_PROPERTIES)
                             | {DEVICE_SETTING}), "every setting needs a check"

# test section -> {key: (required, check, expected)}; each section is a table or an array of tables.
_COUNT = (_int_in(1), "a positive integer or a list of them")
_DEPTH = (_int_in(0), "a non-negative integer or a list of them")
_TEXT = (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string or a list of them")
TEST_SECTIONS: dict[str, dict[str, tuple[bool, Callable[[Any], bool], str]]] = {
    "prefill": {"prompt": (True, *_COUNT)},
    "decode": {"tokens": (True, *_COUNT), "depth": (False, *_DEPTH)},
    "pg": {"prompt": (True, *_COUNT), "tokens": (True, *_COUNT)},
    "latency": {"prompt": (True, *_COUNT), "tokens": (True, *_COUNT)},
    # requests to llama-server on the device: `concurrency` streams at a time (the server gets as
    # many slots), `requests` in all (default: 4 per stream)
    "serve": {"prompt": (True, *_COUNT), "tokens": (True, *_COUNT), "concurrency": (False, *_COUNT), "requests": (False, *_COUNT)},
    # output quality against a reference: "self" (the model under test: a check of the device's
    # backend) or a GGUF / logits file path; override_kv (KEY=TYPE:VALUE) changes the model on the
    # device side only, which is how a test makes a backend that computes wrongly
    "quality": {"context": (False, _int_in(16), "an integer >= 16 or a list of them"), "chunks": (False, *_COUNT),
                "reference": (False, *_TEXT),
                "override_kv": (False, lambda v: isinstance(v, str) and "=" in v, "KEY=TYPE:VALUE (llama.cpp --override-kv)")},
}
# what a [[quality]] entry leaves out
QUALITY_DEFAULTS: dict[str, tuple[Any, ...]] = {"context": (512,), "chunks": (1,), "reference": ("self",)}

TOP_LEVEL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "repetitions": (_int_in(1), "a positive integer (separate processes per case)"),
    "inprocess_repetitions": (_int_in(1), "a positive integer (llama-bench -r)"),
    "warmup": (lambda v: isinstance(v, bool), "true or false"),
    "timeout_s": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a positive number of seconds"),
    "mode": (lambda v: v in MODES, "one of " + ", ".join(MODES)),
    "cooldown_tolerance_c": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a positive number of °C"),
    "cooldown_max_s": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "a number of seconds >= 0"),
    "sustained_minutes": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a positive number of minutes"),
    # others' CPU (% of one core) above which a figure is marked contended; burst mode waits for less
    "contention_threshold_pct": (lambda v: _is_number(v) and v > 0, "a positive number (% of one core)"),
    "quiet_max_s": (lambda v: _is_number(v) and v >= 0, "a number of seconds >= 0"),
    # a 95% CI half-width target for each case's primary figure, as a share of its mean
    "precision": (lambda v: _percent(v) is not None, PRECISION_EXPECTED),
    "max_repetitions": (_int_in(1), "a positive integer (the most processes a precision target may give a case)"),
    # the correctness gate: a quality case against the model under test past either of these
    # marks the run's speed figures "output differs from the host reference"
    "quality_max_kld": (lambda v: _is_number(v) and v > 0, "a positive number (mean KL divergence, nats)"),
    "quality_min_top1": (lambda v: _is_number(v) and 0 < v <= 100, "a percentage above 0, at most 100"),
    # the same gate for server cases: a greedy exact-match share (%) below this marks them
    "greedy_min_exact": (lambda v: _is_number(v) and 0 < v <= 100, "a percentage above 0, at most 100"),
    "runtime": (lambda v: all(r in RUNTIMES for r in _as_list(v)) and _as_list(v) != (),
                "one of " + ", ".join(RUNTIMES) + " or a list of them"),
}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class TestSpec:
    """One test section entry: its kind, sweep values and the settings it overrides."""

    kind: str
    values: dict[str, tuple[int, ...]]
    settings: dict[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    name: str
    source: str  # file path, or "builtin:<name>"
    description: str = ""
    repetitions: int = 3
    inprocess_repetitions: int = 2
    warmup: bool = True
    timeout_s: float = 900.0
    mode: str = "burst"
    cooldown_tolerance_c: float = 3.0
    cooldown_max_s: float = 120.0
    sustained_minutes: float = 10.0
    contention_threshold_pct: float = 10.0
    quiet_max_s: float = 30.0
    precision: float | None = None  # share of the mean, e.g. 0.02; None: `repetitions` rounds, no more
    max_repetitions: int = 10
    quality_max_kld: float = QUALITY_MAX_KLD
    quality_min_top1: float = QUALITY_MIN_TOP1
    greedy_min_exact: float = GREEDY_MIN_EXACT
    runtimes: tuple[str, ...] = DEFAULT_RUNTIMES
    settings: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    tests: tuple[TestSpec, ...] = ()
    text: str = ""  # the file as read: stored with the run

    def __post_init__(self) -> None:
        if self.precision is None:
            return
        if self.mode == "sustained":
            raise ConfigError(self.source, "precision", "no precision target in sustained mode (its minutes decide the rounds)", f"{self.precision * 100:g}%")
        if self.max_repetitions < self.repetitions:
            raise ConfigError(self.source, "max_repetitions", f"at least repetitions ({self.repetitions})", self.max_repetitions)

    def with_overrides(self, repetitions: int | None = None, settings: dict[str, tuple[Any, ...]] | None = None,
                       mode: str | None = None, minutes: float | None = None,
                       contention_threshold_pct: float | None = None, *,
                       precision: float | None = None, max_repetitions: int | None = None,
                       runtimes: tuple[str, ...] = ()) -> "Suite":
        from dataclasses import replace

        if mode is not None and mode not in MODES:
            raise ConfigError("--mode", "mode", "one of " + ", ".join(MODES), mode)
        if contention_threshold_pct is not None and not contention_threshold_pct > 0:
            raise ConfigError("--contention-threshold", "contention_threshold_pct", "a positive number (% of one core)",
                              contention_threshold_pct)
        return replace(
            self,
            mode=mode or self.mode,
            contention_threshold_pct=contention_threshold_pct or self.contention_threshold_pct,
            sustained_minutes=minutes or self.sustained_minutes,
            repetitions=repetitions or self.repetitions,
            precision=precision or self.precision,
            max_repetitions=max_repetitions or self.max_repetitions,
            settings={**self.settings, **(settings or {})},
            runtimes=check_runtimes(runtimes) or self.runtimes,
        )


def check_runtimes(runtimes: Sequence[str]) -> tuple[str, ...]:
    """`--runtime` values, each once, in the order given; an unknown one names the valid ones."""
    for runtime in runtimes:
        if runtime not in RUNTIMES:
            raise ConfigError("--runtime", "runtime", "one of " + ", ".join(RUNTIMES), runtime)
    return tuple(dict.fromkeys(runtimes))


def builtin_suites() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("harness").joinpath("suites").iterdir() if p.name.endswith(".toml"))


def load_suite(spec: str) -> Suite:
    """A built-in suite name (`quick`, `context-sweep`) or a path to a TOML file."""
    path = Path(spec)
    if path.suffix == ".toml" or path.exists() or "/" in spec:
        if not path.is_file():
            raise ConfigError(spec, "(file)", "an existing suite TOML file", "no such file")
        return parse_suite(path.read_text(encoding="utf-8"), str(path))
    resource = resources.files("harness").joinpath("suites", f"{spec}.toml")
    if not resource.is_file():
        raise ConfigError(spec, "(suite)", "a built-in suite (" + ", ".join(builtin_suites()) + ") or a .toml path")
    return parse_suite(resource.read_text(encoding="utf-8"), f"builtin:{spec}")


def parse_suite(text: str, source: str) -> Suite:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(syntax)", "valid TOML", str(exc)) from None
    known = set(TOP_LEVEL) | set(TEST_SECTIONS) | {"settings"}
    for key in data:
        if key not in known:
            raise ConfigError(source, key, "one of " + ", ".join(sorted(known)), "unknown key")
    top: dict[str, Any] = {}
    for key, (check, expected) in TOP_LEVEL.items():
        if key in data:
            if not check(data[key]):
                raise ConfigError(source, key, expected, data[key])
            top[key] = data[key]
    if "precision" in top:
        top["precision"] = parse_precision(top["precision"], source)
    if "runtime" in top:
        top["runtimes"] = tuple(dict.fromkeys(_as_list(top.pop("runtime"))))
    settings = _settings(data.get("settings", {}), source, "settings")
    tests = tuple(spec for kind in TEST_SECTIONS for spec in _tests(data, kind, source))
    if not tests:
        raise ConfigError(source, "(tests)", "at least one of " + ", ".join(f"[[{k}]]" for k in TEST_SECTIONS))
    return Suite(
        name=top.pop("name", Path(source.removeprefix("builtin:")).stem),
        source=source,
        settings=settings,
        tests=tests,
        text=text,
        **top,
    )


def _as_list(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list) else (value,)


def _sweep(value: Any, check: Callable[[Any], bool], source: str, key: str, expected: str) -> tuple[Any, ...]:
    values = _as_list(value)
    if not values:
        raise ConfigError(source, key, expected, "an empty list")
    for item in values:
        if not check(item):
            raise ConfigError(source, key, expected, item)
    return values


def _settings(table: Any, source: str, prefix: str) -> dict[str, tuple[Any, ...]]:
    if not isinstance(table, dict):
        raise ConfigError(source, prefix, "a table of llama-bench settings", table)
    out = {}
    for key, value in table.items():
        if key not in SETTING_CHECKS:
            raise ConfigError(source, f"{prefix}.{key}", "a setting among " + ", ".join(sorted(SETTING_CHECKS)), "unknown key")
        check, expected = SETTING_CHECKS[key]
        out[key] = _sweep(value, check, source, f"{prefix}.{key}", expected + " (or a list to sweep)")
    return out


def parse_setting_overrides(pairs: list[str]) -> dict[str, tuple[Any, ...]]:
    """`KEY=V[,V...]` from the command line, typed like the TOML values and validated the same way."""
    table: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError("--set", pair, "KEY=VALUE[,VALUE...]")
        table[key.strip()] = [_typed(v.strip()) for v in raw.split(",")]
    return _settings(table, "--set", "settings")


def _typed(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _tests(data: dict[str, Any], kind: str, source: str) -> list[TestSpec]:
    if kind not in data:
        return []
    entries = data[kind] if isinstance(data[kind], list) else [data[kind]]
    specs = []
    schema = TEST_SECTIONS[kind]
    for i, entry in enumerate(entries):
        where = f"{kind}[{i}]" if isinstance(data[kind], list) else kind
        if not isinstance(entry, dict):
            raise ConfigError(source, where, "a table", entry)
        values, overrides = {}, {}
        for key, value in entry.items():
            if key in schema:
                _, check, expected = schema[key]
                values[key] = _sweep(value, check, source, f"{where}.{key}", expected)
            elif key in SETTING_CHECKS:
                overrides.update(_settings({key: value}, source, where))
            else:
                allowed = sorted(schema) + sorted(SETTING_CHECKS)
                raise ConfigError(source, f"{where}.{key}", "one of " + ", ".join(allowed), "unknown key")
        for key, (required, _, expected) in schema.items():
            if required and key not in values:
                raise ConfigError(source, f"{where}.{key}", expected, "missing")
        if kind == "quality":
            values = {**QUALITY_DEFAULTS, **values}
        specs.append(TestSpec(kind=kind, values=values, settings=overrides))
    return specs
