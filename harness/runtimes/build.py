"""Build the llama.cpp programs for a target and keep them in a content-addressed runtime cache.

A runtime is `cache_dir()/runtimes/<key>/` holding the target's programs (`bin/llama-bench`,
`bin/llama-perplexity`, and on the host `bin/llama-quantize`), `bin/edgebench-probe`,
`bin/edgebench-bandwidth`, `manifest.json` and `build.log`, where key = sha256(source sha256,
target, final CMake flags, the programs, probe source sha256): the same inputs
never build twice, and any changed input gets its own folder, so results can always name
exactly which binary produced them. A runtime is assembled in a hidden folder and renamed
into place last, and builds of one key hold a file lock, so an interrupted or concurrent
build never leaves something that looks like a finished runtime.

The llama.cpp programs are kept under `cache_dir()/llama-cpp/<key without the probe>/`, so a
changed probe (a sub-second C compile) never costs another multi-minute llama.cpp build. A
runtime built before a program was added has another key, so it is rebuilt once, never used
without the program.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from harness.errors import BuildError
from harness.hashing import sha256_file
from harness.paths import cache_dir
from harness.runtimes import cuda, vulkan
from harness.runtimes.native import NATIVE_PROGRAMS, compile_probe, probe_compiler, probe_sha256
from harness.runtimes.source import Source, cached_pinned_source, directory_source, fetch_pinned_source, file_lock, stream
from harness.runtimes.targets import COMMON_FLAGS, Target, get_target, merge_flags, parse_defines

MANIFEST_VERSION = 1

_TAIL_LINES = 30
_MAKE_PERCENT = re.compile(r"^\[\s*(\d{1,3})%\]")
_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")


@dataclass(frozen=True)
class Manifest:
    """What a runtime is: enough to rebuild it and to tell two runtimes apart in results."""

    key: str
    target: str
    llama_cpp_commit: str
    llama_cpp_python_version: str
    source_sha256: str
    cmake_flags: tuple[str, ...]
    compiler: str
    files: dict[str, str] = field(hash=False)  # path relative to the runtime folder -> sha256
    built_at: str
    build_seconds: float
    # Backend tools that change the binaries beside the compiler: for Vulkan the header version and
    # glslc's version (see `vulkan.toolchain`), or nvcc, cuBLAS and the CUDA architectures (`cuda.toolchain`);
    # empty for a CPU build and in manifests from before.
    toolchain: dict[str, str] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest_version": MANIFEST_VERSION,
            "key": self.key,
            "target": self.target,
            "llama_cpp_commit": self.llama_cpp_commit,
            "llama_cpp_python_version": self.llama_cpp_python_version,
            "source_sha256": self.source_sha256,
            "cmake_flags": list(self.cmake_flags),
            "compiler": self.compiler,
            "files": dict(self.files),
            "built_at": self.built_at,
            "build_seconds": self.build_seconds,
            "toolchain": dict(self.toolchain),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        """Refuses manifests written by a newer edgebench instead of misreading them."""
        version = d.get("manifest_version")
        if version != MANIFEST_VERSION:
            raise ValueError(f"manifest_version {version!r}; this edgebench reads {MANIFEST_VERSION}")
        return cls(
            key=str(d["key"]),
            target=str(d["target"]),
            llama_cpp_commit=str(d["llama_cpp_commit"]),
            llama_cpp_python_version=str(d["llama_cpp_python_version"]),
            source_sha256=str(d["source_sha256"]),
            cmake_flags=tuple(str(flag) for flag in d["cmake_flags"]),
            compiler=str(d["compiler"]),
            files={str(k): str(v) for k, v in d["files"].items()},
            built_at=str(d["built_at"]),
            build_seconds=float(d["build_seconds"]),
            toolchain={str(k): str(v) for k, v in d.get("toolchain", {}).items()},
        )


@dataclass(frozen=True)
class Runtime:
    """A finished runtime folder and its manifest."""

    root: Path
    manifest: Manifest

    def binary(self, name: str = "llama-bench") -> Path:
        return self.root / "bin" / name


@dataclass(frozen=True)
class BuildProgress:
    """One line of build output, with the last percent seen (None until the build stage)."""

    percent: float | None
    stage: str  # "download" | "configure" | "build" | "done"
    line: str


ProgressFn = Callable[[BuildProgress], None]


def parse_percent(line: str) -> float | None:
    """Percent done from a make (`[ 14%]`) or ninja (`[12/140]`) progress line, else None."""
    if match := _MAKE_PERCENT.match(line):
        return float(match.group(1))
    if (match := _NINJA_STEP.match(line)) and int(match.group(2)) > 0:
        return 100.0 * int(match.group(1)) / int(match.group(2))
    return None


def runtime_key(source_sha256: str, target: str, flags: Sequence[str], probe: str = "",
                programs: Sequence[str] = ("llama-bench",)) -> str:
    """The cache key: every input that changes the binaries, and nothing that does not
    (job count, generator, paths). Without `probe` (the probe source's sha256) it is the
    key of the llama.cpp programs alone."""
    inputs: list[object] = [source_sha256, target, list(flags), list(programs)] + ([probe] if probe else [])
    payload = json.dumps(inputs, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def final_flags(target: Target, source: Source, extra_flags: Sequence[str]) -> tuple[str, ...]:
    """Common flags, then the target's, then the source's identity, then the user's (which
    win): one canonical list that is both passed to CMake and hashed into the key."""
    identity = (f"-DLLAMA_BUILD_COMMIT={source.llama_cpp_commit}", "-DLLAMA_BUILD_NUMBER=0")
    user = tuple(extra_flags)
    return merge_flags(COMMON_FLAGS, target.flags(parse_defines(user)), identity, user)


def find_tool(name: str) -> str | None:
    """The tool next to our interpreter first (the `cmake`/`ninja` PyPI packages install
    there, and a fresh machine may have no system copy), then the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def compiler_description(build_tree: Path) -> str:
    """The compilers CMake detected, e.g. "GNU 12.2.0" or "GNU 12.2.0, NVIDIA 12.4.131" with
    CUDA; else the first line of `cc --version`. Recorded because it changes the numbers."""
    found: list[str] = []
    for lang in ("CXX", "C", "CUDA"):
        for info in sorted(build_tree.glob(f"CMakeFiles/*/CMake{lang}Compiler.cmake")):
            text = info.read_text(errors="replace")
            ident = re.search(rf'set\(CMAKE_{lang}_COMPILER_ID "([^"]*)"\)', text)
            version = re.search(rf'set\(CMAKE_{lang}_COMPILER_VERSION "([^"]*)"\)', text)
            desc = " ".join(m.group(1) for m in (ident, version) if m and m.group(1))
            if desc and desc not in found:
                found.append(desc)
    return ", ".join(found) or _cc_version()


