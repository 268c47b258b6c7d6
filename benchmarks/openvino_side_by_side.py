"""edgebench's openvino engine against OpenVINO GenAI's own timing, outside edgebench.

The same case (an N-token prompt of token ids, n greedy tokens with EOS ignored, prefix caching
off, the same threads) is timed two ways, in alternating rounds, each a fresh process:
- direct: a few lines of OpenVINO GenAI, `LLMPipeline.generate` and its `PerfMetrics`
  (TTFT -> prefill tok/s; mean TPOT -> decode tok/s), nothing of edgebench imported;
- edgebench: `edgebench run --runtime openvino` of a one-case latency suite, read from `--json`.
Printed: each path's median prefill and decode tok/s over the rounds, and edgebench / direct.
A ratio near 1 says the engine measures what OpenVINO's own tool measures.

Run: `.venv/bin/python benchmarks/openvino_side_by_side.py [--rounds 3] [--prompt 128] [--tokens 32] [--threads 2]`
(needs the openvino extra: scripts/setup.sh installs it).
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

from harness.runtimes.models import resolve_model  # noqa: E402

# The direct path: OpenVINO GenAI alone, in its own process, as a user would time it.
DIRECT = """
import json, sys, numpy as np, openvino, openvino_genai
model, n_prompt, n_gen, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
scheduler = openvino_genai.SchedulerConfig()
scheduler.enable_prefix_caching = False
pipe = openvino_genai.LLMPipeline(model, "CPU", scheduler_config=scheduler, INFERENCE_NUM_THREADS=threads)
text = "The history of measurement is the history of agreeing on what a number means. "
ids = list(pipe.get_tokenizer().encode(text * (n_prompt // 8 + 1)).input_ids.data[0][:n_prompt])
config = pipe.get_generation_config()
config.max_new_tokens = config.min_new_tokens = n_gen
config.ignore_eos, config.do_sample = True, False
prompt = openvino.Tensor(np.array([ids], dtype=np.int64))
pipe.generate(openvino.Tensor(np.array([ids[:16]], dtype=np.int64)), config)  # warmup, as edgebench's
perf = pipe.generate(prompt, config).perf_metrics
print(json.dumps({"prefill_tps": n_prompt / (perf.get_ttft().mean / 1e3), "decode_tps": 1e3 / perf.get_tpot().mean}))
"""

SUITE = """
name = "ov-side-by-side"
repetitions = 1
inprocess_repetitions = 1
mode = "none"
runtime = "openvino"
[settings]
threads = {threads}
[[latency]]
prompt = {prompt}
tokens = {tokens}
"""


def direct(model: Path, args: argparse.Namespace) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", DIRECT, str(model), str(args.prompt), str(args.tokens), str(args.threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def edgebench(root: Path, args: argparse.Namespace) -> dict[str, float]:
    suite = root / "suite.toml"
    suite.write_text(SUITE.format(threads=args.threads, prompt=args.prompt, tokens=args.tokens))
    out = subprocess.run([sys.executable, "-m", "harness", "run", "--suite", str(suite), "--results", str(root / "results"),
                          "--json", "--no-quality"], capture_output=True, text=True, check=True, cwd=REPO)
    rows = json.loads(out.stdout)["summary"]
    return {r["metric"]: r["mean"] for r in rows if r["metric"] in ("prefill_tps", "decode_tps")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = resolve_model("default")
    results: dict[str, list[dict[str, float]]] = {"direct": [], "edgebench": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.rounds):
            order = ("direct", "edgebench") if i % 2 == 0 else ("edgebench", "direct")  # alternate who goes first
            for path in order:
                results[path].append(direct(model, args) if path == "direct" else edgebench(root, args))
                print(f"round {i + 1} {path}: " + ", ".join(f"{k} {v:.1f}" for k, v in results[path][-1].items()), flush=True)
    print(f"\nlatency p{args.prompt}+n{args.tokens}, threads {args.threads}, {args.rounds} rounds (medians):")
    for metric in ("prefill_tps", "decode_tps"):
        d = statistics.median(r[metric] for r in results["direct"])
        e = statistics.median(r[metric] for r in results["edgebench"])
        print(f"  {metric}: direct {d:.1f} tok/s, edgebench {e:.1f} tok/s, edgebench / direct {e / d:.3f}")


if __name__ == "__main__":
    main()
