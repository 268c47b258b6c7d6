"""How much does edgebench add? The same cases through `edgebench run` and through the raw
`llama-bench` binary, alternated side by side on this machine, printed as ratios.

Targets: tokens/s within 2% of raw llama-bench, wall time (excluding the one-time build,
which both share from the cache) under 5% extra. Run: `.venv/bin/python benchmarks/overhead.py`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.engines.llamabench import LlamaBench
from harness.plan.planner import build_plan
from harness.plan.suites import parse_suite
from harness.runtimes import build_runtime
from harness.runtimes.models import resolve_model

# mode "none": the raw pass has no cooldown or quiet wait either, so both sides pace alike.
SUITE = """
name = "overhead"
mode = "none"
repetitions = 3
inprocess_repetitions = 2
[[prefill]]
prompt = [128, 512]
[[decode]]
tokens = 32
depth = [0, 512]
"""


def raw_pass(runtime_dir: str, model: str, cases, repetitions: int) -> tuple[dict[str, list[float]], float]:
    """The cases as edgebench would run them (same argv, same interleaving), with nothing around."""
    engine = LlamaBench()
    figures: dict[str, list[float]] = {c.label: [] for c in cases}
    start = time.perf_counter()
    for _ in range(repetitions):
        for case in cases:
            out = subprocess.run(engine.argv(case, runtime_dir=runtime_dir, model_path=model), capture_output=True, text=True, check=True)
            figures[case.label].append(json.loads(out.stdout.strip().splitlines()[-1])["avg_ts"])
    return figures, time.perf_counter() - start


def harness_pass(suite: Path, results: Path) -> tuple[dict[str, list[float]], float]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--suite", str(suite), "--results", str(results), "--json"],
        capture_output=True, text=True, check=True,
    )
    wall = time.perf_counter() - start
    summary = json.loads(out.stdout)["summary"]
    figures = {r["case"]: [r["mean"]] for r in summary if r["metric"] in ("prefill_tps", "decode_tps")}
    return figures, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of (edgebench, raw)")
    args = parser.parse_args()
    runtime, _ = build_runtime("host")
    model = str(resolve_model("default"))
    suite = parse_suite(SUITE, "overhead")
    cases = build_plan(suite, context_length=None, host=True).cases
    with tempfile.TemporaryDirectory() as tmp:
        suite_file = Path(tmp) / "overhead.toml"
        suite_file.write_text(SUITE)
        ours: dict[str, list[float]] = {}
        raw: dict[str, list[float]] = {}
        walls = {"edgebench": [], "raw": []}
        for i in range(args.rounds):
            for name, action in (("edgebench", lambda: harness_pass(suite_file, Path(tmp) / f"r{i}")),
                                 ("raw", lambda: raw_pass(str(runtime.root), model, cases, suite.repetitions))):
                figures, wall = action()
                walls[name].append(wall)
                for label, values in figures.items():
                    (ours if name == "edgebench" else raw).setdefault(label, []).extend(values)
    print(f"{'case':<22}{'edgebench tok/s':>16}{'raw tok/s':>12}{'ratio':>8}")
    for label in raw:
        a, b = statistics.fmean(ours[label]), statistics.fmean(raw[label])
        print(f"{label:<22}{a:>16.1f}{b:>12.1f}{a / b:>8.3f}")
    wall_ratio = statistics.fmean(walls["edgebench"]) / statistics.fmean(walls["raw"])
    print(f"wall time: edgebench {statistics.fmean(walls['edgebench']):.1f} s, raw {statistics.fmean(walls['raw']):.1f} s, ratio {wall_ratio:.3f}")
    print("targets: tokens/s ratio within 0.98-1.02; wall ratio under 1.05 (includes Python start-up and report)")


if __name__ == "__main__":
    main()
