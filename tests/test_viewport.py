"""View geometry, window/level and measurement maths, tested without Tk."""

from __future__ import annotations

import numpy as np
import pytest

from xrayviewer.rendering import ViewState, measure, render_view, wl_from_drag


def test_fit_centres_and_fills_limiting_side() -> None:
    s = ViewState.fitted((1000, 500), (800, 600))
    assert s.zoom == pytest.approx(0.6)
    assert s.image_to_screen(250, 500) == pytest.approx((400, 300))
    assert s.image_to_screen(0, 0) == pytest.approx((250, 0))


@pytest.mark.parametrize("rotation", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [(False, False), (True, False), (False, True), (True, True)])
def test_screen_image_round_trip(rotation: int, flip: tuple[bool, bool]) -> None:
    s = ViewState((300, 200), (640, 480), zoom=1.7, center=(80, 130), rotation=rotation, flip_h=flip[0], flip_v=flip[1])
    for pt in [(0, 0), (13.5, 200.25), (199, 299)]:
        sx, sy = s.image_to_screen(*pt)
        assert s.screen_to_image(sx, sy) == pytest.approx(pt)


def test_rotation_is_clockwise_and_flip_mirrors() -> None:
    s = ViewState.fitted((100, 100), (100, 100))
    top_left = s.image_to_screen(0, 0)
    r = s.rotate(1)
    assert r.image_to_screen(0, 0) == pytest.approx((100, 0))  # top-left goes to top-right
    f = s.toggle_flip_h()
    assert f.image_to_screen(0, 0) == pytest.approx((100 - top_left[0], top_left[1]))


def test_zoom_at_keeps_point_under_cursor() -> None:
    s = ViewState.fitted((400, 400), (800, 800))
    before = s.screen_to_image(123, 456)
    z = s.zoom_at(2.5, 123, 456)
    assert z.zoom == pytest.approx(s.zoom * 2.5)
    assert z.screen_to_image(123, 456) == pytest.approx(before)


def test_pan_moves_picture_with_the_mouse() -> None:
    s = ViewState.fitted((400, 400), (400, 400)).rotate(1)
    p = s.pan(30, -10)
    assert p.image_to_screen(200, 200) == pytest.approx((230, 190))


def test_pixel_at_and_outside() -> None:
    s = ViewState((10, 20), (20, 10), zoom=1.0, center=(10, 5))
    assert s.pixel_at(0.5, 0.5) == (0, 0)
    assert s.pixel_at(19.5, 9.5) == (9, 19)
    assert s.pixel_at(-1, 5) is None


def test_render_view_shapes_and_content() -> None:
    img = np.zeros((100, 200), np.uint8)
    img[:, :100] = 255  # left half white
    s = ViewState.fitted(img.shape, (400, 300))
    out = render_view(img, s)
    assert out.shape == (300, 400)
    assert out[150, 120] == 255 and out[150, 280] == 0
    flipped = render_view(img, s.toggle_flip_h())
    assert flipped[150, 120] == 0 and flipped[150, 280] == 255
    rgb = render_view(np.dstack([img] * 3), s.rotate(2))
    assert rgb.shape == (300, 400, 3) and rgb[150, 280, 0] == 255


def test_render_view_strong_minification_keeps_mean() -> None:
    rng = np.random.default_rng(0)
    img = (rng.random((2000, 2000)) * 255).astype(np.uint8)
    s = ViewState.fitted(img.shape, (200, 200))
    out = render_view(img, s)
    assert abs(float(out.mean()) - float(img.mean())) < 3  # no aliasing bias


def test_window_level_drag() -> None:
    c, w = wl_from_drag(100, 200, dx=50, dy=-20, value_range=1000)
    assert w == pytest.approx(300) and c == pytest.approx(60)
    assert wl_from_drag(100, 5, dx=-1000, dy=0, value_range=255)[1] == 1.0


def test_measure_mm_and_px() -> None:
    m = measure((0, 0), (30, 40), (0.2, 0.1), "PixelSpacing")
    assert m.unit == "mm" and m.value == pytest.approx(np.hypot(30 * 0.1, 40 * 0.2))
    assert m.label() == "8.5 mm"
    d = measure((0, 0), (30, 40), (0.2, 0.2), "ImagerPixelSpacing")
    assert "detector" in d.label()
    p = measure((0, 0), (3, 4), None)
    assert p.unit == "px" and p.value == 5 and "no pixel spacing" in p.label()
