"""`xrayviewer info` and `analyze`: per-file results, errors without stopping, exit codes, no PHI
by default, nothing of ours re-analysed."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from factories import make_dicom

from xrayviewer.cli import main


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue()


def test_info_json_on_real_files_with_one_broken(dicom_dir: Path) -> None:
    files = [dicom_dir / "RG1_J2KI.dcm", dicom_dir / "broken" / "RG2_JPLY.dcm", dicom_dir / "dx_image.dcm"]
    code, text = _run(["info", "--json", *map(str, files)])
    lines = [json.loads(line) for line in text.splitlines()]
    assert code == 1
    assert [r["status"] for r in lines] == ["ok", "error", "ok"]
    assert lines[0]["transfer_syntax"] == "1.2.840.10008.1.2.4.91"
    assert lines[0]["window"]["center"] == 15000 and lines[0]["inverted"] is True
    assert lines[2]["pixel_spacing_mm"] == pytest.approx([1.2, 1.2012])
    assert lines[1]["error_type"] == "CorruptImageError"
    assert "Dog^AVeryGood" not in text and "123456" not in text


def test_info_phi_opt_in(dicom_dir: Path) -> None:
    code, text = _run(["info", "--json", "--phi", str(dicom_dir / "dx_image.dcm")])
    assert code == 0
    assert json.loads(text)["patient"]["patient_name"] == "Dog^AVeryGood"


def test_info_text_line_per_file(tmp_path: Path) -> None:
    a = tmp_path / "a.dcm"
    a.write_bytes(make_dicom(np.full((20, 30), 500, np.uint16), window=(400, 800)))
    b = tmp_path / "b.txt"
    b.write_text("not an image")
    code, text = _run(["info", str(a), str(b)])
    lines = text.splitlines()
    assert code == 1 and len(lines) == 2
    assert "30x20" in lines[0] and "C=400 W=800" in lines[0] and "spacing 0.15x0.15 mm" in lines[0]
    assert "Doe^Jane" not in text and "PID-12345" not in text
    assert lines[1].startswith(str(b)) and "ERROR" in lines[1]


def test_console_entry_points_run(dicom_dir: Path) -> None:
    """`python -m xrayviewer` works, exits 0 for good files, and never prints a traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "xrayviewer", "info", str(dicom_dir / "broken" / "RG2_JPLY.dcm"),
         str(dicom_dir / "RG2_JLSL.dcm")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "JPEG-LS" in proc.stdout
    ok = subprocess.run([sys.executable, "-m", "xrayviewer", "--version"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "xrayviewer" in ok.stdout


def _films(data_dir: Path, dest: Path, n: int, start: int = 0) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    src = sorted((data_dir / "nih" / "X-Ray Image DataSet" / "No_findings").glob("*.png"))[start:start + n]
    return [Path(shutil.copy(p, dest / p.name)) for p in src]


def test_analyze_twice_in_place_gives_the_same_rows_and_history(data_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`cd folder && xrayviewer analyze . -r` twice: the default output folder lies inside the
    input; the second run must analyse nothing of ours and leave the same rows."""
    from test_batch import ThresholdAnalyzer

    import xrayviewer.inference.analyzer as analyzer_module
    from xrayviewer.history import History

    analysers: list[ThresholdAnalyzer] = []

    class Fake(ThresholdAnalyzer):
        def __init__(self, **kwargs):
            super().__init__()
            analysers.append(self)

    monkeypatch.setattr(analyzer_module, "Analyzer", Fake)
    monkeypatch.setattr(analyzer_module, "require_models", lambda: [])
    monkeypatch.setenv("XRAYVIEWER_HISTORY_DB", str(tmp_path / "history.sqlite3"))
    folder = tmp_path / "films"
    films = _films(data_dir, folder, 5) + _films(data_dir, folder / "sub", 1, start=5)
    monkeypatch.chdir(folder)

    code, first = _run(["analyze", ".", "-r", "-q", "--format", "csv,json,png,pdf"])
    assert code == 0 and "6 image(s): 6 analysed" in first and "skipped" not in first
    rows1 = (folder / "xrayviewer-results" / "results.csv").read_text()
    code, second = _run(["analyze", ".", "-r", "-q", "--format", "csv,json,png,pdf"])
    assert code == 0 and "6 already done" in second
    assert "18 files skipped as xrayviewer's own outputs" in second  # 3 PNGs per film
    assert (folder / "xrayviewer-results" / "results.csv").read_text() == rows1
    assert len(rows1.splitlines()) == 1 + 6 and analysers[1].seen == []
    assert sorted(Path(s).name for s in analysers[0].seen) == sorted(f.name for f in films)
    entries = History().entries(limit=100)
    assert sorted(Path(e.input_path).name for e in entries) == sorted(f.name for f in films)
    # An output named on the command line is skipped with a warning, not analysed.
    capsys.readouterr()
    overlay = f"xrayviewer-results/sub/{films[-1].name}.overlay.png"
    code, third = _run(["analyze", overlay, "-q"])
    err = capsys.readouterr().err
    assert code == 1 and third == "" and len(analysers) == 2
    assert f"{overlay}: skipped: an xrayviewer output by its name (*.overlay.png)" in err
    assert f"no images found in {overlay} (1 file skipped as xrayviewer's own outputs)" in err
