from __future__ import annotations

import numpy as np
import pytest

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


def _old_compose(display, *, lung_labels=None, opacity_mask=None, regions=(), heatmap=None, options=None):
    """compose_overlay before issue 19: a full-size layer, blended, the legend stacked below."""
    from dataclasses import replace

    from xrayviewer.rendering.overlay import legend_strip

    layer = overlay_layer(display.shape[:2], lung_labels=lung_labels, opacity_mask=opacity_mask, regions=regions,
                          heatmap=heatmap, options=options)
    out = blend(display, layer)
    if options.legend:
        present = replace(options, lungs=options.lungs and lung_labels is not None,
                          opacity=options.opacity and opacity_mask is not None,
                          boxes=options.boxes and opacity_mask is not None, heatmap=options.heatmap and heatmap is not None)
        strip = legend_strip(out.shape[1], present)
        if len(strip):
            out = np.vstack([out, strip])
    return out


@pytest.mark.parametrize("legend,heat,lungs", [(True, True, True), (False, False, True), (True, False, False)])
def test_overlay_blended_only_where_it_shows_is_pixel_identical(legend: bool, heat: bool, lungs: bool) -> None:
    shape = (1300, 1100)
    rng = np.random.default_rng(7)
    display = rng.integers(0, 256, shape, dtype=np.uint8)
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    labels = np.zeros(shape, np.uint8)
    labels[((y - 650) / 450) ** 2 + ((x - 330) / 190) ** 2 < 1] = 1
    labels[((y - 660) / 470) ** 2 + ((x - 780) / 200) ** 2 < 1] = 2
    opacity = (((y - 800) / 120) ** 2 + ((x - 350) / 90) ** 2 < 1) | (((y - 500) / 60) ** 2 + ((x - 800) / 50) ** 2 < 1)
    regions = (Region((260, 680, 441, 921), 30000, "right", 0.7), Region((750, 440, 851, 561), 9000, "left", 0.6))
    heatmap = (rng.random(shape, np.float32) * (labels > 0)) if heat else None
    opts = OverlayOptions(heatmap=heat, legend=legend, alpha=0.35, lungs=lungs)
    kw = {"lung_labels": labels, "opacity_mask": opacity, "regions": regions, "heatmap": heatmap, "options": opts}
    np.testing.assert_array_equal(compose_overlay(display, **kw), _old_compose(display, **kw))
    # a region box at the image's edge, nothing else
    edge = (Region((0, 0, 40, 30), 1200, "right", 0.5),)
    kw = {"regions": edge, "options": OverlayOptions(legend=legend)}
    np.testing.assert_array_equal(compose_overlay(display, **kw), _old_compose(display, **kw))


def test_blend_in_place_equals_the_plain_formula_for_every_value() -> None:
    """All 256 x 256 x 256 (base, colour, alpha) triples: the in-place 16-bit blend with the
    shift division gives (base * (255 - a) + colour * a + 127) // 255."""
    b, c, a = (v.reshape(4096, 4096).astype(np.uint16) for v in np.meshgrid(*[np.arange(256)] * 3, indexing="ij"))
    layer = np.dstack([c, c, c, a]).astype(np.uint8)
    expect = ((b * (255 - a) + c * a + 127) // 255).astype(np.uint8)
    out = blend(b.astype(np.uint8), layer)
    assert out.shape == (4096, 4096, 3)
    for ch in range(3):
        np.testing.assert_array_equal(out[..., ch], expect)



def test_pdf_overlay_is_drawn_at_its_embedded_size() -> None:
    """The report draws the overlay at the size it embeds (long side MAX_EMBED_PX) instead of
    drawing a 2,000-pixel picture and shrinking it: same layers, in the same places."""
    from types import SimpleNamespace

    from xrayviewer.reporting.pdf import MAX_EMBED_PX, _embedded_overlay

    rows, cols = 2100, 1800
    display = np.full((rows, cols), 90, np.uint8)
    labels = np.zeros((rows, cols), np.uint8)
    labels[300:1800, 200:800] = 1
    labels[300:1850, 1000:1600] = 2
    opacity = np.zeros((rows, cols), bool)
    opacity[900:1300, 300:600] = True
    r = SimpleNamespace(lung_labels=labels, opacity_mask=opacity,
                        regions=(Region((300, 900, 600, 1300), 120000, "right", 0.8),))
    out = _embedded_overlay(display, r)
    s = MAX_EMBED_PX / rows
    assert out.shape == (MAX_EMBED_PX, round(cols * s), 3)
    assert tuple(out[round(1100 * s), round(450 * s)]) != (90, 90, 90)  # the opacity fill
    assert tuple(out[round(200 * s), round(900 * s)]) == (90, 90, 90)  # outside everything
    assert (out == RIGHT_COLOR).all(axis=-1).any() and (out == LEFT_COLOR).all(axis=-1).any()
    small = _embedded_overlay(display[:500, :400], SimpleNamespace(lung_labels=labels[:500, :400],
                                                                  opacity_mask=None, regions=()))
    assert small.shape == (500, 400, 3)  # below the embedded size: drawn as it is


@pytest.mark.parametrize("shape", [(300, 200, 3), (300, 200), (1, 1)])
def test_png_bytes_decode_to_the_same_pixels_and_carry_our_marker(shape: tuple[int, ...], tmp_path) -> None:
    """OpenCV's encoder with our tEXt chunks spliced in: a valid PNG (chunk CRCs checked by
    Pillow), the exact pixels, and the marker provenance recognises."""
    import io

    from PIL import Image

    from xrayviewer.provenance import own_output_reason
    from xrayviewer.rendering.overlay import encode_png

    arr = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(arr, "overlay")
    img = Image.open(io.BytesIO(data))
    img.load()
    np.testing.assert_array_equal(np.asarray(img), arr)
    assert img.text["xrayviewer-output"] == "overlay"
    assert data.index(b"tEXt") < data.index(b"IDAT")
    (tmp_path / "x.png").write_bytes(data)
    assert own_output_reason(tmp_path / "x.png")


def test_pdf_heatmap_panel_is_drawn_at_its_embedded_size() -> None:
    """The tuberculosis panel takes the same path: heatmap shrunk by area, lungs by nearest
    neighbour, and no opacity layer when its options leave it out."""
    from types import SimpleNamespace

    from xrayviewer.rendering.overlay import OverlayOptions
    from xrayviewer.reporting.pdf import MAX_EMBED_PX, _embedded_overlay

    rows, cols = 2000, 1600
    display = np.full((rows, cols), 90, np.uint8)
    labels = np.zeros((rows, cols), np.uint8)
    labels[300:1800, 200:700] = 1
    heat = np.zeros((rows, cols), np.float32)
    heat[800:1200, 300:600] = 1.0
    opacity = np.zeros((rows, cols), bool)
    opacity[300:500, 1000:1400] = True  # not shown in a heatmap panel
    r = SimpleNamespace(lung_labels=labels, opacity_mask=opacity, regions=())
    out = _embedded_overlay(display, r, heatmap=heat,
                            options=OverlayOptions(opacity=False, boxes=False, heatmap=True, alpha=0.55))
    s = MAX_EMBED_PX / rows
    assert out.shape == (MAX_EMBED_PX, round(cols * s), 3)
    assert tuple(out[round(1000 * s), round(450 * s)]) != (90, 90, 90)  # the heatmap
    assert tuple(out[round(400 * s), round(1200 * s)]) == (90, 90, 90)  # opacity left out
