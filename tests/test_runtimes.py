"""Runtimes: commit parsing, cache keys, target flags, and real CMake builds.

The fast builds use a tiny CMake project with a `llama-bench` target, so the whole build path
(configure, compile, progress, manifest, cache, lock, failure log) runs in seconds; one slow
test builds the real llama-bench from the pinned sdist into the real cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading
import tomllib
from pathlib import Path

import pytest

from harness.errors import BuildError, EdgebenchError
from harness.runtimes import LLAMA_CPP_PYTHON_VERSION, BuildProgress, Manifest, build, build_runtime, find_runtime, target_names
from harness.runtimes.build import final_flags, find_tool, parse_percent, runtime_key
from harness.runtimes.source import (
    SdistPin,
    Source,
    cached_pinned_source,
    directory_source,
    fetch_pinned_source,
    parse_changelog_commit,
)
from harness.runtimes.targets import SHARED_FLAGS, cuda_architectures, get_target, merge_flags

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "runtimes"

needs_cmake = pytest.mark.skipif(
    find_tool("cmake") is None or find_tool("cc") is None, reason="needs cmake and a C compiler"
)

TINY_CMAKE = """\
cmake_minimum_required(VERSION 3.16)
project(tiny C)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
set(CMAKE_LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_library(llama lib.c)
add_executable(llama-bench main.c)
add_executable(llama-perplexity main.c)
add_executable(llama-quantize main.c)
add_executable(llama-server main.c)
target_link_libraries(llama-bench llama)
target_link_libraries(llama-perplexity llama)
target_link_libraries(llama-quantize llama)
target_link_libraries(llama-server llama)
"""
# llama-bench calls into the shared `llama` library, as the real one does, so running it from
# the runtime folder shows the relative RPATH finds lib/.
GOOD_C = '#include <stdio.h>\nint tiny_llama(void);\nint main(void) {\n    return puts("tiny llama-bench") < 0 || tiny_llama();\n}\n'
LIB_C = "int tiny_llama(void) {\n    return 0;\n}\n"
BAD_C = "int main(void) {\n    return edgebench_undeclared_symbol;\n}\n"


def _tiny_project(root: Path, c_source: str) -> Path:
    root.mkdir(parents=True)
    (root / "CMakeLists.txt").write_text(TINY_CMAKE)
    (root / "main.c").write_text(c_source)
    (root / "lib.c").write_text(LIB_C)
    return root


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty edgebench cache, so fast tests never see (or touch) the real one."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("EDGEBENCH_CACHE", str(folder))
    return folder


# --- CHANGELOG ------------------------------------------------------------------------------


def test_changelog_commit_is_the_first_update_line() -> None:
    text = (DATA / "CHANGELOG-0.3.36.md").read_text()
    assert parse_changelog_commit(text) == "0c1e570"
    assert parse_changelog_commit(text, "0.3.36") == "0c1e570"


def test_changelog_commit_for_an_older_release_starts_at_its_heading() -> None:
    text = (DATA / "CHANGELOG-0.3.36.md").read_text()
    assert parse_changelog_commit(text, "0.3.35") == "4df29be"


def test_release_without_llama_cpp_update_vendors_the_previous_commit() -> None:
    text = (
        "## [1.1.0]\n\n- fix: docs\n\n"
        "## [1.0.0]\n\n- feat: update llama.cpp to ggerganov/llama.cpp@abcdef0123\n"
    )
    assert parse_changelog_commit(text, "1.1.0") == "abcdef0"


def test_changelog_without_commit_is_a_clear_error() -> None:
    with pytest.raises(BuildError, match="names no llama.cpp commit"):
        parse_changelog_commit("## [0.3.36]\n\n- fix: something\n", "0.3.36")
    with pytest.raises(BuildError, match="no heading for version 9.9.9"):
        parse_changelog_commit((DATA / "CHANGELOG-0.3.36.md").read_text(), "9.9.9")


def test_version_constant_matches_pyproject_pin() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}" in deps


# --- keys, flags, targets --------------------------------------------------------------------


def test_key_is_stable_and_changes_with_every_input() -> None:
    sha = "a" * 64
    flags = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON")
    key = runtime_key(sha, "host", flags)
    assert key == runtime_key(sha, "host", list(flags))
    assert len({
        key,
        runtime_key("b" * 64, "host", flags),
        runtime_key(sha, "host-cuda", flags),
        runtime_key(sha, "host", flags + ("-DGGML_CUDA=ON",)),
        runtime_key(sha, "host", flags[::-1]),
    }) == 5  # fmt: skip


def test_merge_flags_is_canonical_and_user_wins() -> None:
    merged = merge_flags(("-DA=1", "-DB=2"), ("B=3", "-DC:BOOL=ON"))
    assert merged == ("-DA=1", "-DB=3", "-DC=ON")
    with pytest.raises(EdgebenchError, match="not a CMake definition"):
        merge_flags(("-G", "Ninja"))


def test_unknown_target_lists_valid_ones() -> None:
    assert {"host", "host-cuda"} <= set(target_names())
    with pytest.raises(EdgebenchError, match="valid targets: android-ndk, host, host-cuda, host-vulkan, linux-aarch64"):
        get_target("toaster")
    with pytest.raises(EdgebenchError, match="unknown runtime target 'toaster'"):
        build_runtime("toaster")


def _fake_nvidia_smi(folder: Path, script_body: str) -> None:
    folder.mkdir(exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n{script_body}\n")
    smi.chmod(0o755)


def test_host_cuda_archs_come_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_cuda_toolkit: Path) -> None:
    _fake_nvidia_smi(tmp_path / "bin", r'printf "8.9\n8.9\n"')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    flags = get_target("host-cuda").flags({})
    assert "-DGGML_CUDA=ON" in flags
    assert "-DCMAKE_CUDA_ARCHITECTURES=89" in flags


def test_cuda_architectures_are_deduplicated_and_sorted() -> None:
    assert cuda_architectures("8.9\n8.6\n8.9\n\n10.0\n") == ["86", "89", "100"]
    with pytest.raises(BuildError, match="unexpected nvidia-smi"):
        cuda_architectures("No devices were found\n")


def test_host_cuda_without_gpu_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BuildError, match="no NVIDIA GPU found"):
        get_target("host-cuda").flags({})


def test_host_cuda_when_nvidia_smi_fails_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvidia_smi(tmp_path / "bin", 'echo "No devices were found"; exit 6')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(BuildError, match="no NVIDIA GPU found: nvidia-smi exited 6: No devices"):
        get_target("host-cuda").flags({})


def test_host_cuda_with_user_archs_needs_no_gpu(fake_cuda_toolkit: Path) -> None:
    target = get_target("host-cuda")
    flags = merge_flags(target.flags({"CMAKE_CUDA_ARCHITECTURES": "90"}), ["CMAKE_CUDA_ARCHITECTURES=90"])
    assert flags[-1] == "-DCMAKE_CUDA_ARCHITECTURES=90"
    assert sum("CMAKE_CUDA_ARCHITECTURES" in flag for flag in flags) == 1


def test_progress_lines_from_make_and_ninja() -> None:
    assert parse_percent("[ 14%] Building C object main.c.o") == 14.0
    assert parse_percent("[100%] Built target llama-bench") == 100.0
    assert parse_percent("[12/48] Building CXX object ggml.cpp.o") == 25.0
    assert parse_percent("-- Configuring done") is None


# --- the pinned sdist: fetched once, extracted once ------------------------------------------


def _fake_sdist(folder: Path, version: str) -> Path:
    """An sdist shaped like llama-cpp-python's: CHANGELOG, PKG-INFO and vendor/llama.cpp."""
    stem = f"llama_cpp_python-{version}"
    members = {
        f"{stem}/PKG-INFO": f"Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: {version}\n",
        f"{stem}/CHANGELOG.md": (DATA / "CHANGELOG-0.3.36.md").read_text().replace("0.3.36", version),
        f"{stem}/vendor/llama.cpp/CMakeLists.txt": TINY_CMAKE,
        f"{stem}/vendor/llama.cpp/main.c": GOOD_C,
        f"{stem}/vendor/llama.cpp/lib.c": LIB_C,
    }
    tarball = folder / f"{stem}.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return tarball


def test_pinned_source_is_downloaded_and_extracted_once(tmp_path: Path, cache: Path) -> None:
    tarball = _fake_sdist(tmp_path, "9.9.9")
    pin = SdistPin("9.9.9", hashlib.sha256(tarball.read_bytes()).hexdigest())
    downloads: list[Path] = []

    def download(pin: SdistPin, dest: Path, on_line) -> Path:
        downloads.append(dest)
        on_line("fake download")
        return _copy(tarball, dest / pin.filename)

    assert cached_pinned_source(pin) is None
    first = fetch_pinned_source(pin, download=download)
    assert first.llama_cpp_commit == "0c1e570"
    assert first.sha256 == pin.sha256
    assert first.cmake_dir == cache / "sources" / "llama_cpp_python-9.9.9" / "vendor" / "llama.cpp"
    sentinel = first.cmake_dir / "sentinel"
    sentinel.write_text("a re-extraction would remove this")

    second = fetch_pinned_source(pin, download=download)
    assert second == first
    assert len(downloads) == 1
    assert sentinel.exists()


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def test_pinned_source_with_wrong_sha_is_refused(tmp_path: Path, cache: Path) -> None:
    tarball = _fake_sdist(tmp_path, "9.9.9")
    pin = SdistPin("9.9.9", "0" * 64)
    with pytest.raises(BuildError, match="does not match the pinned"):
        fetch_pinned_source(pin, download=lambda p, dest, _line: _copy(tarball, dest / p.filename))
    assert cached_pinned_source(pin) is None
    assert not (cache / "sources" / "llama_cpp_python-9.9.9").exists()


def test_extracted_sdist_folder_is_a_source(tmp_path: Path) -> None:
    with tarfile.open(_fake_sdist(tmp_path, "1.2.3")) as archive:
        archive.extractall(tmp_path / "x", filter="data")
    src = directory_source(tmp_path / "x" / "llama_cpp_python-1.2.3")
    assert src.cmake_dir.name == "llama.cpp"
    assert (src.llama_cpp_commit, src.llama_cpp_python_version) == ("0c1e570", "1.2.3")


def test_find_runtime_before_any_fetch_is_none(cache: Path) -> None:
    assert find_runtime("host") is None


# --- real CMake builds of a tiny project -----------------------------------------------------


@needs_cmake
def test_tiny_build_makes_a_cached_runtime(tmp_path: Path, cache: Path) -> None:
    """Every program of the host target lands in the runtime, each listed with its sha256."""
    project = _tiny_project(tmp_path / "tiny", GOOD_C)
    events: list[BuildProgress] = []

    runtime, from_cache = build_runtime(source=project, on_progress=events.append, jobs=2)

    assert not from_cache
    assert runtime.root == cache / "runtimes" / runtime.manifest.key
    binary = runtime.binary()
    assert binary == runtime.root / "bin" / "llama-bench"
    assert subprocess.run([binary], capture_output=True, text=True, check=True).stdout == "tiny llama-bench\n"
    manifest = runtime.manifest
    probe = runtime.binary("edgebench-probe")
    assert manifest.files == {
        **{f"bin/{name}": hashlib.sha256(runtime.binary(name).read_bytes()).hexdigest() for name in ("llama-bench", "llama-perplexity", "llama-server", "llama-quantize")},
        "bin/edgebench-probe": hashlib.sha256(probe.read_bytes()).hexdigest(),
        "bin/edgebench-bandwidth": hashlib.sha256(runtime.binary("edgebench-bandwidth").read_bytes()).hexdigest(),
        "lib/libllama.so": hashlib.sha256((runtime.root / "lib" / "libllama.so").read_bytes()).hexdigest(),
    }
    assert subprocess.run([probe, "--version"], capture_output=True, text=True, check=True).stdout == "edgebench-probe 3\n"
    bandwidth = subprocess.run([runtime.binary("edgebench-bandwidth"), "--version"], capture_output=True, text=True, check=True)
    assert bandwidth.stdout == "edgebench-bandwidth 1\n"
    assert manifest.target == "host"
    assert manifest.llama_cpp_commit == "unknown"
    assert "-DLLAMA_BUILD_COMMIT=unknown" in manifest.cmake_flags
    assert "-DGGML_NATIVE=ON" in manifest.cmake_flags
    assert "-DBUILD_SHARED_LIBS=ON" in manifest.cmake_flags  # llama-cpp-python loads lib/libllama.so
    assert manifest.compiler and manifest.compiler != "unknown"
    assert Manifest.from_json(json.loads((runtime.root / "manifest.json").read_text())) == manifest
    assert (runtime.root / "build.log").read_text().count("$ ") == 4  # configure, build, probe, bandwidth test
    assert {"configure", "build", "done"} <= {event.stage for event in events}
    assert any(event.stage == "build" and event.percent is not None for event in events)
    assert events[-1] == BuildProgress(100.0, "done", events[-1].line)
    assert not any(path.name.startswith(".") for path in (cache / "runtimes").iterdir())

    again, from_cache = build_runtime(source=project)
    assert from_cache and again == runtime
    assert find_runtime(source=project) == runtime
    assert find_runtime(source=project, extra_flags=["EXTRA=1"]) is None


@needs_cmake
def test_tiny_build_without_ninja_reports_make_percents(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build, "find_tool", lambda name: None if name == "ninja" else find_tool(name))
    events: list[BuildProgress] = []
    runtime, _ = build_runtime(source=_tiny_project(tmp_path / "tiny", GOOD_C), on_progress=events.append)
    assert "-G Ninja" not in (runtime.root / "build.log").read_text()
    assert any(event.line.startswith("[100%]") and event.percent == 100.0 for event in events)


@needs_cmake
def test_changed_source_or_flags_get_their_own_runtime(tmp_path: Path, cache: Path) -> None:
    project = _tiny_project(tmp_path / "tiny", GOOD_C)
    first, _ = build_runtime(source=project)
    flagged, from_cache = build_runtime(source=project, extra_flags=["-DEDGEBENCH_TEST=1"])
    assert not from_cache and flagged.root != first.root
    assert flagged.manifest.cmake_flags[-1] == "-DEDGEBENCH_TEST=1"
    (project / "main.c").write_text(GOOD_C.replace("tiny llama-bench", "changed llama-bench"))
    changed, from_cache = build_runtime(source=project)
    assert not from_cache and changed.manifest.source_sha256 != first.manifest.source_sha256


@needs_cmake
def test_force_rebuilds_in_place(tmp_path: Path, cache: Path) -> None:
    project = _tiny_project(tmp_path / "tiny", GOOD_C)
    first, _ = build_runtime(source=project)
    rebuilt, from_cache = build_runtime(source=project, force=True)
    assert not from_cache and rebuilt.root == first.root
    assert find_runtime(source=project) == rebuilt


@needs_cmake
def test_concurrent_builds_of_one_key_build_once(tmp_path: Path, cache: Path) -> None:
    project = _tiny_project(tmp_path / "tiny", GOOD_C)
    results: list[bool] = []

    def build() -> None:
        results.append(build_runtime(source=project)[1])

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, True]


