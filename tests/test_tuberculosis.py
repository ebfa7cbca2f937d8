"""The tuberculosis head (models/tb_head): its card, its checks at load, and its scores on
real Shenzhen films of the split's val part through the app's one Analyzer."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from xrayviewer.errors import ModelError
from xrayviewer.modellayer import modelstore
from xrayviewer.modellayer.tuberculosis import LABEL, MODEL_NAME, POOLINGS, TuberculosisHead, cell_weights, pooled

SHENZHEN = ("tb-shenzhen", "Lung Segmentation", "CXR_png")
# Val-part films (the card lists all 133): a TB film clearly above the operating point and a
# normal one clearly below, with the bundled head's probabilities when it was exported.
TB_FILM, NORMAL_FILM = "CHNCXR_0332_1.png", "CHNCXR_0023_0.png"  # 0.69, 0.10; threshold 0.54


@pytest.fixture(scope="module")
def card() -> modelstore.ModelCard:
    return modelstore.read_card(MODEL_NAME)


@pytest.fixture(scope="module")
def analyzer():
    from xrayviewer.inference.analyzer import Analyzer

    a = Analyzer(device="cpu")
    a.load()
    return a


def test_card_validates_and_says_what_the_score_means(card: modelstore.ModelCard) -> None:
    raw = card.raw
    assert modelstore.verify_weights(card) == card.weights_path and card.weights_path.suffix == ".npz"
    clf = modelstore.read_card("xray_classifier")
    assert raw["base_model"]["name"] == clf.name and raw["base_model"]["sha256"] == clf.sha256
    assert raw["pooling"] in POOLINGS and raw["feature_layers"]
    assert card.labels["1"] == LABEL and 0 < card.threshold < 1
    assert raw["operating_points"][LABEL]["threshold"] == card.threshold
    assert raw["calibration"]["a"] > 0 and "cross_fitted_2fold" in raw["calibration"]
    val = card.metrics["shenzhen_val"]
    assert val["n"] == len(card.training_data["shenzhen_val_films"]) == 133
    assert 0.5 < val["auc"] <= 1 and val["ci95_bootstrap"]["auc"][0] < val["auc"] < val["ci95_bootstrap"]["auc"][1]
    assert "tb-shenzhen only" in card.training_data["sources"]
    assert {r["design"] for r in raw["comparison"]} >= {"gap", "lung", "crop_gap"}
    assert "fourth_classifier_class" in raw["not_compared"]
    checks = raw["checks"]
    assert checks["other_sources_normal_films"]["n"] > 200 and "cv_auc" in checks["source_probe"]["embedding"]
    assert "not a diagnosis" in raw["meaning"] and "not exclusive" in raw["meaning"]
    assert card.training_command.startswith("python -m xrayviewer.training train-tb")
    assert card.hardware["summary"] and card.library_versions["numpy"]
    assert raw["parity_check"]["max_abs_probability_difference"] <= raw["parity_check"]["tolerance"]


def test_listed_val_films_are_in_the_splits_val_part(card: modelstore.ModelCard) -> None:
    """The split's rule for sources with patient ids: a seeded hash of the patient below 0.2."""
    from xrayviewer.training.splits import _hash_unit

    films = card.training_data["shenzhen_val_films"]
    assert {TB_FILM, NORMAL_FILM} <= set(films)
    assert all(_hash_unit(0, f"tb-shenzhen:{f.split('_')[1]}") < 0.2 for f in films)


def test_val_films_score_on_the_right_side_of_the_operating_point(analyzer, card: modelstore.ModelCard,
                                                                     data_dir: Path) -> None:
    from xrayviewer.imaging import load_image

    folder = data_dir.joinpath(*SHENZHEN)
    films = card.training_data["shenzhen_val_films"]
    tb = [f for f in films if f.endswith("_1.png")][:10]
    normal = [f for f in films if f.endswith("_0.png")][:10]
    names = [TB_FILM, NORMAL_FILM, *tb, *normal]
    results = analyzer.analyze_batch([load_image(folder / f) for f in names])
    assert all(r.gate.accepted for r in results)
    by_name = dict(zip(names, results))
    assert by_name[TB_FILM].tb_positive and by_name[TB_FILM].prob_tuberculosis >= card.threshold
    assert not by_name[NORMAL_FILM].tb_positive and by_name[NORMAL_FILM].prob_tuberculosis < card.threshold
    # the card's validation figures (sensitivity 0.82, specificity 0.93) on the first ten of each
    assert sum(by_name[f].tb_positive for f in tb) >= 6
    assert sum(by_name[f].tb_positive for f in normal) <= 2
    for r in results:
        assert 0.0 <= r.prob_tuberculosis <= 1.0 and r.tb_operating_point == card.threshold
        assert r.tb_heatmap.shape == r.image_shape and 0 <= r.tb_heatmap.min() and r.tb_heatmap.max() <= 1
        assert float(r.tb_heatmap[r.lung_labels == 0].max(initial=0)) == 0.0  # masked to the lungs
        assert "tuberculosis" in r.timings and "tb_head@" in r.models_label()
        rec = r.to_record()
        assert rec["prob_tuberculosis"] == round(r.prob_tuberculosis, 4) and rec["tb_positive"] == r.tb_positive
        assert r.to_json()["tb_operating_point"] == card.threshold
    # the scores are the run's: the same film through the head alone
    head = analyzer._tb
    from xrayviewer.modellayer.preprocessing import film_input

    img = load_image(folder / TB_FILM)
    mask = analyzer._lung.segment_batch([film_input(img)])[0].mask
    assert head.score(img.display, mask, heatmap=False).probability == pytest.approx(
        by_name[TB_FILM].prob_tuberculosis, abs=1e-6)


