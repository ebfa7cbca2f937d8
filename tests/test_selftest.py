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