@needs_cmake
def test_incomplete_or_tampered_runtime_is_not_found(tmp_path: Path, cache: Path) -> None:
    project = _tiny_project(tmp_path / "tiny", GOOD_C)
    runtime, _ = build_runtime(source=project)
    runtime.binary().write_bytes(b"tampered")
    assert find_runtime(source=project) is None
    _, from_cache = build_runtime(source=project)
    assert not from_cache
    (runtime.root / "manifest.json").unlink()
    assert find_runtime(source=project) is None


@needs_cmake
def test_compile_error_is_reported_with_log_tail_and_path(tmp_path: Path, cache: Path) -> None:
    project = _tiny_project(tmp_path / "broken", BAD_C)
    with pytest.raises(BuildError) as failure:
        build_runtime(source=project)
    message = str(failure.value)
    assert "build failed" in message
    assert "edgebench_undeclared_symbol" in message
    log_path = Path(message.rsplit("full log: ", 1)[1].strip())
    assert log_path.is_file() and "edgebench_undeclared_symbol" in log_path.read_text()
    assert find_runtime(source=project) is None
    assert not (cache / "runtimes").exists() or not any(
        path.is_dir() for path in (cache / "runtimes").iterdir()
    )


@needs_cmake
def test_configure_error_is_reported(tmp_path: Path, cache: Path) -> None:
    project = _tiny_project(tmp_path / "broken", GOOD_C)
    (project / "CMakeLists.txt").write_text(TINY_CMAKE + 'message(FATAL_ERROR "edgebench says no")\n')
    with pytest.raises(BuildError, match=r"(?s)configure failed.*edgebench says no.*full log: "):
        build_runtime(source=project)


