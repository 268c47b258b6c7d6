"""Published figures (claims/*.toml) checked against stored runs.

A claim is data: its source, the model, quantization, runtime, device and power mode it was
made under, the metric and the value. Fields the source does not give are unknown, never
guessed. A stored run is matched to a claim by model; every condition that differs (device,
quantization, runtime, power mode, context) is named beside the ratio measured / claimed,
so a ratio is never read as "the claim is wrong" when the conditions were not the same.
A claim no stored run can test says what would test it; `untested_line` folds all of those
into one line, so a report lists only what its runs tested.

A ratio claim (`kind = "ratio"`) is a figure between a base model and its compressed variant
("80-95% smaller", "4-12x faster"). It is checked against a sweep's frontier frame (the base
and its quantized variants as measured on one device), never against a single run, so
`check_claims` passes it over and `check_ratio_claims` takes it. A ratio edgebench cannot
measure (task accuracy) is listed as not testable, with the reason, never given a verdict.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from harness.errors import EdgebenchError
from harness.store.db import Store

CLAIMS_DIR = Path(__file__).resolve().parents[1] / "claims"
UNKNOWN = "unknown"
# metric -> the unit its value must carry ("runs": the claim is only that the model runs there)
METRIC_UNITS: dict[str, str | None] = {"prefill_tps": "tok/s", "decode_tps": "tok/s", "runs": None}
_TEXT = ("model", "parameters", "quantization", "runtime", "device", "power_mode", "stated", "note")
_KEYS = {"kind", "id", "source", "metric", "value", "unit", "context_length", "cpu_cores", "assumed", *_TEXT}
_RATIO_TEXT = ("model", "method", "device", "stated", "note")
_RATIO_BOUNDS = ("value", "value_low", "value_high")
_RATIO_KEYS = {"kind", "id", "source", "metric", "variant_bits", "base_bits", "assumed", *_RATIO_BOUNDS, *_RATIO_TEXT}
_OUR_RUNTIME = "llama.cpp"
# Sources round their figures and no measured ratio equals one to the last digit, so a point
# ratio ("~4x smaller") holds for a measurement within this fraction of it; said beside the figure.
POINT_TOLERANCE = 0.05
TERNARY_BITS = 1.58  # as ternary ("1.58-bit") models are named: log2(3) bits a weight
NOT_TESTABLE = "not testable"


class ClaimsError(EdgebenchError):
    """A claims file that cannot be trusted: names the file, the claim and the key."""


@dataclass(frozen=True, kw_only=True)
class Published:
    """What a claim of any kind holds: where its figure comes from, what it was made on, and
    what we read into the source's words (`assumed`, beside the words themselves)."""

    id: str
    source: str
    file: str
    metric: str
    model: str = UNKNOWN
    device: str = UNKNOWN
    stated: str = UNKNOWN
    note: str = ""
    assumed: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Claim(Published):
    """A point figure of one run's metric ("41 tok/s"), or that a model runs at all."""

    value: float | None
    unit: str | None
    parameters: str = UNKNOWN  # e.g. "1B" where the source gives a size but no model
    quantization: str = UNKNOWN
    runtime: str = UNKNOWN
    power_mode: str = UNKNOWN
    context_length: int | None = None
    cpu_cores: int | None = None


@dataclass(frozen=True)
class RatioMetric:
    """How a claimed ratio is taken from a frontier frame: variant `column` / base `column`.

    `column` is None where edgebench measures nothing of the kind (task accuracy), so such a
    claim is listed as not testable instead of being held against a stand-in such as KLD.
    `device_bound`: the figure depends on the device (speed, energy), so a claim made on
    another device is a differing condition; file sizes and parameter counts do not.
    """

    column: str | None
    device_bound: bool


RATIO_METRICS: dict[str, RatioMetric] = {
    "size_ratio": RatioMetric("size_bytes", device_bound=False),
    "params_ratio": RatioMetric("n_params", device_bound=False),
    "decode_speedup": RatioMetric("decode_tps", device_bound=True),
    "energy_ratio": RatioMetric("energy_j_per_token", device_bound=True),
    "accuracy_drop_points": RatioMetric(None, device_bound=False),  # percentage points of task accuracy
    "performance_retained": RatioMetric(None, device_bound=False),  # fraction of the base's benchmark score
}
NOT_MEASURED_BY_EDGEBENCH = ("edgebench measures KLD, perplexity and top-1 agreement against the base, "
                             "not task accuracy, so this claim is not tested")


