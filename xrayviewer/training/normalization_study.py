"""Which input normalisation makes a film look the same to the models whatever its source?

``python -m xrayviewer.training compare-normalizations`` measures candidate normalisations
on two things the models suffer from, without training anything:

* **invariance**: the model input of a film vs. that of its 8-bit PNG export (default
  window), a JPEG (quality 85) of it, a narrower window and a gamma of 0.7 -- what a user's
  own export or a PACS rendering does to a film. Mean absolute difference at 128 px.
* **source gap**: grey-level statistics of the model input of *normal* films per source
  (COVID-QU-Ex, NIH, Shenzhen, the real chest DICOMs): the Wasserstein-1 distance between
  each source's mean grey-level histogram and COVID-QU-Ex Normal's (the source the models
  learned most from), and the spread of per-film mean and standard deviation.

The chosen normalisation is :data:`xrayviewer.modellayer.preprocessing.ROBUST`; the table goes into
the lung and opacity cards and the README.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..modellayer.preprocessing import film_input, resize, to_unit_float
from .datasets import NORMAL, read_all, read_gray
from .source_eval import CHEST_DICOMS

log = logging.getLogger(__name__)

SIZE = 128


def _bright_dense(image: Any) -> np.ndarray:
    v = np.asarray(image.values, np.float32)
    return -v if image.invert else v


def _central(a: np.ndarray) -> np.ndarray:
    small = resize(a.astype(np.float32), 256)
    return small[26:230, 26:230]


def _percentile(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(_central(a), [1, 99])
    return np.clip((resize(a.astype(np.float32), SIZE) - lo) / max(hi - lo, 1e-6), 0, 1)


def _rank_global(a: np.ndarray) -> np.ndarray:
    small = resize(a.astype(np.float32), SIZE)
    q = np.linspace(0, 1, 257)
    levels = np.quantile(resize(a.astype(np.float32), 256), q)
    u, inv = np.unique(levels, return_inverse=True)
    t = np.bincount(inv, weights=q) / np.bincount(inv)
    return np.interp(small, u, t) if len(u) > 1 else np.full_like(small, 0.5)


def _clahe(a: np.ndarray) -> np.ndarray:
    import cv2

    p = (_percentile(resize(a.astype(np.float32), 256)) * 255).astype(np.uint8)
    out = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(p)
    return resize(out.astype(np.float32) / 255.0, SIZE)


def _rank_v1(a: np.ndarray) -> np.ndarray:
    return film_input(a).model_array(SIZE)[..., 0]


# Each candidate maps a bright = dense grey film (values, or an 8-bit display) to [0, 1].
CANDIDATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "percentile 1-99 % of values": _percentile,
    "histogram equalisation, whole film": _rank_global,
    "CLAHE (clip 2, 8x8) on percentile-scaled values": _clahe,
    "rank-v1: rank map of the central film (chosen)": _rank_v1,
}


def _variants(display: np.ndarray) -> dict[str, np.ndarray]:
    """What exports and re-windowing do to a film: 8-bit arrays of its display image."""
    import cv2

    ok, jpg = cv2.imencode(".jpg", display, [cv2.IMWRITE_JPEG_QUALITY, 85])
    d = display.astype(np.float32) / 255.0
    narrow = np.clip((d - 0.5) / 0.6 + 0.5, 0, 1)
    return {
        "PNG export": display,
        "JPEG q85": cv2.imdecode(jpg, cv2.IMREAD_GRAYSCALE),
        "narrower window": (narrow * 255).round().astype(np.uint8),
        "gamma 0.7": ((d ** 0.7) * 255).round().astype(np.uint8),
    }


def invariance(films: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Mean |input(film) - input(variant)| per candidate and variant (legacy included)."""
    out: dict[str, dict[str, float]] = {}
    legacy = "display-v1 (display / 255, the old input)"
    for name, fn in {legacy: None, **CANDIDATES}.items():
        diffs: dict[str, list[float]] = {}
        for values, display in films:
            ref = resize(to_unit_float(display), SIZE) if fn is None else fn(values)
            for vname, v in _variants(display).items():
                other = resize(to_unit_float(v), SIZE) if fn is None else fn(v)
                diffs.setdefault(vname, []).append(float(np.abs(ref - other).mean()))
        out[name] = {k: round(float(np.mean(v)), 4) for k, v in diffs.items()}
    return out


