"""Per-source evaluation of the bundled lung and opacity models (``evaluate-sources``).

One table, one row per source and subset: how many films, lung Dice where the source has
lung outlines, opacity Dice per film and pooled where it has opacity masks, the share of
films with any opacity region, and how often the severity grade agrees with the grade of
the ground truth (for films known to be normal the truth is "none").

Every film goes through the app's own path -- :func:`xrayviewer.modellayer.preprocessing.film_input`
(DICOMs through :func:`xrayviewer.imaging.load_image`), :class:`xrayviewer.modellayer.lung.LungSegmenter`
and :class:`xrayviewer.modellayer.opacity.OpacityDetector` from a models folder -- so the table
measures what a user gets (the domain gate is not applied: the table is about the models).

Which films: COVID-QU-Ex Val; the *val* part of NIH and ieee8023 (patient-disjoint from what
trained); all Shenzhen films (never in opacity training; the lung model trained on the
Shenzhen train part, so its lung Dice is reported on the val part); all GeneralBlockchain
films (radiologist outlines, another convention); the real chest DICOMs of ``dicom/``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..modellayer.postprocess import split_lungs
from ..modellayer.preprocessing import film_input, resize
from .datasets import COVID, NORMAL, OTHER, TUBERCULOSIS, Record, read_all, read_mask
from .metrics import segmentation_metrics
from .splits import read_split, rel_key, select

log = logging.getLogger(__name__)

CHEST_DICOMS = ("RG1_J2KI.dcm", "966_fixed.dcm", "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
                "Fake_MONOHR1.dcm", "dx_image.dcm")
FRONTAL = ("PA", "AP", "AP Supine")


def _resized_mask(path: str | None, shape: tuple[int, int]) -> np.ndarray | None:
    if not path:
        return None
    m = read_mask(path)
    if m.shape != shape:
        m = resize(m.astype(np.uint8), shape, nearest=True) > 0
    return m


def _truth_grade(truth: np.ndarray, truth_lung: np.ndarray | None, min_fraction: float) -> str:
    from ..modellayer.opacity import involvement, min_area_px, severity_grade

    if truth_lung is None:
        truth_lung = truth.copy()
    labels = split_lungs(truth_lung)
    _, _, pct = involvement(truth & (labels > 0), labels)
    return severity_grade(pct["total"], int(np.count_nonzero(truth)) >= min_area_px(truth.shape, min_fraction))


def film_rows(films: list[tuple[str, Any, Record | None]], segmenter: Any, detector: Any,
              batch: int = 16, classifier: Any = None) -> list[dict[str, Any]]:
    """Per-film figures through the app's models. ``films``: (key, image or grey array, record).

    With a ``classifier`` and an opacity card that names a film-level rule, the rule is
    applied as the app applies it (:func:`xrayviewer.modellayer.opacity.apply_film_rule` on the
    classifier's top class for the film's display image and lung mask).
    """
    from ..modellayer.opacity import apply_film_rule

    rows: list[dict[str, Any]] = []
    for start in range(0, len(films), batch):
        chunk = films[start:start + batch]
        inputs = [film_input(src) for _, src, _ in chunk]
        lungs = segmenter.segment_batch(inputs)
        ops = detector.analyze_batch(inputs, [lr.labels for lr in lungs])
        tops: list[str | None] = [None] * len(chunk)
        if classifier is not None and detector.film_rule:
            # the film itself: the classifier's card picks its input (display image or robust)
            tops = [c.top_class for c in classifier.predict_batch(inputs, lung_masks=[lr.mask for lr in lungs])]
            ops = [apply_film_rule(op, detector.film_rule, top) for op, top in zip(ops, tops)]
        for (key, _src, rec), fi, lr, op, top in zip(chunk, inputs, lungs, ops, tops):
            row: dict[str, Any] = {"image": key, "any_region": int(op.has_opacity), "grade": op.grade,
                                   "involvement_pct": round(op.involvement_pct["total"], 2)}
            if top is not None:
                row.update(top_class=top, withheld_regions=op.withheld_regions)
            truth_lung = _resized_mask(rec.lung_mask, fi.shape) if rec else None
            if truth_lung is not None:
                row["lung_dice"] = round(segmentation_metrics(lr.mask, truth_lung)["dice"], 5)
            truth = _resized_mask(rec.infection_mask, fi.shape) if rec else None
            if truth is not None:
                m = segmentation_metrics(op.mask, truth)
                row.update(opacity_dice=round(m["dice"], 5), truth_px=int(truth.sum()),
                           tp=int(np.count_nonzero(op.mask & truth)), pred_px=int(op.mask.sum()),
                           truth_grade=_truth_grade(truth, truth_lung, detector.min_region_fraction))
            elif rec is not None and rec.label == NORMAL:
                row["truth_grade"] = "none"
            rows.append(row)
    return rows


def summarize(source: str, subset: str, rows: list[dict[str, Any]], note: str = "") -> dict[str, Any]:
    """One table row from per-film rows."""
    def mean(key: str, where: Iterable[dict] | None = None) -> float | None:
        vals = [r[key] for r in (where if where is not None else rows) if key in r]
        return round(float(np.mean(vals)), 4) if vals else None

    lesion = [r for r in rows if r.get("truth_px", 0) > 0]
    tp = sum(r["tp"] for r in lesion)
    denom = sum(r["pred_px"] + r["truth_px"] for r in lesion)
    graded = [r for r in rows if "truth_grade" in r]
    return {
        "source": source, "subset": subset, "n": len(rows),
        "lung_dice": mean("lung_dice"),
        "opacity_dice_per_film": mean("opacity_dice", lesion) if lesion else None,
        "opacity_dice_pooled": round(2 * tp / denom, 4) if lesion and denom else None,
        "any_region_rate": round(float(np.mean([r["any_region"] for r in rows])), 4) if rows else None,
        "n_any_region": int(sum(r["any_region"] for r in rows)),
        # films whose regions the film-level rule withheld (absent without a rule)
        "n_withheld": int(sum(1 for r in rows if r.get("withheld_regions"))) if any(
            "withheld_regions" in r for r in rows) else None,
        # the disease classifier's top class is not Normal (absent without a classifier)
        "called_not_normal_rate": round(float(np.mean([r["top_class"] != NORMAL for r in rows])), 4)
        if rows and all("top_class" in r for r in rows) else None,
        "severity_agreement": round(float(np.mean([r["grade"] == r["truth_grade"] for r in graded])), 4)
        if graded else None,
        "note": note,
    }


def run(data_dir: Path, split_file: Path, out: Path, models_dir: Path | None = None,
        max_images: int | None = None, into_cards: bool = False,
        classifier_dir: Path | None = None) -> dict[str, Any]:
    """Evaluate every source; write ``out`` (JSON with per-film rows) and a Markdown table."""
    from ..imaging import load_image
    from ..modellayer.lung import LungSegmenter
    from ..modellayer.opacity import OpacityDetector

    segmenter = LungSegmenter(models_root=models_dir)
    detector = OpacityDetector(models_root=models_dir)
    classifier = None
    if detector.film_rule:
        from ..modellayer.classifier import DiseaseClassifier

        # The rule's classifier is the bundled one (models/), as in the app.
        classifier = DiseaseClassifier(models_root=classifier_dir, lung_segmenter=segmenter)
    split = read_split(split_file)
    recs = read_all(data_dir, ("covid-qu-ex", "nih", "ieee8023", "generalblockchain", "tb-shenzhen"), max_images)

    def films(rs: list[Record]) -> list[tuple[str, Any, Record | None]]:
        # Through the app's loader, so the classifier sees the display image it sees in the app.
        return [(rel_key(r, data_dir), load_image(Path(r.image)), r) for r in rs]

    val = select(recs, split, "val", data_dir)
    groups: list[tuple[str, str, list[Record], str]] = []
    qu = [r for r in val if r.source == "covid-qu-ex"]
    for label in (COVID, NORMAL, OTHER):
        groups.append(("covid-qu-ex", f"Val {label}", [r for r in qu if r.label == label],
                       "checkpoints chosen here"))
    nih = [r for r in val if r.source == "nih"]
    groups.append(("nih", "val No_findings", [r for r in nih if r.label == NORMAL], "patient-disjoint from training"))
    groups.append(("nih", "val Pneumonia", [r for r in nih if r.label == OTHER], "empty in the COVID-QU-Ex convention"))
    sz = [r for r in recs if r.source == "tb-shenzhen"]
    sz_val = {rel_key(r, data_dir) for r in select(sz, split, "val", data_dir)}
    groups.append(("tb-shenzhen", "normal (all)", [r for r in sz if r.label == NORMAL],
                   "never in opacity training; lung Dice over all films (train part trained the lung model)"))
    groups.append(("tb-shenzhen", "normal (val part)", [r for r in sz if r.label == NORMAL and rel_key(r, data_dir) in sz_val],
                   "unseen by both models"))
    groups.append(("tb-shenzhen", "tuberculosis (all)", [r for r in sz if r.label == TUBERCULOSIS],
                   "TB opacities are not COVID infection: a region here is not an error"))
    ie = [r for r in val if r.source == "ieee8023" and (r.view or "") in FRONTAL and (r.modality or "X-ray") == "X-ray"]
    for label in (COVID, NORMAL, OTHER):
        groups.append(("ieee8023", f"val frontal {label}", [r for r in ie if r.label == label], "no masks"))
    gb = [r for r in recs if r.source == "generalblockchain"]
    groups.append(("generalblockchain", "all (radiologist outlines)", gb,
                   "whole-lung and GGO convention of another annotator (DATA.md)"))

    table: list[dict[str, Any]] = []
    per_film: dict[str, list[dict[str, Any]]] = {}
    for source, subset, rs, note in groups:
        if not rs:
            continue
        rows = film_rows(films(rs), segmenter, detector, classifier=classifier)
        per_film[f"{source} {subset}"] = rows
        table.append(summarize(source, subset, rows, note))
        log.info("%s %s: %s", source, subset, {k: v for k, v in table[-1].items() if k not in ("note",)})
    dicoms = []
    for name in CHEST_DICOMS:
        path = Path(data_dir) / "dicom" / name
        if path.is_file():
            dicoms.append((f"dicom/{name}", load_image(path), None))
    if dicoms:
        rows = film_rows(dicoms, segmenter, detector, classifier=classifier)
        for r in rows:
            r["truth_grade"] = "none"  # adult chest films without reported pathology (DATA.md)
        per_film["dicom chest"] = rows
        table.append(summarize("dicom", "real chest DICOMs", rows,
                               "RG1_J2KI, 966_fixed, SIIM sample, its MONOCHROME1 twin, highdicom DX"))
    models = {"lung": f"{segmenter.card.name} {segmenter.card.version}",
              "opacity": f"{detector.card.name} {detector.card.version}"}
    if classifier is not None:
        models["film_rule"] = f"{detector.film_rule} ({classifier.card.name} {classifier.card.version})"
    result = {"models": models,
              "split": str(split_file), "table": table, "per_film": per_film}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(table))
    log.info("wrote %s", out)
    if into_cards:
        for card in (segmenter.card, detector.card):
            write_into_card(card.directory / "card.json", result)
    return result


def write_into_card(card_path: Path, result: dict[str, Any]) -> None:
    """Put the per-source table (not the per-film rows) into a model card: the figures go
    with the model they describe. The weights and their hash are untouched."""
    card = json.loads(card_path.read_text())
    card["per_source_evaluation"] = {
        "command": "python -m xrayviewer.training evaluate-sources", "models": result["models"],
        "split": result["split"], "table": result["table"]}
    card_path.write_text(json.dumps(card, indent=1, default=float))
    log.info("per-source table written into %s", card_path)


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.1f} %" if pct else f"{v:.3f}"


def markdown(table: list[dict[str, Any]]) -> str:
    """The per-source table in Markdown (README, cards)."""
    rule = any(t.get("n_withheld") is not None for t in table)
    lines = ["| source | films | n | lung Dice | opacity Dice per film (pooled) | films with a region | "
             + ("films whose regions the film rule withheld | classifier: not Normal | " if rule else "")
             + "severity agrees |",
             "|---|---|---|---|---|---|" + ("---|---|" if rule else "") + "---|"]
    for t in table:
        od = "-" if t["opacity_dice_per_film"] is None else (
            f"{t['opacity_dice_per_film']:.3f} ({_fmt(t['opacity_dice_pooled'])})")
        wh = (f"{t.get('n_withheld') if t.get('n_withheld') is not None else '-'} | "
              f"{_fmt(t.get('called_not_normal_rate'), True)} | ") if rule else ""
        lines.append(f"| {t['source']} | {t['subset']} | {t['n']} | {_fmt(t['lung_dice'])} | {od} | "
                     f"{t['n_any_region']} ({_fmt(t['any_region_rate'], True)}) | {wh}"
                     f"{_fmt(t['severity_agreement'], True)} |")
    return "\n".join(lines) + "\n"
