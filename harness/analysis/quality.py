"""Output quality beside speed: each quality case's figures, the correctness gate, the frontier.

The gate: where a quality case's reference is the model under test, its KL divergence and
top-1 agreement say whether the device's backend computes what the host CPU computes. Past the
suite's thresholds (`quality_max_kld`, `quality_min_top1`), every speed figure the quality case
governs (same numerics settings where both name one) carries "output differs from the host
reference", and nothing calls it faster. Against another reference (a base model, `--quantize`)
the figures are the cost of the quantization, not a verdict on the backend.

A server case has no logits; its greedy check (harness.engines.greedy) is its gate: a greedy
exact-match share below the suite's `greedy_min_exact` marks that case's figures the same way.

The frontier: one row per run, with size, decode speed, J/token, KLD and perplexity; the runs
of one `--quantize` sweep share its id (a run of no sweep is a sweep of one, with no base), and
the Pareto-best rows of a sweep have no other row at least as fast with at most the same KLD.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.engines import get_engine
from harness.engines.greedy import GREEDY_METRICS
from harness.plan.planner import case_label
from harness.plan.suites import GREEDY_MIN_EXACT, QUALITY_MAX_KLD, QUALITY_MIN_TOP1
from harness.records import Case
from harness.store.db import Store

FIGURES = ("ppl", "ppl_stderr", "ppl_base", "kld_mean", "kld_stderr", "kld_p99", "top1_agreement", "top1_stderr", "rms_dp")


@dataclass(frozen=True)
class QualityResult:
    """One quality case of one run: its figures (None where it has none), and the gate's verdict
    (`differs` None where the gate does not apply: another reference, or no figures)."""

    run_id: str
    case: Case
    status: str  # ok | failed | timeout | oom | not run
    figures: dict[str, float]
    reference: str  # what it was scored against, in words
    against_model: bool  # the reference is the model under test
    corpus: str
    max_kld: float
    min_top1: float
    error: str | None = None

    @property
    def differs(self) -> bool | None:
        if not self.against_model or "kld_mean" not in self.figures or "top1_agreement" not in self.figures:
            return None
        return self.figures["kld_mean"] > self.max_kld or self.figures["top1_agreement"] < self.min_top1

    def mark(self) -> str:
        return (f"output differs from the host reference (KLD {self.figures['kld_mean']:.4g}, "
                f"top-1 {self.figures['top1_agreement']:.1f}%)")

    def verdict(self) -> str:
        if self.status != "ok":
            return f"{self.status}: no quality figure"
        if self.differs is None:
            return f"vs {self.reference}: the cost of the difference, no gate"
        if self.differs:
            return self.mark()
        return f"same output as the host reference (gate: KLD ≤ {self.max_kld:g}, top-1 ≥ {self.min_top1:g}%)"

    def line(self) -> str:
        """The one line `edgebench run` prints beside its speed table."""
        f = self.figures
        if self.status != "ok" or "ppl" not in f:
            return f"{case_label(self.case)}: {self.verdict()}"
        return (f"{case_label(self.case)} on {self.corpus}: PPL {f['ppl']:.3f} ± {f.get('ppl_stderr', math.nan):.3f} · "
                f"KLD {f.get('kld_mean', math.nan):.3g} (p99 {f.get('kld_p99', math.nan):.3g}) · "
                f"top-1 {f.get('top1_agreement', math.nan):.2f}% · RMS Δp {f.get('rms_dp', math.nan):.3f}% · {self.verdict()}")

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "case": case_label(self.case), "case_key": self.case.key, "status": self.status,
                **self.figures, "reference": self.reference, "against_model": self.against_model, "corpus": self.corpus,
                "gate": {"max_kld": self.max_kld, "min_top1": self.min_top1}, "differs": self.differs, "verdict": self.verdict(),
                "error": self.error}


def _suite_keys(suite_text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(suite_text or "")
    except tomllib.TOMLDecodeError:
        return {}


def thresholds(suite_text: str) -> tuple[float, float]:
    """The run's gate (its suite's keys, else the defaults); the suite was validated when it ran."""
    data = _suite_keys(suite_text)
    return float(data.get("quality_max_kld", QUALITY_MAX_KLD)), float(data.get("quality_min_top1", QUALITY_MIN_TOP1))


def quality_results(store: Store, run_id: str) -> list[QualityResult]:
    run = store.run(run_id)
    cases = [c for c in store.cases(run.id) if c.kind == "quality"]
    if not cases:
        return []
    facts = run.facts.get("quality", {})
    max_kld, min_top1 = thresholds(run.suite_text)
    figures: dict[str, dict[str, float]] = {}
    for m in store.measurements([run.id]):
        if m["status"] == "ok" and m["metric"] in FIGURES and m["value"] is not None:
            figures.setdefault(m["case_key"], {})[m["metric"]] = float(m["value"])
    latest = {e.case_key: e for e in store.executions(run.id)}
    out = []
    for case in cases:
        ref = facts.get("references", {}).get(case.key, {})
        execution = latest.get(case.key)
        status = "not run" if execution is None else ("ok" if case.key in figures else execution.status)
        out.append(QualityResult(run.id, case, status, figures.get(case.key, {}), _reference_words(store, ref, run.model_sha256),
                                 bool(ref.get("is_model_under_test")), facts.get("corpus", {}).get("name", "?"), max_kld, min_top1,
                                 None if execution is None else execution.error))
    return out


def _reference_words(store: Store, ref: dict[str, Any], model_sha256: str) -> str:
    sha = ref.get("model_sha256")
    if sha is None:
        return f"logits file {str(ref.get('sha256', '?'))[:12]}" if ref else "unknown reference"
    if sha == model_sha256:
        return "the model itself on the host CPU"
    return f"{store.model_info(sha).get('filename', sha[:12])} on the host CPU"


def _governs(quality: Case, speed: Case) -> bool:
    """A quality case speaks for a speed case of its runtime whose settings agree wherever both
    name one (OpenVINO's verdict never marks llama.cpp's figures, nor the other way round)."""
    mine = dict(quality.settings)
    return (get_engine(quality.engine).runtime == get_engine(speed.engine).runtime
            and all(mine[k] == v for k, v in speed.settings if k in mine))


def greedy_differs(store: Store, run_id: str) -> dict[str, str]:
    """Server case key -> the mark, where the mean greedy exact-match share of its processes is
    below the suite's `greedy_min_exact`."""
    min_exact = float(_suite_keys(store.run(run_id).suite_text).get("greedy_min_exact", GREEDY_MIN_EXACT))
    values: dict[str, dict[str, list[float]]] = {}
    for m in store.measurements([run_id]):
        if m["status"] == "ok" and m["metric"] in GREEDY_METRICS and m["value"] is not None:
            values.setdefault(m["case_key"], {}).setdefault(m["metric"], []).append(float(m["value"]))
    marks = {}
    for key, got in values.items():
        mean = {name: sum(v) / len(v) for name, v in got.items()}
        if mean.get("greedy_exact_share", 100.0) < min_exact:
            top1 = f", top-1 {mean['greedy_top1']:.1f}%" if "greedy_top1" in mean else ""
            marks[key] = (f"output differs from the host reference (greedy: {mean['greedy_exact_share']:.0f}% of prompts exact, "
                          f"mean prefix {mean.get('greedy_prefix_mean', math.nan):.1f} tokens{top1})")
    return marks


