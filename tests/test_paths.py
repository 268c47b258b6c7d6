"""Where state goes: a test session's own folder, never the user's; builds stay shared."""

from __future__ import annotations

from pathlib import Path

from harness.drivers.local import LocalDriver
from harness.paths import cache_dir, state_dir


def test_the_session_keeps_its_own_state_and_shares_the_builds(own_state: Path, monkeypatch, tmp_path) -> None:
    shared = tmp_path / "shared" / "cache"
    monkeypatch.setenv("EDGEBENCH_CACHE", str(shared))
    assert state_dir() == own_state and cache_dir() == shared
    assert Path(LocalDriver().workdir).is_relative_to(own_state)  # the local device's folder: probe files, its runs
    monkeypatch.delenv("EDGEBENCH_STATE")
    assert state_dir() == cache_dir()  # a user's edgebench keeps its state beside the caches, as before
    assert Path(LocalDriver().workdir) == shared / "device-local"
