"""Per-source evaluation (``evaluate-sources``): figures from per-film rows, and real films
through the app's own path with the bundled models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xrayviewer.training.datasets import NORMAL, Record
from xrayviewer.training.source_eval import film_rows, markdown, summarize, write_into_card


def test_summarize_and_markdown() -> None:
    rows = [
        {"image": "a", "any_region": 1, "grade": "mild", "lung_dice": 0.9, "opacity_dice": 0.5,
         "truth_px": 10, "tp": 5, "pred_px": 10, "truth_grade": "mild"},
        {"image": "b", "any_region": 0, "grade": "none", "lung_dice": 0.8, "opacity_dice": 1.0,
         "truth_px": 0, "tp": 0, "pred_px": 0, "truth_grade": "none"},
        {"image": "c", "any_region": 1, "grade": "severe", "truth_grade": "none"},
    ]
    t = summarize("src", "subset", rows)
    assert t["n"] == 3 and t["n_any_region"] == 2 and t["any_region_rate"] == pytest.approx(0.6667, abs=1e-4)
    assert t["lung_dice"] == pytest.approx(0.85)
    assert t["opacity_dice_per_film"] == 0.5  # only films with a lesion
    assert t["opacity_dice_pooled"] == pytest.approx(2 * 5 / 20)
    assert t["severity_agreement"] == pytest.approx(2 / 3, abs=1e-4)
    md = markdown([t])
    assert "| src | subset | 3 | 0.850 | 0.500 (0.500) | 2 (66.7 %) | 66.7 % |" in md


def test_real_films_through_the_bundled_models(data_dir: Path, tmp_path: Path) -> None:
    from xrayviewer.imaging import load_image
    from xrayviewer.modellayer.lung import LungSegmenter
    from xrayviewer.modellayer.opacity import OpacityDetector
    from xrayviewer.training.datasets import read_gray

    qu = data_dir / "covid-qu-ex" / "Val" / "Normal"
    name = sorted((qu / "images").glob("*.png"))[0].name
    rec = Record(image=str(qu / "images" / name), source="covid-qu-ex", label=NORMAL,
                 lung_mask=str(qu / "lung masks" / name), infection_mask=str(qu / "infection masks" / name))
    films = [("qu", read_gray(rec.image), rec), ("dcm", load_image(data_dir / "dicom" / "RG1_J2KI.dcm"), None)]
    rows = film_rows(films, LungSegmenter(), OpacityDetector())
    assert rows[0]["lung_dice"] > 0.9 and rows[0]["truth_grade"] == "none"
    assert "lung_dice" not in rows[1] and rows[1]["grade"] in ("none", "mild", "moderate", "severe")
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"name": "x"}))
    write_into_card(card, {"models": {}, "split": "s", "table": [summarize("qu", "Val Normal", rows[:1])]})
    assert json.loads(card.read_text())["per_source_evaluation"]["table"][0]["n"] == 1


def test_summary_and_markdown_with_the_film_rule() -> None:
    rows = [{"image": "a", "any_region": 0, "grade": "none", "top_class": "Normal", "withheld_regions": 2},
            {"image": "b", "any_region": 1, "grade": "mild", "top_class": "COVID-19", "withheld_regions": 0},
            {"image": "c", "any_region": 0, "grade": "none", "top_class": "Normal", "withheld_regions": 0}]
    t = summarize("src", "s", rows)
    assert t["n_withheld"] == 1 and t["n_any_region"] == 1
    assert t["called_not_normal_rate"] == pytest.approx(1 / 3, abs=1e-4)
    md = markdown([t])
    assert "film rule withheld" in md and "| src | s | 3 | - | - | 1 (33.3 %) | 1 | 33.3 % | - |" in md
    assert summarize("src", "s", [{"image": "x", "any_region": 0, "grade": "none"}])["n_withheld"] is None
