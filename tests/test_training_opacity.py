"""Opacity generator training: architectures, one training step, CLI end to end, app side.

Tiny networks and a handful of real images so it runs on a 2-core CI machine. The app-side
detector is exercised on a smoke-trained model exported to a temporary models folder, so
these tests do not depend on the bundled weights (tests/test_opacity_model.py does).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ architectures
def test_generator_shape_range_and_round_trip(tmp_path: Path) -> None:
    import keras

    from xrayviewer.training.opacity_task import build_generator

    g = build_generator(input_size=32, base_filters=4, depth=2)
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    y = np.asarray(g(x, training=False))
    assert y.shape == (2, 32, 32, 1) and y.dtype == np.float32
    assert np.all((y >= 0) & (y <= 1))
    g.save(tmp_path / "g.keras")
    loaded = keras.saving.load_model(tmp_path / "g.keras", compile=False)
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), y, atol=1e-6)


@pytest.mark.parametrize(("size", "blocks", "patches"), [(32, 2, 4), (128, 2, 16), (64, 1, 16)])
def test_critic_patch_output(size: int, blocks: int, patches: int) -> None:
    from keras import layers

    from xrayviewer.training.opacity_task import build_critic

    d = build_critic(input_size=size, base_filters=4, n_blocks=blocks)
    assert tuple(d.output.shape) == (None, patches, patches, 1)
    assert any(isinstance(layer, layers.SpectralNormalization) for layer in d.layers)
    assert not any(isinstance(layer, layers.BatchNormalization) for layer in d.layers)
    rng = np.random.default_rng(1)
    logits = np.asarray(d([rng.random((3, size, size, 1), dtype=np.float32),
                           rng.random((3, size, size, 1), dtype=np.float32)], training=False))
    assert logits.shape == (3, patches, patches, 1) and np.isfinite(logits).all()


def test_generator_float32_under_mixed_precision_and_bad_sizes() -> None:
    import keras

    from xrayviewer.training.opacity_task import build_critic, build_generator

    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        assert build_generator(16, 2, 1).output.dtype == "float32"
        assert build_critic(16, 2, 1).output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(ValueError):
        build_generator(input_size=100, depth=4)
    with pytest.raises(ValueError):
        build_critic(input_size=20, n_blocks=2)


@pytest.mark.parametrize("with_critic", [True, False])
def test_one_training_step_updates_weights(with_critic: bool) -> None:
    import keras
    import tensorflow as tf

    from xrayviewer.training.opacity_task import build_critic, build_generator, make_train_step

    keras.utils.set_random_seed(0)
    g = build_generator(32, 4, 2)
    d = build_critic(32, 4, 2) if with_critic else None
    step = make_train_step(g, d, keras.optimizers.Adam(1e-2),
                           keras.optimizers.Adam(1e-3) if d else None, adv_weight=0.05)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((2, 32, 32, 1), dtype=np.float32))
    y = np.zeros((2, 32, 32, 1), np.float32)
    y[0, 8:20, 6:14] = 1.0  # one film with opacity, one without
    g_before = [w.copy() for w in g.get_weights()]
    d_before = [w.copy() for w in d.get_weights()] if d else []
    out = {k: float(v) for k, v in step(x, tf.constant(y)).items()}
    assert all(np.isfinite(v) for v in out.values())
    assert out["seg_loss"] > 0
    assert any(not np.array_equal(a, b) for a, b in zip(g_before, g.get_weights()))
    if d is not None:
        assert out["d_loss"] > 0 and out["g_adv"] > 0
        assert out["loss"] == pytest.approx(out["seg_loss"] + 0.05 * out["g_adv"], rel=1e-5)
        assert any(not np.array_equal(a, b) for a, b in zip(d_before, d.get_weights()))
    else:
        assert out["d_loss"] == 0.0 and out["loss"] == pytest.approx(out["seg_loss"])


# ------------------------------------------------------------------ CLI end to end
def test_cli_help_lists_opacity_commands() -> None:
    res = subprocess.run([sys.executable, "-m", "xrayviewer.training", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for sub in ("train-opacity", "evaluate-opacity", "export-opacity", "train-lung"):
        assert sub in res.stdout


def _tiny_lung_bundle(models: Path) -> None:
    """A random-init lung model with a valid card, so evaluation can run the app's lung path."""
    from xrayviewer.modellayer import modelstore
    from xrayviewer.training.architectures import build_unet

    dest = models / "lung_unet"
    dest.mkdir(parents=True)
    build_unet(32, 2, 2).save(dest / "lung_unet.keras")
    card = {k: "" for k in modelstore.REQUIRED_FIELDS}
    card.update(schema_version=1, name="lung_unet", version="0", input_size=32, threshold=0.5,
                labels={"0": "background", "1": "right lung", "2": "left lung"}, training_data={},
                metrics={}, wall_time_s=0, hardware={}, library_versions={}, weights_file="lung_unet.keras",
                sha256=modelstore.sha256_file(dest / "lung_unet.keras"))
    (dest / "card.json").write_text(json.dumps(card))


