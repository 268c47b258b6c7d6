"""Read many small sysfs/procfs files of any device in one command, through its driver.

Discovery (which sensors exist and can be read) and device state (governors, caps, memory)
both need dozens of tiny files. One `sh -c` with a fixed script reads them all: no Python on
the device, one round trip over adb/ssh, no fork per file (`read` is a shell builtin), and
each unreadable file comes back with why. The script is constant; the globs are its
arguments, so the driver's quoting (shlex.join) is all that protects them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.drivers.base import CommandFailed, Driver

# $1 = root prefix (tests point it at a fake tree); then one glob per argument. Each file gives
# `ok<TAB>path<TAB>line` per line, or one `err<TAB>path<TAB>reason`. Paths are shown without root.
_SCRIPT = r"""
root=$1; shift
for pattern in "$@"; do
  for f in "$root"$pattern; do
    [ -e "$f" ] || continue
    [ -d "$f" ] && continue
    shown=${f#"$root"}
    n=0
    { while IFS= read -r line || [ -n "$line" ]; do
        printf 'ok\t%s\t%s\n' "$shown" "$line"; n=$((n+1)); line=
      done; } < "$f" 2>/dev/null
    if [ "$n" = 0 ]; then
      if [ ! -r "$f" ]; then why="permission denied (needs root, or SELinux forbids it)"
      elif [ -s "$f" ]; then why="read failed (the driver or SELinux refused it)"
      else why="empty, or the read failed (the driver or SELinux refused it)"; fi
      printf 'err\t%s\t%s\n' "$shown" "$why"
    fi
  done
done
"""


@dataclass(frozen=True)
class FileRead:
    """One file: its lines, or the reason it could not be read."""

    path: str
    lines: tuple[str, ...] = ()
    error: str | None = None

    @property
    def value(self) -> str | None:
        """The first line, stripped (what a one-value sysfs attribute holds), or None."""
        return self.lines[0].strip() if self.lines and self.error is None else None


def read_argv(patterns: Sequence[str], root: str = "") -> list[str]:
    """The argv that reads every file matching `patterns` (absolute globs) under `root`."""
    return ["sh", "-c", _SCRIPT, "edgebench-read", root.rstrip("/"), *patterns]


def parse_reads(text: str) -> dict[str, FileRead]:
    """The script's output -> path -> FileRead, in the order the files were read."""
    lines: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    for raw in text.splitlines():
        kind, _, rest = raw.partition("\t")
        path, _, value = rest.partition("\t")
        if kind == "ok":
            lines.setdefault(path, []).append(value)
        elif kind == "err":
            errors[path] = value
    out = {p: FileRead(p, tuple(v)) for p, v in lines.items()}
    out.update({p: FileRead(p, error=f"{p}: {why}") for p, why in errors.items()})
    return out


def read_files(driver: Driver, patterns: Sequence[str], root: str = "", timeout: float = 60) -> dict[str, FileRead]:
    """Every readable file matching `patterns` on the device (see the module doc)."""
    argv = read_argv(patterns, root)
    done = driver.run(argv, timeout=timeout)
    if done.exit_code != 0 and not done.stdout:
        raise CommandFailed(argv, done.exit_code, done.stderr_tail(5))
    return parse_reads(done.stdout)