def _wasserstein(h1: np.ndarray, h2: np.ndarray) -> float:
    return float(np.abs(np.cumsum(h1) - np.cumsum(h2)).sum() / len(h1))


def source_gap(groups: dict[str, list[tuple[np.ndarray, np.ndarray]]], reference: str) -> dict[str, Any]:
    """Per candidate: per source, mean/sd of the inputs and W1 to the reference source."""
    legacy = "display-v1 (display / 255, the old input)"
    out: dict[str, Any] = {}
    bins = np.linspace(0, 1, 33)
    for name, fn in {legacy: None, **CANDIDATES}.items():
        hist: dict[str, np.ndarray] = {}
        rows: dict[str, dict[str, float]] = {}
        for src, films in groups.items():
            hs, means, sds = [], [], []
            for values, display in films:
                x = resize(to_unit_float(display), SIZE) if fn is None else fn(values)
                c = x[13:115, 13:115]
                hs.append(np.histogram(c, bins)[0] / c.size)
                means.append(float(c.mean()))
                sds.append(float(c.std()))
            hist[src] = np.mean(hs, axis=0)
            rows[src] = {"n": len(films), "mean": round(float(np.mean(means)), 3),
                         "sd": round(float(np.mean(sds)), 3)}
        for src in groups:
            rows[src]["w1_to_reference"] = round(_wasserstein(hist[src], hist[reference]), 4)
        others = [rows[s]["w1_to_reference"] for s in groups if s != reference]
        out[name] = {"sources": rows, "mean_w1_other_sources": round(float(np.mean(others)), 4)}
    return out


def run(data_dir: Path, out: Path, per_source: int = 60) -> dict[str, Any]:
    """Measure both tables and write ``out`` (JSON) next to a Markdown rendering."""
    from ..imaging import load_image

    dicoms = []
    for name in CHEST_DICOMS:
        path = Path(data_dir) / "dicom" / name
        if path.is_file():
            img = load_image(path)
            dicoms.append((_bright_dense(img), np.asarray(img.display)))
    recs = read_all(data_dir, ("covid-qu-ex", "nih", "tb-shenzhen"))

    def pick(source: str) -> list[tuple[np.ndarray, np.ndarray]]:
        chosen = [r for r in recs if r.source == source and r.label == NORMAL]
        idx = np.linspace(0, len(chosen) - 1, min(per_source, len(chosen))).round().astype(int)
        films = []
        for i in idx:
            g = read_gray(chosen[i].image)
            films.append((g, g))
        return films

    groups = {"covid-qu-ex Normal": pick("covid-qu-ex"), "nih No_findings": pick("nih"),
              "tb-shenzhen normal": pick("tb-shenzhen"), "real chest DICOMs": dicoms}
    inv_films = dicoms + groups["covid-qu-ex Normal"][:10] + groups["nih No_findings"][:10]
    result = {"input_size": SIZE, "invariance_mean_abs_diff": invariance(inv_films),
              "n_invariance_films": len(inv_films),
              "source_gap": source_gap(groups, "covid-qu-ex Normal")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    log.info("wrote %s", out)
    return result


def markdown(result: dict[str, Any]) -> str:
    """The comparison as one Markdown table (README, cards)."""
    inv = result["invariance_mean_abs_diff"]
    gap = result["source_gap"]
    variants = list(next(iter(inv.values())))
    srcs = [s for s in next(iter(gap.values()))["sources"] if s != "covid-qu-ex Normal"]
    head = ("| normalisation | " + " | ".join(f"vs {v}" for v in variants) + " | "
            + " | ".join(f"W1 {s}" for s in srcs) + " | mean W1 |")
    lines = [head, "|" + "---|" * (2 + len(variants) + len(srcs))]
    for name in inv:
        g = gap[name]
        lines.append(f"| {name} | " + " | ".join(f"{inv[name][v]:.4f}" for v in variants) + " | "
                     + " | ".join(f"{g['sources'][s]['w1_to_reference']:.4f}" for s in srcs)
                     + f" | {g['mean_w1_other_sources']:.4f} |")
    return "\n".join(lines) + "\n"
