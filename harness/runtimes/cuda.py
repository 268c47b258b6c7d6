"""The CUDA toolkit pieces a `host-cuda` build needs besides nvcc: cuBLAS and the driver library.

ggml-cuda links cuBLAS (`CUDA::cublas`) and, for its VMM memory pool, the driver (`CUDA::cuda_driver`,
libcuda.so). A toolkit assembled from NVIDIA's PyPI wheels (nvidia-cuda-nvcc, nvidia-cuda-runtime, as on
machines with no GPU) has neither, and CMake then fails only after configuring ("Target links to
CUDA::cublas but the target was not found"). So both are checked before CMake runs, with one line that
says what is missing and the way out. Where the toolkit lacks cuBLAS and `scripts/setup.sh --test`
unpacked NVIDIA's `nvidia-cublas` wheel (from PyPI) into `fallback_dir()`, the build uses that one,
passed to CMake as `CUDA_cublas_LIBRARY`/`CUDA_cublasLt_LIBRARY` and an include directory: the same
library NVIDIA's toolkit installer ships, never a patched llama.cpp.

What a CUDA build used (nvcc's release, cuBLAS's version, the architectures its kernels were compiled
for) is read back from CMake's cache and kept in the runtime's manifest.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from harness.errors import BuildError
from harness.paths import cache_dir

_TOP = re.compile(r"^#\$ TOP=(.*)$", re.MULTILINE)
_RELEASE = re.compile(r"release (\d+)\.(\d+)")
_CUBLAS_VERSION = re.compile(r"^#define\s+CUBLAS_VER_(MAJOR|MINOR|PATCH|BUILD)\s+(\d+)", re.MULTILINE)
_CMAKE_ENTRY = re.compile(r"^(CMAKE_CUDA_COMPILER|CMAKE_CUDA_ARCHITECTURES|CUDA_cublas_LIBRARY|GGML_CUDA_NO_VMM):[A-Z]+=(.*)$", re.MULTILINE)
_HEADER = "cublas_v2.h"
_VERSION = re.compile(r"\d+(\.\d+)*")  # an unpacked wheel's folder; setup.sh's half-unpacked ones are hidden
# The Python package NVIDIA publishes cuBLAS in (its files sit under nvidia/cu<major>/).
WHEEL = "nvidia-cublas"


def nvcc(user: Mapping[str, str], env: Mapping[str, str] | None = None) -> str:
    """The nvcc CMake will use: the user's `CMAKE_CUDA_COMPILER`, else $CUDACXX, else the one on PATH."""
    env = os.environ if env is None else env
    found = user.get("CMAKE_CUDA_COMPILER") or env.get("CUDACXX") or shutil.which("nvcc")
    if not found:
        raise BuildError("host-cuda needs nvcc (the CUDA toolkit): none on PATH; install the toolkit or pass -DCMAKE_CUDA_COMPILER=PATH")
    return found


def toolkit(nvcc_path: str) -> tuple[Path, tuple[int, int]]:
    """(the toolkit's root, its (major, minor) release), as nvcc itself reports them: its dry run's
    `TOP=` (the same line CMake's FindCUDAToolkit reads, so a wrapper script on PATH is seen through)."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            dry = subprocess.run([nvcc_path, "-v", "--dryrun", str(Path(scratch) / "probe.cu")], capture_output=True, text=True, timeout=60)
            version = subprocess.run([nvcc_path, "--version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"host-cuda: {nvcc_path} did not run: {exc}") from exc
    top, release = _TOP.search(dry.stdout + dry.stderr), _RELEASE.search(version.stdout)
    if top is None or release is None:
        raise BuildError(f"host-cuda: {nvcc_path} did not say where its toolkit is (no TOP= in `nvcc -v --dryrun`, or no release in --version)")
    return Path(top.group(1)).resolve(), (int(release.group(1)), int(release.group(2)))


def _has_cublas(root: Path) -> bool:
    """Whether the toolkit at `root` has cuBLAS's header where FindCUDAToolkit looks (NVHPC's math_libs too)."""
    includes = [root / "include", *root.glob("targets/*/include"), *root.glob("math_libs/*/include")]
    return any((d / _HEADER).is_file() for d in includes)


def _library_dirs(root: Path) -> list[Path]:
    """Where CMake's FindCUDAToolkit looks for the toolkit's libraries (stubs included), then the
    system's own library folders, where an NVIDIA driver puts libcuda.so."""
    toolkit_dirs = [root / sub for sub in ("lib64", "lib", "lib64/stubs", "lib/stubs")]
    toolkit_dirs += [*sorted(root.glob("targets/*/lib")), *sorted(root.glob("targets/*/lib/stubs"))]
    system = [Path(f"/usr/lib/{platform.machine()}-linux-gnu"), Path("/usr/lib64"), Path("/usr/lib"), Path("/usr/local/lib")]
    return toolkit_dirs + system


