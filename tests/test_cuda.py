"""The CUDA backend with no GPU: cuBLAS and the driver library checked before a host-cuda build, what
a build used kept in its manifest, a process whose CUDA backend could not start refused instead of
stored as a CUDA figure, and (slow) the real host-cuda runtime compiled with this machine's nvcc for
one explicit architecture: it links, it reports its CUDA backend, and a case run on it fails saying
there is no CUDA device.

The toolkit checks run against a fake toolkit (`fake_cuda_toolkit`: an nvcc script that answers the
two questions the target asks); the slow test against the real one and NVIDIA's cuBLAS wheel that
`scripts/setup.sh --test` unpacks where the toolkit has none (as here: CUDA 13.0 from PyPI's wheels).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness.drivers.base import Completed
from harness.engines import backend_failure
from harness.errors import BuildError
from harness.records import Case
from harness.run.runner import _outcome
from harness.runtimes import build_runtime, cuda
from harness.runtimes.targets import get_target
from tests.test_cli import edgebench
from tests.test_runtimes import GOOD_C, _tiny_project, needs_cmake

from .conftest import DATA

# A real ggml-cuda build (~190 nvcc units) takes long even for one architecture: PTX for sm_80
# ("80-virtual", which any GPU from Ampere on JIT-compiles at load) is the cheapest that is complete.
# No NVIDIA driver here: ggml links the driver only for its VMM pool, which this build leaves out.
CUDA_FLAGS = ("CMAKE_CUDA_ARCHITECTURES=80-virtual", "GGML_CUDA_NO_VMM=ON")
# Recorded: the host-cuda runtime's llama-bench on this machine (no driver), -p 16 -n 0 -ngl 99 (see the data
# README); and its llama-perplexity's stderr for a quality case (1 x 256 against the host CPU's logits, -ngl 99).
NO_DEVICE = DATA / "llamabench" / "cuda_no_device.stderr"
SUITE = """
name = "cuda-tiny"
repetitions = 1
inprocess_repetitions = 1
mode = "none"
[[prefill]]
prompt = 16
[[latency]]
prompt = 16
tokens = 4
[[serve]]
prompt = 16
tokens = 4
requests = 1
[[quality]]
context = 256
chunks = 1
"""


def _wheel(cache: Path, version: str, major: int) -> Path:
    """NVIDIA's nvidia-cublas wheel as setup.sh unpacks it: `<version>/nvidia/cu<major>/{include,lib}`."""
    part = cache / "cuda-cublas" / version / "nvidia" / f"cu{major}"
    (part / "include").mkdir(parents=True)
    (part / "lib").mkdir()
    (part / "include" / "cublas_v2.h").write_text("")
    (part / "include" / "cublas_api.h").write_text(
        "".join(f"#define CUBLAS_VER_{k} {v}\n" for k, v in zip(("MAJOR", "MINOR", "PATCH", "BUILD"), version.split("."))))
    return part


def test_a_toolkit_with_cublas_and_the_driver_adds_nothing(fake_cuda_toolkit: Path) -> None:
    assert cuda.flags({}, vmm=True) == ()
    assert cuda.missing_cublas() is None
    flags = get_target("host-cuda").flags({"CMAKE_CUDA_ARCHITECTURES": "89"})
    assert "-DGGML_CUDA=ON" in flags and "-DCMAKE_INSTALL_RPATH_USE_LINK_PATH=ON" in flags


def test_no_cublas_stops_the_build_in_one_line_with_the_way_out(fake_cuda_toolkit: Path) -> None:
    (fake_cuda_toolkit / "include" / "cublas_v2.h").unlink()
    assert cuda.missing_cublas() == 13
    with pytest.raises(BuildError) as raised:
        get_target("host-cuda").flags({"CMAKE_CUDA_ARCHITECTURES": "89"})
    message = str(raised.value)
    assert "\n" not in message
    assert f"no cuBLAS in the CUDA 13.0 toolkit at {fake_cuda_toolkit}" in message
    assert "scripts/setup.sh --test" in message and "nvidia-cublas" in message and "-DCUDA_cublas_LIBRARY=" in message
    # the user's own cuBLAS is taken as given
    assert cuda.flags({"CUDA_cublas_LIBRARY": "/opt/cublas/lib/libcublas.so"}, vmm=True) == ()