@pytest.fixture(scope="module")
def smoke_bundle(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """split -> train both variants one step -> evaluate -> export, into a temp models dir."""
    from xrayviewer.training.__main__ import main

    tmp = tmp_path_factory.mktemp("opacity")
    common = ["--data-dir", str(data_dir), "--max-images", "6"]
    split = tmp / "split.json"
    assert main(["split", *common, "--out", str(split)]) == 0
    tiny = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--input-size", "32",
            "--base-filters", "2", "--depth", "2"]
    models = tmp / "models"
    _tiny_lung_bundle(models)
    for variant in ("pix2pix", "unet"):
        run = tmp / variant
        extra = ["--critic-filters", "2", "--critic-blocks", "1"] if variant == "pix2pix" else []
        assert main(["train-opacity", *common, "--split", str(split), "--out", str(run),
                     "--variant", variant, *tiny, *extra]) == 0
        assert (run / "model.keras").is_file() and (run / "history.csv").is_file()
        # pix2pix: dataset lung masks; unet: through a (random) bundled lung model, the app path
        lung = ["--lung", "truth"] if variant == "pix2pix" else ["--lung", "model", "--models-dir", str(models)]
        assert main(["evaluate-opacity", *common, "--split", str(split), "--run", str(run), *lung]) == 0
    assert main(["export-opacity", "--split", str(split), "--run", str(tmp / "pix2pix"),
                 "--compare", str(tmp / "unet"), "--models-dir", str(models)]) == 0
    return models


def test_evaluation_summary_and_export(smoke_bundle: Path) -> None:
    from xrayviewer.modellayer import modelstore

    run = smoke_bundle.parent / "pix2pix"
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["lung_source"] == "truth"
    unet_summary = json.loads((smoke_bundle.parent / "unet" / "eval" / "summary.json").read_text())
    assert unet_summary["lung_source"] == "model"
    assert unet_summary["covid_qu_ex_val_by_class"]["COVID-19"]["n"] >= 1
    by_class = summary["covid_qu_ex_val_by_class"]
    assert sum(by_class[c]["n"] for c in by_class) == 6
    for key in ("covid_dice_mean", "normal_false_positive_rate"):
        assert key in summary["targets"]
    assert summary["generalblockchain_all"]["n"] == 6
    assert summary["generalblockchain_with_ggo"]["n"] <= 6
    meta = json.loads((run / "train_meta.json").read_text())
    assert meta["critic_params"] > 0 and "adversarial" in meta["loss"]

    out = smoke_bundle / "opacity_generator"
    for f in ("opacity_generator.keras", "card.json", "loss_curves.png", "val_metrics.csv"):
        assert (out / f).is_file(), f
    card = modelstore.read_card("opacity_generator", smoke_bundle)
    assert card.input_size == 32 and card.sha256 == modelstore.sha256_file(out / "opacity_generator.keras")
    assert card.training_command.startswith("python -m xrayviewer.training train-opacity")
    assert set(card.raw["comparison"]) == {"pix2pix", "unet"}
    assert card.raw["critic_verdict"].startswith("the critic")
    assert 0 < card.raw["min_region_fraction"] < 0.05
    # the bundle holds the generator only: its single input is the image
    model, _ = modelstore.load_model("opacity_generator", smoke_bundle)
    assert len(model.inputs) == 1 and tuple(model.output.shape) == (None, 32, 32, 1)
    modelstore.clear_cache()


