"""The Tk viewer, driven for real under Xvfb: open files, navigate, window/level, measure.

A fixture starts Xvfb when no display is set (CI installs it). Any exception raised in a
Tk callback fails the test (ViewerApp records them in ``callback_errors``).
"""

from __future__ import annotations

import gc
import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from factories import png_bytes

from xrayviewer.settings import Settings


@pytest.fixture()
def app(display: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from xrayviewer.gui.app import ViewerApp, create_root

    monkeypatch.setenv("XRAYVIEWER_HISTORY_DB", str(tmp_path / "history.sqlite3"))
    monkeypatch.setenv("XRAYVIEWER_CACHE_DIR", str(tmp_path / "cache"))
    root = create_root()
    settings = Settings()
    settings.accept_notice()
    viewer = ViewerApp(root, settings, settings_path=tmp_path / "settings.json", load_models=False)
    root.update()
    yield viewer
    errors = list(viewer.callback_errors)
    try:
        viewer.quit()
    except Exception:
        pass
    del viewer, root
    gc.collect()  # drop Tk objects on this (the Tk) thread
    assert errors == [], f"exceptions in Tk callbacks: {errors!r}"


def pump(app, until: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.root.update()
        if until():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def test_open_real_dicom_and_navigate(app, dicom_dir: Path) -> None:
    path = dicom_dir / "966_fixed.dcm"
    app.open_path(path)
    pump(app, lambda: app.session.image is not None)
    assert app.session.path == path and app.session.image.shape == (2128, 2000)
    assert "MONOCHROME1" in app.info_contents() and "0.16 x 0.16 mm" in app.info_contents()
    view = app.render_current()
    assert view.shape[::-1] == app.session.state.canvas_size
    # Fit: whole image visible; zoom at centre doubles zoom.
    z0 = app.session.state.zoom
    app.zoom(2.0)
    assert app.session.state.zoom == pytest.approx(2 * z0)
    app.fit()
    assert app.session.state.zoom == pytest.approx(z0)
    # Invert toggles the picture exactly.
    before = app.render_current().astype(int)
    app.toggle_invert()
    after = app.render_current().astype(int)
    inside = app.session.inside
    assert np.abs(after[inside] - (255 - before[inside])).max() <= 1  # rounding at .5
    # Window presets from the file, next preset cycles.
    assert app.session.window.source == "file"
    app.next_window()
    assert app.session.window.name == "Full range"
    app.reset_view()
    assert app.session.window == app.session.image.default_window and not app.session.user_invert
    # Rotation keeps the image fitted and swaps extents.
    app.rotate(1)
    assert app.session.state.rotation == 1
    assert str(path.resolve()) in app.settings.recent_files[0]
    assert (app.session.settings_path).is_file()


def test_mouse_pan_window_level_and_ruler(app, dicom_dir: Path) -> None:
    app.open_path(dicom_dir / "RG2_JPLL.dcm")
    pump(app, lambda: app.session.image is not None)
    c = app.canvas
    w, h = app.session.state.canvas_size
    cx, cy = w // 2, h // 2
    start = app.session.state.screen_to_image(cx, cy)
    c.event_generate("<ButtonPress-1>", x=cx, y=cy)
    c.event_generate("<B1-Motion>", x=cx + 40, y=cy + 10)
    c.event_generate("<ButtonRelease-1>", x=cx + 40, y=cy + 10)
    app.root.update()
    assert app.session.state.screen_to_image(cx + 40, cy + 10) == pytest.approx(start, abs=1e-6)
    # Right-drag changes the window.
    w0 = app.session.window.width
    c.event_generate("<ButtonPress-3>", x=cx, y=cy)
    c.event_generate("<B3-Motion>", x=cx + 100, y=cy)
    app.root.update()
    assert app.session.window.name == "Custom" and app.session.window.width > w0
    # Ruler: 0.2 mm pixel spacing in this file.
    app.toggle_ruler()
    p1 = app.session.state.image_to_screen(100, 100)
    p2 = app.session.state.image_to_screen(600, 100)
    c.event_generate("<ButtonPress-1>", x=int(p1[0]), y=int(p1[1]))
    c.event_generate("<B1-Motion>", x=int(p2[0]), y=int(p2[1]))
    c.event_generate("<ButtonRelease-1>", x=int(p2[0]), y=int(p2[1]))
    app.root.update()
    assert len(app.session.rulers) == 1
    (a, b) = app.session.rulers[0]
    length_px = np.hypot(b[0] - a[0], b[1] - a[1])
    assert "mm" in app.status_var.get()
    assert float(app.status_var.get().split("Measured ")[1].split(" mm")[0]) == pytest.approx(length_px * 0.2, abs=0.1)
    assert c.find_withtag("ruler")
    # Pixel value under the cursor.
    c.event_generate("<Motion>", x=cx, y=cy)
    app.root.update()
    assert "value=" in app.pixel_var.get() and "mm" in app.pixel_var.get()


def test_png_ruler_in_pixels_and_tags_only_for_dicom(app, data_dir: Path) -> None:
    png = sorted((data_dir / "nih" / "X-Ray Image DataSet" / "No_findings").glob("*.png"))[0]
    app.open_path(png)
    pump(app, lambda: app.session.image is not None)
    assert app.session.image.metadata.format == "PNG"
    assert "rulers in pixels" in app.info_contents()
    assert app.session.measure_label((0, 0), (3, 4)) == "5.0 px (no pixel spacing)"
    app.show_tags()
    assert "not a DICOM" in app.status_var.get()


def test_tag_browser_search(app, dicom_dir: Path) -> None:
    from xrayviewer.gui.dialogs import TagBrowser

    app.open_path(dicom_dir / "dx_image.dcm")
    pump(app, lambda: app.session.image is not None)
    browser = TagBrowser(app.root, app.session.image.dataset, "dx_image.dcm")
    app.root.update()
    total = len(browser.tree.get_children())
    assert total > 20
    browser.query.set("photometric")
    app.root.update()
    rows = [browser.tree.item(i, "values") for i in browser.tree.get_children()]
    assert len(rows) == 1 and rows[0][3] == "MONOCHROME1"
    browser.destroy()


def test_stale_load_is_dropped_and_errors_shown(app, dicom_dir: Path, tmp_path: Path) -> None:
    # Open a slow file then a fast one: only the last one may be shown.
    app.open_path(dicom_dir / "966_fixed.dcm")
    app.open_path(dicom_dir / "dx_image.dcm")
    pump(app, lambda: app.session.image is not None and not app.tasks.busy("load"))
    assert app.session.path.name == "dx_image.dcm"
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"garbage" * 100)
    app.open_path(bad)
    pump(app, lambda: not app.tasks.busy("load"))
    assert "Could not open bad.dcm" in app.status_var.get()
    assert "not an image" in app.info_contents()


def test_folder_browsing_with_arrow_keys(app, dicom_dir: Path) -> None:
    app.open_folder(dicom_dir / "non_cxr")
    pump(app, lambda: app.session.image is not None)
    assert [p.name for p in app.folder_files] == ["CT_small.dcm", "MR_small.dcm"]
    assert app.session.path.name == "CT_small.dcm"
    app.step_file(1)
    pump(app, lambda: app.session.path is not None and app.session.path.name == "MR_small.dcm")
    assert app.thumbs.selected == 1


def test_redraw_is_fast_enough_for_interaction(app, dicom_dir: Path) -> None:
    """Not a timing assertion on the machine: checks the work per redraw is viewport-sized."""
    app.open_path(dicom_dir / "966_fixed.dcm")
    pump(app, lambda: app.session.image is not None)
    view = app.render_current()
    assert view.size == app.session.state.canvas_size[0] * app.session.state.canvas_size[1]
    assert view.size < app.session.image.values.size


def test_batch_dialog_runs_cancels_and_sorts(app, data_dir: Path, dicom_dir: Path, tmp_path: Path) -> None:
    """The dialog drives the real batch engine on real files; the analyzer is the engine-test one."""

    from test_batch import ThresholdAnalyzer

    src = tmp_path / "in"
    src.mkdir()
    for p in sorted((data_dir / "nih" / "X-Ray Image DataSet" / "Pneumonia").glob("*.png"))[:6]:
        shutil.copy(p, src / p.name)
    shutil.copy(dicom_dir / "broken" / "RG2_JPLY.dcm", src / "broken.dcm")
    analyzer = ThresholdAnalyzer()
    app.session.analyzer = analyzer
    dlg = app.show_batch(src)
    dlg.out_var.set(str(tmp_path / "out"))
    dlg.start()
    pump(app, lambda: dlg.summary is not None or dlg.error is not None, timeout=60)
    assert dlg.error is None
    assert len(dlg.tree.get_children()) == 7
    statuses = sorted(dlg.tree.set(i, "status") for i in dlg.tree.get_children())
    assert statuses.count("error") == 1 and statuses.count("ok") == 6
    assert "Finished" in dlg.status.get() and (tmp_path / "out" / "results.csv").is_file()
    dlg.sort_by("status")
    first = dlg.tree.get_children()[0]
    assert dlg.tree.set(first, "status") == "error"
    # History recorded every row.
    assert app.session.get_history().count() == 7
    # Re-run: everything already done (resume), the table still shows all rows.
    dlg.start()
    pump(app, lambda: not dlg.running and dlg.summary is not None and dlg.summary.skipped == 6, timeout=60)
    assert len(dlg.tree.get_children()) == 7
    dlg.destroy()


def test_cancel_and_stale_analysis_results_are_dropped(app, dicom_dir: Path) -> None:
    import threading

    from test_batch import ThresholdAnalyzer

    gate = threading.Event()

    class Slow(ThresholdAnalyzer):
        def load(self, progress=None):
            pass

        def analyze(self, image, progress=None, cancel=None):
            progress("Segmenting lungs", 0.3)
            gate.wait(10)
            if cancel is not None:
                cancel.check()
            return self.analyze_batch([image])[0]

    app.session.analyzer = Slow()
    app.session.models_state = "ready"
    app.open_path(dicom_dir / "dx_image.dcm")
    pump(app, lambda: app.session.image is not None)
    app.analyze()
    pump(app, lambda: "Segmenting" in app.status_var.get())
    app.cancel_analysis()
    gate.set()
    pump(app, lambda: not app.tasks.busy("analyze"))
    assert app.session.analysis is None and "cancelled" in app.results.text().lower()
    # A finished analysis shows its values in the panel and the overlays.
    gate.set()
    app.analyze()
    pump(app, lambda: app.session.analysis is not None)
    assert app.results.percentages() == {"Normal": "50.0%", "COVID-19": "30.0%", "Other pneumonia": "20.0%"}
    assert "right lung 1.0 %" in app.results.text()
    view = app.render_current()
    assert view.ndim == 3  # overlay blended
    app.layer_vars["lungs"].set(False)
    app.layer_vars["opacity"].set(False)
    app.layer_vars["boxes"].set(False)
    app._overlay_changed()
    plain = app.render_current()
    assert not np.array_equal(plain, view)
    # Opening another image drops the result.
    app.open_path(dicom_dir / "RG2_JPLY_fixed.dcm")
    pump(app, lambda: app.session.path.name == "RG2_JPLY_fixed.dcm")
    assert app.session.analysis is None


def test_settings_dialog_applies_and_persists(app, dicom_dir: Path) -> None:
    from xrayviewer.settings import Settings

    app.open_path(dicom_dir / "RG2_JPLL.dcm")
    pump(app, lambda: app.session.image is not None)
    assert app.session.window.source == "file"
    dlg = app.show_settings()
    dlg.window.set("full")
    dlg.device.set("cpu")
    dlg.colours["right"].set("#00ff00")
    dlg.output.set("/tmp/xrv-out")
    dlg.apply()
    saved = Settings.load(app.session.settings_path)
    assert (saved.default_window, saved.device, saved.lung_colors[0], saved.output_dir) == (
        "full", "cpu", "#00ff00", "/tmp/xrv-out")
    assert app.session.overlay_options().right_color == (0, 255, 0)
    app.reset_view()
    assert app.session.window.name == "Full range"


def test_configure_without_a_size_change_does_not_redraw(app, dicom_dir: Path) -> None:
    """Tk re-sends <Configure> when the layout is recomputed (the results panel filling in):
    an unchanged size must not cost a second full redraw on the Tk thread; a real resize
    re-fits and redraws once, however many events it sends."""
    app.open_path(dicom_dir / "966_fixed.dcm")
    pump(app, lambda: app.session.image is not None)
    for _ in range(5):
        app.root.update()
    calls: list[float] = []
    original = app.redraw

    def counting() -> None:
        calls.append(time.monotonic())
        original()

    app.redraw = counting
    w, h = app.session.state.canvas_size
    app._on_resize(w, h)
    app.root.update()
    assert calls == []
    app._on_resize(w - 120, h - 40)
    app._on_resize(w - 100, h - 30)
    app.root.update()
    assert len(calls) == 1
    assert app.session.state.canvas_size == (w - 100, h - 30)
    view = app.render_current()
    assert view.shape[::-1] == (w - 100, h - 30)


def test_export_dialogs_suggest_deidentified_names(app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PNG and PDF save dialogs suggest the input's name unless it carries the file's own
    patient data (then its hash), like batch outputs; the chosen file is written."""
    from factories import make_dicom

    from xrayviewer.gui import app as app_module

    offered: list[str] = []

    def fake_dialog(**kw) -> str:
        offered.append(kw["initialfile"])
        return str(tmp_path / kw["initialfile"])

    monkeypatch.setattr(app_module.filedialog, "asksaveasfilename", fake_dialog)
    for name, leaks in (("Doe_Jane_chest.dcm", True), ("study-17.dcm", False)):
        path = tmp_path / name
        path.write_bytes(make_dicom(patient_name="Doe^Jane"))
        app.open_path(path)
        pump(app, lambda p=path: app.session.path == p and app.session.image is not None)
        app.ask_export_png()
        pump(app, lambda: len(offered) >= 1 and not app.tasks.busy("export"))  # written on a worker
        assert app.status_var.get().startswith("Exported: ")
        suggested = offered.pop()
        assert "Doe" not in suggested and suggested.endswith(".overlay.png")
        assert (tmp_path / suggested).is_file()
        if leaks:  # named after the file's SHA-256, as batch outputs and the PDF's "Input:" line
            assert suggested == f"image-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}.overlay.png"
        else:
            assert suggested == "study-17.dcm.overlay.png"


def test_batch_dialog_rerun_in_place_and_open_buttons(app, data_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: the dialog's own proposal, `<folder>/xrayviewer-results` with
    sub-folders included. Start, then Start again: the second run resumes, analyses nothing
    of ours and records nothing new; then the buttons open the results with the system's
    opener (or say clearly that there is none)."""
    from test_batch import ThresholdAnalyzer

    import xrayviewer.gui.batch_dialog as batch_dialog
    import xrayviewer.gui.opener as opener
    from xrayviewer.batch.engine import JOURNAL_NAME

    src = tmp_path / "films"
    src.mkdir()
    films = sorted((data_dir / "nih" / "X-Ray Image DataSet" / "Pneumonia").glob("*.png"))[:7]
    for p in films:
        shutil.copy(p, src / p.name)
    (src / "tiny.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))  # refused by the test analyzer
    inputs = sorted([p.name for p in films] + ["tiny.png"])
    analyzer = ThresholdAnalyzer()
    app.session.analyzer = analyzer
    dlg = app.show_batch(src)
    assert dlg.recursive.get() and dlg.out_var.get() == ""
    assert str(dlg.open_out_button["state"]) == "disabled" and str(dlg.open_csv_button["state"]) == "disabled"
    dlg.start()
    out = src / "xrayviewer-results"
    assert dlg.out_var.get() == str(out)
    pump(app, lambda: dlg.summary is not None or dlg.error is not None, timeout=60)
    assert dlg.error is None and (dlg.summary.ok, dlg.summary.refused) == (7, 1)
    rows = (out / "results.csv").read_text()
    assert (out / JOURNAL_NAME).is_file()

    dlg.start()
    pump(app, lambda: not dlg.running and dlg.summary is not None, timeout=60)
    assert dlg.error is None and dlg.summary.skipped == 8 and len(analyzer.seen) == 8
    assert (dlg.summary.ok, dlg.summary.refused) == (7, 1) and (out / "results.csv").read_text() == rows
    assert sorted(dlg.tree.set(i, "file").rsplit("/", 1)[-1] for i in dlg.tree.get_children()) == inputs
    n_own = len([p for p in out.rglob("*.png")])
    assert n_own == 7 * 3 + 1 and f"{n_own} files skipped as xrayviewer's own outputs" in dlg.status.get()
    # The history holds the real inputs, once each.
    assert sorted(Path(e.input_path).name for e in app.session.get_history().entries(limit=100)) == inputs

    # Open buttons: the platform's opener, started and left to run.
    assert str(dlg.open_out_button["state"]) == "normal" and str(dlg.open_csv_button["state"]) == "normal"
    started: list[list[str]] = []
    monkeypatch.setattr(opener.sys, "platform", "linux")
    monkeypatch.setattr(opener.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(opener.subprocess, "Popen", lambda cmd, **kw: started.append(cmd))
    dlg.open_out_button.invoke()
    dlg.open_csv_button.invoke()
    assert started == [["/usr/bin/xdg-open", str(out)], ["/usr/bin/xdg-open", str(out / "results.csv")]]
    # No opener installed: a clear message, nothing started.
    errors: list[str] = []
    monkeypatch.setattr(opener.shutil, "which", lambda name: None)
    monkeypatch.setattr(batch_dialog.messagebox, "showerror", lambda title, msg, **kw: errors.append(msg))
    dlg.open_csv_button.invoke()
    assert len(started) == 2 and len(errors) == 1
    assert "results.csv" in errors[0] and "xdg-open" in errors[0] and "install xdg-utils" in errors[0]
    assert "Could not open" in dlg.status.get()
    dlg.destroy()


def test_opener_commands_per_platform(tmp_path: Path) -> None:
    from xrayviewer.gui.opener import opener_command

    assert opener_command(tmp_path, platform="darwin") == ["open", str(tmp_path)]
    assert opener_command(tmp_path, platform="win32") is None  # os.startfile instead
