"""The reading-viewer widgets under Xvfb: theme, results panel, on-canvas legend and corners,
thumbnails with badges, linked compare; all driven by keys where a user would."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from factories import png_bytes
from test_batch import ThresholdAnalyzer
from test_gui import app, pump  # noqa: F401 - the fixture

from xrayviewer.gui import theme
from xrayviewer.modellayer.gate import GateVerdict


def _ready(app) -> None:  # noqa: F811
    app.session.analyzer = ThresholdAnalyzer()
    app.session.analyzer.load = lambda progress=None: None
    app.session.analyzer.analyze = lambda image, progress=None, cancel=None: app.session.analyzer.analyze_batch([image])[0]
    app.session.models_state = "ready"


def _key(app, key: str) -> None:  # noqa: F811
    app.canvas.focus_force()
    app.root.update()
    app.canvas.event_generate(f"<KeyPress-{key}>")
    app.root.update()


def _analysed(app, dicom_dir: Path):  # noqa: F811
    """Open a real DICOM, press Analyze (threshold analyzer), return the results panel."""
    _ready(app)
    app.open_path(dicom_dir / "RG2_JPLL.dcm")
    pump(app, lambda: app.session.image is not None)
    _key(app, "a")
    pump(app, lambda: app.session.analysis is not None)
    return app.results


def _canvas_texts(canvas, tag: str) -> list[str]:
    return [canvas.itemcget(i, "text") for i in canvas.find_withtag(tag) if "halo" not in canvas.gettags(i)]


def test_dark_theme_by_default_light_in_settings(app) -> None:  # noqa: F811
    from tkinter import ttk

    style = ttk.Style(app.root)
    assert app.settings.theme == "dark" and theme.current(app.root).name == "dark"
    assert style.lookup("TFrame", "background") == theme.DARK.bg
    assert app.canvas.cget("background") == theme.DARK.canvas
    assert app.info_text.cget("background") == theme.DARK.panel
    for pal in theme.PALETTES.values():  # readable text in both themes (WCAG AA: 4.5)
        for fg, bg in ((pal.fg, pal.bg), (pal.fg, pal.panel), (pal.muted, pal.panel), (pal.notice, pal.panel),
                       (pal.refused_fg, pal.refused_bg), (pal.ok, pal.panel), (pal.finding, pal.panel)):
            assert theme.contrast(fg, bg) >= 4.5, (pal.name, fg, bg)
    dlg = app.show_settings()
    dlg.theme.set("light")
    dlg.scale.set("150 %")
    dlg.apply()
    assert style.lookup("TFrame", "background") == theme.LIGHT.bg
    assert app.info_text.cget("background") == theme.LIGHT.panel
    assert float(app.root.tk.call("tk", "scaling")) == pytest.approx(1.5 * 96 / 72, rel=1e-3)  # Tk rounds to its screen
    assert theme.px(app.root, 10) == 15
    from xrayviewer.settings import Settings

    saved = Settings.load(app.session.settings_path)
    assert (saved.theme, saved.ui_scale) == ("light", 1.5)


def test_results_summary_refusal_and_folded_details(app, dicom_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    r = _analysed(app, dicom_dir)
    assert str(r.summary.cget("text")).startswith("Opacity in 1 region") and r.summary_kind == "finding"
    assert r.summary.winfo_y() < r.bars.winfo_y()  # the sentence comes first
    assert not r.details.winfo_ismapped() and "threshold v1" in r.details.get("1.0", "end")
    _key(app, "d")
    assert r.details.winfo_ismapped()
    _key(app, "d")
    assert not r.details.winfo_ismapped()
    refused = r.result.__class__(**{**r.result.__dict__, "gate": GateVerdict(False, "not_xray", "Not a chest X-ray")})
    app._on_analysis(refused)
    assert r.summary_kind == "refused" and str(r.summary.cget("style")) == "Refusal.TLabel"
    assert r.summary.cget("text") == "Not scored: Not a chest X-ray" and r.percentages() == {}
    assert _canvas_texts(app.canvas, "legend-label") == []  # nothing drawn, nothing in the legend


def test_legend_and_corners_match_the_layers(app, dicom_dir: Path) -> None:  # noqa: F811
    _ready(app)
    app.open_path(dicom_dir / "RG2_JPLL.dcm")
    pump(app, lambda: app.session.image is not None)
    c = app.canvas
    assert _canvas_texts(c, "ai-tag") == ["AI: research use"]
    assert _canvas_texts(c, "corner-sw")[0].startswith("C ") and "Zoom" in _canvas_texts(c, "corner-se")[0]
    assert _canvas_texts(c, "legend-label") == []  # not analysed
    app.analyze()
    pump(app, lambda: app.session.analysis is not None)
    assert _canvas_texts(c, "legend-label") == ["Right lung", "Left lung", "Opacity", "Opacity region"]
    assert len(_canvas_texts(c, "region-label")) == 1 and "cm²" in _canvas_texts(c, "region-label")[0]
    _key(app, "l")
    _key(app, "b")
    pump(app, lambda: not app._redraw_pending)
    assert _canvas_texts(c, "legend-label") == ["Opacity"] and _canvas_texts(c, "region-label") == []
    # patient data in the corner only when asked for
    assert not any("PID" in t for t in _canvas_texts(c, "corner"))


def test_thumbnails_badges_and_keyboard(app, data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    _ready(app)
    src = tmp_path / "films"
    src.mkdir()
    for p in sorted((data_dir / "nih" / "X-Ray Image DataSet" / "No_findings").glob("*.png"))[:3]:
        shutil.copy(p, src / p.name)
    (src / "zz_tiny.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))  # refused by the test analyzer
    (src / "zz_tiny.png").touch()
    app.open_folder(src)
    strip = app.thumbs
    pump(app, lambda: app.session.image is not None and len(strip.loaded) == 4, timeout=60)
    assert strip.winfo_ismapped() and strip.selected == 0
    assert all(strip.badge_kind(i) is None for i in range(4))
    assert list((tmp_path / "cache" / "thumbnails").glob("*.png"))  # cached on disk
    app.analyze()
    pump(app, lambda: app.session.analysis is not None)
    assert strip.badge_kind(0) in ("ok", "finding")
    assert strip.badge_kind(0) == app.session.badge_for(app.folder_files[0])
    _key(app, "Next")
    _key(app, "Next")
    _key(app, "Next")
    pump(app, lambda: app.session.path == app.folder_files[3] and app.session.image is not None)
    assert strip.selected == 3
    app.analyze()
    pump(app, lambda: app.session.analysis is not None)
    assert strip.badge_kind(3) == "refused"
    # a batch row updates its film's badge too
    app._batch_row({"path": str(app.folder_files[1]), "status": "error", "reason": "x", "input_sha256": ""})
    assert strip.badge_kind(1) == "error" and strip.badge_kind(2) is None


def test_compare_links_zoom_pan_and_window(app, data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    _ready(app)
    films = sorted((data_dir / "nih" / "X-Ray Image DataSet" / "No_findings").glob("*.png"))[:2]
    app.open_path(films[0])
    pump(app, lambda: app.session.image is not None)
    _key(app, "s")
    assert "No previous analysis" in app.status_var.get() and not app.compare.active
    app.analyze()
    pump(app, lambda: app.session.analysis is not None)
    app.open_path(films[1])
    pump(app, lambda: app.session.path == films[1] and app.session.image is not None)
    _key(app, "s")  # beside the previous analysis (of the other film)
    cmp = app.compare
    pump(app, lambda: cmp.session.image is not None)
    assert cmp.active and app.compare_canvas.winfo_ismapped()
    assert cmp.session.path == films[0] and "highest score Normal" in (cmp.session.caption or "")
    assert any("highest score" in t for t in _canvas_texts(app.compare_canvas, "corner-nw"))

    def rel(s):
        return s.state.zoom / s.state.fit().zoom

    _key(app, "plus")
    assert rel(cmp.session) == pytest.approx(rel(app.session)) == pytest.approx(1.25)
    app.next_window()
    assert cmp.session.window.center == pytest.approx(app.session.window.center, rel=0.2)
    # the compare side leads too: a wheel zoom there moves the main view
    before = rel(app.session)
    cmp._zoom_at(50, 50, 2.0)
    pump(app, lambda: not app._redraw_pending)
    assert rel(app.session) == pytest.approx(2 * before) and rel(cmp.session) == pytest.approx(2 * before)
    c0 = app.session.state.center
    cmp._drag.update(x=100, y=100)
    cmp._pan(type("E", (), {"x": 140, "y": 100})())
    pump(app, lambda: not app._redraw_pending)
    assert app.session.state.center[0] < c0[0]  # the picture moved right in both views
    _key(app, "s")
    assert not cmp.active and not app.compare_canvas.winfo_ismapped()
    # any analysis from the history, chosen in the history window (Ctrl+Enter)
    hw = app.show_history()
    app.root.update()
    first = hw.tree.get_children()[-1]  # the oldest: films[0]
    hw.tree.selection_set(first)
    hw.tree.focus_force()
    hw.tree.event_generate("<Control-Return>")
    pump(app, lambda: cmp.active and cmp.session.image is not None and not app.tasks.busy("compare"))
    assert cmp.session.path == films[0] and cmp.session.caption.startswith("Previous analysis ")
    hw.destroy()


def test_thumbnails_are_lazy(app, tmp_path: Path) -> None:  # noqa: F811
    """A big folder costs what the strip shows: the visible cells (and a few beyond) get
    pictures; scrolling to the end makes the last ones."""
    src = tmp_path / "many"
    src.mkdir()
    for i in range(40):
        (src / f"film{i:02d}.png").write_bytes(png_bytes(np.full((64, 64), i * 5, np.uint8)))
    app.open_folder(src)
    strip = app.thumbs
    pump(app, lambda: app.session.image is not None and 0 in strip.loaded and not app.tasks.busy("thumbs"))
    shown = strip.visible_range()
    assert 0 < len(strip.loaded) < 40 and strip.loaded <= set(shown)
    strip.canvas.yview_moveto(1.0)
    pump(app, lambda: 39 in strip.loaded)
    assert 20 not in strip.loaded


def test_results_panel_says_when_the_film_rule_withheld_regions(app, dicom_dir: Path) -> None:  # noqa: F811
    r = _analysed(app, dicom_dir)
    assert "not reported" not in r.findings.get("1.0", "end")
    withheld = r.result.__class__(**{**r.result.__dict__, "regions": (), "severity": "none",
                                     "probabilities": {"Normal": 0.9, "COVID-19": 0.05, "Other pneumonia": 0.05},
                                     "predicted_class": "Normal", "opacity_withheld_regions": 2})
    app._on_analysis(withheld)
    assert "2 candidate regions not reported: the classifier reads the film as Normal." in r.findings.get("1.0", "end")


def test_findings_are_never_cut_off(app, dicom_dir: Path) -> None:  # noqa: F811
    """The findings box grows to its wrapped text (opacity, withheld regions, COVID and TB lines)."""
    r = _analysed(app, dicom_dir)
    long = r.result.__class__(**{**r.result.__dict__, "opacity_withheld_regions": 3, "prob_tuberculosis": 0.7,
                                 "tb_positive": True, "tb_operating_point": 0.54,
                                 "operating_point": {"COVID-19": 0.12}, "covid_positive": False})
    app._on_analysis(long)
    app.root.update()
    f = r.findings
    app.root.update()
    n = f.count("1.0", "end-1c", "displaylines")  # Tk's own count, once laid out
    assert int(f.cget("height")) >= int(n[0] if isinstance(n, tuple) else n) > 5
    assert "not a diagnosis" in f.get("1.0", "end")
