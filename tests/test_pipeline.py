"""End to end with the bundled models on real images: the one Analyzer behind GUI, CLI and batch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xrayviewer.imaging import load_image
from xrayviewer.inference.analyzer import OPACITY_MISSING, Analyzer, model_names
from xrayviewer.inference.control import AnalysisCancelled, CancelToken
from xrayviewer.inference.result import CSV_COLUMNS


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    a = Analyzer(device="cpu")
    a.load()
    return a


def _val(data_dir: Path, cls: str, n: int) -> list[Path]:
    return sorted((data_dir / "covid-qu-ex" / "Val" / cls / "images").glob("*.png"))[:n]


def test_covid_films_get_opacity_and_covid_leaning_scores(analyzer: Analyzer, data_dir: Path) -> None:
    results = analyzer.analyze_batch([load_image(p) for p in _val(data_dir, "COVID-19", 8)])
    accepted = [r for r in results if r.gate.accepted]
    assert len(accepted) >= 7
    covid = np.mean([r.probabilities["COVID-19"] for r in accepted])
    normal = np.mean([r.probabilities["Normal"] for r in accepted])
    assert covid > normal
    for r in accepted:
        assert abs(sum(r.probabilities.values()) - 1) < 1e-5
        assert r.lung_labels.shape == r.image_shape and set(np.unique(r.lung_labels)) <= {0, 1, 2}
        assert r.heatmap is not None and r.heatmap.shape == r.image_shape
        assert float(r.heatmap[r.lung_labels == 0].max(initial=0)) == 0.0  # masked to the lungs
    assert analyzer.has_opacity  # bundled: its absence must fail here, not skip
    assert analyzer.has_tuberculosis  # bundled too (tests/test_tuberculosis.py scores real Shenzhen films)
    with_opacity = [r for r in accepted if r.involvement_pct["total"] > 0 and r.regions]
    assert len(with_opacity) >= len(accepted) // 2
    for r in accepted:
        assert OPACITY_MISSING not in r.warnings
        assert all(0 <= v <= 100 for v in r.involvement_pct.values())
        assert r.opacity_mask.shape == r.image_shape and not np.any(r.opacity_mask & (r.lung_labels == 0))
        assert r.severity in ("none", "mild", "moderate", "severe")


def test_without_the_opacity_model_results_say_so(tmp_path: Path, data_dir: Path) -> None:
    """An installation without the (optional) opacity model still analyses, and every result
    says the opacity figures are missing instead of showing none."""
    import shutil

    from xrayviewer.modellayer import modelstore
    from xrayviewer.modellayer.opacity import MODEL_NAME as OPACITY

    for name in model_names():
        if name != OPACITY:
            shutil.copytree(modelstore.models_dir() / name, tmp_path / name)
    a = Analyzer(models_root=tmp_path)
    assert not a.has_opacity
    results = a.analyze_batch([load_image(p) for p in _val(data_dir, "COVID-19", 3)])
    accepted = [r for r in results if r.gate.accepted]
    assert accepted
    assert all(OPACITY_MISSING in r.warnings and r.involvement_pct is None for r in accepted)


def test_normal_films_are_mostly_clean(analyzer: Analyzer, data_dir: Path) -> None:
    results = analyzer.analyze_batch([load_image(p) for p in _val(data_dir, "Normal", 8)])
    accepted = [r for r in results if r.gate.accepted]
    assert len(accepted) >= 7
    assert np.mean([r.probabilities["Normal"] for r in accepted]) > np.mean([r.probabilities["COVID-19"] for r in accepted])
    clean = [r for r in accepted if r.involvement_pct["total"] < 5]
    assert len(clean) >= len(accepted) - 2


def test_ct_slice_and_non_xray_are_refused(analyzer: Analyzer, dicom_dir: Path, data_dir: Path) -> None:
    ct = analyzer.analyze(load_image(dicom_dir / "non_cxr" / "CT_small.dcm"))
    assert ct.status == "refused" and "CT" in ct.gate.reason and ct.probabilities is None
    rng = np.random.default_rng(0)
    noise = load_image(_png((rng.random((300, 300)) * 255).astype(np.uint8)))
    assert analyzer.analyze(noise).status == "refused"


def _png(arr: np.ndarray) -> bytes:
    from factories import png_bytes

    return png_bytes(arr)


def test_real_dicom_chest_film_is_analysed(analyzer: Analyzer, dicom_dir: Path) -> None:
    r = analyzer.analyze(load_image(dicom_dir / "966_fixed.dcm"))
    assert r.image_shape == (2128, 2000)
    if r.gate.accepted:
        assert r.lung_labels.shape == (2128, 2000)
        right = np.argwhere(r.lung_labels == 1)[:, 1].mean()
        left = np.argwhere(r.lung_labels == 2)[:, 1].mean()
        assert right < left  # patient's right lung on the image's left


def test_progress_and_cancel(analyzer: Analyzer, data_dir: Path) -> None:
    img = load_image(_val(data_dir, "Normal", 1)[0])
    stages: list[str] = []
    analyzer.analyze(img, progress=lambda s, f: stages.append(s))
    assert stages[0] != stages[-1] and stages[-1] == "Done"
    token = CancelToken()

    def cancel_on_lungs(stage: str, frac: float) -> None:
        if stage == "Segmenting lungs":
            token.cancel()

    with pytest.raises(AnalysisCancelled):
        analyzer.analyze(img, progress=cancel_on_lungs, cancel=token)


def test_cli_analyze_folder_schema_errors_and_resume(tmp_path: Path, data_dir: Path, dicom_dir: Path) -> None:
    import shutil

    src = tmp_path / "in"
    src.mkdir()
    for p in _val(data_dir, "COVID-19", 3) + _val(data_dir, "Normal", 3):
        shutil.copy(p, src / f"{p.parent.parent.name}_{p.name}")
    shutil.copy(dicom_dir / "non_cxr" / "CT_small.dcm", src / "ct.dcm")
    shutil.copy(dicom_dir / "broken" / "RG2_JPLY.dcm", src / "broken.dcm")
    out = tmp_path / "out"
    env_cmd = [sys.executable, "-m", "xrayviewer", "analyze", str(src), "--out", str(out), "--device", "cpu",
               "--format", "csv,json,png"]
    proc = subprocess.run(env_cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr  # the broken file failed, the rest went on
    assert "Traceback" not in proc.stderr
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert list(rows[0].keys()) == list(CSV_COLUMNS)
    by = {Path(r["path"]).name: r for r in rows}
    assert by["broken.dcm"]["status"] == "error" and by["ct.dcm"]["status"] == "refused"
    assert sum(r["status"] == "ok" for r in rows) >= 5
    ok = next(r for r in rows if r["status"] == "ok")
    assert abs(float(ok["prob_normal"]) + float(ok["prob_covid19"]) + float(ok["prob_other_pneumonia"]) - 1) < 1e-3
    from PIL import Image

    name = Path(ok["path"]).name
    lung = np.asarray(Image.open(out / f"{name}.lung.png"))
    assert lung.shape == (256, 256) and set(np.unique(lung)) <= {0, 1, 2}
    jl = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(jl) == len(rows) and all("timings" in j for j in jl if j["status"] != "error")
    # Resume: a second run does nothing new and keeps one row per input.
    proc2 = subprocess.run(env_cmd, capture_output=True, text=True, timeout=600)
    assert "already done" in proc2.stdout
    assert len(list(csv.DictReader(open(out / "results.csv")))) == len(rows)


def test_file_and_pixel_hashes_agree_in_csv_pdf_name_and_pdf_text(analyzer: Analyzer, tmp_path: Path,
                                                                  dicom_dir: Path) -> None:
    """A real chest film whose file name carries the patient's name (RG1_J2KI.dcm belongs to
    CompressedSamples^RG1): the CSV row, the PDF's file name and its "Input:" line all name it
    after the *file's* SHA-256; input_sha256 and file_sha256 hold that hash, pixel_sha256 the
    decoded pixels' (never one in the place of the other)."""
    import hashlib
    import shutil as sh

    from xrayviewer.batch import BatchOptions, BatchRunner, discover

    if sh.which("pdftotext") is None:
        pytest.fail("pdftotext (poppler-utils) is needed to check PDF text")
    src = tmp_path / "in"
    src.mkdir()
    film = Path(sh.copy(dicom_dir / "RG1_J2KI.dcm", src / "CompressedSamples_RG1_chest.dcm"))
    file_hash = hashlib.sha256(film.read_bytes()).hexdigest()
    pixel_hash = load_image(film).pixel_sha256()
    assert pixel_hash != file_hash
    out = tmp_path / "out"
    BatchRunner(analyzer, BatchOptions(out, formats=("csv", "pdf"))).run(discover([src]).items)
    (row,) = list(csv.DictReader(open(out / "results.csv")))
    name = f"image-{file_hash[:12]}"
    assert row["status"] == "ok" and row["path"] == name
    assert row["input_sha256"] == row["file_sha256"] == file_hash and row["pixel_sha256"] == pixel_hash
    assert [p.name for p in out.glob("*.report.pdf")] == [f"{name}.report.pdf"]
    text = subprocess.run(["pdftotext", str(out / f"{name}.report.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert f"Input: {name}" in text and "CompressedSamples" not in text
    assert f"Input SHA-256 (file): {file_hash}" in text and f"Pixel SHA-256: {pixel_hash}" in text


def test_reports_from_real_analyses(analyzer: Analyzer, tmp_path: Path, data_dir: Path, dicom_dir: Path) -> None:
    """PDF (page + batch summary), overlay PNG and DICOM SEG/SC from real analyses of real images."""
    import shutil as sh

    import pydicom

    from xrayviewer.reporting.dicom_out import write_secondary_capture, write_segmentation
    from xrayviewer.reporting.pdf import ReportItem, write_pdf_report

    if sh.which("pdftotext") is None:
        pytest.fail("pdftotext (poppler-utils) is needed to check PDF text")
    paths = [_val(data_dir, "COVID-19", 1)[0], dicom_dir / "966_fixed.dcm", dicom_dir / "non_cxr" / "CT_small.dcm"]
    images = [load_image(p) for p in paths]
    results = analyzer.analyze_batch(images)
    items = [ReportItem(r, i, str(p)) for r, i, p in zip(results, images, paths)]
    pdf = write_pdf_report(items, tmp_path / "report.pdf")
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert text.count("Chest X-ray analysis report") == 4  # summary + one page per image
    # Each image's report fits on one page, also with opacity regions to list.
    single = write_pdf_report(items[:1], tmp_path / "single.pdf")
    info = subprocess.run(["pdfinfo", str(single)], capture_output=True, text=True, check=True).stdout
    import re

    assert results[0].regions and re.search(r"^Pages:\s+1$", info, re.M), info
    assert "Batch summary - 3 image(s)" in text and "NOT SCORED" in text and "modality CT" in text
    covid = results[0].probabilities["COVID-19"]
    assert f"{covid * 100:.1f} %" in text
    for m in results[0].models:
        assert m.sha256 in text
    assert "not a medical device" in text
    assert "Tuberculosis (separate score)" in text and "Tuberculosis heatmap" in text
    seg = pydicom.dcmread(write_segmentation(results[1], images[1], tmp_path / "a.seg.dcm"))
    assert seg.pixel_array.shape[-2:] == (2128, 2000)
    sc = pydicom.dcmread(write_secondary_capture(results[1], images[1], tmp_path / "a.sc.dcm"))
    assert sc.StudyInstanceUID == seg.StudyInstanceUID and sc.PatientName.family_name == "ANONYMOUS"


def test_gui_shows_the_pipelines_values(analyzer: Analyzer, display: str, tmp_path: Path, dicom_dir: Path,
                                         data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Open a real DICOM and a PNG in the window, analyse with the bundled models, compare widgets to results."""
    from test_gui import pump

    from xrayviewer.gui.app import ViewerApp, create_root
    from xrayviewer.settings import Settings

    monkeypatch.setenv("XRAYVIEWER_HISTORY_DB", str(tmp_path / "h.db"))
    root = create_root()
    app = ViewerApp(root, Settings(accepted_notice_version=1), settings_path=tmp_path / "s.json", analyzer=analyzer,
                    load_models=False)
    app.session.models_state = "ready"
    for path in (dicom_dir / "966_fixed.dcm", _val(data_dir, "COVID-19", 1)[0]):
        app.open_path(path)
        pump(app, lambda: app.session.path == path and app.session.image is not None)
        app.analyze()
        pump(app, lambda: app.session.analysis is not None, timeout=120)
        r = app.session.analysis
        if r.gate.accepted:
            shown = app.results.percentages()
            for cls, p in r.probabilities.items():
                assert shown[cls] == f"{p * 100:.1f}%"
            assert shown["Tuberculosis"] == f"{r.prob_tuberculosis * 100:.1f}%"
            assert "Tuberculosis" in app.results.text()
            view = app.render_current()
            assert view.ndim == 3  # lung outlines blended in
            app._next_heatmap()  # Shift+G: the tuberculosis heatmap, layer on
            assert app.session.heatmap_source == "tuberculosis" and app.heatmap_var.get() == "Tuberculosis"
            assert not np.array_equal(app.render_current(), view)
            app._next_heatmap()
        else:
            assert r.gate.reason in app.results.text()
        out = app.session.pdf_export(tmp_path / f"{path.name}.pdf")()
        assert out.is_file() and app.session.get_history().get(app.session.history_id).report_paths == (str(out),)
    assert app.callback_errors == []
    app.quit()
