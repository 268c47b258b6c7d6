"""Where edgebench keeps its caches, its state and its results.

Builds and extracted models are cached outside any clone (keyed by content hash) so a
second run, or a fresh clone on the same machine, skips them. State (device locks, measured
bandwidth, the local device's working folder) belongs to whoever runs edgebench: a test
session points `$EDGEBENCH_STATE` at a folder of its own, so a user's run and the tests never
hold each other's locks, while both share the content-addressed builds.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$EDGEBENCH_CACHE`, else `$XDG_CACHE_HOME/edgebench`, else `~/.cache/edgebench`."""
    explicit = os.environ.get("EDGEBENCH_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "edgebench"


def default_results_dir() -> Path:
    """`results/` in the current directory: the folder the README describes."""
    return Path(os.environ.get("EDGEBENCH_RESULTS", "results"))


def state_dir() -> Path:
    """`$EDGEBENCH_STATE`, else the cache folder: device locks, bandwidth figures, local workdir."""
    explicit = os.environ.get("EDGEBENCH_STATE")
    return Path(explicit).expanduser() if explicit else cache_dir()
