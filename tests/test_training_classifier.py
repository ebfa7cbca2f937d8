"""Classifier / gate training code: architectures, data rules, synthetic negatives, and a tiny
end-to-end train -> export -> app load on real images (one step, a few images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xrayviewer.training.classifier_task import (
    CLASS_NAMES,
    drop_source_and_duplicates,
    markdown_table,
    weak_check_sample,
)
from xrayviewer.training.datasets import Record, is_frontal_xray
from xrayviewer.training.gate_task import SYNTHETIC_KINDS, colour_pictures, synthetic_images


@pytest.mark.parametrize("arch", ["compact", "mobilenetv2", "efficientnetb0"])
def test_classifier_architectures_share_the_head(arch: str) -> None:
    from xrayviewer.training.classifier_architectures import build_classifier

    model = build_classifier(arch, input_size=64)
    x = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    y = np.asarray(model(x, training=False))
    assert y.shape == (2, 3) and y.dtype == np.float32
    assert len(model.get_layer("cam_features").output.shape) == 4
    assert len(model.get_layer("embedding").output.shape) == 2


def test_gate_architecture_is_tiny() -> None:
    from xrayviewer.training.classifier_architectures import build_gate

    model = build_gate(64)
    assert model.count_params() < 100_000
    assert np.asarray(model(np.zeros((1, 64, 64, 1), np.float32))).shape == (1, 3)


def test_frontal_rule() -> None:
    mk = lambda **kw: Record(image="/x.png", **kw)
    assert is_frontal_xray(mk(source="nih"))
    assert is_frontal_xray(mk(source="ieee8023", modality="X-ray", view="AP Supine"))
    assert not is_frontal_xray(mk(source="ieee8023", modality="X-ray", view="L"))
    assert not is_frontal_xray(mk(source="ieee8023", modality="CT", view="Axial"))
    assert not is_frontal_xray(mk(source="ieee8023", modality="X-ray", view=None))


def test_source_disjoint_drops_near_duplicates(tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(0)
    a = (rng.random((64, 64)) * 255).astype(np.uint8)
    b = (rng.random((64, 64)) * 255).astype(np.uint8)
    paths = {}
    for name, img in {"ieee.png": a, "copy.png": cv2.resize(a, (80, 80)), "other.png": b}.items():
        paths[name] = str(tmp_path / name)
        cv2.imwrite(paths[name], img)
    ieee = Record(image=paths["ieee.png"], source="ieee8023", label="COVID-19")
    copy = Record(image=paths["copy.png"], source="covid-qu-ex", label="COVID-19")
    other = Record(image=paths["other.png"], source="nih", label="Normal")
    kept, n_dup = drop_source_and_duplicates([ieee, copy, other], "ieee8023", [ieee])
    assert kept == [other] and n_dup == 1


def test_synthetic_negatives_cover_all_kinds_and_are_deterministic() -> None:
    imgs, kinds = synthetic_images(2 * len(SYNTHETIC_KINDS), seed=5)
    assert set(kinds) == set(SYNTHETIC_KINDS)
    assert all(i.dtype == np.uint8 and i.ndim == 2 for i in imgs)
    again, _ = synthetic_images(2 * len(SYNTHETIC_KINDS), seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(imgs, again))
    assert len(colour_pictures(2, seed=1)) == 2


def test_weak_check_sample_is_balanced() -> None:
    y = np.array([0] * 50 + [1] * 30 + [2] * 10)
    keys = np.array([f"k{i:03d}" for i in range(len(y))])
    idx = weak_check_sample(keys, y, per_class=20)
    assert np.bincount(y[idx]).tolist() == [20, 20, 10]


def test_tiny_end_to_end(tmp_path: Path, data_dir: Path) -> None:
    """Train 1 step on a few real images, export, and load it through the app."""
    from xrayviewer.modellayer import modelstore
    from xrayviewer.modellayer.classifier import DiseaseClassifier
    from xrayviewer.training import classifier_task
    from xrayviewer.training.datasets import read_all
    from xrayviewer.training.splits import make_split, write_split

    recs = read_all(data_dir, ("covid-qu-ex", "nih", "ieee8023"), max_images=8)
    split = make_split(recs, data_dir, seed=0, val_fraction=0.5)
    write_split(split, tmp_path / "split.json")
    run = tmp_path / "run"
    classifier_task.train(data_dir, tmp_path / "split.json", run, arch="compact", input_size=32,
                          input_mode="full", epochs=1, batch_size=4, lr=1e-3, seed=0, max_images=8,
                          steps_per_epoch=1, exclude_source=None, time_budget_s=None,
                          train_fraction=1.0, cache_dir=tmp_path / "cache", mixed_precision=False,
                          width=4, command="test")
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["val"]["n"] > 0 and 0 <= summary["val"]["accuracy"] <= 1
    assert "| run |" in markdown_table([classifier_task.comparison_row(run)])
    models = tmp_path / "models"
    classifier_task.export(run, models, "xray_classifier", [], None, "0.0.1", data_dir,
                           tmp_path / "split.json", tmp_path / "cache")
    card = modelstore.read_card("xray_classifier", models)
    assert card.raw["temperature"] > 0 and card.raw["class_names"] == list(CLASS_NAMES)
    assert card.schema_version == 1  # the export writes the card schema (and checked it on the way out)
    clf = DiseaseClassifier(models_root=models)
    res = clf.predict_batch([np.full((50, 60), 128, np.uint8)])[0]
    assert res.probabilities.sum() == pytest.approx(1.0)
    assert clf.embedding_stats is not None and "threshold" in clf.embedding_stats
