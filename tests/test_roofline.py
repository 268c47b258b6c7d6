"""Bytes per token from real GGUF tensor tables, and the roofline on a real host run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from harness.analysis.roofline import bytes_per_token, element_bytes, gpu_note, kv_bytes
from harness.runtimes.traffic import read_traffic

from .conftest import REPO


def test_default_model_bytes_per_token_match_a_hand_count(default_model):
    reader = gguf.GGUFReader(default_model)
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    # Hand count: every block tensor, the final norm, and the output matrix, which SmolLM2
    # does not store: it reuses the token embedding, so that table is read whole per token.
    assert "output.weight" not in sizes
    hand = sum(n for name, n in sizes.items() if name.startswith("blk.")) + sizes["output_norm.weight"] + sizes["token_embd.weight"]
    traffic = read_traffic(reader)
    assert traffic.embedding_tied and traffic.weight_bytes == hand
    # KV at depth 2048: 30 layers x 2048 x 3 KV heads x 64 (576 / 9 heads) x (K + V) x 2 bytes (f16)
    assert kv_bytes(traffic, 2048) == 30 * 2048 * 3 * 64 * 2 * 2
    assert bytes_per_token(traffic, 0) == hand
    assert bytes_per_token(traffic, 2048) == hand + 30 * 2048 * 3 * 64 * 2 * 2
    # a q8_0 K cache: 34 bytes per 32 elements
    assert kv_bytes(traffic, 2048, "q8_0", "f16") == 30 * 2048 * 3 * 64 * (34 / 32 + 2)


def _synthetic(path: Path, *, untied: bool) -> None:
    """A two-layer llama-shaped GGUF: 8-wide, 2 heads, 1 KV head, vocab 32."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.ones((32, 8), dtype=np.float32))
    if untied:
        writer.add_tensor("output.weight", np.ones((32, 8), dtype=np.float16))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    for layer in range(2):
        writer.add_tensor(f"blk.{layer}.attn_q.weight", np.ones((8, 8), dtype=np.float16))
        writer.add_tensor(f"blk.{layer}.attn_k.weight", np.ones((4, 8), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("untied", [False, True])
def test_synthetic_tied_and_untied_embeddings(tmp_path, untied):
    path = tmp_path / "tiny.gguf"
    _synthetic(path, untied=untied)
    traffic = read_traffic(gguf.GGUFReader(path))
    blocks = 2 * (8 * 8 * 2 + 4 * 8 * 2)
    norm = 8 * 4
    # untied: the f16 output matrix is read, the f32 embedding only looked up (one row): not counted
    expected = blocks + norm + (32 * 8 * 2 if untied else 32 * 8 * 4)
    assert traffic.embedding_tied is not untied
    assert traffic.weight_bytes == expected
    assert traffic.head_count_kv == (1, 1) and traffic.head_dim_k == traffic.head_dim_v == 4
    assert kv_bytes(traffic, 10) == 2 * 10 * 1 * 4 * 2 * 2


def test_cache_types_and_gpu_cases():
    assert element_bytes("f16") == 2 and element_bytes("f32") == 4 and element_bytes("q4_0") == 18 / 32
    with pytest.raises(ValueError, match="unknown KV cache type"):
        element_bytes("f13")
    assert gpu_note({"backends": "CPU", "n_gpu_layers": 99}) is None  # a CPU-only build ignores -ngl
    assert "does not bound it" in gpu_note({"backends": "CUDA", "n_gpu_layers": 99})
    assert gpu_note({"backends": "CUDA", "n_gpu_layers": 0}) is None
    # a GPU build whose backend found no device ran on the CPU: the CPU roofline bounds it (seen with Vulkan and no device named)
    assert gpu_note({"backends": "Vulkan", "n_gpu_layers": 99, "gpu_info": ""}) is None
    named = gpu_note({"backends": "Vulkan", "n_gpu_layers": 99, "gpu_info": "NVIDIA GeForce RTX 3060"})
    assert named == ("a GPU runs the model (NVIDIA GeForce RTX 3060 via Vulkan, 99 layers offloaded): "
                     "the CPU memory-bandwidth probe does not bound it")
    lavapipe = {"backends": "Vulkan", "n_gpu_layers": 99, "gpu_info": "llvmpipe (LLVM 15.0.6, 256 bits)",
                "device_note": "lavapipe: a CPU implementation; figures are not GPU figures"}
    assert gpu_note(lavapipe).endswith("does not bound it; lavapipe: a CPU implementation; figures are not GPU figures")


DECODE = """
name = "roofline"
repetitions = 1
inprocess_repetitions = 2
[[decode]]
tokens = 8
depth = [0, 256]
"""


@pytest.mark.slow
def test_host_run_gives_an_efficiency_figure(tmp_path, host_runtime, default_model):
    suite = tmp_path / "roofline.toml"
    suite.write_text(DECODE)
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "harness", "run", "--suite", str(suite), "--results", str(results), "--remeasure-bandwidth"],
                         capture_output=True, text=True, timeout=1500, env=env)
    assert run.returncode == 0, run.stderr
    assert "memory bandwidth:" in run.stderr and "decode roofline" in run.stdout
    shown = json.loads(subprocess.run([sys.executable, "-m", "harness", "results", "show", "--json", "--results", str(results)],
                                      capture_output=True, text=True, timeout=300, env=env).stdout)
    facts = shown["run"]["facts"]
    assert "bandwidth" in facts and facts["bandwidth"]["cached"] is False
    rows = {r["case"]: r for r in shown["roofline"]}
    for label in ("decode n8", "decode n8 @d256"):
        row = rows[label]
        assert row["bandwidth_gbps"] > 0 and row["roofline_tps"] > 0 and row["efficiency"] > 0, row
        assert row["efficiency"] == pytest.approx(row["decode_tps"] / row["roofline_tps"])
    assert rows["decode n8 @d256"]["bytes_per_token"] > rows["decode n8"]["bytes_per_token"]
    html = next(results.glob("runs/*/report.html")).read_text()
    assert "Decode roofline" in html and "Decode vs its memory-bandwidth roofline" in html and "Published claims" in html


