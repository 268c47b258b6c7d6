"""The llama-bench engine: one case = one `llama-bench -o jsonl` process.

llama-bench times itself (`samples_ns`) and reports every setting it used, so the figures
come from the runtime's own counters and the effective settings are read back, not assumed.

Measured windows: run with `--progress`, llama-bench prints `prompt run i/r` or
`generation run i/r` to stderr right after it starts timing repetition i; the sampler stamps
each such line on the device clock as it arrives. Window i starts at that mark and lasts
llama-bench's own `samples_ns[i]`, so model load, warmup and the depth prefill (which runs
before the timer starts) are outside every window.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from harness.drivers.base import Completed
from harness.engines import ENV_SETTINGS, EngineOutputError, EngineResult, LlamaCppEngine, env_prefix
from harness.records import Case, Mark, Metric, Window

# llama-bench settings that change the result: suite key -> (llama-bench flag, JSONL field).
# The suite validates its [settings] against this table; the plan resolves threads into it.
LLAMABENCH_SETTINGS: dict[str, tuple[str, str]] = {
    "threads": ("-t", "n_threads"),
    "cpu_mask": ("-C", "cpu_mask"),
    "cpu_strict": ("--cpu-strict", "cpu_strict"),
    "poll": ("--poll", "poll"),
    "n_gpu_layers": ("-ngl", "n_gpu_layers"),
    "flash_attn": ("-fa", "flash_attn"),
    "cache_type_k": ("-ctk", "type_k"),
    "cache_type_v": ("-ctv", "type_v"),
    "batch": ("-b", "n_batch"),
    "ubatch": ("-ub", "n_ubatch"),
    "load_mode": ("-lm", "load_mode"),
    "delay": ("--delay", "delay"),  # seconds of cool-off before the test, outside its measured repetitions
}

# The JSONL fields that describe how the case ran (stored with every result).
EFFECTIVE_FIELDS = (
    "n_threads", "cpu_mask", "cpu_strict", "poll", "n_gpu_layers", "flash_attn", "type_k", "type_v",
    "n_batch", "n_ubatch", "load_mode", "backends", "cpu_info", "gpu_info", "devices",
    "model_type", "model_size", "model_n_params",
)
# Vulkan devices that are software on the CPU, by the name they report (llama-bench's gpu_info):
# their figures must never pass for a GPU's. Mesa's lavapipe calls its device "llvmpipe (LLVM ...)".
CPU_VULKAN_DEVICES = {"llvmpipe": "lavapipe"}
# What ggml's Vulkan backend prints to stderr for each device it uses: index, name, driver, and a
# warning line after a device whose Vulkan type is CPU.
_VK_DEVICE = re.compile(r"^ggml_vulkan: (\d+) = (.*) \(([^()]*)\) \| uma: (\d)")
_VK_CPU_TYPE = "ggml_vulkan: Warning: Device type is CPU"
# The backends llama-bench reports (`backends`) whose devices are GPUs; CPU, BLAS and RPC are not.
GPU_BACKENDS = ("CUDA", "Vulkan", "OpenCL", "Metal", "SYCL", "ROCm", "MUSA")
MARK_PREFIX = "llama-bench: "  # the prefix of llama-bench's --progress lines
_RUN_MARK = re.compile(r"benchmark (\d+)/\d+: (prompt|generation) run (\d+)/\d+")


def flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class LlamaBench(LlamaCppEngine):
    name = "llamabench"
    host_only = False
    marks = MARK_PREFIX
    settings = (*LLAMABENCH_SETTINGS, *ENV_SETTINGS)

    def unsupported(self, case: Case) -> str | None:
        """llama-bench takes every suite setting but the server's own (rope_freq_base)."""
        other = [key for key, _ in case.settings if key not in self.settings]
        return f"llama-bench takes no {', '.join(other)}" if other else None

    def argv(self, case: Case, *, runtime_dir: str, model_path: str, inputs: Mapping[str, str] | None = None) -> list[str]:
        binary = str(PurePosixPath(runtime_dir) / "bin" / "llama-bench")
        argv = [*env_prefix(case), binary, "-m", model_path, "-o", "jsonl", "-r", str(case.inprocess_reps)]
        if case.kind == "pg":
            argv += ["-p", "0", "-n", "0", "-pg", f"{case.n_prompt},{case.n_gen}"]
        else:
            argv += ["-p", str(case.n_prompt), "-n", str(case.n_gen)]
        if case.depth:
            argv += ["-d", str(case.depth)]
        for key, value in case.settings:
            if key in LLAMABENCH_SETTINGS:
                argv += [LLAMABENCH_SETTINGS[key][0], flag_value(value)]
        argv.append("--progress")  # the marks its measured windows start at (see the module doc)
        if not case.warmup:
            argv.append("--no-warmup")
        return argv

    def parse(self, case: Case, completed: Completed, marks: Sequence[Mark] = ()) -> EngineResult:
        rows = parse_jsonl(completed.stdout)
        row = _the_row(rows, case, completed)
        samples = tuple(float(v) for v in row.get("samples_ts", []))
        metric = Metric(
            name=case.primary_metric,
            value=float(row["avg_ts"]),
            unit="tok/s",
            samples=samples,
        )
        build = f"llama.cpp {row.get('build_commit', 'unknown')} ({row.get('build_number', '?')})"
        windows, no_window = _windows(row, marks)
        tokens = (int(row.get("n_prompt", 0)) + int(row.get("n_gen", 0))) * len(windows)
        load = Metric.missing("load_s", "s", "llama-bench reports no model load time")
        return EngineResult(metrics=[metric, load], windows=windows, tokens=tokens, no_window=no_window, raw=rows,
                            build=build, effective=effective_settings(row, vulkan_devices(completed.stderr)))


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    """Every JSON object line of llama-bench's `-o jsonl` output; other lines are ignored."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise EngineOutputError(f"llama-bench printed a malformed JSONL line ({exc}): {line[:200]}") from None
    return rows


def measured_windows(marks: Sequence[Mark], samples_ns: Sequence[int]) -> tuple[Window, ...]:
    """(start, duration) of each timed repetition: the first `prompt run i` / `generation run i`
    mark of repetition i, lasting llama-bench's own samples_ns[i]. Depth prefill and warmup
    marks start no window; marks that do not match the repetitions give none at all."""
    starts: dict[int, float] = {}
    for t, text in marks:
        if (match := _RUN_MARK.search(text)) and match.group(1) == "1":
            starts.setdefault(int(match.group(3)) - 1, t)
    if len(starts) != len(samples_ns):
        return ()
    return tuple((starts[i], ns / 1e9) for i, ns in enumerate(samples_ns))


def _windows(row: dict[str, Any], marks: Sequence[Mark]) -> tuple[tuple[Window, ...], str | None]:
    if "samples_ns" not in row:
        return (), "llama-bench reported no samples_ns, so its repetitions have no length"
    if not marks:
        return (), "no --progress mark of llama-bench was stamped (the sampler stamps none without the probe)"
    windows = measured_windows(marks, [int(v) for v in row["samples_ns"]])
    return windows, None if windows else "llama-bench's --progress marks do not match its repetitions"


def effective_settings(row: dict[str, Any], vk_devices: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The settings llama-bench reports it used, for the store and the report; with the Vulkan
    devices it used (`vulkan_devices`) and a `device_note` where the device it offloaded to is a
    CPU implementation of a GPU API, or where no device took the layers it was asked to offload."""
    effective = {k: row[k] for k in EFFECTIVE_FIELDS if k in row}
    if vk_devices:
        effective["vulkan_devices"] = [dict(d) for d in vk_devices]
    if note := device_note(row, vk_devices):
        effective["device_note"] = note
    return effective


