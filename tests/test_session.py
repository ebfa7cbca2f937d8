"""The viewer's Tk-free half: the session (image, window, view, rulers, analysis, rendering,
info rows, export names) and the one background-task mechanism, without a display."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
from factories import make_dicom
from test_batch import ThresholdAnalyzer

from xrayviewer.errors import XRayViewerError
from xrayviewer.gui.session import ViewerSession, list_images
from xrayviewer.gui.worker import BackgroundTasks
from xrayviewer.imaging import load_image, render_display
from xrayviewer.provenance import own_output_reason
from xrayviewer.rendering import render_view
from xrayviewer.settings import Settings

CANVAS = (640, 480)


def _session(tmp_path: Path, path: Path, **settings) -> ViewerSession:
    s = ViewerSession(Settings(**settings), settings_path=tmp_path / "settings.json")
    s.open(path, load_image(path), CANVAS)
    return s


def test_open_render_window_and_invert(tmp_path: Path, dicom_dir: Path) -> None:
    path = dicom_dir / "966_fixed.dcm"  # MONOCHROME1: the file's own inversion applies
    s = _session(tmp_path, path)
    img = s.image
    assert s.window == img.default_window and s.window.source == "file" and not s.user_invert
    assert s.state.canvas_size == CANVAS and str(path.resolve()) in s.settings.recent_files[0]
    assert (tmp_path / "settings.json").is_file()
    view = s.render()
    assert view.shape == CANVAS[::-1] and view.dtype == np.uint8
    # The one display pipeline, applied to the warped modality values.
    warped = render_view(np.asarray(img.values, np.float32), s.state)
    expected = render_display(warped, s.window, dataset=img.dataset, file_invert=True)
    np.testing.assert_array_equal(view[s.inside], expected[s.inside])
    assert (view[~s.inside] == 16).all()
    s.toggle_invert()
    np.testing.assert_array_equal(s.render()[s.inside], render_display(
        warped, s.window, dataset=img.dataset, file_invert=True, user_invert=True)[s.inside])
    assert s.next_window() and s.window.name == "Full range"
    assert s.select_window(img.windows[0].describe()) and s.window == img.windows[0]
    assert not s.select_window("no such window")
    s.zoom(2.0)
    s.rotate(1)
    assert s.state.rotation == 1
    assert s.reset_view() and s.window == img.default_window and not s.user_invert and s.state.rotation == 0
    s.close()
    assert s.render() is None and s.info_rows() == [] and not s.reset_view()


@pytest.mark.parametrize("choice,prefix", [("auto", "Auto"), ("full", "Full range"), ("file", "DICOM window")])
def test_default_window_follows_the_setting(tmp_path: Path, dicom_dir: Path, choice: str, prefix: str) -> None:
    s = _session(tmp_path, dicom_dir / "RG2_JPLL.dcm", default_window=choice)
    assert s.window.name.startswith(prefix) or (choice == "file" and s.window == s.image.default_window)


def test_window_drag_resize_and_pixel_readout(tmp_path: Path, dicom_dir: Path) -> None:
    s = _session(tmp_path, dicom_dir / "RG2_JPLL.dcm")
    c0, w0 = s.window_drag_start()
    s.drag_window((c0, w0), 100, 0)
    assert s.window.name == "Custom" and s.window.width > w0
    assert not s.resize(*CANVAS)  # unchanged size: nothing to redraw
    assert s.resize(600, 400) and s.state.canvas_size == (600, 400)
    assert abs(s.state.zoom - s.state.fit().zoom) < 1e-9  # a fitted view stays fitted
    text = s.pixel_text(300, 200)
    assert "value=" in text and "mm" in text
    assert s.pixel_text(-50, -50) == ""


def test_rulers_measure_in_mm_and_clicks_are_not_rulers(tmp_path: Path, dicom_dir: Path) -> None:
    s = _session(tmp_path, dicom_dir / "RG2_JPLL.dcm")  # 0.2 mm pixel spacing
    a, b = s.state.image_to_screen(100, 100), s.state.image_to_screen(600, 100)
    s.start_ruler(*a)
    s.drag_ruler(*b)
    label = s.end_ruler()
    assert label is not None and label.endswith("mm") and float(label.split()[0]) == pytest.approx(100, abs=1)
    (p1, p2, shown), = s.ruler_marks()
    assert shown == label and p2[0] > p1[0]
    s.start_ruler(*a)
    assert s.end_ruler() is None and len(s.rulers) == 1


def test_info_rows_export_names_and_exports(tmp_path: Path, data_dir: Path) -> None:
    """The suggested name is the input's unless it carries the file's patient data, then the
    file hash's (as in batch outputs); the PNG export writes the view with our marker."""
    leaky = tmp_path / "Doe_Jane_chest.dcm"
    leaky.write_bytes(make_dicom(patient_name="Doe^Jane"))
    s = _session(tmp_path, leaky)
    assert s.export_name(".overlay.png") == f"image-{hashlib.sha256(leaky.read_bytes()).hexdigest()[:12]}.overlay.png"
    rows = dict(s.info_rows())
    assert "Doe_Jane_chest.dcm\n" in rows and "Pixel spacing: 0.15 x 0.15 mm (PixelSpacing)\n" in rows
    with pytest.raises(XRayViewerError, match="analyse the image first"):
        s.pdf_export(tmp_path / "r.pdf")
    png = sorted((data_dir / "nih" / "X-Ray Image DataSet" / "No_findings").glob("*.png"))[0]
    s = _session(tmp_path, png)
    assert s.export_name(".overlay.png") == f"{png.name}.overlay.png"
    assert ("Pixel spacing: unknown (rulers in pixels)\n", "") in s.info_rows()
    out = s.png_export(tmp_path / "view.png")()
    assert own_output_reason(out) is not None and "view" in own_output_reason(out)


