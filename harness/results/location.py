"""Where the results store lives: a database URL, with the SQLite file under `--results` as
the default so a single machine needs no server.

Credentials come from the URL, `PGPASSFILE` or libpq's environment; they are never printed:
`masked` is the only form of a URL that goes into messages. Query parameters such as
`sslmode` pass through to the driver unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from harness.errors import StoreError

STORE_ENV = "EDGEBENCH_STORE"


def store_url(root: Path, url: str | None = None) -> URL:
    """`url`, else `$EDGEBENCH_STORE`, else `sqlite:///<root>/edgebench.sqlite`."""
    spec = url or os.environ.get(STORE_ENV)
    if not spec:
        return URL.create("sqlite", database=str(Path(root) / "edgebench.sqlite"))
    try:
        parsed = make_url(spec)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises ArgumentError and ValueError
        raise StoreError(f"bad store URL {masked_text(spec)}: {exc}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not the psycopg2 default
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(f"store URL {masked(parsed)}: only sqlite:/// and postgresql:// stores are supported")
    return parsed


def masked(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def masked_text(spec: str) -> str:
    """Mask the password of a URL given as text, even one that does not parse."""
    try:
        return masked(make_url(spec))
    except Exception:  # noqa: BLE001 - unparsable: hide everything between :// and @
        scheme, sep, rest = spec.partition("://")
        return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else spec
