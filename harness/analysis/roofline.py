"""The decode roofline: how many tokens/s memory bandwidth allows, and how close a case came.

Generating one token reads every weight matrix once plus the KV cache written so far, and
does little arithmetic per byte read, so on a CPU the ceiling is bandwidth / bytes per token.
Bytes per token are counted from the GGUF's tensor table as stored (quantized sizes), with
the token embedding counted only where it doubles as the output matrix (no `output.weight`):
otherwise a token looks up one row of it, not the whole table. The KV cache read at depth d
is layers x d x KV heads x head size x (bytes per K element + bytes per V element).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gguf
import pandas as pd

from harness.runtimes.traffic import ModelTraffic
from harness.store.db import Store
from harness.telemetry.bandwidth import Bandwidth

DEFAULT_KV_TYPE = "f16"  # llama.cpp's default K and V cache type
_CPU_BACKENDS = {"", "CPU", "BLAS"}


def element_bytes(cache_type: str) -> float:
    """Bytes per element of a llama.cpp cache type (`f16`, `q8_0`, ...): block bytes / block size."""
    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[cache_type.upper()]]
    except KeyError:
        raise ValueError(f"unknown KV cache type {cache_type!r}") from None
    return size / block


def kv_bytes(traffic: ModelTraffic, depth: int, type_k: str = DEFAULT_KV_TYPE, type_v: str = DEFAULT_KV_TYPE) -> float:
    """The KV cache a token reads at `depth` tokens of context."""
    per_token = sum(traffic.head_count_kv) * (traffic.head_dim_k * element_bytes(type_k) + traffic.head_dim_v * element_bytes(type_v))
    return depth * per_token


def bytes_per_token(traffic: ModelTraffic, depth: int, type_k: str = DEFAULT_KV_TYPE, type_v: str = DEFAULT_KV_TYPE) -> float:
    return traffic.weight_bytes + kv_bytes(traffic, depth, type_k, type_v)


def gpu_note(effective: dict[str, Any]) -> str | None:
    """Why the CPU probe does not bound this case, when a GPU ran the model (from the
    settings the engine reported it used). A GPU build whose backend found no device to take
    the layers (llama-bench's `gpu_info` empty) ran on the CPU, which the roofline does bound."""
    backends = {b.strip() for b in str(effective.get("backends", "")).split(",")}
    gpu = sorted(backends - _CPU_BACKENDS)
    if not gpu or int(effective.get("n_gpu_layers") or 0) <= 0 or effective.get("gpu_info") == "":
        return None
    device = f"{effective['gpu_info']} via " if effective.get("gpu_info") else ""
    said = f"; {effective['device_note']}" if effective.get("device_note") else ""  # e.g. lavapipe, a GPU API on the CPU
    return (f"a GPU runs the model ({device}{', '.join(gpu)}, {effective['n_gpu_layers']} layers offloaded): "
            f"the CPU memory-bandwidth probe does not bound it{said}")


def bandwidth_for(stored: Mapping[str, Any] | None, n_threads: int | None) -> tuple[Bandwidth | None, str]:
    """The stored measurement made with `n_threads` threads, or (None, why there is none)."""
    if not stored:
        return None, "no memory bandwidth was measured on this run"
    if "error" in stored:
        return None, f"memory bandwidth not measured: {stored['error']}"
    results = [Bandwidth.from_json(r) for r in stored.get("results", [])]
    for result in results:
        if n_threads is None or result.threads == n_threads:
            return result, ""
    measured = ", ".join(str(r.threads) for r in results) or "none"
    errors = "; ".join(stored.get("errors", []))
    return None, f"bandwidth measured at {measured} thread(s), the case ran {n_threads}" + (f" ({errors})" if errors else "")


def roofline_frame(store: Store, run_ids: list[str]) -> pd.DataFrame:
    """One row per decode case: measured tok/s, bytes per token, bandwidth, roofline tok/s and
    efficiency, or a note saying which of them is missing and why. Reads stored metrics, the
    case and each execution's `effective` settings only."""
    rows = []
    for run_id in run_ids:
        run = store.run(run_id)
        model = store.model_info(run.model_sha256)
        traffic = ModelTraffic.from_json(model["traffic"]) if "traffic" in model else None
        cases = {c.key: c for c in store.cases(run.id)}
        tps = {(m["case_key"], m["rep"]): m["value"] for m in store.measurements([run.id])
               if m["metric"] == "decode_tps" and m["value"] is not None}
        executions: dict[str, list] = {}
        for e in store.executions(run.id):
            if e.status == "ok" and cases[e.case_key].kind == "decode" and cases[e.case_key].engine == "llamabench":
                executions.setdefault(e.case_key, []).append(e)
        for key, done in executions.items():
            measured = [tps[(key, e.rep)] for e in done if (key, e.rep) in tps]
            rows.append(_row(run.id, run.device, model.get("filename", "?"), cases[key], done[0].raw.effective, measured,
                             run.facts.get("bandwidth"), traffic))
    return pd.DataFrame(rows, columns=_COLUMNS)


_COLUMNS = ["run_id", "device", "model", "case", "depth", "n_threads", "type_k", "type_v", "decode_tps", "bytes_per_token",
            "bandwidth_gbps", "bandwidth_min", "bandwidth_max", "roofline_tps", "efficiency", "note"]


def _row(run_id: str, device: str, model: str, case: Any, effective: dict[str, Any], tps: list[float], bandwidth: Any,
         traffic: ModelTraffic | None) -> dict[str, Any]:
    type_k = str(effective.get("type_k") or case.setting("cache_type_k") or DEFAULT_KV_TYPE)
    type_v = str(effective.get("type_v") or case.setting("cache_type_v") or DEFAULT_KV_TYPE)
    n_threads = effective.get("n_threads")
    row: dict[str, Any] = {"run_id": run_id, "device": device, "model": model, "case": case.label, "depth": case.depth,
                           "n_threads": n_threads, "type_k": type_k, "type_v": type_v,
                           "decode_tps": sum(tps) / len(tps) if tps else None, "bytes_per_token": None,
                           "bandwidth_gbps": None, "bandwidth_min": None, "bandwidth_max": None,
                           "roofline_tps": None, "efficiency": None, "note": ""}
    if traffic is None:
        row["note"] = "the model's tensor table was not recorded with this run (run it again to get a roofline)"
        return row
    row["bytes_per_token"] = bytes_per_token(traffic, case.depth, type_k, type_v)
    if note := gpu_note(effective):
        row["note"] = note
        return row
    measured, why = bandwidth_for(bandwidth, int(n_threads) if n_threads is not None else None)
    if measured is None:
        row["note"] = why
        return row
    spread = measured.spread()
    roof = measured.gbps * 1e9 / row["bytes_per_token"]
    row.update(bandwidth_gbps=measured.gbps, bandwidth_min=spread["min"], bandwidth_max=spread["max"], roofline_tps=roof,
               efficiency=row["decode_tps"] / roof if row["decode_tps"] else None)
    if traffic.mixture_of_experts:
        row["note"] = "mixture of experts: every expert counted, so the roofline is low and efficiency high"
    elif row["efficiency"] and row["efficiency"] > 1:
        row["note"] = "above the roofline: part of the model stays in the CPU caches between tokens"
    return row
