"""The openvino engine: prefill, decode and TTFT/ITL of OpenVINO GenAI on the same GGUF file.

The second runtime beside llama.cpp (a case's runtime is its engine's `runtime`). As with
`pyllama`, the orchestrator starts a worker (`python -m harness.engines.openvino`) under the
native probe and parses the one JSON line it prints; the worker loads the model, runs the case
and takes every time from OpenVINO GenAI's own counters (`PerfMetrics.raw_metrics`: time to
first token and each later token's duration, in microseconds).

What the worker does:
- the prompt is token ids (an `ov.Tensor`), so exactly N tokens are prefilled; generation runs
  greedy with `min_new_tokens = max_new_tokens` and `ignore_eos`, so exactly n tokens come out;
- OpenVINO GenAI's default CPU pipeline caches prompt prefixes (measured with SmolLM2: a repeated
  500-token prompt "prefills" in 0.12 s instead of 0.9 s), so prefix caching is turned off;
- `prefill` times the first token of an N-token prompt; `decode` prefills `depth` tokens (one at
  depth 0), then times n more tokens; `latency` and `pg` time an N-token prompt and n tokens.

OpenVINO derives an IR (and tokenizers) from the GGUF on its first load and, with
`enable_save_ov_model`, writes it beside the file it was given. So the worker gives it a
symlink inside a cache folder keyed by (GGUF sha256, OpenVINO and GenAI versions, conversion
options); the next load reads the IR folder. Nothing is written beside the user's model.
`load_s` is that load (converting or cached, said in the record's `load`).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from harness.drivers.base import Completed
from harness.engines import EngineOutputError, EngineResult, worker_record
from harness.engines.kldbase import quality_metrics
from harness.engines.perplexity import NOT_TIMED
from harness.engines.pyllama import PROMPT_TEXT, gap_metrics, positive
from harness.paths import cache_dir
from harness.records import Case, Mark, Metric, Window

# suite setting -> the OpenVINO property it sets (threads as llama.cpp's engines take them)
OPENVINO_PROPERTIES: dict[str, str] = {
    "threads": "INFERENCE_NUM_THREADS",
    "kv_cache_precision": "KV_CACHE_PRECISION",
    "inference_precision": "INFERENCE_PRECISION_HINT",
    "dynamic_quantization_group_size": "DYNAMIC_QUANTIZATION_GROUP_SIZE",
    "num_streams": "NUM_STREAMS",
}
DEVICE_SETTING = "ov_device"  # CPU, GPU, NPU (or GPU.1): OpenVINO's device name
DEFAULT_DEVICE = "CPU"
# The architectures OpenVINO GenAI's GGUF reader builds a model for (its docs; anything else it refuses)
GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")
INSTALL_HINT = "pip install edgebench[openvino]"
# What OpenVINO derives from a GGUF depends on these besides the file and the versions: the cache key holds them
CONVERSION = {"enable_save_ov_model": True}
WARMUP_TOKENS = 16


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def not_available(device: str = DEFAULT_DEVICE) -> str | None:
    """Why OpenVINO GenAI cannot run a case on this host's `device`, or None: the wheel's
    platform, the package, the device plugin. Each reason says what would fix it."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"OpenVINO GenAI ships x86-64 wheels only; this host is {machine}"
    if find_spec("openvino_genai") is None:
        return f"OpenVINO GenAI is not installed ({INSTALL_HINT})"
    devices = _available_devices()
    if device.split(".")[0] not in {d.split(".")[0] for d in devices}:
        return f"OpenVINO has no {device} device here (its plugins found: {', '.join(devices) or 'none'})"
    return None


@functools.cache
def _available_devices() -> tuple[str, ...]:
    from openvino import Core

    return tuple(Core().available_devices)


