"""The model card is the contract: schema version, typed per-model sections, clear errors.

Every invalid card is refused with a :class:`CardError` (a :class:`ModelError`) naming the
card file and the field; all four bundled cards pass. Only the input-shape test loads a
network (the 64 px gate, the smallest).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from xrayviewer.errors import CardError, ModelError
from xrayviewer.inference.analyzer import model_names, read_model_card
from xrayviewer.modellayer import modelstore
from xrayviewer.modellayer.cards import SCHEMA_VERSION, SCHEMA_VERSIONS, check_input_shape
from xrayviewer.modellayer.classifier import CLASS_NAMES, ClassifierCard
from xrayviewer.modellayer.gate import GATE_CLASSES, DomainGate, GateCard
from xrayviewer.modellayer.lung import LungCard
from xrayviewer.modellayer.opacity import OpacityCard
from xrayviewer.modellayer.tuberculosis import TBCard

SECTIONS = {"xray_classifier": ClassifierCard, "xray_gate": GateCard, "lung_unet": LungCard,
            "opacity_generator": OpacityCard, "tb_head": TBCard}


def _edited(tmp_path: Path, name: str, edit: Callable[[dict], None], weights: bool = False) -> Path:
    """A models folder holding a copy of one bundled model's card (and weights) with ``edit`` applied."""
    src = modelstore.models_dir() / name
    dest = tmp_path / "models" / name
    if weights:
        shutil.copytree(src, dest)
    else:
        dest.mkdir(parents=True)
        shutil.copyfile(src / "card.json", dest / "card.json")
    data = json.loads((dest / "card.json").read_text())
    edit(data)
    (dest / "card.json").write_text(json.dumps(data, indent=1))
    return dest.parent


def _refused(root: Path, name: str, field: str) -> CardError:
    with pytest.raises(CardError) as exc:
        modelstore.read_card(name, root, SECTIONS[name])
    err = exc.value
    assert isinstance(err, ModelError)  # callers that catch ModelError keep working
    assert err.field == field
    card = root / name / "card.json"
    assert err.source == str(card) and str(card) in str(err) and repr(field) in str(err), str(err)
    return err


def test_bundled_cards_validate() -> None:
    """All five bundled cards pass the schema with their model's own section."""
    assert set(model_names()) == set(SECTIONS)
    for name in model_names():
        card = read_model_card(name)
        assert card.schema_version == SCHEMA_VERSION in SCHEMA_VERSIONS
        assert isinstance(card.section, SECTIONS[name])
    clf = read_model_card("xray_classifier").section
    assert clf.class_names == CLASS_NAMES and clf.temperature > 0 and set(clf.operating_points) == set(CLASS_NAMES)
    assert read_model_card("xray_gate").section.classes == GATE_CLASSES


def test_missing_temperature(tmp_path: Path) -> None:
    root = _edited(tmp_path, "xray_classifier", lambda d: d.pop("temperature"))
    assert "missing" in str(_refused(root, "xray_classifier", "temperature"))


def test_temperature_must_be_positive(tmp_path: Path) -> None:
    root = _edited(tmp_path, "xray_classifier", lambda d: d.update(temperature=0))
    _refused(root, "xray_classifier", "temperature")


def test_wrong_class_order(tmp_path: Path) -> None:
    root = _edited(tmp_path, "xray_classifier", lambda d: d.update(class_names=["COVID-19", "Normal", "Other pneumonia"]))
    assert "class order" in str(_refused(root, "xray_classifier", "class_names"))


def test_wrong_classifier_label_order(tmp_path: Path) -> None:
    def swap(d: dict) -> None:
        d["labels"]["0"], d["labels"]["1"] = d["labels"]["1"], d["labels"]["0"]

    _refused(_edited(tmp_path, "xray_classifier", swap), "xray_classifier", "labels")


