"""The model card is the contract between a training export and the app.

A card (``models/<name>/card.json``) carries a ``schema_version``; this version of
xrayviewer reads :data:`SCHEMA_VERSIONS`. Every card has the fields of :class:`ModelCard`
(:data:`REQUIRED_FIELDS`, checked and typed here); each model adds a typed section of its own,
a frozen dataclass defined next to the code that uses it and parsed from the same JSON object
with :class:`CardFields`:

* ``classifier.ClassifierCard``: class order equal to the code's ``CLASS_NAMES``, the
  calibration ``temperature`` (required), ``input_mode``, ``operating_points``, embedding
  statistics;
* ``gate.GateCard``: label order equal to the code's ``GATE_CLASSES``;
* ``lung.LungCard``: labels 1/2 are the right/left lung of ``postprocess``;
* ``opacity.OpacityCard``: ``min_region_fraction``, ``input_crop``, ``crop_margin``.

Whatever breaks the contract raises :class:`~xrayviewer.errors.CardError` naming the card
file and the field. ``modelstore.load_model`` also checks the card's ``input_size`` against
the loaded network's input shape. The training exporters write :data:`SCHEMA_VERSION` and read
every card they write back through this module, so a fresh training cannot produce a card the
app refuses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import CardError
from .preprocessing import LEGACY, NORMALIZATIONS

CARD_FILE = "card.json"
SCHEMA_VERSION = 1  # what the exporters write
SCHEMA_VERSIONS = (1,)  # what this version reads
REQUIRED_FIELDS = (
    "schema_version", "name", "version", "architecture", "input_size", "preprocessing", "output",
    "threshold", "labels", "training_data", "metrics", "training_command",
    "wall_time_s", "hardware", "library_versions", "weights_file", "sha256",
)
_MISSING: Any = object()


class CardFields:
    """Typed reads from a card's JSON object; each failure is a :class:`CardError` naming the
    card file and the field."""

    def __init__(self, data: dict[str, Any], path: Path) -> None:
        self.data = data
        self.path = path

    def error(self, name: str, message: str) -> CardError:
        return CardError(message, self.path, field=name)

    def value(self, name: str, default: Any = _MISSING) -> Any:
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise self.error(name, "missing (required by this model's card schema)")
        return default

    def text(self, name: str, default: Any = _MISSING) -> str:
        v = self.value(name, default)
        if v is not default and not isinstance(v, str):
            raise self.error(name, f"must be a string, got {v!r}")
        return v

    def number(self, name: str, default: Any = _MISSING, *, low: float | None = None,
               high: float | None = None, above: float | None = None) -> float:
        """A finite number; ``low``/``high`` inclusive bounds, ``above`` an exclusive one."""
        v = self.value(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.error(name, f"must be a finite number, got {v!r}")
        broken = [rule for rule, ok in ((f">= {low}", low is None or v >= low), (f"<= {high}", high is None or v <= high),
                                        (f"> {above}", above is None or v > above)) if not ok]
        if broken:
            raise self.error(name, f"must be {' and '.join(broken)}, got {v!r}")
        return float(v)

    def integer(self, name: str, *, low: int | None = None) -> int:
        v = self.value(name)
        if isinstance(v, bool) or not isinstance(v, int) or (low is not None and v < low):
            raise self.error(name, f"must be an integer{f' >= {low}' if low is not None else ''}, got {v!r}")
        return v

    def mapping(self, name: str, default: Any = _MISSING) -> dict[str, Any]:
        v = self.value(name, default)
        if not isinstance(v, dict):
            raise self.error(name, f"must be a JSON object, got {type(v).__name__}")
        return v

    def texts(self, name: str) -> tuple[str, ...]:
        v = self.value(name)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.error(name, f"must be a list of strings, got {v!r}")
        return tuple(v)

    def choice(self, name: str, options: Sequence[str], default: Any = _MISSING) -> str:
        v = self.value(name, default)
        if v not in options:
            raise self.error(name, f"{v!r} is none of {', '.join(map(repr, options))}")
        return v

    def label_order(self, name: str, expected: Sequence[str]) -> tuple[str, ...]:
        """A ``{"0": label, "1": label, ...}`` object that must name ``expected`` in its order."""
        labels = self.mapping(name)
        order = tuple(str(labels.get(str(i))) for i in range(len(labels)))
        if order != tuple(expected):
            raise self.error(name, f"label order {list(labels.values())} differs from the code's "
                                   f"{list(expected)}: the outputs would be named wrongly")
        return order


class CardSection(Protocol):
    """A model's typed part of its card: ``from_fields`` reads and checks it."""

    @classmethod
    def from_fields(cls, fields: CardFields) -> CardSection: ...


