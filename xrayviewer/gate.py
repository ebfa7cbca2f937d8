""""Is this a frontal chest X-ray?" -- the domain gate run before any disease score.

Scores from a model shown an image it was never trained for (a CT slice, a hip, a photo)
look just as confident as real ones, so the pipeline refuses such images with a reason a
user can read. Three stages, cheapest first:

1. **Header / colour checks** (no TensorFlow): DICOM modality that is not a projection
   radiograph (CT, MR, US, ...), a body part that is not the chest, a lateral view
   position, or a genuinely colourful picture (a photo; X-rays with a few coloured
   annotation arrows pass).
2. **Gate CNN** (``models/xray_gate``): a tiny network that tells frontal chest films from
   lateral films and from everything else (CT slices, synthetic non-X-ray images).
3. **Mahalanobis distance** of the classifier's embedding to its training embeddings,
   with the threshold from validation (``models/xray_classifier`` card): "too far from the
   training data".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import modelstore
from .preprocessing import prepare_for_model

log = logging.getLogger(__name__)

MODEL_NAME = "xray_gate"
GATE_CLASSES = ("frontal chest X-ray", "lateral chest X-ray", "not a chest X-ray")

# Projection radiography modalities; anything else (CT, MR, US, NM, PT, MG, ...) is refused.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT", "SC", "XC", "PX"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_PA", "CHEST_AP",
                              "TORAX", "THORAX_PA", "PORT CHEST", "PORTABLE CHEST"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})
MODALITY_NAMES = {"CT": "a CT image", "MR": "an MR image", "US": "an ultrasound image",
                  "NM": "a nuclear-medicine image", "PT": "a PET image", "MG": "a mammogram",
                  "XA": "an angiography image", "RF": "a fluoroscopy image", "ES": "an endoscopy image"}
# Colour photo: more than this fraction of pixels keeps chroma > 24 after removing a tint
# (ieee8023 frontal films photographed with a tint reach at most 0.09).
COLOUR_PIXEL_FRACTION = 0.25
COLOUR_CHROMA = 24

# Reason codes (stable, for batch exports) -> what the user reads.
ACCEPTED = "accepted"


@dataclass(frozen=True)
class GateResult:
    """The gate's decision. ``reason`` is a sentence for the user when refused."""

    accepted: bool
    code: str
    reason: str
    stage: str
    scores: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "code": self.code, "reason": self.reason,
                "stage": self.stage, "scores": {k: round(float(v), 4) for k, v in self.scores.items()}}


def _refuse(code: str, reason: str, stage: str, **scores: float) -> GateResult:
    return GateResult(False, code, reason, stage, dict(scores))


def colour_fraction(rgb: np.ndarray) -> float:
    """Fraction of pixels with real colour: channels differ by more than :data:`COLOUR_CHROMA`
    *after* removing a per-channel linear fit on brightness.

    The fit absorbs a uniform tint (films photographed or printed blue/purple, common in
    ieee8023), which is still a grey radiograph; a photo or a colour texture has channels
    that vary independently and keeps large residuals.
    """
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[-1] < 3:
        return 0.0
    px = a[..., :3].reshape(-1, 3).astype(np.float64)
    design = np.stack([px.mean(axis=1), np.ones(len(px))], axis=1)
    coef, *_ = np.linalg.lstsq(design, px, rcond=None)
    res = px - design @ coef
    chroma = res.max(axis=1) - res.min(axis=1)
    return float((chroma > COLOUR_CHROMA).mean())


def _file_colour_fraction(source: str) -> float | None:
    """Re-read a raster file in colour (the loaded image is already grey); None if impossible."""
    path = Path(source)
    if not path.is_file():
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.draft("RGB", (512, 512))  # JPEG: decode at reduced size, it is only a statistic
            im = im.convert("RGB")
            im.thumbnail((512, 512))
            return colour_fraction(np.asarray(im))
    except Exception as exc:  # noqa: BLE001 - the statistic is optional
        log.debug("cannot re-read %s in colour: %s", source, exc)
        return None


def check_header(image: Any, rgb: np.ndarray | None = None) -> GateResult | None:
    """Stage 1: refuse from metadata / colour alone; None = no objection. No TensorFlow.

    ``image`` is an :class:`~xrayviewer.imaging.XRayImage`; ``rgb`` optionally the colour
    pixels when the caller still has them (else the source file is re-read if the loader
    warned that it converted colour to grey).
    """
    md = getattr(image, "metadata", None)
    if md is not None:
        modality = (md.modality or "").strip().upper()
        if modality and modality not in RADIOGRAPH_MODALITIES:
            what = MODALITY_NAMES.get(modality, f"a {modality} image")
            return _refuse("not_radiograph_modality",
                           f"Not a chest X-ray: the file says it is {what} (modality {modality}).",
                           "header")
        body = (md.body_part or "").strip().upper()
        if body and body not in CHEST_BODY_PARTS:
            return _refuse("not_chest_body_part",
                           f"Not a chest X-ray: the file says the body part is {body}.", "header")
        view = (md.view_position or "").strip().upper()
        if view in LATERAL_VIEWS:
            return _refuse("lateral_view",
                           f"Lateral view (view position {view}): the models only read frontal "
                           "(PA/AP) chest films.", "header")
    frac = None
    if rgb is not None:
        frac = colour_fraction(rgb)
    elif any("colour image" in w for w in getattr(image, "warnings", ())):
        frac = _file_colour_fraction(str(getattr(image, "source", "")))
    if frac is not None and frac > COLOUR_PIXEL_FRACTION:
        return _refuse("colour_photo",
                       f"Not a radiograph: this is a colour picture ({frac:.0%} of pixels "
                       "coloured), not an X-ray.", "header", colour_fraction=frac)
    return None


