"""Shared fixtures. The real data live in ../shared/data (never copied into the repo).

``XRAYVIEWER_DATA_DIR`` overrides the location. Without the data, data-driven tests are
skipped on a developer machine but fail under CI (``CI`` set), so CI can never go green by
silently skipping them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import unavailable

REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_data_dir() -> Path | None:
    env = os.environ.get("XRAYVIEWER_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared" / "data", REPO_ROOT / ".." / "shared" / "data"]
    for c in candidates:
        if (c / "DATA.md").is_file():
            return c.resolve()
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Root of the shared chest X-ray data bundle (DATA.md describes it)."""
    found = _find_data_dir()
    if found is None:
        msg = "shared data not found (set XRAYVIEWER_DATA_DIR or put it at ../shared/data)"
        unavailable(msg)
    return found


@pytest.fixture(scope="session")
def dicom_dir(data_dir: Path) -> Path:
    return data_dir / "dicom"


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    """One X display for the whole session: a Tk interpreter whose display vanished would
    make Xlib exit the process, so the server must outlive every Tk root."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        if os.environ.get("CI"):
            pytest.fail("Xvfb is not installed (CI must install it: apt-get install xvfb)")
        pytest.skip("no display and no Xvfb")
    num = 90 + os.getpid() % 100
    proc = subprocess.Popen([xvfb, f":{num}", "-screen", "0", "1400x900x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    os.environ["DISPLAY"] = f":{num}"
    try:
        yield f":{num}"
    finally:
        del os.environ["DISPLAY"]
        proc.terminate()
        proc.wait(timeout=10)
