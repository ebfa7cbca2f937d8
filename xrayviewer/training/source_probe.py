"""Source probe: how well a classifier's embedding tells which *source* a film came from.

The shortcut check of DeGrave et al. (2021): in public COVID-19 data the class and the
hospital go together, so a network can score "COVID-19" by recognising the source. If the
embedding predicts the source *among films of one class* far above chance, the network has
learned what tells sources apart -- markers, processing, patient populations -- and the
scores will not transfer. The probe is a linear softmax regression on standardised
embeddings (scipy; no scikit-learn here), fitted on the training films and measured on the
validation films as balanced accuracy (mean per-source recall; chance = 1 / sources).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import optimize

from ..modellayer.common import softmax

MIN_TRAIN = 20  # a source joins a class's probe with at least this many training films ...
MIN_VAL = 5  # ... and this many validation films of the class
L2 = 1e-2


def fit_linear_probe(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = L2,
                     weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (W, b) by L-BFGS on the weighted mean NLL + l2 |W|^2."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.int64)
    n, d = x.shape
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    onehot = np.eye(n_classes)[y]

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W = theta[:d * n_classes].reshape(d, n_classes)
        b = theta[d * n_classes:]
        p = softmax(x @ W + b)
        loss = -np.sum(w * np.log(np.clip(p[np.arange(n), y], 1e-12, 1.0))) + l2 * np.sum(W * W)
        g = (p - onehot) * w[:, None]
        return float(loss), np.concatenate([(x.T @ g + 2 * l2 * W).ravel(), g.sum(axis=0)])

    res = optimize.minimize(loss_grad, np.zeros(d * n_classes + n_classes), jac=True, method="L-BFGS-B",
                            options={"maxiter": 500})
    return res.x[:d * n_classes].reshape(d, n_classes), res.x[d * n_classes:]


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y``."""
    recalls = [float((pred[y == k] == k).mean()) for k in range(n_classes) if (y == k).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def _probe_group(e_tr: np.ndarray, s_tr: np.ndarray, e_va: np.ndarray, s_va: np.ndarray) -> dict[str, Any] | None:
    sources = sorted(str(s) for s in set(s_tr.tolist()) if (s_tr == s).sum() >= MIN_TRAIN and (s_va == s).sum() >= MIN_VAL)
    if len(sources) < 2:
        return None
    keep_tr, keep_va = np.isin(s_tr, sources), np.isin(s_va, sources)
    ytr = np.array([sources.index(s) for s in s_tr[keep_tr]])
    yva = np.array([sources.index(s) for s in s_va[keep_va]])
    mu, sd = e_tr[keep_tr].mean(axis=0), e_tr[keep_tr].std(axis=0) + 1e-6
    counts = np.bincount(ytr, minlength=len(sources))
    W, b = fit_linear_probe((e_tr[keep_tr] - mu) / sd, ytr, len(sources), weights=1.0 / counts[ytr])
    pred = ((e_va[keep_va] - mu) / sd @ W + b).argmax(axis=1)
    return {"sources": sources, "n_train": {s: int((s_tr == s).sum()) for s in sources},
            "n_val": {s: int((s_va == s).sum()) for s in sources},
            "balanced_accuracy": round(balanced_accuracy(yva, pred, len(sources)), 4),
            "chance": round(1.0 / len(sources), 4)}


def source_probe(e_tr: np.ndarray, src_tr: Sequence[str], cls_tr: Sequence[str],
                 e_va: np.ndarray, src_va: Sequence[str], cls_va: Sequence[str]) -> dict[str, Any]:
    """The probe per class (sources that have the class) and over all films.

    The per-class figures are the shortcut measure: across classes the source is partly the
    class itself, so the all-films figure is high for any useful embedding."""
    s_tr, s_va = np.asarray(src_tr), np.asarray(src_va)
    c_tr, c_va = np.asarray(cls_tr), np.asarray(cls_va)
    out: dict[str, Any] = {"per_class": {}}
    for c in sorted(set(c_tr.tolist())):
        g = _probe_group(e_tr[c_tr == c], s_tr[c_tr == c], e_va[c_va == c], s_va[c_va == c])
        if g is not None:
            out["per_class"][str(c)] = g
    out["all_films"] = _probe_group(e_tr, s_tr, e_va, s_va)
    accs = [g["balanced_accuracy"] for g in out["per_class"].values()]
    out["mean_within_class_balanced_accuracy"] = round(float(np.mean(accs)), 4) if accs else None
    return out
