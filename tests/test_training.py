"""Training infrastructure: architectures, metrics, readers, splits, CLI end to end.

Kept fast for a 2-core CI machine: tiny networks, a handful of real images, one step.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xrayviewer.training.datasets import (
    COVID,
    NORMAL,
    OTHER,
    Record,
    map_finding,
    read_all,
    read_covid_qu_ex,
    read_generalblockchain,
    read_ieee8023,
    read_nih,
)
from xrayviewer.training.metrics import aggregate, hd95, segmentation_metrics
from xrayviewer.training.splits import make_split, near_duplicate_pairs, rel_key

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ architectures
@pytest.mark.parametrize("variant", ["unet", "resunet"])
def test_architecture_shape_and_keras_round_trip(variant: str, tmp_path: Path) -> None:
    import keras

    from xrayviewer.training.architectures import build_unet

    model = build_unet(input_size=32, base_filters=4, depth=2, variant=variant)
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    y = model(x, training=False).numpy()
    assert y.shape == (2, 32, 32, 1)
    assert y.dtype == np.float32
    assert np.all((y >= 0) & (y <= 1))
    path = tmp_path / f"{variant}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), y, atol=1e-6)


def test_architecture_output_is_float32_under_mixed_precision() -> None:
    import keras

    from xrayviewer.training.architectures import build_unet

    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        model = build_unet(input_size=16, base_filters=2, depth=1)
        assert model.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_architecture_rejects_indivisible_size() -> None:
    from xrayviewer.training.architectures import build_unet

    with pytest.raises(ValueError):
        build_unet(input_size=100, depth=4)


# ------------------------------------------------------------------ metrics
def _disk(shape: tuple[int, int], centre: tuple[int, int], r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r


def test_metrics_identical_masks() -> None:
    m = _disk((64, 64), (32, 32), 12)
    res = segmentation_metrics(m, m)
    for k in ("dice", "iou", "precision", "recall", "specificity"):
        assert res[k] == pytest.approx(1.0)
    assert res["hd95"] == 0.0


def test_metrics_disjoint_masks() -> None:
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[2:6, 2:6] = True
    b[12:16, 12:16] = True
    res = segmentation_metrics(a, b)
    assert res["dice"] == 0.0 and res["iou"] == 0.0
    assert res["precision"] == 0.0 and res["recall"] == 0.0


def test_metrics_hand_counted() -> None:
    truth = np.zeros((4, 4), bool)
    pred = np.zeros((4, 4), bool)
    truth[0, :2] = True  # 2 px
    pred[0, :4] = True  # 4 px, 2 of them correct
    res = segmentation_metrics(pred, truth)
    assert res["dice"] == pytest.approx(2 * 2 / (4 + 2))
    assert res["iou"] == pytest.approx(0.5)
    assert res["precision"] == pytest.approx(0.5)
    assert res["recall"] == pytest.approx(1.0)
    assert res["specificity"] == pytest.approx(12 / 14)


def test_hd95_known_cases() -> None:
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[5, 5] = True
    b[5, 10] = True
    assert hd95(a, b) == pytest.approx(5.0)
    # concentric disks, radii 10 and 14: every surface point is ~4 px from the other surface
    assert hd95(_disk((64, 64), (32, 32), 10), _disk((64, 64), (32, 32), 14)) == pytest.approx(4.0, abs=1.0)
    assert math.isnan(hd95(a, np.zeros_like(a)))


def test_aggregate_skips_nan() -> None:
    agg = aggregate([{"dice": 1.0, "hd95": math.nan}, {"dice": 0.5, "hd95": 2.0}], ("dice", "hd95"))
    assert agg["n"] == 2
    assert agg["dice"]["mean"] == pytest.approx(0.75)
    assert agg["hd95"]["mean"] == pytest.approx(2.0) and agg["hd95"]["n"] == 1


# ------------------------------------------------------------------ readers
def test_map_finding() -> None:
    assert map_finding("COVID-19") == COVID
    assert map_finding("COVID-19, ARDS") == COVID
    assert map_finding("No Finding") == NORMAL
    assert map_finding("Pneumocystis") == OTHER
    assert map_finding("ARDS") is None
    assert map_finding("todo") is None


def test_readers_on_real_layouts(data_dir: Path) -> None:
    qu = read_covid_qu_ex(data_dir / "covid-qu-ex")
    assert {r.folder_split for r in qu} == {"Train", "Val"}
    assert sum(r.folder_split == "Val" for r in qu) == 632
    assert all(r.lung_mask and Path(r.lung_mask).is_file() for r in qu[:20])
    assert {r.label for r in qu} == {NORMAL, COVID, OTHER}

    ieee = read_ieee8023(data_dir / "ieee8023")
    assert len(ieee) == 580 and all(Path(r.image).is_file() for r in ieee)
    assert all(r.patient_id for r in ieee)
    assert {"X-ray", "CT"} <= {r.modality for r in ieee}
    assert "PA" in {r.view for r in ieee}

    nih = read_nih(data_dir / "nih")
    assert len(nih) == 1000 and {r.label for r in nih} == {NORMAL, OTHER}
    assert all(r.patient_id and r.patient_id.isdigit() for r in nih)

    gb = read_generalblockchain(data_dir / "generalblockchain")
    assert len(gb) == 66
    assert all(r.lung_mask and Path(r.lung_mask).is_file() for r in gb)
    assert all(r.infection_mask for r in gb)


# ------------------------------------------------------------------ splits
def _fake(name: str, source: str, folder: str | None = None, pid: str | None = None) -> Record:
    return Record(image=f"/d/{source}/{name}.png", source=source, folder_split=folder, patient_id=pid)


def test_split_excludes_train_near_duplicate_of_val() -> None:
    recs = [_fake("a", "covid-qu-ex", "Train"), _fake("b", "covid-qu-ex", "Val"),
            _fake("c", "covid-qu-ex", "Train"), _fake("x", "ieee8023", pid="7"),
            _fake("y", "ieee8023", pid="7")]
    fp = np.eye(5, 16, dtype=np.float32)
    fp[0] = fp[1]  # a ~ b : same picture in Train and Val
    fp[3] = fp[2]  # ieee x ~ QU Train c : x must follow c into train, and y (same patient) too
    s = make_split(recs, Path("/d"), seed=0, fingerprints=fp)
    a = s["assignment"]
    assert "covid-qu-ex/a.png" not in a
    assert [e["image"] for e in s["excluded"]] == ["covid-qu-ex/a.png"]
    assert a["covid-qu-ex/b.png"] == "val" and a["covid-qu-ex/c.png"] == "train"
    assert a["ieee8023/x.png"] == a["ieee8023/y.png"] == "train"


@pytest.fixture(scope="module")
def real_split(data_dir: Path) -> tuple[list[Record], dict]:
    recs = read_all(data_dir, ("covid-qu-ex", "ieee8023", "nih"), max_images=150)
    return recs, make_split(recs, data_dir, seed=3)


def test_split_is_deterministic(real_split: tuple[list[Record], dict], data_dir: Path) -> None:
    recs, first = real_split
    assert make_split(recs, data_dir, seed=3)["assignment"] == first["assignment"]
    other = make_split(recs, data_dir, seed=4)["assignment"]
    assert other != first["assignment"]  # the seed matters for sources without folders
    qu = {k: v for k, v in first["assignment"].items() if k.startswith("covid-qu-ex")}
    assert qu == {k: v for k, v in other.items() if k.startswith("covid-qu-ex")}


def test_split_is_patient_disjoint_and_duplicate_free(real_split: tuple[list[Record], dict],
                                                      data_dir: Path) -> None:
    from xrayviewer.training.splits import compute_fingerprints

    recs, split = real_split
    a = split["assignment"]
    by_patient: dict[tuple[str, str], set[str]] = {}
    for r in recs:
        k = rel_key(r, data_dir)
        if r.patient_id and k in a:
            by_patient.setdefault((r.source, r.patient_id), set()).add(a[k])
    assert by_patient and all(len(v) == 1 for v in by_patient.values())
    kept = [r for r in recs if rel_key(r, data_dir) in a]
    fp = compute_fingerprints(kept)
    for i, j in near_duplicate_pairs(fp):
        assert a[rel_key(kept[i], data_dir)] == a[rel_key(kept[j], data_dir)]
    for r in recs:  # COVID-QU-Ex keeps its own folders
        k = rel_key(r, data_dir)
        if r.source == "covid-qu-ex" and k in a:
            assert a[k] == r.folder_split.lower()



def test_fingerprints_zero_a_bad_file_but_raise_a_missing_library(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken film must not stop the split; a missing OpenCV must, or every film would go
    unfingerprinted and the split would silently keep near-duplicates on both sides."""
    from xrayviewer.training import splits

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    rec = Record(image=str(bad), source="nih", patient_id="p1")
    fp = splits.compute_fingerprints([rec])
    assert fp.shape == (1, 1024) and not fp.any()

    def no_cv2(path: Path) -> np.ndarray:
        raise ModuleNotFoundError("No module named 'cv2'")

    monkeypatch.setattr(splits, "read_gray", no_cv2)
    with pytest.raises(ImportError):
        splits.compute_fingerprints([rec])