# --- the real thing ---------------------------------------------------------------------------


def _fake_cc(folder: Path, defines: str, status: int = 0) -> str:
    """A C compiler whose `-dM -E` prints these predefined macros (what `-march=native` would give)."""
    folder.mkdir(exist_ok=True)
    cc = folder / "cc"
    cc.write_text(f"#!/bin/sh\nprintf '{defines}'\nexit {status}\n")
    cc.chmod(0o755)
    return str(cc)


def test_host_build_leaves_out_amx_where_native_code_would_hold_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   fake_cuda_toolkit: Path) -> None:
    """llama.cpp's AMX matmul segfaults (llama.cpp #20824), so the host targets compile it out on
    an AMX CPU, in flags the key carries; elsewhere their flags stay as they were."""
    no_amx = ("-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16",
              "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
    monkeypatch.setenv("CC", _fake_cc(tmp_path / "amx", r"#define __AVX512F__ 1\n#define __AMX_INT8__ 1\n"))
    host = get_target("host")
    assert host.flags({})[-2:] == no_amx
    assert set(no_amx) <= set(get_target("host-cuda").flags({"CMAKE_CUDA_ARCHITECTURES": "90"}))
    flags = final_flags(host, Source(tmp_path, "a" * 64, "0c1e570", "0.3.36"), ["CMAKE_C_FLAGS=", "CMAKE_CXX_FLAGS="])
    assert "-DCMAKE_C_FLAGS=" in flags and "-DCMAKE_CXX_FLAGS=" in flags and not set(no_amx) & set(flags)
    for cc in (_fake_cc(tmp_path / "avx", r"#define __AVX512F__ 1\n"), _fake_cc(tmp_path / "old", "", status=1),
               str(tmp_path / "missing")):
        monkeypatch.setenv("CC", cc)
        assert host.flags({}) == ("-DGGML_NATIVE=ON", *SHARED_FLAGS)
    assert host.flags({"CMAKE_C_COMPILER": _fake_cc(tmp_path / "amx", r"#define __AMX_INT8__ 1\n")})[-2:] == no_amx


@pytest.mark.slow
def test_real_host_build_from_pinned_sdist() -> None:
    """Uses the real cache on purpose: the first run pays minutes, later runs reuse it."""
    runtime, _ = build_runtime("host")
    assert runtime.manifest.llama_cpp_commit == "0c1e570"
    assert runtime.manifest.llama_cpp_python_version == LLAMA_CPP_PYTHON_VERSION
    assert "-DLLAMA_BUILD_COMMIT=0c1e570" in runtime.manifest.cmake_flags
    done = subprocess.run([runtime.binary(), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "commit 0c1e570" in done.stdout + done.stderr
    again, from_cache = build_runtime("host")
    assert from_cache and again == runtime
    assert find_runtime("host") == runtime


def test_a_runtime_built_before_llama_perplexity_has_another_key() -> None:
    """A cached runtime holding llama-bench alone is rebuilt once, never used without the quality tools."""
    from harness.runtimes.targets import DEVICE_PROGRAMS, HOST_PROGRAMS

    flags = ("-DGGML_NATIVE=ON",)
    old = runtime_key("a" * 64, "host", flags, "p" * 64, ("llama-bench",))
    assert len({old, runtime_key("a" * 64, "host", flags, "p" * 64, HOST_PROGRAMS),
                runtime_key("a" * 64, "host", flags, "p" * 64, DEVICE_PROGRAMS)}) == 3
    assert get_target("host").programs == HOST_PROGRAMS and get_target("linux-aarch64").programs == DEVICE_PROGRAMS