@dataclass(frozen=True, kw_only=True)
class RatioClaim(Published):
    """A claimed figure between a base model and its compressed variant (variant / base).

    Either a point `value` or a range `value_low`..`value_high` (inclusive; a bound left out
    is open, as in "over 85%"). `variant_bits` limits the claim to variants of that nominal
    width (an INT4 claim says nothing of Q8_0); `base_bits` is the base's precision the claim
    compares against, so a base that is itself quantized is named as a differing condition.
    """

    value: float | None = None
    value_low: float | None = None
    value_high: float | None = None
    method: str = UNKNOWN
    variant_bits: float | None = None
    base_bits: float | None = None

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        """Inclusive (low, high), None where open; a point is its value within POINT_TOLERANCE."""
        if self.value is not None:
            return self.value * (1 - POINT_TOLERANCE), self.value * (1 + POINT_TOLERANCE)
        return self.value_low, self.value_high

    @property
    def claimed(self) -> str:
        """The claimed figure as text: "0.25 (±5%)", "0.05-0.2", "≥ 0.85"."""
        if self.value is not None:
            return f"{self.value:g} (±{POINT_TOLERANCE:.0%})"
        if self.value_low is not None and self.value_high is not None:
            return f"{self.value_low:g}-{self.value_high:g}"
        return f"≥ {self.value_low:g}" if self.value_low is not None else f"≤ {self.value_high:g}"

    def holds_for(self, measured: float) -> bool:
        low, high = self.bounds
        return (low is None or measured >= low) and (high is None or measured <= high)


def load_claims(folder: Path = CLAIMS_DIR) -> list[Published]:
    """Every claim in `folder/*.toml`, validated; ids are unique across files. A missing
    folder is an error, not "no claims": an install without its data must not look clean."""
    if not Path(folder).is_dir():
        raise ClaimsError(f"no claims folder at {folder}")
    claims: list[Published] = []
    for path in sorted(Path(folder).glob("*.toml")):
        claims.extend(parse_claims(path.read_text(encoding="utf-8"), path.name))
    seen: set[str] = set()
    for claim in claims:
        if claim.id in seen:
            raise ClaimsError(f"{claim.file}: claim id {claim.id!r} is used twice")
        seen.add(claim.id)
    return claims


def parse_claims(text: str, name: str) -> list[Published]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClaimsError(f"{name}: not valid TOML: {exc}") from None
    unknown_top = set(data) - {"claim"}
    if unknown_top:
        raise ClaimsError(f"{name}: unknown top-level key(s) {sorted(unknown_top)}; claims go in [[claim]] tables")
    return [_claim(entry, f"{name}: claim #{i + 1}", name) for i, entry in enumerate(data.get("claim", []))]


_Fail = Callable[[str, str], ClaimsError]


def _claim(entry: dict[str, Any], where: str, name: str) -> Published:
    def fail(key: str, why: str) -> ClaimsError:
        return ClaimsError(f"{where} ({entry.get('id', 'no id')}): key '{key}': {why}")

    kind = entry.get("kind", "point")
    if kind not in _KINDS:
        raise fail("kind", f"expected one of {', '.join(_KINDS)}, or left out for a point figure (got {kind!r})")
    keys, text, build = _KINDS[kind]
    _check_shared(entry, keys, text, fail)
    return build(entry, name, fail)


