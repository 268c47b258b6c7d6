"""Build the HTML report of one or more runs with jinja2 (autoescaped: every string from a
device, a model file or a suite is escaped; only our own markup is not)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from harness import __version__
from harness.analysis import HEADLINE, failures_frame, summary_frame, tidy_frame, wide_table
from harness.report.figures import throughput_vs_context
from harness.store import Store, now_iso


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["fmt"] = format_value
    return env


def format_value(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _run_card(store: Store, run_id: str) -> dict[str, Any]:
    row = store.run(run_id)
    return {
        "id": row["id"],
        "status": row["status"],
        "note": row["note"],
        "created_at": row["created_at"],
        "suite": row["suite_name"],
        "repetitions": row["repetitions"],
        "facts": json.loads(row["facts_json"]),
        "model": store.model_info(row["model_sha256"]),
        "runtime": store.runtime_manifest(row["runtime_key"]),
        "failures": failures_frame(store, row["id"]).to_dict("records"),
    }


def render_report(store: Store, run_ids: list[str], output: Path) -> Path:
    runs = [_run_card(store, run_id) for run_id in run_ids]
    ids = [r["id"] for r in runs]
    summary = summary_frame(tidy_frame(store, ids))
    html = _environment().get_template("report.html.j2").render(
        runs=runs,
        table=wide_table(summary),
        titles=HEADLINE,
        several_runs=len(ids) > 1,
        throughput_png=throughput_vs_context(summary),
        generated_at=now_iso(),
        version=__version__,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(html, encoding="utf-8")
    return output
