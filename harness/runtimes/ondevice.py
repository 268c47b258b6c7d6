"""Build the runtime's programs on the device itself (target "device"), e.g. with CUDA on a Jetson.

The pinned llama.cpp source (or a local tree) is packed once into a tarball, pushed (sha256
skipped when the device has it), unpacked, configured with the inventory's CMake flags and
built there. The native probe is compiled there too, with the board's `cc` (static where the
board has a static libc), since every device samples through it. The finished runtime is
`<workdir>/runtimes/<key16>/` with `bin/llama-bench`, `bin/llama-perplexity`, `bin/edgebench-probe`
and `manifest.json`, key = hash(source, "device", flags, programs, probe source) as for host builds; a later
run finds it by key and checks the binaries' sha256 against the manifest, so nothing builds twice.
Parallel jobs are bounded by the board's free memory (a llama.cpp CUDA compile job takes
1-2 GB; an 8 GB Orin Nano running out of memory mid-build is the failure this avoids).
"""

from __future__ import annotations

import json
import tarfile
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Sequence

from harness.drivers.base import Driver
from harness.errors import BuildError
from harness.paths import cache_dir
from harness.runtimes.build import BuildProgress, Manifest, _Reporter, final_flags, runtime_key
from harness.runtimes.native import PROBE_NAME, PROBE_SOURCE, compile_argvs, probe_sha256
from harness.runtimes.source import Source, directory_source, fetch_pinned_source, file_lock
from harness.runtimes.targets import Target

if TYPE_CHECKING:  # paramiko loads only when an SSH device is used
    from harness.drivers.ssh import SshDriver

TARGET = Target("device", "cmake on the device itself over SSH (flags from the inventory)", lambda _user: ())
MB_PER_JOB = 1536
# Not needed to build the programs, and most of the tree's size (vocab GGUFs, images).
_SKIP_DIRS = {".git", "models", "media", "docs", "gguf-py", "examples"}
_BUILD_TIMEOUT_S = 4 * 3600


@dataclass(frozen=True)
class DeviceRuntime:
    """A runtime that lives on the device: nothing to push, only its folder there."""

    remote_dir: str
    manifest: Manifest

    def binary(self, name: str = "llama-bench") -> str:
        return f"{self.remote_dir}/bin/{name}"


