"""Batch engine: discovery, per-file errors, atomic outputs, resume after interruption.

The engine is tested here with a small deterministic analyzer so that its own logic
(journal, resume, isolation, schema) is exercised quickly; end-to-end runs with the
bundled models are in test_pipeline.py.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from factories import make_dicom, png_bytes

from xrayviewer.batch import BatchOptions, BatchRunner, discover
from xrayviewer.batch.engine import JOURNAL_NAME
from xrayviewer.errors import XRayViewerError
from xrayviewer.inference.control import CancelToken
from xrayviewer.inference.result import CSV_COLUMNS, AnalysisResult, GateVerdict, ModelInfo, Region


class ThresholdAnalyzer:
    """Deterministic: 'lungs' = two halves, 'opacity' = pixels above 200; refuses tiny images."""

    def __init__(self, fail_on: str | None = None, cancel_after: int | None = None, token: CancelToken | None = None):
        self.calls = 0
        self.fail_on = fail_on
        self.cancel_after = cancel_after
        self.token = token
        self.seen: list[str] = []

    def models_key(self) -> str:
        return "threshold@1"

    def analyze_batch(self, images, *, cancel=None):
        out = []
        for img in images:
            if self.fail_on and self.fail_on in img.source:
                raise XRayViewerError("simulated model failure", img.source)
            self.calls += 1
            self.seen.append(img.source)
            h, w = img.shape
            hashes = (img.file_sha256, img.pixel_sha256())  # as the Analyzer carries them
            if min(h, w) < 16:
                out.append(AnalysisResult(img.source, *hashes, img.shape, GateVerdict(False, "not_xray", "too small"),
                                          (ModelInfo("threshold", "1", "0" * 64),), {"gate": 0.001}))
            else:
                labels = np.zeros(img.shape, np.uint8)
                labels[:, : w // 2] = 1
                labels[:, w // 2:] = 2
                mask = img.display > 200
                out.append(AnalysisResult(
                    img.source, *hashes, img.shape, GateVerdict(True, "ok", ""), (ModelInfo("threshold", "1", "0" * 64),),
                    {"gate": 0.001, "lungs": 0.002}, probabilities={"Normal": 0.5, "COVID-19": 0.3, "Other pneumonia": 0.2},
                    predicted_class="Normal", lung_labels=labels, opacity_mask=mask,
                    regions=(Region((0, 0, 4, 4), 16, "right", 0.9),), involvement_pct={"right": 1.0, "left": 2.0, "total": 1.5},
                    severity="mild"))
            if self.cancel_after is not None and self.calls >= self.cancel_after and self.token:
                self.token.cancel()
        return out


@pytest.fixture()
def folder(tmp_path: Path, data_dir: Path, dicom_dir: Path) -> Path:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    nih = sorted((data_dir / "nih" / "X-Ray Image DataSet" / "No_findings").glob("*.png"))[:4]
    for p in nih[:3]:
        shutil.copy(p, src / p.name)
    shutil.copy(nih[3], src / "sub" / nih[3].name)
    shutil.copy(dicom_dir / "dx_image.dcm", src / "sub" / "dx.dcm")
    shutil.copy(dicom_dir / "broken" / "RG2_JPLY.dcm", src / "broken.dcm")
    (src / "notes.txt").write_text("not an image")
    (src / ".hidden.png").write_bytes(png_bytes(np.zeros((20, 20), np.uint8)))
    (src / "tiny.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    return src


def test_discover(folder: Path) -> None:
    flat = discover([folder]).items
    assert [i.key for i in flat] == sorted([i.key for i in flat], key=str.lower)
    assert "notes.txt" not in [i.key for i in flat] and ".hidden.png" not in [i.key for i in flat]
    assert not any("/" in i.key for i in flat)
    deep = discover([folder], recursive=True).items
    assert {"sub/dx.dcm"} <= {i.key for i in deep}
    problems = discover([folder / "nope"]).problems
    assert problems and "not found" in problems[0][1]


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_folder_run_outputs_and_errors(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    items = discover([folder], recursive=True).items
    summary = BatchRunner(ThresholdAnalyzer(), BatchOptions(out, batch_size=3)).run(items)
    rows = _rows(out)
    assert list(rows[0].keys()) == list(CSV_COLUMNS)
    by_path = {Path(r["path"]).name: r for r in rows}
    assert by_path["broken.dcm"]["status"] == "error" and "could not be decoded" in by_path["broken.dcm"]["reason"]
    assert by_path["tiny.png"]["status"] == "refused" and by_path["tiny.png"]["reason"] == "too small"
    assert summary.errors == 1 and summary.refused == 1 and summary.ok == len(items) - 2
    # Outputs mirror the input tree, at full resolution.
    from PIL import Image

    lung = np.asarray(Image.open(out / "sub" / "dx.dcm.lung.png"))
    assert lung.shape == (169, 211) and set(np.unique(lung)) == {1, 2}
    overlay = np.asarray(Image.open(out / "sub" / "dx.dcm.overlay.png"))
    assert overlay.shape[1:] == (211, 3) and overlay.shape[0] > 169  # the image, then the legend band
    opac = np.asarray(Image.open(out / "sub" / "dx.dcm.opacity.png"))
    assert set(np.unique(opac)) <= {0, 255}
    jl = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(jl) == len(items) and all("timings" in r or r["status"] == "error" for r in jl)
    assert not list(out.rglob("*.tmp"))


def test_resume_after_interruption_loses_and_duplicates_nothing(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    items = discover([folder], recursive=True).items
    token = CancelToken()
    first = ThresholdAnalyzer(cancel_after=2, token=token)
    s1 = BatchRunner(first, BatchOptions(out, batch_size=1), cancel=token).run(items)
    assert s1.cancelled
    # Simulate a crash in the middle of a journal write: a partial last line.
    with open(out / JOURNAL_NAME, "ab") as fh:
        fh.write(b'{"key": "half-writ')
    second = ThresholdAnalyzer()
    s2 = BatchRunner(second, BatchOptions(out, batch_size=2)).run(items)
    assert not s2.cancelled
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == sorted(str(i.path) for i in items)  # each exactly once
    assert s2.skipped >= 2
    assert not set(first.seen) & set(second.seen)  # finished images were not redone
    # A third run does nothing new, and the error row is retried (the file may have been fixed).
    third = ThresholdAnalyzer()
    s3 = BatchRunner(third, BatchOptions(out)).run(items)
    assert third.calls == 0 and s3.skipped == len(items) - 1 and len(_rows(out)) == len(items)


def test_changed_input_is_reanalysed(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    items = discover([folder]).items
    BatchRunner(ThresholdAnalyzer(), BatchOptions(out)).run(items)
    target = next(i for i in items if i.path.suffix == ".png" and "tiny" not in i.key)
    target.path.write_bytes(make_dicom(np.full((32, 32), 100, np.uint16)))
    again = ThresholdAnalyzer()
    BatchRunner(again, BatchOptions(out)).run(items)
    assert again.seen == [str(target.path)]


def test_deleted_outputs_are_made_again_on_resume(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    items = discover([folder]).items
    BatchRunner(ThresholdAnalyzer(), BatchOptions(out)).run(items)
    target = next(i for i in items if i.path.suffix == ".png" and "tiny" not in i.key)
    overlay = out / (target.rel.name + ".overlay.png")
    assert overlay.is_file()
    overlay.unlink()  # the user deleted one picture to get it again
    again = ThresholdAnalyzer()
    summary = BatchRunner(again, BatchOptions(out)).run(items)
    assert again.seen == [str(target.path)] and overlay.is_file()
    assert summary.skipped == len(items) - 2  # all but the re-made one and the error row
    assert len(_rows(out)) == len(items)


def test_one_failing_image_does_not_sink_its_batch(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    items = discover([folder]).items
    victim = next(i for i in items if i.path.suffix == ".png" and "tiny" not in i.key)
    summary = BatchRunner(ThresholdAnalyzer(fail_on=victim.path.name), BatchOptions(out, batch_size=8)).run(items)
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert rows[victim.path.name]["status"] == "error" and "simulated model failure" in rows[victim.path.name]["reason"]
    assert summary.ok == len(items) - 3  # victim, broken.dcm, tiny.png


def test_disk_full_is_a_clear_error_and_leaves_no_partial_files(folder: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import xrayviewer.batch.engine as engine

    def full(path, data):  # what atomic_write_bytes does when the disk is full: raise, leave nothing
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine, "atomic_write_bytes", full)
    out = tmp_path / "out"
    items = discover([folder]).items
    summary = BatchRunner(ThresholdAnalyzer(), BatchOptions(out)).run(items)
    rows = _rows(out)
    written = [r for r in rows if r["status"] == "error" and "No space left on device" in r["reason"]]
    assert written and summary.ok == 0
    assert not list(out.rglob("*.png"))


def _pdf_text(path: Path) -> str:
    import subprocess

    if shutil.which("pdftotext") is None:
        pytest.fail("pdftotext (poppler-utils) is needed to check PDF text")
    return subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True).stdout


def test_phi_never_leaks_into_names_csv_or_pdf(tmp_path: Path) -> None:
    src = tmp_path / "in" / "Doe"
    src.mkdir(parents=True)
    pix = (np.arange(64 * 64).reshape(64, 64) % 4000).astype(np.uint16)
    (src / "Jane_PID-12345.dcm").write_bytes(make_dicom(pix, patient_name="Doe^Jane", patient_id="PID-12345"))
    out = tmp_path / "out"
    items = discover([tmp_path / "in"], recursive=True).items
    BatchRunner(ThresholdAnalyzer(), BatchOptions(out, formats=("csv", "json", "png", "pdf"))).run(items)
    secrets = ("Doe", "Jane", "PID-12345", "19700101", "ACC-999")
    names = [p.relative_to(out).as_posix() for p in out.rglob("*")]
    assert names and not any(s in n for n in names for s in secrets), names
    for f in ("results.csv", "results.jsonl"):
        text = (out / f).read_text()
        assert not any(s in text for s in secrets), f
    pdfs = sorted(out.rglob("*.pdf"))
    assert {p.name for p in pdfs} >= {"summary.pdf"} and len(pdfs) == 2
    for p in pdfs:
        text = _pdf_text(p)
        assert "Research software" in text
        assert not any(s in text for s in secrets)
        assert not any(s.encode() in p.read_bytes() for s in ("Doe^Jane", "PID-12345"))
    # Opt-in keeps the names.
    out2 = tmp_path / "out2"
    BatchRunner(ThresholdAnalyzer(), BatchOptions(out2, formats=("csv", "pdf"), phi=True)).run(items)
    assert "Jane_PID-12345.dcm" in (out2 / "results.csv").read_text()


def test_pdf_report_content(tmp_path: Path, dicom_dir: Path) -> None:
    from xrayviewer.imaging import load_image
    from xrayviewer.reporting.pdf import ReportItem, write_pdf_report

    img = load_image(dicom_dir / "dx_image.dcm")
    res = ThresholdAnalyzer().analyze_batch([img])[0]
    path = write_pdf_report([ReportItem(res, img, str(dicom_dir / "dx_image.dcm"))], tmp_path / "r.pdf")
    text = _pdf_text(path)
    for needle in ("Chest X-ray analysis report", "Scores (calibrated)", "COVID-19", "30.0 %", "Involvement",
                   "1.5 %", "Severity grade: mild", "threshold v1", f"Input SHA-256 (file): {img.file_sha256}",
                   f"Pixel SHA-256: {img.pixel_sha256()}", "dx_image.dcm", "not a medical device"):
        assert needle in text, needle
    assert "Dog" not in text and "123456" not in text
    raw = path.read_bytes()
    assert b"/Title" in raw and b"xrayviewer" in raw


def test_writers_mark_every_output(folder: Path, tmp_path: Path) -> None:
    import pydicom
    from PIL import Image

    from xrayviewer.provenance import DICOM_MANUFACTURER, PNG_MARKER_KEY, SOFTWARE, own_output_reason

    out = tmp_path / "out"
    items = discover([folder], recursive=True).items
    BatchRunner(ThresholdAnalyzer(), BatchOptions(out, formats=("csv", "json", "png", "pdf", "dicom"))).run(items)
    for name, kind in (("overlay", "overlay"), ("lung", "lung-labels"), ("opacity", "opacity-mask")):
        path = out / "sub" / f"dx.dcm.{name}.png"
        info = Image.open(path).info
        assert info[PNG_MARKER_KEY] == kind and info["Software"] == SOFTWARE
        renamed = shutil.copy(path, tmp_path / f"{name}.png")
        assert f"PNG marked '{kind}'" in own_output_reason(Path(renamed))
    for name in ("seg", "sc"):
        path = out / "sub" / f"dx.dcm.{name}.dcm"
        ds = pydicom.dcmread(path)
        assert ds.Manufacturer == DICOM_MANUFACTURER and ds.ManufacturerModelName == "xrayviewer"
        renamed = shutil.copy(path, tmp_path / f"{name}.dcm")
        assert "DICOM Manufacturer" in own_output_reason(Path(renamed))
    assert "by its name" in own_output_reason(out / "sub" / "dx.dcm.report.pdf")
    assert own_output_reason(folder / "sub" / "dx.dcm") is None


# --------------------------------------------------------------------------- own outputs
ALL_OUTPUTS = ("csv", "json", "png", "pdf", "dicom")


def _run_in_place(folder: Path, analyzer: ThresholdAnalyzer, out: Path):
    """What the viewer's batch dialog and `cd folder && xrayviewer analyze . -r` do."""
    found = discover([folder], recursive=True, out_dir=out)
    summary = BatchRunner(analyzer, BatchOptions(out, formats=ALL_OUTPUTS)).run(found.items)
    return found, summary


