"""`xrayviewer info` and `analyze`: per-file results, errors without stopping, exit codes, no PHI
by default, nothing of ours re-analysed, no library start-up noise on stderr."""

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


def test_colour_ultrasound_is_refused_not_failed(data_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A colour ultrasound DICOM among films: a refused row with the reason, no model run on
    it, exit status 0 (a failure would be 1)."""
    from test_batch import ThresholdAnalyzer

    import xrayviewer.inference.analyzer as analyzer_module

    seen: list[str] = []

    class Fake(ThresholdAnalyzer):
        def __init__(self, **kwargs):
            super().__init__()
            self.seen = seen

    monkeypatch.setattr(analyzer_module, "Analyzer", Fake)
    monkeypatch.setattr(analyzer_module, "require_models", lambda: [])
    monkeypatch.setenv("XRAYVIEWER_HISTORY_DB", str(tmp_path / "history.sqlite3"))
    folder = tmp_path / "films"
    _films(data_dir, folder, 1)
    (folder / "echo.dcm").write_bytes(make_dicom(np.zeros((32, 32, 3), np.uint8), photometric="YBR_FULL_422",
                                                 samples_per_pixel=3, modality="US"))
    code, text = _run(["analyze", str(folder), "--out", str(tmp_path / "out"), "-q", "--format", "csv,json"])
    assert code == 0 and "2 image(s): 1 analysed, 1 refused, 0 failed" in text
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    rows = {Path(r["path"]).name: r for r in map(json.loads, lines)}
    echo = rows["echo.dcm"]
    assert (echo["status"], echo["gate_code"]) == ("refused", "not_radiograph_colour")
    assert echo["reason"] == "Not a radiograph: colour ultrasound (photometric interpretation YBR_FULL_422)."
    assert len(seen) == 1 and not seen[0].endswith("echo.dcm")


def _quiet_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    for k in ("TF_CPP_MIN_LOG_LEVEL", "TF_CPP_MAX_VLOG_LEVEL", "DISPLAY"):
        env.pop(k, None)
    return env


def test_info_prints_only_our_line(dicom_dir: Path) -> None:
    """`xrayviewer info FILE 2>&1`: one line, ours (no library start-up lines)."""
    path = dicom_dir / "dx_image.dcm"
    proc = subprocess.run([sys.executable, "-m", "xrayviewer", "info", str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120, env=_quiet_env())
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [proc.stdout.strip()] and proc.stdout.startswith(f"{path}: DICOM, 211x169")


@pytest.mark.slow
def test_analyze_with_the_real_models_is_quiet_and_never_rescores_its_outputs(data_dir: Path,
                                                                            tmp_path: Path) -> None:
    """The bundled models, run as a user would, twice in place: stderr holds no TensorFlow or
    absl start-up lines (only our own warning, for an output named on the command line), and
    the second run scores nothing of ours."""
    folder = tmp_path / "films"
    films = _films(data_dir, folder, 2)
    cmd = [sys.executable, "-m", "xrayviewer", "analyze", "-r", "-q", "."]
    env = {**_quiet_env(), "XRAYVIEWER_HISTORY_DB": str(tmp_path / "history.sqlite3")}  # not the user's
    first = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    rows = (folder / "xrayviewer-results" / "results.csv").read_text()
    overlay = f"xrayviewer-results/{films[0].name}.overlay.png"
    second = subprocess.run([*cmd, overlay], cwd=folder, capture_output=True, text=True, timeout=300,
                            env=env)
    assert second.returncode == 0, second.stderr
    [line] = second.stderr.splitlines()
    assert line.startswith(f"WARNING xrayviewer: {overlay}: skipped: ") and "never analyses its own" in line
    ours = [p for p in (folder / "xrayviewer-results").rglob("*.png")]
    assert len(ours) >= 2 and "2 image(s):" in second.stdout and "2 already done" in second.stdout
    assert f"; {len(ours)} files skipped as xrayviewer's own outputs" in second.stdout
    assert (folder / "xrayviewer-results" / "results.csv").read_text() == rows


def test_tensorflow_log_level_is_set_unless_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from xrayviewer.cli import quiet_tensorflow

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    quiet_tensorflow(1)  # -v: TensorFlow speaks as it likes
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    quiet_tensorflow(0)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # the user's own choice wins
    quiet_tensorflow(0)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_startup_lines_written_to_fd2_are_dropped_and_the_rest_kept(capfd: pytest.CaptureFixture[str]) -> None:
    """What TensorFlow's C++ writes to file descriptor 2 while it is imported: absl lines below
    the level go, anything else (an error, our own output) comes back, in order."""
    import os

    from xrayviewer.inference.device import _stderr_filtered, filter_startup_noise

    noise = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
             b"I0000 00:00:1796070333.416538    3469 port.cc:153] oneDNN custom operations are on.\n"
             b"I0000 00:00:1796070333.448424    3469 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n"
             b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.\n"
             b"W0000 00:00:1796070333.5    3469 gpu_device.cc:2344] Cannot dlopen some GPU libraries.\n")
    kept = (b"E0000 00:00:1796070333.6    3469 cuda_dnn.cc:8579] Unable to register cuDNN factory\n"
            b"WARNING xrayviewer: our own warning\n")
    capfd.readouterr()
    lines = noise.splitlines(keepends=True)
    with _stderr_filtered(2):
        os.write(2, b"".join(lines[:2]))
        os.write(2, kept.splitlines(keepends=True)[0])  # e.g. written by TensorFlow meanwhile
        os.write(2, b"".join(lines[2:]))
        os.write(2, kept.splitlines(keepends=True)[1])  # e.g. our logging from another thread
    assert capfd.readouterr().err == "E0000 00:00:1796070333.6    3469 cuda_dnn.cc:8579] Unable to register cuDNN " \
                                     "factory\nWARNING xrayviewer: our own warning\n"
    data = noise + kept
    assert filter_startup_noise(data, 0) == data  # -v: everything
    assert filter_startup_noise(data, 1).count(b"\n") == 3  # only info lines and the preamble go
