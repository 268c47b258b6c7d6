"""Build targets: which CMake definitions turn the pinned llama.cpp tree into a runtime.

A target is data plus one small function from the user's own definitions to the target's.
Every target-specific decision lives in its entry here, so adding one (the static
`linux-aarch64` cross build, say) is one function and one line in `_REGISTRY`; the builder
never asks which target it is building.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from harness.errors import BuildError, EdgebenchError
from harness.runtimes import cuda, vulkan

# Every target gets these. Only the runtime's programs are wanted, statically linked against
# llama/ggml so each is one relocatable binary (the host targets link shared: see SHARED_FLAGS),
# and nothing that talks to the network: llama-server is built (the `server` engine runs it) but
# without OpenSSL and without its web UI, whose assets would otherwise be fetched from Hugging
# Face at build time (LLAMA_USE_PREBUILT_UI) or built with npm (LLAMA_BUILD_UI).
COMMON_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
)

_DEFINE = re.compile(r"(?:-D)?([A-Za-z_][A-Za-z0-9_]*)(?::[A-Z]+)?=(.*)", re.DOTALL)

FlagsFn = Callable[[Mapping[str, str]], tuple[str, ...]]

# What every runtime holds: the speed benchmark, the quality (perplexity/KLD) check and the HTTP
# server (`[[serve]]` cases), which must come from one build so the quality and serve cases measure
# the backend the speed cases ran on. The programs are part of the runtime key, so a runtime built
# before one was added is rebuilt once, never used without it.
DEVICE_PROGRAMS: tuple[str, ...] = ("llama-bench", "llama-perplexity", "llama-server")
# The host makes quantized variants too (`--quantize`); devices never need to.
HOST_PROGRAMS: tuple[str, ...] = (*DEVICE_PROGRAMS, "llama-quantize")
# The host runtime is also llama-cpp-python's native library (the pyllama engine loads its
# `lib/libllama.so` through LLAMA_CPP_LIB_PATH), so TTFT and llama-bench's figures come from one
# build, compiled once. That needs shared libraries, which the programs and the libraries find
# through their own folder (a relative RPATH), wherever the runtime folder lies. Unversioned
# sonames make each library one plain file (no symlink chain to push or hash).
HOST_LIBRARIES: tuple[str, ...] = ("llama",)
_ORIGIN = "@loader_path" if platform.system() == "Darwin" else "$ORIGIN"
SHARED_FLAGS: tuple[str, ...] = (
    "-DBUILD_SHARED_LIBS=ON",
    "-DCMAKE_PLATFORM_NO_VERSIONED_SONAME=ON",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    f"-DCMAKE_INSTALL_RPATH={_ORIGIN}/../lib;{_ORIGIN}",
)


@dataclass(frozen=True)
class Target:
    """One way to build the runtime's programs; `flags` gets the user's definitions (NAME -> value)
    so a target can step aside where the user already decided (e.g. CUDA architectures)."""

    name: str
    summary: str
    flags: FlagsFn
    # From the device's CPU feature words (/proc/cpuinfo) to definitions; None: device-independent.
    device_flags: Callable[[Sequence[str]], tuple[str, ...]] | None = None
    programs: tuple[str, ...] = DEVICE_PROGRAMS  # the CMake targets built and installed in bin/
    libraries: tuple[str, ...] = ()  # CMake library targets whose shared objects are installed in lib/


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


# What turns llama.cpp's AMX kernels off under `-march=native` (its GGML_AMX_* options only act
# without it): the compiler then leaves __AMX_INT8__ undefined and ggml never compiles them.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def native_amx(compiler: str) -> bool:
    """Whether `-march=native` turns AMX on with this C compiler on this CPU (Sapphire Rapids and
    later); False where the compiler cannot say (it is then not one that knows AMX either)."""
    argv = [compiler, "-march=native", "-dM", "-E", "-x", "c", os.devnull]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and "#define __AMX_INT8__ 1" in done.stdout


def _no_amx_flags(user: Mapping[str, str]) -> tuple[str, ...]:
    """The definitions that keep llama.cpp's AMX kernels out of a native build here (none where
    native code has no AMX); the in-process engine loads the same build, so it is covered too."""
    compiler = user.get("CMAKE_C_COMPILER") or os.environ.get("CC") or "cc"
    return (f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}") if native_amx(compiler) else ()


def _host_flags(user: Mapping[str, str]) -> tuple[str, ...]:
    """Native CPU code (`-march=native`), so a host runtime only runs on CPUs like this one.

    On macOS llama.cpp turns Metal on by default; we leave it so, and say it explicitly so the
    manifest and the cache key show that the "host" runtime there offloads to the GPU.

    On a CPU with AMX, native code includes llama.cpp's AMX matmul, which segfaults in
    `ggml_backend_amx_mul_mat` on the first prompt batch (llama.cpp #20824, closed unfixed; seen
    here on a Xeon with AMX: llama-bench, llama-perplexity and llama-cpp-python all crashed on
    the default model). A benchmark that crashes measures nothing, so the host build turns AMX
    off, in flags the manifest and the cache key carry; `CMAKE_C_FLAGS`/`CMAKE_CXX_FLAGS` of your
    own replace ours (e.g. empty, to measure AMX where it works).
    """
    flags: tuple[str, ...] = ("-DGGML_NATIVE=ON", *SHARED_FLAGS)
    if platform.system() == "Darwin":
        flags += ("-DGGML_METAL=ON",)
    return flags + _no_amx_flags(user)


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
    """The host CPU build plus CUDA for the GPUs on this machine (or the user's architectures).

    The CUDA libraries stay where they are, so the runtime's RPATH also names the folders of those
    it links from outside the toolkit and the system (cuBLAS unpacked in the cache:
    CMAKE_INSTALL_RPATH_USE_LINK_PATH), and its programs start without LD_LIBRARY_PATH. cuBLAS
    and the driver library are checked before CMake runs (see `cuda.flags`)."""
    archs = () if "CMAKE_CUDA_ARCHITECTURES" in user else (f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(_detect_cuda_architectures())}",)
    return (*_host_flags(user), "-DGGML_CUDA=ON", "-DCMAKE_INSTALL_RPATH_USE_LINK_PATH=ON",
            *cuda.flags(user, vmm=not _on(user.get("GGML_CUDA_NO_VMM", ""))), *archs)


def _host_vulkan_flags(user: Mapping[str, str]) -> tuple[str, ...]:
    """The host CPU build plus llama.cpp's Vulkan backend: any Vulkan device here, including Mesa's
    lavapipe (a CPU implementation), which is how the GPU code path runs on a machine with no GPU.
    Headers too old for the pinned llama.cpp stop the build before it compiles (see `vulkan`)."""
    return _host_flags(user) + ("-DGGML_VULKAN=ON",) + vulkan.include_flags(user)


# The cross compilers Debian's g++-aarch64-linux-gnu installs.
AARCH64_CC, AARCH64_CXX = "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++"
ARM_BASELINE = "armv8-a"


def arm_arch(features: Iterable[str], *, sve: bool = False) -> str:
    """`-march` for a CPU from its /proc/cpuinfo `Features` words.

    dotprod (`asimddp`) and fp16 arithmetic (`asimdhp`) are ARMv8.2 extensions and i8mm
    (`i8mm`) an ARMv8.6 one that GCC accepts on v8.2; a CPU with none of them (Cortex-A53/
    A57/A72) gets plain armv8-a. SVE stays off unless asked: on phones whose kernel reports it
    llama.cpp's SVE kernels are not reliably faster, and a wrong vector length is a crash.
    On a big.LITTLE phone cpuinfo lists the features every core has, so the build runs on all.
    """
    have = set(features)
    extensions = [ext for word, ext in (("asimdhp", "fp16"), ("asimddp", "dotprod"), ("i8mm", "i8mm")) if word in have]
    if sve and "sve" in have:
        extensions.append("sve")
    return "armv8.2-a" + "".join(f"+{ext}" for ext in extensions) if extensions else ARM_BASELINE


def _aarch64_common(user: Mapping[str, str]) -> tuple[str, ...]:
    """Portable CPU code without OpenMP (absent from static and bionic links alike); the arch
    is the device's (see `flags_for_device`) or, without a device, the plain baseline."""
    return (
        "-DGGML_NATIVE=OFF",
        f"-DGGML_CPU_ARM_ARCH={user.get('GGML_CPU_ARM_ARCH', ARM_BASELINE)}",
        "-DGGML_OPENMP=OFF",
    )


def _linux_aarch64_flags(user: Mapping[str, str]) -> tuple[str, ...]:
    """Static cross build with Debian's aarch64-linux-gnu toolchain: one self-contained binary
    that runs from /data/local/tmp on Android (no glibc there) and on any aarch64 Linux board."""
    return (
        f"-DCMAKE_C_COMPILER={AARCH64_CC}",
        f"-DCMAKE_CXX_COMPILER={AARCH64_CXX}",
        "-DCMAKE_SYSTEM_NAME=Linux",
        "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
        *_aarch64_common(user),
        "-DCMAKE_EXE_LINKER_FLAGS=-static",
    )


ANDROID_PLATFORM = "android-28"  # Android 9: the oldest release the vendors' GPU drivers matter on


def ndk_home(user: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The NDK the user pointed to: `ANDROID_NDK=PATH` (from `--ndk`), else $ANDROID_NDK_HOME."""
    env = os.environ if env is None else env
    return (user or {}).get("ANDROID_NDK") or env.get("ANDROID_NDK_HOME") or None


def _android_ndk_flags(user: Mapping[str, str]) -> tuple[str, ...]:
    """The NDK's own toolchain file (clang, bionic): what apps ship, and the only build that can
    load the vendor's OpenCL/Vulkan drivers (`-DGGML_OPENCL=ON` / `-DGGML_VULKAN=ON` as flags;
    Vulkan also takes glslc and headers from the host, see `vulkan.cross_flags`)."""
    ndk = ndk_home(user)
    if ndk is None:
        raise BuildError("android-ndk needs an Android NDK: pass --ndk PATH or set ANDROID_NDK_HOME")
    return (
        f"-DANDROID_NDK={ndk}",
        f"-DCMAKE_TOOLCHAIN_FILE={ndk}/build/cmake/android.toolchain.cmake",
        "-DANDROID_ABI=arm64-v8a",
        f"-DANDROID_PLATFORM={user.get('ANDROID_PLATFORM', ANDROID_PLATFORM)}",
        *_aarch64_common(user),
        *(vulkan.cross_flags(user) if _on(user.get("GGML_VULKAN", "")) else ()),
    )


def _on(value: str) -> bool:
    """CMake's truth for a definition's value (ON, 1, TRUE, YES, Y)."""
    return value.upper() in ("ON", "1", "TRUE", "YES", "Y")


def _arm_device_flags(features: Sequence[str]) -> tuple[str, ...]:
    return (f"-DGGML_CPU_ARM_ARCH={arm_arch(features)}",)


_REGISTRY: dict[str, Target] = {
    target.name: target
    for target in (
        Target("host", "native CPU build for this machine (Metal on macOS)", _host_flags, programs=HOST_PROGRAMS,
               libraries=HOST_LIBRARIES),
        Target("host-cuda", "native CPU + CUDA for this machine's NVIDIA GPUs", _host_cuda_flags, programs=HOST_PROGRAMS,
               libraries=HOST_LIBRARIES),
        Target("host-vulkan", "native CPU + Vulkan (any Vulkan device; lavapipe runs it on the CPU)", _host_vulkan_flags,
               libraries=HOST_LIBRARIES),
        Target("linux-aarch64", "static aarch64 cross build (Android from /data/local/tmp, Linux boards)",
               _linux_aarch64_flags, _arm_device_flags),
        Target("android-ndk", "Android NDK build for bionic (OpenCL/Vulkan capable); needs --ndk",
               _android_ndk_flags, _arm_device_flags),
    )
}


def flags_for_device(target: str, device_cpu_features: Callable[[], Sequence[str] | None]) -> tuple[str, ...]:
    """Definitions a target derives from the device it will run on: the ARM arch from the
    CPU feature bits (asked for only by the targets that use them; None: unknown, so the
    baseline) for the aarch64 targets, nothing for the host targets. Passed to the build
    before the user's own flags, so an explicit `-DGGML_CPU_ARM_ARCH=` still wins."""
    spec = get_target(target)
    if spec.device_flags is None:
        return ()
    features = device_cpu_features()
    return () if features is None else spec.device_flags(features)


def effective_target(target: str, flags: Iterable[str] = ()) -> tuple[str, str | None]:
    """`android-ndk` without an NDK falls back to `linux-aarch64`, saying so; others stay."""
    if target == "android-ndk" and ndk_home(parse_defines(flags)) is None:
        return "linux-aarch64", "no Android NDK given (--ndk PATH or $ANDROID_NDK_HOME): building the static linux-aarch64 runtime instead"
    return target, None


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