@dataclass(frozen=True)
class ModelCard:
    """The model card of a bundled model (the JSON is the source of truth; ``raw`` keeps all)."""

    name: str
    version: str
    architecture: str
    input_size: int
    preprocessing: str
    output: str
    threshold: float
    labels: dict[str, str]
    training_data: dict[str, Any]
    metrics: dict[str, Any]
    training_command: str
    wall_time_s: float
    hardware: dict[str, Any]
    library_versions: dict[str, str]
    weights_file: str
    sha256: str
    directory: Path
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # The model input the weights were trained on (xrayviewer.modellayer.preprocessing); cards
    # written before the robust input existed lack the field and mean the legacy display input.
    input_normalization: str = LEGACY
    schema_version: int = SCHEMA_VERSION
    # The model's own typed part (e.g. classifier.ClassifierCard); None when read without one.
    section: Any = field(default=None, compare=False)

    @property
    def path(self) -> Path:
        return self.directory / CARD_FILE

    @property
    def weights_path(self) -> Path:
        return self.directory / self.weights_file


def parse_card(data: Any, path: Path, name: str, section: type[CardSection] | None = None) -> ModelCard:
    """Check a card's JSON object against the schema (common fields, then ``section``)."""
    if not isinstance(data, dict):
        raise CardError("the card is not a JSON object", path, field="(card)")
    f = CardFields(data, path)
    if "schema_version" not in data:
        raise f.error("schema_version", f"missing: this xrayviewer reads card schema versions "
                                        f"{list(SCHEMA_VERSIONS)} (re-export the model, or add the field)")
    schema = data["schema_version"]
    if type(schema) is not int or schema not in SCHEMA_VERSIONS:
        raise f.error("schema_version", f"{schema!r} is a card schema this version does not know "
                                        f"(known: {list(SCHEMA_VERSIONS)}); update xrayviewer")
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise f.error(missing[0], f"missing (the card lacks required fields {missing})")
    if data["name"] != name:
        raise f.error("name", f"card names model {data['name']!r}, expected {name!r}")
    sha = str(data["sha256"]).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise f.error("sha256", "not a 64-hex-digit digest")
    norm = f.value("input_normalization", LEGACY)
    if norm not in NORMALIZATIONS:
        raise f.error("input_normalization", f"names an input normalization this version does not know: "
                                             f"{norm!r} (known: {', '.join(NORMALIZATIONS)}); update xrayviewer")
    wf = str(data["weights_file"])
    if Path(wf).name != wf:
        raise f.error("weights_file", f"must be a bare file name, got {wf!r}")
    return ModelCard(
        name=name, version=str(data["version"]), architecture=str(data["architecture"]),
        input_size=f.integer("input_size", low=1), preprocessing=str(data["preprocessing"]),
        output=str(data["output"]), threshold=f.number("threshold", low=0.0, high=1.0),
        labels={str(k): str(v) for k, v in f.mapping("labels").items()},
        training_data=f.mapping("training_data"), metrics=f.mapping("metrics"),
        training_command=str(data["training_command"]), wall_time_s=f.number("wall_time_s", low=0.0),
        hardware=f.mapping("hardware"), library_versions=f.mapping("library_versions"),
        weights_file=wf, sha256=sha, directory=path.parent, raw=data, input_normalization=norm,
        schema_version=schema, section=section.from_fields(f) if section is not None else None,
    )


def check_input_shape(card: ModelCard, model: Any) -> None:
    """The card's ``input_size`` against the loaded network's (batch, rows, cols, channels)
    input; a dimension the network leaves open (None) accepts any size."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list):
        shape = shape[0]
    if not shape or len(shape) != 4:
        return
    rows, cols = shape[1], shape[2]
    if any(d is not None and d != card.input_size for d in (rows, cols)):
        raise CardError(f"{card.input_size}, but the network in {card.weights_file} takes {rows}x{cols} "
                        "inputs", card.path, field="input_size")
