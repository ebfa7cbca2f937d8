"""Ground-glass / consolidation opacity: probability map, regions, lung involvement, grade.

Two layers, so the figures can be computed (and tested) without TensorFlow:

* :func:`analyze_probability` -- pure numpy/scipy. Takes a full-resolution opacity
  probability map and the lung label mask from :mod:`xrayviewer.modellayer.lung` (0 background,
  1 patient's right lung = image left, 2 left lung) and returns a frozen
  :class:`OpacityResult`.
* :func:`analyze_model_map` -- the same figures straight from the model's map and its
  crop box, without building full-size float maps (what the app runs; on large films the
  chain of full-size copies was most of the stage's time and memory).
* :class:`OpacityDetector` -- loads the bundled generator (``models/opacity_generator``,
  verified against its card) and feeds it exactly the training preprocessing: the film in
  the normalisation its card names and, when the card says ``input_crop: lung-box``, only
  the box around the lung fields (:func:`lung_box`), squashed to the input size, so the
  same compute spends its pixels on the lungs. The map is pasted back into a full-size
  zero map (opacity is only reported inside the lungs anyway).

Definitions (also in the model card and README, "Opacity model"):

* The probability map and the mask are restricted to the lung field: opacity outside
  the lungs is not reported (the training masks -- COVID-QU-Ex "infection" -- lie inside
  the lung by construction).
* A *region* is an 8-connected component of the thresholded mask whose area is at least
  ``min_region_fraction`` of the image area (default 0.1 %, i.e. 66 px on a 256x256 film).
  Smaller specks are dropped from the mask too, so the regions, the mask and the
  involvement figures always agree.
* Involvement of a lung = opacity pixels inside that lung / that lung's pixels x 100;
  total = all opacity pixels / all lung pixels x 100. A lung with no pixels has 0 %.
* Per-lung extent score 0-4, after the extent part of the RALE score (Warren et al.,
  Thorax 2018): 0 no opacity region in that lung, 1 < 25 %, 2 25-50 %, 3 50-75 %,
  4 >= 75 %. Total score = right + left (0-8).
* Severity grade from the total involvement: ``none`` (no region), ``mild`` (< 25 %),
  ``moderate`` (25-50 %), ``severe`` (>= 50 %). "none" is exactly "no region", which is
  also how the false-positive rate on Normal films is measured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from .cards import CardFields
from .common import BundledModel, image_shape
from .postprocess import LEFT_LUNG, RIGHT_LUNG, downscale_labels, grown_box, working_shape
from .preprocessing import LEGACY, ROBUST, film_input, mask_to_full_resolution, prepare_for_model

log = logging.getLogger(__name__)

MODEL_NAME = "opacity_generator"
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_REGION_FRACTION = 0.001
GRADES = ("none", "mild", "moderate", "severe")
SIDE_NAMES = {RIGHT_LUNG: "right", LEFT_LUNG: "left"}
_EIGHT = np.ones((3, 3), bool)


@dataclass(frozen=True)
class OpacityRegion:
    """One connected opacity region, in full-resolution pixel coordinates."""

    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive
    area_px: int
    side: str  # "right" / "left" (patient's side, by majority of the region's pixels)
    mean_probability: float
    centroid: tuple[float, float]  # (x, y)

    def to_dict(self) -> dict[str, Any]:
        return {"bbox": list(self.bbox), "area_px": self.area_px, "side": self.side,
                "mean_probability": round(self.mean_probability, 4),
                "centroid": [round(c, 1) for c in self.centroid]}


@dataclass(frozen=True)
class OpacityResult:
    """Opacity analysis of one image. Arrays are read-only; ``mask`` at the image's (rows,
    cols), ``probability`` at the working resolution from :func:`analyze_model_map` (the
    image's own size up to ``postprocess.WORKING_SIDE``), the size given to
    :func:`analyze_probability`."""

    probability: np.ndarray  # float32 in [0, 1], zero outside the lung field
    mask: np.ndarray  # bool, thresholded, inside the lung, specks below min area removed
    regions: tuple[OpacityRegion, ...]
    lung_area_px: dict[str, int]  # {"right", "left", "total"}
    opacity_area_px: dict[str, int]  # {"right", "left", "total"}
    involvement_pct: dict[str, float]  # {"right", "left", "total"} in [0, 100]
    extent_score: dict[str, int]  # {"right", "left"} 0-4, {"total"} 0-8
    grade: str  # one of GRADES
    threshold: float
    min_area_px: int
    # Regions the film-level rule did not report (see :func:`apply_film_rule`); 0 = none.
    withheld_regions: int = 0

    @property
    def has_opacity(self) -> bool:
        return bool(self.regions)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly figures (no arrays): reports, batch CSV, the GUI side panel."""
        return {"grade": self.grade, "involvement_pct": dict(self.involvement_pct),
                "extent_score": dict(self.extent_score),
                "lung_area_px": dict(self.lung_area_px),
                "opacity_area_px": dict(self.opacity_area_px),
                "regions": [r.to_dict() for r in self.regions],
                "threshold": self.threshold, "min_area_px": self.min_area_px,
                "withheld_regions": self.withheld_regions}


# ---------------------------------------------------------------- pure figures
def extent_score(pct: float, has_opacity: bool) -> int:
    """Per-lung extent score 0-4 (RALE-style quartiles; 0 only when there is no opacity)."""
    if not has_opacity:
        return 0
    if pct < 25.0:
        return 1
    if pct < 50.0:
        return 2
    if pct < 75.0:
        return 3
    return 4


def severity_grade(total_pct: float, has_opacity: bool) -> str:
    """none (no region) / mild (< 25 %) / moderate (25-50 %) / severe (>= 50 %)."""
    if not has_opacity:
        return "none"
    if total_pct < 25.0:
        return "mild"
    if total_pct < 50.0:
        return "moderate"
    return "severe"


def min_area_px(shape: tuple[int, int], min_region_fraction: float) -> int:
    """Minimum region area in pixels for an image of ``shape`` (at least 1)."""
    return max(1, int(round(min_region_fraction * shape[0] * shape[1])))


def involvement(mask: np.ndarray, lung_labels: np.ndarray) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
    """(lung areas, opacity areas inside each lung, involvement %) for a mask and lung labels."""
    mask = np.asarray(mask, bool)
    labels = np.asarray(lung_labels)
    if mask.shape != labels.shape:
        raise ValueError(f"mask {mask.shape} and lung labels {labels.shape} differ in shape")
    lung: dict[str, int] = {}
    opac: dict[str, int] = {}
    for lab, side in SIDE_NAMES.items():
        inside = labels == lab
        lung[side] = int(np.count_nonzero(inside))
        opac[side] = int(np.count_nonzero(mask & inside))
    lung["total"] = lung["right"] + lung["left"]
    opac["total"] = opac["right"] + opac["left"]
    pct = {k: (100.0 * opac[k] / lung[k] if lung[k] else 0.0) for k in lung}
    return lung, opac, pct


def find_regions(mask: np.ndarray, lung_labels: np.ndarray, probability: np.ndarray,
                 min_area: int) -> tuple[np.ndarray, tuple[OpacityRegion, ...]]:
    """8-connected components of ``mask`` with area >= ``min_area``: (kept mask, regions).

    Regions are sorted by area, largest first; bounding boxes are (x0, y0, x1, y1) with
    exclusive ends, the same convention as array slicing.
    """
    mask = np.asarray(mask, bool)
    lab, n = ndimage.label(mask, structure=_EIGHT)
    kept = np.zeros(mask.shape, bool)
    if n == 0:
        return kept, ()
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    objects = ndimage.find_objects(lab)
    regions: list[OpacityRegion] = []
    for k in range(1, n + 1):
        if sizes[k] < min_area:
            continue
        sl = objects[k - 1]
        comp = lab[sl] == k
        kept[sl] |= comp
        sides = np.asarray(lung_labels)[sl][comp]
        n_right = int(np.count_nonzero(sides == RIGHT_LUNG))
        n_left = int(np.count_nonzero(sides == LEFT_LUNG))
        ys, xs = np.nonzero(comp)
        regions.append(OpacityRegion(
            bbox=(int(sl[1].start), int(sl[0].start), int(sl[1].stop), int(sl[0].stop)),
            area_px=int(sizes[k]),
            side="right" if n_right >= n_left else "left",
            mean_probability=float(np.asarray(probability)[sl][comp].mean()),
            centroid=(float(xs.mean() + sl[1].start), float(ys.mean() + sl[0].start)),
        ))
    regions.sort(key=lambda r: -r.area_px)
    return kept, tuple(regions)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


def analyze_probability(probability: np.ndarray, lung_labels: np.ndarray,
                        threshold: float = DEFAULT_THRESHOLD,
                        min_region_fraction: float = DEFAULT_MIN_REGION_FRACTION) -> OpacityResult:
    """Full-resolution probability + lung labels (0/1/2) -> :class:`OpacityResult`.

    Pure numpy/scipy: the evaluation in training and the tests call this directly, so the
    figures the card reports are the figures the viewer shows.
    """
    prob = np.asarray(probability, dtype=np.float32)
    if prob.ndim == 3 and prob.shape[-1] == 1:
        prob = prob[..., 0]
    labels = np.asarray(lung_labels)
    if prob.ndim != 2 or prob.shape != labels.shape:
        raise ValueError(f"probability {prob.shape} and lung labels {labels.shape} must be "
                         "2-D arrays of the same shape")
    lung = labels > 0
    prob = np.where(lung, np.clip(np.nan_to_num(prob, nan=0.0), 0.0, 1.0), 0.0).astype(np.float32)
    area = min_area_px(prob.shape, min_region_fraction)
    mask, regions = find_regions(prob > threshold, labels, prob, area)
    lung_px, opac_px, pct = involvement(mask, labels)
    # Scored from the mask itself: a region spilling over the midline counts in both lungs.
    scores = {side: extent_score(pct[side], opac_px[side] > 0) for side in ("right", "left")}
    scores["total"] = scores["right"] + scores["left"]
    return OpacityResult(
        probability=_frozen(prob), mask=_frozen(mask), regions=regions,
        lung_area_px=lung_px, opacity_area_px=opac_px, involvement_pct=pct,
        extent_score=scores, grade=severity_grade(pct["total"], bool(regions)),
        threshold=float(threshold), min_area_px=area,
    )


# ---------------------------------------------------------------- film-level rule
#: Opacity card value of ``film_rule``: regions are reported only when the disease
#: classifier's top class is not "Normal". Why: on films from other hospitals most false
#: regions fall on films the classifier (another model, trained on more sources) reads as
#: normal -- low-inspiration AP films, soft-tissue shadows over the bases. Measured on
#: held-out parts (README, "Film-level rule"); the probability map is kept, so the
#: overlay can still show it.
FILM_RULE_CLASSIFIER = "classifier-not-normal"
FILM_RULES = (FILM_RULE_CLASSIFIER,)
NORMAL_CLASS = "Normal"


def withheld_message(n_regions: int, probability_normal: float | None) -> str:
    """The warning a result carries when the film-level rule withheld regions."""
    p = f" ({100 * probability_normal:.0f} %)" if probability_normal is not None else ""
    return (f"opacity: {n_regions} candidate region{'s' if n_regions != 1 else ''} not reported "
            f"because the classifier reads the film as Normal{p}")


def apply_film_rule(result: OpacityResult, rule: str | None, top_class: str | None) -> OpacityResult:
    """The opacity result after the card's film-level rule, given the classifier's top class.

    No rule, no classifier verdict, no region or a non-Normal top class: unchanged.
    Otherwise the regions and the mask are withheld (grade "none", involvement 0) and
    :attr:`OpacityResult.withheld_regions` counts them. Pure, so the app and the
    per-source evaluation apply the same rule.
    """
    if rule is None or top_class is None or not result.regions:
        return result
    if rule not in FILM_RULES:
        raise ValueError(f"unknown opacity film rule {rule!r} (known: {', '.join(FILM_RULES)})")
    if top_class != NORMAL_CLASS:
        return result
    empty = np.zeros(result.mask.shape, bool)
    empty.setflags(write=False)
    zero_px = {k: 0 for k in result.opacity_area_px}
    return OpacityResult(
        probability=result.probability, mask=empty, regions=(), lung_area_px=dict(result.lung_area_px),
        opacity_area_px=zero_px, involvement_pct={k: 0.0 for k in result.involvement_pct},
        extent_score={k: 0 for k in result.extent_score}, grade="none", threshold=result.threshold,
        min_area_px=result.min_area_px, withheld_regions=len(result.regions))


def analyze_model_map(model_map: np.ndarray, box: tuple[int, int, int, int] | None, lung_labels: np.ndarray,
                      threshold: float = DEFAULT_THRESHOLD,
                      min_region_fraction: float = DEFAULT_MIN_REGION_FRACTION) -> OpacityResult:
    """:func:`analyze_probability` of the full-resolution map :func:`predict_maps` would paste
    from ``model_map`` into ``box`` (None: the whole image), without building it.

    The same numbers, decided where they were (the map's values, the threshold and the
    regions at full resolution), in one pass instead of a chain of full-size float copies:
    the map is interpolated over the box only (one transient float array, never kept),
    thresholded inside the lungs' bounding box, and the regions come from OpenCV's one-pass
    8-connected labelling with statistics (areas and boxes, 16-bit labels). The
    result's ``probability`` is kept at the working resolution
    (:func:`~xrayviewer.modellayer.postprocess.working_shape`) only.
    """
    import cv2

    labels = np.asarray(lung_labels)
    if labels.ndim != 2:
        raise ValueError(f"lung labels must be a 2-D array, got shape {labels.shape}")
    shape = (int(labels.shape[0]), int(labels.shape[1]))
    bx0, by0, bx1, by1 = box if box is not None else (0, 0, shape[1], shape[0])
    area = min_area_px(shape, min_region_fraction)
    mask = np.zeros(shape, bool)
    regions: list[OpacityRegion] = []
    lung_rows = np.flatnonzero(labels.any(axis=1))
    roi_map = None
    if len(lung_rows):
        lung_cols = np.flatnonzero(labels.any(axis=0))
        # opacity is only counted inside the lungs: the part of the box that holds lung pixels
        x0, x1 = max(bx0, int(lung_cols[0])), min(bx1, int(lung_cols[-1]) + 1)
        y0, y1 = max(by0, int(lung_rows[0])), min(by1, int(lung_rows[-1]) + 1)
        if x1 > x0 and y1 > y0:
            roi_map = mask_to_full_resolution(model_map, (by1 - by0, bx1 - bx0))
            prob = roi_map[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]
            hit = prob > threshold
            hit &= labels[y0:y1, x0:x1] > 0
            try:
                n, cc, stats, _ = cv2.connectedComponentsWithStats(hit.view(np.uint8), connectivity=8,
                                                                           ltype=cv2.CV_16U)
            except cv2.error:  # more than 65,535 regions: 32-bit labels
                n, cc, stats, _ = cv2.connectedComponentsWithStats(hit.view(np.uint8), connectivity=8,
                                                                           ltype=cv2.CV_32S)
            keep = np.zeros(n, bool)
            keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= area
            if keep.any():
                sub = labels[y0:y1, x0:x1]
                for k in np.flatnonzero(keep):
                    # each region's figures as find_regions computes them, over its own box
                    x, y, w, h, a = (int(v) for v in stats[k])
                    sl = (slice(y, y + h), slice(x, x + w))
                    comp = cc[sl] == k
                    sides = sub[sl][comp]
                    n_right = int(np.count_nonzero(sides == RIGHT_LUNG))
                    n_left = int(np.count_nonzero(sides == LEFT_LUNG))
                    ys, xs = np.nonzero(comp)
                    regions.append(OpacityRegion(
                        bbox=(x + x0, y + y0, x + w + x0, y + h + y0), area_px=a,
                        side="right" if n_right >= n_left else "left",
                        mean_probability=float(prob[sl][comp].mean()),
                        centroid=(float(xs.mean() + (x + x0)), float(ys.mean() + (y + y0))),
                    ))
                mask[y0:y1, x0:x1] = hit if keep[1:].all() else keep[cc]
            del hit, prob
    regions.sort(key=lambda r: -r.area_px)
    lung_px, opac_px, pct = involvement(mask, labels)
    # Scored from the mask itself: a region spilling over the midline counts in both lungs.
    scores = {side: extent_score(pct[side], opac_px[side] > 0) for side in ("right", "left")}
    scores["total"] = scores["right"] + scores["left"]
    work = _working_probability(model_map, (bx0, by0, bx1, by1), labels)
    del roi_map
    mask.setflags(write=False)  # made here: frozen without a copy
    return OpacityResult(
        probability=work, mask=mask, regions=tuple(regions),
        lung_area_px=lung_px, opacity_area_px=opac_px, involvement_pct=pct,
        extent_score=scores, grade=severity_grade(pct["total"], bool(regions)),
        threshold=float(threshold), min_area_px=area,
    )


def _working_probability(model_map: np.ndarray, box: tuple[int, int, int, int], labels: np.ndarray) -> np.ndarray:
    """The probability map at the working resolution, zero outside the lungs (read-only)."""
    shape = (int(labels.shape[0]), int(labels.shape[1]))
    ws = working_shape(shape)
    x0, y0, x1, y1 = _scale_box(box, shape, ws)
    prob = np.zeros(ws, np.float32)
    prob[y0:y1, x0:x1] = mask_to_full_resolution(model_map, (y1 - y0, x1 - x0))
    prob[downscale_labels(labels, ws) == 0] = 0.0
    prob.setflags(write=False)
    return prob


# ---------------------------------------------------------------- model input
LUNG_BOX_MARGIN = 0.06  # fraction of the box's width/height added on each side


def lung_box(lung_labels: np.ndarray | None, shape: tuple[int, int],
             margin: float = LUNG_BOX_MARGIN) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends: the lung fields' bounding box grown by ``margin``
    of its size on each side, clipped to the image; the whole image without lungs."""
    rows, cols = shape
    box = None if lung_labels is None else grown_box(lung_labels, margin, min_extent=2)
    if box is None:
        return (0, 0, cols, rows)
    r0, r1, c0, c1 = box
    return (c0, r0, c1, r1)


def predict_model_maps(model: Any, films: Sequence[Any], boxes: Sequence[tuple[int, int, int, int] | None],
                       input_size: int, normalization: str, batch_size: int = 8) -> list[np.ndarray]:
    """The generator's maps at its own resolution, (S, S) float32, for films and crop boxes.

    ``films`` are :class:`~xrayviewer.modellayer.preprocessing.FilmInput` (robust input) or display
    arrays (legacy input, boxes must be ``None``). Shared by the app and the training
    evaluation, so both measure one code path.
    """
    out: list[np.ndarray] = []
    for start in range(0, len(films), batch_size):
        chunk = list(films[start:start + batch_size])
        bchunk = list(boxes[start:start + batch_size])
        xs = []
        for film, box in zip(chunk, bchunk):
            if normalization == ROBUST:
                if not hasattr(film, "model_array"):
                    film = film_input(film)
                xs.append(film.model_array(input_size, box))
            else:
                if box is not None:
                    raise ValueError("lung-box crops need the robust input")
                xs.append(prepare_for_model(film, input_size, normalization))
        y = model(np.stack(xs), training=False)
        prob = np.asarray(y.numpy() if hasattr(y, "numpy") else y, dtype=np.float32)
        out.extend(p[..., 0] if p.ndim == 3 else p for p in prob)
    return out


def predict_maps(model: Any, films: Sequence[Any], boxes: Sequence[tuple[int, int, int, int] | None],
                 input_size: int, normalization: str, batch_size: int = 8) -> list[np.ndarray]:
    """Full-resolution probability maps of the generator for films and crop boxes.

    ``films`` are :class:`~xrayviewer.modellayer.preprocessing.FilmInput` (robust input) or display
    arrays (legacy input, boxes must be ``None``). The training evaluation's path
    (:func:`analyze_probability` on these maps gives what :func:`analyze_model_map` gives).
    """
    out: list[np.ndarray] = []
    for film, box, p in zip(films, boxes, predict_model_maps(model, films, boxes, input_size, normalization,
                                                              batch_size)):
        shape = image_shape(film)
        if box is None:
            out.append(mask_to_full_resolution(p, shape))
            continue
        x0, y0, x1, y1 = box
        full = np.zeros(shape, np.float32)
        full[y0:y1, x0:x1] = mask_to_full_resolution(p, (y1 - y0, x1 - x0))
        out.append(full)
    return out


def _scale_box(box: tuple[int, int, int, int], full: tuple[int, int], shape: tuple[int, int]
               ) -> tuple[int, int, int, int]:
    """A full-resolution box (x0, y0, x1, y1) in the pixels of ``shape`` (at least one pixel)."""
    if tuple(shape) == tuple(full):
        return box
    sy, sx = shape[0] / full[0], shape[1] / full[1]
    x0, y0, x1, y1 = box
    bx0, by0 = min(shape[1] - 1, round(x0 * sx)), min(shape[0] - 1, round(y0 * sy))
    return (bx0, by0, max(bx0 + 1, min(shape[1], round(x1 * sx))), max(by0 + 1, min(shape[0], round(y1 * sy))))


# ---------------------------------------------------------------- model
INPUT_CROPS = ("none", "lung-box")


@dataclass(frozen=True)
class OpacityCard:
    """The opacity generator's part of its card (schema 1); cards from before the lung-box
    crop lack ``input_crop`` (the whole film) and ``crop_margin``."""

    min_region_fraction: float
    input_crop: str  # one of INPUT_CROPS
    crop_margin: float  # fraction of the lung box added on each side
    film_rule: str | None = None  # one of FILM_RULES (apply_film_rule); None = no rule

    @classmethod
    def from_fields(cls, f: CardFields) -> OpacityCard:
        crop = f.choice("input_crop", INPUT_CROPS, "none")
        if crop == "lung-box" and f.value("input_normalization", LEGACY) != ROBUST:
            raise f.error("input_crop", f"lung-box crops need the {ROBUST} input (input_normalization)")
        return cls(min_region_fraction=f.number("min_region_fraction", DEFAULT_MIN_REGION_FRACTION,
                                                low=0.0, high=0.5),
                   input_crop=crop, crop_margin=f.number("crop_margin", LUNG_BOX_MARGIN, low=0.0, high=1.0),
                   film_rule=f.choice("film_rule", (None, *FILM_RULES), None))


class OpacityDetector(BundledModel):
    """Loads the bundled opacity generator once (verified against its card)."""

    model_name = MODEL_NAME
    card_section = OpacityCard

    def __init__(self, name: str | None = None, models_root: Path | None = None) -> None:
        super().__init__(name, models_root)
        self.min_region_fraction = self.card.section.min_region_fraction
        #: The card's film-level rule (:func:`apply_film_rule`), or None.
        self.film_rule: str | None = self.card.section.film_rule

    @property
    def crops_to_lungs(self) -> bool:
        return self.card.section.input_crop == "lung-box"

    def boxes(self, images: Sequence[Any], lung_labels: Sequence[np.ndarray | None] | None = None
              ) -> list[tuple[int, int, int, int] | None]:
        """The model's crop box of each film (None: the whole film)."""
        if not self.crops_to_lungs:
            return [None] * len(images)
        labels = lung_labels if lung_labels is not None else [None] * len(images)
        margin = self.card.section.crop_margin
        return [lung_box(lab, image_shape(img), margin) for img, lab in zip(images, labels)]

    def _check(self, images: Sequence[Any]) -> None:
        for img in images:
            if isinstance(img, np.ndarray) and img.ndim != 2:
                raise ValueError(f"expected 2-D grey images, got shape {img.shape}")

    def probabilities(self, images: Sequence[Any], lung_labels: Sequence[np.ndarray | None] | None = None,
                      batch_size: int = 8) -> list[np.ndarray]:
        """Raw full-resolution probabilities (not yet restricted to the lung)."""
        self._check(images)
        return predict_maps(self._infer, images, self.boxes(images, lung_labels), self.input_size,
                            self.normalization, batch_size)

    def analyze_batch(self, images: Sequence[Any], lung_labels: Sequence[np.ndarray],
                      batch_size: int = 8) -> list[OpacityResult]:
        """Analyse films (FilmInput, XRayImage or 2-D arrays, any size) given each one's
        full-resolution lung labels (:func:`analyze_model_map`: the figures of
        :func:`analyze_probability` without full-size float maps)."""
        if len(images) != len(lung_labels):
            raise ValueError("one lung label mask per image is required")
        self._check(images)
        boxes = self.boxes(images, lung_labels)
        maps = predict_model_maps(self._infer, images, boxes, self.input_size, self.normalization, batch_size)
        return [analyze_model_map(m, box, lab, self.card.threshold, self.min_region_fraction)
                for m, box, lab in zip(maps, boxes, lung_labels)]

    def analyze(self, image: Any, lung_labels: np.ndarray) -> OpacityResult:
        """Analyse one film given its full-resolution lung label mask (0/1/2)."""
        return self.analyze_batch([image], [lung_labels])[0]