def fallback_dir() -> Path:
    """Where setup.sh unpacks the nvidia-cublas wheel: one folder per wheel version."""
    return cache_dir() / "cuda-cublas"


def fallback(major: int) -> Path | None:
    """The newest unpacked cuBLAS for this CUDA major release (`<version>/nvidia/cu<major>`), None where there is none."""
    found = [(tuple(int(p) for p in part.parent.parent.name.split(".")), part) for part in fallback_dir().glob(f"*/nvidia/cu{major}")
             if _VERSION.fullmatch(part.parent.parent.name) and (part / "include" / _HEADER).is_file()]
    return max(found)[1] if found else None


def flags(user: Mapping[str, str], *, vmm: bool) -> tuple[str, ...]:
    """What a host-cuda build adds for cuBLAS: nothing where the toolkit has it (or the user named
    it), the cached wheel's library and headers where it does not. Raises one line, before CMake
    runs, where cuBLAS or (for a build with ggml's VMM pool, `vmm`) the driver library cannot be found."""
    root, (major, minor) = toolkit(nvcc(user))
    out: tuple[str, ...] = ()
    if "CUDA_cublas_LIBRARY" not in user and not _has_cublas(root):
        wheel = fallback(major)
        if wheel is None:
            raise BuildError(
                f"no cuBLAS in the CUDA {major}.{minor} toolkit at {root} (no {_HEADER}): ggml-cuda links it; install the toolkit's cuBLAS, "
                f"run scripts/setup.sh --test (it fetches NVIDIA's {WHEEL} wheel from PyPI into {fallback_dir()}) "
                "or pass -DCUDA_cublas_LIBRARY=, -DCUDA_cublasLt_LIBRARY= and -DCMAKE_CUDA_STANDARD_INCLUDE_DIRECTORIES=")
        lib = wheel / "lib"
        out = (f"-DCUDA_cublas_LIBRARY={lib / f'libcublas.so.{major}'}", f"-DCUDA_cublasLt_LIBRARY={lib / f'libcublasLt.so.{major}'}",
               f"-DCMAKE_CUDA_STANDARD_INCLUDE_DIRECTORIES={wheel / 'include'}")
    if vmm and "CUDA_cuda_driver_LIBRARY" not in user and not any((d / "libcuda.so").exists() for d in _library_dirs(root)):
        raise BuildError(
            f"no CUDA driver library (libcuda.so, from an NVIDIA driver or the toolkit's stubs) in the system or in {root}: "
            "ggml-cuda links it for its VMM memory pool; on a machine without an NVIDIA driver pass -DGGML_CUDA_NO_VMM=ON")
    return out


def toolchain(cmake_cache: str) -> dict[str, str]:
    """What a configured CUDA build uses, from its CMakeCache.txt: nvcc's release line, the CUDA
    architectures its kernels were compiled for, cuBLAS's version and GGML_CUDA_NO_VMM as CMake
    holds it; empty for a build without CUDA."""
    entries = dict(_CMAKE_ENTRY.findall(cmake_cache))
    if not (compiler := entries.get("CMAKE_CUDA_COMPILER")):
        return {}
    out = {"nvcc": _release_line(compiler), "cuda_architectures": entries.get("CMAKE_CUDA_ARCHITECTURES", "unknown")}
    if library := entries.get("CUDA_cublas_LIBRARY"):
        out["cublas"] = cublas_version(Path(library)) or f"unknown ({library})"
    if "GGML_CUDA_NO_VMM" in entries:
        out["ggml_cuda_no_vmm"] = entries["GGML_CUDA_NO_VMM"]
    return out


def cublas_version(library: Path) -> str | None:
    """cuBLAS's version from the `cublas_api.h` beside its library (../include, as in the wheel and
    the toolkit, else ../../include), e.g. "13.0.2.14"."""
    for include in (library.parent.parent / "include", library.parent.parent.parent / "include"):
        try:
            text = (include / "cublas_api.h").read_text(errors="replace")
        except OSError:
            continue
        parts = dict(_CUBLAS_VERSION.findall(text))
        if {"MAJOR", "MINOR", "PATCH"} <= parts.keys():
            return ".".join(parts[k] for k in ("MAJOR", "MINOR", "PATCH", "BUILD") if k in parts)
    return None


def _release_line(compiler: str) -> str:
    try:
        done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return f"unknown ({compiler})"
    release = [line.strip() for line in done.stdout.splitlines() if "release" in line]
    return release[0] if done.returncode == 0 and release else f"unknown ({compiler})"


def missing_cublas() -> int | None:
    """The CUDA major release whose cuBLAS setup.sh should fetch: the toolkit on PATH lacks it and
    the cache holds none; None where there is nothing to fetch (no nvcc, or cuBLAS is there)."""
    try:
        root, (major, _) = toolkit(nvcc({}))
    except BuildError:
        return None
    return None if _has_cublas(root) or fallback(major) is not None else major