def _check_shared(entry: dict[str, Any], keys: set[str], text: tuple[str, ...], fail: _Fail) -> None:
    """What every kind of claim must get right: known keys, its id and source, text as text."""
    extra = set(entry) - keys
    if extra:
        raise fail(sorted(extra)[0], f"unknown key (known: {', '.join(sorted(keys))})")
    for key in ("id", "source"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise fail(key, "required, a non-empty string (a document title or URL for 'source')")
    for key in text:
        if key in entry and not isinstance(entry[key], str):
            raise fail(key, f"a string (got {entry[key]!r})")
    assumed = entry.get("assumed", [])
    if not isinstance(assumed, list) or any(a not in keys for a in assumed):
        raise fail("assumed", "a list of this claim's key names")


def _is_number(value: Any) -> bool:
    """A finite TOML number: TOML allows `inf` and `nan`, and a bool is an int to Python."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _point_claim(entry: dict[str, Any], name: str, fail: _Fail) -> Claim:
    metric = entry.get("metric")
    if metric not in METRIC_UNITS:
        raise fail("metric", f"expected one of {', '.join(METRIC_UNITS)} (got {metric!r})")
    value, unit = entry.get("value"), entry.get("unit")
    if METRIC_UNITS[metric] is None:
        if value is not None or unit is not None:
            raise fail("value", f"a '{metric}' claim has no value or unit")
    else:
        if not _is_number(value) or value <= 0:
            raise fail("value", f"a positive number (got {value!r})")
        if unit != METRIC_UNITS[metric]:
            raise fail("unit", f"'{metric}' is measured in {METRIC_UNITS[metric]} (got {unit!r})")
    for key in ("context_length", "cpu_cores"):
        if key in entry and (isinstance(entry[key], bool) or not isinstance(entry[key], int) or entry[key] <= 0):
            raise fail(key, f"a positive integer, or left out when unknown (got {entry[key]!r})")
    return Claim(
        id=entry["id"], source=entry["source"], file=name, metric=metric,
        value=float(value) if value is not None else None, unit=unit,
        context_length=entry.get("context_length"), cpu_cores=entry.get("cpu_cores"), assumed=tuple(entry.get("assumed", [])),
        **{k: entry[k] for k in _TEXT if k in entry},
    )


def _ratio_claim(entry: dict[str, Any], name: str, fail: _Fail) -> RatioClaim:
    metric = entry.get("metric")
    if metric not in RATIO_METRICS:
        raise fail("metric", f"a ratio claim's metric is one of {', '.join(RATIO_METRICS)} (got {metric!r})")
    _check_bounds(entry, fail)
    for key in ("variant_bits", "base_bits"):
        if key in entry and (not _is_number(entry[key]) or entry[key] <= 0):
            raise fail(key, f"a positive number of bits per weight, or left out when unknown (got {entry[key]!r})")
    numbers = {k: float(entry[k]) for k in (*_RATIO_BOUNDS, "variant_bits", "base_bits") if k in entry}
    return RatioClaim(id=entry["id"], source=entry["source"], file=name, metric=metric, assumed=tuple(entry.get("assumed", [])),
                      **numbers, **{k: entry[k] for k in _RATIO_TEXT if k in entry})


def _check_bounds(entry: dict[str, Any], fail: _Fail) -> None:
    """A point `value`, or a range of `value_low` and/or `value_high`; never both, never none."""
    given = [k for k in _RATIO_BOUNDS if k in entry]
    if not given:
        raise fail("value", "required: a point `value`, or `value_low` and/or `value_high` for a range")
    if "value" in given and len(given) > 1:
        raise fail("value", "a point `value` or a range `value_low`/`value_high`, not both")
    for key in given:
        if not _is_number(entry[key]) or entry[key] < 0:
            raise fail(key, f"a number, 0 or more (got {entry[key]!r})")
    if len(given) == 2 and entry["value_low"] > entry["value_high"]:
        raise fail("value_low", f"above value_high ({entry['value_low']!r} > {entry['value_high']!r})")


_KINDS: dict[str, tuple[set[str], tuple[str, ...], Callable[[dict[str, Any], str, _Fail], Published]]] = {
    "point": (_KEYS, _TEXT, _point_claim),
    "ratio": (_RATIO_KEYS, _RATIO_TEXT, _ratio_claim),
}


@dataclass(frozen=True)
class Check:
    """One claim against one stored run, or against none (then `needs` says what would test it)."""

    claim: Claim
    run_id: str | None = None
    device: str | None = None
    model: str | None = None
    case: str | None = None
    measured: float | None = None
    ratio: float | None = None
    mismatches: tuple[str, ...] = field(default=())
    needs: str | None = None

    @property
    def verdict(self) -> str:
        if self.run_id is None:
            return "untested"
        if self.claim.metric == "runs":
            return "runs" if self.measured else "did not run"
        if self.measured is None:
            return "metric not measured"
        return "conditions differ" if self.mismatches else "same conditions"

    def to_json(self) -> dict[str, Any]:
        return {"claim": self.claim.id, "source": self.claim.source, "metric": self.claim.metric, "claimed": self.claim.value,
                "run_id": self.run_id, "device": self.device, "model": self.model, "case": self.case, "measured": self.measured,
                "ratio": self.ratio, "verdict": self.verdict, "mismatches": list(self.mismatches), "needs": self.needs}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", text.lower())


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9.]+", text.lower()) if w]


@dataclass(frozen=True)
class _Run:
    """What a stored run offers a claim: identity and the mean of each (case, metric)."""

    id: str
    device: str
    facts: dict[str, Any]
    model: dict[str, Any]
    means: pd.DataFrame  # summary rows with n > 0
    ran: bool

    @property
    def model_text(self) -> str:
        return f"{self.model.get('filename', '')} {self.model.get('name') or ''}"

    @property
    def device_text(self) -> str:
        extra = self.facts.get("extra", {})
        parts = [self.facts.get(k) for k in ("name", "cpu_model", "hostname")] + list(self.facts.get("gpus", []))
        parts += [extra.get(k) for k in ("model", "jetson_module", "soc", "board")]
        return " ".join(str(p) for p in parts if p)


def _model_matches(claim: Claim, run: _Run) -> bool:
    if claim.model != UNKNOWN:
        return _norm(claim.model) in _norm(run.model_text)
    size = re.fullmatch(r"([\d.]+)\s*([BM])", claim.parameters.strip(), re.I)
    if not size:
        return False
    scale = 1e9 if size.group(2).upper() == "B" else 1e6
    return round(run.model.get("parameter_count", 0) / scale) == round(float(size.group(1)))


def _device_matches(claim: Claim, run: _Run) -> bool:
    if claim.cpu_cores is not None:
        return run.facts.get("cores") == claim.cpu_cores
    have = set(_words(run.device_text))
    return claim.device != UNKNOWN and all(w in have for w in _words(claim.device))


def _pick_case(claim: Claim, run: _Run) -> tuple[pd.Series | None, str | None]:
    """The run's case closest to the claim's context; where the claim gives none, the shortest
    (the most favourable to the claim), named as a mismatch either way."""
    rows = run.means[run.means["metric"] == claim.metric]
    if rows.empty:
        return None, None
    if claim.context_length is None:
        best = rows.sort_values("context").iloc[0]
        return best, f"context: not stated by the claim{' (' + claim.note + ')' if claim.note else ''}; run measured at {best['context']}"
    best = rows.iloc[(rows["context"] - claim.context_length).abs().argsort().iloc[0]]
    differs = None if best["context"] == claim.context_length else f"context: claim {claim.context_length}, run measured at {best['context']}"
    return best, differs


def _conditions(claim: Claim, run: _Run) -> list[str]:
    runtime = f"{_OUR_RUNTIME} (llama-bench)"
    quant = run.model.get("quantization", UNKNOWN)
    power = run.facts.get("extra", {}).get("power_mode")
    power = power.get("name") if isinstance(power, dict) else power or UNKNOWN
    found = []
    if claim.model == UNKNOWN:
        found.append(f"model: the claim names none (a {claim.parameters} model); run: {run.model.get('filename')}")
    elif not re.search(r"\d(\.\d+)?\s*[bm]\b", claim.model, re.I):
        found.append(f"model size: the claim says {claim.model}, no size; run: {run.model.get('filename')}")
    if claim.quantization == UNKNOWN:
        found.append(f"quantization: not stated by the claim; run: {quant}")
    elif _norm(claim.quantization) != _norm(quant):
        found.append(f"quantization: claim {claim.quantization}, run {quant}")
    if claim.runtime == UNKNOWN:
        found.append(f"runtime: not stated by the claim; run: {runtime}")
    elif _norm(claim.runtime) not in (_norm(_OUR_RUNTIME), "llamacpp"):
        found.append(f"runtime: claim {claim.runtime}, run {runtime}")
    if not _device_matches(claim, run):
        found.append(f"device: claim {claim.device}, run {run.device} ({run.facts.get('cpu_model', UNKNOWN)})")
    elif claim.cpu_cores is not None:
        found.append(f"device: {claim.cpu_cores} cores as claimed; the rest of '{claim.device}' (clock) is not checked")
    if claim.power_mode != UNKNOWN and _norm(claim.power_mode) != _norm(str(power)):
        found.append(f"power mode: claim {claim.power_mode}, run {power}")
    if claim.assumed:
        found.append(_assumed_line(claim))
    return found


def _assumed_line(claim: Published) -> str:
    return f"read from the source as: {', '.join(claim.assumed)} (the source says: {claim.stated})"


def check_claims(store: Store, claims: Sequence[Published], run_ids: list[str] | None = None) -> list[Check]:
    """Each point claim against each given run (default: the latest run of every device and model)
    of a model it names; a claim with no such run gets one row saying what would test it.
    Ratio claims need a base and its variant, not one run: `check_ratio_claims` takes them."""
    runs = [_load_run(store, run_id) for run_id in (run_ids or _latest_runs(store))]
    checks = []
    for claim in (c for c in claims if isinstance(c, Claim)):
        matched = [run for run in runs if _model_matches(claim, run)]
        if not matched:
            checks.append(Check(claim, needs=f"needs: device {claim.device}, model {_wanted_model(claim)}"))
        for run in matched:
            checks.append(_check(claim, run))
    return checks


def _wanted_model(claim: Claim) -> str:
    return claim.model if claim.model != UNKNOWN else f"any {claim.parameters} model"


def untested_line(checks: list[Check]) -> str | None:
    """The claims no stored run tests, as one line: how many, and which devices with which
    models would test them; None when every claim was tested."""
    wanted: dict[str, list[str]] = {}
    untested = [c for c in checks if c.run_id is None]
    for check in untested:
        models = wanted.setdefault(check.claim.device, [])
        if _wanted_model(check.claim) not in models:
            models.append(_wanted_model(check.claim))
    if not untested:
        return None
    devices = "; ".join(f"{device} with {' or '.join(models)}" for device, models in wanted.items())
    more = " more" if len(untested) < len(checks) else ""
    return f"{len(untested)}{more} claim{'s' * (len(untested) > 1)} no stored run tests; a run would test them on: {devices}"


def _check(claim: Claim, run: _Run) -> Check:
    mismatches = _conditions(claim, run)
    base = {"run_id": run.id, "device": run.device, "model": run.model.get("filename")}
    if claim.metric == "runs":
        return Check(claim, measured=1.0 if run.ran else None, mismatches=tuple(mismatches), **base)
    row, context = _pick_case(claim, run)
    if row is None:
        return Check(claim, mismatches=(*mismatches, f"the run has no {claim.metric} figure"), **base)
    measured = float(row["mean"])
    return Check(claim, case=str(row["case"]), measured=measured, ratio=measured / claim.value if claim.value else None,
                 mismatches=tuple(mismatches + ([context] if context else [])), **base)


def _latest_runs(store: Store) -> list[str]:
    latest: dict[tuple[str, str], str] = {}
    for run in store.runs():  # newest first
        latest.setdefault((run.device_key, run.model_sha256), run.id)
    return list(latest.values())


def _load_run(store: Store, run_id: str) -> _Run:
    from harness.analysis.tables import summary_frame, tidy_frame

    run = store.run(run_id)
    summary = summary_frame(tidy_frame(store, [run.id]))
    means = summary[summary["n"] > 0] if not summary.empty else pd.DataFrame(columns=["metric", "context", "case", "mean"])
    ran = any(e.status == "ok" for e in store.executions(run.id))
    return _Run(run.id, run.device, run.facts, store.model_info(run.model_sha256), means, ran)


@dataclass(frozen=True)
class RatioCheck:
    """One ratio claim against one variant of one sweep (variant / the sweep's base), or
    against a whole sweep where no variant can test it; then `reason` says why and `measured`
    is None: a figure not measured is never shown."""

    claim: RatioClaim
    sweep: str
    device: str
    model: str  # the base's file
    variant: str | None = None  # its quantization type; None when no variant was compared
    run_ids: tuple[str, ...] = ()
    measured: float | None = None
    mismatches: tuple[str, ...] = field(default=())
    reason: str | None = None

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return NOT_TESTABLE
        return "within the claimed range" if self.claim.holds_for(self.measured) else "outside the claimed range"

    def describe(self) -> str:
        """One line: what was compared, measured against claimed, and what differs."""
        what = f"{self.claim.id} ({self.claim.metric}) on sweep {self.sweep}, {self.variant or 'its variants'} of {self.model} on {self.device}"
        if self.measured is None:
            return f"{what}: {NOT_TESTABLE}: {self.reason}"
        differs = f"; conditions differ: {'; '.join(self.mismatches)}" if self.mismatches else ""
        return f"{what}: measured {self.measured:.3g}, claimed {self.claim.claimed}: {self.verdict}{differs}"

    def to_json(self) -> dict[str, Any]:
        low, high = self.claim.bounds
        return {"claim": self.claim.id, "source": self.claim.source, "metric": self.claim.metric, "claimed": self.claim.claimed,
                "claimed_low": low, "claimed_high": high, "sweep": self.sweep, "run_ids": list(self.run_ids), "device": self.device,
                "model": self.model, "variant": self.variant, "measured": self.measured, "verdict": self.verdict,
                "mismatches": list(self.mismatches), "reason": self.reason}


def nominal_bits(quantization: str) -> float | None:
    """The bits per weight a llama.cpp type is named for: "Q4_K_M" and "IQ4_XS" 4, "TQ1_0"
    ternary, "BF16" 16; None for a name of no width. The file stores more (block scales,
    tensors kept wider), so these bits only select which variants a claim speaks of; the
    ratios compared are the measured ones."""
    found = re.match(r"(?P<ternary>TQ\d)|I?Q(?P<q>\d+)_|B?F(?P<f>\d+)$", quantization.upper())
    if found is None:
        return None
    return TERNARY_BITS if found["ternary"] else float(found["q"] or found["f"])


def check_ratio_claims(claims: Sequence[Published], frontier: pd.DataFrame) -> list[RatioCheck]:
    """Each ratio claim against every sweep of `frontier` (a frontier frame: one row per model
    of a sweep) that has its base and a variant. Pure over the frame, so it is tested without
    a store; point claims in `claims` are passed over (`check_claims` takes them)."""
    sweeps = _sweeps(frontier)
    return [check for claim in claims if isinstance(claim, RatioClaim)
            for base, variants in sweeps for check in _sweep_checks(claim, base, variants)]


def ratio_checks_for(store: Store, claims: Sequence[Published], run_ids: list[str]) -> list[RatioCheck]:
    """`check_ratio_claims` over the frontier frame of these runs' sweeps. The frame's module is
    imported here, not at the top, so that point claims never load the quality analysis."""
    from harness.analysis.quality import frontier_frame

    return check_ratio_claims(claims, frontier_frame(store, run_ids))


def _sweeps(frontier: pd.DataFrame) -> list[tuple[pd.Series, pd.DataFrame]]:
    """Each sweep's base row and variant rows; a sweep lacking either has no ratio to take.
    Two bases in one sweep would leave "the" base to a guess, so that is an error."""
    found = []
    for sweep, rows in frontier.groupby("sweep", sort=False):
        is_base = rows["is_base"].astype(bool)
        base, variants = rows[is_base], rows[~is_base]
        if len(base) > 1:
            raise ValueError(f"sweep {sweep} has {len(base)} base rows in the frontier frame")
        if len(base) and len(variants):
            found.append((base.iloc[0], variants))
    return found


def _sweep_checks(claim: RatioClaim, base: pd.Series, variants: pd.DataFrame) -> list[RatioCheck]:
    where = {"sweep": str(base["sweep"]), "device": str(base["device"]), "model": str(base["model"])}
    if RATIO_METRICS[claim.metric].column is None:
        return [RatioCheck(claim, **where, run_ids=(str(base["run_id"]),), reason=NOT_MEASURED_BY_EDGEBENCH)]
    if claim.variant_bits is not None:
        matching = variants[variants["variant"].map(nominal_bits) == claim.variant_bits]
        if matching.empty:
            have = ", ".join(variants["variant"].astype(str))
            return [RatioCheck(claim, **where, run_ids=(str(base["run_id"]),),
                               reason=f"the claim is about {claim.variant_bits:g}-bit variants; this sweep has none (it has {have})")]
        variants = matching
    return [_variant_check(claim, base, variant, where) for _, variant in variants.iterrows()]


def _variant_check(claim: RatioClaim, base: pd.Series, variant: pd.Series, where: dict[str, str]) -> RatioCheck:
    column = RATIO_METRICS[claim.metric].column
    name = str(variant["variant"])
    mine, theirs = _measured(variant[column]), _measured(base[column])
    missing = [who for who, figure in (("the base", theirs), (f"the variant {name}", mine)) if figure is None]
    return RatioCheck(
        claim, **where, variant=name, run_ids=tuple(dict.fromkeys((str(base["run_id"]), str(variant["run_id"])))),
        measured=mine / theirs if mine is not None and theirs is not None else None,
        mismatches=tuple(_ratio_conditions(claim, base, variant)),
        reason=f"{column} was not measured for {' and '.join(missing)} in this sweep" if missing else None)


def _measured(value: Any) -> float | None:
    """A frame cell as a figure: missing, NaN or not positive is no measurement (a size, a
    speed or an energy of 0 is a failed reading, and nothing to divide by)."""
    return None if value is None or pd.isna(value) or value <= 0 else float(value)


def _ratio_conditions(claim: RatioClaim, base: pd.Series, variant: pd.Series) -> list[str]:
    found = [_model_line(claim, str(base["model"])), _method_line(claim, str(variant["variant"])), _base_line(claim, base)]
    if RATIO_METRICS[claim.metric].device_bound:
        found.append(_device_line(claim, str(base["device"])))
    if claim.assumed:
        found.append(_assumed_line(claim))
    return [line for line in found if line]


def _model_line(claim: RatioClaim, model: str) -> str | None:
    if claim.model == UNKNOWN:
        return f"model: the claim names none; sweep: {model}"
    return None if _norm(claim.model) in _norm(model) else f"model: claim {claim.model}, sweep {model}"


def _method_line(claim: RatioClaim, variant: str) -> str:
    """Always a line: a sweep's variants come from llama.cpp's quantizer, which no published
    compression method is, even one with the same nominal bits."""
    said = "not stated by the claim;" if claim.method == UNKNOWN else f"claim {claim.method},"
    return f"method: {said} variant llama.cpp quantization {variant}"


def _base_line(claim: RatioClaim, base: pd.Series) -> str | None:
    """The base's precision, as its file measures it (size x 8 / parameters): a ratio from a
    base that is itself quantized is not one from the 16-bit base a claim compares against."""
    size, params = _measured(base["size_bytes"]), _measured(base["n_params"])
    bits = size * 8 / params if size is not None and params is not None else None
    if bits is not None and claim.base_bits is not None and round(bits) == claim.base_bits:
        return None
    has = f"stores {bits:.1f} bits per weight (size x 8 / parameters)" if bits is not None else "has no parameter count, so its precision is not known"
    said = "precision not stated by the claim;" if claim.base_bits is None else f"claim a {claim.base_bits:g}-bit base,"
    return f"base: {said} the sweep's base {base['model']} {has}"


def _device_line(claim: RatioClaim, device: str) -> str | None:
    if claim.device == UNKNOWN:
        return f"device: not stated by the claim; sweep: {device}"
    return None if set(_words(claim.device)) <= set(_words(device)) else f"device: claim {claim.device}, sweep {device}"
