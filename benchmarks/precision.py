"""What does a precision target save? The quick suite run twice on this machine through
`edgebench run`: once with a fixed number of rounds (as many as the target's limit, which is
what a fixed plan needs to be as sure of every case), once with `--precision` (the suite's
rounds, then more only for the cases not yet within target). Printed per case: processes and
the 95% CI half-width each reached, and in total the device-minutes each needed (the summed
wall time of the benchmark processes, the time the device was busy). The fixed run's first
rounds also give the suite's own fixed plan (`repetitions`) for comparison.

Run: `.venv/bin/python benchmarks/precision.py [--precision 2%] [--max-repetitions 10]`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.plan.suites import load_suite, parse_precision
from harness.run.precision import relative_half_width
from harness.store.db import Store


def edgebench_run(results: Path, suite: str, *extra: str) -> float:
    """One `edgebench run` (its output kept out of the way); returns its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness", "run", "--suite", suite, "--results", str(results), "--json", *extra],
                   capture_output=True, text=True, check=True)
    return time.perf_counter() - start


def per_case(results: Path, rounds: int | None = None) -> tuple[dict[str, tuple[list[float], float]], str]:
    """Per case label: its primary figure per successful process and its processes' wall
    seconds (the first `rounds` rounds only, when given); and the run id."""
    store = Store(results)
    run_id = store.run("latest").id
    cases = {case.key: case for case in store.cases(run_id)}
    keep = {(e.case_key, e.rep): e for e in store.executions(run_id) if rounds is None or e.rep < rounds}
    figures: dict[str, tuple[list[float], float]] = {case.label: ([], 0.0) for case in cases.values()}
    for (key, rep), execution in sorted(keep.items(), key=lambda kv: kv[0][1]):
        values, wall = figures[cases[key].label]
        figures[cases[key].label] = (values, wall + (execution.wall_s or 0.0))
    for row in store.measurements([run_id]):
        case = cases[row["case_key"]]
        if (row["case_key"], row["rep"]) in keep and row["metric"] == case.primary_metric and row["status"] == "ok" and row["value"] is not None:
            figures[case.label][0].append(float(row["value"]))
    store.close()
    return figures, run_id


def _pct(values: list[float]) -> str:
    width = relative_half_width(values)
    return "—" if width is None else f"±{width * 100:.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--precision", default="2%", help="the target, as --precision takes it")
    parser.add_argument("--max-repetitions", type=int, default=10, help="the target's limit, and the fixed run's rounds")
    args = parser.parse_args()
    target = parse_precision(args.precision)
    base = load_suite(args.suite).repetitions
    with tempfile.TemporaryDirectory() as tmp:
        fixed_dir, adaptive_dir = Path(tmp) / "fixed", Path(tmp) / "adaptive"
        fixed_wall = edgebench_run(fixed_dir, args.suite, "--repeat", str(args.max_repetitions))
        adaptive_wall = edgebench_run(adaptive_dir, args.suite, "--precision", args.precision, "--max-repetitions", str(args.max_repetitions))
        fixed, fixed_id = per_case(fixed_dir)
        suite_fixed, _ = per_case(fixed_dir, rounds=base)
        adaptive, adaptive_id = per_case(adaptive_dir)
        store = Store(adaptive_dir)
        labels = {case.key: case.label for case in store.cases(adaptive_id)}
        stops = {labels[key]: stop for key, stop in store.stops(adaptive_id).items()}
        store.close()

    print(f"suite {args.suite} on this machine; target ±{target * 100:g}% (95% CI of each case's tok/s, TTFT for latency); "
          f"limit {args.max_repetitions} processes per case")
    print(f"runs: fixed {fixed_id}, adaptive {adaptive_id}\n")
    head = f"{'case':<22} {f'fixed {base} rounds':>16} {f'fixed {args.max_repetitions} rounds':>17} {'adaptive':>15}  why it stopped"
    print(head)
    print("-" * len(head))
    for label in fixed:
        stop = stops.get(label)
        adaptive_values = adaptive.get(label, ([], 0.0))[0]
        print(f"{label:<22} {_pct(suite_fixed[label][0]):>16} {_pct(fixed[label][0]):>17} "
              f"{f'{_pct(adaptive_values)} n={len(adaptive_values)}':>15}  {stop.reason if stop else '—'}")
    plans = {"suite": suite_fixed, "fixed": fixed, "adaptive": adaptive}
    within = {name: sum(1 for values, _ in figures.values() if (w := relative_half_width(values)) is not None and w <= target)
              for name, figures in plans.items()}
    minutes = {name: sum(wall for _, wall in figures.values()) / 60 for name, figures in plans.items()}
    processes = {name: sum(len(values) for values, _ in figures.values()) for name, figures in plans.items()}
    print()
    print(f"{'':<22} {f'fixed {base} rounds':>16} {f'fixed {args.max_repetitions} rounds':>17} {'adaptive':>15}")
    print(f"{'device-minutes':<22} {minutes['suite']:>16.2f} {minutes['fixed']:>17.2f} {minutes['adaptive']:>15.2f}")
    print(f"{'processes':<22} {processes['suite']:>16d} {processes['fixed']:>17d} {processes['adaptive']:>15d}")
    share = {name: f"{count}/{len(fixed)}" for name, count in within.items()}
    print(f"{'cases within target':<22} {share['suite']:>16} {share['fixed']:>17} {share['adaptive']:>15}")
    print(f"\nadaptive ran {processes['adaptive']} of the fixed plan's {processes['fixed']} processes "
          f"({processes['adaptive'] / processes['fixed']:.0%}) in {minutes['adaptive'] / minutes['fixed']:.2f}x its device-minutes; "
          f"whole commands {adaptive_wall / 60:.1f} vs {fixed_wall / 60:.1f} min (build cached). Device-minutes at equal "
          "processes differ only by how busy the machine was.")


if __name__ == "__main__":
    main()
