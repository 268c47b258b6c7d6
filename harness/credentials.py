"""A credential given to edgebench (the password of a store or broker URL, a token in its
query) stays where it was given: this is the one place that hides it in text and keeps it out
of the environment of the processes edgebench starts.

Masking trusts no URL parser: SQLAlchemy reads `u:p@ss@host` as password `p` at host
`ss@host`, and a URL a parser rejects must still be masked. So the rule is textual: the user
information runs to the last `@`, of which only the user name (before the first `:`) is kept
when the text has a `scheme://`, nothing otherwise; and every `key=value` whose key names a
password, secret, token or key has its value hidden, in a query or a libpq conninfo string.
Hiding too much costs a less helpful message; hiding too little leaks the password.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

STORE_ENV = "EDGEBENCH_STORE"
BROKER_ENV = "EDGEBENCH_BROKER"
# What the lab and the CLI read credentials from; libpq reads PGPASSWORD. No benchmark needs them.
SECRET_ENV = frozenset({STORE_ENV, BROKER_ENV, "PGPASSWORD"})

HIDDEN = "***"
_SECRET_VALUE = re.compile(r"(?i)((?:^|[?&;\s])[\w.-]*(?:pass|pwd|secret|token|key)[\w.-]*\s*=\s*)('(?:[^'\\]|\\.)*'|[^&;\s#]*)")


def mask_url(text: str) -> str:
    """`text` (a URL, well-formed or not, or a conninfo string) with every credential hidden."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    userinfo, at, after = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        kept = f"{user}:{HIDDEN}" if sep and colon else user if sep else HIDDEN
        rest = f"{kept}@{after}"
    return _SECRET_VALUE.sub(lambda m: m.group(1) + HIDDEN, f"{scheme}{sep}{rest}")


def child_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a process edgebench starts: `base` (default: ours) plus `extra`,
    without the variables that carry credentials."""
    merged = {**(os.environ if base is None else base), **(extra or {})}
    return {k: v for k, v in merged.items() if k not in SECRET_ENV}
