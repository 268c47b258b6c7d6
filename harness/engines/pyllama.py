"""The pyllama engine: time to first token and inter-token latency, llama-cpp-python in process.

Following pyperf, the orchestrator only starts a worker process (`python -m
harness.engines.pyllama`) and parses what it prints; the worker loads the model, times every
token with `time.perf_counter_ns` and prints the raw nanoseconds as one JSON line.

llama-cpp-python is installed without a llama.cpp of its own (`LLAMA_BUILD=OFF`): the worker
loads the run's host runtime's `lib/libllama.so`, so TTFT/ITL and llama-bench's prefill/decode
come from one build (one compile, one manifest), and the record names that runtime.

The worker drives llama-cpp-python's low-level loop (`Llama.eval` of the prompt's token ids,
then sample + eval one token at a time) rather than `create_completion`/`generate`, because:
- the prompt is passed as token ids, so exactly `n_prompt` tokens are processed;
- `generate` silently reuses a cached prompt prefix between calls (measured with SmolLM2: a
  repeated 501-token prompt "prefills" in 0.5 ms instead of 1.3 s); here the KV cache is
  cleared before each rep and the worker reports how many prompt positions it computed,
  so a reused prefix would show up (and `parse` rejects it) instead of flattering TTFT;
- EOS is just another token to this loop, so exactly `n_gen` tokens are produced without
  biasing logits (which would change the sampling work being timed);
- no streaming/detokenising layers sit between the token and the clock.
Sampling is greedy (deterministic: every rep generates the same tokens).

What the clock covers: TTFT runs from just before the prompt's `eval` to the first sampled
token id; each inter-token gap runs from one sampled token id to the next (one single-token
`eval` plus one sample), so n_gen tokens give n_gen - 1 gaps.

Measured windows: each rep also stamps its start on `time.monotonic_ns()`, the host's
CLOCK_MONOTONIC that the host sampler stamps its readings on (the worker runs on the host,
`host_only`), so rep i's window is [start_i, start_i + TTFT_i + its gaps]: model load and
warmup are outside every window, as for llama-bench.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psutil

from harness.drivers.base import Completed
from harness.engines import EngineOutputError, EngineResult, LlamaCppEngine, worker_record
from harness.records import Case, Mark, Metric, Window
from harness.stats import percentile

if TYPE_CHECKING:
    import llama_cpp

# Deterministic, ordinary English: tokenised once, repeated and cut to exactly n_prompt tokens.
PROMPT_TEXT = (
    "The history of measurement is the history of agreeing on what a number means. "
    "A benchmark that cannot say how it was run, on which machine, with which settings, "
    "measures nothing anyone else can repeat. Write down the clock, the threads and the batch; "
    "keep every sample; derive the statistics later. "
)
SEED = 1234
CTX_PAD = 256
WARMUP_TOKENS = 16  # prompt tokens of the untimed warmup rep (it also decodes one token)

# Case settings the worker can apply (suite key `cache_type_k` -> flag `--cache-type-k`). The
# others (cpu_mask, cpu_strict, poll) reach the worker under the same rule and it rejects them
# by name, so the case fails with a reason instead of silently running without them.
SUPPORTED_SETTINGS = ("threads", "batch", "ubatch", "flash_attn", "n_gpu_layers", "cache_type_k", "cache_type_v", "load_mode")
LOAD_MODES = ("none", "mmap", "mlock", "mmap+mlock")
_TRUE = ("1", "on", "true", "yes")
_FALSE = ("0", "off", "false", "no")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


class PyLlama(LlamaCppEngine):
    name = "pyllama"
    host_only = True
    marks = None  # the worker stamps its own windows (see the module doc)
    settings = SUPPORTED_SETTINGS  # a thread count, no CPU mask: llama-cpp-python's Llama takes none

    def unsupported(self, case: Case) -> str | None:
        """Why llama-cpp-python's `Llama` cannot apply this case's settings, or None."""
        bad = [f"{k}={v}" for k, v in case.settings if k not in self.settings]
        bad += [f"flash_attn={v}" for k, v in case.settings if k == "flash_attn" and v == "auto"]
        bad += [f"load_mode={v}" for k, v in case.settings if k == "load_mode" and v not in LOAD_MODES]
        return f"llama-cpp-python cannot apply {', '.join(bad)}" if bad else None

    def argv(self, case: Case, *, runtime_dir: str, model_path: str, inputs: Mapping[str, str] | None = None) -> list[str]:
        """The worker's command line: llama-cpp-python loads the host runtime's own `libllama`
        (`runtime_dir/lib`), the build llama-bench of the same run comes from."""
        if not runtime_dir:
            raise EngineOutputError("the pyllama engine needs the host runtime (its lib/libllama), and the run has none")
        argv = [
            sys.executable, "-m", "harness.engines.pyllama",
            "--runtime", runtime_dir,
            "--model", model_path,
            "--prompt-tokens", str(case.n_prompt),
            "--gen", str(case.n_gen),
            "--reps", str(case.inprocess_reps),
        ]
        for key, value in case.settings:
            argv += [_flag(key), str(value)]  # bools print as True/False, which the worker reads
        if not case.warmup:
            argv.append("--no-warmup")
        return argv

    def parse(self, case: Case, completed: Completed, marks: Sequence[Mark] = ()) -> EngineResult:
        record = parse_output(case, completed)
        runtime = record["runtime"]
        windows = rep_windows(record)
        return EngineResult(
            metrics=metrics(case, record), windows=windows, tokens=(case.n_prompt + case.n_gen) * len(windows),
            no_window=None if windows else "the worker's record has no rep start times (start_monotonic_ns)",
            raw=[record], build=f"llama.cpp {runtime['llama_cpp_commit']} (runtime {runtime['key'][:12]}, llama-cpp-python {record['llama_cpp_python']})",
            effective=dict(record.get("settings", {})),
        )


def parse_output(case: Case, completed: Completed) -> dict[str, Any]:
    """The worker's one JSON line, checked against the case it was asked to run."""
    record = worker_record(completed, "pyllama")
    for key in ("llama_cpp_python", "runtime", "n_prompt", "n_gen", "reps", "load_ns"):
        if key not in record:
            raise EngineOutputError(f"pyllama record lacks '{key}': {json.dumps(record)[:300]}")
    want = {"n_prompt": case.n_prompt, "n_gen": case.n_gen, "reps": case.inprocess_reps}
    got = {"n_prompt": record["n_prompt"], "n_gen": record["n_gen"], "reps": len(record["reps"])}
    if got != want:
        raise EngineOutputError(f"pyllama worker ran {got}, but the case asked for {want}")
    for i, rep in enumerate(record["reps"]):
        lacking = [k for k in ("ttft_ns", "itl_ns", "n_prompt_evaluated", "n_cached_before") if k not in rep]
        if lacking:
            raise EngineOutputError(f"rep {i} of the pyllama record lacks {', '.join(lacking)}")
        if len(rep["itl_ns"]) != case.n_gen - 1:
            raise EngineOutputError(f"rep {i}: {len(rep['itl_ns'])} inter-token gaps for n_gen={case.n_gen}")
        if rep["n_cached_before"] != 0:
            raise EngineOutputError(f"rep {i} started on a KV cache holding {rep['n_cached_before']} tokens")
        if rep["n_prompt_evaluated"] != case.n_prompt:
            raise EngineOutputError(
                f"rep {i}: {rep['n_prompt_evaluated']} of {case.n_prompt} prompt tokens were computed "
                "(a reused KV cache would make TTFT meaningless)"
            )
    return record