def output_differs(store: Store, run_id: str) -> dict[str, str]:
    """Speed case key -> the mark, for the cases a failing quality case of the run governs, and
    the server cases whose greedy check differs (`greedy_differs`)."""
    failing = [q for q in quality_results(store, run_id) if q.differs]
    marks = greedy_differs(store, run_id)
    if not failing:
        return marks
    for case in store.cases(run_id):
        if case.kind != "quality" and (governing := [q for q in failing if _governs(q.case, case)]):
            marks[case.key] = "; ".join([*(q.mark() for q in governing), *([marks[case.key]] if case.key in marks else [])])
    return marks


FRONTIER_COLUMNS = ["sweep", "run_id", "device", "model", "variant", "is_base", "size_bytes", "n_params", "decode_tps",
                    "energy_j_per_token", "kld_mean", "top1_agreement", "ppl", "pareto"]


def frontier_frame(store: Store, run_ids: list[str]) -> pd.DataFrame:
    """One row per run (FRONTIER_COLUMNS); `is_base` only for the base of a `--quantize` sweep."""
    rows = []
    for run_id in run_ids:
        run = store.run(run_id)
        command = run.command
        info = store.model_info(run.model_sha256)
        speed = _decode_figures(store, run.id)
        quality = next((q for q in quality_results(store, run.id) if q.status == "ok"), None)
        got = quality.figures if quality else {}
        sweep = command.get("sweep")
        rows.append({"sweep": sweep or run.id, "run_id": run.id, "device": run.device, "model": info.get("filename"),
                     "variant": command.get("variant") or ("base" if sweep else info.get("quantization")),
                     "is_base": bool(sweep) and not command.get("variant"),
                     "size_bytes": info.get("file_size"), "n_params": info.get("parameter_count"), **speed,
                     "kld_mean": got.get("kld_mean", math.nan), "top1_agreement": got.get("top1_agreement", math.nan),
                     "ppl": got.get("ppl", math.nan)})
    frame = pd.DataFrame(rows, columns=[c for c in FRONTIER_COLUMNS if c != "pareto"])
    frame["pareto"] = _pareto(frame)
    return frame


def _decode_figures(store: Store, run_id: str) -> dict[str, float]:
    """Mean decode tok/s and J/token over the processes of the run's shallowest decode case."""
    decodes = sorted((c for c in store.cases(run_id) if c.kind == "decode"), key=lambda c: c.depth)
    values: dict[str, list[float]] = {"decode_tps": [], "energy_j_per_token": []}
    if decodes:
        for m in store.measurements([run_id]):
            if m["case_key"] == decodes[0].key and m["status"] == "ok" and m["metric"] in values and m["value"] is not None:
                values[m["metric"]].append(float(m["value"]))
    return {name: (sum(v) / len(v) if v else math.nan) for name, v in values.items()}


def _pareto(frame: pd.DataFrame) -> list[bool]:
    """Per row: no row of its sweep is at least as fast with at most its KLD, and better in one."""
    out = []
    for r in frame.itertuples():
        if pd.isna(r.decode_tps) or pd.isna(r.kld_mean):
            out.append(False)
            continue
        rivals = frame[(frame["sweep"] == r.sweep) & (frame["device"] == r.device) & frame["decode_tps"].notna() & frame["kld_mean"].notna()]
        dominated = ((rivals["decode_tps"] >= r.decode_tps) & (rivals["kld_mean"] <= r.kld_mean)
                     & ((rivals["decode_tps"] > r.decode_tps) | (rivals["kld_mean"] < r.kld_mean))).any()
        out.append(not bool(dominated))
    return out
