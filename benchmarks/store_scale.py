"""Does the lab report slow down as the store's history grows? 10, 100 and 1,000 stored runs
(nightly runs of 10 devices, 3 cases x 2 processes each, written through the Store API), then
the lab report of each device's latest run: its regressions against the previous run, its
history and the HTML (`render_report(..., lab=True)`). Printed per engine, as a ratio to 10
runs; "queries" is the store-bound part (tidy table, previous run, history) without the HTML.
The target: grows far slower than the run count (100x from 10 to 1,000).

PostgreSQL: `--pg URL`, else a throwaway cluster as the tests start one (tests/pg_fixture.py).
Run: `.venv/bin/python benchmarks/store_scale.py [--counts 10 100 1000] [--pg URL]`
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.analysis.compare import regressions_since_previous  # noqa: E402
from harness.analysis.tables import history_frame, tidy_frame  # noqa: E402
from harness.records import Case, Metric  # noqa: E402
from harness.report.html import render_report  # noqa: E402
from harness.store.db import Store  # noqa: E402

DEVICES = 10
MODEL = {"filename": "m.gguf", "architecture": "llama", "quantization": "Q4_1", "parameter_count": 134515008, "sha256": "0" * 64}
RUNTIME = {"key": "r" * 64, "target": "host", "llama_cpp_commit": "abc", "llama_cpp_python_version": "0.3.36", "cmake_flags": []}
CASES = [Case("llamabench", "prefill", 64, 0, 0), Case("llamabench", "decode", 0, 16, 0), Case("llamabench", "decode", 0, 16, 256)]


def add_runs(store: Store, count: int, start: int) -> None:
    for n in range(start, count):
        device = f"dev{n % DEVICES}"
        run_id = store.create_run(
            device=device, device_identity=f"machine-id:{device}", suite_name="nightly", suite_text="", repetitions=2,
            timeout_s=60, cases=CASES, model_sha256="0" * 64, model_info=MODEL, runtime_key=RUNTIME["key"], runtime_manifest=RUNTIME,
            facts={"name": device, "cpu_model": "cpu", "cores": 8, "ram_mb": 16000, "os_release": "Debian", "arch": "x86_64",
                   "power_source": None, "gpus": []}, command={}, version="bench",
        )
        for rep in range(2):
            for case in CASES:
                value = 100.0 + (n % 7) + rep
                store.record_execution(
                    run_id, case, rep, status="ok", exit_code=0, wall_s=1.0, started_at="2026-01-01T00:00:00+00:00",
                    error=None, build="b", raw={}, metrics=[
                        Metric("prefill_tps" if case.kind == "prefill" else "decode_tps", value, "tok/s", samples=(value,) * 5),
                        Metric("peak_rss_mb", 300.0, "MB"), Metric.missing("avg_power_w", "W", "no sensor")],
                )
        store.finish_run(run_id, "finished")


def latest_per_device(store: Store) -> list[str]:
    latest: dict[str, str] = {}
    for row in store.runs():
        latest.setdefault(row.device, row.id)
    return sorted(latest.values())


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(url: str | None, root: Path, counts: list[int]) -> dict[int, tuple[float, float]]:
    found = {}
    with Store(root, url) as store:
        stored = 0
        for count in counts:
            add_runs(store, count, stored)
            stored = count
            ids = latest_per_device(store)
            queries = timed(lambda: (tidy_frame(store, ids), regressions_since_previous(store, ids), history_frame(store, ids)))
            report = timed(lambda: render_report(store, ids, root / f"report{count}.html", lab=True))
            found[count] = (report, queries)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--pg", help="PostgreSQL URL to use (an empty database) instead of a throwaway cluster")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if args.pg:
            pg_url = args.pg
        else:
            from tests.pg_fixture import throwaway_cluster

            cluster = stack.enter_context(throwaway_cluster())
            cluster.admin("CREATE DATABASE scale OWNER edgebench")
            pg_url = cluster.url("scale")
        results = {"sqlite": measure(None, Path(tmp) / "sqlite", args.counts),
                   "postgresql": measure(pg_url, Path(tmp) / "pg", args.counts)}
    base = args.counts[0]
    print(f"{'engine':<11}{'runs':>6}{'report s':>10}{'ratio':>7}{'queries s':>11}{'ratio':>7}")
    for engine, rows in results.items():
        for count, (report, queries) in rows.items():
            print(f"{engine:<11}{count:>6}{report:>10.2f}{report / rows[base][0]:>7.2f}{queries:>11.3f}{queries / rows[base][1]:>7.2f}")


if __name__ == "__main__":
    main()
