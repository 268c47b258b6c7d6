"""What HTTP and scheduling cost: edgebench's server figures (a streaming client against
llama-server on this machine) beside llama-server's own reported timings and llama-bench, for the
same model, prompt and generation length, and aggregate tok/s against concurrency.

Rounds alternate (a serve sweep at each concurrency, then llama-bench), so drift lands on both.
Printed, medians over the rounds:
- prefill tok/s: llama-server's own (`timings.prompt_per_second`), the client's prompt / TTFT,
  llama-bench's -p; decode tok/s per stream: the client's (tokens after the first over their
  arrival span), llama-server's own (`predicted_per_second`), llama-bench's -n; TTFT and ITL p50
  from the client; each with its ratio to llama-bench;
- aggregate tok/s (all streams' tokens over the case's span) at each concurrency, and its ratio
  to concurrency 1.

Run: `.venv/bin/python benchmarks/server_side_by_side.py [--rounds 3] [--prompt 64] [--tokens 32] [--threads 2]`
(builds or reuses the host runtime; the default model from PyPI).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.analysis.tables import summary_frame, tidy_frame  # noqa: E402
from harness.run import orchestrate  # noqa: E402
from harness.run.session import Callbacks, RunOptions, build_host  # noqa: E402
from harness.runtimes.models import resolve_model  # noqa: E402
from harness.store.db import Store  # noqa: E402

CONCURRENCY = (1, 2, 4)
SUITE = """
name = "server-side-by-side"
repetitions = 1
mode = "none"
[settings]
threads = {threads}
[[serve]]
prompt = {prompt}
tokens = {tokens}
concurrency = [1, 2, 4]
"""


def serve_round(root: Path, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """One sweep of serve cases; per concurrency, metric -> the case's figure."""
    root.mkdir(parents=True)
    (root / "serve.toml").write_text(SUITE.format(threads=args.threads, prompt=args.prompt, tokens=args.tokens))
    store = Store(root / "results")
    (outcome,) = orchestrate.run(store, orchestrate.RunRequest(RunOptions(suite=str(root / "serve.toml"))), Callbacks())
    cases = {c.key: c for c in store.cases(outcome.run_id)}
    out: dict[int, dict[str, float]] = {c: {} for c in CONCURRENCY}
    for row in summary_frame(tidy_frame(store, [outcome.run_id])).to_dict("records"):
        if row["n"]:
            out[int(cases[row["case_key"]].setting("concurrency"))][row["metric"]] = float(row["mean"])
    for execution in store.executions(outcome.run_id):  # prompt / TTFT, which the server's timings replace in the table
        streams = [r["stream"] for r in execution.raw.records if "stream" in r]
        ttft = [s["arrivals"][0] for s in streams if s["arrivals"]]
        if ttft:
            out[int(cases[execution.case_key].setting("concurrency"))]["prefill_tps_ttft"] = args.prompt / statistics.median(ttft)
    return out


def bench_round(runtime: Path, model: Path, args: argparse.Namespace) -> dict[str, float]:
    argv = [str(runtime / "bin" / "llama-bench"), "-m", str(model), "-p", str(args.prompt), "-n", str(args.tokens),
            "-t", str(args.threads), "-r", "3", "-o", "jsonl"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=900)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {("prefill_tps" if r["n_prompt"] else "decode_tps"): float(r["avg_ts"]) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    runtime, model = build_host().root, resolve_model("default")
    serves: list[dict[int, dict[str, float]]] = []
    benches: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="edgebench-side-") as tmp:
        for i in range(args.rounds):
            serves.append(serve_round(Path(tmp) / f"round{i}", args))
            benches.append(bench_round(runtime, model, args))

    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    def serve(c: int, name: str) -> float:
        return med([r[c][name] for r in serves if name in r[c]])

    bench = {k: med([b[k] for b in benches]) for k in ("prefill_tps", "decode_tps")}
    print(f"default model, host CPU, {args.threads} threads, prompt {args.prompt}, {args.tokens} tokens, "
          f"median of {args.rounds} alternating rounds; llama-server at concurrency 1")
    print(f"{'':34}{'edgebench client':>18}{'llama-server own':>18}{'llama-bench':>13}{'client/bench':>14}{'server/bench':>14}")
    rows = (("prefill tok/s", serve(1, "prefill_tps_ttft"), serve(1, "prefill_tps"), bench["prefill_tps"]),
            ("decode tok/s (per stream)", serve(1, "decode_tps"), serve(1, "server_decode_tps"), bench["decode_tps"]))
    for name, client, own, lb in rows:
        print(f"{name:34}{client:18.1f}{own:18.1f}{lb:13.1f}{client / lb:14.2f}{own / lb:14.2f}")
    print(f"{'TTFT ms (client, p50)':34}{serve(1, 'ttft_ms'):18.1f}")
    print(f"{'ITL ms (client, p50)':34}{serve(1, 'itl_ms_p50'):18.2f}   (1000 / llama-bench decode: {1000 / bench['decode_tps']:.2f})")
    print("\naggregate tok/s vs concurrency (client: all streams' tokens over the case's span)")
    base = serve(1, "agg_tps")
    for c in CONCURRENCY:
        print(f"  concurrency {c}: {serve(c, 'agg_tps'):8.1f} tok/s  x{serve(c, 'agg_tps') / base:.2f}   "
              f"TTFT p50 {serve(c, 'ttft_ms'):8.1f} ms   decode per stream {serve(c, 'decode_tps'):6.1f} tok/s")


if __name__ == "__main__":
    main()
