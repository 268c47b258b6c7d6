"""One benchmark at a time per device: a lock file per device name.

Two runs on one phone or board would measure each other, so a second lab run or a manual
run against a busy device waits (when asked to) or stops with who holds it and since when.
The kernel releases a `flock` when its holder dies, so a crashed run never leaves it locked.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from harness.errors import EdgebenchError
from harness.paths import cache_dir


class DeviceBusy(EdgebenchError):
    """Another edgebench process is benchmarking this device."""


def lock_path(device: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device)
    return cache_dir() / "locks" / f"{safe}.lock"


@contextmanager
def device_lock(device: str, *, wait: bool = False, poll_s: float = 1.0) -> Iterator[None]:
    path = lock_path(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    raise DeviceBusy(f"device {device!r} is busy: {_holder(path)}; wait for it or pass --wait") from None
                time.sleep(poll_s)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "held by another process"
    return f"held by pid {info.get('pid')} since {info.get('since')} ({info.get('command', '?')})"
