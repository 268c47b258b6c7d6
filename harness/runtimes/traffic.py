"""What one decode step of a model reads (its per-token memory traffic), counted from the
GGUF's tensor table as stored (quantized sizes): the model's side of the decode roofline.

Counted once per model file when a run is prepared and stored with the run's model record, so
the roofline (harness.analysis.roofline) reads it from the store. The token embedding counts
only where it doubles as the output matrix (no `output.weight`): otherwise a token looks up one
row of it, not the whole table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gguf

from harness.paths import cache_dir, write_atomic

# Tables read one row per token, never whole: not part of a token's traffic.
_LOOKUP_TABLES = ("token_embd.weight", "position_embd.weight", "token_types.weight")
_OUTPUT = "output.weight"


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
    write_atomic(cached, json.dumps(traffic.to_json()))
    return traffic
