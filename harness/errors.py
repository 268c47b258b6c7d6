"""User-facing errors: every one carries a message a person can act on.

The CLI prints these without a traceback and exits non-zero; anything else is a bug.
"""

from __future__ import annotations

import signal


class EdgebenchError(Exception):
    """Base of every error the tool reports to the user as a plain message."""


class ConfigError(EdgebenchError):
    """A suite or inventory file is malformed: names the file, the key and what was expected."""

    def __init__(self, file: str, key: str, expected: str, got: object | None = None) -> None:
        self.file, self.key, self.expected, self.got = file, key, expected, got
        detail = f" (got {got!r})" if got is not None else ""
        super().__init__(f"{file}: key '{key}': expected {expected}{detail}")


class ModelError(EdgebenchError):
    """A model file is missing, not GGUF, truncated, or fails its pinned checksum."""


class BuildError(EdgebenchError):
    """A runtime build failed; the message holds the log tail and the full log's path."""


class StoreError(EdgebenchError):
    """The results store cannot be opened, is newer than this code, or lacks a run."""


class StoreGone(StoreError):
    """The results store stopped taking writes after it opened: its database went away or the
    disk under its folder filled or failed. Like a lost device it stops the run (exit 3, not 2:
    the input was fine), and what finished is stored, so `--resume` finishes the rest once the
    store is back. The message names the store (password masked) and the cause, in one line."""


class Interrupted(KeyboardInterrupt):
    """A stop request by signal (SIGTERM from systemd, cron or CI; SIGHUP from a closed
    terminal), raised in the main thread so it unwinds exactly like Ctrl-C: the device's
    processes are killed and the run is left resumable. The message is the signal's name."""

    def describe(self) -> str:
        return f"interrupted by {self}"


class LeaseLost(Interrupted):
    """The device's lease could not be renewed (the store stopped answering, or another holder
    took it over), raised in the main thread like a stop signal: past the lease's staleness
    another run may take the device, so this one stops first rather than share it. The
    message says why, whole."""

    def describe(self) -> str:
        return str(self)


def exited(code: int) -> str:
    """"exited with 1", or "was killed by SIGSEGV (exit -11)": a negative status is the signal
    that ended the program (subprocess's convention and the drivers'), which means a crash or
    a kill, not a refusal, so the message names it."""
    if code >= 0:
        return f"exited with {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name} (exit {code})"
