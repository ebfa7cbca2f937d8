"""Fit, compare, evaluate and export the tuberculosis head (``models/tb_head``).

The head is a logistic regression on the bundled disease classifier's last feature maps
(:mod:`xrayviewer.modellayer.tuberculosis`). Everything here is cheap (one classifier pass per film,
then numpy/scipy), so ``train-tb`` does it all in one run:

1. **Features** of every film through the app's own path (``load_image`` -> lung model ->
   classifier, the gate's three stages alongside), cached in the run folder: the Shenzhen
   films (train and val parts of the patient-disjoint split) and, for the shortcut checks,
   the validation films of the other sources plus every frontal ieee8023 No Finding film.
2. **Design comparison** on Shenzhen *train* alone (5-fold cross-validated AUC, which also
   picks each candidate's L2 strength): pooled feature vectors of the classifier's full
   input (global average = its embedding; lung-weighted average with the bundled lung
   model's mask; both concatenated) and the embedding of a lung-cropped input. The best by
   cross-validated AUC is the design; all candidates are also scored on Shenzhen val.
3. **The head**: the chosen design refitted on all of Shenzhen train; Platt scaling and the
   operating point (Youden's J) fitted on Shenzhen val, with bootstrap CIs and 2-fold
   cross-fitted figures (the val part is 133 films: in-sample calibration flatters).
4. **Shortcut checks**: share of other sources' normal films flagged, the score on their
   COVID-19 / pneumonia films, and a source probe on the embedding.

**Shortcut rule**: positives are Shenzhen tuberculosis films and negatives are Shenzhen
normal films, never another source's normals (Shenzhen is the only source with
tuberculosis, so "Shenzhen vs the rest" would be learned instead of tuberculosis).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize

from ..modellayer.tuberculosis import LABEL, MODEL_NAME, POOLINGS, TBCard, feature_maps, feature_model, pooled, sigmoid
from .classifier_metrics import auc_binary, youden_threshold
from .datasets import NORMAL, TUBERCULOSIS, Record, is_frontal_xray, read_all
from .export_common import write_card
from .runinfo import hardware_info, library_versions
from .splits import read_split, rel_key

log = logging.getLogger(__name__)

FEATURES_FILE = "features.npz"
HEAD_FILE = "head.npz"
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
CV_FOLDS = 5
N_BOOT = 2000
N_CROSSFIT = 200
# The classifier's layers the designs pool: the last map of each of its four stages
# (32x32x48, 16x16x96, 8x8x160, 8x8x160); cam_features is the one its embedding averages.
ALL_LAYERS = ("b2b_relu", "b3b_relu", "b4a_relu", "cam_features")
# Candidate designs: name -> (pooling, layers) of the classifier's full input ("crop_gap" aside).
DESIGNS = {
    "gap": ("gap", ("cam_features",)),
    "lung": ("lung", ("cam_features",)),
    "multi_gap": ("gap", ALL_LAYERS),
    "multi_lung": ("lung", ALL_LAYERS),
}
CANDIDATES = {
    "gap": "global average of the classifier's last feature map (= its 160-d embedding), full input",
    "lung": "lung-weighted average of the same map (bundled lung model's mask), full input",
    "multi_gap": "global averages of the last map of each of the classifier's 4 stages, concatenated (464-d)",
    "multi_lung": "lung-weighted averages of the same 4 maps, concatenated (464-d)",
    "crop_gap": "embedding of a lung-cropped input (crop_to_lungs, then the classifier: a second input)",
}
NOT_COMPARED = {
    "fourth_classifier_class": "a 4th class (Tuberculosis) in the disease classifier needs retraining the "
                               "classifier (~25 min of the 2-core CPU per run, plus recalibration, the gate's "
                               "embedding statistics and every card that names its sha256), not possible while "
                               "another training job holds the machine; not compared",
    "separate_cnn": "a small CNN trained from scratch on 433 Shenzhen train films is a training job of its own "
                    "(and over-fits 433 films without a pre-trained trunk); not compared",
}
CHECK_GROUPS = ("covid-qu-ex_val", "nih_val", "ieee8023_val", "ieee8023_no_finding_frontal")


# ------------------------------------------------------------------ records
def tb_records(data_dir: Path, split: dict, max_images: int | None = None) -> dict[str, list[Record]]:
    """Shenzhen train/val (TB vs normal) and the other sources' check films, by group."""
    a = split["assignment"]

    def side(r: Record) -> str | None:
        return a.get(rel_key(r, data_dir))

    sz = read_all(data_dir, ("tb-shenzhen",), max_images)
    others = read_all(data_dir, ("covid-qu-ex", "nih", "ieee8023"), max_images)
    groups = {
        "shenzhen_train": [r for r in sz if side(r) == "train"],
        "shenzhen_val": [r for r in sz if side(r) == "val"],
        "covid-qu-ex_val": [r for r in others if r.source == "covid-qu-ex" and side(r) == "val"],
        "nih_val": [r for r in others if r.source == "nih" and side(r) == "val"],
        "ieee8023_val": [r for r in others if r.source == "ieee8023" and side(r) == "val"
                         and is_frontal_xray(r) and r.label is not None],
        # The TB head never sees an ieee8023 film: all frontal normals are a fair check.
        "ieee8023_no_finding_frontal": [r for r in others if r.source == "ieee8023" and r.label == NORMAL
                                        and is_frontal_xray(r)],
    }
    for g, recs in groups.items():
        log.info("%s: %d films", g, len(recs))
    return groups


