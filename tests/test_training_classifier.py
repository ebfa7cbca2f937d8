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
    """Train 1 step on a few real images (robust input, source-class balancing), a
    leave-one-source-out run, export, and load it through the app."""
    from xrayviewer.modellayer import modelstore
    from xrayviewer.modellayer.classifier import DiseaseClassifier
    from xrayviewer.training import classifier_task
    from xrayviewer.training.datasets import read_all
    from xrayviewer.training.splits import make_split, write_split

    recs = read_all(data_dir, ("covid-qu-ex", "nih", "ieee8023"), max_images=8)
    split = make_split(recs, data_dir, seed=0, val_fraction=0.5)
    write_split(split, tmp_path / "split.json")
    kw = dict(arch="compact", input_size=32, input_mode="full", epochs=1, batch_size=4, lr=1e-3, seed=0,
              max_images=8, steps_per_epoch=1, time_budget_s=None, train_fraction=1.0,
              cache_dir=tmp_path / "cache", mixed_precision=False, width=4, command="test",
              normalization="rank-v1", balance="source-class")
    run, loso = tmp_path / "run", tmp_path / "loso"
    classifier_task.train(data_dir, tmp_path / "split.json", run, exclude_source=None, **kw)
    classifier_task.train(data_dir, tmp_path / "split.json", loso, exclude_source="covid-qu-ex", **kw)
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["val"]["n"] > 0 and 0 <= summary["val"]["accuracy"] <= 1
    assert summary["input_normalization"] == "rank-v1"
    test = json.loads((loso / "eval" / "summary.json").read_text())["source_disjoint_test"]
    assert test["source"] == "covid-qu-ex" and test["n"] > 0
    assert "| run |" in markdown_table([classifier_task.comparison_row(run)])
    models = tmp_path / "models"
    classifier_task.export(run, models, "xray_classifier", [], None, "0.0.1", data_dir,
                           tmp_path / "split.json", tmp_path / "cache", loso=[loso],
                           dropped={"efficientnetb0": "not re-run"})
    card = modelstore.read_card("xray_classifier", models)
    assert card.raw["temperature"] > 0 and card.raw["class_names"] == list(CLASS_NAMES)
    assert card.schema_version == 1  # the export writes the card schema (and checked it on the way out)
    assert card.input_normalization == "rank-v1"
    assert card.raw["leave_one_source_out"]["rows"][0]["left_out"] == "covid-qu-ex"
    assert "left-out source" in card.raw["leave_one_source_out"]["markdown"]
    assert {"temperature", "vector"} <= set(card.raw["calibration"]["comparison_equal_count_bins"])
    assert card.raw["comparison_dropped"] == {"efficientnetb0": "not re-run"}
    assert "after" in card.raw["source_probe"]
    clf = DiseaseClassifier(models_root=models)
    res = clf.predict_batch([np.full((50, 60), 128, np.uint8)])[0]
    assert res.probabilities.sum() == pytest.approx(1.0)
    assert clf.embedding_stats is not None and "threshold" in clf.embedding_stats
    # the transfer record goes into the card and leaves the weights alone
    sha = card.sha256
    classifier_task.record_transfer(models, "xray_classifier", data_dir, tmp_path / "split.json",
                                    tmp_path / "cache", [loso], [run], max_images=8)
    modelstore.clear_cache()
    card = modelstore.read_card("xray_classifier", models)
    assert card.sha256 == sha == modelstore.sha256_file(card.weights_path)
    assert [r["left_out"] for r in card.raw["leave_one_source_out"]["rows"]] == ["covid-qu-ex"]
    outside = card.raw["outside_normals"]
    assert set(outside) == set(classifier_task.OUTSIDE_GROUPS)
    for g in outside.values():
        assert sum(g["counts"].values()) == g["n"]
    assert card.raw["robust_input_candidates"][0]["run"] == "run"
    assert "run" in card.raw["source_probe"]["candidates"] and "bundled" in card.raw["source_probe"]
    DiseaseClassifier(models_root=models)  # still loads
    # the architecture table: a run added, a row dropped with its reason, weights untouched
    classifier_task.record_comparison(models, "xray_classifier", [loso], {"run": "smoke: not comparable"})
    modelstore.clear_cache()
    card = modelstore.read_card("xray_classifier", models)
    assert card.sha256 == sha
    assert [r["run"] for r in card.raw["comparison"]] == ["loso"] and "| loso |" in card.raw["comparison_markdown"]
    assert card.raw["comparison_dropped"] == {"efficientnetb0": "not re-run", "run": "smoke: not comparable"}
    classifier_task.record_comparison(models, "xray_classifier", [], {"run": "restated"})
    assert modelstore.read_card("xray_classifier", models).raw["comparison_dropped"]["run"] == "restated"
    with pytest.raises(SystemExit, match="no comparison row"):
        classifier_task.record_comparison(models, "xray_classifier", [], {"nonexistent": "x"})
    DiseaseClassifier(models_root=models)