def rep_windows(record: dict[str, Any]) -> tuple[Window, ...]:
    """(start, duration) of each timed rep on the host's CLOCK_MONOTONIC; () when the record
    does not stamp every rep."""
    reps = record["reps"]
    if not all("start_monotonic_ns" in rep for rep in reps):
        return ()
    return tuple((rep["start_monotonic_ns"] / 1e9, (rep["ttft_ns"] + sum(rep["itl_ns"])) / 1e9) for rep in reps)


def metrics(case: Case, record: dict[str, Any]) -> list[Metric]:
    """Per-process metrics; `samples` keep the raw per-rep (or per-gap) values.

    Percentiles are over every gap of this process (never an average of per-rep percentiles);
    prefill_tps = n_prompt / TTFT, so it includes sampling the first token; decode_tps per rep
    is its n_gen - 1 gaps over their sum, and the value is the mean over reps (as llama-bench's
    avg_ts).
    """
    reps = record["reps"]
    ttft_ms = tuple(rep["ttft_ns"] / 1e6 for rep in reps)
    out = [
        Metric("ttft_ms", statistics.fmean(ttft_ms), "ms", samples=ttft_ms),
        Metric("prefill_tps", statistics.fmean(case.n_prompt / (t / 1e3) for t in ttft_ms), "tok/s",
               samples=tuple(case.n_prompt / (t / 1e3) for t in ttft_ms)),
    ]
    out += gap_metrics(case, reps)
    out.append(Metric("load_s", record["load_ns"] / 1e9, "s"))
    return out


