"""Per-user settings (platformdirs), stored as JSON and written atomically.

``XRAYVIEWER_CONFIG_DIR`` overrides the folder (tests, portable installs). A corrupt
settings file is renamed aside and reported, never silently lost.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .fsutil import atomic_write_text

log = logging.getLogger(__name__)

NOTICE_VERSION = 1
MAX_RECENT = 10


def config_dir() -> Path:
    env = os.environ.get("XRAYVIEWER_CONFIG_DIR")
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    return Path(user_config_dir("xrayviewer", appauthor=False))


@dataclass
class Settings:
    accepted_notice_version: int = 0
    recent_files: list[str] = field(default_factory=list)
    default_window: str = "file"  # file | auto | full
    device: str = "auto"  # auto | cpu | gpu
    output_dir: str = ""
    lung_colors: tuple[str, str] = ("#33c3ff", "#ffb020")  # right, left
    opacity_color: str = "#ff3b3b"
    overlay_alpha: float = 0.45
    theme: str = "dark"  # dark | light
    ui_scale: float = 0.0  # 0 = from the screen's DPI; else 1.0, 1.25, 1.5, 2.0
    show_identifying: bool = False  # patient/study text on the image corners

    # ---- persistence ------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        path = path or config_dir() / "settings.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ValueError("settings file is not a JSON object")
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            try:
                path.replace(aside)
                log.warning("settings file %s was unreadable (%s); kept as %s, using defaults", path, exc, aside)
            except OSError:
                log.warning("settings file %s was unreadable (%s); using defaults", path, exc)
            return cls()
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        if "lung_colors" in values:
            values["lung_colors"] = tuple(values["lung_colors"])
        try:
            return cls(**values)
        except TypeError:
            return cls()

    def save(self, path: Path | None = None) -> None:
        path = path or config_dir() / "settings.json"
        atomic_write_text(path, json.dumps(asdict(self), indent=2))

    # ---- helpers -----------------------------------------------------------------------
    @property
    def notice_accepted(self) -> bool:
        return self.accepted_notice_version >= NOTICE_VERSION

    def accept_notice(self) -> None:
        self.accepted_notice_version = NOTICE_VERSION

    def add_recent(self, path: str | os.PathLike) -> None:
        p = str(Path(path).resolve())
        self.recent_files = [p] + [r for r in self.recent_files if r != p]
        del self.recent_files[MAX_RECENT:]