def test_detector_on_smoke_model_real_films(smoke_bundle: Path, data_dir: Path) -> None:
    """App path on real films at full resolution: shapes, lung restriction, figure ranges."""
    import cv2

    from xrayviewer.modellayer import modelstore
    from xrayviewer.modellayer.opacity import OpacityDetector
    from xrayviewer.modellayer.postprocess import split_lungs

    det = OpacityDetector(models_root=smoke_bundle)
    folder = data_dir / "covid-qu-ex" / "Val" / "COVID-19"
    name = sorted(p.name for p in (folder / "images").glob("*.png"))[0]
    img = cv2.imread(str(folder / "images" / name), cv2.IMREAD_GRAYSCALE)
    lab = split_lungs(cv2.imread(str(folder / "lung masks" / name), cv2.IMREAD_GRAYSCALE) > 127)
    big = cv2.resize(img, (300, 420))
    big_lab = cv2.resize(lab, (300, 420), interpolation=cv2.INTER_NEAREST)
    results = det.analyze_batch([img, big], [lab, big_lab])
    for res, (im, lb) in zip(results, ((img, lab), (big, big_lab))):
        assert res.probability.shape == res.mask.shape == im.shape
        assert not res.mask[lb == 0].any() and (res.probability[lb == 0] == 0).all()
        assert all(0.0 <= v <= 100.0 for v in res.involvement_pct.values())
        assert res.threshold == det.card.threshold
        assert res.min_area_px == max(1, round(det.min_region_fraction * im.size))
    with pytest.raises(ValueError):
        det.analyze(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError):
        det.analyze_batch([img], [])
    modelstore.clear_cache()


def test_warm_start_from_lung_unet_copies_all_but_head(tmp_path: Path) -> None:
    from xrayviewer.training.architectures import build_unet, warm_start
    from xrayviewer.training.opacity_task import build_generator

    lung = build_unet(32, 4, 2)
    lung.save(tmp_path / "lung.keras")
    g = build_generator(32, 4, 2)
    copied = warm_start(g, tmp_path / "lung.keras")
    weighted = [layer.name for layer in g.layers if layer.weights]
    assert set(weighted) - set(copied) == {"opacity_prob"}  # the head has another name
    np.testing.assert_array_equal(g.get_layer("enc0_conv1").get_weights()[0],
                                  lung.get_layer("enc0_conv1").get_weights()[0])
    assert warm_start(build_generator(32, 8, 2), tmp_path / "lung.keras") == []  # widths differ


def test_continued_run_card_counts_every_stage(smoke_bundle: Path, data_dir: Path, tmp_path: Path) -> None:
    """A run that continues another (--init-from <run>/model.keras) is exported with both
    commands, the summed time and epochs, its own comparison row beside its parent's, and the
    critic verdict still judged on the two first-stage runs (same schedule)."""
    from xrayviewer.modellayer import modelstore
    from xrayviewer.training.__main__ import main

    tmp = smoke_bundle.parent
    common = ["--data-dir", str(data_dir), "--max-images", "6"]
    split, parent, cont = tmp / "split.json", tmp / "unet", tmp_path / "unet_cont"
    assert main(["train-opacity", *common, "--split", str(split), "--out", str(cont), "--variant", "unet",
                 "--epochs", "2", "--steps-per-epoch", "1", "--batch-size", "2", "--input-size", "32",
                 "--base-filters", "2", "--depth", "2", "--init-from", str(parent / "model.keras")]) == 0
    meta = json.loads((cont / "train_meta.json").read_text())
    assert meta["init_layers_copied"] > 0  # every layer: same layout
    assert main(["evaluate-opacity", *common, "--split", str(split), "--run", str(cont), "--lung", "truth",
                 "--threshold", "auto"]) == 0
    tuning = json.loads((cont / "eval" / "summary.json").read_text())["threshold_tuning"]
    assert tuning["threshold"] in [row["threshold"] for row in tuning["sweep"]] and len(tuning["sweep"]) > 3
    models = tmp_path / "models"
    assert main(["export-opacity", "--split", str(split), "--run", str(cont), "--compare", str(parent),
                 str(tmp / "pix2pix"), "--models-dir", str(models)]) == 0
    card = modelstore.read_card("opacity_generator", models)
    parent_meta = json.loads((parent / "train_meta.json").read_text())
    assert card.training_command == f"{parent_meta['command']} && {meta['command']}"
    stages = card.raw["training_stages"]
    assert [s["epochs_run"] for s in stages] == [1, 2]
    assert card.wall_time_s == pytest.approx(parent_meta["total_wall_time_s"] + meta["total_wall_time_s"], abs=0.2)
    assert card.raw["training_data"]["epochs"] == 3
    rows = card.raw["comparison"]
    assert set(rows) == {"unet_cont", "unet", "pix2pix"}  # the shared variant is told apart by folder
    assert rows["unet_cont"]["continued_from"] == "unet" and rows["unet_cont"]["epochs_total"] == 3
    assert rows["unet"]["continued_from"] is None
    verdict = card.raw["critic_verdict"]
    assert f"{rows['unet']['covid_dice_mean']:.4f} without" in verdict


