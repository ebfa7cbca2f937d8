"""Argument groups that several ``python -m xrayviewer.training`` subcommands share.

One definition per flag, so that "--epochs" or "--models-dir" means the same for the lung
model, the opacity generator, the classifier and the gate.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"


def add_common(p: argparse.ArgumentParser) -> None:
    """--data-dir / --max-images / --seed (every command that reads the data bundle)."""
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("XRAYVIEWER_DATA_DIR", DEFAULT_DATA)),
                   help="root of the data bundle (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=None,
                   help="cap images per source / split folder (smoke runs)")
    p.add_argument("--seed", type=int, default=0)


def add_train(p: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float,
              train_fraction: bool = True, mixed_precision: bool = True) -> None:
    """--split / --out and the optimisation flags of a training command."""
    add_common(p)
    p.add_argument("--split", type=Path, required=True, help="split file from `split`")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="override (smoke runs)")
    if train_fraction:
        p.add_argument("--train-fraction", type=float, default=1.0,
                       help="train on an evenly spaced fraction of the training images")
    if mixed_precision:
        p.add_argument("--mixed-precision", action="store_true", help="mixed_bfloat16 policy")


def add_export(p: argparse.ArgumentParser, *, name: str, compare: bool = True) -> None:
    """--split / --run / --models-dir / --name / --version of an export command."""
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True, help="evaluated run to bundle")
    if compare:
        p.add_argument("--compare", type=Path, nargs="*", default=[], help="other evaluated runs")
    p.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    p.add_argument("--name", default=name)
    p.add_argument("--version", default="1.0.0")


def add_normalization(p: argparse.ArgumentParser) -> None:
    """--normalization: the model input the run trains on (recorded in the card, applied
    by the app from the card)."""
    from ..modellayer.preprocessing import NORMALIZATIONS, ROBUST

    p.add_argument("--normalization", choices=NORMALIZATIONS, default=ROBUST,
                   help="model input normalisation (default %(default)s: rank map of the film's "
                        "values, independent of window, bit depth and source statistics)")


def add_augmentation(p: argparse.ArgumentParser) -> None:
    """--augmentation: the training augmentation set (``runinfo.resolve_augmentation`` picks
    the default from the run's normalisation)."""
    from .runinfo import AUGMENTATIONS

    p.add_argument("--augmentation", choices=AUGMENTATIONS, default=None,
                   help="mild photometric set, or the hospital-imitating set of the segmentation models "
                        "(window/level, gamma, blur/sharpen, noise, resampling, borders, burned-in text; "
                        "default: hospital for rank-v1, mild for display-v1)")