def _cc_version() -> str:
    try:
        done = subprocess.run(["cc", "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = done.stdout.splitlines()[:1]
    return first[0].strip() if first else "unknown"


def _runtimes_dir() -> Path:
    return cache_dir() / "runtimes"


def load_runtime(root: Path) -> Runtime | None:
    """The runtime in `root` if it is complete and unchanged (manifest readable, every file
    present with its recorded sha256), else None."""
    try:
        manifest = Manifest.from_json(json.loads((root / "manifest.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if manifest.key != root.name or not manifest.files:
        return None
    for rel, sha in manifest.files.items():
        path = root / rel
        if not path.is_file() or sha256_file(path) != sha:
            return None
    return Runtime(root, manifest)


def find_runtime(
    target: str = "host", extra_flags: Sequence[str] = (), *, source: Path | None = None
) -> Runtime | None:
    """The cached runtime for these inputs, or None; never downloads or builds.

    For the pinned source the key needs the llama.cpp commit, which is known once the sdist
    has been extracted: before the first build there is nothing to find.
    """
    spec = get_target(target)
    src = directory_source(source) if source is not None else cached_pinned_source()
    if src is None:
        return None
    key = runtime_key(src.sha256, spec.name, final_flags(spec, src, extra_flags), probe_sha256(), spec.programs)
    return load_runtime(_runtimes_dir() / key)


def build_runtime(
    target: str = "host",
    *,
    extra_flags: Sequence[str] = (),
    force: bool = False,
    jobs: int | None = None,
    on_progress: ProgressFn | None = None,
    source: Path | None = None,
) -> tuple[Runtime, bool]:
    """Returns (runtime, from_cache). A second call with the same key does nothing (from_cache=True).

    `source` is a local tree (an extracted sdist or any CMake project with a `llama-bench`
    target); None means the pinned llama-cpp-python sdist, fetched once into the cache.
    `extra_flags` are CMake definitions applied last; `force` rebuilds a cached key.
    """
    spec = get_target(target)
    report = _Reporter(on_progress)
    if source is not None:
        src = directory_source(source)
    else:
        src = fetch_pinned_source(on_line=lambda line: report("download", line))
    flags = final_flags(spec, src, extra_flags)
    key = runtime_key(src.sha256, spec.name, flags, probe_sha256(), spec.programs)
    root = _runtimes_dir() / key
    with file_lock(root.parent / f"{key}.lock"):
        cached = None if force else load_runtime(root)
        if cached is not None:
            report("done", f"cached runtime {root}")
            return cached, True
        runtime = _build(spec, src, flags, root, jobs or os.cpu_count() or 1, report, force)
    report("done", f"built runtime {root}")
    return runtime, False


class _Reporter:
    """Turns output lines into BuildProgress events, carrying the last percent forward so
    every event in the build stage says how far along it is."""

    def __init__(self, on_progress: ProgressFn | None) -> None:
        self._on_progress = on_progress
        self._percent: float | None = None

    def __call__(self, stage: str, line: str) -> None:
        if stage == "build":
            percent = parse_percent(line)
            self._percent = self._percent if percent is None else percent
        elif stage == "done":
            self._percent = 100.0
        else:
            self._percent = None
        if self._on_progress is not None:
            self._on_progress(BuildProgress(self._percent, stage, line))


def _build(
    target: Target, src: Source, flags: tuple[str, ...], root: Path, jobs: int, report: _Reporter, force: bool
) -> Runtime:
    """The llama.cpp programs (cached on their own key), plus the probe compiled for the
    target, installed as one runtime folder. Work happens in `cache_dir()/builds/<key>/`, kept on failure."""
    started = time.monotonic()
    llama = _llama_programs(target, src, flags, jobs, report, force)
    work = cache_dir() / "builds" / root.name
    shutil.rmtree(work, ignore_errors=True)
    (work / "bin").mkdir(parents=True)
    log_path = work / "build.log"
    shutil.copyfile(llama / "build.log", log_path)
    for name in target.programs:
        shutil.copy2(llama / "bin" / name, work / "bin" / name)
    libraries = [f"lib/{built.name}" for built in shared_objects(llama / "lib")]
    if libraries:
        shutil.copytree(llama / "lib", work / "lib")
    compiler = probe_compiler(flags)
    with log_path.open("a") as log:
        for name in NATIVE_PROGRAMS:
            report("build", f"compiling {name} with {compiler}")
            linking = compile_probe(compiler, work / "bin" / name, log, name)
            log.write(f"{name}: {linking} binary\n")
    manifest = Manifest(
        key=root.name,
        target=target.name,
        llama_cpp_commit=src.llama_cpp_commit,
        llama_cpp_python_version=src.llama_cpp_python_version,
        source_sha256=src.sha256,
        cmake_flags=flags,
        compiler=(llama / "compiler.txt").read_text().strip(),
        files={},
        toolchain=_read_toolchain(llama),
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(time.monotonic() - started, 3),
    )
    runtime = _install(work, log_path, manifest, root, [*(f"bin/{name}" for name in (*target.programs, *NATIVE_PROGRAMS)), *libraries])
    shutil.rmtree(work, ignore_errors=True)
    return runtime


def _llama_programs(
    target: Target, src: Source, flags: tuple[str, ...], jobs: int, report: _Reporter, force: bool
) -> Path:
    """The folder holding the target's programs in `bin/`, `build.log`, `compiler.txt` and
    `toolchain.json` for these inputs: cached, or configured and built in
    `cache_dir()/builds/<key>/` (kept on failure)."""
    key = runtime_key(src.sha256, target.name, flags, programs=target.programs)
    done = cache_dir() / "llama-cpp" / key
    if not force and (done / "compiler.txt").is_file():
        report("build", f"{', '.join(target.programs)} from cache {done}")
        return done
    cmake = find_tool("cmake")
    if cmake is None:
        raise BuildError("cmake not found: `pip install cmake` (or install it with your OS)")
    ninja = find_tool("ninja")
    work = cache_dir() / "builds" / key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tree, log_path = work / "tree", work / "build.log"
    generator = ["-G", "Ninja"] if ninja else []
    started = time.monotonic()
    with log_path.open("w") as log:
        configure = [cmake, "-S", str(src.cmake_dir), "-B", str(tree), *generator, *flags]
        _run(configure, "configure", log, log_path, report)
        compile_ = [cmake, "--build", str(tree), "--target", *target.programs, *target.libraries, "-j", str(jobs)]
        _run(compile_, "build", log, log_path, report)
        log.write(f"llama.cpp build took {time.monotonic() - started:.1f} s\n")
    staged = done.with_name(f".{key}.partial")
    shutil.rmtree(staged, ignore_errors=True)
    (staged / "bin").mkdir(parents=True)
    for name in target.programs:
        built = tree / "bin" / name
        if not built.is_file():
            raise BuildError(f"the build finished without producing bin/{name}; full log: {log_path}")
        shutil.copy2(built, staged / "bin" / name)
    if target.libraries:
        (staged / "lib").mkdir()
        for built in shared_objects(tree / "bin"):
            shutil.copy2(built, staged / "lib" / built.name)
        if not shared_objects(staged / "lib"):
            raise BuildError(f"the build finished without producing the shared libraries {', '.join(target.libraries)}; full log: {log_path}")
    shutil.copy2(log_path, staged / "build.log")
    (staged / "compiler.txt").write_text(compiler_description(tree) + "\n")
    cmake_cache = (tree / "CMakeCache.txt").read_text(errors="replace")
    (staged / "toolchain.json").write_text(json.dumps({**vulkan.toolchain(cmake_cache), **cuda.toolchain(cmake_cache)}) + "\n")
    shutil.rmtree(done, ignore_errors=True)
    os.rename(staged, done)
    shutil.rmtree(work, ignore_errors=True)
    return done


def _read_toolchain(llama: Path) -> dict[str, str]:
    """The build's `toolchain.json`; empty for programs cached before it was written (CPU builds)."""
    path = llama / "toolchain.json"
    return {str(k): str(v) for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}


def shared_objects(folder: Path) -> list[Path]:
    """The shared libraries a build left in `folder` (llama.cpp puts them beside its programs)."""
    return sorted(p for p in folder.glob("lib*") if p.suffix in (".so", ".dylib") and p.is_file())


def _tool_env() -> dict[str, str]:
    """PATH with our interpreter's folder first, so CMake finds the same ninja we chose."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _run(argv: list[str], stage: str, log: IO[str], log_path: Path, report: _Reporter) -> None:
    """Run one build step, teeing its output into the log and the progress callback."""
    log.write(f"$ {shlex.join(argv)}\n")
    log.flush()

    def on_line(line: str) -> None:
        log.write(line + "\n")
        report(stage, line)

    report(stage, f"$ {shlex.join(argv)}")
    status = stream(argv, on_line, env=_tool_env())
    log.flush()
    if status != 0:
        raise BuildError(_failure_message(stage, status, log_path))


def _failure_message(stage: str, status: int, log_path: Path) -> str:
    lines = log_path.read_text(errors="replace").splitlines()[-_TAIL_LINES:]
    tail = "\n".join(lines)
    return f"{stage} failed (exit {status}); last lines of the log:\n{tail}\nfull log: {log_path}"


def _install(tree: Path, log_path: Path, manifest: Manifest, root: Path, paths: Sequence[str]) -> Runtime:
    """Assemble the runtime (`paths`, relative to `tree`) in a hidden folder, then rename it
    over `root` in one step."""
    staged = root.with_name(f".{root.name}.partial")
    shutil.rmtree(staged, ignore_errors=True)
    files: dict[str, str] = {}
    for rel in paths:
        built = tree / rel
        if not built.is_file():
            raise BuildError(f"the build finished without producing {rel}; full log: {log_path}")
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, staged / rel)
        files[rel] = sha256_file(staged / rel)
    shutil.copy2(log_path, staged / "build.log")
    manifest = replace(manifest, files=files)
    (staged / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    if root.exists():
        retired = root.with_name(f".{root.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        os.rename(root, retired)
        os.rename(staged, root)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staged, root)
    return Runtime(root, manifest)