def _rows(covid_dice: list[float], normal_any: list[int]) -> list[dict]:
    return ([{"label": "COVID-19", "dice": d, "any_region": 1} for d in covid_dice]
            + [{"label": "Normal", "dice": 1.0 - a, "any_region": a} for a in normal_any])


def test_threshold_choice_respects_the_false_positive_budget_and_is_cross_fitted() -> None:
    from xrayviewer.training.opacity_task import choose_threshold

    # Low threshold: best Dice but 1 Normal film in 4 gets a region (over a 10% budget).
    by_t = {0.3: _rows([0.9, 0.9, 0.9, 0.9], [1, 0, 0, 0]),
            0.4: _rows([0.8, 0.7, 0.8, 0.7], [0, 0, 0, 0]),
            0.5: _rows([0.6, 0.6, 0.6, 0.6], [0, 0, 0, 0])}
    out = choose_threshold(by_t, max_normal_fp=0.1)
    assert out["threshold"] == 0.4
    sweep = {row["threshold"]: row for row in out["sweep"]}
    assert sweep[0.3]["normal_false_positive_rate"] == 0.25 and sweep[0.4]["covid_dice_mean"] == 0.75
    # Folds alternate rows (0,2,4,6 | 1,3,5,7). Fold 0 holds the Normal film with a region, so it
    # picks 0.4; fold 1 sees no false positive at 0.3 and picks it. Each is scored on the other
    # half: the cross-fitted figures expose the false positive the in-sample choice hides.
    assert out["fold_thresholds"] == [0.4, 0.3]
    cv = out["cross_fitted_2fold"]
    assert cv["covid_dice_mean"] == pytest.approx(0.8) and cv["normal_false_positive_rate"] == 0.25
    # Nothing within budget: the most conservative threshold.
    assert choose_threshold({0.3: _rows([0.9], [1]), 0.5: _rows([0.8], [1])}, 0.0)["threshold"] == 0.5


def test_positive_fraction_oversamples_films_with_a_mask() -> None:
    from xrayviewer.training.pipeline import make_dataset

    rng = np.random.default_rng(0)
    x = rng.random((100, 32, 32, 1), dtype=np.float32)
    y = np.zeros_like(x)
    y[:10, 12:20, 12:20] = 1.0  # 10 % of the films have a (central) lesion
    def share(ds, batches: int = 40) -> float:
        ys = np.concatenate([b[1].numpy() for _, b in zip(range(batches), ds)])
        return float(np.mean(ys.reshape(len(ys), -1).max(axis=1) > 0))
    assert share(make_dataset(x, y, 10, True, seed=1)) < 0.2
    assert 0.4 < share(make_dataset(x, y, 10, True, seed=1, positive_fraction=0.5)) < 0.6
    with pytest.raises(ValueError):
        make_dataset(x, np.zeros_like(y), 10, True, positive_fraction=0.5)


def test_focal_tversky_loss_rewards_lesions_and_stays_finite_on_empty_films() -> None:
    """The Tversky term counts only on films with a lesion: on an empty mask its focal
    gradient grows without bound as the prediction empties (a trial run went silent)."""
    import tensorflow as tf

    from xrayviewer.training.pipeline import focal_tversky_bce_loss

    y = np.zeros((2, 32, 32, 1), np.float32)
    y[0, 10:14, 10:14] = 1.0  # a small lesion on film 0, film 1 empty
    silent = np.full_like(y, 1e-4)
    right = np.where(y > 0, 0.95, 1e-4).astype(np.float32)
    assert float(focal_tversky_bce_loss(y, right)) < float(focal_tversky_bce_loss(y, silent)) - 0.5
    p = tf.Variable(np.full((1, 32, 32, 1), 1e-6, np.float32))
    with tf.GradientTape() as tape:
        loss = focal_tversky_bce_loss(tf.zeros((1, 32, 32, 1)), p)
    g = tape.gradient(loss, p).numpy()
    assert np.isfinite(g).all() and np.abs(g).max() < 1.0