def gap_metrics(case: Case, reps: Sequence[Mapping[str, Any]]) -> list[Metric]:
    """ITL p50/p90/p99 over every inter-token gap (`itl_ns`) of the process, and decode tok/s
    per rep (its gaps over their sum; the value is the mean over reps); missing, saying why,
    where one generated token left no gap."""
    gaps_ms = tuple(gap / 1e6 for rep in reps for gap in rep["itl_ns"])
    if not gaps_ms:
        reason = f"n_gen={case.n_gen}: one generated token has no inter-token gap"
        return [*(Metric.missing(f"itl_ms_p{q}", "ms", reason) for q in (50, 90, 99)), Metric.missing("decode_tps", "tok/s", reason)]
    tps = tuple(len(rep["itl_ns"]) / (sum(rep["itl_ns"]) / 1e9) for rep in reps)
    return [*(Metric(f"itl_ms_p{q}", percentile(gaps_ms, q), "ms", samples=gaps_ms) for q in (50, 90, 99)),
            Metric("decode_tps", statistics.fmean(tps), "tok/s", samples=tps)]


# ---- the worker -------------------------------------------------------------------------


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _on_off(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(
        f"expected on/off (1/0, true/false), got {text!r}; 'auto' is not available through llama-cpp-python's Llama"
    )


def _existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such model file: {text}")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.engines.pyllama",
        description="Time to first token and inter-token latency of llama-cpp-python; prints one JSON line.",
    )
    p.add_argument("--runtime", required=True, type=Path, help="the host runtime folder whose lib/libllama llama-cpp-python loads")
    p.add_argument("--model", required=True, type=_existing_file, help="GGUF model file")
    p.add_argument("--prompt-tokens", required=True, type=positive, help="exact prompt length in tokens")
    p.add_argument("--gen", required=True, type=positive, help="tokens to generate (EOS does not stop it)")
    p.add_argument("--reps", type=positive, default=1, help="timed repetitions in this process")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warmup rep")
    p.add_argument(_flag("threads"), type=positive, help="n_threads and n_threads_batch (as llama-bench -t)")
    p.add_argument(_flag("batch"), type=positive, help="n_batch")
    p.add_argument(_flag("ubatch"), type=positive, help="n_ubatch")
    p.add_argument(_flag("flash_attn"), type=_on_off, help="on or off")
    p.add_argument(_flag("n_gpu_layers"), type=int, help="layers to offload (-1: all)")
    p.add_argument(_flag("cache_type_k"), help="KV cache type of K, e.g. f16, q8_0")
    p.add_argument(_flag("cache_type_v"), help="KV cache type of V, e.g. f16, q8_0")
    p.add_argument(_flag("load_mode"), choices=LOAD_MODES, help="how the weights are loaded")
    return p