def test_wrong_gate_label_order(tmp_path: Path) -> None:
    def swap(d: dict) -> None:
        d["labels"]["1"], d["labels"]["2"] = d["labels"]["2"], d["labels"]["1"]

    root = _edited(tmp_path, "xray_gate", swap)
    assert "label order" in str(_refused(root, "xray_gate", "labels"))
    with pytest.raises(CardError, match="labels"):  # the model class refuses it too, before Keras
        DomainGate(models_root=root)


def test_swapped_lung_labels(tmp_path: Path) -> None:
    def swap(d: dict) -> None:
        d["labels"]["1"], d["labels"]["2"] = d["labels"]["2"], d["labels"]["1"]

    _refused(_edited(tmp_path, "lung_unet", swap), "lung_unet", "labels")


def test_opacity_lung_box_needs_the_robust_input(tmp_path: Path) -> None:
    root = _edited(tmp_path, "opacity_generator", lambda d: d.update(input_crop="lung-box",
                                                                       input_normalization="display-v1"))
    _refused(root, "opacity_generator", "input_crop")


@pytest.mark.parametrize("version", [2, 0, "1", True, None])
def test_unknown_schema_version(tmp_path: Path, version: object) -> None:
    root = _edited(tmp_path, "lung_unet", lambda d: d.update(schema_version=version))
    assert "update xrayviewer" in str(_refused(root, "lung_unet", "schema_version"))


def test_missing_schema_version(tmp_path: Path) -> None:
    root = _edited(tmp_path, "xray_gate", lambda d: d.pop("schema_version"))
    assert "missing" in str(_refused(root, "xray_gate", "schema_version"))


def test_missing_common_field(tmp_path: Path) -> None:
    root = _edited(tmp_path, "opacity_generator", lambda d: d.pop("weights_file"))
    _refused(root, "opacity_generator", "weights_file")


def test_input_size_checked_against_the_network_shape() -> None:
    card = read_model_card("xray_gate")
    check_input_shape(card, SimpleNamespace(input_shape=(None, 64, 64, 1)))
    check_input_shape(card, SimpleNamespace(input_shape=(None, None, None, 1)))  # fully convolutional
    with pytest.raises(CardError, match="takes 128x128") as exc:
        check_input_shape(card, SimpleNamespace(input_shape=(None, 128, 128, 1)))
    assert exc.value.field == "input_size" and str(card.path) in str(exc.value)


def test_input_size_mismatch_refused_at_load(tmp_path: Path) -> None:
    root = _edited(tmp_path, "xray_gate", lambda d: d.update(input_size=32), weights=True)
    modelstore.clear_cache()
    with pytest.raises(CardError, match="input_size") as exc:
        modelstore.load_model("xray_gate", root, GateCard)
    assert exc.value.field == "input_size" and str(root / "xray_gate" / "card.json") in str(exc.value)
    modelstore.clear_cache()


def test_export_writes_the_schema_and_checks_it(tmp_path: Path) -> None:
    """A training export writes schema_version and reads the card back through these checks."""
    from xrayviewer.training.export_common import write_card

    data = json.loads((modelstore.models_dir() / "xray_gate" / "card.json").read_text())
    data.pop("schema_version")
    dest = tmp_path / "xray_gate"
    dest.mkdir()
    written = json.loads(write_card(dest, data, GateCard).read_text())
    assert written["schema_version"] == SCHEMA_VERSION
    data["labels"] = {"0": "not a chest X-ray", "1": "lateral chest X-ray", "2": "frontal chest X-ray"}
    with pytest.raises(CardError, match="labels"):
        write_card(dest, data, GateCard)


def test_tb_card_needs_its_calibration_and_base_classifier(tmp_path: Path) -> None:
    root = _edited(tmp_path, "tb_head", lambda c: c["calibration"].pop("a"))
    assert "Platt" in str(_refused(root, "tb_head", "calibration"))
    root = _edited(tmp_path / "b", "tb_head", lambda c: c["base_model"].update(sha256="abc"))
    _refused(root, "tb_head", "base_model")
    root = _edited(tmp_path / "c", "tb_head", lambda c: c.update(pooling="max"))
    _refused(root, "tb_head", "pooling")