def test_leave_one_source_out_only_for_sources_with_covid(tmp_path: Path, data_dir: Path) -> None:
    from xrayviewer.training import classifier_task

    with pytest.raises(ValueError, match="leave-one-source-out"):
        classifier_task._datasets_for_run(data_dir, {"assignment": {}}, 2, "nih", None)


def test_source_class_weights_share_each_class_between_sources() -> None:
    """Every class carries the same total weight; inside a class each source an equal share,
    except that a tiny pair is boosted at most MAX_PAIR_BOOST times over class weighting."""
    from xrayviewer.training.classifier_task import MAX_PAIR_BOOST, source_class_weights

    spec = [("a", "Normal", 300), ("b", "Normal", 100), ("a", "COVID-19", 500), ("c", "COVID-19", 500),
            ("a", "Other pneumonia", 200), ("c", "Other pneumonia", 2)]
    recs, y = [], []
    for src, label, n in spec:
        for i in range(n):
            recs.append(Record(f"/{src}/{label}/{i}.png", src, label))
            y.append(CLASS_NAMES.index(label))
    y = np.array(y)
    w, pairs = source_class_weights(recs, y)
    assert w.mean() == pytest.approx(1.0)
    totals = [w[y == k].sum() for k in range(3)]
    assert totals[0] == pytest.approx(totals[1]) == pytest.approx(totals[2])
    src = np.array([r.source for r in recs])
    # Normal: a and b each half of the class
    assert w[(y == 0) & (src == "a")].sum() == pytest.approx(w[(y == 0) & (src == "b")].sum())
    # Other pneumonia: c's two films are boosted only MAX_PAIR_BOOST x over plain class weighting
    # (a's films get share 202 / (2 * 200) of plain class weighting, c's min(202 / (2 * 2), boost))
    ratio = w[(y == 2) & (src == "c")][0] / w[(y == 2) & (src == "a")][0]
    assert ratio == pytest.approx(MAX_PAIR_BOOST / (202 / 400))
    assert set(pairs) == {"a/Normal", "b/Normal", "a/COVID-19", "c/COVID-19", "a/Other pneumonia", "c/Other pneumonia"}


def test_source_probe_finds_a_planted_source_signal() -> None:
    from xrayviewer.training.source_probe import source_probe

    rng = np.random.default_rng(0)
    n = 600
    src = np.array(["a", "b"])[rng.integers(0, 2, n)]
    cls = np.array(["Normal", "COVID-19"])[rng.integers(0, 2, n)]
    clean = rng.normal(size=(n, 8))
    marked = clean.copy()
    marked[:, 3] += 4.0 * (src == "a")  # Bayes accuracy Phi(2) = 0.977
    tr, va = slice(0, 450), slice(450, None)
    hit = source_probe(marked[tr], src[tr], cls[tr], marked[va], src[va], cls[va])
    miss = source_probe(clean[tr], src[tr], cls[tr], clean[va], src[va], cls[va])
    assert hit["mean_within_class_balanced_accuracy"] > 0.9
    assert abs(miss["mean_within_class_balanced_accuracy"] - 0.5) < 0.1
    assert set(hit["per_class"]) == {"Normal", "COVID-19"} and hit["per_class"]["Normal"]["chance"] == 0.5
    json.dumps(hit)  # plain types: goes into the card