def tb_label(r: Record) -> int:
    return 1 if r.label == TUBERCULOSIS else 0


# ------------------------------------------------------------------ features
def extract_features(records: list[Record], models_dir: Path | None = None, chunk: int = 32
                     ) -> dict[str, np.ndarray]:
    """The app's path for each film: load, gate, lungs, the classifier's feature maps pooled
    both ways per layer (+ the embedding of a lung-cropped input, a second pass)."""
    from ..imaging import load_image
    from ..modellayer.classifier import DiseaseClassifier, classifier_input
    from ..modellayer.gate import DomainGate
    from ..modellayer.lung import LungSegmenter
    from ..modellayer.preprocessing import film_input

    lung = LungSegmenter(models_root=models_dir)
    clf = DiseaseClassifier(models_root=models_dir, lung_segmenter=lung)
    gate = DomainGate(models_root=models_dir)
    fmodel = feature_model(clf.model, ALL_LAYERS)
    cols: dict[str, list] = {f"{p}_{n}": [] for p in POOLINGS for n in ALL_LAYERS}
    cols.update({k: [] for k in ("crop_gap", "gate_accepted", "gate_code", "cls_probs", "lung_fraction")})
    t0 = time.time()
    for start in range(0, len(records), chunk):
        imgs = [load_image(r.image) for r in records[start:start + chunk]]
        verdicts = gate.screen(imgs)
        films = [film_input(im) for im in imgs]
        masks = [res.mask for res in lung.segment_batch(films)]
        # the films themselves: the classifier's card picks its input (display or robust)
        scored = clf.predict_batch(films, lung_masks=masks, heatmap=False)
        maps, boxes = feature_maps(clf, fmodel, films, masks)
        crops = np.stack([classifier_input(f, m, clf.input_size, "lung_crop", clf.normalization)[0]
                          for f, m in zip(films, masks)])
        crop_gap = np.asarray(fmodel(crops, training=False)[-1], np.float32).mean(axis=(1, 2))
        for k, (res, m, v) in enumerate(zip(scored, masks, verdicts)):
            v = gate.confirm(v, res.embedding, clf.embedding_stats)
            for p in POOLINGS:
                for name, a in zip(ALL_LAYERS, maps[k]):
                    cols[f"{p}_{name}"].append(pooled([a], m, boxes[k], p))
            cols["crop_gap"].append(crop_gap[k])
            cols["gate_accepted"].append(bool(v.accepted))
            cols["gate_code"].append(v.code)
            cols["cls_probs"].append(res.probabilities.astype(np.float32))
            cols["lung_fraction"].append(float(np.mean(m)))
        log.info("features: %d/%d films (%.0fs)", min(start + chunk, len(records)), len(records),
                 time.time() - t0)
    out = {k: np.asarray(v) for k, v in cols.items()}
    out["classifier_sha256"] = np.asarray(clf.card.sha256)
    out["classifier_version"] = np.asarray(clf.card.version)
    out["classifier_normalization"] = np.asarray(clf.normalization)
    return out


def vectors(feats: dict[str, np.ndarray], design: str) -> np.ndarray:
    """(N, D) design vectors from cached features (the app computes the same with
    ``tuberculosis.pooled`` from the layers and pooling the card names)."""
    if design == "crop_gap":
        return np.asarray(feats["crop_gap"], np.float64)
    pooling, layers = DESIGNS[design]
    return np.concatenate([np.asarray(feats[f"{pooling}_{n}"], np.float64) for n in layers], axis=1)


