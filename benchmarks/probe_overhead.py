"""What does the native probe cost the benchmark it measures? llama-bench tokens/s with and
without `edgebench-probe` sampling at 50 ms, alternated process by process, as ratios.

"with" is exactly what edgebench runs (ProbeTelemetry.wrap: the probe, its sources, its
stderr marks, llama-bench `--progress`); "without" is the bare llama-bench argv. Alternating
(A B A B ...) spreads drift (heat, background load) over both sides. Also printed: the
probe's own CPU time as a share of the benchmark's. Target: under 1% difference.

Run: `.venv/bin/python benchmarks/probe_overhead.py [--rounds 5] [--interval-ms 50]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile

from harness.drivers.local import LocalDriver
from harness.engines.llamabench import LlamaBench
from harness.records import Case
from harness.runtimes import build_runtime
from harness.runtimes.models import resolve_model
from harness.telemetry.probe import ProbeTelemetry

CASES = (
    Case("llamabench", "prefill", 128, 0, 0, inprocess_reps=2),
    Case("llamabench", "decode", 0, 32, 0, inprocess_reps=2),
)


def tokens_per_s(argv: list[str]) -> float:
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return float(rows[-1]["avg_ts"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval-ms", type=int, default=50)
    args = parser.parse_args()
    runtime, _ = build_runtime("host")
    model = str(resolve_model("default"))
    driver = LocalDriver(workdir=tempfile.mkdtemp(prefix="probe-overhead-"))
    engine = LlamaBench()
    bare: dict[str, list[float]] = {c.label: [] for c in CASES}
    probed: dict[str, list[float]] = {c.label: [] for c in CASES}
    probe_cpu, bench_cpu = 0.0, 0.0
    for _ in range(args.rounds):
        for case in CASES:
            argv = engine.argv(case, runtime_dir=str(runtime.root), model_path=model)
            bare[case.label].append(tokens_per_s(argv))
            telemetry = ProbeTelemetry(driver, str(runtime.binary("edgebench-probe")), driver.workdir,
                                       interval_ms=args.interval_ms)
            with telemetry:
                probed[case.label].append(tokens_per_s(telemetry.wrap(argv, engine.marks)))
            assert telemetry.trace is not None and telemetry.trace.exit is not None
            probe_cpu += telemetry.trace.exit.probe_cpu_s
            bench_cpu += telemetry.trace.exit.rusage.user_s + telemetry.trace.exit.rusage.system_s
    print(f"llama-bench tok/s, median of {args.rounds} alternated processes each; probe at {args.interval_ms} ms; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"{'case':<16}{'bare':>10}{'probed':>10}{'ratio':>8}   spread (min..max, bare | probed)")
    for case in CASES:
        a, b = statistics.median(bare[case.label]), statistics.median(probed[case.label])
        spread = (f"{min(bare[case.label]):.1f}..{max(bare[case.label]):.1f} | "
                  f"{min(probed[case.label]):.1f}..{max(probed[case.label]):.1f}")
        print(f"{case.label:<16}{a:>10.2f}{b:>10.2f}{b / a:>8.4f}   {spread}")
    print(f"probe CPU time: {probe_cpu:.3f} s = {100 * probe_cpu / bench_cpu:.3f}% of the benchmark's {bench_cpu:.1f} s")


if __name__ == "__main__":
    main()