def test_roofline_and_report_read_stored_metrics_and_effective_settings(tmp_path):
    """The raw llama-bench records disagree on purpose: analysis must not read them."""
    from harness.records import Case
    from harness.report.html import render_report
    from harness.records import Metric
    from harness.runtimes.traffic import ModelTraffic
    from harness.analysis.roofline import roofline_frame
    from harness.store.db import ExecutionRaw, Store
    from harness.runtimes.models import ModelInfo

    model = ModelInfo(path="/m/m.gguf", filename="m.gguf", sha256="cd" * 32, file_size=1, architecture="llama", name="m",
                      parameter_count=1, quantization="Q4_1", context_length=8192, n_layers=30, n_embd=576, n_head=9,
                      n_head_kv=3, tensor_count=1, gguf_version=3)
    store = Store(tmp_path / "results")
    case = Case("llamabench", "decode", 0, 64, 512, inprocess_reps=2)
    traffic = ModelTraffic(weight_bytes=100_000_000, embedding_tied=True, head_count_kv=(3,) * 30, head_dim_k=64,
                           head_dim_v=64, mixture_of_experts=False)
    run_id = store.create_run(
        device="orin", suite_name="t", suite_text="", repetitions=2, timeout_s=60, cases=[case], model_sha256="cd" * 32,
        model_info={**model.to_json(), "traffic": traffic.to_json()}, runtime_key=None, runtime_manifest=None,
        facts={"name": "orin", "gpus": []}, command={}, version="test")
    effective = {"backends": "CUDA", "gpu_info": "Orin", "n_gpu_layers": 99, "type_k": "q8_0", "n_threads": 6}
    for rep, tps in enumerate((40.0, 44.0)):
        store.record_execution(run_id, case, rep, status="ok", exit_code=0, wall_s=1.0, started_at="t", error=None, build=None,
                               raw=ExecutionRaw(records=({"avg_ts": 1.0, "backends": "CPU", "type_k": "f16", "n_threads": 1},), effective=effective),
                               metrics=[Metric("decode_tps", tps, "tok/s")])
    store.finish_run(run_id, "finished")
    (row,) = roofline_frame(store, [run_id]).to_dict("records")
    assert row["decode_tps"] == 42.0 and row["type_k"] == "q8_0" and row["n_threads"] == 6
    assert row["bytes_per_token"] == bytes_per_token(traffic, 512, "q8_0", "f16")
    assert "a GPU runs the model (Orin via CUDA, 99 layers offloaded)" in row["note"]
    html = render_report(store, [run_id], tmp_path / "report.html").read_text()
    assert "CUDA (Orin), GPU layers 99" in html and "CPU, GPU layers" not in html