def build_jobs(cores: int, mem_available_mb: int, mb_per_job: int = MB_PER_JOB) -> int:
    """Parallel compile jobs: one per core, but no more than free memory allows (at least 1)."""
    return max(1, min(cores, mem_available_mb // mb_per_job))


def pack_source(src: Source) -> Path:
    """The tree as a tarball in the local cache (built once per source sha256)."""
    folder = cache_dir() / "device-sources"
    tarball = folder / f"{src.sha256[:16]}.tar.gz"
    with file_lock(folder / f"{src.sha256[:16]}.lock"):
        if not tarball.is_file():
            scratch = Path(tempfile.mkstemp(dir=folder, suffix=".partial")[1])
            with tarfile.open(scratch, "w:gz") as archive:
                archive.add(src.cmake_dir, arcname="src", filter=lambda info: None if PurePosixPath(info.name).parts[1:2] and PurePosixPath(info.name).parts[1] in _SKIP_DIRS else info)
            scratch.replace(tarball)
    return tarball


def build_on_device(
    driver: SshDriver,  # its processes stream their output line by line (SshProcess.lines)
    extra_flags: Sequence[str] = (),
    *,
    source: Path | None = None,
    force: bool = False,
    on_progress: Callable[[BuildProgress], None] | None = None,
) -> tuple[DeviceRuntime, bool]:
    """Returns (runtime on the device, from_cache)."""
    report = _Reporter(on_progress)
    src = directory_source(source) if source is not None else fetch_pinned_source(on_line=lambda line: report("download", line))
    flags = final_flags(TARGET, src, extra_flags)
    key = runtime_key(src.sha256, TARGET.name, flags, probe_sha256(), TARGET.programs)
    work = PurePosixPath(driver.workdir)
    remote = str(work / "runtimes" / key[:16])
    if not force and (cached := _cached(driver, remote, key)) is not None:
        report("done", f"cached runtime {driver.name}:{remote}")
        return cached, True
    tarball = pack_source(src)
    src_remote = str(work / "sources" / src.sha256[:16])
    report("download", f"pushing {tarball.name} to {driver.name}")
    driver.push(tarball, f"{src_remote}.tar.gz")
    _sh(driver, '[ -f "$0/.complete" ] || { rm -rf "$0" && mkdir -p "$0" && tar -xzf "$0.tar.gz" -C "$0" && touch "$0/.complete"; }', src_remote, timeout=1800)
    probe = driver.run(["sh", "-c", "grep MemAvailable /proc/meminfo; getconf _NPROCESSORS_ONLN"], timeout=60)
    numbers = [int(tok) for tok in probe.stdout.split() if tok.isdigit()]
    jobs = build_jobs(numbers[1] if len(numbers) > 1 else 1, numbers[0] // 1024 if numbers else MB_PER_JOB)
    build = str(work / "builds" / key[:16])
    started = time.monotonic()
    _stream(driver, ["cmake", "-S", f"{src_remote}/src", "-B", build, *flags], "configure", report)
    _stream(driver, ["cmake", "--build", build, "--target", *TARGET.programs, "-j", str(jobs)], "build", report)
    compiler = driver.run(["sh", "-c", "c++ --version 2>/dev/null | head -n 1"], timeout=60).stdout.strip() or "unknown"
    manifest = Manifest(
        key=key, target=TARGET.name, llama_cpp_commit=src.llama_cpp_commit, llama_cpp_python_version=src.llama_cpp_python_version,
        source_sha256=src.sha256, cmake_flags=flags, compiler=compiler, files={},
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), build_seconds=round(time.monotonic() - started, 3),
    )
    linking = _compile_probe(driver, f"{build}/bin/{PROBE_NAME}", str(work / "sources"))
    report("build", f"{PROBE_NAME}: {linking} binary, compiled on {driver.name}")
    runtime = _install(driver, build, remote, manifest)
    report("done", f"built runtime {driver.name}:{remote} with {jobs} job(s)")
    return runtime, False


def _cached(driver: Driver, remote: str, key: str) -> DeviceRuntime | None:
    done = driver.run(["cat", "--", f"{remote}/manifest.json"], timeout=60)
    if done.exit_code != 0:
        return None
    try:
        manifest = Manifest.from_json(json.loads(done.stdout))
    except (ValueError, KeyError, TypeError):
        return None
    if manifest.key != key or any(driver.sha256(f"{remote}/{rel}") != sha for rel, sha in manifest.files.items()):
        return None
    return DeviceRuntime(remote, manifest)


def _install(driver: Driver, build: str, remote: str, manifest: Manifest) -> DeviceRuntime:
    """Assemble `<remote>.partial` on the device (llama-bench, the probe), write the manifest,
    rename it into place."""
    staged = f"{remote}.partial"
    _sh(driver, 'rm -rf "$0" && mkdir -p "$0/bin"', staged)
    files: dict[str, str] = {}
    for name in (*TARGET.programs, PROBE_NAME):
        _sh(driver, 'cp -- "$1" "$0/bin/"', staged, f"{build}/bin/{name}")
        sha = driver.sha256(f"{staged}/bin/{name}")
        if sha is None:
            raise BuildError(f"{driver.name}: the build finished without producing bin/{name} in {build}")
        files[f"bin/{name}"] = sha
    manifest = replace(manifest, files=files)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "manifest.json"
        local.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        driver.push(local, f"{staged}/manifest.json")
    _sh(driver, 'rm -rf "$1" && mv -- "$0" "$1"', staged, remote)
    return DeviceRuntime(remote, manifest)


def _compile_probe(driver: Driver, dest: str, sources: str) -> str:
    """The probe's C source pushed (skipped by sha256) and compiled with the board's `cc`;
    returns the linking that worked."""
    source = f"{sources}/{PROBE_NAME}-{probe_sha256()[:16]}.c"
    driver.push(PROBE_SOURCE, source)
    errors = []
    for linking, argv in compile_argvs("cc", dest, source):
        done = driver.run(argv, timeout=300)
        if done.ok:
            return linking
        errors.append(f"{linking}: {done.stderr.strip()[-800:]}")
    raise BuildError(f"{driver.name}: {PROBE_NAME} did not compile with the board's cc:\n" + "\n".join(errors))


def _sh(driver: Driver, script: str, *args: str, timeout: float = 600) -> None:
    done = driver.run(["sh", "-c", script, *args], timeout=timeout)
    if not done.ok:
        raise BuildError(f"{driver.name}: `{script}` failed (exit {done.exit_code}): {done.stderr.strip()[-500:]}")


def _stream(driver: SshDriver, argv: list[str], stage: str, report: _Reporter) -> None:
    """Run one build step on the device, handing each output line to the progress callback."""
    report(stage, "$ " + " ".join(argv))
    process = driver.spawn(["sh", "-c", '"$@" 2>&1', "sh", *argv])
    tail: list[str] = []
    for line in process.lines():
        tail = (tail + [line])[-30:]
        report(stage, line)
    done = process.wait(_BUILD_TIMEOUT_S)
    if not done.ok:
        raise BuildError(f"{driver.name}: {stage} failed (exit {done.exit_code}); last lines:\n" + "\n".join(tail))