def vulkan_devices(stderr: str) -> list[dict[str, Any]]:
    """The Vulkan devices ggml says it uses (index, name, driver, uma, type where it says: "CPU")."""
    devices: list[dict[str, Any]] = []
    for line in stderr.splitlines():
        if match := _VK_DEVICE.match(line):
            devices.append({"index": int(match.group(1)), "name": match.group(2), "driver": match.group(3), "uma": match.group(4) == "1"})
        elif line.startswith(_VK_CPU_TYPE) and devices:
            devices[-1]["type"] = "CPU"
    return devices


def device_note(row: Mapping[str, Any], vk_devices: Sequence[Mapping[str, Any]] = ()) -> str | None:
    """What a reader must know about the device a llama-bench row ran on: a CPU implementation of
    a GPU API ("lavapipe: a CPU implementation; figures are not GPU figures"), known by its name or
    by the CPU type ggml reports, or layers asked to be offloaded with no GPU device to take them;
    None otherwise."""
    gpu_info = str(row.get("gpu_info") or "")
    software = [name for marker, name in CPU_VULKAN_DEVICES.items() if marker in gpu_info.lower()]
    software += [str(d["name"]) for d in vk_devices if d.get("type") == "CPU" and not any(m in str(d["name"]).lower() for m in CPU_VULKAN_DEVICES)]
    if software:
        return f"{', '.join(software)}: a CPU implementation; figures are not GPU figures"
    if not gpu_info and int(row.get("n_gpu_layers") or 0) > 0 and str(row.get("backends", "CPU")) != "CPU":
        return (f"no GPU device took the offloaded layers ({row['backends']} found none; its Vulkan backend skips CPU devices "
                "such as lavapipe unless the vk_visible_devices setting names them): figures are CPU figures")
    return None


def offload_note(effective: Mapping[str, Any], n_layers: int | None) -> str | None:
    """What a case offloaded and to which device, from the settings llama-bench reported it ran
    with (`effective_settings`): "GPU: 31/31 layers on <its gpu_info> via Vulkan", then the device
    note where that device is a CPU implementation (lavapipe) or no device took the layers; None
    for a case with no GPU backend or no layer asked for. llama.cpp offloads the model's blocks
    (`n_layers`, GGUF block_count) plus its output layer, and -1 asks for all of them."""
    via = [b for b in str(effective.get("backends") or "").split(",") if b in GPU_BACKENDS]
    asked = int(effective.get("n_gpu_layers") or 0)
    if not via or asked == 0:
        return None
    note = effective.get("device_note")
    device = str(effective.get("gpu_info") or "")
    if not device:
        return f"GPU: no layer offloaded: {note or ', '.join(via) + ' found no GPU device'}"
    total = n_layers + 1 if n_layers else None
    layers = (f"{total if asked < 0 else min(asked, total)}/{total} layers" if total
              else "all layers" if asked < 0 else f"up to {asked} layers")
    return f"GPU: {layers} on {device} via {', '.join(via)}" + (f"; {note}" if note else "")


def _the_row(rows: list[dict[str, Any]], case: Case, completed: Completed) -> dict[str, Any]:
    if len(rows) != 1:
        tail = completed.stderr_tail(10)
        raise EngineOutputError(f"expected one llama-bench result for {case.label}, got {len(rows)}; stderr tail:\n{tail}")
    row = rows[0]
    want = {"n_prompt": case.n_prompt, "n_gen": case.n_gen, "n_depth": case.depth}
    got = {k: row.get(k) for k in want}
    if got != want:
        raise EngineOutputError(f"llama-bench ran {got}, but the case asked for {want}")
    for key in ("avg_ts", "samples_ts"):
        if key not in row:
            raise EngineOutputError(f"llama-bench result lacks '{key}': {json.dumps(row)[:300]}")
    return row
