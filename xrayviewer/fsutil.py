"""Atomic file writes: a crash or a full disk never leaves a half-written file behind."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# ".<target name>.<writer's pid>.<random>.tmp": the pid tells a leftover of a killed writer
# (safe to remove) from a file another live process is writing right now.
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its file
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Remove, under ``folder``, the temp files of :func:`atomic_write_bytes` whose writer is
    no longer running (a killed run leaves them; its targets were never replaced by them).
    Files of live writers are left alone. Returns how many were removed."""
    removed = 0
    root = Path(folder)
    if not root.is_dir():
        return 0
    for path in root.rglob(".*.tmp"):
        m = _TEMP_NAME.match(path.name)
        if not m or not path.is_file() or _alive(int(m.group(1))):
            continue
        try:
            path.unlink()
            removed += 1
        except OSError as exc:
            log.warning("could not remove the stale temp file %s: %s", path, exc)
    return removed
