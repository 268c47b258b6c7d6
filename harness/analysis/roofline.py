"""The decode roofline: how many tokens/s memory bandwidth allows, and how close a case came.

Generating one token reads every weight matrix once plus the KV cache written so far, and
does little arithmetic per byte read, so on a CPU the ceiling is bandwidth / bytes per token.
Bytes per token are counted from the GGUF's tensor table as stored (quantized sizes), with
the token embedding counted only where it doubles as the output matrix (no `output.weight`):
otherwise a token looks up one row of it, not the whole table. The KV cache read at depth d
is layers x d x KV heads x head size x (bytes per K element + bytes per V element).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gguf
import pandas as pd

from harness.results.bandwidth import bandwidth_for
from harness.paths import cache_dir
from harness.store.db import Store

# Tables read one row per token, never whole: not part of a token's traffic.
_LOOKUP_TABLES = ("token_embd.weight", "position_embd.weight", "token_types.weight")
_OUTPUT = "output.weight"
DEFAULT_KV_TYPE = "f16"  # llama.cpp's default K and V cache type
_CPU_BACKENDS = {"", "CPU", "BLAS"}


@dataclass(frozen=True)
class ModelTraffic:
    """What one decode step of a model reads, independent of depth, plus what the KV cache
    term needs (per-layer KV head counts: some models vary them by layer)."""

    weight_bytes: int
    embedding_tied: bool  # no output.weight: the token embedding is the output matrix, read whole
    head_count_kv: tuple[int, ...]  # per layer
    head_dim_k: int
    head_dim_v: int
    mixture_of_experts: bool  # every expert counted: an upper bound on bytes, so a low roofline

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "head_count_kv": list(self.head_count_kv)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ModelTraffic":
        return cls(int(d["weight_bytes"]), bool(d["embedding_tied"]), tuple(d["head_count_kv"]), int(d["head_dim_k"]),
                   int(d["head_dim_v"]), bool(d["mixture_of_experts"]))


def read_traffic(reader: gguf.GGUFReader) -> ModelTraffic:
    """Count from an open GGUF (pure over the reader)."""
    names = {t.name for t in reader.tensors}
    tied = _OUTPUT not in names
    weight = sum(int(t.n_bytes) for t in reader.tensors
                 if t.name not in _LOOKUP_TABLES or (tied and t.name == "token_embd.weight"))
    arch = str(reader.get_field("general.architecture").contents())

    def meta(key: str) -> Any:
        field = reader.get_field(f"{arch}.{key}")
        return None if field is None else field.contents()

    layers = int(meta("block_count"))
    n_head = meta("attention.head_count")
    kv = meta("attention.head_count_kv")
    kv = n_head if kv is None else kv
    per_layer = tuple(int(v) for v in kv) if isinstance(kv, list) else (int(kv),) * layers
    first_head = int(n_head[0] if isinstance(n_head, list) else n_head)
    head_dim = int(meta("embedding_length")) // first_head
    return ModelTraffic(
        weight_bytes=weight,
        embedding_tied=tied,
        head_count_kv=per_layer,
        head_dim_k=int(meta("attention.key_length") or head_dim),
        head_dim_v=int(meta("attention.value_length") or head_dim),
        mixture_of_experts=any("_exps." in name for name in names),
    )


def model_traffic(path: Path, sha256: str) -> ModelTraffic:
    """`read_traffic` of a model file, cached by its content hash (the reader takes seconds)."""
    cached = cache_dir() / "traffic" / f"{sha256}.json"
    try:
        return ModelTraffic.from_json(json.loads(cached.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    traffic = read_traffic(gguf.GGUFReader(path))
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(traffic.to_json()))
    os.replace(tmp, cached)
    return traffic


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
    settings the engine reported it used)."""
    backends = {b.strip() for b in str(effective.get("backends", "")).split(",")}
    gpu = sorted(backends - _CPU_BACKENDS)
    if gpu and int(effective.get("n_gpu_layers") or 0) > 0:
        return (f"a GPU runs the model ({', '.join(gpu)}, {effective['n_gpu_layers']} layers offloaded): "
                "the CPU memory-bandwidth probe does not bound it")
    return None


def roofline_frame(store: Store, run_ids: list[str]) -> pd.DataFrame:
    """One row per decode case: measured tok/s, bytes per token, bandwidth, roofline tok/s and
    efficiency, or a note saying which of them is missing and why. Reads stored metrics, the
    case and each execution's `effective` settings only."""
    rows = []
    for run_id in run_ids:
        run = store.run(run_id)
        facts = json.loads(run["facts_json"])
        model = store.model_info(run["model_sha256"])
        traffic = ModelTraffic.from_json(model["traffic"]) if "traffic" in model else None
        cases = {c.key: c for c in store.cases(run["id"])}
        tps = {(m["case_key"], m["rep"]): m["value"] for m in store.measurements([run["id"]])
               if m["metric"] == "decode_tps" and m["value"] is not None}
        executions: dict[str, list] = {}
        for e in store.executions(run["id"]):
            if e.status == "ok" and cases[e.case_key].kind == "decode" and cases[e.case_key].engine == "llamabench":
                executions.setdefault(e.case_key, []).append(e)
        for key, done in executions.items():
            measured = [tps[(key, e.rep)] for e in done if (key, e.rep) in tps]
            rows.append(_row(run["id"], run["device"], model.get("filename", "?"), cases[key], done[0].effective, measured,
                             facts.get("bandwidth"), traffic))
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
