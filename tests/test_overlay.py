from __future__ import annotations

import numpy as np

from xrayviewer.inference.result import Region
from xrayviewer.rendering.overlay import (
    LEFT_COLOR,
    OPACITY_COLOR,
    RIGHT_COLOR,
    OverlayOptions,
    blend,
    compose_overlay,
    overlay_layer,
)


def _case():
    grey = np.full((100, 120), 100, np.uint8)
    labels = np.zeros((100, 120), np.uint8)
    labels[20:80, 10:50] = 1
    labels[20:80, 70:110] = 2
    opacity = np.zeros((100, 120), bool)
    opacity[40:60, 20:40] = True
    return grey, labels, opacity


def test_overlay_colours_outlines_and_fill() -> None:
    grey, labels, opacity = _case()
    out = compose_overlay(grey, lung_labels=labels, opacity_mask=opacity, options=OverlayOptions(alpha=0.5))
    assert out.shape == (100, 120, 3)
    assert tuple(out[20, 30]) == RIGHT_COLOR  # top edge of the right lung outline
    assert tuple(out[50, 109]) == LEFT_COLOR
    inside = out[50, 30].astype(int)
    expect = (np.array(OPACITY_COLOR) * 0.5 + 100 * 0.5).round()
    assert np.abs(inside - expect).max() <= 1
    assert tuple(out[5, 5]) == (100, 100, 100)  # untouched outside


def test_toggles_and_boxes() -> None:
    grey, labels, opacity = _case()
    region = Region((20, 40, 40, 60), 400, "right", 0.9)
    none = compose_overlay(grey, lung_labels=labels, opacity_mask=opacity, regions=(region,),
                           options=OverlayOptions(lungs=False, opacity=False, boxes=False))
    assert np.all(none == 100)
    boxes = compose_overlay(grey, regions=(region,), options=OverlayOptions(lungs=False, opacity=False))
    assert tuple(boxes[40, 25]) != (100, 100, 100) and tuple(boxes[50, 30]) == (100, 100, 100)


def test_heatmap_layer_alpha_follows_heat() -> None:
    heat = np.zeros((10, 10), np.float32)
    heat[:, 5:] = 1.0
    layer = overlay_layer((10, 10), heatmap=heat, options=OverlayOptions(heatmap=True, alpha=0.4, lungs=False))
    assert layer[0, 0, 3] == 0 and layer[0, 9, 3] == round(0.4 * 255)
    out = blend(np.zeros((10, 10), np.uint8), layer)
    assert out[0, 0].sum() == 0 and out[0, 9].sum() > 0


def test_legend_lists_the_layers_present() -> None:
    labels = np.zeros((400, 400), np.uint8)
    labels[100:300, 50:150] = 1
    image = np.zeros((400, 400), np.uint8)
    plain = compose_overlay(image, lung_labels=labels)
    with_lungs = compose_overlay(image, lung_labels=labels, options=OverlayOptions(legend=True))
    # The legend is a band below the image: the image part is untouched, nothing is hidden.
    assert with_lungs.shape[0] > 400 and with_lungs.shape[1] == 400
    np.testing.assert_array_equal(with_lungs[:400], plain)
    assert with_lungs[400:].max() == 255  # white text
    everything = compose_overlay(image, lung_labels=labels, opacity_mask=labels > 0, heatmap=np.ones((400, 400)),
                                 options=OverlayOptions(legend=True, heatmap=True))
    assert everything.shape[0] > with_lungs.shape[0]  # five entries wrap onto more lines at 400 px
    nothing = compose_overlay(image, options=OverlayOptions(legend=True))
    assert nothing.shape == (400, 400, 3) and nothing.max() == 0  # no layers, no legend