# ------------------------------------------------------------------ logistic regression (numpy/scipy)
def fit_logreg(x: np.ndarray, y: np.ndarray, c: float) -> dict[str, np.ndarray]:
    """L2-regularised logistic regression on standardised features (penalty ||w||^2 / (2C), mean loss)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    z = (x - mean) / scale
    n, d = z.shape
    lam = 1.0 / (c * n)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d], theta[d]
        s = z @ w + b
        # log(1 + e^s) - y s, stably
        ll = np.logaddexp(0.0, s) - y * s
        g = sigmoid(s) - y
        val = ll.mean() + 0.5 * lam * w @ w
        grad = np.concatenate([z.T @ g / n + lam * w, [g.mean()]])
        return float(val), grad

    res = optimize.minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B",
                            options={"maxiter": 2000, "gtol": 1e-7})
    return {"mean": mean, "scale": scale, "coef": res.x[:d], "intercept": np.array([res.x[d]]),
            "C": np.array(c)}


def logreg_logit(model: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    z = (np.asarray(x, np.float64) - model["mean"]) / model["scale"]
    return z @ model["coef"] + float(model["intercept"][0])


def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for cls in np.unique(y):
        idx = rng.permutation(np.nonzero(y == cls)[0])
        for j, i in enumerate(idx):
            folds[j % k].append(int(i))
    return [np.array(sorted(f)) for f in folds]


def cv_logits(x: np.ndarray, y: np.ndarray, c: float, folds: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(len(y))
    for test in folds:
        fit = np.setdiff1d(np.arange(len(y)), test)
        out[test] = logreg_logit(fit_logreg(x[fit], y[fit], c), x[test])
    return out


def choose_c(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, dict[str, float]]:
    """L2 strength by 5-fold cross-validated AUC on the training films (ties: stronger penalty)."""
    folds = stratified_folds(y, CV_FOLDS, seed)
    aucs = {c: auc_binary(y, cv_logits(x, y, c, folds)) for c in C_GRID}
    best = max(C_GRID, key=lambda c: (round(aucs[c], 4), -c))
    return best, {str(c): round(a, 4) for c, a in aucs.items()}


# ------------------------------------------------------------------ calibration + operating point
def fit_platt(logit: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) minimising the NLL of sigmoid(a * logit + b) (a small ridge keeps it finite)."""
    logit, y = np.asarray(logit, np.float64), np.asarray(y, np.float64)

    def nll(t: np.ndarray) -> float:
        s = t[0] * logit + t[1]
        return float(np.mean(np.logaddexp(0.0, s) - y * s) + 1e-4 * (t[0] - 1) ** 2)

    res = optimize.minimize(nll, np.array([1.0, 0.0]), method="Nelder-Mead",
                            options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000})
    return float(res.x[0]), float(res.x[1])


