"""Runtimes side by side: per test of a run, each runtime's headline figures and its quality verdict.

The question a run with `runtime = ["llama.cpp", "openvino"]` answers is "which runtime should I
ship on this device?", so the report puts the runtimes' cases of one test (kind, prompt,
generation, depth) next to each other, each with the gate's verdict for its own runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from harness.analysis.quality import QualityResult
from harness.engines import get_engine

# the figures each runtime's row shows, in order
FIGURES = ("prefill_tps", "decode_tps", "ttft_ms", "peak_rss_mb", "energy_j_per_token")
_TEST = ["run_id", "kind", "context"]


def side_by_side(summary: pd.DataFrame, quality: Sequence[QualityResult]) -> list[dict[str, Any]]:
    """One row per speed case of the runs with more than one runtime, grouped by test, runtimes
    in a fixed order: its figures (mean and 95% CI half-width, None where not measured) and the
    verdict of its runtime's quality case in that run ("no quality case" where there is none)."""
    if summary.empty or summary["runtime"].nunique() < 2:
        return []
    verdicts: dict[tuple[str, str], str] = {}
    for q in quality:  # the first quality case of each runtime speaks for it
        verdicts.setdefault((q.run_id, get_engine(q.case.engine).runtime), q.verdict())
    speed = summary[(summary["kind"] != "quality") & summary["metric"].isin(FIGURES)]
    rows = []
    for (run_id, kind, context, case, runtime), group in speed.groupby([*_TEST, "case", "runtime"], sort=True):
        figures = {}
        for r in group.itertuples():
            if r.n > 0:
                half = None if pd.isna(r.ci_high) else r.ci_high - r.mean
                figures[r.metric] = {"mean": r.mean, "half_width": half}
        rows.append({"run_id": run_id, "test": f"{kind} @ {context}", "runtime": runtime, "case": case, **figures,
                     "quality": verdicts.get((run_id, runtime), "no quality case")})
    return rows
