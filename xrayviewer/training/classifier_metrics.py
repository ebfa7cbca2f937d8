"""Classification metrics and calibration: AUC, sensitivity/specificity, ECE, temperature.

Pure numpy/scipy (no scikit-learn in the environment). AUC is the Mann-Whitney statistic
with ties counted half, i.e. the probability that a random positive outranks a random
negative; NaN when a class has no positives or no negatives in the set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, stats

from ..modellayer.common import softmax


def auc_binary(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for binary ``y`` (1 = positive)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = stats.rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_class_auc(y: np.ndarray, probs: np.ndarray) -> list[float]:
    """One-vs-rest AUC for each class (columns of ``probs``)."""
    y = np.asarray(y)
    return [auc_binary(y == k, probs[:, k]) for k in range(probs.shape[1])]


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes present (NaN classes skipped)."""
    vals = [a for a in per_class_auc(y, probs) if not math.isnan(a)]
    return float(np.mean(vals)) if vals else math.nan


def sens_spec(y: np.ndarray, pred: np.ndarray, k: int) -> tuple[float, float]:
    """Sensitivity and specificity of predicting class ``k`` (one vs rest)."""
    y, pred = np.asarray(y) == k, np.asarray(pred) == k
    tp, fn = int((y & pred).sum()), int((y & ~pred).sum())
    tn, fp = int((~y & ~pred).sum()), int((~y & pred).sum())
    sens = tp / (tp + fn) if tp + fn else math.nan
    spec = tn / (tn + fp) if tn + fp else math.nan
    return sens, spec


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins (Guo et al. 2017)."""
    probs = np.asarray(probs, np.float64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(float(correct[sel].mean()) - float(conf[sel].mean()))
    return float(ece)


def equal_mass_ece(probs: np.ndarray, y: np.ndarray, min_per_bin: int = 100) -> tuple[float, int]:
    """Top-label ECE with bins of equal film counts, each holding at least ``min_per_bin``
    films (so no bin's accuracy rests on a handful of films); returns (ECE, number of bins).

    Equal-width bins put most films of a confident model in the last bin and a few in each
    of the others, whose gaps are then mostly noise."""
    probs = np.asarray(probs, np.float64)
    n = len(probs)
    if n == 0:
        return math.nan, 0
    n_bins = max(1, n // int(min_per_bin))
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y)
    order = np.argsort(conf, kind="stable")
    ece = 0.0
    for part in np.array_split(order, n_bins):
        ece += len(part) / n * abs(float(correct[part].mean()) - float(conf[part].mean()))
    return float(ece), n_bins


def cross_fitted_probs(logits: np.ndarray, y: np.ndarray, fit: Callable[[np.ndarray, np.ndarray], Any],
                       apply: Callable[[np.ndarray, Any], np.ndarray], folds: int = 2, seed: int = 0
                       ) -> tuple[np.ndarray, list[Any]]:
    """Calibrated probabilities where each fold's calibration is fitted on the other folds."""
    rng = np.random.default_rng(seed)
    parts = np.array_split(rng.permutation(len(y)), folds)
    probs = np.zeros((len(y), logits.shape[1]))
    params = []
    for i, test in enumerate(parts):
        rest = np.concatenate([p for j, p in enumerate(parts) if j != i])
        prm = fit(logits[rest], y[rest])
        params.append(prm)
        probs[test] = apply(logits[test], prm)
    return probs, params


def fit_vector_scaling(logits: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Per-class scale and bias on the logits minimising NLL (Guo et al. 2017's vector
    scaling), with a small pull toward scale 1, bias 0."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(y)
    k = z.shape[1]

    def loss(theta: np.ndarray) -> float:
        a, b = theta[:k], theta[k:]
        p = softmax(z * a + b)
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)))
                     + l2 * (np.sum((a - 1) ** 2) + np.sum(b ** 2)))

    res = optimize.minimize(loss, np.concatenate([np.ones(k), np.zeros(k)]), method="L-BFGS-B")
    return res.x[:k], res.x[k:]


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), np.asarray(y)], 1e-12, 1.0))))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising validation NLL (bounded search over log T in [-3, 3])."""
    res = optimize.minimize_scalar(lambda lt: nll(logits, y, math.exp(lt)), bounds=(-3.0, 3.0),
                                   method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


def cross_fitted_ece(logits: np.ndarray, y: np.ndarray, folds: int = 2, seed: int = 0,
                     n_bins: int = 15) -> tuple[float, list[float]]:
    """ECE after temperature scaling where each fold's T is fitted on the other folds.

    Fitting and measuring on the same images flatters calibration; this does not.
    """
    probs, temps = cross_fitted_probs(logits, y, fit_temperature, softmax, folds, seed)
    return expected_calibration_error(probs, y, n_bins), temps


def youden_threshold(y_pos: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Threshold maximising sensitivity + specificity - 1 (one-vs-rest), with both values."""
    y_pos = np.asarray(y_pos).astype(bool)
    s = np.asarray(score, np.float64)
    best = {"threshold": 0.5, "sensitivity": math.nan, "specificity": math.nan, "youden_j": -1.0}
    if y_pos.all() or not y_pos.any():
        return best
    for t in np.unique(s):
        pred = s >= t
        sens = float((pred & y_pos).sum() / y_pos.sum())
        spec = float((~pred & ~y_pos).sum() / (~y_pos).sum())
        if sens + spec - 1 > best["youden_j"]:
            best = {"threshold": float(t), "sensitivity": sens, "specificity": spec,
                    "youden_j": sens + spec - 1}
    return best


def reliability_diagram(curves: dict[str, np.ndarray], y: np.ndarray, out_png: Path,
                        n_bins: int = 15, title: str = "") -> None:
    """Accuracy vs confidence for each set of probabilities (e.g. before/after scaling)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    edges = np.linspace(0, 1, n_bins + 1)
    for name, probs in curves.items():
        conf = probs.max(axis=1)
        correct = probs.argmax(axis=1) == y
        xs, ys = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (conf > lo) & (conf <= hi)
            if sel.sum() >= 5:
                xs.append(conf[sel].mean())
                ys.append(correct[sel].mean())
        ece = expected_calibration_error(probs, y, n_bins)
        ax.plot(xs, ys, "o-", label=f"{name} (ECE {ece:.3f})")
    ax.set(xlabel="confidence (top-class probability)", ylabel="accuracy", xlim=(0.3, 1.0),
           ylim=(0.3, 1.0), title=title or "reliability diagram (validation)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