class OpenVino:
    name = "openvino"
    runtime = "openvino"
    host_only = True  # a Python package on the machine running edgebench
    marks = None  # the worker stamps its own windows
    settings = (*OPENVINO_PROPERTIES, DEVICE_SETTING)

    def unsupported(self, case: Case) -> str | None:
        bad = [f"{k}={v}" for k, v in case.settings if k not in self.settings]
        if bad:
            return f"OpenVINO cannot apply {', '.join(bad)}"
        return not_available(str(case.setting(DEVICE_SETTING, DEFAULT_DEVICE)))

    def unsupported_model(self, architecture: str | None) -> str | None:
        if architecture not in GGUF_ARCHITECTURES:
            return f"OpenVINO GenAI's GGUF reader cannot read architecture {architecture!r} (it reads {', '.join(GGUF_ARCHITECTURES)})"
        return None

    def argv(self, case: Case, *, runtime_dir: str, model_path: str, inputs: Mapping[str, str] | None = None) -> list[str]:
        argv = [sys.executable, "-m", "harness.engines.openvino", "--model", model_path, "--kind", case.kind,
                "--prompt-tokens", str(case.n_prompt), "--gen", str(case.n_gen), "--depth", str(case.depth),
                "--reps", str(case.inprocess_reps)]
        for key, value in case.settings:
            argv += [_flag(key), str(value)]
        if not case.warmup:
            argv.append("--no-warmup")
        if case.kind == "quality":
            if not inputs or "logits" not in inputs:
                raise ValueError(f"{case.label}: the reference logits were not staged")
            argv += ["--logits", inputs["logits"], "--chunks", str(case.quality_value("chunks"))]
        return argv

    def parse(self, case: Case, completed: Completed, marks: Sequence[Mark] = ()) -> EngineResult:
        record = parse_output(case, completed)
        build = f"openvino-genai {record['openvino_genai']} (openvino {record['openvino']})"
        effective = {**record["effective"], "device": record["device"], "load": record["load"]["kind"]}
        if case.kind == "quality":
            figures = record["quality"]
            return EngineResult(metrics=[Metric("load_s", record["load"]["ns"] / 1e9, "s"), *quality_metrics(figures, "not scored")],
                                no_window=NOT_TIMED, raw=[record], build=build, effective=effective)
        windows = rep_windows(case, record)
        tokens = {"prefill": case.n_prompt, "decode": case.n_gen}.get(case.kind, case.n_prompt + case.n_gen)
        return EngineResult(
            metrics=metrics(case, record), windows=windows, tokens=tokens * len(windows), raw=[record], build=build, effective=effective,
        )


def parse_output(case: Case, completed: Completed) -> dict[str, Any]:
    """The worker's one JSON line, checked against the case it was asked to run."""
    record = worker_record(completed, "openvino")
    lacking = [k for k in ("openvino", "openvino_genai", "device", "load", "effective", "quality" if case.kind == "quality" else "reps")
               if k not in record]
    if lacking:
        raise EngineOutputError(f"openvino record lacks {', '.join(lacking)}")
    if case.kind == "quality":
        return record
    prompt, gen = prompt_and_gen(case.kind, case.n_prompt, case.n_gen, case.depth)
    if len(record["reps"]) != case.inprocess_reps:
        raise EngineOutputError(f"openvino worker ran {len(record['reps'])} reps, the case asked for {case.inprocess_reps}")
    for i, rep in enumerate(record["reps"]):
        if (rep["n_input"], rep["n_generated"], len(rep["itl_ns"])) != (prompt, gen, gen - 1):
            raise EngineOutputError(f"rep {i}: {rep['n_input']} prompt tokens, {rep['n_generated']} generated, "
                                    f"{len(rep['itl_ns'])} gaps; the case asked for {prompt} and {gen}")
    return record


def prompt_and_gen(kind: str, n_prompt: int, n_gen: int, depth: int) -> tuple[int, int]:
    """How many prompt tokens the worker feeds and how many it generates for a case."""
    if kind == "prefill":
        return n_prompt, 1
    if kind == "decode":  # the first token comes from the prefill of the depth; n more are timed
        return max(depth, 1), n_gen + 1
    return n_prompt, n_gen


def rep_windows(case: Case, record: dict[str, Any]) -> tuple[Window, ...]:
    """Each rep's measured span on the host's CLOCK_MONOTONIC: the prefill (prefill), the
    tokens after the first (decode), or both (latency, pg)."""
    out = []
    for rep in record["reps"]:
        start, ttft, gaps = rep["start_monotonic_ns"] / 1e9, rep["ttft_ns"] / 1e9, sum(rep["itl_ns"]) / 1e9
        out.append({"prefill": (start, ttft), "decode": (start + ttft, gaps)}.get(case.kind, (start, ttft + gaps)))
    return tuple(out)


def metrics(case: Case, record: dict[str, Any]) -> list[Metric]:
    """Per-process metrics with the raw per-rep (or per-gap) values as samples; percentiles over
    every gap of the process."""
    reps = record["reps"]
    ttft_ms = tuple(rep["ttft_ns"] / 1e6 for rep in reps)
    out = [Metric("load_s", record["load"]["ns"] / 1e9, "s")]
    if case.kind != "decode":
        prefill = tuple(rep["n_input"] / (rep["ttft_ns"] / 1e9) for rep in reps)
        out += [Metric("ttft_ms", statistics.fmean(ttft_ms), "ms", samples=ttft_ms),
                Metric("prefill_tps", statistics.fmean(prefill), "tok/s", samples=prefill)]
    if case.kind in ("decode", "latency"):
        out += gap_metrics(case, reps)
    if case.kind == "pg":
        tps = tuple((rep["n_input"] + rep["n_generated"]) / ((rep["ttft_ns"] + sum(rep["itl_ns"])) / 1e9) for rep in reps)
        out.append(Metric("pg_tps", statistics.fmean(tps), "tok/s", samples=tps))
    return out