def _cmp_row(variant: str, dice: float, fp: float, parent: str | None) -> dict:
    return {"variant": variant, "covid_dice_mean": dice, "normal_false_positive_rate": fp,
            "continued_from": parent}


def test_critic_verdict_pairs_runs_of_one_schedule_and_uses_the_seed_spread() -> None:
    """The critic is judged against the no-critic run that continued the same parent, on the
    seeds' means, and a difference inside the seeds' spread is no difference."""
    from xrayviewer.training.opacity_task import critic_verdict

    rows = {
        "pix2pix": _cmp_row("pix2pix", 0.60, 0.0, None),  # fresh pair: critic clearly behind
        "unet": _cmp_row("unet", 0.66, 0.0, None),
        "p2p_s3": _cmp_row("pix2pix", 0.690, 0.0, "legacy"),
        "p2p_s4": _cmp_row("pix2pix", 0.680, 0.0, "legacy"),
        "unet_s3": _cmp_row("unet", 0.686, 0.0, "legacy"),
        "unet_s4": _cmp_row("unet", 0.676, 0.0, "legacy"),
    }
    verdict = critic_verdict(rows, "p2p_s3")
    assert verdict.startswith("the critic made no material difference")
    assert "0.6850 with vs 0.6810 without" in verdict and "2 and 2 seeds" in verdict
    assert "continuing legacy" in verdict
    # tight seeds: a gain under 0.005 is still none, a larger one is a gain
    rows["p2p_s4"]["covid_dice_mean"] = 0.6895
    rows["unet_s4"]["covid_dice_mean"] = 0.6855
    rows["p2p_s3"]["covid_dice_mean"] = 0.6905
    assert critic_verdict(rows, "p2p_s3").startswith("the critic made no material difference")
    rows["unet_s3"]["covid_dice_mean"] = rows["unet_s4"]["covid_dice_mean"] = 0.670
    assert critic_verdict(rows, "p2p_s3").startswith("the critic helped")
    # a run without a same-schedule partner falls back to the fresh pair
    assert critic_verdict(rows, "unet").startswith("the critic hurt")
    assert critic_verdict({"unet": rows["unet"]}) == "not compared (only one variant evaluated)"


def test_input_spec_of_a_whole_film_run() -> None:
    """A run trained with ``--input-crop none`` records ``crop_margin: null``; evaluating it
    must not fail on that."""
    from xrayviewer.training.opacity_task import InputSpec

    spec = InputSpec.from_meta({"input_size": 128, "input_normalization": "display-v1",
                                "input_crop": "none", "crop_margin": None})
    assert (spec.size, spec.normalization, spec.crop) == (128, "display-v1", False)
    crop = InputSpec.from_meta({"input_size": 192, "input_normalization": "rank-v1",
                                "input_crop": "lung-box", "crop_margin": 0.1})
    assert crop.crop and crop.margin == 0.1


def test_display_input_run_can_take_the_hospital_augmentation(smoke_bundle: Path, data_dir: Path,
                                                              tmp_path: Path) -> None:
    """``--augmentation hospital`` on a whole-film display-v1 run: recorded in the run's meta,
    and the default stays the mild set for display-v1."""
    from xrayviewer.training.__main__ import main

    common = ["--data-dir", str(data_dir), "--max-images", "6", "--split", str(smoke_bundle.parent / "split.json"),
              "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--input-size", "32",
              "--base-filters", "2", "--depth", "2", "--variant", "unet", "--normalization", "display-v1",
              "--input-crop", "none", "--loss", "dice-bce"]
    for aug, expected in ((["--augmentation", "hospital"], "hospital"), ([], "mild")):
        run = tmp_path / expected
        assert main(["train-opacity", *common, "--out", str(run), *aug]) == 0
        meta = json.loads((run / "train_meta.json").read_text())
        assert meta["augmentation_set"] == expected and meta["input_crop"] == "none"
        assert ("window/level" in meta["augmentation"]) == (expected == "hospital")
