"""Vulkan headers and shader compiler for llama.cpp's Vulkan backend (`-DGGML_VULKAN=ON`).

The pinned llama.cpp uses `VK_EXT_layer_settings` unconditionally, which Vulkan-Headers gained in
1.3.272: older headers (Debian 12's libvulkan-dev is 1.3.239) fail deep inside ggml-vulkan.cpp
after minutes of shader compiling. So the headers are checked before CMake runs, and where the
system's are too old, newer ones from the package registry are used (Debian 13's libvulkan-dev,
unpacked by `scripts/setup.sh --test` into `fallback_headers_dir()`), never a patched llama.cpp.

What a Vulkan build used (header version, glslc) is read back from CMake's cache and kept in the
runtime's manifest: a figure is only comparable with one from the same backend and toolchain.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from harness.errors import BuildError
from harness.paths import cache_dir

# The first Vulkan-Headers release with VK_EXT_layer_settings, which ggml-vulkan.cpp uses.
NEEDED: tuple[int, int, int] = (1, 3, 272)
NEEDED_FOR = "VK_EXT_layer_settings"

_HEADER = Path("vulkan") / "vulkan_core.h"
_PATCH = re.compile(r"^#define\s+VK_HEADER_VERSION\s+(\d+)\s*$", re.MULTILINE)
_COMPLETE = re.compile(r"^#define\s+VK_HEADER_VERSION_COMPLETE\s+VK_MAKE_API_VERSION\(\s*\d+\s*,\s*(\d+)\s*,\s*(\d+)\s*,", re.MULTILINE)
_CMAKE_ENTRY = re.compile(r"^(Vulkan_INCLUDE_DIR|Vulkan_GLSLC_EXECUTABLE):[A-Z]+=(.*)$", re.MULTILINE)


def header_version(include_dir: Path) -> tuple[int, int, int] | None:
    """(major, minor, patch) of `include_dir/vulkan/vulkan_core.h`, None where there is none or
    it does not say (VK_HEADER_VERSION_COMPLETE gives major.minor, VK_HEADER_VERSION the patch)."""
    try:
        text = (include_dir / _HEADER).read_text(errors="replace")
    except OSError:
        return None
    complete, patch = _COMPLETE.search(text), _PATCH.search(text)
    if complete is None or patch is None:
        return None
    return int(complete.group(1)), int(complete.group(2)), int(patch.group(1))


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def system_include_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where CMake's FindVulkan looks first: the Vulkan SDK's headers ($VULKAN_SDK), else /usr/include."""
    env = os.environ if env is None else env
    sdk = env.get("VULKAN_SDK")
    return Path(sdk) / "include" if sdk else Path("/usr/include")


def fallback_headers_dir() -> Path:
    """Where setup.sh unpacks newer headers: one folder per package version, `<version>/usr/include`."""
    return cache_dir() / "vulkan-headers"


def fallback_include_dir() -> Path | None:
    """The newest unpacked headers in the cache that are new enough, None where there are none."""
    root = fallback_headers_dir()
    found = [(version, include) for include in root.glob("*/usr/include") if (version := header_version(include)) and version >= NEEDED]
    return max(found)[1] if found else None


def too_old(include_dir: Path, version: tuple[int, int, int] | None) -> str:
    """The one line said before compiling: what was found, what is needed, and the way out."""
    found = f"Vulkan headers {dotted(version)}" if version else "no Vulkan headers"
    return (f"{found} in {include_dir}: llama.cpp's Vulkan backend needs {dotted(NEEDED)} or newer ({NEEDED_FOR}); "
            f"run scripts/setup.sh --test (it fetches Debian 13's libvulkan-dev into {fallback_headers_dir()}) "
            "or pass -DVulkan_INCLUDE_DIR=PATH to newer headers")


def usable_include_dir(user: Mapping[str, str]) -> Path:
    """The headers a Vulkan build will use: the user's own `Vulkan_INCLUDE_DIR`, else the system's,
    else newer ones in the cache. Raises the one-line `too_old` message when none is new enough
    (the user's own too old is said, never silently replaced)."""
    given = user.get("Vulkan_INCLUDE_DIR")
    include = Path(given) if given else system_include_dir()
    version = header_version(include)
    if version is not None and version >= NEEDED:
        return include
    fallback = None if given else fallback_include_dir()
    if fallback is None:
        raise BuildError(too_old(include, version))
    return fallback


def include_flags(user: Mapping[str, str]) -> tuple[str, ...]:
    """`-DVulkan_INCLUDE_DIR=` for a host build where the system's headers are too old and newer
    ones are in the cache; nothing where the system's (or the user's own) will do."""
    include = usable_include_dir(user)
    return () if "Vulkan_INCLUDE_DIR" in user or include == system_include_dir() else (f"-DVulkan_INCLUDE_DIR={include}",)


# Where Debian/Ubuntu (spirv-headers) and other distributions install SPIRV-Headers' CMake package.
SPIRV_HEADERS_DIRS = (Path("/usr/share/cmake/SPIRV-Headers"), Path("/usr/lib/cmake/SPIRV-Headers"), Path("/usr/local/share/cmake/SPIRV-Headers"))


def cross_flags(user: Mapping[str, str]) -> tuple[str, ...]:
    """What a cross build (the Android NDK) with `-DGGML_VULKAN=ON` takes from the host, named
    explicitly because a toolchain file confines CMake's searches to the target's sysroot: glslc
    (shaders are compiled at build time, on the host), the Khronos C and C++ headers (the NDK ships
    the C headers only; ggml-vulkan.cpp includes vulkan.hpp) and SPIRV-Headers (header-only). The
    loader, libvulkan.so, is the NDK's: the phone's own driver is found through it at run time."""
    glslc = user.get("Vulkan_GLSLC_EXECUTABLE") or shutil.which("glslc")
    if glslc is None:
        raise BuildError("a Vulkan build needs glslc on the host to compile its shaders: install it (Debian/Ubuntu: apt install glslc)")
    flags = [f"-DVulkan_GLSLC_EXECUTABLE={glslc}", f"-DVulkan_INCLUDE_DIR={usable_include_dir(user)}"]
    if "SPIRV-Headers_DIR" not in user:
        spirv = next((d for d in SPIRV_HEADERS_DIRS if (d / "SPIRV-HeadersConfig.cmake").is_file()), None)
        if spirv is None:
            raise BuildError("a Vulkan build needs SPIRV-Headers on the host: install them (Debian/Ubuntu: apt install spirv-headers) "
                             "or pass -DSPIRV-Headers_DIR=PATH")
        flags.append(f"-DSPIRV-Headers_DIR={spirv}")
    return tuple(flags)


def headers_status() -> str | None:
    """None where a host-vulkan build would find new enough headers, else why not (for setup.sh)."""
    try:
        include_flags({})
    except BuildError as exc:
        return str(exc)
    return None


def toolchain(cmake_cache: str) -> dict[str, str]:
    """What a configured Vulkan build uses, from its CMakeCache.txt: the header version and glslc's
    own version line; empty for a build without the Vulkan backend."""
    entries = dict(_CMAKE_ENTRY.findall(cmake_cache))
    out: dict[str, str] = {}
    if include := entries.get("Vulkan_INCLUDE_DIR"):
        version = header_version(Path(include))
        out["vulkan_headers"] = dotted(version) if version else f"unknown ({include})"
    if glslc := entries.get("Vulkan_GLSLC_EXECUTABLE"):
        out["glslc"] = _first_line([glslc, "--version"]) or f"unknown ({glslc})"
    return out


def _first_line(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None
