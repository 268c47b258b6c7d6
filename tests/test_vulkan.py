"""The Vulkan backend: headers checked before a build, what a build used kept in its manifest, the
device chosen by a suite setting, and (slow) the real host-vulkan runtime run on Mesa's lavapipe, a
Vulkan device on the CPU, through `edgebench run`, held against the host CPU's output.

Lavapipe is slow (SmolLM2 with every layer offloaded: a few tokens per second), so the real run's
cases are tiny; its build (~12 min on 2 cores, mostly shaders) is cached like every runtime.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from harness.drivers.base import Completed
from harness.engines.llamabench import LlamaBench, device_note
from harness.engines.perplexity import Perplexity
from harness.errors import BuildError, ConfigError
from harness.plan.planner import Case
from harness.plan.suites import parse_suite
from harness.runtimes import build_runtime
from harness.runtimes.build import Manifest
from harness.runtimes.targets import get_target
from harness.runtimes.vulkan import NEEDED, fallback_include_dir, header_version, include_flags, toolchain
from tests.test_cli import edgebench
from tests.test_runtimes import GOOD_C, _tiny_project, needs_cmake

from .conftest import DATA

SYSTEM = Path("/usr/include")
LAVAPIPE_ICD = sorted(Path("/usr/share/vulkan/icd.d").glob("lvp_icd.*.json"))


def _headers(root: Path, patch: int, minor: int = 3) -> Path:
    """An include folder whose vulkan_core.h carries the two version lines of the real one."""
    (root / "vulkan").mkdir(parents=True)
    (root / "vulkan" / "vulkan_core.h").write_text(
        f"// Version of this file\n#define VK_HEADER_VERSION {patch}\n\n"
        f"// Complete version of this file\n#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, 1, {minor}, VK_HEADER_VERSION)\n")
    return root


@pytest.fixture
def old_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Debian 12's situation: the system's headers (found through $VULKAN_SDK, as CMake does) are 1.3.239,
    and the cache is empty."""
    sdk = tmp_path / "sdk"
    _headers(sdk / "include", 239)
    monkeypatch.setenv("VULKAN_SDK", str(sdk))
    monkeypatch.setenv("EDGEBENCH_CACHE", str(tmp_path / "cache"))
    return sdk / "include"


@pytest.mark.skipif(not (SYSTEM / "vulkan" / "vulkan_core.h").is_file(), reason="no system Vulkan headers (libvulkan-dev)")
def test_the_system_header_version_is_read() -> None:
    version = header_version(SYSTEM)
    assert version is not None and version[:2] >= (1, 3)


@pytest.mark.skipif(not (SYSTEM / "vulkan" / "vulkan_core.h").is_file() or (header_version(SYSTEM) or NEEDED) >= NEEDED,
                    reason="the system's Vulkan headers are absent or new enough (Debian 12's are too old)")
