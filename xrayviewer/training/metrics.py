"""Segmentation metrics on binary masks, per image and aggregated.

Conventions chosen so aggregates are meaningful: Dice/IoU of two empty masks = 1 (perfect
agreement), precision with no predicted pixels = 1 if the truth is empty else 0, HD95 is
in pixels of the full-resolution image, NaN when either mask is empty (excluded from
aggregates, counted separately).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

SEG_METRICS = ("dice", "iou", "precision", "recall", "specificity", "hd95")


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary mask (mask minus its 3x3 erosion)."""
    eroded = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)
    return mask & ~eroded


def hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the mask surfaces, in pixels."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() or not truth.any():
        return math.nan
    sp, st = _surface(pred), _surface(truth)
    dt_truth = ndimage.distance_transform_edt(~st)
    dt_pred = ndimage.distance_transform_edt(~sp)
    d = np.concatenate([dt_truth[sp], dt_pred[st]])
    return float(np.percentile(d, 95))


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """All metrics for one image. ``pred`` and ``truth`` are same-shape boolean masks."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"shape mismatch {pred.shape} vs {truth.shape}")
    tp = float(np.count_nonzero(pred & truth))
    fp = float(np.count_nonzero(pred & ~truth))
    fn = float(np.count_nonzero(~pred & truth))
    tn = float(pred.size) - tp - fp - fn
    both_empty = tp + fp + fn == 0
    return {
        "dice": 1.0 if both_empty else 2 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if both_empty else tp / (tp + fp + fn),
        "precision": (1.0 if fn == 0 else 0.0) if tp + fp == 0 else tp / (tp + fp),
        "recall": 1.0 if tp + fn == 0 else tp / (tp + fn),
        "specificity": 1.0 if tn + fp == 0 else tn / (tn + fp),
        "hd95": hd95(pred, truth),
    }


def aggregate(rows: list[dict[str, float]], keys: tuple[str, ...] = SEG_METRICS) -> dict:
    """Mean, median, 5th percentile and min of each metric over images (NaNs skipped)."""
    out: dict[str, dict[str, float] | int] = {"n": len(rows)}
    for k in keys:
        vals = np.array([r[k] for r in rows if k in r], dtype=float)
        vals = vals[~np.isnan(vals)]
        if vals.size == 0:
            out[k] = {"mean": math.nan, "median": math.nan, "p05": math.nan, "min": math.nan, "n": 0}
            continue
        out[k] = {"mean": float(vals.mean()), "median": float(np.median(vals)),
                  "p05": float(np.percentile(vals, 5)), "min": float(vals.min()),
                  "max": float(vals.max()), "n": int(vals.size)}
    return out


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median and p90 wall time (ms) of ``fn`` after a warm-up: the latency figure of every card."""
    import statistics
    import time

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": round(statistics.median(times), 2),
            "p90_ms": round(float(np.percentile(times, 90)), 2), "repeats": repeats}


def refusal_counts(verdicts: Sequence[Any]) -> tuple[int, int, dict[str, int], dict[str, int]]:
    """Gate verdicts -> (films, refused, refused per stage, refused per code), the counts
    the gate card and the gate-distance report both give."""
    by_stage: dict[str, int] = {}
    by_code: dict[str, int] = {}
    refused = 0
    for v in verdicts:
        if v.accepted:
            continue
        refused += 1
        by_stage[v.stage] = by_stage.get(v.stage, 0) + 1
        by_code[v.code] = by_code.get(v.code, 0) + 1
    return len(verdicts), refused, by_stage, by_code
