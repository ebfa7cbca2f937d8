"""The one analysis pipeline behind the GUI, the CLI and batch.

Stages, in order, each batched across images and separated by cancel checks:

1. gate stages 1-2 (header checks, then the image-type CNN; ``DomainGate.screen``): refuses
   what the models were not trained on;
2. lungs (U-Net) -> right/left label mask at full resolution;
3. classifier -> calibrated probabilities; its embedding feeds the gate's last check
   (Mahalanobis distance to the training data, ``DomainGate.confirm``); Grad-CAM heatmap
   masked to the lungs;
4. opacity generator -> probability map, mask, regions, per-lung involvement, severity;
5. tuberculosis head (optional model) on the classifier's feature maps -> calibrated
   P(TB), TB-positive at its operating point, a lung-masked heatmap.

Models load lazily, once, each verified against its card (sha256). Use one Analyzer from
one worker thread at a time (a lock serialises calls).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..imaging import XRayImage
from ..modellayer.preprocessing import film_input
from .control import CancelToken, ProgressFn, report
from .result import AnalysisResult, ModelInfo

log = logging.getLogger(__name__)

def _model_classes() -> tuple[Any, ...]:
    """The pipeline's models, in pipeline order (no TensorFlow until one is instantiated)."""
    from ..modellayer.classifier import DiseaseClassifier
    from ..modellayer.gate import DomainGate
    from ..modellayer.lung import LungSegmenter
    from ..modellayer.opacity import OpacityDetector
    from ..modellayer.tuberculosis import TuberculosisHead

    # New models are appended: the order is the "models" column's and the resume key's.
    return (DomainGate, LungSegmenter, DiseaseClassifier, OpacityDetector, TuberculosisHead)


def model_names() -> tuple[str, ...]:
    """The bundled models the pipeline uses, in pipeline order (names owned by each module)."""
    return tuple(m.model_name for m in _model_classes())


def read_model_card(name: str, root: Path | None = None) -> Any:
    """A pipeline model's card, checked against the schema with that model's own section
    (no TensorFlow): a card the code would refuse at load is refused here already."""
    from ..modellayer.modelstore import read_card

    sections = {m.model_name: m.card_section for m in _model_classes()}
    return read_card(name, root, sections[name])


def optional_model_names() -> tuple[str, ...]:
    """Models whose absence (no card at all) only disables their stage, with a warning on
    every result. A present but damaged model is always an error."""
    from ..modellayer import opacity, tuberculosis

    return (opacity.MODEL_NAME, tuberculosis.MODEL_NAME)


def _bundled(name: str, root: Path | None) -> bool:
    from ..modellayer.modelstore import CARD_FILE, models_dir

    return ((root or models_dir()) / name / CARD_FILE).is_file()


OPACITY_MISSING = "opacity model not installed in this build: no opacity map, involvement or severity"
TB_MISSING = "tuberculosis model not installed in this build: no tuberculosis score"
STAGES = ("Loading models", "Checking the image", "Segmenting lungs", "Scoring", "Finding opacities",
          "Scoring tuberculosis")


