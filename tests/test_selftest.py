from __future__ import annotations

import io

import numpy as np

from xrayviewer.imaging import load_image
from xrayviewer.selftest import _phantom, codec_samples, run_self_test


def test_every_encodable_codec_round_trips() -> None:
    pix = _phantom()
    samples = codec_samples(pix)
    assert len(samples) == 5
    for name, data in samples.items():
        img = load_image(data)
        tol = 8 if "Baseline" in name else 0
        assert np.abs(img.values.astype(int) - pix.astype(int)).max() <= tol, name


def test_self_test_reports_missing_models(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XRAYVIEWER_MODELS_DIR", str(tmp_path))
    out = io.StringIO()
    assert run_self_test(out) == 1
    line = out.getvalue()
    assert line.count("\n") == 1 and "FAILED" in line and "card" in line


def test_self_test_checks_the_viewer_when_a_display_is_there(display: str) -> None:
    from xrayviewer.launcher import main

    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        assert main(["--self-test"]) == 0
    assert "viewer ok (Tk" in out.getvalue() and "image display" in out.getvalue()


def test_viewer_check_fails_without_pillows_tk_bridge(display: str) -> None:
    """What a bundle without Pillow's Tk bridge does (a black canvas): the check must fail.

    In a fresh process, because the bridge stays registered once a process has used it."""
    import os
    import subprocess
    import sys

    code = ("import sys; sys.modules['PIL._tkinter_finder'] = None; sys.modules['PIL._imagingtk'] = None\n"
            "from xrayviewer.gui.selftest import check_gui\n"
            "try:\n    check_gui()\nexcept Exception as exc:\n    print('failed:', type(exc).__name__)\n"
            "    raise SystemExit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DISPLAY": display})
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "failed: ImportError" in proc.stdout or "failed: ModuleNotFoundError" in proc.stdout
