"""A run's files in the store: compressed, content-addressed, written in the same transaction
as the process run they belong to, and written back out as files anywhere.

A shared store is written by every host of a lab (and `results push` copies blobs as they
are), so what comes back out is not trusted: a blob is inflated no further than the size
recorded beside it and must hash to its own address, and files are written out without
following a symbolic link that someone else put in the export folder.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import zlib
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

from sqlalchemy import Connection, select

from harness.errors import StoreError
from harness.store.schema import artifacts, blobs
from harness.store.sql import insert_missing, upsert

# The largest file a run keeps (raw output, telemetry CSVs, facts): a bound on what one blob
# may inflate to whatever size its row claims.
MAX_FILE_BYTES = 1 << 30


def save(conn: Connection, run_id: str, folder: Path, files: Iterable[Path]) -> int:
    """Store these files of the run folder (those not already stored as they are); how many."""
    stored = dict(conn.execute(select(artifacts.c.path, artifacts.c.sha256).where(artifacts.c.run_id == run_id)).all())
    saved = 0
    for file in sorted(files):
        data = file.read_bytes()
        sha, name = hashlib.sha256(data).hexdigest(), file.relative_to(folder).as_posix()
        if stored.get(name) == sha:
            continue
        put_blob(conn, data)
        upsert(conn, artifacts, ["run_id", "path"], {"run_id": run_id, "path": name, "sha256": sha})
        saved += 1
    return saved


def put_blob(conn: Connection, data: bytes) -> str:
    """Store these bytes once, by their sha256 (returned): a run's files, and a lab's corpus or
    reference logits, which reach the workers this way rather than as paths on the submitter."""
    sha = hashlib.sha256(data).hexdigest()
    if conn.execute(select(blobs.c.sha256).where(blobs.c.sha256 == sha)).first() is None:
        insert_missing(conn, blobs, ["sha256"], {"sha256": sha, "size": len(data), "data": zlib.compress(data, 6)})
    return sha


def get_blob(conn: Connection, sha: str) -> bytes | None:
    """The bytes stored under this sha256, checked as `inflate` checks them; None when absent."""
    row = conn.execute(select(blobs.c.size, blobs.c.data).where(blobs.c.sha256 == sha)).first()
    return None if row is None else inflate(f"blob {sha[:12]}", sha, row.size, row.data)


def load(conn: Connection, run_id: str, pattern: str = "*") -> dict[str, bytes]:
    """The run's stored files whose name matches `pattern` (fnmatch), by name."""
    a = artifacts.c
    names = [p for p in conn.execute(select(a.path).where(a.run_id == run_id)).scalars() if fnmatchcase(p, pattern)]
    if not names:
        return {}
    rows = conn.execute(
        select(a.path, blobs.c.sha256, blobs.c.size, blobs.c.data).join_from(artifacts, blobs, blobs.c.sha256 == a.sha256)
        .where(a.run_id == run_id, a.path.in_(names)).order_by(a.path)
    ).all()
    return {path: inflate(path, sha, size, data) for path, sha, size, data in rows}


def inflate(name: str, sha256: str, size: int, data: bytes) -> bytes:
    """The blob's bytes, refusing one that would inflate past its recorded size (or the bound),
    stops short of it, or is not the content its address names."""
    if not 0 <= size <= MAX_FILE_BYTES:
        raise StoreError(f"artifact {name!r}: recorded size {size} is beyond the {MAX_FILE_BYTES} bytes a run file may have; not read")
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, size + 1)  # one byte more than recorded tells "too big" without inflating the rest
    except zlib.error as exc:
        raise StoreError(f"artifact {name!r}: stored blob is not valid zlib data ({exc}); not read") from None
    if len(out) != size or not inflater.eof:
        raise StoreError(f"artifact {name!r}: stored blob does not inflate to its recorded {size} bytes; not read")
    if hashlib.sha256(out).hexdigest() != sha256:
        raise StoreError(f"artifact {name!r}: stored blob does not match its sha256 {sha256[:12]}; not read")
    return out


def write_out(files: dict[str, bytes], dest: Path) -> list[Path]:
    """Write stored artifacts under `dest`, refusing a name that would land outside it and a
    symbolic link on the way (`dest` itself is the user's to choose). Each file is written
    to a fresh name and renamed into place, so neither a link nor a hard link planted at
    its name is written through."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name, data in files.items():
            relative = PurePosixPath(name)
            if not relative.parts or relative.is_absolute() or ".." in relative.parts:
                raise StoreError(f"artifact name {name!r} leaves the export folder; not written")
            folder = _folder(root, relative.parts[:-1], dest, name)
            try:
                _replace(folder, relative.name, data, dest / relative)
            finally:
                os.close(folder)
            written.append(dest.joinpath(*relative.parts))
    finally:
        os.close(root)
    return written


def _folder(root: int, parts: tuple[str, ...], dest: Path, name: str) -> int:
    """An open descriptor of dest/parts, made as needed, never through a symbolic link."""
    fd = os.dup(root)
    for n, part in enumerate(parts):
        try:
            os.mkdir(part, 0o777, dir_fd=fd)
        except FileExistsError:
            pass
        try:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"artifact {name!r}: {dest.joinpath(*parts[:n + 1])} is not a folder edgebench made (a symbolic link?); not written") from exc
        os.close(fd)
        fd = child
    return fd


def _replace(folder: int, filename: str, data: bytes, shown: Path) -> None:
    try:
        if stat.S_ISLNK(os.stat(filename, dir_fd=folder, follow_symlinks=False).st_mode):
            raise StoreError(f"{shown} is a symbolic link; not written through (remove it, or export elsewhere)")
    except FileNotFoundError:
        pass
    partial = f".{filename}.{secrets.token_hex(4)}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(partial, filename, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        os.unlink(partial, dir_fd=folder)
        raise
