"""Build targets: which CMake definitions turn the pinned llama.cpp tree into a runtime.

A target is data plus one small function from the user's own definitions to the target's.
Every target-specific decision lives in its entry here, so adding one (the static
`linux-aarch64` cross build, say) is one function and one line in `_REGISTRY`; the builder
never asks which target it is building.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from harness.errors import BuildError, EdgebenchError

# Every target gets these. Only llama-bench is wanted, statically linked against llama/ggml
# so the runtime folder is one relocatable binary, and nothing that talks to the network.
COMMON_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
)

_DEFINE = re.compile(r"(?:-D)?([A-Za-z_][A-Za-z0-9_]*)(?::[A-Z]+)?=(.*)", re.DOTALL)

FlagsFn = Callable[[Mapping[str, str]], tuple[str, ...]]


@dataclass(frozen=True)
class Target:
    """One way to build llama-bench; `flags` gets the user's definitions (NAME -> value)
    so a target can step aside where the user already decided (e.g. CUDA architectures)."""

    name: str
    summary: str
    flags: FlagsFn


def parse_defines(flags: Iterable[str]) -> dict[str, str]:
    """`-DNAME=VALUE` or `NAME=VALUE` (optionally `NAME:TYPE=VALUE`) -> {NAME: VALUE}, last wins.

    Only definitions are accepted: anything else (`-G`, `--fresh`) would change the build
    without being part of the cache key's meaning, so it is refused here.
    """
    defines: dict[str, str] = {}
    for flag in flags:
        match = _DEFINE.fullmatch(flag)
        if not match:
            raise EdgebenchError(f"build flag {flag!r} is not a CMake definition like -DNAME=VALUE")
        defines[match.group(1)] = match.group(2)
    return defines


def merge_flags(*groups: Iterable[str]) -> tuple[str, ...]:
    """Join flag groups into one canonical `-DNAME=VALUE` list: a later group overrides an
    earlier one in place, so equal builds get equal lists (and equal cache keys)."""
    merged: dict[str, str] = {}
    for group in groups:
        merged.update(parse_defines(group))
    return tuple(f"-D{name}={value}" for name, value in merged.items())


def _host_flags(_user: Mapping[str, str]) -> tuple[str, ...]:
    """Native CPU code (`-march=native`), so a host runtime only runs on CPUs like this one.

    On macOS llama.cpp turns Metal on by default; we leave it so, and say it explicitly so the
    manifest and the cache key show that the "host" runtime there offloads to the GPU.
    """
    flags = ("-DGGML_NATIVE=ON",)
    if platform.system() == "Darwin":
        flags += ("-DGGML_METAL=ON",)
    return flags


def cuda_architectures(nvidia_smi_output: str) -> list[str]:
    """`nvidia-smi --query-gpu=compute_cap` lines ("8.9") -> sorted unique CMake archs ("89")."""
    caps = {line.strip() for line in nvidia_smi_output.splitlines() if line.strip()}
    if any(not re.fullmatch(r"\d+\.\d+", cap) for cap in caps):
        raise BuildError(f"unexpected nvidia-smi compute_cap output: {nvidia_smi_output!r}")
    return sorted((cap.replace(".", "") for cap in caps), key=int)


def _detect_cuda_architectures() -> list[str]:
    """Ask nvidia-smi which GPUs are here; building for exactly those keeps the build short."""
    hint = "; pass CMAKE_CUDA_ARCHITECTURES=<e.g. 89> to build without one"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise BuildError(f"no NVIDIA GPU found: nvidia-smi is not on PATH{hint}")
    argv = [smi, "--query-gpu=compute_cap", "--format=csv,noheader"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"no NVIDIA GPU found: {smi} failed: {exc}{hint}") from exc
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        raise BuildError(f"no NVIDIA GPU found: nvidia-smi exited {done.returncode}: {said}{hint}")
    archs = cuda_architectures(done.stdout)
    if not archs:
        raise BuildError(f"no NVIDIA GPU found: nvidia-smi lists no GPU{hint}")
    return archs


def _host_cuda_flags(user: Mapping[str, str]) -> tuple[str, ...]:
    """The host CPU build plus CUDA for the GPUs on this machine (or the user's architectures)."""
    flags = _host_flags(user) + ("-DGGML_CUDA=ON",)
    if "CMAKE_CUDA_ARCHITECTURES" in user:
        return flags
    return flags + (f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(_detect_cuda_architectures())}",)


_REGISTRY: dict[str, Target] = {
    target.name: target
    for target in (
        Target("host", "native CPU build for this machine (Metal on macOS)", _host_flags),
        Target("host-cuda", "native CPU + CUDA for this machine's NVIDIA GPUs", _host_cuda_flags),
    )
}


def target_names() -> list[str]:
    """Names accepted by `build_runtime`, for CLI help and error messages."""
    return sorted(_REGISTRY)


def get_target(name: str) -> Target:
    """The registered target, or an error that lists the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EdgebenchError(
            f"unknown runtime target {name!r}; valid targets: {', '.join(target_names())}"
        ) from None

