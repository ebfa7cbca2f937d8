"""Shared fixtures. The real data live in ../shared/data (never copied into the repo).

``XRAYVIEWER_DATA_DIR`` overrides the location. Without the data, data-driven tests are
skipped on a developer machine but fail under CI (``CI`` set), so CI can never go green by
silently skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return found


@pytest.fixture(scope="session")
def dicom_dir(data_dir: Path) -> Path:
    return data_dir / "dicom"
