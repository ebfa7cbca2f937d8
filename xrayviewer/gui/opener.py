"""Open a file or folder with the platform's own program (file manager, spreadsheet, ...).

Windows: ``os.startfile``; macOS: ``open``; elsewhere: ``xdg-open`` (freedesktop.org's
opener, package xdg-utils). The program is started and left to run; a missing opener or
one that cannot start is an :class:`OpenerError` whose message says what to install and
where the file is, so the user can still find it by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import XRayViewerError


class OpenerError(XRayViewerError):
    """No program could be started to open the file or folder."""


def opener_command(path: Path, platform: str | None = None) -> list[str] | None:
    """The command that opens ``path`` here, or None where there is none (or on Windows,
    which uses ``os.startfile`` instead of a command)."""
    platform = platform or sys.platform
    if platform.startswith("win"):
        return None
    if platform == "darwin":
        return ["open", str(path)]
    exe = shutil.which("xdg-open")
    return [exe, str(path)] if exe else None


def _child_env() -> dict[str, str]:
    """The environment for the opener: a PyInstaller build points LD_LIBRARY_PATH at its own
    libraries, which would break the programs xdg-open starts; give them the user's one."""
    env = dict(os.environ)
    if getattr(sys, "frozen", False) and "LD_LIBRARY_PATH" in env:
        orig = env.pop("LD_LIBRARY_PATH_ORIG", None)
        if orig is None:
            del env["LD_LIBRARY_PATH"]
        else:
            env["LD_LIBRARY_PATH"] = orig
    return env


def open_with_system(path: Path) -> None:
    """Open ``path`` with the platform's default program; raise :class:`OpenerError` if none."""
    path = Path(path)
    if not path.exists():
        raise OpenerError("does not exist (yet): run the batch first", path)
    if sys.platform.startswith("win"):
        try:
            os.startfile(str(path))  # type: ignore[attr-defined]  # Windows only
        except OSError as exc:
            raise OpenerError(f"Windows has no program to open it ({exc.strerror or exc})", path) from exc
        return
    cmd = opener_command(path)
    if cmd is None:
        raise OpenerError("no program to open files was found (xrayviewer uses xdg-open: install xdg-utils); "
                          "open it from your file manager", path)
    try:
        subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=_child_env(), start_new_session=True)
    except OSError as exc:
        raise OpenerError(f"could not start {cmd[0]} ({exc.strerror or exc})", path) from exc
