"""What the viewer says about a film (gui.readout and the session's use of it), without a
display: summary line, badges, corners, legend, region labels, linked views, thumbnails."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from factories import make_dicom, png_bytes
from test_batch import ThresholdAnalyzer

from xrayviewer.gui import readout
from xrayviewer.gui.session import ViewerSession
from xrayviewer.imaging import load_image
from xrayviewer.modellayer.gate import GateVerdict
from xrayviewer.rendering import ViewState
from xrayviewer.rendering.overlay import OverlayOptions
from xrayviewer.settings import Settings


@pytest.fixture()
def film(tmp_path: Path) -> Path:
    pixels = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (80, 1))
    pixels[20:40, 10:30] = 255  # the threshold analyzer's "opacity"
    path = tmp_path / "film.png"
    path.write_bytes(png_bytes(pixels))
    return path


def _result(path: Path, **changes):
    r = ThresholdAnalyzer().analyze_batch([load_image(path)])[0]
    return replace(r, **changes) if changes else r


def test_summary_line_says_the_finding_first(film: Path) -> None:
    r = _result(film)
    text, kind = readout.summary_line(r)
    assert text == "Opacity in 1 region, 2 % of the lungs (mild); highest score Normal 50 %" and kind == "finding"
    clean = _result(film, regions=(), severity="none", involvement_pct={"right": 0.0, "left": 0.0, "total": 0.0})
    assert readout.summary_line(clean) == ("No opacity found; highest score Normal 50 %", "ok")
    covid = _result(film, predicted_class="COVID-19", regions=(), severity="none")
    assert readout.summary_line(covid)[1] == "finding"
    refused = _result(film, gate=GateVerdict(False, "not_xray", "Not a chest X-ray: a CT image"))
    assert readout.summary_line(refused) == ("Not scored: Not a chest X-ray: a CT image", "refused")
    assert readout.summary_line(_result(film, involvement_pct=None))[0].startswith("Opacity not assessed;")


def test_badges_from_rows() -> None:
    assert readout.badge_kind({"status": "error"}) == "error"
    assert readout.badge_kind({"status": "refused"}) == "refused"
    assert readout.badge_kind({"status": "ok", "predicted_class": "Normal", "opacity_regions": 0,
                               "severity": "none", "covid_positive": False}) == "ok"
    assert readout.badge_kind({"status": "ok", "predicted_class": "Normal", "opacity_regions": 2,
                               "severity": "mild"}) == "finding"
    assert readout.badge_kind({"status": "ok", "predicted_class": "Other pneumonia"}) == "finding"
    assert readout.badge_kind({"status": "weird"}) == "error"


def test_corners_show_patient_data_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(make_dicom(patient_name="Doe^Jane", patient_id="PID-12345"))
    img = load_image(path)
    state = ViewState.fitted(img.shape, (400, 300))
    plain = readout.corner_texts(img, window=img.default_window, state=state)
    every = " ".join(sum(plain.as_dict().values(), ()))
    assert "Doe" not in every and "PID-12345" not in every
    assert plain.top_right[0] == readout.AI_TAG
    assert plain.bottom_left[0].startswith("C ") and " W " in plain.bottom_left[0]
    assert plain.bottom_right[0] == f"Zoom {state.zoom * 100:.0f} %"
    assert f"{img.metadata.columns} x {img.metadata.rows} px" in plain.bottom_right
    named = readout.corner_texts(img, window=img.default_window, state=state.rotate(1), identifying=True,
                                 user_invert=True)
    assert "Doe^Jane ID PID-12345" in named.top_left and "Inverted" in named.bottom_left
    assert "rot 90°" in named.bottom_right


def test_legend_lists_only_layers_drawn(film: Path) -> None:
    r = _result(film)
    names = [i.label for i in readout.legend_items(OverlayOptions(), r)]
    assert names == ["Right lung", "Left lung", "Opacity", "Opacity region"]  # heatmap off by default
    assert readout.legend_items(OverlayOptions(), replace(r, gate=GateVerdict(False, "x", "no"))) == []
    assert readout.legend_items(OverlayOptions(), None) == []
    heat = replace(r, heatmap=np.zeros((8, 8), np.float32))
    items = readout.legend_items(OverlayOptions(lungs=False, opacity=False, boxes=False, heatmap=True), heat)
    assert [(i.colour, i.scale) for i in items] == [(None, readout.HEATMAP_SCALE)]
    assert readout.legend_items(OverlayOptions(heatmap=True), r)[-1].label == "Opacity region"  # no heatmap made
    assert readout.heat_bar(50, 4).shape == (4, 50, 3)


def test_region_labels_follow_the_view_and_use_mm(film: Path) -> None:
    r = _result(film)
    state = ViewState.fitted(r.image_shape, (640, 800))
    (x, y, text), = readout.region_labels(state, r, None)
    assert (x, y) == pytest.approx(state.image_to_screen(0, 0)) and text == "1 R 16 px"
    assert readout.region_labels(state, r, (0.5, 0.5))[0][2] == "1 R 0.0 cm²"
    assert readout.region_area_text(400, (0.5, 0.5)) == "1.0 cm²"


def test_linked_state_keeps_relative_zoom_and_centre() -> None:
    a = ViewState.fitted((2000, 1600), (500, 600)).zoom_at(2.0, 100, 100)
    b = ViewState.fitted((256, 256), (480, 600))
    linked = readout.linked_state(a, b)
    assert linked.zoom / linked.fit().zoom == pytest.approx(a.zoom / a.fit().zoom)
    assert linked.center[0] / 256 == pytest.approx(a.center[0] / 1600)
    assert linked.center[1] / 256 == pytest.approx(a.center[1] / 2000)
    flipped = readout.linked_state(a.rotate(1).toggle_flip_h(), b)
    assert (flipped.rotation, flipped.flip_h) == (1, True)


def test_session_follow_badges_and_previous_analysis(tmp_path: Path, film: Path, monkeypatch) -> None:
    monkeypatch.setenv("XRAYVIEWER_HISTORY_DB", str(tmp_path / "h.sqlite3"))
    other = tmp_path / "other.png"
    other.write_bytes(png_bytes(np.full((120, 100), 90, np.uint8)))
    main = ViewerSession(Settings(), settings_path=tmp_path / "s.json", analyzer=ThresholdAnalyzer())
    main.open(film, load_image(film), (400, 300))
    assert main.previous_analysis() is None
    assert main.set_analysis(_result(film))
    assert main.badge_for(film) == "finding"
    corners, legend, labels = main.annotations()
    assert corners["ne"][0] == readout.AI_TAG and [i.label for i in legend][:2] == ["Right lung", "Left lung"]
    assert labels and labels[0][2].startswith("1 R")
    main.layers["boxes"] = False
    assert main.annotations()[2] == []  # region labels go with the boxes

    second = ViewerSession(Settings(), settings_path=tmp_path / "s2.json")
    second.open(other, load_image(other), (300, 300))
    main.zoom(2.0)
    main.toggle_invert()
    assert second.follow(main)
    assert second.state.zoom / second.state.fit().zoom == pytest.approx(2.0)
    assert second.user_invert and second.window is not None
    # a batch row of the other film, then its badge and the previous analysis
    main.record_batch_row({"path": str(other), "status": "refused", "reason": "too small", "input_sha256": "x"})
    assert main.badge_for(other) == "refused"
    fresh = ViewerSession(Settings(), settings_path=tmp_path / "s3.json")
    fresh.load_badges([film, other])
    assert (fresh.badge_for(film), fresh.badge_for(other)) == ("finding", "refused")
    fresh.open(other, load_image(other), (300, 300))
    prev = fresh.previous_analysis()  # this film's own earlier analysis first
    assert Path(prev.input_path) == other
    fresh.open(tmp_path / "film.png", load_image(film), (300, 300))
    assert Path(fresh.previous_analysis().input_path) == film


def test_thumbnail_cache_on_disk(tmp_path: Path, film: Path, monkeypatch) -> None:
    cache = readout.ThumbnailCache(tmp_path / "thumbs", size=32)
    t = cache.get(film)
    assert t.dtype == np.uint8 and max(t.shape) == 32 and t.shape == (32, 26)
    assert len(list((tmp_path / "thumbs").glob("*.png"))) == 1
    from xrayviewer import imaging

    monkeypatch.setattr(imaging, "load_image", lambda p: (_ for _ in ()).throw(AssertionError("not cached")))
    again = readout.ThumbnailCache(tmp_path / "thumbs", size=32)  # a new run reads the disk cache
    np.testing.assert_array_equal(again.get(film), t)
    film.write_bytes(png_bytes(np.zeros((10, 10), np.uint8)))  # a changed file is a new key
    with pytest.raises(AssertionError, match="not cached"):
        again.get(film)
