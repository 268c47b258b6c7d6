"""Where the llama.cpp source comes from: the tree vendored in the pinned llama-cpp-python sdist.

Building from that tree (instead of a llama.cpp git checkout) makes the pushed llama-bench
and the in-process `pyllama` engine one version of llama.cpp. The sdist carries no git
metadata, so the llama.cpp commit is read from its CHANGELOG.md. The sdist is fetched once
with pip, checked against its pinned sha256 (PyPI files never change), extracted once into
`cache_dir()/sources/`, and marked; later builds and cache look-ups read only the marker.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.errors import BuildError
from harness.hashing import sha256_file
from harness.paths import cache_dir

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # must equal the pin in pyproject.toml
LLAMA_CPP_PYTHON_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

# llama.cpp's own name for a commit it cannot determine; used for trees without a CHANGELOG.
UNKNOWN = "unknown"

LineFn = Callable[[str], None]

_MARKER = ".edgebench-source.json"
_TAIL_LINES = 30
# Older entries name the repository by its previous owner.
_UPDATE_LINE = re.compile(
    r"update llama\.cpp to (?:ggml-org|ggerganov)/llama\.cpp@([0-9a-f]{7,40})\b", re.IGNORECASE
)


@dataclass(frozen=True)
class SdistPin:
    """A llama-cpp-python source release identified by content, not only by version."""

    version: str
    sha256: str

    @property
    def stem(self) -> str:
        """The sdist's file stem and top folder (PEP 625: the name normalised to underscores)."""
        return f"llama_cpp_python-{self.version}"

    @property
    def filename(self) -> str:
        return f"{self.stem}.tar.gz"


PINNED = SdistPin(LLAMA_CPP_PYTHON_VERSION, LLAMA_CPP_PYTHON_SDIST_SHA256)

# (pin, destination folder, line callback) -> path of the downloaded sdist
Downloader = Callable[[SdistPin, Path, LineFn], Path]


@dataclass(frozen=True)
class Source:
    """A llama.cpp tree ready for CMake, with what identifies it in a runtime manifest."""

    cmake_dir: Path
    sha256: str  # of the sdist tarball, or of the tree's files for a local folder
    llama_cpp_commit: str
    llama_cpp_python_version: str


def _ignore(_line: str) -> None:
    """Default line callback: callers that do not show progress."""


def parse_changelog_commit(text: str, version: str | None = None) -> str:
    """The 7-digit llama.cpp commit that llama-cpp-python's CHANGELOG says it vendors.

    With `version`, the search starts at that release's heading: a release that did not
    update llama.cpp vendors the commit named by the closest earlier release below it.
    """
    lines = text.splitlines()
    start = 0
    if version is not None:
        heading = re.compile(rf"##\s*\[?{re.escape(version)}\]?(\s|$)")
        start = next((i for i, line in enumerate(lines) if heading.match(line)), -1)
        if start < 0:
            raise BuildError(f"CHANGELOG.md has no heading for version {version}")
    for line in lines[start:]:
        match = _UPDATE_LINE.search(line)
        if match:
            return match.group(1)[:7]
    where = f" at or below version {version}" if version else ""
    raise BuildError(
        f"CHANGELOG.md names no llama.cpp commit{where} "
        "(expected a line like 'update llama.cpp to ggml-org/llama.cpp@<hex>')"
    )


def tree_sha256(root: Path) -> str:
    """Content hash of a folder (relative paths + file hashes), ignoring `.git`, so a local
    tree gets a cache key that changes exactly when one of its files does."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if ".git" in rel.parts or not path.is_file():
            continue
        digest.update(f"{rel.as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path`: a second process (or thread) waits here, then
    finds the first one's finished result instead of building over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stream(argv: list[str], on_line: LineFn, env: Mapping[str, str] | None = None) -> int:
    """Run `argv`, handing each line of its merged stdout/stderr to `on_line` as it comes;
    returns the exit status. The child is killed if we are interrupted."""
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env=None if env is None else dict(env),
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            on_line(line.rstrip("\n"))
        return process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def pip_download(pin: SdistPin, dest: Path, on_line: LineFn) -> Path:
    """Fetch the sdist with the running interpreter's pip, so its index settings apply."""
    argv = [
        sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
        f"llama-cpp-python=={pin.version}", "-d", str(dest),
    ]  # fmt: skip
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)

    def keep(line: str) -> None:
        tail.append(line)
        on_line(line)

    status = stream(argv, keep)
    tarball = dest / pin.filename
    if status != 0 or not tarball.is_file():
        raise BuildError(
            f"pip download of llama-cpp-python=={pin.version} failed (exit {status}):\n"
            + "\n".join(tail)
        )
    return tarball