# ---- the worker -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.engines.openvino",
                                description="One case through OpenVINO GenAI on a GGUF file; prints one JSON line.")
    p.add_argument("--model", required=True, type=Path, help="GGUF model file (read, never written beside)")
    p.add_argument("--kind", required=True, choices=("prefill", "decode", "pg", "latency", "quality"))
    p.add_argument("--prompt-tokens", type=int, default=0)
    p.add_argument("--gen", type=int, default=0)
    p.add_argument("--depth", type=int, default=0)
    p.add_argument("--reps", type=positive, default=1)
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument(_flag(DEVICE_SETTING), default=DEFAULT_DEVICE, help="OpenVINO device: CPU, GPU, NPU")
    p.add_argument("--logits", type=Path, help="quality: the reference's llama-perplexity --kl-divergence-base file")
    p.add_argument("--chunks", type=positive, default=1, help="quality: windows of the reference to score")
    for key, prop in OPENVINO_PROPERTIES.items():
        p.add_argument(_flag(key), help=f"OpenVINO property {prop}")
    return p


def properties(args: argparse.Namespace) -> dict[str, Any]:
    """The OpenVINO properties the case sets, typed as OpenVINO takes them (numbers as ints)."""
    out: dict[str, Any] = {}
    for key, prop in OPENVINO_PROPERTIES.items():
        value = getattr(args, key)
        if value is not None:
            out[prop] = int(value) if value.lstrip("-").isdigit() else value
    return out


def ir_folder(model_sha256: str, versions: Mapping[str, str]) -> Path:
    """Where the IR derived from this GGUF by these OpenVINO versions is kept."""
    blob = json.dumps({"gguf": model_sha256, **versions, **CONVERSION}, sort_keys=True).encode()
    return cache_dir() / "openvino" / hashlib.sha256(blob).hexdigest()[:16]


def load_pipeline(model: Path, folder: Path, device: str, props: Mapping[str, Any]) -> tuple[Any, str]:
    """An LLMPipeline from the cached IR folder, or (first time) from a symlink to the GGUF in a
    fresh folder beside the cache, which then becomes the cache entry; (pipeline, how)."""
    import openvino_genai

    scheduler = openvino_genai.SchedulerConfig()
    scheduler.enable_prefix_caching = False
    if (folder / "openvino_model.xml").is_file():
        return openvino_genai.LLMPipeline(str(folder), device, scheduler_config=scheduler, **props), "cached"
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        link = staging / model.name
        link.symlink_to(model.resolve())
        pipe = openvino_genai.LLMPipeline(str(link), device, scheduler_config=scheduler, **props, **CONVERSION)
        link.unlink()
        try:
            staging.rename(folder)
        except OSError:  # another worker saved the same IR first: keep its copy
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return pipe, "converted"


def read_back(folder: Path, device: str, props: Mapping[str, Any]) -> dict[str, Any]:
    """The properties the device really compiles the IR with (defaults included), read from a
    compiled model: LLMPipeline does not expose its own."""
    from openvino import Core

    compiled = Core().compile_model(str(folder / "openvino_model.xml"), device, dict(props))
    out = {}
    for key, prop in OPENVINO_PROPERTIES.items():
        try:
            value = compiled.get_property(prop)
            out[key] = value.to_string() if hasattr(value, "to_string") else str(value)  # ov.Type: "u8", not "<Type: 'uint8_t'>"
        except RuntimeError:
            out[key] = None  # the device's plugin does not have it
    out["execution_devices"] = list(compiled.get_property("EXECUTION_DEVICES"))
    return out


def score(folder: Path, device: str, props: Mapping[str, Any], model: Path, logits: Path, chunks: int) -> dict[str, float]:
    """KLD, top-1 and PPL of the IR's teacher-forced logits on the reference's own tokens, one
    window per chunk, scored as llama-perplexity does (harness.engines.kldbase)."""
    import numpy as np
    from openvino import Core

    from harness.engines.kldbase import KldScorer, read_base

    base = read_base(logits)
    if chunks > base.header.n_chunk:
        raise ValueError(f"{logits} holds {base.header.n_chunk} chunks; the case scores {chunks}")
    request = Core().compile_model(str(folder / "openvino_model.xml"), device, dict(props)).create_infer_request()
    scorer, n_ctx, bos = KldScorer(base), base.header.n_ctx, _bos(model)
    for chunk in range(chunks):
        ids = base.eval_tokens(chunk, bos).astype(np.int64)[None]
        request.reset_state()  # the IR is stateful: its KV cache would carry the last window over
        request.infer({"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(n_ctx, dtype=np.int64)[None],
                       "beam_idx": np.zeros(1, dtype=np.int32)})
        scorer.add(chunk, np.array(request.get_tensor("logits").data[0]))
    return scorer.figures()


