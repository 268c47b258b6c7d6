"""SIGTERM and SIGHUP stop a run the way Ctrl-C does.

Python dies at once on SIGTERM and SIGHUP, so without this a `kill`, `systemctl stop` or a
closed terminal would leave llama-bench and the probe running on the device and the run
marked `running` for ever. Inside `stop_requests()` either signal raises `Interrupted` (a
KeyboardInterrupt) in the main thread, so every driver kills what it started and the runner
marks the run interrupted. A background job of a non-interactive shell ignores SIGINT, so
SIGTERM is what cron, systemd and CI send. Only the first signal raises: a second one arriving
while the first unwinds (killing processes on the device) would cut that cleanup short.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from harness.errors import Interrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def stop_requests() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `Interrupted` for the duration. Python runs handlers in the
    main thread only, so called from another thread (an embedding program) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
