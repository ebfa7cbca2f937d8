"""Append-only JSONL journal: the crash-safe record of what a batch has finished.

One line per finished image, flushed and fsynced before the next image starts. A crash can
at worst leave a partial last line, which is ignored on reading (and fenced off with a
newline before the next append), so every finished image is counted exactly once.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        bad = 0
        with open(self.path, "rb") as fh:
            for raw in fh:
                try:
                    entry = json.loads(raw)
                    self.entries[entry["key"]] = entry  # later lines win (a re-run of an error)
                except (ValueError, KeyError, TypeError):
                    bad += 1
        if bad:
            log.warning("%s: ignored %d incomplete journal line(s) from an interrupted run", self.path, bad)

    def is_done(self, key: str, sha256: str, models: str) -> bool:
        """True when this input (same content) was analysed by the same models, not an error,
        and the files it wrote are still there (a user who deleted an overlay to get it again
        must not be told it was "resumed")."""
        e = self.entries.get(key)
        if not (e and e.get("sha256") == sha256 and e.get("models") == models
                and e.get("record", {}).get("status") in ("ok", "refused")):
            return False
        missing = [o for o in e["record"].get("outputs", []) if not (self.path.parent / o).is_file()]
        if missing:
            log.info("%s: outputs missing (%s), analysing again", key, ", ".join(missing))
        return not missing

    def append(self, key: str, sha256: str, models: str, record: dict[str, Any]) -> None:
        entry = {"key": key, "sha256": sha256, "models": models, "record": record}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(entry, default=str).encode("utf-8") + b"\n"
        with open(self.path, "ab") as fh:
            if fh.tell() > 0 and not self._ends_with_newline():
                fh.write(b"\n")  # fence off a partial line left by a crash
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.entries[key] = entry

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"
