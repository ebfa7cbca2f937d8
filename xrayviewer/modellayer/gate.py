""""Is this a frontal chest X-ray?" -- the domain gate run before any disease score.

Scores from a model shown an image it was never trained for (a CT slice, a hip, a photo)
look just as confident as real ones, so the pipeline refuses such images with a reason a
user can read. Three stages, cheapest first:

1. **Header / colour checks** (no TensorFlow): DICOM modality that is not a projection
   radiograph (CT, MR, US, ...), a body part that is not the chest, a lateral view
   position, or a genuinely colourful picture (a photo; X-rays with a few coloured
   annotation arrows pass), from the colour fraction the raster loader measured.
2. **Gate CNN** (``models/xray_gate``): a tiny network that tells frontal chest films from
   lateral films and from everything else (CT slices, synthetic non-X-ray images).
3. **Mahalanobis distance** of the classifier's embedding to its training embeddings,
   with the threshold from validation (``models/xray_classifier`` card): "too far from the
   training data".

One sequence, batched, for every caller: :meth:`DomainGate.screen` runs stages 1-2 over a
batch and :meth:`DomainGate.confirm` stage 3 on an embedding. The :class:`Analyzer
<xrayviewer.inference.analyzer.Analyzer>` calls the two around its own classifier pass
(whose embedding it reuses); :meth:`DomainGate.check_batch` runs both with a classifier
pass of its own, for the gate's evaluation (the card's figures) and the tests, so the card
measures the code that runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .cards import CardFields
from .common import BundledModel, forward, mahalanobis, softmax
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
# Colour photo: more than this fraction of pixels keeps colour after removing a tint
# (``ImageMetadata.colour_fraction``; ieee8023 frontal films photographed with a tint reach
# at most 0.09).
COLOUR_PIXEL_FRACTION = 0.25

# The accept code (stable, in results.csv's gate_code); refusals carry their own codes.
ACCEPTED = "ok"
ACCEPTED_REASON = "Frontal chest X-ray within the training domain."
# The CNN's probabilities, in the order of GATE_CLASSES, as they appear in the scores.
CNN_SCORES = ("p_frontal", "p_lateral", "p_other")


@dataclass(frozen=True)
class GateVerdict:
    """The gate's decision. ``reason`` is a sentence for the user when refused; ``stage``
    says which stage decided ("header", "gate_cnn", "mahalanobis"; "all" when accepted)."""

    accepted: bool
    code: str
    reason: str
    scores: dict[str, float] = field(default_factory=dict)
    stage: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "code": self.code, "reason": self.reason,
                "stage": self.stage, "scores": {k: round(float(v), 4) for k, v in self.scores.items()}}


def _refuse(code: str, reason: str, stage: str, **scores: float) -> GateVerdict:
    return GateVerdict(False, code, reason, dict(scores), stage)


def check_header(image: Any) -> GateVerdict | None:
    """Stage 1: refuse from metadata alone (modality, body part, view, the loader's colour
    fraction); None = no objection. No TensorFlow. ``image`` is an
    :class:`~xrayviewer.imaging.XRayImage` (anything with its ``metadata`` fields)."""
    md = getattr(image, "metadata", None)
    if md is None:
        return None
    modality = (md.modality or "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        what = MODALITY_NAMES.get(modality, f"a {modality} image")
        return _refuse("not_radiograph_modality",
                       f"Not a chest X-ray: the file says it is {what} (modality {modality}).", "header")
    body = (md.body_part or "").strip().upper()
    if body and body not in CHEST_BODY_PARTS:
        return _refuse("not_chest_body_part",
                       f"Not a chest X-ray: the file says the body part is {body}.", "header")
    view = (md.view_position or "").strip().upper()
    if view in LATERAL_VIEWS:
        return _refuse("lateral_view",
                       f"Lateral view (view position {view}): the models only read frontal "
                       "(PA/AP) chest films.", "header")
    frac = getattr(md, "colour_fraction", None)
    if frac is not None and frac > COLOUR_PIXEL_FRACTION:
        return _refuse("colour_photo",
                       f"Not a radiograph: this is a colour picture ({frac:.0%} of pixels "
                       "coloured), not an X-ray.", "header", colour_fraction=frac)
    return None


def grey_pixels(image: Any) -> np.ndarray:
    """What the gate CNN sees: an ``XRayImage``'s display image, or a bare array (the classifier
    takes the film itself and its card picks the input)."""
    return np.asarray(getattr(image, "display", image))


@dataclass(frozen=True)
class GateCard:
    """The gate's part of its card (schema 1): its ``labels`` name :data:`GATE_CLASSES` in the
    network's output order (``threshold``, common to every card, is the minimum P(frontal))."""

    classes: tuple[str, ...]

    @classmethod
    def from_fields(cls, f: CardFields) -> GateCard:
        return cls(f.label_order("labels", GATE_CLASSES))


