"""Where the results store lives: a database URL, with the SQLite file under `--results` as
the default so a single machine needs no server.

Credentials come from the URL, `PGPASSFILE` or libpq's environment; they are never printed:
`masked` is the only form of a URL that goes into messages, and a URL that does not parse is
refused with a message of ours, never the parser's (which may quote the URL). Query
parameters such as `sslmode` pass through to the driver unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from harness.credentials import STORE_ENV, mask_url
from harness.errors import StoreError

__all__ = ["STORE_ENV", "masked", "store_url"]

SHAPES = "expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=...] or sqlite:///PATH"


def store_url(root: Path, url: str | None = None) -> URL:
    """`url`, else `$EDGEBENCH_STORE`, else `sqlite:///<root>/edgebench.sqlite`."""
    spec = url or os.environ.get(STORE_ENV)
    if not spec:
        return URL.create("sqlite", database=str(Path(root) / "edgebench.sqlite"))
    try:
        parsed = make_url(spec)
    except Exception:  # noqa: BLE001 - sqlalchemy raises ArgumentError and ValueError, quoting the URL
        raise StoreError(f"bad store URL {mask_url(spec)}: {SHAPES}") from None
    if "@" in (parsed.host or ""):  # SQLAlchemy splits at the first '@', so part of the password would be the host
        raise StoreError(f"bad store URL {mask_url(spec)}: write an '@' in the user name or password as %40")
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not the psycopg2 default
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(f"store URL {masked(parsed)}: only sqlite:/// and postgresql:// stores are supported")
    return parsed


def masked(url: URL) -> str:
    return mask_url(url.render_as_string(hide_password=True))
