"""A run's files in the store: compressed, content-addressed, written in the same transaction
as the process run they belong to, and written back out as files anywhere."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from sqlalchemy import Connection, select

from harness.errors import StoreError
from harness.results.schema import artifacts, blobs
from harness.results.sql import insert_missing, upsert


def save(conn: Connection, run_id: str, folder: Path, files: Iterable[Path]) -> int:
    """Store these files of the run folder (those not already stored as they are); how many."""
    stored = dict(conn.execute(select(artifacts.c.path, artifacts.c.sha256).where(artifacts.c.run_id == run_id)).all())
    saved = 0
    for file in sorted(files):
        data = file.read_bytes()
        sha, name = hashlib.sha256(data).hexdigest(), file.relative_to(folder).as_posix()
        if stored.get(name) == sha:
            continue
        if conn.execute(select(blobs.c.sha256).where(blobs.c.sha256 == sha)).first() is None:
            insert_missing(conn, blobs, ["sha256"], {"sha256": sha, "size": len(data), "data": zlib.compress(data, 6)})
        upsert(conn, artifacts, ["run_id", "path"], {"run_id": run_id, "path": name, "sha256": sha})
        saved += 1
    return saved


def load(conn: Connection, run_id: str) -> dict[str, bytes]:
    rows = conn.execute(
        select(artifacts.c.path, blobs.c.data).join_from(artifacts, blobs, blobs.c.sha256 == artifacts.c.sha256)
        .where(artifacts.c.run_id == run_id).order_by(artifacts.c.path)
    ).all()
    return {path: zlib.decompress(data) for path, data in rows}


def write_out(files: dict[str, bytes], dest: Path) -> list[Path]:
    """Write stored artifacts under `dest`, refusing a name that would land outside it."""
    written = []
    for name, data in files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise StoreError(f"artifact name {name!r} leaves the export folder; not written")
        path = dest.joinpath(*relative.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written
