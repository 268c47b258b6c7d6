"""llama.cpp runtimes: llama-bench and llama-perplexity (and on the host llama-quantize) built from
the source pinned by llama-cpp-python, cached by content hash under `cache_dir()/runtimes/<key>/`
(see `build.py` for the layout); and what the quality cases read: corpus, reference logits, variants."""

from __future__ import annotations

from harness.runtimes.build import BuildProgress, Manifest, Runtime, build_runtime, find_runtime
from harness.runtimes.source import LLAMA_CPP_PYTHON_VERSION
from harness.runtimes.targets import target_names

__all__ = [
    "LLAMA_CPP_PYTHON_VERSION",
    "BuildProgress",
    "Manifest",
    "Runtime",
    "build_runtime",
    "find_runtime",
    "target_names",
]
