"""A writer process for the many-writers test: records N process runs of its own run, one
transaction each, and prints each one's key after its commit (so the test knows what must be
there if it kills this process). With `--resume RUN` it writes only what that run lacks, as
`edgebench run --resume` does through `pending_steps`.

    python -m tests.store_writer ROOT URL COUNT [--resume RUN_ID]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from harness.records import Case, Metric
from harness.store.db import ExecutionRaw, Store

CASES = [Case("llamabench", "decode", 0, 4, depth) for depth in range(10)]
METRICS = ("decode_tps", "peak_rss_mb", "avg_power_w")


def main(root: str, url: str, count: int, resume: str | None) -> None:
    store = Store(Path(root), url if url != "-" else None)
    reps = count // len(CASES)
    run_id = resume or store.create_run(
        device="writer", suite_name="writers", suite_text="", repetitions=reps, timeout_s=30, cases=CASES,
        model_sha256="0" * 64, model_info={}, runtime_key=None, runtime_manifest=None, facts={}, command={}, version="test",
    )
    print(f"run {run_id}", flush=True)
    done = {(e.case_key, e.rep) for e in store.executions(run_id) if e.status == "ok"}
    for rep in range(reps):
        for case in CASES:
            if (case.key, rep) in done:
                continue
            store.record_execution(
                run_id, case, rep, status="ok", exit_code=0, wall_s=0.01, started_at="2026-01-01T00:00:00+00:00",
                error=None, build="b", raw=ExecutionRaw(records=({"stdout": "x" * 2000},)),
                metrics=[Metric(name, float(rep), "u", samples=tuple(range(50))) for name in METRICS],
            )
            print(f"done {case.key} {rep}", flush=True)
            time.sleep(0.005)
    store.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    resume = args[args.index("--resume") + 1] if "--resume" in args else None
    main(args[0], args[1], int(args[2]), resume)
