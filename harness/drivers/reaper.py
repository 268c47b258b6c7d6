"""Start a command as the child of this small process and report the child's wait4 rusage.

Why: Linux carries a process's RSS high-water mark across fork and exec (signal->maxrss), so
a benchmark forked straight from edgebench's Python process (200+ MB with pandas and
friends loaded) would report at least that as its own peak RSS. Run as `python -S` from a
file, importing only the standard library, this process stays ~9 MB, so the child's
ru_maxrss is the benchmark's own (never below that floor).

Usage: python -S reaper.py FD COMMAND [ARG...]. Writes `pid N` as soon as the child exists,
then one JSON line with its exit status and rusage when it ends, to file descriptor FD.
"""

import json
import os
import sys


def main() -> int:
    report = os.fdopen(int(sys.argv[1]), "w", buffering=1)
    os.set_inheritable(report.fileno(), False)
    argv = sys.argv[2:]
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, f"cannot start {argv[0]}: {exc}\n".encode())
        os._exit(127)
    report.write(f"pid {pid}\n")
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    report.write(json.dumps({"exit_code": code, "max_rss_kb": usage.ru_maxrss, "user_s": usage.ru_utime, "system_s": usage.ru_stime}) + "\n")
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