def _bos(model: Path) -> int | None:
    """The BOS id llama-perplexity puts first in each window, where the GGUF says to add one."""
    import gguf

    fields = gguf.GGUFReader(model).fields
    add = fields.get("tokenizer.ggml.add_bos_token")
    bos = fields.get("tokenizer.ggml.bos_token_id")
    return int(bos.contents()) if add is not None and add.contents() and bos is not None else None


def build_prompt(tokenizer: Any, text: str, n: int) -> list[int]:
    """Exactly n token ids: the tokenizer's special tokens, then `text` repeated and cut."""
    head = list(tokenizer.encode(text, add_special_tokens=True).input_ids.data[0])
    body = list(tokenizer.encode(text, add_special_tokens=False).input_ids.data[0])
    tokens = head
    while len(tokens) < n:
        tokens += body
    return [int(t) for t in tokens[:n]]


def run_rep(pipe: Any, prompt: list[int], n_gen: int) -> dict[str, Any]:
    """One generate call of exactly len(prompt) + n_gen tokens, timed by OpenVINO GenAI itself."""
    import numpy as np
    import openvino

    config = pipe.get_generation_config()
    config.max_new_tokens = config.min_new_tokens = n_gen
    config.ignore_eos, config.do_sample = True, False
    stamp = time.monotonic_ns()  # the window's start on the host sampler's clock
    result = pipe.generate(openvino.Tensor(np.array([prompt], dtype=np.int64)), config)
    raw = result.perf_metrics.raw_metrics
    return {"start_monotonic_ns": stamp, "ttft_ns": round(raw.m_times_to_first_token[0] * 1e3),
            "itl_ns": [round(d * 1e3) for d in raw.m_durations], "n_input": result.perf_metrics.get_num_input_tokens(),
            "n_generated": len(result.tokens[0])}


def _one_line(exc: BaseException) -> str:
    """OpenVINO's message without its 'Exception from src/...' trail."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("Exception from ")]
    return " ".join(lines) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"no such model file: {args.model}")
    result_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # whatever OpenVINO prints goes to stderr

    import openvino
    import openvino_genai

    from harness.runtimes.logits import LogitsError
    from harness.runtimes.models import inspect_model

    versions = {"openvino": openvino.get_version(), "openvino_genai": openvino_genai.__version__}
    folder = ir_folder(inspect_model(args.model).sha256, versions)
    props = properties(args)
    started = time.perf_counter_ns()
    try:
        pipe, how = load_pipeline(args.model, folder, args.ov_device, props)
    except RuntimeError as exc:
        print(f"openvino: {_one_line(exc)}", file=sys.stderr)
        return 2
    load_ns = time.perf_counter_ns() - started
    if args.kind == "quality":
        del pipe  # the IR is compiled on its own for the logits
        try:
            figures = score(folder, args.ov_device, props, args.model, args.logits, args.chunks)
        except (ValueError, LogitsError) as exc:
            print(f"openvino: {exc}", file=sys.stderr)
            return 2
        _print(result_out, versions, args, how, load_ns, folder, props, quality=figures)
        return 0

    prompt_n, gen = prompt_and_gen(args.kind, args.prompt_tokens, args.gen, args.depth)
    prompt = build_prompt(pipe.get_tokenizer(), PROMPT_TEXT, prompt_n)
    if not args.no_warmup:
        run_rep(pipe, prompt[:WARMUP_TOKENS], 2)
    reps = [run_rep(pipe, prompt, gen) for _ in range(args.reps)]
    del pipe  # before the read-back compile, so the two models are never in memory together
    _print(result_out, versions, args, how, load_ns, folder, props, reps=reps)
    return 0


def _print(out: Any, versions: Mapping[str, str], args: argparse.Namespace, how: str, load_ns: int, folder: Path,
           props: Mapping[str, Any], **result: Any) -> None:
    """The worker's one JSON line: versions, device, load, effective properties, and the result."""
    from openvino import Core

    record = {
        "engine": "openvino", **versions,
        "device": Core().get_property(args.ov_device, "FULL_DEVICE_NAME"),
        "load": {"kind": how, "ns": load_ns, "ir": str(folder)},
        "effective": {"ov_device": args.ov_device, **read_back(folder, args.ov_device, props), "prefix_caching": False,
                      "sampler": "greedy"},
        **result,
    }
    print(json.dumps(record, separators=(",", ":")), file=out, flush=True)


if __name__ == "__main__":
    sys.exit(main())
