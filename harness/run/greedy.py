"""The greedy check's reference: llama.cpp's greedy output on the host CPU for the model under test.

The host runtime's own llama-server, started here on the CPU with one slot, answers the greedy
prompts (harness.engines.greedy) with the same requests the server cases send, so the only
difference left between reference and device is what the device computes. Computed once
and cached by (model sha256, prompts, K, host runtime key) under the cache dir; a reference that
cannot be computed leaves every server case's greedy figures missing with the reason, never the
case.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.engines import greedy
from harness.engines.server import HEALTH_TIMEOUT_S, STOP_GRACE_S, healthy
from harness.engines.streams import Endpoint, wait_until
from harness.paths import cache_dir, write_atomic
from harness.runtimes.build import Runtime


def reference_inputs(model_path: Path, model_sha256: str, host_runtime: Callable[[], Runtime]) -> dict[str, str]:
    """A server case's `greedy` input (the reference file) or `greedy_missing` (why there is none)."""
    try:
        return {"greedy": str(greedy_reference(model_path, model_sha256, host_runtime()))}
    except (*greedy.GREEDY_ERRORS, OSError, subprocess.SubprocessError) as exc:
        return {"greedy_missing": f"no host reference: {type(exc).__name__}: {exc}"}


def greedy_reference(model_path: Path, model_sha256: str, runtime: Runtime) -> Path:
    """The cached reference file: {texts, prompts (their token ids), k, tokens (greedy ids per prompt), runtime, model}."""
    identity = {"model_sha256": model_sha256, "texts": list(greedy.GREEDY_PROMPTS), "k": greedy.GREEDY_TOKENS,
                "runtime": runtime.manifest.key}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    path = cache_dir() / "greedy" / f"{key[:32]}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({**identity, **_compute(model_path, runtime)}))
    return path


def _compute(model_path: Path, runtime: Runtime) -> dict[str, Any]:
    with socket.socket() as s:  # a free port on the loopback: the server binds it right after
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [str(runtime.binary("llama-server")), "-m", str(model_path), "--host", "127.0.0.1", "--port", str(port),
            "-np", "1", "-c", "1024", "-ngl", "0", "--seed", "42"]
    with tempfile.TemporaryFile() as log, subprocess.Popen(argv, stdout=log, stderr=log) as server:
        try:
            endpoint = Endpoint(f"http://127.0.0.1:{port}")
            up = wait_until(lambda: server.poll() is not None or healthy(endpoint), timeout_s=HEALTH_TIMEOUT_S)
            if not up or server.poll() is not None:
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
                raise ValueError(f"the host llama-server did not start: {' | '.join(tail)}")
            prompts = [greedy.tokenize(endpoint, text) for text in greedy.GREEDY_PROMPTS]
            return {"prompts": prompts, "tokens": greedy.generate(endpoint, prompts, greedy.GREEDY_TOKENS)}
        finally:
            server.terminate()
            try:
                server.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                server.kill()
