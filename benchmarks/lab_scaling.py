"""How does a lab run's wall time grow with the number of devices? 1, 2, 4 and 8 local
pseudo-devices run the same tiny suite through `edgebench lab run`; printed as a ratio to one
device. On one 2-core host the pseudo-devices share the CPU, so this measures the harness's
orchestration (parallel workers, locks, store, report), not a lab's real parallelism.

Run: `.venv/bin/python benchmarks/lab_scaling.py [--counts 1 2 4 8]`
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = """
name = "lab-scaling"
repetitions = 2
inprocess_repetitions = 1
[[prefill]]
prompt = 16
[[decode]]
tokens = 4
"""


def lab_wall(count: int, root: Path) -> float:
    inventory = root / f"lab{count}.toml"
    inventory.write_text("".join(
        f'[[device]]\nname = "scale{count}-{i}"\ndriver = "local"\nworkdir = "{root / f"dev{count}-{i}"}"\n\n' for i in range(count)
    ))
    suite = root / "suite.toml"
    suite.write_text(SUITE)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness", "lab", "run", "--inventory", str(inventory), "--suite", str(suite),
                    "--results", str(root / f"results{count}")], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        walls = {n: lab_wall(n, Path(tmp)) for n in args.counts}
    base = walls[args.counts[0]]
    print(f"{'devices':>8}{'wall s':>10}{'ratio':>8}{'per device':>12}")
    for n, wall in walls.items():
        print(f"{n:>8}{wall:>10.1f}{wall / base:>8.2f}{wall / n:>12.2f}")


if __name__ == "__main__":
    main()