def test_the_unpacked_wheel_for_the_toolkits_major_release_is_used_and_the_newest_wins(tmp_path: Path, fake_cuda_toolkit: Path) -> None:
    (fake_cuda_toolkit / "include" / "cublas_v2.h").unlink()
    cache = tmp_path / "cache"
    _wheel(cache, "12.9.1.4", 12)  # another CUDA major: never chosen
    _wheel(cache, "13.0.0.19", 13)
    newest = _wheel(cache, "13.0.2.14", 13)
    assert cuda.missing_cublas() is None
    assert cuda.flags({}, vmm=True) == (
        f"-DCUDA_cublas_LIBRARY={newest / 'lib' / 'libcublas.so.13'}",
        f"-DCUDA_cublasLt_LIBRARY={newest / 'lib' / 'libcublasLt.so.13'}",
        f"-DCMAKE_CUDA_STANDARD_INCLUDE_DIRECTORIES={newest / 'include'}",
    )


def test_no_driver_library_is_said_unless_the_build_leaves_out_the_vmm_pool(fake_cuda_toolkit: Path) -> None:
    (fake_cuda_toolkit / "lib64" / "stubs" / "libcuda.so").unlink()
    with pytest.raises(BuildError, match=r"no CUDA driver library \(libcuda.so.*pass -DGGML_CUDA_NO_VMM=ON$"):
        get_target("host-cuda").flags({"CMAKE_CUDA_ARCHITECTURES": "89"})
    flags = get_target("host-cuda").flags({"CMAKE_CUDA_ARCHITECTURES": "89", "GGML_CUDA_NO_VMM": "ON"})
    assert "-DGGML_CUDA=ON" in flags


def test_no_nvcc_is_said(fake_cuda_toolkit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BuildError, match=r"host-cuda needs nvcc \(the CUDA toolkit\): none on PATH"):
        get_target("host-cuda").flags({"CMAKE_CUDA_ARCHITECTURES": "89"})
    assert cuda.missing_cublas() is None  # nothing for setup.sh to fetch
    monkeypatch.setenv("CUDACXX", str(fake_cuda_toolkit / "bin" / "nvcc"))  # CMake's own variable finds it
    assert cuda.flags({}, vmm=True) == ()


@needs_cmake
def test_a_host_cuda_build_without_cublas_stops_before_compiling(tmp_path: Path, fake_cuda_toolkit: Path) -> None:
    (fake_cuda_toolkit / "include" / "cublas_v2.h").unlink()
    project = _tiny_project(tmp_path / "tiny", GOOD_C)
    with pytest.raises(BuildError, match="no cuBLAS in the CUDA 13.0 toolkit"):
        build_runtime("host-cuda", source=project, extra_flags=["CMAKE_CUDA_ARCHITECTURES=89"])
    assert not (tmp_path / "cache" / "builds").exists() and not (tmp_path / "cache" / "llama-cpp").exists()


def test_the_cuda_toolchain_is_read_from_cmakes_cache(tmp_path: Path, fake_cuda_toolkit: Path) -> None:
    lib = _wheel(tmp_path / "cache", "13.0.2.14", 13) / "lib" / "libcublas.so.13"
    cache = (f"CMAKE_CUDA_COMPILER:FILEPATH={fake_cuda_toolkit / 'bin' / 'nvcc'}\nCMAKE_CUDA_ARCHITECTURES:STRING=80-virtual\n"
             f"CUDA_cublas_LIBRARY:FILEPATH={lib}\nGGML_CUDA_NO_VMM:BOOL=ON\nOTHER:BOOL=ON\n")
    assert cuda.toolchain(cache) == {"nvcc": "Cuda compilation tools, release 13.0, V13.0.88", "cuda_architectures": "80-virtual",
                                     "cublas": "13.0.2.14", "ggml_cuda_no_vmm": "ON"}
    assert cuda.toolchain("CMAKE_BUILD_TYPE:STRING=Release\n") == {}  # a build without CUDA


