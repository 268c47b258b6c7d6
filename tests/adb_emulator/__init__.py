"""An emulated Android phone for the real adb server (see device.py), and pytest fixtures for it.

tests/conftest.py loads the fixtures (`adb_server`, `make_phone`, `phone`) as a plugin.
"""

from tests.adb_emulator.device import EmulatedPhone

__all__ = ["EmulatedPhone"]
