"""Names of other libraries that edgebench leans on although they are not documented API.

Each library is pinned in requirements.lock, but `pip install edgebench` takes any version in
pyproject.toml's range and scripts/upgrade-lock.sh tries the newest: when a release renames one
of these, this file fails first and says what to change, instead of a device test failing with
an AttributeError deep in a transport.
"""

from __future__ import annotations

import pytest


def test_the_adbutils_connection_methods_the_adb_driver_uses_exist():
    """The ADB driver speaks shell v2 itself (exit codes, separate stderr) over adbutils' raw
    transport: `AdbDevice.open_transport`, then `send_command`, `check_okay`, `read_exact` and
    `close` on the connection (harness/drivers/adb.py: AdbDriver.spawn, AdbProcess)."""
    import adbutils

    device_methods = [name for name in ("open_transport",) if not callable(getattr(adbutils.AdbDevice, name, None))]
    connection_methods = [name for name in ("send_command", "check_okay", "read_exact", "close")
                          if not callable(getattr(adbutils.AdbConnection, name, None))]
    assert not device_methods and not connection_methods, (
        f"adbutils {adbutils.__version__} lacks AdbDevice.{device_methods} / AdbConnection.{connection_methods}: "
        "update harness/drivers/adb.py (spawn, AdbProcess) to its new transport API")


def test_the_gguf_reader_still_names_the_versions_it_reads():
    """gguf has no public "which file versions can you read"; the model check refuses an
    unreadable GGUF version up front with `gguf.gguf_reader.READER_SUPPORTED_VERSIONS`
    (harness/runtimes/models.py), so a rename must be caught here."""
    import gguf
    import gguf.gguf_reader

    versions = getattr(gguf.gguf_reader, "READER_SUPPORTED_VERSIONS", None)
    if versions is None:
        pytest.fail("gguf.gguf_reader.READER_SUPPORTED_VERSIONS is gone: update the version check in harness/runtimes/models.py")
    assert gguf.GGUF_VERSION in versions, f"gguf reads {versions}, not its own GGUF_VERSION {gguf.GGUF_VERSION}"