def _ggml_type(name: str, parser: argparse.ArgumentParser) -> int:
    import llama_cpp

    value = getattr(llama_cpp, f"GGML_TYPE_{name.upper()}", None)
    if not isinstance(value, int) or name.upper() == "COUNT":
        parser.error(f"unknown KV cache type {name!r} (e.g. f16, q8_0, q4_0)")
    return value


def _ggml_type_names() -> dict[int, str]:
    import llama_cpp

    return {v: k[len("GGML_TYPE_"):].lower() for k, v in vars(llama_cpp).items()
            if k.startswith("GGML_TYPE_") and k != "GGML_TYPE_COUNT" and isinstance(v, int)}


def _load_mode_names() -> dict[int, str]:
    import llama_cpp

    return {getattr(llama_cpp, "LLAMA_LOAD_MODE_" + m.upper().replace("+", "_")): m for m in LOAD_MODES}


def _use_runtime(root: Path, parser: argparse.ArgumentParser) -> dict[str, str]:
    """Point llama-cpp-python at the runtime's library before it is imported (its loader reads
    LLAMA_CPP_LIB_PATH once, at import), and say which build that is."""
    library = root / "lib" / "libllama.so"
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"{root} is not a runtime folder (manifest.json: {exc})")
    if not library.is_file():
        parser.error(f"runtime {root} has no lib/libllama.so: only host targets (host, host-cuda) build it")
    os.environ["LLAMA_CPP_LIB_PATH"] = str(library.parent)
    return {"key": str(manifest.get("key")), "llama_cpp_commit": str(manifest.get("llama_cpp_commit"))}