def binary_ece(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """ECE of P(TB) (equal-width bins of the predicted probability)."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
        sel = (p >= lo) & ((p < hi) if i < n_bins - 1 else (p <= hi))
        if sel.any():
            ece += sel.mean() * abs(float(y[sel].mean()) - float(p[sel].mean()))
    return float(ece)


def nll_binary(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    y = np.asarray(y, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def rates(p: np.ndarray, y: np.ndarray, thr: float) -> dict[str, float]:
    pred = np.asarray(p) >= thr
    y = np.asarray(y).astype(bool)
    tp, fn = int((pred & y).sum()), int((~pred & y).sum())
    tn, fp = int((~pred & ~y).sum()), int((pred & ~y).sum())
    return {"sensitivity": tp / (tp + fn) if tp + fn else math.nan,
            "specificity": tn / (tn + fp) if tn + fp else math.nan,
            "tp": tp, "fn": fn, "tn": tn, "fp": fp}


def bootstrap_ci(y: np.ndarray, score: np.ndarray, thr: float, n: int = N_BOOT, seed: int = 0
                 ) -> dict[str, list[float]]:
    """95% percentile intervals (stratified resampling) of AUC and of sens/spec at a fixed threshold."""
    rng = np.random.default_rng(seed)
    pos, neg = np.nonzero(y == 1)[0], np.nonzero(y == 0)[0]
    if len(pos) == 0 or len(neg) == 0:  # a smoke run's tiny val part
        return {"auc": [math.nan] * 2, "sensitivity": [math.nan] * 2, "specificity": [math.nan] * 2}
    aucs, sens, spec = [], [], []
    for _ in range(n):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        aucs.append(auc_binary(y[idx], score[idx]))
        r = rates(score[idx], y[idx], thr)
        sens.append(r["sensitivity"])
        spec.append(r["specificity"])

    def ci(v: list[float]) -> list[float]:
        return [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)]

    return {"auc": ci(aucs), "sensitivity": ci(sens), "specificity": ci(spec)}


def cross_fitted(logit: np.ndarray, y: np.ndarray, repeats: int = N_CROSSFIT, seed: int = 0) -> dict[str, Any]:
    """Platt + operating point fitted on one stratified half of val, measured on the other
    (both ways, ``repeats`` random halvings): what the in-sample figures would be on new films."""
    rng = np.random.default_rng(seed)
    sens, spec, ece, nll_, thr = [], [], [], [], []
    for r in range(repeats):
        a, b = stratified_folds(y, 2, int(rng.integers(1 << 31)))
        for fit, test in ((a, b), (b, a)):
            pa, pb = fit_platt(logit[fit], y[fit])
            p_fit, p_test = sigmoid(pa * logit[fit] + pb), sigmoid(pa * logit[test] + pb)
            t = youden_threshold(y[fit] == 1, p_fit)["threshold"]
            rr = rates(p_test, y[test], t)
            sens.append(rr["sensitivity"])
            spec.append(rr["specificity"])
            ece.append(binary_ece(p_test, y[test]))
            nll_.append(nll_binary(p_test, y[test]))
            thr.append(t)

    def summ(v: list[float]) -> dict[str, float]:
        return {"mean": round(float(np.mean(v)), 4), "p2.5": round(float(np.percentile(v, 2.5)), 4),
                "p97.5": round(float(np.percentile(v, 97.5)), 4)}

    return {"halvings": repeats, "sensitivity": summ(sens), "specificity": summ(spec), "ece": summ(ece),
            "nll": summ(nll_), "threshold": summ(thr)}


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [math.nan, math.nan]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, c - h), 4), round(min(1.0, c + h), 4)]


# ------------------------------------------------------------------ checks
def flag_rates(p: np.ndarray, labels: list[str | None], thr: float) -> dict[str, Any]:
    """Share flagged TB per label of a group of check films (Wilson 95% CI)."""
    out: dict[str, Any] = {}
    for lab in sorted({str(x) for x in labels}):
        sel = np.array([str(x) == lab for x in labels])
        k, n = int((p[sel] >= thr).sum()), int(sel.sum())
        out[lab] = {"n": n, "flagged": k, "rate": round(k / n, 4) if n else None, "ci95": wilson(k, n),
                    "median_probability": round(float(np.median(p[sel])), 4) if n else None}
    return out


def source_probe(x_sz: np.ndarray, x_other: np.ndarray, seed: int) -> dict[str, Any]:
    """5-fold CV AUC of a logistic regression telling Shenzhen films from the other sources' films."""
    x = np.concatenate([x_sz, x_other])
    y = np.concatenate([np.ones(len(x_sz)), np.zeros(len(x_other))])
    folds = stratified_folds(y, CV_FOLDS, seed)
    s = cv_logits(x, y, 0.1, folds)
    return {"n_shenzhen": len(x_sz), "n_other": len(x_other), "cv_auc": round(auc_binary(y, s), 4),
            "C": 0.1}


# ------------------------------------------------------------------ train (= fit + evaluate)
def train(data_dir: Path, split_file: Path, out: Path, *, seed: int, max_images: int | None,
          command: str, models_dir: Path | None = None, design: str | None = None) -> dict[str, Any]:
    """Features, design comparison, the head, its calibration, operating point and checks."""
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    split = read_split(split_file)
    groups = tb_records(data_dir, split, max_images)
    order = [(g, r) for g, recs in groups.items() for r in recs]
    cache = out / FEATURES_FILE
    keys = np.array([f"{g}|{rel_key(r, data_dir)}" for g, r in order])
    feats: dict[str, np.ndarray] | None = None
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            cached = {k: z[k] for k in z.files}
        if list(cached["keys"]) == list(keys):
            feats = cached
            log.info("features from %s", cache)
    if feats is None:
        feats = extract_features([r for _, r in order], models_dir)
        feats["keys"] = keys
        np.savez_compressed(cache, **feats)
    extract_s = time.time() - t0
    group = np.array([g for g, _ in order])
    labels = [r.label for _, r in order]
    y_all = np.array([tb_label(r) for _, r in order])
    tr, va = group == "shenzhen_train", group == "shenzhen_val"
    y_tr, y_va = y_all[tr], y_all[va]

    # 1. the designs, compared on Shenzhen train by cross-validation (val only reported)
    t1 = time.time()
    comparison = []
    fitted: dict[str, dict] = {}
    for name, desc in CANDIDATES.items():
        x = vectors(feats, name)
        c, by_c = choose_c(x[tr], y_tr, seed)
        folds = stratified_folds(y_tr, CV_FOLDS, seed + 1)  # a fresh split for the reported CV AUC
        oof = cv_logits(x[tr], y_tr, c, folds)
        model = fit_logreg(x[tr], y_tr, c)
        fitted[name] = model
        s_va = logreg_logit(model, x[va])
        s_all = logreg_logit(model, x)
        t_cmp = youden_threshold(y_tr == 1, sigmoid(oof))["threshold"]
        normals = np.array([str(lab) == NORMAL for lab in labels]) & ~(tr | va)
        comparison.append({
            "design": name, "description": desc, "dim": int(x.shape[1]), "C": c,
            "train_cv_auc": round(auc_binary(y_tr, oof), 4), "cv_auc_by_C": by_c,
            "val_auc": round(auc_binary(y_va, s_va), 4),
            "val_auc_ci95": bootstrap_ci(y_va, s_va, 0.0, 1000, seed)["auc"],
            # at the train-CV Youden threshold on the uncalibrated head: comparable across designs
            "other_normals_flagged_at_train_cv_threshold": round(float(
                (sigmoid(s_all[normals]) >= t_cmp).mean()), 4),
            "extra_pass": name == "crop_gap",
        })
        log.info("design %-8s C=%g  train CV AUC %.4f  val AUC %.4f", name, c,
                 comparison[-1]["train_cv_auc"], comparison[-1]["val_auc"])
    chosen = design or max(comparison, key=lambda r: (r["train_cv_auc"], -r["dim"]))["design"]
    if chosen not in DESIGNS:
        raise SystemExit(f"design {chosen!r} needs an app path xrayviewer.modellayer.tuberculosis does not have; "
                         f"pass --design with one of {sorted(DESIGNS)}")
    head = fitted[chosen]
    x = vectors(feats, chosen)
    logit_all = logreg_logit(head, x)

    # 2. calibration + operating point on Shenzhen val
    a, b = fit_platt(logit_all[va], y_va)
    p_all = sigmoid(a * logit_all + b)
    op = youden_threshold(y_va == 1, p_all[va])
    thr = float(op["threshold"])
    val = {"n": int(va.sum()), "n_tb": int(y_va.sum()), "n_normal": int((y_va == 0).sum()),
           "auc": round(auc_binary(y_va, p_all[va]), 4), **{k: (round(v, 4) if isinstance(v, float) else v)
                                                             for k, v in rates(p_all[va], y_va, thr).items()},
           "ci95_bootstrap": bootstrap_ci(y_va, p_all[va], thr, N_BOOT, seed),
           "ece_10bins_in_sample": round(binary_ece(p_all[va], y_va), 4),
           "ece_10bins_uncalibrated": round(binary_ece(sigmoid(logit_all[va]), y_va), 4),
           "nll_in_sample": round(nll_binary(p_all[va], y_va), 4),
           "nll_uncalibrated": round(nll_binary(sigmoid(logit_all[va]), y_va), 4),
           "cross_fitted_2fold": cross_fitted(logit_all[va], y_va, N_CROSSFIT, seed)}
    train_fit = {"n": int(tr.sum()), "n_tb": int(y_tr.sum()), "auc_in_sample": round(auc_binary(y_tr, p_all[tr]), 4),
                 **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in rates(p_all[tr], y_tr, thr).items()}}

    # 3. shortcut checks
    checks: dict[str, Any] = {}
    for g in CHECK_GROUPS:
        sel = group == g
        checks[g] = flag_rates(p_all[sel], [lab for lab, s in zip(labels, sel) if s], thr)
    normal_sel = np.isin(group, ["covid-qu-ex_val", "nih_val", "ieee8023_no_finding_frontal"]) & \
        np.array([str(lab) == NORMAL for lab in labels])
    sick_sel = np.isin(group, ["covid-qu-ex_val", "nih_val", "ieee8023_val"]) & \
        np.array([str(lab) not in (NORMAL, "None") for lab in labels])
    k, n = int((p_all[normal_sel] >= thr).sum()), int(normal_sel.sum())
    checks["other_sources_normal_films"] = {
        "groups": "COVID-QU-Ex Normal val + NIH No_findings val + ieee8023 No Finding frontal (all)",
        "n": n, "flagged": k, "rate": round(k / n, 4), "ci95": wilson(k, n), "target_max": 0.02}
    emb = vectors(feats, "gap")
    others = np.isin(group, ["covid-qu-ex_val", "nih_val", "ieee8023_val"])
    sz_normal = va & (y_all == 0)  # val: the head was fitted on the train normals
    other_normal = others & np.array([str(lab) == NORMAL for lab in labels])
    checks["source_probe"] = {
        "embedding": source_probe(emb[tr | va], emb[others], seed),
        "tb_logit_shenzhen_val_normal_vs_other_normal_auc": round(auc_binary(
            np.concatenate([np.ones(sz_normal.sum()), np.zeros(other_normal.sum())]),
            np.concatenate([logit_all[sz_normal], logit_all[other_normal]])), 4),
        "reading": "the embedding tells Shenzhen from the other sources (a hospital's look); the TB head is "
                   "fitted within Shenzhen, so source identity carries no TB label there. The second figure "
                   "is the AUC of the TB logit for 'Shenzhen val normal' vs 'other sources' normal' (val parts): near 0.5 "
                   "or below means the TB direction does not point towards Shenzhen as such; above 0.5 means "
                   "other sources' normals score lower than Shenzhen's.",
    }
    gate_sz = feats["gate_accepted"][tr | va]
    checks["gate_on_shenzhen"] = {"n": len(gate_sz), "accepted": int(gate_sz.sum()),
                                  "refused_codes": {c: int(v) for c, v in zip(*np.unique(
                                      feats["gate_code"][(tr | va) & ~feats["gate_accepted"]], return_counts=True))}}
    alternatives = []
    for rule, t in (("Youden's J on Shenzhen val (bundled)", thr),
                    *[(f"specificity >= {q:.0%} on Shenzhen val normals", float(np.quantile(
                        p_all[va & (y_all == 0)], q, method="higher")) + 1e-9) for q in (0.9, 0.95, 0.98)]):
        rv = rates(p_all[va], y_va, t)
        alternatives.append({"rule": rule, "threshold": round(t, 6), "shenzhen_val_sensitivity": round(rv["sensitivity"], 4),
                             "shenzhen_val_specificity": round(rv["specificity"], 4),
                             "other_sources_normal_flagged": round(float((p_all[normal_sel] >= t).mean()), 4),
                             "other_sources_covid_pneumonia_flagged": round(float((p_all[sick_sel] >= t).mean()), 4)})
    fit_s = time.time() - t1

    # 4. write the run
    np.savez(out / HEAD_FILE, **{k: np.asarray(v, np.float64) for k, v in head.items() if k != "C"})
    with open(out / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["group", "image", "label", "tb", "logit", "probability", "gate_accepted"])
        for (g, r), yy, z, p, acc in zip(order, y_all, logit_all, p_all, feats["gate_accepted"]):
            w.writerow([g, rel_key(r, data_dir), r.label, yy, round(float(z), 5), round(float(p), 5), bool(acc)])
    summary = {
        "design": chosen, "pooling": DESIGNS[chosen][0], "feature_layers": list(DESIGNS[chosen][1]),
        "C": float(head["C"]), "dim": int(head["coef"].shape[0]),
        "comparison": comparison, "not_compared": NOT_COMPARED,
        "calibration": {"method": "Platt scaling on Shenzhen val: P = sigmoid(a * logit + b)", "a": round(a, 6),
                        "b": round(b, 6)},
        "operating_point": {"threshold": round(thr, 6), "rule": "calibrated P(TB) >= threshold; threshold "
                            "maximises Youden's J on Shenzhen val", "sensitivity": round(op["sensitivity"], 4),
                            "specificity": round(op["specificity"], 4), "youden_j": round(op["youden_j"], 4)},
        "operating_point_alternatives": alternatives,
        "shenzhen_val": val, "shenzhen_train": train_fit, "checks": checks,
        "classifier": {"name": "xray_classifier", "version": str(feats["classifier_version"]),
                       "sha256": str(feats["classifier_sha256"]),
                       "input_normalization": str(feats.get("classifier_normalization", "display-v1"))},
        "counts": {g: {"n": len(rs), "tb": sum(tb_label(r) for r in rs)} for g, rs in groups.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    meta = {"command": command, "seed": seed, "extract_wall_time_s": round(extract_s, 1),
            "train_wall_time_s": round(fit_s, 1), "total_wall_time_s": round(time.time() - t0, 1),
            "hardware": hardware_info(), "library_versions": library_versions()}
    (out / "train_meta.json").write_text(json.dumps(meta, indent=1))
    log.info("TB head (%s): Shenzhen val AUC %.4f, sens %.3f spec %.3f at %.3f; other normals flagged %.3f",
             chosen, val["auc"], val["sensitivity"], val["specificity"], thr,
             checks["other_sources_normal_films"]["rate"])
    return summary


# ------------------------------------------------------------------ export
def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| design | dim | L2 C | Shenzhen train 5-fold CV AUC | Shenzhen val AUC (95% CI) | other normals "
            "flagged* | extra input |\n|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['design']} | {r['dim']} | {r['C']} | {r['train_cv_auc']:.4f} | {r['val_auc']:.4f} "
        f"({r['val_auc_ci95'][0]:.3f}-{r['val_auc_ci95'][1]:.3f}) | "
        f"{100 * r['other_normals_flagged_at_train_cv_threshold']:.1f} % | {'lung crop' if r['extra_pass'] else '-'} |\n"
        for r in rows)


def export(run: Path, models_dir: Path, name: str = MODEL_NAME, version: str = "1.0.0") -> Path:
    """Write ``models/<name>/``: ``<name>.npz`` (standardisation + logistic weights) and card.json."""
    from ..modellayer.modelstore import sha256_file

    summary = json.loads((run / "summary.json").read_text())
    meta = json.loads((run / "train_meta.json").read_text())
    dest = models_dir / name
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / f"{name}.npz"
    with np.load(run / HEAD_FILE, allow_pickle=False) as z:
        np.savez(weights, **{k: z[k] for k in z.files})
    val, op, checks = summary["shenzhen_val"], summary["operating_point"], summary["checks"]
    with open(run / "predictions.csv", newline="") as fh:  # names of the films the metrics are on
        val_films = [Path(r["image"]).name for r in csv.DictReader(fh) if r["group"] == "shenzhen_val"]
    with open(dest / "comparison.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["design", "dim", "C", "train_cv_auc", "val_auc", "val_auc_ci95",
                                           "other_normals_flagged_at_train_cv_threshold", "extra_pass",
                                           "description"], extrasaction="ignore")
        w.writeheader()
        w.writerows(summary["comparison"])
    card = {
        "name": name, "version": version, "task": "tuberculosis screening score (Shenzhen-trained)",
        "architecture": f"logistic regression (L2, C={summary['C']}) on {summary['dim']} standardised features: "
                        f"the disease classifier's layers {', '.join(summary['feature_layers'])}, each "
                        + ("averaged over the film" if summary["pooling"] == "gap" else
                           "averaged with lung-share weights (bundled lung model's mask)"),
        "params": summary["dim"] + 1,
        "input_size": 128,
        "input_normalization": summary["classifier"].get("input_normalization", "display-v1"),
        "preprocessing": "the disease classifier's own input (DiseaseClassifier.model_input: "
                         + ("the film's modality values through its rank map (rank-v1)"
                            if summary["classifier"].get("input_normalization") == "rank-v1" else "display image / 255")
                         + ", squashed to 128x128, full film); the named layers' maps pooled (xrayviewer.modellayer.tuberculosis."
                         "pooled: " + ("global average" if summary["pooling"] == "gap" else
                                       "weights = lung share of each cell, area-resized mask; global average "
                                       "when the mask covers < 2 %") + "), concatenated; z = (f - mean) / scale "
                         "(weights file)",
        "pooling": summary["pooling"],
        "feature_layers": summary["feature_layers"],
        "base_model": {**summary["classifier"], "layer": "cam_features",
                       "note": "the head is refused at load unless the bundled classifier has this sha256"},
        "output": "logit = z . coef + intercept; P(TB) = sigmoid(a * logit + b) (Platt); tb_positive = "
                  "P(TB) >= threshold. Heatmap: the logit's per-position contributions (sum over layers of "
                  "weight(i,j) * sum_k coef_k / scale_k * A_k(i,j), as densities at image resolution), positive "
                  "part, masked to the lung fields, scaled to the film's maximum",
        "labels": {"0": "no tuberculosis finding (Shenzhen normal)", "1": LABEL},
        "threshold": op["threshold"], "operating_point": op,
        "operating_point_alternatives": summary["operating_point_alternatives"],
        "operating_points": {LABEL: {"threshold": op["threshold"], "sensitivity": op["sensitivity"],
                                     "specificity": op["specificity"], "youden_j": op["youden_j"]}},
        "calibration": {**summary["calibration"], "fitted_on": f"Shenzhen val ({val['n']} films)",
                        "ece_10bins_in_sample": val["ece_10bins_in_sample"],
                        "ece_10bins_uncalibrated": val["ece_10bins_uncalibrated"],
                        "nll_in_sample": val["nll_in_sample"], "nll_uncalibrated": val["nll_uncalibrated"],
                        "cross_fitted_2fold": val["cross_fitted_2fold"],
                        "note": "the validation part is small (133 films): in-sample calibration and the "
                                "operating point's sensitivity/specificity are optimistic; the 2-fold "
                                "cross-fitted figures (fit on one half, measure on the other, 200 random "
                                "halvings) are the honest ones"},
        "meaning": "P(TB) is a screening score learned from one hospital's films (Shenzhen No.3 People's "
                   "Hospital: tuberculosis vs normal). It is not a diagnosis and not one of the classifier's "
                   "classes: tuberculosis and the COVID-era findings (COVID-19, other pneumonia) are not "
                   "exclusive, so a film can carry a high COVID-19 probability and be TB-positive too, and "
                   "the classifier's three probabilities still sum to one without it. It was never shown "
                   "COVID-19 or pneumonia films as negatives, so it may also rise on other lung disease "
                   "(see checks). Not validated on a second hospital's tuberculosis films (Montgomery is held "
                   "out of this repository).",
        "training_data": {"sources": "tb-shenzhen only (Shenzhen tuberculosis vs Shenzhen normal films)",
                          "shenzhen_val_films": val_films,
                          "split": "patient-disjoint split file (python -m xrayviewer.training split), "
                                   "Shenzhen train part; one film per patient",
                          "shortcut_rule": "negatives are Shenzhen normal films only; other sources' normal "
                                           "films are never used for fitting (only for the checks)",
                          "counts": summary["counts"],
                          "design_selection": "5-fold cross-validated AUC on Shenzhen train (val not used to pick)"},
        "metrics": {"shenzhen_val": val, "shenzhen_train": summary["shenzhen_train"]},
        "checks": checks,
        "targets": {"shenzhen_val_auc": 0.92, "other_sources_normal_flagged_max": 0.02,
                    "second_hospital_auc": 0.85, "second_hospital_normal_flagged_max": 0.10},
        "comparison": summary["comparison"], "comparison_markdown": comparison_markdown(summary["comparison"]),
        "not_compared": summary["not_compared"],
        "reproduce": ["python -m xrayviewer.training split --out runs/split.json", meta["command"],
                      f"python -m xrayviewer.training export-tb --run {run}"],
        "training_command": meta["command"], "wall_time_s": meta["total_wall_time_s"],
        "train_wall_time_s": meta["train_wall_time_s"], "feature_extraction_wall_time_s": meta["extract_wall_time_s"],
        "hardware": meta["hardware"], "library_versions": meta["library_versions"],
        "weights_file": weights.name, "sha256": sha256_file(weights),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "intended_use": "research only; not a medical device. A Shenzhen-trained tuberculosis screening score "
                        "shown beside the COVID-era classes, never instead of a reading.",
    }
    write_card(dest, card, TBCard)
    card["parity_check"] = parity_check(run, models_dir, name)
    write_card(dest, card, TBCard)
    log.info("wrote %s (app path vs run: max |dP| %.2g over %d films)", dest,
             card["parity_check"]["max_abs_probability_difference"], card["parity_check"]["n"])
    return dest