class DomainGate(BundledModel):
    """Loads the gate CNN (verified against its card) and applies all three stages."""

    model_name = MODEL_NAME
    card_section = GateCard

    def __init__(self, name: str | None = None, models_root: Path | None = None) -> None:
        super().__init__(name, models_root)
        # Minimum P(frontal chest X-ray) to pass stage 2 (chosen on validation).
        self.threshold = float(self.card.threshold)

    def _cnn_probabilities(self, grays: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """(N, 3) softmax over :data:`GATE_CLASSES`."""
        out = []
        for start in range(0, len(grays), batch_size):
            x = np.stack([prepare_for_model(g, self.input_size) for g in grays[start:start + batch_size]])
            out.append(softmax(forward(self._infer, x)))
        return np.concatenate(out) if out else np.zeros((0, len(GATE_CLASSES)))

    def _cnn_verdict(self, probs: np.ndarray) -> GateVerdict:
        """Stage 2 from the gate probabilities: a refusal, or a provisional acceptance."""
        scores = {k: float(v) for k, v in zip(CNN_SCORES, np.asarray(probs, np.float64))}
        if scores["p_frontal"] >= self.threshold:
            return GateVerdict(True, ACCEPTED, ACCEPTED_REASON, scores, "gate_cnn")
        if scores["p_lateral"] >= scores["p_other"]:
            return _refuse("lateral_view", "Looks like a lateral chest film: the models only "
                           "read frontal (PA/AP) chest X-rays.", "gate_cnn", **scores)
        return _refuse("not_chest_xray", "Does not look like a chest X-ray (the image-type "
                       "check scored it as something else).", "gate_cnn", **scores)

    def screen(self, images: Sequence[Any]) -> list[GateVerdict]:
        """Stages 1-2 for a batch of ``XRayImage`` (or bare 2-D grey arrays: no header stage):
        header checks, then one batched CNN pass over the images they did not refuse.

        An accepted verdict here is provisional: pass it to :meth:`confirm` with the image's
        classifier embedding for the final one."""
        verdicts: list[GateVerdict | None] = []
        for image in images:
            if grey_pixels(image).ndim != 2:
                verdicts.append(_refuse("not_chest_xray", "Not a grey-scale 2-D image.", "header"))
            else:
                verdicts.append(check_header(image))
        todo = [i for i, v in enumerate(verdicts) if v is None]
        if todo:
            probs = self._cnn_probabilities([grey_pixels(images[i]) for i in todo])
            for i, p in zip(todo, probs):
                verdicts[i] = self._cnn_verdict(p)
        return [v for v in verdicts if v is not None]

    @staticmethod
    def confirm(verdict: GateVerdict, embedding: np.ndarray, stats: dict[str, np.ndarray] | None) -> GateVerdict:
        """Stage 3 on a provisional acceptance from :meth:`screen`: the Mahalanobis distance of
        the classifier's embedding to its training embeddings (``stats``, from the classifier's
        card; None skips the stage). Refusals are returned unchanged."""
        if not verdict.accepted:
            return verdict
        if stats is not None:
            d = float(mahalanobis(embedding, stats["mean"], stats["precision"])[0])
            thr = float(stats["threshold"])
            if d > thr:
                return _refuse("out_of_distribution",
                               f"Too far from the training data (feature distance {d:.1f} > "
                               f"{thr:.1f}): the scores would not be reliable.", "mahalanobis",
                               distance=d, threshold=thr)
        return replace(verdict, stage="all")

    def check_batch(self, images: Sequence[Any], classifier: Any, batch_size: int = 64) -> list[GateVerdict]:
        """The whole sequence with a classifier pass of its own: :meth:`screen`, the
        classifier's embedding of each image it passed, :meth:`confirm`."""
        verdicts = self.screen(images)
        todo = [i for i, v in enumerate(verdicts) if v.accepted]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            scored = classifier.predict_batch([images[i] for i in chunk])
            for i, res in zip(chunk, scored):
                verdicts[i] = self.confirm(verdicts[i], res.embedding, classifier.embedding_stats)
        return verdicts
