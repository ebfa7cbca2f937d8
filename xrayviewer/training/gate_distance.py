"""The domain gate's last stage, fitted on frontal films of every source (README "Domain gate").

Stage 3 of :class:`~xrayviewer.modellayer.gate.DomainGate` refuses a film whose classifier
embedding lies too far (Mahalanobis distance) from the training films' embeddings. Its v1 statistics were
fitted on the classifier's own training set (COVID-QU-Ex, NIH, labelled ieee8023 rows) with
the threshold at the 99.5 % quantile of the pooled validation distances, so a source that is
a small part of that pool (or none of it: Shenzhen, unlabelled ieee8023 rows) could lose far
more than 0.5 % of its ordinary frontal films.

``python -m xrayviewer.training fit-gate-distance --split runs/split.json`` refits it:

* every frontal film of every source (:data:`SOURCES`) is loaded **as the app loads it**
  (``load_image``), screened by gate stages 1-2 (``DomainGate.screen``) and embedded by the
  bundled classifier (``predict_batch``) -- the app's own path, so the distances are the ones
  the app computes;
* mean and (shrunk) covariance from the **train** parts of the patient-disjoint split of
  every source, pooled (:func:`fit_stats`; ``--weighting balanced`` weights each source
  equally instead: measured and recorded as the alternative, it kept fewer of the train-side
  films under its own threshold);
* threshold from the **val** parts: for each source the distance below which at least
  :data:`PASS_RATE` of its films lie; the threshold is the largest of these (plus
  :data:`TOLERANCE`, so that float rounding of another batch composition cannot refuse the
  film that sets it), so every source passes at least that share (:func:`per_source_threshold`);
* the whole gate (``screen`` + ``confirm``, the Analyzer's order) is measured per source and
  side before (the bundled statistics) and after, plus a cross-fitted estimate of the pass
  rate (threshold from one half of each source's val films, measured on the other half);
* every non-chest, lateral, CT, MR, mask, synthetic and colour case of the data bundle (and
  the tests' synthetic cases) is run through the whole gate with the new statistics: which
  stage refuses it, and whether stage 3 alone would (its distance against the threshold);
* writes ``models/<classifier>/embedding_stats.npz`` and the classifier card's
  ``embedding_stats_sha256`` and ``mahalanobis`` block (with its own ``version`` and date:
  the network weights, hence the classifier's version, are unchanged), and a report under
  ``--out``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..modellayer.common import mahalanobis
from .datasets import Record, _spread, is_frontal_xray, read_all
from .metrics import refusal_counts
from .splits import read_split, rel_key

log = logging.getLogger(__name__)

SOURCES = ("covid-qu-ex", "nih", "ieee8023", "generalblockchain", "tb-shenzhen")
PASS_RATE = 0.995
SHRINKAGE = 0.05
STATS_FILE = "embedding_stats.npz"
MASKS_PER_KIND = 120
TOLERANCE = 0.01  # added to the threshold: embeddings differ by ~1e-6 between batch compositions
WEIGHTINGS = ("pooled", "balanced")
# P(frontal) thresholds of the gate CNN whose trade-off (frontal films refused vs
# out-of-domain images let through to stage 3) the report shows; the bundled one is the card's.
CNN_THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.1)


# ------------------------------------------------------------------ films
def frontal_films(data_dir: Path, split: dict, max_images: int | None = None) -> list[tuple[Record, str]]:
    """(record, "train"/"val") for every frontal film of :data:`SOURCES` the split assigns.

    Frontal: COVID-QU-Ex, NIH and Shenzhen by construction; ieee8023 and GeneralBlockchain
    rows whose metadata say X-ray PA/AP/AP supine (labelled or not: the gate does not read
    the label)."""
    a = split["assignment"]
    out = []
    for r in read_all(data_dir, SOURCES, max_images):
        side = a.get(rel_key(r, data_dir))
        if side in ("train", "val") and is_frontal_xray(r):
            out.append((r, side))
    return out


def measure(items: Sequence[Any], gate: Any, clf: Any, chunk: int = 64,
            label: str = "films") -> dict[str, Any]:
    """Gate stages 1-2 and the classifier embedding of each item (a path, bytes, an
    ``XRayImage`` or a bare grey array), loaded as the app loads files.

    Returns ``verdicts`` (the provisional ``GateVerdict`` of ``DomainGate.screen``) and
    ``embedding`` (N, D) (NaN where the image is not 2-D grey). The embedding is computed for
    every item, also those stages 1-2 refuse, so stage 3's opinion of them is known too."""
    from ..imaging import load_image
    from ..modellayer.gate import grey_pixels

    verdicts: list[Any] = []
    embs: list[np.ndarray] = []
    t0 = time.time()
    for start in range(0, len(items), chunk):
        imgs = [x if (hasattr(x, "display") or isinstance(x, np.ndarray)) else
                (load_image(x[1], name=x[0]) if isinstance(x, tuple) else load_image(x))
                for x in items[start:start + chunk]]
        verdicts.extend(gate.screen(imgs))
        grays = [grey_pixels(im) for im in imgs]
        ok = [k for k, g in enumerate(grays) if g.ndim == 2]
        e = np.full((len(imgs), 0), np.nan)
        if ok:
            # the image itself: the classifier's card picks its input (display or robust)
            res = clf.predict_batch([imgs[k] for k in ok])
            d = len(res[0].embedding)
            e = np.full((len(imgs), d), np.nan, np.float64)
            for k, rr in zip(ok, res):
                e[k] = rr.embedding
        embs.append(e)
        if (start // chunk) % 10 == 0 or start + chunk >= len(items):
            log.info("%s: %d/%d (%.0fs)", label, min(start + chunk, len(items)), len(items), time.time() - t0)
    dim = max((e.shape[1] for e in embs), default=0)
    emb = np.concatenate([e if e.shape[1] == dim else np.full((len(e), dim), np.nan) for e in embs]) \
        if embs else np.zeros((0, dim))
    return {"verdicts": verdicts, "embedding": emb}


# ------------------------------------------------------------------ fit
def fit_stats(emb: np.ndarray, groups: Sequence[str], shrinkage: float = SHRINKAGE,
              balanced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision of a shrunk shared covariance of ``emb``.

    ``balanced``: every group (source) carries the same total weight, so that a source with
    a few hundred films shapes the "training domain" as much as one with thousands. The
    covariance is shrunk ``shrinkage`` toward its mean variance (as the classifier export does)."""
    x = np.asarray(emb, np.float64)
    g = np.asarray(groups)
    if balanced:
        names, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
        w = 1.0 / (len(names) * counts[inv])
    else:
        w = np.full(len(x), 1.0 / len(x))
    mean = w @ x
    d = x - mean
    cov = (d * w[:, None]).T @ d / (1.0 - np.sum(w ** 2))  # unbiased for weighted samples
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    return mean, np.linalg.inv(cov)


def pass_quantile(d: np.ndarray, rate: float = PASS_RATE) -> float:
    """The smallest threshold t with at least ``rate`` of ``d`` <= t (the gate refuses d > t)."""
    s = np.sort(np.asarray(d, np.float64))
    k = int(np.ceil(rate * len(s) - 1e-9))
    return float(s[max(k, 1) - 1])


def per_source_threshold(d: np.ndarray, groups: Sequence[str], rate: float = PASS_RATE
                         ) -> tuple[float, dict[str, float]]:
    """Max over sources of :func:`pass_quantile`: every source passes at least ``rate``."""
    g = np.asarray(groups)
    q = {s: pass_quantile(d[g == s], rate) for s in sorted(set(g.tolist()))}
    return max(q.values()), q


def _half(keys: Sequence[str]) -> np.ndarray:
    """A fixed, hash-based half of a set of files (cross-fitting)."""
    return np.array([hashlib.sha256(k.encode()).digest()[0] % 2 == 0 for k in keys])


# ------------------------------------------------------------------ rates
def _rate(verdicts: Sequence[Any]) -> dict[str, Any]:
    n, refused, by_stage, by_code = refusal_counts(verdicts)
    return {"n": n, "refused": refused, "refusal_rate": round(refused / n, 4) if n else None,
            "pass_rate": round(1 - refused / n, 4) if n else None,
            "by_stage": dict(sorted(by_stage.items())), "by_code": dict(sorted(by_code.items()))}


def final_verdicts(provisional: Sequence[Any], emb: np.ndarray, stats: dict[str, np.ndarray] | None) -> list[Any]:
    """``DomainGate.confirm`` on each provisional verdict (the Analyzer's order)."""
    from ..modellayer.gate import DomainGate

    return [DomainGate.confirm(v, e, stats) for v, e in zip(provisional, emb)]


def rates_by_source(verdicts: Sequence[Any], sources: Sequence[str], sides: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in ("train", "val", "all"):
        sel = [i for i in range(len(verdicts)) if side == "all" or sides[i] == side]
        out[side] = {"all_sources": _rate([verdicts[i] for i in sel])}
        for s in SOURCES:
            vs = [verdicts[i] for i in sel if sources[i] == s]
            if vs:
                out[side][s] = _rate(vs)
    return out


# ------------------------------------------------------------------ out-of-domain cases
def _colour_photo_bytes(seed: int) -> tuple[bytes, bytes]:
    """The tests' colour photo (tests/test_gate.py): an 8x8 colour grid upscaled, JPEG and PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(small).resize((256, 256), Image.BICUBIC))
    jpg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(photo).save(jpg, format="JPEG", quality=90)
    Image.fromarray(photo).save(png, format="PNG")
    return jpg.getvalue(), png.getvalue()


def out_of_domain_cases(data_dir: Path, split: dict | None, masks_per_kind: int = MASKS_PER_KIND,
                        seed: int = 12345, max_images: int | None = None) -> dict[str, list[tuple[str, Any]]]:
    """Every case of the bundle (and the tests' synthetic ones) the gate must refuse, by group:
    (name, item) with item a path, ``(name, bytes)`` or a grey array. ieee8023 lateral and CT
    rows are grouped by side of ``split`` (val side = patients the gate CNN never saw), or all
    together without one; ``max_images`` caps them and the synthetic sets (smoke runs)."""
    from ..imaging import load_image
    from .gate_task import colour_pictures, synthetic_images

    dicom = data_dir / "dicom"
    ieee = read_all(data_dir, ("ieee8023",))
    groups: dict[str, list[tuple[str, Any]]] = {}
    non_chest = sorted(dicom.glob("RG2_*.dcm")) + sorted((dicom / "non_cxr").glob("*.dcm"))
    groups["non_chest_dicoms"] = [(p.name, str(p)) for p in non_chest]
    groups["non_chest_dicoms_pixels_only"] = [(p.name, load_image(p).display) for p in non_chest]
    odd = [p for p in (dicom / "dx_image.dcm", dicom / "Fake_MONOHR1.dcm") if p.is_file()]
    groups["lateral_animal_thorax_and_inverted_film_dicoms"] = [(p.name, str(p)) for p in odd]
    cap = (lambda xs: _spread(xs, max_images)) if max_images else (lambda xs: xs)
    sides = ("val", "train") if split is not None else ("all",)
    for side in sides:
        rs = [r for r in ieee if side == "all" or split["assignment"].get(rel_key(r, data_dir)) == side]
        suffix = "" if side == "all" else f"_{side}_side"
        groups[f"ieee8023_lateral{suffix}"] = cap([(rel_key(r, data_dir), r.image) for r in rs
                                                   if r.modality == "X-ray" and r.view == "L"])
        groups[f"ieee8023_ct{suffix}"] = cap([(rel_key(r, data_dir), r.image) for r in rs if r.modality == "CT"])
    mask_dirs = {
        "masks_covid_qu_ex_lung": sorted((data_dir / "covid-qu-ex").glob("*/*/lung masks/*.png")),
        # COVID-19 infection masks are all non-empty (DATA.md); the others are black squares
        "masks_covid_qu_ex_infection_nonempty": sorted((data_dir / "covid-qu-ex").glob("*/COVID-19/infection masks/*.png")),
        "masks_generalblockchain_lung": sorted((data_dir / "generalblockchain" / "lung").glob("*.png")),
        "masks_generalblockchain_ggo": sorted((data_dir / "generalblockchain" / "ggo").glob("*.png")),
        "masks_tb_shenzhen_lung": sorted((data_dir / "tb-shenzhen" / "Lung Segmentation" / "masks").glob("*.png")),
    }
    for k, ps in mask_dirs.items():
        groups[k] = [(str(p.relative_to(data_dir)), str(p))
                     for p in _spread(ps, min(masks_per_kind, max_images or masks_per_kind))]
    synth, kinds = synthetic_images(min(270, 9 * (max_images or 30)), seed)
    groups["synthetic_non_xray"] = [(f"{k}_{i}", s) for i, (s, k) in enumerate(zip(synth, kinds))]
    groups["colour_pictures"] = [(f"colour{i}.{'png' if i % 2 else 'jpg'}",
                                  (f"colour{i}.{'png' if i % 2 else 'jpg'}", b))
                                 for i, b in enumerate(colour_pictures(min(40, max_images or 40), seed))]
    jpg, png = _colour_photo_bytes(1)
    rng = np.random.default_rng(1)  # tests/test_gate.py's draws: the 8x8 colour grid, then the noise
    rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    noise = rng.integers(0, 256, (256, 256), dtype=np.uint8)
    groups["tests_synthetic_cases"] = [("photo.jpg", ("photo.jpg", jpg)), ("photo.png", ("photo.png", png)),
                                       ("uniform_noise_256", noise),
                                       ("flat_grey_256", np.full((256, 256), 128, np.uint8))]
    return groups


def measure_cases(cases: dict[str, list[tuple[str, Any]]], gate: Any, clf: Any) -> dict[str, dict[str, Any]]:
    """:func:`measure` for each group of :func:`out_of_domain_cases`."""
    out = {}
    for group, items in cases.items():
        if items:
            m = measure([it for _, it in items], gate, clf, label=group)
            out[group] = {"names": [n for n, _ in items], **m}
    return out


def _distances(emb: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    d = np.full(len(emb), np.nan)
    ok = np.isfinite(emb).all(axis=1) if emb.shape[1] else np.zeros(len(emb), bool)
    if ok.any():
        d[ok] = mahalanobis(emb[ok], stats["mean"], stats["precision"])
    return d


def ood_report(measured: dict[str, dict[str, Any]], stats: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per group: the whole gate's refusals by stage and code, and stage 3's own opinion
    (distance > threshold) of every image, also of those an earlier stage refused."""
    thr = float(stats["threshold"])
    out: dict[str, Any] = {}
    for group, m in measured.items():
        final = final_verdicts(m["verdicts"], m["embedding"], stats)
        d = _distances(m["embedding"], stats)
        files = {name: {"accepted": v.accepted, "code": v.code, "stage": v.stage,
                        "distance": None if not np.isfinite(di) else round(float(di), 2)}
                 for name, v, di in zip(m["names"], final, d)}
        fin = d[np.isfinite(d)]
        out[group] = {**_rate(final),
                      "stage3_alone_refuses": int(np.sum(fin > thr)), "stage3_n": len(fin),
                      "distance_min": round(float(np.min(fin)), 2) if len(fin) else None,
                      "distance_median": round(float(np.median(fin)), 2) if len(fin) else None,
                      # every file of a small group; of a larger one those that passed (if any)
                      "files": files if len(files) <= 12 else {k: v for k, v in files.items() if v["accepted"]}}
    return out


def cnn_tradeoff(frontal_prov: Sequence[Any], frontal_src: Sequence[str], measured: dict[str, dict[str, Any]],
                 stats: dict[str, np.ndarray], thresholds: Sequence[float] = CNN_THRESHOLDS) -> list[dict[str, Any]]:
    """What another P(frontal) threshold of the gate CNN would do: frontal films it refuses,
    and out-of-domain images (those that reach the CNN: no header refusal) it lets through to
    stage 3, and how many of those stage 3 then still refuses. Not applied: the gate card's
    threshold stays; this says what changing it would buy and cost."""
    pf = np.array([v.scores.get("p_frontal", np.nan) for v in frontal_prov])
    src = np.asarray(frontal_src)
    reached = np.isfinite(pf)
    rows = []
    for t in thresholds:
        row: dict[str, Any] = {"p_frontal_threshold": t,
                               "frontal_refused": int(np.sum(reached & (pf < t))), "frontal_n": len(pf),
                               "frontal_refused_by_source": {s: int(np.sum(reached & (pf < t) & (src == s)))
                                                             for s in SOURCES}}
        passed, still = 0, 0
        by_group = {}
        for group, m in measured.items():
            p = np.array([v.scores.get("p_frontal", np.nan) for v in m["verdicts"]])
            through = np.isfinite(p) & (p >= t)
            d = _distances(m["embedding"], stats)
            refused3 = through & (d > float(stats["threshold"]))
            passed += int(through.sum())
            still += int(refused3.sum())
            if through.any():
                by_group[group] = {"through_stage2": int(through.sum()), "refused_by_stage3": int(refused3.sum())}
        row.update({"out_of_domain_through_stage2": passed, "of_which_stage3_refuses": still,
                    "out_of_domain_accepted": passed - still, "by_group": by_group})
        rows.append(row)
    return rows


# ------------------------------------------------------------------ the command
def _load_or_measure(data_dir: Path, split: dict, gate: Any, clf: Any, out: Path,
                     max_images: int | None = None) -> dict[str, Any]:
    """Frontal films' provisional verdicts + embeddings, cached in ``out`` (keyed by the
    classifier's and gate's weights and the file list)."""
    films = frontal_films(data_dir, split, max_images)
    keys = [rel_key(r, data_dir) for r, _ in films]
    tag = hashlib.sha256(json.dumps([clf.card.sha256, gate.card.sha256, keys]).encode()).hexdigest()[:16]
    cache = out / f"frontal_{tag}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            emb, v_json = z["embedding"], z["verdicts"]
        from ..modellayer.gate import GateVerdict

        verdicts = [GateVerdict(**json.loads(str(s))) for s in v_json]
        log.info("frontal films: %d from %s", len(keys), cache)
    else:
        m = measure([r.image for r, _ in films], gate, clf, label="frontal films")
        emb, verdicts = m["embedding"], m["verdicts"]
        np.savez(cache, embedding=emb, keys=np.array(keys),
                 verdicts=np.array([json.dumps({"accepted": v.accepted, "code": v.code, "reason": v.reason,
                                                "scores": v.scores, "stage": v.stage}) for v in verdicts]))
    return {"keys": keys, "sources": [r.source for r, _ in films], "sides": [s for _, s in films],
            "embedding": emb, "verdicts": verdicts}


def run(data_dir: Path, split_file: Path, out: Path, models_dir: Path | None = None,
        classifier_name: str = "xray_classifier", gate_name: str = "xray_gate", rate: float = PASS_RATE,
        version: str = "2.0", weighting: str = "pooled", command: str = "",
        masks_per_kind: int = MASKS_PER_KIND, write: bool = True, max_images: int | None = None) -> dict[str, Any]:
    """Fit, measure and (``write``) bundle the statistics (see the module docstring)."""
    from ..modellayer import modelstore
    from ..modellayer.classifier import DiseaseClassifier
    from ..modellayer.gate import DomainGate

    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting {weighting!r} is none of {WEIGHTINGS}")
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    split = read_split(split_file)
    modelstore.clear_cache()
    from ..modellayer.lung import LungSegmenter

    # with the app's lung model: a lung-cropped classifier input needs the lung mask
    clf = DiseaseClassifier(classifier_name, models_dir, lung_segmenter=LungSegmenter(models_root=models_dir))
    gate = DomainGate(gate_name, models_dir)
    old_stats = clf.embedding_stats
    old_block = clf.card.raw.get("mahalanobis")
    f = _load_or_measure(data_dir, split, gate, clf, out, max_images)
    emb, src, side = f["embedding"], np.array(f["sources"]), np.array(f["sides"])
    prov = f["verdicts"]
    tr, va = side == "train", side == "val"
    present = [s for s in SOURCES if (va & (src == s)).any()]  # sources with val films

    # Fit on the train parts of every source; threshold on the val parts, per source.
    fits: dict[str, Any] = {}
    for w in WEIGHTINGS:
        mean, prec = fit_stats(emb[tr], src[tr], balanced=(w == "balanced"))
        stats = {"mean": mean.astype(np.float32), "precision": prec.astype(np.float32)}
        d = mahalanobis(emb, stats["mean"], stats["precision"])  # as the app computes it
        raw, q = per_source_threshold(d[va], src[va], rate)
        stats["threshold"] = np.float32(raw + TOLERANCE)
        thr = float(stats["threshold"])
        fits[w] = {"stats": stats, "d": d, "summary": {
            "threshold": round(thr, 4), "threshold_by_source_val": {s: round(v, 4) for s, v in q.items()},
            "stage3_val_pass_rate_by_source": {s: round(float(np.mean(d[va & (src == s)] <= thr)), 4) for s in present},
            "stage3_train_pass_rate_by_source": {s: round(float(np.mean(d[tr & (src == s)] <= thr)), 4)
                                                 for s in SOURCES if (tr & (src == s)).any()},
            "stage3_train_pass_rate": round(float(np.mean(d[tr] <= thr)), 4)}}
    stats, d = fits[weighting]["stats"], fits[weighting]["d"]
    thr = float(stats["threshold"])

    # Cross-fitted pass rate: threshold from one half of each source's val films, measured on
    # the other half (the in-sample val pass rate is >= rate by construction).
    half = _half(f["keys"])
    cross: dict[str, Any] = {s: {"n": 0, "passed": 0} for s in present}
    for h in (True, False):
        fit_sel, test_sel = va & (half == h), va & (half != h)
        t_h = per_source_threshold(d[fit_sel], src[fit_sel], rate)[0] + TOLERANCE
        for s in present:
            sel = test_sel & (src == s)
            cross[s]["n"] += int(sel.sum())
            cross[s]["passed"] += int((d[sel] <= t_h).sum())
    n_all = sum(c["n"] for c in cross.values())
    cross["all_sources"] = {"n": n_all, "passed": sum(c["passed"] for c in cross.values())}
    for c in cross.values():
        c["pass_rate_stage3"] = round(c["passed"] / c["n"], 4) if c["n"] else None

    before = final_verdicts(prov, emb, old_stats)
    after = final_verdicts(prov, emb, stats)
    old_d = (mahalanobis(emb, old_stats["mean"], old_stats["precision"]) if old_stats is not None
             else np.full(len(emb), np.nan))
    log.info("threshold %.3f (%s); measuring the out-of-domain cases", thr, weighting)
    measured = measure_cases(out_of_domain_cases(data_dir, split, masks_per_kind, max_images=max_images), gate, clf)
    report: dict[str, Any] = {
        "command": command, "split": str(split_file),
        "classifier": {"name": classifier_name, "version": clf.card.version, "sha256": clf.card.sha256},
        "gate_cnn": {"name": gate_name, "version": gate.card.version, "sha256": gate.card.sha256,
                     "p_frontal_threshold": gate.threshold},
        "n_films": {s: {"train": int(((src == s) & tr).sum()), "val": int(((src == s) & va).sum())}
                    for s in SOURCES if (src == s).any()},
        "fit": {"weighting": weighting, "shrinkage": SHRINKAGE, "dim": int(emb.shape[1]),
                "pass_rate_target": rate, "tolerance": TOLERANCE, **fits[weighting]["summary"],
                "alternatives": {w: v["summary"] for w, v in fits.items() if w != weighting}},
        "old_stats": {"threshold": float(old_stats["threshold"]) if old_stats is not None else None,
                      "block": old_block},
        "stage3_val_quantiles_by_source": {
            s: {q: round(float(np.quantile(d[va & (src == s)], q)), 3) for q in (0.5, 0.99, 0.995, 1.0)}
            for s in present},
        "stage3_cross_fitted_val_pass_rate": cross,
        "whole_gate_before": rates_by_source(before, src, side),
        "whole_gate_after": rates_by_source(after, src, side),
        "stages_1_2_only": rates_by_source(final_verdicts(prov, emb, None), src, side),
        "refused_after": [{"image": k, "source": s, "side": sd, "code": v.code, "stage": v.stage,
                           "scores": {kk: round(float(vv), 4) for kk, vv in v.scores.items()}}
                          for k, s, sd, v in zip(f["keys"], src, side, after) if not v.accepted],
        "refused_by_stage3_before": [{"image": k, "source": s, "side": sd, "old_distance": round(float(od), 3),
                                      "new_distance": round(float(nd), 3)}
                                     for k, s, sd, v, od, nd in zip(f["keys"], src, side, before, old_d, d)
                                     if not v.accepted and v.stage == "mahalanobis"],
        "out_of_domain": ood_report(measured, stats),
        "out_of_domain_old_stats": ({g: {k: r[k] for k in ("n", "refused", "by_stage", "stage3_alone_refuses", "stage3_n")}
                                     for g, r in ood_report(measured, old_stats).items()}
                                    if old_stats is not None else None),
        "gate_cnn_threshold_tradeoff": cnn_tradeoff(prov, src, measured, stats),
    }
    report["wall_time_s"] = round(time.time() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.md").write_text(markdown(report))
    if write:
        write_stats(clf, stats, report, version, command)
        modelstore.clear_cache()
    log.info("%s (threshold %.4f); report %s", "wrote the statistics" if write else "dry run", thr, out / "report.md")
    return report


def write_stats(clf: Any, stats: dict[str, np.ndarray], report: dict[str, Any], version: str, command: str) -> Path:
    """``embedding_stats.npz`` next to the classifier card, its sha256 and the card's
    ``mahalanobis`` block (read back through the card schema, as every export does)."""
    from ..modellayer.classifier import ClassifierCard
    from ..modellayer.modelstore import sha256_file
    from .export_common import write_card

    dest = clf.card.directory
    stats_path = dest / STATS_FILE
    np.savez(stats_path, **stats)
    card_path = dest / "card.json"
    card = json.loads(card_path.read_text())
    old = card.get("mahalanobis")
    fit = report["fit"]
    card["embedding_stats_file"] = STATS_FILE
    card["embedding_stats_sha256"] = sha256_file(stats_path)
    card["mahalanobis"] = {
        "version": version,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "note": "the distance statistics alone were refitted; the network weights (sha256) and the "
                "classifier's version are unchanged",
        "fitted_on": {
            "description": f"classifier embeddings (dim {fit['dim']}) of the frontal films on the train side of "
                           "the patient-disjoint split, every source, loaded as the app loads them; "
                           + ("each source weighted equally" if fit["weighting"] == "balanced" else "pooled")
                           + f"; covariance shrunk {SHRINKAGE:.0%} toward its mean variance",
            "train_films_by_source": {s: v["train"] for s, v in report["n_films"].items()},
        },
        "threshold": fit["threshold"],
        "threshold_rule": f"largest over sources of the smallest distance that passes >= {fit['pass_rate_target']:.1%} "
                          f"of the source's val-side frontal films, + {TOLERANCE} (float tolerance)",
        "threshold_by_source": fit["threshold_by_source_val"],
        "val_films_by_source": {s: v["val"] for s, v in report["n_films"].items()},
        "stage3_val_pass_rate_by_source": fit["stage3_val_pass_rate_by_source"],
        "stage3_train_side_pass_rate_by_source": fit["stage3_train_pass_rate_by_source"],
        "stage3_cross_fitted_val_pass_rate_by_source": {
            s: c["pass_rate_stage3"] for s, c in report["stage3_cross_fitted_val_pass_rate"].items()},
        "whole_gate_val_pass_rate_by_source": {
            s: r["pass_rate"] for s, r in report["whole_gate_after"]["val"].items()},
        "whole_gate_val_pass_rate_by_source_before": {
            s: r["pass_rate"] for s, r in report["whole_gate_before"]["val"].items()},
        "whole_gate_train_side_pass_rate_by_source": {
            s: r["pass_rate"] for s, r in report["whole_gate_after"]["train"].items()},
        "whole_gate_train_side_pass_rate_by_source_before": {
            s: r["pass_rate"] for s, r in report["whole_gate_before"]["train"].items()},
        "out_of_domain_refused": {g: {"n": r["n"], "refused": r["refused"], "by_stage": r["by_stage"],
                                      "stage3_alone_refuses": r["stage3_alone_refuses"]}
                                  for g, r in report["out_of_domain"].items()},
        "alternatives": fit["alternatives"],
        "previous": ({k: old.get(k) for k in ("version", "threshold", "threshold_rule", "fitted_on") if k in old}
                     if isinstance(old, dict) else None),
        "command": command,
    }
    write_card(dest, card, ClassifierCard)
    return stats_path


def _pct(r: dict[str, Any] | None) -> str:
    return "-" if not r else f"{r['pass_rate']:.4f} ({r['refused']})"


def markdown(report: dict[str, Any]) -> str:
    """The README's tables from a report."""
    fit, cross = report["fit"], report["stage3_cross_fitted_val_pass_rate"]
    b, a = report["whole_gate_before"], report["whole_gate_after"]
    old = report["old_stats"]["threshold"]
    lines = [(f"Stage 3 ({fit['weighting']} fit), threshold {fit['threshold']:.3f}"
              + (f" (was {old:.3f})." if old is not None else ".")), "",
             ("| source | films train / val | distance passing 99.5 % of val | stage 3 pass, val | "
              "stage 3 pass, val cross-fitted | whole gate pass, val: before -> after (refused) | "
              "whole gate pass, train side: before -> after (refused) | refused after (val + train), by stage |"),
             "|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    for s in (*SOURCES, "all_sources"):
        if s not in a["all"]:
            continue
        n_tr, n_va = a["train"].get(s, {}).get("n", 0), a["val"].get(s, {}).get("n", 0)
        c = cross.get(s, {}).get("pass_rate_stage3")
        lines.append(
            f"| {s} | {n_tr} / {n_va} | {fit['threshold_by_source_val'].get(s, nan):.2f} | "
            f"{fit['stage3_val_pass_rate_by_source'].get(s, nan):.4f} | {nan if c is None else c:.4f} | "
            f"{_pct(b['val'].get(s))} -> {_pct(a['val'].get(s))} | "
            f"{_pct(b['train'].get(s))} -> {_pct(a['train'].get(s))} | {a['all'][s]['by_stage']} |")
    lines += ["", ("| set (whole gate, new statistics) | n | refused | by stage | by code | "
              "stage 3 alone would refuse | distance min / median |"), "|---|---|---|---|---|---|---|"]
    for g, r in report["out_of_domain"].items():
        lines.append(f"| {g} | {r['n']} | {r['refused']} | {r['by_stage']} | {r['by_code']} | "
                     f"{r['stage3_alone_refuses']}/{r['stage3_n']} | {r['distance_min']} / {r['distance_median']} |")
    lines += ["", ("| gate CNN P(frontal) threshold | frontal films refused by the CNN (all sides) | "
              "out-of-domain images through the CNN | of which stage 3 refuses | accepted |"), "|---|---|---|---|---|"]
    for r in report["gate_cnn_threshold_tradeoff"]:
        lines.append(f"| {r['p_frontal_threshold']} | {r['frontal_refused']} / {r['frontal_n']} | "
                     f"{r['out_of_domain_through_stage2']} | {r['of_which_stage3_refuses']} | "
                     f"{r['out_of_domain_accepted']} |")
    return "\n".join(lines) + "\n"
