"""The quality engine: one quality case = one `llama-perplexity --kl-divergence` process.

The device scores the reference's tokens with the same runtime and the same numerics settings
(threads, GPU layers, flash attention, KV cache types) as the speed cases, and compares its
token probabilities with the reference's: perplexity with its ±, mean and 99th-percentile KL
divergence, how often both put the same token on top, and the RMS of the probability change.
llama-perplexity exits 0 even when it could not compare (a foreign or short logits file), so
a result without its statistics block is a failed case here, with the error lines it printed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from harness.drivers.base import Completed
from harness.engines import ENV_SETTINGS, EngineOutputError, EngineResult, LlamaCppEngine, env_prefix
from harness.engines.kldbase import quality_metrics
from harness.records import Case, Mark

# suite setting -> llama-perplexity flag: the settings that change what the backend computes.
FLAGS: dict[str, str] = {
    "threads": "-t",
    "cpu_mask": "-C",
    "cpu_strict": "--cpu-strict",
    "poll": "--poll",
    "n_gpu_layers": "-ngl",
    "flash_attn": "-fa",
    "cache_type_k": "-ctk",
    "cache_type_v": "-ctv",
    "ubatch": "-ub",
}
_NUMBER = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_PM = rf"{_NUMBER}\s*±\s*{_NUMBER}"
# figure -> its line in the statistics block; group 1 is the value, group 2 its ± where it has one
_STATISTICS: dict[str, re.Pattern[str]] = {
    "ppl": re.compile(rf"Mean PPL\(Q\)\s*:\s*{_PM}"),
    "ppl_base": re.compile(rf"Mean PPL\(base\)\s*:\s*{_PM}"),
    "kld_mean": re.compile(rf"Mean\s+KLD:\s*{_PM}"),
    "kld_p99": re.compile(rf"99\.0%\s+KLD:\s*{_NUMBER}"),
    "rms_dp": re.compile(rf"RMS Δp\s*:\s*{_PM}\s*%"),
    "top1_agreement": re.compile(rf"Same top p:\s*{_PM}\s*%"),
}
# the ± of these is stored as a figure of its own (the standard error llama-perplexity gives)
_ERRORS = {"ppl": "ppl_stderr", "kld_mean": "kld_stderr", "top1_agreement": "top1_stderr"}
_SYSTEM = re.compile(r"system_info: (.*)")
_THREADS = re.compile(r"n_threads = (\d+)")
_CHUNKS = re.compile(r"computing over (\d+) chunks, n_ctx=(\d+)")
NOT_TIMED = "a quality case: its figures are of the output, not of speed (no measured window)"


class Perplexity(LlamaCppEngine):
    name = "perplexity"
    host_only = False
    marks = None
    settings = (*FLAGS, *ENV_SETTINGS)  # the Vulkan device too: the quality case must score the device the speed cases ran on

    def unsupported(self, case: Case) -> str | None:
        return None

    def argv(self, case: Case, *, runtime_dir: str, model_path: str, inputs: Mapping[str, str] | None = None) -> list[str]:
        if not inputs or "logits" not in inputs:
            raise ValueError(f"{case.label}: the reference logits were not staged")
        binary = str(PurePosixPath(runtime_dir) / "bin" / "llama-perplexity")
        n_ctx = str(case.n_prompt)
        # one sequence per batch (-b = context): the device holds one window's KV cache, not four
        argv = [*env_prefix(case), binary, "-m", model_path, "--kl-divergence-base", inputs["logits"], "--kl-divergence",
                "-c", n_ctx, "-b", n_ctx, "--chunks", str(case.quality_value("chunks"))]
        for key, value in case.settings:
            if key in FLAGS:
                argv += [FLAGS[key], _flag(value)]
        if override := case.quality_value("override_kv"):
            argv += ["--override-kv", str(override)]
        return argv

    def parse(self, case: Case, completed: Completed, marks: Sequence[Mark] = ()) -> EngineResult:
        text = completed.stdout + "\n" + completed.stderr
        if "KL divergence statistics" not in text:
            errors = [line for line in text.splitlines() if "error" in line.lower() or "failed" in line.lower() or "inconsistent" in line]
            why = "\n".join(errors[-5:]) or completed.stderr_tail(10)
            raise EngineOutputError(f"llama-perplexity printed no KL divergence statistics for {case.label}:\n{why}")
        raw: dict[str, float] = {}
        for name, pattern in _STATISTICS.items():
            if found := pattern.search(text):
                raw[name] = float(found.group(1))
                if name in _ERRORS:
                    raw[_ERRORS[name]] = float(found.group(2))
        metrics = quality_metrics(raw, "llama-perplexity printed no line for it")
        return EngineResult(metrics=metrics, no_window=NOT_TIMED, raw=[raw], effective=_effective(case, text))


def _effective(case: Case, text: str) -> dict[str, Any]:
    """What the process reports it ran: threads, chunks, context and its backends' features
    (system_info); the case's settings besides."""
    effective: dict[str, Any] = dict(case.settings)
    if system := _SYSTEM.search(text):
        effective["system_info"] = system.group(1).strip()
    if threads := _THREADS.search(text):
        effective["n_threads"] = int(threads.group(1))
    if chunks := _CHUNKS.search(text):
        effective["n_chunks"], effective["n_ctx"] = int(chunks.group(1)), int(chunks.group(2))
    return effective


def _flag(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