def _load(args: argparse.Namespace, parser: argparse.ArgumentParser) -> "llama_cpp.Llama":
    """The model with a context just big enough for the case, every given setting applied."""
    import llama_cpp

    # Unset threads default to the physical core count, as llama-bench's do, so the two
    # engines measure the same configuration unless a suite says otherwise.
    threads = args.threads if args.threads is not None else (psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    kwargs: dict[str, Any] = {"n_threads": threads, "n_threads_batch": threads}
    if args.batch is not None:
        kwargs["n_batch"] = args.batch
    if args.ubatch is not None:
        kwargs["n_ubatch"] = args.ubatch
    if args.flash_attn is not None:
        kwargs["flash_attn"] = args.flash_attn
    if args.n_gpu_layers is not None:
        kwargs["n_gpu_layers"] = args.n_gpu_layers
    if args.cache_type_k is not None:
        kwargs["type_k"] = _ggml_type(args.cache_type_k, parser)
    if args.cache_type_v is not None:
        kwargs["type_v"] = _ggml_type(args.cache_type_v, parser)
    if args.load_mode is not None:
        kwargs["use_mmap"] = "mmap" in args.load_mode
        kwargs["use_mlock"] = "mlock" in args.load_mode
    # llama.cpp pads n_ctx to a multiple of 256 and caps n_batch at it; pad here too, since the
    # Python wrapper caps n_batch at the unpadded value and would shrink a requested batch.
    n_ctx = -(-(args.prompt_tokens + args.gen) // CTX_PAD) * CTX_PAD
    # ggml starts its backends on the first look at them. Looking here, before Llama(verbose=False)
    # silences stderr while it loads, lets a GPU backend that cannot start (a CUDA build with no
    # driver) say so where the runner reads it (engines.backend_failure), instead of the case
    # running on the CPU unnoticed.
    llama_cpp.llama_supports_gpu_offload()
    return llama_cpp.Llama(args.model, n_ctx=n_ctx, seed=SEED, verbose=False, **kwargs)


def build_prompt(llm: "llama_cpp.Llama", n_prompt: int) -> list[int]:
    """Exactly n_prompt token ids: BOS if the model wants one, then PROMPT_TEXT repeated, cut."""
    head = llm.tokenize(PROMPT_TEXT.encode(), add_bos=True)
    body = llm.tokenize(PROMPT_TEXT.encode(), add_bos=False)
    tokens = list(head)
    while len(tokens) < n_prompt:
        tokens += body
    return tokens[:n_prompt]


def _cached_tokens(memory: Any) -> int:
    import llama_cpp

    return llama_cpp.llama_memory_seq_pos_max(memory, 0) + 1  # pos_max is -1 when empty


def run_rep(llm: "llama_cpp.Llama", sampler: Any, prompt: list[int], n_gen: int) -> dict[str, Any]:
    """One timed prompt + generation on an emptied KV cache.

    The cache is queried only outside the timed span: empty before, and afterwards it holds
    exactly the positions this rep computed, so n_prompt_evaluated = held - decoded proves
    the whole prompt was processed in this rep.
    """
    import llama_cpp

    memory = llama_cpp.llama_get_memory(llm.ctx)
    llm.reset()
    llama_cpp.llama_memory_clear(memory, True)
    cached_before = _cached_tokens(memory)
    clock = time.perf_counter_ns

    stamp = time.monotonic_ns()  # the window's start on the host sampler's clock
    start = clock()
    llm.eval(prompt)
    token = llama_cpp.llama_sampler_sample(sampler, llm.ctx, -1)
    first = previous = clock()
    gaps: list[int] = []
    for _ in range(n_gen - 1):
        llm.eval([token])
        token = llama_cpp.llama_sampler_sample(sampler, llm.ctx, -1)
        now = clock()
        gaps.append(now - previous)
        previous = now

    evaluated = _cached_tokens(memory) - cached_before - len(gaps)
    return {"ttft_ns": first - start, "itl_ns": gaps, "n_prompt_evaluated": evaluated, "n_cached_before": cached_before,
            "start_monotonic_ns": stamp}


def _effective_settings(llm: "llama_cpp.Llama") -> dict[str, Any]:
    """What the context really runs with, read back from the library (defaults included)."""
    import llama_cpp

    cp, types = llm.context_params, _ggml_type_names()
    return {
        "n_ctx": llama_cpp.llama_n_ctx(llm.ctx),
        "n_threads": cp.n_threads,
        "n_threads_batch": cp.n_threads_batch,
        "n_batch": cp.n_batch,
        "n_ubatch": cp.n_ubatch,
        "flash_attn": {1: "on", 0: "off", -1: "auto"}.get(cp.flash_attn_type, cp.flash_attn_type),
        "type_k": types.get(cp.type_k, cp.type_k),
        "type_v": types.get(cp.type_v, cp.type_v),
        "n_gpu_layers": llm.model_params.n_gpu_layers,
        "load_mode": _load_mode_names().get(llm.model_params.load_mode, llm.model_params.load_mode),
        "sampler": "greedy",
        "seed": SEED,
    }


def main(argv: list[str] | None = None) -> int:
    """The worker: load, build the prompt, warm up, time `--reps` reps, print one JSON line."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        supported = ", ".join(_flag(k) for k in SUPPORTED_SETTINGS)
        parser.error(f"cannot apply {' '.join(unknown)} with llama-cpp-python's Llama; supported settings: {supported}")

    # Whatever the C library prints goes to stderr, so stdout carries only the JSON line.
    result_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    runtime = _use_runtime(args.runtime, parser)
    import llama_cpp

    started = time.perf_counter_ns()
    llm = _load(args, parser)
    load_ns = time.perf_counter_ns() - started

    prompt = build_prompt(llm, args.prompt_tokens)
    sampler = llama_cpp.llama_sampler_init_greedy()
    try:
        if not args.no_warmup:
            run_rep(llm, sampler, prompt[:WARMUP_TOKENS], 2)
        reps = [run_rep(llm, sampler, prompt, args.gen) for _ in range(args.reps)]
    finally:
        llama_cpp.llama_sampler_free(sampler)

    record = {
        "engine": "pyllama",
        "llama_cpp_python": llama_cpp.__version__,
        "runtime": runtime,
        "library": llama_cpp.llama_cpp._lib._name,
        "n_prompt": len(prompt),
        "n_gen": args.gen,
        "warmup": not args.no_warmup,
        "load_ns": load_ns,
        "settings": _effective_settings(llm),
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(" |"),
        "reps": reps,
    }
    print(json.dumps(record, separators=(",", ":")), file=result_out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