# ------------------------------------------------------------------ CLI end to end
def test_cli_help() -> None:
    res = subprocess.run([sys.executable, "-m", "xrayviewer.training", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0
    for sub in ("split", "train-lung", "evaluate-lung", "export-lung"):
        assert sub in res.stdout


def test_cli_end_to_end_one_step(data_dir: Path, tmp_path: Path) -> None:
    from xrayviewer.modellayer import modelstore
    from xrayviewer.training.__main__ import main

    common = ["--data-dir", str(data_dir), "--max-images", "6"]
    split = tmp_path / "split.json"
    run = tmp_path / "run"
    assert main(["split", *common, "--out", str(split)]) == 0
    assert main(["train-lung", *common, "--split", str(split), "--out", str(run), "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "2", "--input-size", "32",
                 "--base-filters", "2", "--depth", "2"]) == 0
    assert (run / "model.keras").is_file() and (run / "history.csv").is_file()
    assert main(["evaluate-lung", *common, "--split", str(split), "--run", str(run)]) == 0
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["covid_qu_ex_val"]["n"] == 6
    assert main(["export-lung", "--split", str(split), "--run", str(run),
                 "--models-dir", str(tmp_path / "models"), "--name", "lung_unet"]) == 0
    out = tmp_path / "models" / "lung_unet"
    for f in ("lung_unet.keras", "card.json", "loss_curves.png", "val_metrics.csv"):
        assert (out / f).is_file(), f
    modelstore.clear_cache()
    _, card = modelstore.load_model("lung_unet", tmp_path / "models")
    assert card.input_size == 32 and card.sha256 == modelstore.sha256_file(out / "lung_unet.keras")
    assert card.training_command.startswith("python -m xrayviewer.training train-lung")
    assert "no GPU" in card.hardware["summary"] or card.hardware["gpus"]
    modelstore.clear_cache()

    # a second architecture, not bundled, recorded beside the bundled one: weights untouched
    res = tmp_path / "resunet"
    assert main(["train-lung", *common, "--split", str(split), "--out", str(res), "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "2", "--input-size", "32",
                 "--base-filters", "2", "--depth", "2", "--variant", "resunet"]) == 0
    assert main(["evaluate-lung", *common, "--split", str(split), "--run", str(res)]) == 0
    before = json.loads((out / "card.json").read_text())
    assert main(["record-lung-comparison", "--run", str(res), "--models-dir", str(tmp_path / "models"),
                 "--note", "smoke"]) == 0
    after = json.loads((out / "card.json").read_text())
    assert after["sha256"] == before["sha256"] == modelstore.sha256_file(out / "lung_unet.keras")
    assert set(after["comparison"]) == set(before["comparison"]) | {"resunet"}
    assert after["comparison"]["resunet"]["architecture"].startswith("resunet")
    assert after["notes"]["comparison"] == "smoke"
    _, card = modelstore.load_model("lung_unet", tmp_path / "models")  # still passes the load checks
    (out / "lung_unet.keras").write_bytes(b"changed")
    with pytest.raises(SystemExit):
        main(["record-lung-comparison", "--run", str(res), "--models-dir", str(tmp_path / "models")])
    modelstore.clear_cache()


def test_train_tb_and_export_smoke(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train-tb on a few films per source (features, design comparison, checks), export-tb
    into a models folder, and the exported head loads through the app's class."""
    import shutil

    from xrayviewer.modellayer import modelstore
    from xrayviewer.training.__main__ import main

    monkeypatch.setenv("XRAYVIEWER_DATA_DIR", str(data_dir))
    common = ["--data-dir", str(data_dir), "--max-images", "24"]
    split, run, models = tmp_path / "split.json", tmp_path / "tb", tmp_path / "models"
    assert main(["split", *common, "--out", str(split)]) == 0
    assert main(["train-tb", *common, "--split", str(split), "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert {r["design"] for r in summary["comparison"]} == {"gap", "lung", "multi_gap", "multi_lung", "crop_gap"}
    assert summary["counts"]["shenzhen_train"]["n"] > 0 and "other_sources_normal_films" in summary["checks"]
    for name in ("xray_classifier", "lung_unet"):
        shutil.copytree(modelstore.models_dir() / name, models / name)
    assert main(["export-tb", "--run", str(run), "--models-dir", str(models)]) == 0
    card = modelstore.read_card("tb_head", models)
    assert card.training_command.startswith("python -m xrayviewer.training train-tb")
    assert card.raw["parity_check"]["n"] > 0 and (models / "tb_head" / "comparison.csv").is_file()
    modelstore.clear_cache()


def test_continue_from_bundle_rebuilds_the_lineage_and_refuses_altered_weights(tmp_path: Path) -> None:
    """A continuation of a bundled model must keep every earlier stage's epochs and time in its
    card; the bundle's run folders are rebuilt from its card, and weights that do not match
    the card's sha256 are refused rather than continued under the card's name."""
    import shutil

    from xrayviewer.modellayer import modelstore
    from xrayviewer.training.__main__ import main
    from xrayviewer.training.export_common import lineage, read_meta, total_epochs

    src = modelstore.models_dir() / "opacity_generator"
    card = json.loads((src / "card.json").read_text())
    bundle = tmp_path / "models" / "opacity_generator"
    shutil.copytree(src, bundle)
    out = tmp_path / "legacy"
    assert main(["continue-from-bundle", "--model-dir", str(bundle), "--out", str(out)]) == 0
    stages = card["training_stages"]
    last = out / f"stage{len(stages)}"
    assert (last / "model.keras").read_bytes() == (bundle / card["weights_file"]).read_bytes()
    chain = lineage(read_meta(last))
    assert [m["command"] for m in chain] == [s["command"] for s in stages]
    assert total_epochs(read_meta(last)) == sum(int(s["epochs_run"]) for s in stages)
    assert chain[0]["init_from"] is None and chain[-1]["input_normalization"] == card.get(
        "input_normalization", "display-v1")

    with open(bundle / card["weights_file"], "ab") as fh:
        fh.write(b"x")
    with pytest.raises(SystemExit, match="sha256"):
        main(["continue-from-bundle", "--model-dir", str(bundle), "--out", str(tmp_path / "again")])
