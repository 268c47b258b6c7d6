"""Where edgebench keeps its caches, its state and its results.

Builds and extracted models are cached outside any clone (keyed by content hash) so a
second run, or a fresh clone on the same machine, skips them. State (device locks, measured
bandwidth, the local device's working folder) belongs to whoever runs edgebench: a test
session points `$EDGEBENCH_STATE` at a folder of its own, so a user's run and the tests never
hold each other's locks, while both share the content-addressed builds.

What edgebench keeps for one user is readable by that user only (folders 0700, files 0600):
the cache, the state, the SQLite store and the embedded broker. A folder of ours that is open
to others is closed again; one owned by someone else is left as it is (it was chosen for us).
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """`$EDGEBENCH_CACHE`, else `$XDG_CACHE_HOME/edgebench`, else `~/.cache/edgebench` (private)."""
    explicit = os.environ.get("EDGEBENCH_CACHE")
    if explicit:
        return private_dir(Path(explicit).expanduser())
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return private_dir(base / "edgebench")


def default_results_dir() -> Path:
    """`results/` in the current directory: the folder the README describes."""
    return Path(os.environ.get("EDGEBENCH_RESULTS", "results"))


def state_dir() -> Path:
    """`$EDGEBENCH_STATE`, else the cache folder: device locks, bandwidth figures, local workdir."""
    explicit = os.environ.get("EDGEBENCH_STATE")
    return private_dir(Path(explicit).expanduser()) if explicit else cache_dir()


def private_dir(path: Path) -> Path:
    """`path`, created (with its parents) readable by this user only."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _close(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """`path`, created empty if absent, readable by this user only. Created with that mode, not
    chmod-ed after, so there is no moment another user could open it."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    _close(path, 0o600)
    return path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A hidden temporary name beside `path` to write (or copy, or have a program write) the new
    file under; renamed over `path` when the block ends, removed when it raises. A crash, a full
    disk or a failed check never leaves half a file under the real name for a later run to trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Replace `path` with `data` whole or not at all (`replacing`), readable by this user only
    from its first byte: the temporary file is created 0600, never chmod-ed after."""
    with replacing(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _close(path: Path, mode: int) -> None:
    info = path.stat()
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(mode)