def test_a_process_whose_cuda_backend_could_not_start_fails_instead_of_passing_for_cuda() -> None:
    """llama-bench exits 0 and reports `backends: CUDA` after running on the CPU (recorded here)."""
    stdout, stderr = NO_DEVICE.with_suffix(".jsonl").read_text(), NO_DEVICE.read_text()
    assert json.loads(stdout)["backends"] == "CUDA"
    case = Case("llamabench", "prefill", 16, 0, 0, settings=(("n_gpu_layers", 99),))
    done = Completed(argv=("llama-bench",), exit_code=0, stdout=stdout, stderr=stderr, wall_s=1.0)
    status, error, parsed = _outcome(lambda c, d: pytest.fail("a refused process is not parsed"), case, done, 60)
    assert status == "failed" and parsed is None
    assert error is not None and error.startswith("no CUDA device: the runtime's CUDA backend could not start "
                                                  "(CUDA driver version is insufficient for CUDA runtime version)")
    assert "not stored as CUDA figures" in error
    # llama-perplexity says it through llama.cpp's common log, behind a time and a level (recorded in the same run)
    perplexity = (DATA / "perplexity" / "kld-cuda-no-device.stderr").read_text()
    assert perplexity.startswith("0.00.001.123 E ggml_cuda_init: failed to initialize CUDA:")
    assert backend_failure(perplexity) == error
    lavapipe = (DATA / "llamabench" / "lavapipe_p16_ngl99.stderr").read_text()
    assert backend_failure(lavapipe) is None and backend_failure("") is None


# --- the real host-cuda runtime, compiled here with no GPU (slow) ---------------------------------


def _cuda_toolkit() -> None:
    """Skips, saying why, where this machine has no CUDA toolkit or no cuBLAS for it."""
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc (the CUDA toolkit) on PATH: the host-cuda compile test needs one")
    try:
        get_target("host-cuda").flags(dict(flag.split("=", 1) for flag in CUDA_FLAGS))
    except BuildError as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a first build (~20 min on 2 cores) must not be cut off at the suite's 30 minutes on a slower box
def test_host_cuda_compiles_links_reports_cuda_and_a_case_without_a_gpu_fails_saying_so(tmp_path: Path) -> None:
    _cuda_toolkit()
    started = time.monotonic()
    runtime, cached = build_runtime("host-cuda", extra_flags=CUDA_FLAGS)  # cached after the first build
    built_s = time.monotonic() - started
    manifest = runtime.manifest
    assert {"-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=80-virtual", "-DGGML_CUDA_NO_VMM=ON"} <= set(manifest.cmake_flags)
    assert "NVIDIA" in manifest.compiler and manifest.toolchain["cuda_architectures"] == "80-virtual"
    assert "release" in manifest.toolchain["nvcc"] and manifest.toolchain["cublas"].split(".")[0].isdigit()

    cuda_lib = runtime.root / "lib" / "libggml-cuda.so"
    assert cuda_lib.is_file() and f"lib/{cuda_lib.name}" in manifest.files
    for binary in (runtime.root / "bin" / "llama-bench", cuda_lib):  # every library resolves from the runtime's own RPATH
        linked = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
        assert "not found" not in linked, linked
        if binary == cuda_lib:
            assert "libcublas.so" in linked and "libcudart.so" in linked

    # no GPU here; where there is one, CUDA_VISIBLE_DEVICES="" hides it, so the no-device path is what is tested everywhere
    no_gpu = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    listed = subprocess.run([str(runtime.root / "bin" / "llama-bench"), "--list-devices"], capture_output=True, text=True, timeout=120,
                            env=no_gpu)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "ggml_cuda_init: failed to initialize CUDA:" in listed.stdout + listed.stderr  # the CUDA backend is in, and says why it cannot start

    # one case for each engine of the runtime: llama-bench, llama-cpp-python (in process), llama-server, llama-perplexity
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE)
    done = edgebench("run", "--suite", str(suite), "--target", "host-cuda", *(f"--build-flag={flag}" for flag in CUDA_FLAGS),
                     "--set", "n_gpu_layers=99", "--results", str(tmp_path / "results"), "--json", cwd=tmp_path,
                     env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode != 0, done.stdout[-2000:]
    payload = json.loads(done.stdout)
    failed = {failure["case"].split(" [")[0]: failure for failure in payload["failures"]}
    assert set(failed) == {"prefill p16", "latency p16+n4", "serve p16+n4", "quality c256 x1"}, failed
    for failure in failed.values():
        assert failure["status"] == "failed", failure
        assert failure["error"].startswith("no CUDA device: the runtime's CUDA backend could not start ("), failure
    assert payload["summary"] == []  # no figure of any case is stored as a CUDA one
    (quality,) = payload["quality"]
    assert quality["status"] == "failed" and quality["verdict"] == "failed: no quality figure"
    assert quality["error"] == failed["quality c256 x1"]["error"]
    print(f"host-cuda: {'cached' if cached else 'built'} in {built_s:.0f} s; toolchain {manifest.toolchain}")