class DomainGate:
    """Loads the gate CNN (verified against its card) and applies all three stages."""

    def __init__(self, name: str = MODEL_NAME, models_root: Path | None = None) -> None:
        self.model, self.card = modelstore.load_model(name, models_root)
        self.input_size = self.card.input_size
        # Minimum P(frontal chest X-ray) to pass stage 2 (chosen on validation).
        self.threshold = float(self.card.threshold)

    def cnn_probabilities(self, grays: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """(N, 3) softmax over :data:`GATE_CLASSES`."""
        from .classifier import softmax

        out = []
        for start in range(0, len(grays), batch_size):
            x = np.stack([prepare_for_model(g, self.input_size) for g in grays[start:start + batch_size]])
            out.append(softmax(np.asarray(self.model(x, training=False), np.float64)))
        return np.concatenate(out) if out else np.zeros((0, len(GATE_CLASSES)))

    def check_pixels(self, probs: np.ndarray) -> GateResult | None:
        """Stage 2 from precomputed gate probabilities; None = no objection."""
        p = np.asarray(probs, np.float64)
        scores = {"p_frontal": float(p[0]), "p_lateral": float(p[1]), "p_other": float(p[2])}
        if p[0] >= self.threshold:
            return None
        if p[1] >= p[2]:
            return _refuse("lateral_view", "Looks like a lateral chest film: the models only "
                           "read frontal (PA/AP) chest X-rays.", "gate_cnn", **scores)
        return _refuse("not_chest_xray", "Does not look like a chest X-ray (the image-type "
                       "check scored it as something else).", "gate_cnn", **scores)

    @staticmethod
    def check_embedding(embedding: np.ndarray, stats: dict[str, np.ndarray] | None) -> GateResult | None:
        """Stage 3: Mahalanobis distance to the classifier's training embeddings."""
        if stats is None:
            return None
        from .classifier import mahalanobis

        d = float(mahalanobis(embedding, stats["mean"], stats["precision"])[0])
        thr = float(stats["threshold"])
        if d > thr:
            return _refuse("out_of_distribution",
                           f"Too far from the training data (feature distance {d:.1f} > "
                           f"{thr:.1f}): the scores would not be reliable.", "mahalanobis",
                           distance=d, threshold=thr)
        return None

    def check(self, image: Any, classifier: Any | None = None, embedding: np.ndarray | None = None,
              rgb: np.ndarray | None = None) -> GateResult:
        """Run all stages on an ``XRayImage`` (or a bare 2-D grey array).

        Pass the :class:`~xrayviewer.classifier.DiseaseClassifier` (or its embedding of this
        image) to enable stage 3; without it only stages 1-2 run.
        """
        gray = np.asarray(getattr(image, "display", image))
        if gray.ndim != 2:
            return _refuse("not_chest_xray", "Not a grey-scale 2-D image.", "header")
        header = check_header(image, rgb) if hasattr(image, "metadata") else (
            check_header(None, rgb) if rgb is not None else None)
        if header is not None:
            return header
        probs = self.cnn_probabilities([gray])[0]
        pix = self.check_pixels(probs)
        if pix is not None:
            return pix
        scores = {"p_frontal": float(probs[0])}
        stats = getattr(classifier, "embedding_stats", None) if classifier is not None else None
        if classifier is not None and embedding is None:
            embedding = classifier.predict_batch([gray])[0].embedding
        if embedding is not None and stats is not None:
            emb = self.check_embedding(embedding, stats)
            if emb is not None:
                return emb
            from .classifier import mahalanobis

            scores["distance"] = float(mahalanobis(embedding, stats["mean"], stats["precision"])[0])
        return GateResult(True, ACCEPTED, "Frontal chest X-ray within the training domain.",
                          "all", scores)


def analyze(image: Any, gate: DomainGate, classifier: Any, heatmap: bool = True
            ) -> tuple[GateResult, Any | None]:
    """Gate first, then score: returns (gate result, ClassificationResult or None if refused).

    Stages 1-2 run before the classifier; the classifier's own forward pass then provides
    the embedding for stage 3, so an accepted image costs one classifier pass, not two.
    """
    first = gate.check(image)  # header + gate CNN (no classifier given)
    if not first.accepted:
        return first, None
    gray = np.asarray(getattr(image, "display", image))
    result = classifier.predict(gray, heatmap=heatmap)
    stats = getattr(classifier, "embedding_stats", None)
    refused = gate.check_embedding(result.embedding, stats)
    if refused is not None:
        return refused, None
    scores = dict(first.scores)
    if stats is not None:
        from .classifier import mahalanobis

        scores["distance"] = float(mahalanobis(result.embedding, stats["mean"], stats["precision"])[0])
    return GateResult(True, ACCEPTED, first.reason, "all", scores), result
