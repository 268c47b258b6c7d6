"""The emulated phone's filesystem and how its shell commands run.

Choice: each command runs in its own private mount namespace (`unshare --mount`), chrooted
into a temporary folder that *is* the phone's root, as the shell user (uid 2000, like adbd's
`shell`). Inside, the host's /usr (so `sh`, `sha256sum`, `cat` exist; /bin and /lib are
symlinks into it as on merged-/usr Debian), /dev and /proc are bind-mounted; /proc/cpuinfo
and /proc/meminfo are covered by the recorded phone's; /sys, /system and /data/local/tmp are
plain folders of the temporary root. So every device path is real for every program, with no
path rewriting: a pushed aarch64 llama-bench opens `/data/local/tmp/edgebench/models/...`
exactly as on a phone, qemu-user runs it through binfmt_misc (its `F` flag opens the
interpreter at registration, so it works inside the chroot), and hostile arguments reach
the program untouched because nothing edits the command line. The mounts vanish with the
namespace when the command ends; the host's own / is never written.

Rewriting paths instead would have had to edit argv strings (breaking the quoting tests it
is meant to check) and could not cover paths a binary opens by itself.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

SHELL_UID = 2000  # AID_SHELL
PHONE_PATH = "/system/bin:/usr/bin:/bin"
_HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

_REPLAY = "/system/etc/edgebench-replay"

_GETPROP = f"""#!/bin/sh
# getprop replaying a recorded `getprop` listing ([key]: [value] lines).
if [ $# -eq 0 ]; then exec cat {_REPLAY}/getprop.txt; fi
sed -n "s/^\\[$1\\]: \\[\\(.*\\)\\]$/\\1/p" {_REPLAY}/getprop.txt
"""

_DUMPSYS = f"""#!/bin/sh
# dumpsys replaying recorded service dumps; unknown services answer as on a phone.
if [ -f "{_REPLAY}/dumpsys_$1.txt" ]; then exec cat "{_REPLAY}/dumpsys_$1.txt"; fi
echo "Can't find service: $1" >&2
exit 0
"""

# Only what is executed must come from the host; everything else is the phone's own folder.
_HOST_BINDS = ("usr", "dev", "proc")
_HOST_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


class PhoneRoot:
    """A phone's root folder built from a recorded profile (see tests/data/android/README.md)."""

    def __init__(self, root: Path, profile: Path) -> None:
        self.root = root
        self.profile = profile
        self.denied: set[str] = set()
        root.chmod(0o755)  # temp folders are 0700: the shell user must be able to enter its /
        for name in ("system/bin", "system/etc/edgebench-replay", "sys/class", "data/local/tmp", "tmp", "etc", *_HOST_BINDS):
            (root / name).mkdir(parents=True, exist_ok=True)
        for link, target in _HOST_LINKS.items():
            if not (root / link).is_symlink():
                (root / link).symlink_to(target)
        for name, text in (("getprop", _GETPROP), ("dumpsys", _DUMPSYS)):
            script = root / "system/bin" / name
            script.write_text(text)
            script.chmod(0o755)
        replay = root / _REPLAY.lstrip("/")
        for name in ("getprop.txt", "cpuinfo.txt", "meminfo.txt"):
            shutil.copyfile(profile / name, replay / name)
        for dump in profile.glob("dumpsys_*.txt"):
            shutil.copyfile(dump, replay / dump.name)
        power = root / "sys/class/power_supply"
        shutil.rmtree(power, ignore_errors=True)
        shutil.copytree(profile / "power_supply", power)
        # adbd's shell user owns /data/local/tmp (and can write /tmp) on a real phone.
        os.chown(root / "data/local/tmp", SHELL_UID, SHELL_UID)
        (root / "tmp").chmod(0o1777)

    def host_path(self, device_path: str) -> Path:
        """Where a device path lives in the temporary root (for the sync service)."""
        relative = os.path.normpath("/" + device_path).lstrip("/")  # normpath keeps "/.." out
        return self.root / relative if relative and relative != "." else self.root

    def deny(self, device_path: str) -> None:
        """Make a file unreadable to the shell user, as an SELinux denial does (EACCES)."""
        path = self.host_path(device_path)
        path.chmod(0)
        self.denied.add(str(Path("/", device_path)))

    def write(self, device_path: str, text: str) -> None:
        """Change a replayed value (e.g. plug the charger in: power_supply status, current)."""
        path = self.host_path(device_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def popen(self, command: str, *, stdin: int | None = subprocess.PIPE) -> subprocess.Popen[bytes]:
        """Start `sh -c command` on the phone: own session, so the whole group can be killed."""
        root = shlex.quote(str(self.root))
        mount, chroot = (shlex.quote(shutil.which(tool, path=_HOST_PATH) or tool) for tool in ("mount", "chroot"))
        setup = [f"{mount} --rbind /{name} {root}/{name}" for name in _HOST_BINDS]
        setup += [f"{mount} --bind {root}{_REPLAY}/{name}.txt {root}/proc/{name}" for name in ("cpuinfo", "meminfo")]
        script = " && ".join(setup) + f' && exec {chroot} --userspec={SHELL_UID}:{SHELL_UID} {root} /bin/sh -c "$0"'
        env = {"PATH": PHONE_PATH, "HOME": "/data/local/tmp", "TMPDIR": "/data/local/tmp", "ANDROID_DATA": "/data", "LANG": "C.UTF-8"}
        return subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "cd / && " + command],
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
        )
