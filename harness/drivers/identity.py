"""A device's stable identity: what it is known by on every host and in every inventory.

Inventory names are aliases (every host's PC is "local"); history, regressions and compare
key on this instead. The order is the most stable source first: a PC's DMI product and
serial (survives a reinstall), a board's device-tree serial, then `/etc/machine-id`. The
same files are read locally and over SSH, so one machine reached both ways is one device.
Where none can be read the hostname stands in, labelled as such.
"""

from __future__ import annotations

from collections.abc import Mapping

# section name -> file; `IDENTITY_SCRIPT` prints them in the `==> name <==` section format.
IDENTITY_FILES = {
    "product_name": "/sys/class/dmi/id/product_name",
    "product_serial": "/sys/class/dmi/id/product_serial",
    "board_serial": "/proc/device-tree/serial-number",
    "machine_id": "/etc/machine-id",
}
IDENTITY_SCRIPT = "".join(
    f"printf '\\n==> %s <==\\n' {name}; tr -d '\\000' <{path} 2>/dev/null\n" for name, path in IDENTITY_FILES.items()
) + "exit 0\n"

# What firmware writes where a vendor left the serial unset: not an identity.
_PLACEHOLDERS = {"", "0", "none", "n/a", "default string", "to be filled by o.e.m.", "system serial number",
                 "not specified", "not applicable", "0123456789", "00000000", "0000000000000000"}


def _real(value: str | None) -> str | None:
    value = (value or "").strip("\x00 \n\t")
    return value if value.lower() not in _PLACEHOLDERS else None


def identity_from(sections: Mapping[str, str], hostname: str) -> str:
    """The identity from the contents of `IDENTITY_FILES` (pure; tests feed recorded ones)."""
    serial = _real(sections.get("product_serial"))
    if serial:
        return f"dmi:{_real(sections.get('product_name')) or '?'}:{serial}"
    for key, kind in (("board_serial", "board"), ("machine_id", "machine-id")):
        found = _real(sections.get(key))
        if found:
            return f"{kind}:{found}"
    return f"hostname:{hostname}"


def adb_identity(serialno: str | None, adb_serial: str) -> str:
    """A phone by `ro.serialno`; the serial adb lists (which may be host:port) only without it."""
    return f"android:{_real(serialno) or adb_serial}"