def test_this_machines_old_headers_are_refused_with_an_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VULKAN_SDK", raising=False)
    monkeypatch.setenv("EDGEBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BuildError, match=rf"Vulkan headers {'.'.join(map(str, header_version(SYSTEM) or ()))} in /usr/include"):
        get_target("host-vulkan").flags({})


def test_old_headers_stop_the_build_in_one_line_saying_what_was_found_and_needed(tmp_path: Path, old_system: Path) -> None:
    with pytest.raises(BuildError) as raised:
        include_flags({})
    message = str(raised.value)
    assert "\n" not in message
    assert f"Vulkan headers 1.3.239 in {old_system}" in message and f"needs {'.'.join(map(str, NEEDED))} or newer" in message
    assert "scripts/setup.sh --test" in message and "-DVulkan_INCLUDE_DIR=" in message
    with pytest.raises(BuildError, match=r"no Vulkan headers in .*nowhere"):
        include_flags({"Vulkan_INCLUDE_DIR": str(tmp_path / "nowhere")})


def test_newer_headers_in_the_cache_are_used_and_the_newest_wins(tmp_path: Path, old_system: Path) -> None:
    cache = tmp_path / "cache" / "vulkan-headers"
    _headers(cache / "1.3.250-1" / "usr" / "include", 250)  # still too old: never chosen
    assert fallback_include_dir() is None
    _headers(cache / "1.4.309.0-1" / "usr" / "include", 309, minor=4)
    _headers(cache / "1.3.280-1" / "usr" / "include", 280)
    assert include_flags({}) == (f"-DVulkan_INCLUDE_DIR={cache / '1.4.309.0-1' / 'usr' / 'include'}",)
    assert include_flags({"Vulkan_INCLUDE_DIR": str(cache / "1.3.280-1" / "usr" / "include")}) == ()  # the user's own, new enough
    with pytest.raises(BuildError, match="Vulkan headers 1.3.239"):  # the user's own, too old: said, not replaced
        include_flags({"Vulkan_INCLUDE_DIR": str(old_system)})


@needs_cmake
def test_a_host_vulkan_build_with_old_headers_stops_before_compiling(tmp_path: Path, old_system: Path) -> None:
    project = _tiny_project(tmp_path / "tiny", GOOD_C)
    with pytest.raises(BuildError, match="Vulkan headers 1.3.239"):
        build_runtime("host-vulkan", source=project)
    assert not (tmp_path / "cache" / "builds").exists() and not (tmp_path / "cache" / "llama-cpp").exists()


def test_android_ndk_with_vulkan_takes_glslc_headers_and_spirv_from_the_host(tmp_path: Path, old_system: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A toolchain file confines CMake's searches to the NDK's sysroot, so the host's pieces are named."""
    glslc = tmp_path / "bin" / "glslc"
    glslc.parent.mkdir()
    glslc.write_text("#!/bin/sh\n")
    glslc.chmod(0o755)
    monkeypatch.setenv("PATH", str(glslc.parent))
    newer = _headers(tmp_path / "cache" / "vulkan-headers" / "1.4.309.0-1" / "usr" / "include", 309, minor=4)
    spirv = tmp_path / "spirv"
    user = {"ANDROID_NDK": str(tmp_path / "ndk"), "GGML_VULKAN": "ON", "SPIRV-Headers_DIR": str(spirv)}
    flags = get_target("android-ndk").flags(user)
    assert f"-DVulkan_GLSLC_EXECUTABLE={glslc}" in flags and f"-DVulkan_INCLUDE_DIR={newer}" in flags
    assert not any(flag.startswith("-DSPIRV-Headers_DIR=") for flag in flags)  # the user's own stays (merged after ours)
    assert not any("Vulkan" in flag for flag in get_target("android-ndk").flags({**user, "GGML_VULKAN": "OFF"}))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BuildError, match="needs glslc on the host"):
        get_target("android-ndk").flags(user)


@pytest.mark.skipif(shutil.which("glslc") is None, reason="glslc is not installed (scripts/setup.sh --test installs it)")
def test_the_toolchain_is_read_from_cmakes_cache(tmp_path: Path) -> None:
    include = _headers(tmp_path / "include", 309, minor=4)
    cache = f"Vulkan_GLSLC_EXECUTABLE:FILEPATH={shutil.which('glslc')}\nVulkan_INCLUDE_DIR:PATH={include}\nOTHER:BOOL=ON\n"
    found = toolchain(cache)
    assert found["vulkan_headers"] == "1.4.309" and found["glslc"].startswith("shaderc ")
    assert toolchain("CMAKE_BUILD_TYPE:STRING=Release\n") == {}  # a CPU build


def test_a_manifest_from_before_the_toolchain_field_still_reads() -> None:
    old = {"manifest_version": 1, "key": "k", "target": "host", "llama_cpp_commit": "c", "llama_cpp_python_version": "0",
           "source_sha256": "s", "cmake_flags": [], "compiler": "GNU", "files": {"bin/llama-bench": "x"}, "built_at": "", "build_seconds": 1.0}
    manifest = Manifest.from_json(old)
    assert manifest.toolchain == {}
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_the_vulkan_device_setting_reaches_both_programs_as_their_environment() -> None:
    settings = (("n_gpu_layers", 99), ("vk_visible_devices", "0"))
    bench = LlamaBench().argv(Case("llamabench", "prefill", 16, 0, 0, settings=settings), runtime_dir="/rt", model_path="/m.gguf")
    assert bench[:3] == ["env", "GGML_VK_VISIBLE_DEVICES=0", "/rt/bin/llama-bench"] and bench[bench.index("-ngl") + 1] == "99"
    quality = Case("perplexity", "quality", 64, 0, 0, settings=settings, quality=(("chunks", 1), ("reference", "a" * 64)))
    ppl = Perplexity().argv(quality, runtime_dir="/rt", model_path="/m.gguf", inputs={"logits": "/base.logits"})
    assert ppl[:3] == ["env", "GGML_VK_VISIBLE_DEVICES=0", "/rt/bin/llama-perplexity"]
    assert LlamaBench().argv(Case("llamabench", "prefill", 16, 0, 0), runtime_dir="/rt", model_path="/m.gguf")[0] == "/rt/bin/llama-bench"


def test_the_vulkan_device_setting_is_checked_and_kept_for_the_quality_case() -> None:
    tests = "[[prefill]]\nprompt = 16\n"
    assert parse_suite('[settings]\nvk_visible_devices = "0,1"\n' + tests, "vk.toml").settings["vk_visible_devices"] == ("0,1",)
    assert parse_suite("[settings]\nvk_visible_devices = 0\n" + tests, "vk.toml").settings["vk_visible_devices"] == (0,)
    with pytest.raises(ConfigError, match=r"vk.toml: key 'settings.vk_visible_devices'"):
        parse_suite('[settings]\nvk_visible_devices = "lavapipe"\n' + tests, "vk.toml")
    assert "vk_visible_devices" in Perplexity.settings  # the quality case scores the device the speed cases ran on


def test_lavapipe_as_reported_by_llama_bench_gets_the_note() -> None:
    """Recorded on lavapipe: the host-vulkan runtime, GGML_VK_VISIBLE_DEVICES=0, -ngl 99 (see the data README)."""
    stdout = (DATA / "llamabench" / "lavapipe_p16_ngl99.jsonl").read_text()
    stderr = (DATA / "llamabench" / "lavapipe_p16_ngl99.stderr").read_text()
    case = Case("llamabench", "prefill", 16, 0, 0, settings=(("n_gpu_layers", 99),))
    result = LlamaBench().parse(case, Completed(argv=("llama-bench",), exit_code=0, stdout=stdout, stderr=stderr, wall_s=1.0))
    assert result.effective["backends"] == "Vulkan" and "llvmpipe" in result.effective["gpu_info"]
    assert result.effective["n_gpu_layers"] == 99
    assert result.effective["vulkan_devices"] == [{"index": 0, "name": "llvmpipe (LLVM 15.0.6, 256 bits)", "driver": "llvmpipe",
                                                   "uma": False, "type": "CPU"}]
    assert result.effective["device_note"] == "lavapipe: a CPU implementation; figures are not GPU figures"
    assert device_note({"gpu_info": "NVIDIA GeForce RTX 3060", "backends": "Vulkan", "n_gpu_layers": 99}) is None
    other = device_note({"gpu_info": "SwiftShader Device", "backends": "Vulkan"}, [{"name": "SwiftShader Device", "type": "CPU"}])
    assert other == "SwiftShader Device: a CPU implementation; figures are not GPU figures"  # known by the type ggml reports
    assert device_note({"gpu_info": "", "backends": "CPU", "n_gpu_layers": 99}) is None  # a CPU-only build: nothing to offload to
    unused = device_note({"gpu_info": "", "backends": "Vulkan", "n_gpu_layers": 99})
    assert unused is not None and "no GPU device took the offloaded layers" in unused and "vk_visible_devices" in unused


# --- the real host-vulkan runtime on lavapipe (slow) ----------------------------------------------

TINY = """
name = "vulkan-tiny"
repetitions = 1
inprocess_repetitions = 1
mode = "none"
[[prefill]]
prompt = 16
[[decode]]
tokens = 4
[[quality]]
context = 256
chunks = 1
"""
# SmolLM2's rope base is 100000: at 10 every position is rotated wrongly, on the Vulkan side only
WRONG = TINY + 'override_kv = "llama.rope.freq_base=float:10"\n'


def _host_vulkan() -> None:
    """Skips, saying why, only where the packages are missing (scripts/setup.sh --test installs them)."""
    from harness.runtimes.vulkan import headers_status

    if shutil.which("glslc") is None or not LAVAPIPE_ICD:
        pytest.skip("glslc or mesa-vulkan-drivers (lavapipe) missing: scripts/setup.sh --test installs them")
    if (why := headers_status()) is not None:
        pytest.skip(why)


def _run(tmp_path: Path, suite: str, name: str) -> tuple[dict, str]:
    (tmp_path / name).write_text(suite)
    done = edgebench("run", "--suite", str(tmp_path / name), "--target", "host-vulkan", "--set", "n_gpu_layers=99",
                     "--set", "vk_visible_devices=0", "--results", str(tmp_path / "results"), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout), done.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("host_runtime")  # the CPU reference the Vulkan output is held against
def test_host_vulkan_on_lavapipe_runs_offloaded_and_passes_the_gate_against_the_cpu(tmp_path: Path) -> None:
    _host_vulkan()
    started = time.monotonic()
    runtime, _ = build_runtime("host-vulkan")  # cached after the first build
    assert "-DGGML_VULKAN=ON" in runtime.manifest.cmake_flags
    assert runtime.manifest.toolchain["vulkan_headers"] >= "1.3" and runtime.manifest.toolchain["glslc"].startswith("shaderc")

    payload, _ = _run(tmp_path, TINY, "tiny.toml")
    run_id = payload["run"]["id"]
    (quality,) = payload["quality"]
    assert quality["status"] == "ok" and quality["differs"] is False, quality
    assert quality["top1_agreement"] > 90 and quality["kld_mean"] < 0.05
    shown = edgebench("results", "show", run_id, "--results", str(tmp_path / "results"), cwd=tmp_path).stdout
    assert "same output as the host reference" in shown
    assert "lavapipe: a CPU implementation; figures are not GPU figures" in shown and "(Vulkan)" in shown
    assert "GPU: 31/31 layers on llvmpipe" in shown  # the offloaded cases say so (SmolLM2: 30 blocks + the output layer)
    argv = json.loads(next((tmp_path / "results" / "runs" / run_id).rglob("rep0.argv.json")).read_text())
    assert argv[argv.index("env") + 1] == "GGML_VK_VISIBLE_DEVICES=0"  # the device choice is in the stored argv (inside the probe's)
    wrong, _ = _run(tmp_path, WRONG, "wrong.toml")
    (bad,) = wrong["quality"]
    assert bad["differs"] is True and bad["kld_mean"] > 1, bad
    speed = {r["metric"]: r["mean"] for r in payload["summary"] if r["metric"] in ("prefill_tps", "decode_tps")}
    print(f"host-vulkan on lavapipe: {speed}, KLD {quality['kld_mean']}, top-1 {quality['top1_agreement']}%, "
          f"{time.monotonic() - started:.0f} s")
