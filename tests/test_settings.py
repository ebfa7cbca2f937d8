from __future__ import annotations

from pathlib import Path

import pytest

from xrayviewer.fsutil import atomic_write_text
from xrayviewer.settings import MAX_RECENT, Settings


def test_round_trip_and_recent_order(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    s = Settings()
    assert not s.notice_accepted
    s.accept_notice()
    for i in range(MAX_RECENT + 3):
        s.add_recent(tmp_path / f"f{i}.dcm")
    s.add_recent(tmp_path / "f5.dcm")
    s.save(path)
    t = Settings.load(path)
    assert t.notice_accepted
    assert len(t.recent_files) == MAX_RECENT and t.recent_files[0].endswith("f5.dcm")
    assert t.recent_files.count(str((tmp_path / "f5.dcm").resolve())) == 1


def test_corrupt_settings_set_aside_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text("{not json")
    s = Settings.load(path)
    assert s == Settings()
    aside = list(tmp_path.glob("settings.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{not json"


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    import os

    def boom(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
