"""Compile `edgebench-probe` (probe/edgebench-probe.c) and `edgebench-bandwidth`
(probe/edgebench-bandwidth.c, the memory-bandwidth test) for a runtime's target.

The probe is one portable C file with no dependencies, so it needs no CMake: the target's C
compiler (`CMAKE_C_COMPILER` from the merged flags, so a cross target gets a cross probe,
else `cc`) builds it in well under a second. It is linked `-static` so one binary runs on
glibc, bionic and musl systems alike; a host without a static libc gets a dynamic probe,
which is said in the build log.
"""

from __future__ import annotations

import hashlib
import platform
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from harness.errors import BuildError
from harness.hashing import sha256_file
from harness.runtimes.targets import parse_defines

PROBE_SOURCE = Path(__file__).resolve().parents[1] / "probe" / "edgebench-probe.c"
PROBE_NAME = "edgebench-probe"
BANDWIDTH_NAME = "edgebench-bandwidth"
CFLAGS = ("-O2", "-std=c11", "-Wall")
# The native programs every runtime carries: name -> (source, extra compiler flags).
NATIVE_PROGRAMS: dict[str, tuple[Path, tuple[str, ...]]] = {
    PROBE_NAME: (PROBE_SOURCE, ()),
    BANDWIDTH_NAME: (PROBE_SOURCE.with_name("edgebench-bandwidth.c"), ("-pthread",)),
}


def probe_sha256() -> str:
    """The native programs' sources as one sha256: part of every runtime key, so a changed
    probe or bandwidth test is a new runtime."""
    shas = []
    for source, _ in NATIVE_PROGRAMS.values():
        if not source.is_file():
            raise BuildError(f"the native source {source} is missing: this edgebench install is incomplete (reinstall the package)")
        shas.append(sha256_file(source))
    return hashlib.sha256(" ".join(shas).encode()).hexdigest()


def probe_compiler(flags: Sequence[str]) -> str:
    """The C compiler the target's CMake build would use: `CMAKE_C_COMPILER`, else the NDK's
    clang for `ANDROID_ABI`/`ANDROID_PLATFORM` (the NDK's CMake toolchain file picks that
    same one), else `cc`."""
    defines = parse_defines(flags)
    if "CMAKE_C_COMPILER" in defines:
        return defines["CMAKE_C_COMPILER"]
    if "ANDROID_NDK" in defines:
        triple = _ANDROID_TRIPLES.get(defines.get("ANDROID_ABI", "arm64-v8a"), "aarch64-linux-android")
        api = defines.get("ANDROID_PLATFORM", "android-28").removeprefix("android-")
        host = f"{platform.system().lower()}-x86_64"  # the NDK ships x86_64 hosts only (Rosetta on Apple silicon)
        return f"{defines['ANDROID_NDK']}/toolchains/llvm/prebuilt/{host}/bin/{triple}{api}-clang"
    return "cc"


_ANDROID_TRIPLES = {"arm64-v8a": "aarch64-linux-android", "armeabi-v7a": "armv7a-linux-androideabi",
                    "x86_64": "x86_64-linux-android", "x86": "i686-linux-android"}


def compile_argvs(compiler: str, dest: str, source: str, name: str = PROBE_NAME) -> list[tuple[str, list[str]]]:
    """(linking, argv) to try in order: static first (one binary for glibc, bionic and musl),
    then dynamic. Paths are strings, so the same commands serve a compile on the device."""
    _, flags = NATIVE_PROGRAMS[name]
    return [(linking, [compiler, *CFLAGS, *flags, *extra, "-o", dest, source])
            for linking, extra in (("static", ("-static",)), ("dynamic", ()))]


def compile_probe(compiler: str, dest: Path, log: IO[str] | None = None, name: str = PROBE_NAME) -> str:
    """Build native program `name` (the probe unless told) at `dest`; returns "static" or
    "dynamic" (the linking that worked)."""
    source, _ = NATIVE_PROGRAMS[name]
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for linking, argv in compile_argvs(compiler, str(dest), str(source), name):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"cannot run the C compiler {compiler!r} for {name}: {exc}") from exc
        if log is not None:
            log.write(f"$ {shlex.join(argv)}\n{done.stdout}{done.stderr}")
        if done.returncode == 0:
            return linking
        errors.append(f"{linking}: {done.stderr.strip()[-800:]}")
    raise BuildError(f"{name} did not compile with {compiler}:\n" + "\n".join(errors))