class Analyzer:
    """Loads the bundled models on first use and analyses images."""

    def __init__(self, *, device: str = "auto", models_root: Path | None = None, heatmap: bool = True) -> None:
        self.device_preference = device
        self.models_root = models_root
        self.heatmap = heatmap
        self.device: str | None = None
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # one load at a time (preload thread, analysis)
        self._preload: threading.Thread | None = None
        self._gate: Any = None
        self._lung: Any = None
        self._classifier: Any = None
        self._opacity: Any = None
        self._tb: Any = None
        self._infos: tuple[ModelInfo, ...] | None = None

    # ------------------------------------------------------------------ models
    def model_infos(self) -> tuple[ModelInfo, ...]:
        """Name, version and sha256 of every bundled model, from the cards (no TensorFlow)."""
        if self._infos is None:
            infos = []
            for name in model_names():
                if name in optional_model_names() and not _bundled(name, self.models_root):
                    continue
                card = read_model_card(name, self.models_root)
                infos.append(ModelInfo(card.name, str(card.version), card.sha256))
            self._infos = tuple(infos)
        return self._infos

    def models_key(self) -> str:
        return ";".join(f"{m.label()}:{m.sha256[:12]}" for m in self.model_infos())

    @property
    def loaded(self) -> bool:
        return self._classifier is not None

    @property
    def has_opacity(self) -> bool:
        return self._opacity is not None

    @property
    def has_tuberculosis(self) -> bool:
        return self._tb is not None

    def preload(self) -> None:
        """Start loading TensorFlow and the models in a background thread and return at once,
        so that decoding the first files overlaps the start-up (the batch engine calls it). A
        failure is not raised here: the analysis's own :meth:`load` raises it."""
        if self.loaded or self._preload is not None:
            return

        def run() -> None:
            try:
                self.load()
            except Exception as exc:  # noqa: BLE001 - reported by the analysis's own load()
                log.debug("preloading the models failed (%s); the analysis will report it", exc)

        # Not a daemon: a process that ends before the models were needed (every file failed
        # to decode) waits for the import to finish rather than tearing it down half-way.
        self._preload = threading.Thread(target=run, name="xrayviewer-preload", daemon=False)
        self._preload.start()

    def load(self, progress: ProgressFn | None = None) -> None:
        """Configure the device and load all models (idempotent; a load already running in
        another thread, e.g. :meth:`preload`'s, is waited for)."""
        if self.loaded:
            return
        with self._load_lock:
            if self.loaded:
                report(progress, STAGES[0], 1.0)
                return
            self._load(progress)

    def _load(self, progress: ProgressFn | None) -> None:
        from ..modellayer.classifier import DiseaseClassifier
        from ..modellayer.gate import DomainGate
        from ..modellayer.lung import LungSegmenter
        from ..modellayer.opacity import MODEL_NAME as OPACITY
        from ..modellayer.opacity import OpacityDetector
        from ..modellayer.tuberculosis import MODEL_NAME as TB
        from ..modellayer.tuberculosis import TuberculosisHead
        from .device import configure_device

        report(progress, STAGES[0], 0.0)
        self.model_infos()  # fail early, with the card's file name, if one is missing
        self.device = configure_device(self.device_preference)
        gate = DomainGate(models_root=self.models_root)
        report(progress, STAGES[0], 0.25)
        lung = LungSegmenter(models_root=self.models_root)
        report(progress, STAGES[0], 0.5)
        opacity = None
        if _bundled(OPACITY, self.models_root):
            opacity = OpacityDetector(models_root=self.models_root)
        else:
            log.warning(OPACITY_MISSING)
        report(progress, STAGES[0], 0.75)
        classifier = DiseaseClassifier(models_root=self.models_root, lung_segmenter=lung)
        tb = None
        if _bundled(TB, self.models_root):
            tb = TuberculosisHead(classifier, models_root=self.models_root)
        else:
            log.warning(TB_MISSING)
        report(progress, STAGES[0], 0.85)
        t = time.perf_counter()
        self._warm_up(gate, lung, classifier, opacity)
        log.info("inference graphs ready in %.2f s", time.perf_counter() - t)
        # Assigned together, last: a failure above leaves the Analyzer unloaded, not half-loaded.
        self._gate, self._lung, self._opacity, self._tb = gate, lung, opacity, tb
        self._classifier = classifier
        report(progress, STAGES[0], 1.0)
        log.info("models loaded on %s", self.device)

    def _warm_up(self, gate: Any, lung: Any, classifier: Any, opacity: Any) -> None:
        """Build each model's inference graph (``modelstore.GraphInference``) now, with a blank
        film through every stage, rather than in the first analysis: the batch engine's
        preload and the viewer's start-up load the models in the background, so the first
        result waits for none of it. Nothing to do with graphs off (``XRAYVIEWER_GRAPH=0``)."""
        from ..modellayer.modelstore import graph_enabled

        if not graph_enabled():
            return
        blank = np.zeros((lung.input_size, lung.input_size), np.uint8)
        gate.screen([blank])
        labels = lung.segment_batch([blank])[0].labels
        classifier.predict_batch([blank], lung_masks=[labels > 0], heatmap=self.heatmap)
        if opacity is not None:
            opacity.analyze_batch([blank], [labels])

    # ------------------------------------------------------------------ analysis
    def analyze(self, image: XRayImage, *, progress: ProgressFn | None = None,
                cancel: CancelToken | None = None) -> AnalysisResult:
        return self.analyze_batch([image], progress=progress, cancel=cancel)[0]

    def analyze_batch(self, images: Sequence[XRayImage], *, progress: ProgressFn | None = None,
                      cancel: CancelToken | None = None) -> list[AnalysisResult]:
        cancel = cancel or CancelToken()
        with self._lock:
            cancel.check()
            t0 = time.perf_counter()
            self.load(progress)
            load_s = time.perf_counter() - t0
            return self._run(list(images), progress, cancel, load_s)

    def _run(self, images: list[XRayImage], progress: ProgressFn | None, cancel: CancelToken,
             load_s: float) -> list[AnalysisResult]:
        n = len(images)
        if n == 0:
            return []
        timings: list[dict[str, float]] = [{} for _ in images]
        if load_s > 0.01:
            for t in timings:
                t["load_models"] = load_s / n

        # 1. gate stages 1-2: header checks, then the image-type CNN on what is left
        report(progress, STAGES[1], 0.0)
        t = time.perf_counter()
        verdicts = self._gate.screen(images)
        self._split(timings, "gate", time.perf_counter() - t, range(n))
        cancel.check()

        # 2. lungs
        todo = [i for i in range(n) if verdicts[i].accepted]
        report(progress, STAGES[2], 0.25)
        t = time.perf_counter()
        lungs: dict[int, Any] = {}
        # One model input per film (xrayviewer.modellayer.preprocessing): modality values, never the
        # display window; each model takes the normalisation its card names from it.
        films = {i: film_input(images[i], sizes=(self._lung.input_size,)) for i in todo}
        if todo:
            for i, res in zip(todo, self._lung.segment_batch([films[i] for i in todo])):
                lungs[i] = res
        self._split(timings, "lungs", time.perf_counter() - t, todo)
        cancel.check()

        # 3. classifier (+ gate stage 3 on its embedding, + heatmap)
        report(progress, STAGES[3], 0.5)
        t = time.perf_counter()
        scores: dict[int, Any] = {}
        if todo:
            # One batched pass gives scores, the embedding for the gate and (if asked) the
            # Grad-CAM heatmaps; a heatmap of an image the gate then refuses is discarded.
            # The classifier takes the film (its card's normalisation picks the display image
            # or the robust input from it).
            batch = self._classifier.predict_batch([films[i] for i in todo],
                                                   lung_masks=[lungs[i].mask for i in todo],
                                                   heatmap=self.heatmap)
            for i, res in zip(todo, batch):
                verdicts[i] = self._gate.confirm(verdicts[i], res.embedding, self._classifier.embedding_stats)
                scores[i] = res
        accepted = [i for i in todo if verdicts[i].accepted]
        self._split(timings, "classifier", time.perf_counter() - t, todo)
        cancel.check()

        # 4. opacity
        report(progress, STAGES[4], 0.75)
        t = time.perf_counter()
        opac: dict[int, Any] = {}
        if accepted and self._opacity is not None:
            from ..modellayer.opacity import apply_film_rule

            for i, res in zip(accepted, self._opacity.analyze_batch([films[i] for i in accepted],
                                                                    [lungs[i].labels for i in accepted])):
                # The card's film-level rule: regions only where the classifier agrees.
                opac[i] = apply_film_rule(res, self._opacity.film_rule, scores[i].top_class)
        self._split(timings, "opacity", time.perf_counter() - t, accepted)
        cancel.check()

        # 5. tuberculosis head: its own pass of the classifier's network on the same input
        tbs: dict[int, Any] = {}
        if accepted and self._tb is not None:
            report(progress, STAGES[5], 0.9)
            t = time.perf_counter()
            for i, res in zip(accepted, self._tb.score_batch([films[i] for i in accepted],
                                                             [lungs[i].mask for i in accepted],
                                                             heatmap=self.heatmap)):
                tbs[i] = res
            self._split(timings, "tuberculosis", time.perf_counter() - t, accepted)
        report(progress, "Done", 1.0)

        infos = self.model_infos()
        out = []
        for i, img in enumerate(images):
            base = dict(source=img.source, file_sha256=img.file_sha256, pixel_sha256=img.pixel_sha256(),
                        image_shape=img.shape, models=infos, timings=timings[i], warnings=tuple(img.warnings))
            if not verdicts[i].accepted:
                lung = lungs.get(i)
                out.append(AnalysisResult(gate=verdicts[i], lung_labels=lung.labels if lung else None, **base))
                continue
            cls, op, lung, tb = scores[i], opac.get(i), lungs[i], tbs.get(i)
            probs = {c: float(p) for c, p in zip(cls.labels, cls.probabilities)}
            if op is None:
                base["warnings"] = tuple(base["warnings"]) + (OPACITY_MISSING,)
            elif op.withheld_regions:
                from ..modellayer.opacity import withheld_message

                base["warnings"] = tuple(base["warnings"]) + (
                    withheld_message(op.withheld_regions, probs.get("Normal")),)
            if tb is None:
                base["warnings"] = tuple(base["warnings"]) + (TB_MISSING,)
            out.append(AnalysisResult(
                gate=verdicts[i],
                probabilities=probs,
                predicted_class=cls.top_class,
                operating_point=dict(cls.thresholds),
                covid_positive=cls.flagged.get("COVID-19"),
                heatmap=cls.heatmap,
                lung_labels=lung.labels,
                opacity_mask=op.mask if op else None,
                regions=tuple(op.regions) if op else (),
                involvement_pct=dict(op.involvement_pct) if op else None,
                severity=op.grade if op else None,
                opacity_withheld_regions=op.withheld_regions if op else None,
                prob_tuberculosis=tb.probability if tb else None,
                tb_positive=tb.positive if tb else None,
                tb_operating_point=tb.threshold if tb else None,
                tb_heatmap=tb.heatmap if tb else None,
                **base,
            ))
        return out

    @staticmethod
    def _split(timings: list[dict[str, float]], stage: str, seconds: float, idx: Sequence[int]) -> None:
        idx = list(idx)
        for i in idx:
            timings[i][stage] = seconds / max(1, len(idx))


def require_models(models_root: Path | None = None) -> list[str]:
    """Names of bundled models that are missing or fail their card check (cheap, no TF)."""
    from ..modellayer.modelstore import verify_weights

    bad = []
    for name in model_names():
        if name in optional_model_names() and not _bundled(name, models_root):
            continue
        try:
            verify_weights(read_model_card(name, models_root))
        except ModelError as exc:
            bad.append(f"{name}: {exc}")
    return bad