def test_rerun_with_the_output_folder_inside_the_input_adds_nothing(folder: Path) -> None:
    out = folder / "xrayviewer-results"
    first = ThresholdAnalyzer()
    found1, s1 = _run_in_place(folder, first, out)
    rows1 = _rows(out)
    assert found1.own_outputs == []
    written = {p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert {p.name for p in written} >= {"dx.dcm.overlay.png", "dx.dcm.lung.png", "dx.dcm.opacity.png",
                                         "dx.dcm.report.pdf", "dx.dcm.seg.dcm", "dx.dcm.sc.dcm"}

    second = ThresholdAnalyzer()
    found2, s2 = _run_in_place(folder, second, out)
    assert [i.key for i in found2.items] == [i.key for i in found1.items]
    assert second.seen == [] and s2.skipped == s1.ok + s1.refused  # only the error row is retried
    rows2 = _rows(out)
    assert len(rows2) == len(found1.items) and not any(str(out) in r["path"] for r in rows2)
    # The same rows; the error row (retried every run, by design) differs only in its time.
    assert [r for r in rows2 if r["status"] != "error"] == [r for r in rows1 if r["status"] != "error"]
    assert [{**r, "seconds": ""} for r in rows2] == [{**r, "seconds": ""} for r in rows1]
    # The summary can say how many files of ours were left out: every image written.
    images = {p for p in written if p.suffix in (".png", ".dcm")}
    assert {p for p, _ in found2.own_outputs} == images
    assert all("output folder" in why for _, why in found2.own_outputs)


def test_own_outputs_are_recognised_wherever_they_lie(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    BatchRunner(ThresholdAnalyzer(), BatchOptions(out, formats=ALL_OUTPUTS)).run(discover([folder], True).items)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "deep").mkdir(parents=True)
    real = folder / "sub" / "dx.dcm"
    shutil.copy(real, elsewhere / "film.dcm")  # the one real input
    # Moved and renamed: recognised by content (PNG tEXt marker, DICOM Manufacturer).
    shutil.copy(out / "sub" / "dx.dcm.overlay.png", elsewhere / "renamed-overlay.png")
    shutil.copy(out / "sub" / "dx.dcm.lung.png", elsewhere / "deep" / "labels.png")
    shutil.copy(out / "sub" / "dx.dcm.sc.dcm", elsewhere / "deep" / "capture.dcm")
    shutil.copy(out / "sub" / "dx.dcm.seg.dcm", elsewhere / "seg")
    # Named like ours (an output of an older version, without the marker): recognised by name.
    shutil.copy(real, elsewhere / "old.dcm.overlay.png")
    # A whole output folder of another run, nested anywhere: skipped as a folder.
    shutil.copytree(out, elsewhere / "deep" / "old-results")
    (elsewhere / "deep" / "old-results" / "unmarked.png").write_bytes(png_bytes(np.full((32, 32), 9, np.uint8)))

    found = discover([elsewhere], recursive=True)
    assert [i.key for i in found.items] == ["film.dcm"]
    why = {p.relative_to(elsewhere).as_posix(): w for p, w in found.own_outputs}
    assert "PNG marked 'overlay'" in why["renamed-overlay.png"]
    assert "PNG marked 'lung-labels'" in why["deep/labels.png"]
    assert "DICOM Manufacturer" in why["deep/capture.dcm"] and "DICOM Manufacturer" in why["seg"]
    assert "by its name" in why["old.dcm.overlay.png"]
    assert "output folder" in why["deep/old-results/unmarked.png"]
    # Given by name, or with the output folder itself as the input (`--out .`): still skipped,
    # file by file, while a real input in the same folder is kept.
    named = discover([elsewhere / "renamed-overlay.png", elsewhere / "film.dcm"])
    assert [i.key for i in named.items] == ["film.dcm"] and len(named.own_outputs) == 1
    ours = {p for p in out.rglob("*") if p.suffix in (".png", ".dcm")}
    shutil.copy(real, out / "input-in-out.dcm")
    inside = discover([out], recursive=True, out_dir=out)
    assert [i.key for i in inside.items] == ["input-in-out.dcm"] and {p for p, _ in inside.own_outputs} == ours
    # The viewer's folder list shows them (for looking at, not analysing).
    assert len(discover([elsewhere], skip_own_outputs=False).items) == 4


def test_real_inputs_are_never_taken_for_our_outputs(data_dir: Path, dicom_dir: Path) -> None:
    from xrayviewer.provenance import own_output_reason

    files = [p for p in dicom_dir.rglob("*.dcm")]
    files += sorted((data_dir / "nih" / "X-Ray Image DataSet" / "No_findings").glob("*.png"))[:20]
    files += sorted((data_dir / "covid-qu-ex").rglob("*.png"))[:20]
    assert len(files) > 40
    assert {p.name: own_output_reason(p) for p in files if own_output_reason(p)} == {}