def _sources_dir() -> Path:
    return cache_dir() / "sources"


def cached_pinned_source(pin: SdistPin = PINNED) -> Source | None:
    """The extracted pinned source if an earlier fetch finished, else None; touches no network."""
    folder = _sources_dir() / pin.stem
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("sdist_sha256") != pin.sha256:
        return None
    return Source(
        cmake_dir=folder / "vendor" / "llama.cpp",
        sha256=pin.sha256,
        llama_cpp_commit=marker["llama_cpp_commit"],
        llama_cpp_python_version=pin.version,
    )


def fetch_pinned_source(
    pin: SdistPin = PINNED, *, download: Downloader = pip_download, on_line: LineFn = _ignore
) -> Source:
    """The pinned source, downloading and extracting it only the first time (locked, so
    concurrent builds share one download)."""
    sources = _sources_dir()
    with file_lock(sources / f"{pin.stem}.lock"):
        cached = cached_pinned_source(pin)
        if cached is not None:
            return cached
        tarball = _verified_tarball(pin, sources, download, on_line)
        _extract(pin, tarball, sources, on_line)
        extracted = cached_pinned_source(pin)
    assert extracted is not None, "the marker was just written"
    return extracted


def pinned_sdist(pin: SdistPin = PINNED, *, download: Downloader = pip_download, on_line: LineFn = _ignore) -> Path:
    """The pinned sdist in the cache, verified: `scripts/setup.sh` installs llama-cpp-python's
    Python part from this file, so the package and the runtime's source are one download."""
    sources = _sources_dir()
    with file_lock(sources / f"{pin.stem}.lock"):
        return _verified_tarball(pin, sources, download, on_line)


def _verified_tarball(pin: SdistPin, sources: Path, download: Downloader, on_line: LineFn) -> Path:
    """The sdist in the cache, downloaded if absent or not the pinned bytes."""
    tarball = sources / pin.filename
    if tarball.is_file() and sha256_file(tarball) == pin.sha256:
        on_line(f"using cached {tarball}")
        return tarball
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=sources))
    try:
        fetched = download(pin, scratch, on_line)
        got = sha256_file(fetched)
        if got != pin.sha256:
            raise BuildError(
                f"{pin.filename}: sha256 {got} does not match the pinned {pin.sha256}; "
                "update LLAMA_CPP_PYTHON_SDIST_SHA256 together with LLAMA_CPP_PYTHON_VERSION"
            )
        os.replace(fetched, tarball)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return tarball


def _extract(pin: SdistPin, tarball: Path, sources: Path, on_line: LineFn) -> None:
    """Unpack beside the final folder, read the commit, write the marker, then rename: an
    interrupted extraction never looks finished."""
    on_line(f"extracting {tarball.name}")
    scratch = sources / f".{pin.stem}.partial"
    final = sources / pin.stem
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(scratch, filter="data")
        top = scratch / pin.stem
        if not (top / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
            raise BuildError(f"{tarball}: no vendor/llama.cpp/CMakeLists.txt inside {pin.stem}/")
        if not (top / "CHANGELOG.md").is_file():
            raise BuildError(f"{tarball}: no CHANGELOG.md to read the llama.cpp commit from")
        commit = parse_changelog_commit((top / "CHANGELOG.md").read_text(), pin.version)
        marker = {"sdist_sha256": pin.sha256, "llama_cpp_commit": commit}
        (top / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(top, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def directory_source(path: Path) -> Source:
    """A local tree: an extracted sdist (built from its `vendor/llama.cpp`) or any CMake
    project with a `llama-bench` target (tests use a tiny one). Identified by its file hashes."""
    root = Path(path).expanduser().resolve()
    vendored = root / "vendor" / "llama.cpp"
    cmake_dir = vendored if (vendored / "CMakeLists.txt").is_file() else root
    if not (cmake_dir / "CMakeLists.txt").is_file():
        raise BuildError(f"{root}: no CMakeLists.txt (expected a llama.cpp tree or an extracted sdist)")
    version = _pkg_info_version(root / "PKG-INFO")
    changelog = root / "CHANGELOG.md"
    commit = (
        parse_changelog_commit(changelog.read_text(), None if version == UNKNOWN else version)
        if changelog.is_file()
        else UNKNOWN
    )
    return Source(cmake_dir, tree_sha256(root), commit, version)


def _pkg_info_version(pkg_info: Path) -> str:
    """`Version:` from an sdist's PKG-INFO, or "unknown" for a tree that is not an sdist."""
    if not pkg_info.is_file():
        return UNKNOWN
    match = re.search(r"^Version:\s*(\S+)", pkg_info.read_text(errors="replace"), re.MULTILINE)
    return match.group(1) if match else UNKNOWN
