"""What every training task shares: how a run starts and what it records about itself.

The tasks (``lung_task``, ``opacity_task``, ``classifier_task``, ``gate_task``) import
these helpers from here and never from one another (``tests/test_architecture.py``).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import Record, _spread
from .splits import read_split

# How the robust-input (rank-v1) segmentation runs augment (``pipeline.augment_hospital``).
AUGMENTATION_ROBUST = ("hospital imitation (training.pipeline.augment_hospital): rotation +-10 deg, "
                       "shift +-6%, zoom 0.85-1.15; contrast 0.8-1.25, brightness +-0.08 then clipping "
                       "(window/level), gamma exp(+-0.35); blur or unsharp masking (half the films); "
                       "down/up-sampling to 40-100% (30%); Gaussian noise sigma<=0.03; a black or "
                       "white border band up to 7% (30%) and a burned-in text block near a corner "
                       "(30%); no flip")
AUGMENTATIONS = ("mild", "hospital")


def resolve_augmentation(augmentation: str | None, normalization: str) -> str:
    """A run's augmentation set: as asked, else the hospital-imitating set for the robust
    input (``rank-v1``) and the mild set for the display input."""
    from ..modellayer.preprocessing import ROBUST

    augmentation = augmentation or ("hospital" if normalization == ROBUST else "mild")
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augmentation!r} (known: {AUGMENTATIONS})")
    return augmentation


# ---------------------------------------------------------------- what a run records
def hardware_info() -> dict[str, Any]:
    """What the card records about the machine (``2-core CPU, no GPU`` here)."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import tensorflow as tf

        gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception:  # noqa: BLE001
        gpus = []
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"summary": f"{ncpu}-core CPU, " + (f"GPU {gpus}" if gpus else "no GPU"),
            "cpu_model": cpu, "cpu_cores": ncpu, "gpus": gpus,
            "platform": platform.platform()}


def library_versions() -> dict[str, str]:
    import cv2
    import keras
    import scipy
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__, "opencv": cv2.__version__,
            "scipy": scipy.__version__}


def source_counts(recs: list[Record]) -> dict[str, int]:
    """Films per dataset source, in the order the sources first appear."""
    out: dict[str, int] = {}
    for r in recs:
        out[r.source] = out.get(r.source, 0) + 1
    return out


# ---------------------------------------------------------------- how a run starts
def start_run(out: Path, *, seed: int, mixed_precision: bool = False) -> None:
    """Seed every generator, set the precision policy and create the run folder."""
    import keras

    keras.utils.set_random_seed(seed)
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    out.mkdir(parents=True, exist_ok=True)


def training_sets(train: list, val: list, train_fraction: float) -> list:
    """The training records to use: a spread-out ``train_fraction`` of ``train``; stops the run
    when either side is empty."""
    if train_fraction < 1.0:
        train = _spread(train, max(1, round(len(train) * train_fraction)))
    if not train or not val:
        raise SystemExit(f"no training/validation images (train {len(train)}, val {len(val)})")
    return train


def prepare_run(records_fn: Callable[[Path, dict, str, int | None], list[Record]], data_dir: Path,
                split_file: Path, out: Path, *, seed: int, mixed_precision: bool, max_images: int | None,
                train_fraction: float) -> tuple[dict, list, list]:
    """Shared start of every segmentation training (lung, opacity): :func:`start_run`, the
    split, and its train/val records (optionally a spread-out fraction of train)."""
    start_run(out, seed=seed, mixed_precision=mixed_precision)
    split = read_split(split_file)
    train_recs = records_fn(data_dir, split, "train", max_images)
    val_recs = records_fn(data_dir, split, "val", max_images)
    return split, training_sets(train_recs, val_recs, train_fraction), val_recs