def parity_check(run: Path, models_dir: Path, name: str, n: int = 12, tol: float = 1e-3) -> dict[str, Any]:
    """The bundled head through the app's own classes (load_image -> lungs -> TuberculosisHead)
    must give the run's probabilities on Shenzhen val films; fails the export otherwise."""
    import os

    from ..imaging import load_image
    from ..modellayer.classifier import DiseaseClassifier
    from ..modellayer.lung import LungSegmenter
    from ..modellayer.preprocessing import film_input
    from ..modellayer.tuberculosis import TuberculosisHead
    from .cli_args import DEFAULT_DATA

    data = Path(os.environ.get("XRAYVIEWER_DATA_DIR", DEFAULT_DATA))
    with open(run / "predictions.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["group"] == "shenzhen_val"][:n]
    lung = LungSegmenter(models_root=models_dir)
    head = TuberculosisHead(DiseaseClassifier(models_root=models_dir, lung_segmenter=lung), name, models_dir)
    imgs = [load_image(data / r["image"]) for r in rows]
    masks = [res.mask for res in lung.segment_batch([film_input(im) for im in imgs])]
    got = head.score_batch([im.display for im in imgs], masks)
    diff = max(abs(g.probability - float(r["probability"])) for g, r in zip(got, rows))
    if diff > tol:
        raise SystemExit(f"the bundled TB head disagrees with its run by {diff:.3g} (> {tol}): not exported")
    return {"n": len(rows), "max_abs_probability_difference": float(f"{diff:.3g}"), "tolerance": tol,
            "what": "Shenzhen val films through the app's classes vs the run's predictions.csv"}
