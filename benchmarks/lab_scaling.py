"""The lab on its distributed path: 1, 2, 4 and 8 local pseudo-devices served by 2
`edgebench worker` processes over a real Redis, one job per device.

Each job's benchmark is sleep-bound (llama-bench's `delay`: a fixed cool-off before a tiny
prefill), so devices are independent even on a 2-core host and wall time should stay flat
as devices are added. Printed per device count:
- queue latency: submit to the job's device worker picking it up (median over the jobs);
- overhead: a job's wall (submit to done, median over the jobs) against a direct `edgebench
  run` of the same suite on one device (process start to exit), as a ratio minus one;
- wall: submit to every job done, and its ratio to one device.

Run: `.venv/bin/python benchmarks/lab_scaling.py [--counts 1 2 4 8] [--delay 15]`
(needs `redis-server`, as the tests do: scripts/setup.sh --test).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.lab.app import make_app  # noqa: E402
from harness.lab.jobs import LabRequest, jobs_of  # noqa: E402
from harness.lab.submit import submit  # noqa: E402
from harness.store.db import Store  # noqa: E402
from tests.ports import free_port  # noqa: E402
from tests.redis_fixture import RedisServer  # noqa: E402

SUITE = """
name = "lab-scaling"
repetitions = 1
inprocess_repetitions = 1
mode = "none"
[settings]
delay = {delay}
[[prefill]]
prompt = 16
"""


def inventory(root: Path, count: int) -> Path:
    path = root / f"lab{count}.toml"
    path.write_text("".join(
        f'[[device]]\nname = "scale-{i}"\ndriver = "local"\npseudo = "scale-{i}"\nworkdir = "{root / f"dev{i}"}"\n\n' for i in range(count)))
    return path


def start_workers(root: Path, inv: Path, count: int, env: dict[str, str]) -> list[subprocess.Popen]:
    """Two workers (two 'hosts'), the devices split between them."""
    halves = [[f"scale-{i}" for i in range(count) if i % 2 == w] for w in range(2)]
    return [subprocess.Popen([sys.executable, "-m", "harness", "worker", "--inventory", str(inv), "--devices", ",".join(names),
                              "--results", str(root / "results")], env=env, cwd=root, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
            for names in halves if names]


def stop(workers: list[subprocess.Popen]) -> None:
    for w in workers:
        os.killpg(w.pid, signal.SIGTERM)
    for w in workers:
        w.wait()


def lab(root: Path, store: Store, app, inv: Path, suite: Path, count: int) -> tuple[float, float, float]:
    """(median queue latency, median job wall, wall of the whole lab), seconds."""
    names = tuple(f"scale-{i}" for i in range(count))
    started = time.perf_counter()
    lab_id, _ = submit(store, app, inv, LabRequest(names, str(suite), retries=0))
    picked: dict[str, float] = {}
    ended: dict[str, float] = {}
    while len(ended) < count:
        now = time.perf_counter() - started
        for job in jobs_of(store, lab_id):
            if job.status != "queued":
                picked.setdefault(job.id, now)
            if job.final:
                if job.status != "done":
                    raise SystemExit(f"{job.id}: {job.status} ({job.error})")
                ended.setdefault(job.id, now)
        time.sleep(0.02)
    return statistics.median(picked.values()), statistics.median(ended.values()), max(ended.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--delay", type=int, default=15, help="seconds each job's benchmark sleeps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "redis").mkdir()
        redis = RedisServer(free_port(), "bench-" + os.urandom(6).hex(), root / "redis")
        redis.start()
        env = {**os.environ, "EDGEBENCH_BROKER": redis.url, "EDGEBENCH_STORE": "", "PYTHONPATH": str(REPO)}
        suite = root / "suite.toml"
        suite.write_text(SUITE.format(delay=args.delay))
        try:
            direct_inv = inventory(root, 1)
            begin = time.perf_counter()
            subprocess.run([sys.executable, "-m", "harness", "run", "--device", "scale-0", "--inventory", str(direct_inv), "--suite", str(suite),
                            "--results", str(root / "results")], env=env, cwd=root, check=True, capture_output=True)
            direct = time.perf_counter() - begin
            app = make_app(redis.url)
            rows = []
            with Store(root / "results") as store:
                for count in args.counts:
                    inv = inventory(root, count)
                    workers = start_workers(root, inv, count, env)
                    while len(app.control.ping(timeout=1.0)) < count:  # every device worker consuming
                        time.sleep(0.2)
                    try:
                        rows.append((count, *lab(root, store, app, inv, suite, count)))
                    finally:
                        stop(workers)
        finally:
            redis.stop()
    print(f"direct `edgebench run` of the suite (delay {args.delay} s): {direct:.1f} s")
    print(f"{'devices':>8}{'queue latency s':>17}{'job wall s':>12}{'overhead':>10}{'lab wall s':>12}{'vs 1':>7}")
    base = rows[0][3]
    for count, latency, job_wall, wall in rows:
        print(f"{count:>8}{latency:>17.2f}{job_wall:>12.1f}{job_wall / direct - 1:>+10.1%}{wall:>12.1f}{wall / base:>7.2f}")


if __name__ == "__main__":
    main()
