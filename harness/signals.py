"""SIGTERM and SIGHUP stop a run the way Ctrl-C does.

Python dies at once on SIGTERM and SIGHUP, so without this a `kill`, `systemctl stop` or a
closed terminal would leave llama-bench and the probe running on the device and the run
marked `running` for ever. Inside `stop_requests()` either signal raises `Interrupted` (a
KeyboardInterrupt) in the main thread, so every driver kills what it started and the runner
marks the run interrupted. A background job of a non-interactive shell ignores SIGINT, so
SIGTERM is what cron, systemd and CI send. Only the first signal raises: a second one arriving
while the first unwinds (killing processes on the device) would cut that cleanup short.

A thread can stop the run the same way (`raiser`): the lease heartbeat, when the lease can no
longer be renewed. It sends SIGUSR2 to the main thread, so a main thread blocked waiting for
the benchmark wakes at once, as it does for SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from harness.errors import Interrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
WAKE = signal.SIGUSR2  # a thread's stop request to the main thread (Celery leaves it alone)


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



@dataclass
class _Block:
    """One `raiser` block: its thread's first stop request, and whether it was raised yet."""

    main: bool
    pending: Interrupted | None = None
    raised: bool = False
    closed: bool = False


_lock = threading.Lock()  # never taken by the handler: it runs in the main thread, which may hold it
_current: _Block | None = None  # the main thread's innermost open block


def _on_wake(signum: int, frame: FrameType | None) -> None:
    block = _current
    if block is not None and block.pending is not None and not block.raised and not block.closed:
        block.raised = True
        raise block.pending


@contextmanager
def raiser() -> Iterator[Callable[[Interrupted], None]]:
    """For the block, a function another thread calls to raise an `Interrupted` in the thread
    that entered it (the first call only). In the main thread the exception lands at once,
    even in a blocking wait, through WAKE; no signal reaches another thread, so there it is
    raised when the block ends, unless the block raised already (as it is in the main thread
    for a request that raced the block's end).

    The WAKE handler stays installed afterwards: a request racing the block's end then meets
    a handler that ignores it, never the default action, which would kill the process."""
    global _current
    block = _Block(main=threading.current_thread() is threading.main_thread())
    main = threading.main_thread().ident

    def request(exc: Interrupted) -> None:
        with _lock:
            if block.pending is not None or block.closed:
                return
            block.pending = exc
        if block.main:
            signal.pthread_kill(main, WAKE)

    outer = _current
    if block.main:
        if signal.getsignal(WAKE) is not _on_wake:
            signal.signal(WAKE, _on_wake)
        _current = block
    try:
        yield request
    finally:
        with _lock:
            block.closed = True
        if block.main:
            _current = outer
    if block.pending is not None and not block.raised:
        raise block.pending