def test_without_the_tb_model_results_say_so(tmp_path: Path, data_dir: Path) -> None:
    from xrayviewer.imaging import load_image
    from xrayviewer.inference.analyzer import TB_MISSING, Analyzer, model_names, require_models

    for name in model_names():
        if name != MODEL_NAME:
            shutil.copytree(modelstore.models_dir() / name, tmp_path / name)
    assert require_models(tmp_path) == []
    a = Analyzer(models_root=tmp_path)
    assert MODEL_NAME not in {m.name for m in a.model_infos()}
    r = a.analyze(load_image(data_dir.joinpath(*SHENZHEN) / TB_FILM))
    assert not a.has_tuberculosis and r.gate.accepted
    assert r.prob_tuberculosis is None and r.tb_positive is None and r.tb_heatmap is None
    assert TB_MISSING in r.warnings and r.probabilities is not None
    rec = r.to_record()
    assert rec["prob_tuberculosis"] is None and rec["tb_positive"] is None


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(modelstore.models_dir() / MODEL_NAME, root / MODEL_NAME)
    return root


def _classifier(sha: str) -> SimpleNamespace:
    return SimpleNamespace(card=SimpleNamespace(name="xray_classifier", sha256=sha))


def test_head_refuses_another_classifier_and_damaged_weights(tmp_path: Path, card: modelstore.ModelCard) -> None:
    root = _copy(tmp_path)
    with pytest.raises(ModelError, match="refit it"):
        TuberculosisHead(_classifier("0" * 64), models_root=root)
    weights = root / MODEL_NAME / card.weights_file
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ModelError, match="do not match the card"):
        TuberculosisHead(_classifier(card.raw["base_model"]["sha256"]), models_root=root)
    root = _copy(tmp_path / "b")
    path = root / MODEL_NAME / "card.json"
    raw = json.loads(path.read_text())
    raw["pooling"] = "max"
    path.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="pooling"):
        TuberculosisHead(_classifier(card.raw["base_model"]["sha256"]), models_root=root)


def test_pooling_and_heatmap_decomposition() -> None:
    """Lung pooling weights only the lung's cells; the heatmap's density integrates to the logit."""
    mask = np.zeros((64, 64), bool)
    mask[:, :32] = True
    w = cell_weights((4, 4), mask, (0, 64, 0, 64), "lung")
    assert w.sum() == pytest.approx(1) and np.all(w[:, 2:] == 0)
    assert np.allclose(cell_weights((4, 4), None, None, "lung"), 1 / 16)  # no mask: global average
    maps = [np.random.default_rng(0).random((4, 4, 3)), np.ones((2, 2, 2))]
    v = pooled(maps, mask, (0, 64, 0, 64), "lung")
    assert v.shape == (5,) and v[3:] == pytest.approx([1, 1])
    head = object.__new__(TuberculosisHead)
    head.pooling, head.w_raw, head._splits = "gap", np.array([0.5, -1.0, 2.0, 1.0, -0.5]), np.array([3])
    const = [np.full((4, 4, 3), 2.0), np.full((2, 2, 2), 3.0)]
    dens = head.density(const, (0, 64, 0, 64), None)
    assert dens.mean() == pytest.approx(pooled(const, None, None, "gap") @ head.w_raw)
    heat = head.heatmap(maps, (0, 64, 0, 64), (64, 64), mask)
    assert heat.max() == pytest.approx(1) and not heat[:, 32:].any()


