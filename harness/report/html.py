"""Build the HTML report of one or more runs with jinja2 (autoescaped: every string from a
device, a model file or a suite is escaped; only our own markup is not)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from harness import __version__
from harness.analysis.claims import ClaimsError, check_claims, load_claims, ratio_checks_for, untested_line
from harness.analysis.compare import CompareSettings, compare_frames, comparisons_frame, regressions_since_previous
from harness.analysis.quality import frontier_frame, quality_results
from harness.analysis.roofline import roofline_frame
from harness.analysis.runtimes import FIGURES as RUNTIME_FIGURES, side_by_side
from harness.analysis.tables import (
    TITLES,
    failures_frame,
    history_frame,
    local_scores,
    offloads_by_case,
    power_series,
    stability_rows,
    summary_frame,
    tidy_frame,
    wide_table,
)
from harness.records import now_iso
from harness.report.figures import (
    bars,
    decode_roofline,
    history_chart,
    memory_vs_context,
    power_over_time,
    ratio_chart,
    speed_quality,
    throughput_vs_context,
)
from harness.store.db import Store


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["fmt"] = format_value
    return env


def format_value(value: Any, digits: int | None = None) -> str:
    """Numbers for people: thousands separators, and enough digits that 0.052 J is not "0.0"."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    if isinstance(value, float):
        if digits is None:
            digits = 1 if abs(value) >= 100 else 2 if abs(value) >= 1 else 3 if value == 0 else max(2, 2 - math.floor(math.log10(abs(value))))
        return f"{value:,.{digits}f}"
    return str(value)


# Facts a device may not report (older runs, partial drivers) still render, as "unknown".
FACT_DEFAULTS = {k: "unknown" for k in ("name", "cpu_model", "cores", "ram_mb", "os_release", "arch")} | {"gpus": [], "power_source": None}


def _run_card(store: Store, run_id: str) -> dict[str, Any]:
    run = store.run(run_id)
    return {
        "id": run.id,
        "status": run.status,
        "note": run.note,
        "created_at": run.created_at,
        "suite": run.suite_name,
        "repetitions": run.repetitions,
        "facts": {**FACT_DEFAULTS, **run.facts},
        "model": store.model_info(run.model_sha256),
        "runtime": store.runtime_manifest(run.runtime_key),
        "failures": failures_frame(store, run.id).to_dict("records"),
        "backends": _backends(store, run.id),
    }


def _backends(store: Store, run_id: str) -> list[str]:
    """Which backend ran the model, as the engine reported it (CPU, CUDA + the GPU's name ...)."""
    seen = {
        f"{s['backends']}" + (f" ({s['gpu_info']})" if s.get("gpu_info") else "") + f", GPU layers {s.get('n_gpu_layers', '?')}"
        for s in (e.raw.effective for e in store.executions(run_id)) if "backends" in s
    }
    return sorted(seen)


def render_report(store: Store, run_ids: list[str], output: Path, settings: CompareSettings = CompareSettings(),
                  *, lab: bool = False) -> Path:
    """One self-contained HTML file; with exactly two runs it also compares the second to the
    first. A lab report puts each run's regressions against its device's previous run at the
    top and adds a history of the headline figures per device."""
    runs = [_run_card(store, run_id) for run_id in run_ids]
    ids = [r["id"] for r in runs]
    tidy = tidy_frame(store, ids)
    summary = summary_frame(tidy)
    comparisons = comparisons_frame(compare_frames(tidy[tidy["run_id"] == ids[0]], tidy[tidy["run_id"] == ids[1]], settings)) if len(ids) == 2 else pd.DataFrame()
    power = pd.concat([power_series(store, i) for i in ids], ignore_index=True)
    roofline = roofline_frame(store, ids)
    frontier = frontier_frame(store, ids)
    quality = [q for run_id in ids for q in quality_results(store, run_id)]
    html = _environment().get_template("report.html.j2").render(
        runs=runs,
        table=wide_table(summary, offloads_by_case(store, ids)),
        titles=TITLES,
        several_runs=len(ids) > 1,
        stability=stability_rows(summary),
        scores=local_scores(summary) if not summary.empty else [],
        comparisons=_records(comparisons),
        regressions=regressions_since_previous(store, ids, settings) if lab else [],
        roofline=_records(roofline),
        claims=_claims(store, ids),
        quality=[q.to_json() for q in quality],
        runtimes=side_by_side(summary, quality),
        runtime_figures=RUNTIME_FIGURES,
        frontier=_records(frontier),
        figures={
            "Speed against quality": speed_quality(frontier),
            "Tokens/s vs context length": throughput_vs_context(summary) if not summary.empty else None,
            "Decode vs its memory-bandwidth roofline": decode_roofline(roofline),
            "Memory vs context length": memory_vs_context(summary) if not summary.empty else None,
            "Power over time": power_over_time(power),
            "Energy per token": bars(summary, "energy_j_per_token", "J/token"),
            "Comparison (B / A)": ratio_chart(comparisons),
            "History per device": history_chart(history_frame(store, ids)) if lab else None,
        },
        generated_at=now_iso(),
        version=__version__,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(html, encoding="utf-8")
    return output


def _claims(store: Store, run_ids: list[str]) -> dict[str, Any]:
    """The claims section: a row per claim these runs test, one line for the rest; a broken
    claims file is shown as its error, never stops the report."""
    try:
        claims = load_claims()
        checks = check_claims(store, claims, run_ids)
        ratios = ratio_checks_for(store, claims, run_ids)
    except ClaimsError as exc:
        return {"rows": [], "ratios": [], "untested": None, "error": str(exc)}
    return {"rows": [c.to_json() for c in checks if c.run_id is not None], "ratios": [{**c.to_json(), "text": c.describe()} for c in ratios],
            "untested": untested_line(checks), "error": None}


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and pd.isna(v) else v) for k, v in r.items()} for r in frame.to_dict("records")]
