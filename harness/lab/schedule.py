"""Nightly lab runs through cron: the exact line, with absolute paths, that runs the lab.

Cron starts with an empty environment and another working directory, so the line names the
edgebench executable, the inventory and the results folder absolutely and logs to a file.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from harness.errors import EdgebenchError
from harness.paths import default_results_dir


def edgebench_executable() -> str:
    """The `edgebench` beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "edgebench"
    found = str(beside) if beside.exists() else shutil.which("edgebench")
    if not found:
        raise EdgebenchError("cannot find the edgebench executable to schedule; install the package (scripts/setup.sh)")
    return found


def cron_line(inventory: Path, suite: str, at: str, tags: tuple[str, ...] = (), results: Path | None = None) -> str:
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", at)
    if not match:
        raise EdgebenchError(f"--at {at!r}: expected a time like 02:00")
    if not Path(inventory).is_file():
        raise EdgebenchError(f"inventory {inventory} does not exist")
    suite_arg = str(Path(suite).resolve()) if Path(suite).suffix == ".toml" else suite
    root = (results or default_results_dir()).resolve()
    argv = [edgebench_executable(), "lab", "run", "--inventory", str(Path(inventory).resolve()), "--suite", suite_arg, "--results", str(root)]
    for tag in tags:
        argv += ["--tags", tag]
    log = root / "lab" / "cron.log"
    hour, minute = int(match.group(1)), int(match.group(2))
    return f"{minute} {hour} * * * mkdir -p {shlex.quote(str(log.parent))} && {shlex.join(argv)} >> {shlex.quote(str(log))} 2>&1"


def install_cron(line: str) -> None:
    """Append the line to this user's crontab (once)."""
    crontab = shutil.which("crontab")
    if crontab is None:
        raise EdgebenchError("crontab is not installed (Debian: apt-get install cron); use --print and install the line yourself")
    current = subprocess.run([crontab, "-l"], capture_output=True, text=True)
    lines = current.stdout.splitlines() if current.returncode == 0 else []
    if line in lines:
        return
    done = subprocess.run([crontab, "-"], input="\n".join([*lines, line]) + "\n", capture_output=True, text=True)
    if done.returncode != 0:
        raise EdgebenchError(f"crontab refused the entry: {done.stderr.strip()}")