def test_result_columns_are_appended(card: modelstore.ModelCard) -> None:
    from xrayviewer.inference.result import CSV_COLUMNS

    assert CSV_COLUMNS[-2:] == ("prob_tuberculosis", "tb_positive")
    assert CSV_COLUMNS.index("pixel_sha256") < CSV_COLUMNS.index("opacity_withheld_regions") < len(CSV_COLUMNS) - 2


def test_readout_and_heatmap_selector(tmp_path: Path) -> None:
    from factories import png_bytes
    from test_batch import ThresholdAnalyzer

    from xrayviewer.gui import readout
    from xrayviewer.gui.session import ViewerSession
    from xrayviewer.imaging import load_image
    from xrayviewer.rendering.overlay import OverlayOptions
    from xrayviewer.settings import Settings

    path = tmp_path / "film.png"
    path.write_bytes(png_bytes(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (80, 1))))
    r = ThresholdAnalyzer().analyze_batch([load_image(path)])[0]
    r = replace(r, regions=(), severity="none", involvement_pct={"right": 0.0, "left": 0.0, "total": 0.0})
    assert readout.summary_line(r)[1] == "ok"
    tb = replace(r, prob_tuberculosis=0.9, tb_positive=True, tb_operating_point=0.5,
                 tb_heatmap=np.ones(r.image_shape, np.float32))
    text, kind = readout.summary_line(tb)
    assert kind == "finding" and "tuberculosis score 90 %" in text
    assert readout.badge_kind({"status": "ok", "predicted_class": "Normal", "tb_positive": "True"}) == "finding"
    assert readout.badge_kind({"status": "ok", "predicted_class": "Normal", "tb_positive": "False"}) == "ok"
    assert "TB 90 % (flagged)" in readout.record_summary(tb.to_record())
    opts = OverlayOptions(heatmap=True)
    assert readout.legend_items(opts, tb, "tuberculosis")[-1].label == "Heatmap (Tuberculosis)"
    assert readout.legend_items(opts, r, "tuberculosis")[-1].label != "Heatmap (Tuberculosis)"  # none made
    s = ViewerSession(Settings(accepted_notice_version=1))
    s.open(path, load_image(path), (200, 200))
    s.analysis = tb
    assert s.next_heatmap_source() == "tuberculosis" and s.layers["heatmap"]
    assert s.render() is not None
    assert s.next_heatmap_source() == "classifier"
    with pytest.raises(ValueError):
        s.set_heatmap_source("opacity")


def test_pdf_shows_the_tb_score_and_heatmap(tmp_path: Path) -> None:
    import subprocess

    from factories import png_bytes
    from test_batch import ThresholdAnalyzer

    from xrayviewer.imaging import load_image
    from xrayviewer.reporting.pdf import ReportItem, write_pdf_report

    if shutil.which("pdftotext") is None:
        pytest.fail("pdftotext (poppler-utils) is needed to check PDF text")
    path = tmp_path / "film.png"
    path.write_bytes(png_bytes(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (80, 1))))
    img = load_image(path)
    r = ThresholdAnalyzer().analyze_batch([img])[0]
    tb = replace(r, prob_tuberculosis=0.873, tb_positive=True, tb_operating_point=0.54,
                 tb_heatmap=np.ones(r.image_shape, np.float32))
    pdf = write_pdf_report([ReportItem(tb, img, str(path)), ReportItem(r, img, str(path))], tmp_path / "r.pdf")
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "Tuberculosis (separate score)" in text and "87.3 %" in text and "above (flagged)" in text
    assert "Tuberculosis heatmap (score 87 %)" in text
    assert "Tuberculosis: not available" in text  # the second film's analysis had no TB model
    assert "87 % (+)" in text  # the batch summary's TB column


def test_cli_history_lists_the_tb_score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from xrayviewer.cli import main
    from xrayviewer.history import History

    monkeypatch.setenv("XRAYVIEWER_HISTORY_DB", str(tmp_path / "h.db"))
    h = History()
    base = {"path": "/a.png", "input_sha256": "x", "status": "ok", "predicted_class": "Normal", "prob_covid19": 0.1}
    h.record(base | {"involvement_total_pct": 1.5, "severity": "mild", "prob_tuberculosis": 0.8,
                     "tb_positive": True}, origin="cli")
    h.record(base | {"path": "/b.png"}, origin="cli")  # no opacity and no TB model in that installation
    h.close()
    out = io.StringIO()
    assert main(["history"], out=out) == 0
    text = out.getvalue()
    assert "involvement 1.5% mild, TB 80% (flagged)" in text and "/b.png  Normal (COVID-19 10%)" in text
    out = io.StringIO()
    assert main(["history", "--json"], out=out) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows[1]["prob_tuberculosis"] == 0.8 and rows[1]["tb_positive"] is True
