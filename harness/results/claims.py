"""Published figures (claims/*.toml) checked against stored runs.

A claim is data: its source, the model, quantization, runtime, device and power mode it was
made under, the metric and the value. Fields the source does not give are unknown, never
guessed. A stored run is matched to a claim by model; every condition that differs (device,
quantization, runtime, power mode, context) is named beside the ratio measured / claimed,
so a ratio is never read as "the claim is wrong" when the conditions were not the same.
A claim no stored run can test says what would test it; `untested_line` folds all of those
into one line, so a report lists only what its runs tested.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import EdgebenchError
from harness.results.store import device_key

CLAIMS_DIR = Path(__file__).resolve().parents[1] / "claims"
UNKNOWN = "unknown"
# metric -> the unit its value must carry ("runs": the claim is only that the model runs there)
METRIC_UNITS: dict[str, str | None] = {"prefill_tps": "tok/s", "decode_tps": "tok/s", "runs": None}
_TEXT = ("model", "parameters", "quantization", "runtime", "device", "power_mode", "stated", "note")
_KEYS = {"id", "source", "metric", "value", "unit", "context_length", "cpu_cores", "assumed", *_TEXT}
_OUR_RUNTIME = "llama.cpp"


class ClaimsError(EdgebenchError):
    """A claims file that cannot be trusted: names the file, the claim and the key."""


@dataclass(frozen=True)
class Claim:
    id: str
    source: str
    file: str
    metric: str
    value: float | None
    unit: str | None
    model: str = UNKNOWN
    parameters: str = UNKNOWN  # e.g. "1B" where the source gives a size but no model
    quantization: str = UNKNOWN
    runtime: str = UNKNOWN
    device: str = UNKNOWN
    power_mode: str = UNKNOWN
    context_length: int | None = None
    cpu_cores: int | None = None
    stated: str = UNKNOWN
    note: str = ""
    assumed: tuple[str, ...] = ()


def load_claims(folder: Path = CLAIMS_DIR) -> list[Claim]:
    """Every claim in `folder/*.toml`, validated; ids are unique across files. A missing
    folder is an error, not "no claims": an install without its data must not look clean."""
    if not Path(folder).is_dir():
        raise ClaimsError(f"no claims folder at {folder}")
    claims: list[Claim] = []
    for path in sorted(Path(folder).glob("*.toml")):
        claims.extend(parse_claims(path.read_text(encoding="utf-8"), path.name))
    seen: set[str] = set()
    for claim in claims:
        if claim.id in seen:
            raise ClaimsError(f"{claim.file}: claim id {claim.id!r} is used twice")
        seen.add(claim.id)
    return claims


def parse_claims(text: str, name: str) -> list[Claim]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClaimsError(f"{name}: not valid TOML: {exc}") from None
    unknown_top = set(data) - {"claim"}
    if unknown_top:
        raise ClaimsError(f"{name}: unknown top-level key(s) {sorted(unknown_top)}; claims go in [[claim]] tables")
    return [_claim(entry, f"{name}: claim #{i + 1}", name) for i, entry in enumerate(data.get("claim", []))]


def _claim(entry: dict[str, Any], where: str, name: str) -> Claim:
    def fail(key: str, why: str) -> ClaimsError:
        return ClaimsError(f"{where} ({entry.get('id', 'no id')}): key '{key}': {why}")

    extra = set(entry) - _KEYS
    if extra:
        raise fail(sorted(extra)[0], f"unknown key (known: {', '.join(sorted(_KEYS))})")
    for key in ("id", "source"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise fail(key, "required, a non-empty string (a document title or URL for 'source')")
    metric = entry.get("metric")
    if metric not in METRIC_UNITS:
        raise fail("metric", f"expected one of {', '.join(METRIC_UNITS)} (got {metric!r})")
    value, unit = entry.get("value"), entry.get("unit")
    if METRIC_UNITS[metric] is None:
        if value is not None or unit is not None:
            raise fail("value", f"a '{metric}' claim has no value or unit")
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise fail("value", f"a positive number (got {value!r})")
        if unit != METRIC_UNITS[metric]:
            raise fail("unit", f"'{metric}' is measured in {METRIC_UNITS[metric]} (got {unit!r})")
    for key in ("context_length", "cpu_cores"):
        if key in entry and (isinstance(entry[key], bool) or not isinstance(entry[key], int) or entry[key] <= 0):
            raise fail(key, f"a positive integer, or left out when unknown (got {entry[key]!r})")
    for key in _TEXT:
        if key in entry and not isinstance(entry[key], str):
            raise fail(key, f"a string (got {entry[key]!r})")
    assumed = entry.get("assumed", [])
    if not isinstance(assumed, list) or any(a not in _KEYS for a in assumed):
        raise fail("assumed", "a list of this claim's key names")
    return Claim(
        id=entry["id"], source=entry["source"], file=name, metric=metric,
        value=float(value) if value is not None else None, unit=unit,
        context_length=entry.get("context_length"), cpu_cores=entry.get("cpu_cores"), assumed=tuple(assumed),
        **{k: entry[k] for k in _TEXT if k in entry},
    )


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
        found.append(f"read from the source as: {', '.join(claim.assumed)} (the source says: {claim.stated})")
    return found


def check_claims(store: Any, claims: list[Claim], run_ids: list[str] | None = None) -> list[Check]:
    """Each claim against each given run (default: the latest run of every device and model)
    of a model it names; a claim with no such run gets one row saying what would test it."""
    runs = [_load_run(store, run_id) for run_id in (run_ids or _latest_runs(store))]
    checks = []
    for claim in claims:
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


def _latest_runs(store: Any) -> list[str]:
    latest: dict[tuple[str, str], str] = {}
    for row in store.runs():  # newest first
        latest.setdefault((device_key(row), row["model_sha256"]), row["id"])
    return list(latest.values())


def _load_run(store: Any, run_id: str) -> _Run:
    from harness.results.analysis import summary_frame, tidy_frame

    row = store.run(run_id)
    summary = summary_frame(tidy_frame(store, [row["id"]]))
    means = summary[summary["n"] > 0] if not summary.empty else pd.DataFrame(columns=["metric", "context", "case", "mean"])
    ran = any(e.status == "ok" for e in store.executions(row["id"]))
    return _Run(row["id"], row["device"], json.loads(row["facts_json"]), store.model_info(row["model_sha256"]), means, ran)