def test_analysis_overlay_history_and_report(tmp_path: Path, dicom_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                             ) -> None:
    monkeypatch.setenv("XRAYVIEWER_HISTORY_DB", str(tmp_path / "history.sqlite3"))
    s = _session(tmp_path, dicom_dir / "dx_image.dcm")
    plain = s.render()
    result = ThresholdAnalyzer().analyze_batch([s.image])[0]
    assert s.set_analysis(result).startswith("Analysed in") and s.history_id is not None
    blended = s.render()
    assert blended.ndim == 3 and plain.ndim == 2
    s.layers.update(lungs=False, opacity=False, boxes=False)
    assert not np.array_equal(s.render(), blended)
    out = s.pdf_export(tmp_path / "r.pdf")()
    assert out.is_file() and s.get_history().get(s.history_id).report_paths == (str(out),)
    s.forget_analysis()
    assert s.analysis is None and s.render().ndim == 2


def test_list_images_shows_our_outputs_too(tmp_path: Path, dicom_dir: Path) -> None:
    import shutil

    shutil.copy(dicom_dir / "dx_image.dcm", tmp_path / "a.dcm")
    (tmp_path / "a.dcm.overlay.png").write_bytes((tmp_path / "a.dcm").read_bytes())
    (tmp_path / "notes.txt").write_text("no image")
    assert [p.name for p in list_images(tmp_path)] == ["a.dcm", "a.dcm.overlay.png"]


def test_background_tasks_deliver_messages_in_order_and_drop_stale_jobs() -> None:
    """One mechanism for loading, analysis, export and batch: progress messages then the
    result, on the draining thread; a superseded or invalidated job's are dropped."""
    tasks = BackgroundTasks()  # no widget: the test drains
    got: list[tuple[str, object]] = []
    release = threading.Event()

    def slow(post):
        post("started")
        release.wait(10)
        post("late message")
        return "stale result"

    tasks.submit("analyze", slow, lambda v: got.append(("done", v)), lambda e: got.append(("error", e)),
                 on_message=lambda m: got.append(("message", m)))

    def fast(post):
        for i in range(3):
            post(i)
        return "result"

    tasks.submit("analyze", fast, lambda v: got.append(("done", v)), lambda e: got.append(("error", e)),
                 on_message=lambda m: got.append(("message", m)))
    tasks.submit("export", lambda post: 1 / 0, lambda v: got.append(("done", v)),
                 lambda e: got.append(("error", type(e).__name__)))
    release.set()
    while tasks.busy("analyze") or tasks.busy("export"):
        tasks.drain()
    assert [g for g in got if g[0] != "error"] == [("message", 0), ("message", 1), ("message", 2), ("done", "result")]
    assert ("error", "ZeroDivisionError") in got
    # Invalidated while running: nothing arrives.
    got.clear()
    tasks.submit("load", lambda post: "x", lambda v: got.append(v), lambda e: got.append(e))
    tasks.invalidate("load")
    while tasks.busy("load"):
        tasks.drain()
    assert got == []


def test_background_task_callback_errors_are_reported_and_delivery_goes_on() -> None:
    errors: list[BaseException] = []
    tasks = BackgroundTasks(on_callback_error=errors.append)
    got: list[str] = []

    def broken(_value):
        raise RuntimeError("bug in a callback")

    tasks.submit("a", lambda post: 1, broken, got.append)
    tasks.submit("b", lambda post: "fine", got.append, got.append)
    while tasks.busy("a") or tasks.busy("b"):
        tasks.drain()
    assert got == ["fine"] and [str(e) for e in errors] == ["bug in a callback"]
