"""Locate, verify and load the bundled models (``models/<name>/card.json`` + weights).

Every load checks the card and the SHA-256 of the weights file before Keras sees it, so a
truncated download or a tampered file fails with a :class:`ModelError` naming the file
instead of a Keras stack trace or, worse, silently wrong output. TensorFlow/Keras are
imported lazily so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError

log = logging.getLogger(__name__)

ENV_MODELS_DIR = "XRAYVIEWER_MODELS_DIR"
CARD_FILE = "card.json"
REQUIRED_FIELDS = (
    "name", "version", "architecture", "input_size", "preprocessing", "output",
    "threshold", "labels", "training_data", "metrics", "training_command",
    "wall_time_s", "hardware", "library_versions", "weights_file", "sha256",
)

_cache: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def models_dir() -> Path:
    """Bundled models directory: env override, PyInstaller bundle, else ``<repo>/models``."""
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return Path(env)
    meipass = getattr(sys, "_MEIPASS", None)
    if getattr(sys, "frozen", False) and meipass:
        return Path(meipass) / "models"
    return Path(__file__).resolve().parent.parent / "models"


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
    # The model input the weights were trained on (xrayviewer.preprocessing); cards written
    # before the robust input existed lack the field and mean the legacy display input.
    input_normalization: str = "display-v1"

    @property
    def weights_path(self) -> Path:
        return self.directory / self.weights_file


def read_card(name: str, root: Path | None = None) -> ModelCard:
    """Read and validate ``<models>/<name>/card.json``."""
    directory = (root or models_dir()) / name
    path = directory / CARD_FILE
    if not path.is_file():
        raise ModelError("model card not found", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model card unreadable: {exc}", path) from exc
    if not isinstance(data, dict):
        raise ModelError("model card is not a JSON object", path)
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise ModelError(f"model card lacks required fields {missing}", path)
    if data["name"] != name:
        raise ModelError(f"card names model {data['name']!r}, expected {name!r}", path)
    try:
        input_size = int(data["input_size"])
        threshold = float(data["threshold"])
    except (TypeError, ValueError) as exc:
        raise ModelError(f"bad input_size/threshold in card: {exc}", path) from exc
    sha = str(data["sha256"]).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ModelError("card sha256 is not a 64-hex-digit digest", path)
    from .preprocessing import LEGACY, NORMALIZATIONS

    norm = str(data.get("input_normalization", LEGACY))
    if norm not in NORMALIZATIONS:
        raise ModelError(f"card names an input normalization this version does not know: {norm!r} "
                         f"(known: {', '.join(NORMALIZATIONS)}); update xrayviewer", path)
    wf = str(data["weights_file"])
    if Path(wf).name != wf:
        raise ModelError(f"weights_file must be a bare file name, got {wf!r}", path)
    return ModelCard(
        name=name, version=str(data["version"]), architecture=str(data["architecture"]),
        input_size=input_size, preprocessing=str(data["preprocessing"]),
        output=str(data["output"]), threshold=threshold,
        labels={str(k): str(v) for k, v in dict(data["labels"]).items()},
        training_data=dict(data["training_data"]), metrics=dict(data["metrics"]),
        training_command=str(data["training_command"]),
        wall_time_s=float(data["wall_time_s"]), hardware=dict(data["hardware"]),
        library_versions=dict(data["library_versions"]), weights_file=wf, sha256=sha,
        directory=directory, raw=data, input_normalization=norm,
    )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# Weights files already hashed in this process, by (path, size, mtime): `analyze` checks
# every model before it starts (require_models) and again as it loads each one.
_verified: dict[tuple[str, int, int], str] = {}


def verify_weights(card: ModelCard) -> Path:
    """Check the weights file exists and matches the card's SHA-256 (hashed once per process
    while the file's size and modification time stay the same)."""
    path = card.weights_path
    if not path.is_file():
        raise ModelError("model weights file missing", path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        digest = _verified.get(key) or sha256_file(path)
    except OSError as exc:
        raise ModelError(f"model weights unreadable: {exc}", path) from exc
    if digest == card.sha256:
        _verified[key] = digest
    if digest != card.sha256:
        raise ModelError(
            f"model weights do not match the card (sha256 {digest[:12]}..., card says "
            f"{card.sha256[:12]}...): file truncated, corrupted or replaced", path)
    return path


def load_model(name: str, root: Path | None = None) -> tuple[Any, ModelCard]:
    """Verified, cached (model, card). Raises :class:`ModelError` naming the bad file."""
    card = read_card(name, root)
    key = (str(card.directory.resolve()), card.sha256)
    with _lock:
        if key in _cache:
            return _cache[key], card
        path = verify_weights(card)
        try:
            import keras  # lazy: TensorFlow start-up is seconds

            model = keras.saving.load_model(path, compile=False)
        except Exception as exc:
            raise ModelError(f"Keras cannot load the model: {exc}", path) from exc
        log.info("loaded model %s v%s from %s", name, card.version, path)
        _cache[key] = model
        return model, card


# Inference as one traced graph per model (``XRAYVIEWER_GRAPH=0``: Keras's eager call).
GRAPH_ENV = "XRAYVIEWER_GRAPH"
_graphs: dict[int, tuple[Any, Any]] = {}


def graph_enabled() -> bool:
    return os.environ.get(GRAPH_ENV, "1").strip() not in ("0", "false", "no", "off")


class GraphInference:
    """``model(x, training=False)`` compiled into one TensorFlow graph (``tf.function``) whose
    input signature leaves the batch size free, so it is traced once per model.

    Keras calls a functional model layer by layer from Python; for these small networks
    that overhead is most of a call (a 128-pixel U-Net on one film: ~100 ms eager, ~14 ms as
    a graph). The graph is built in memory from the verified ``.keras`` model on its first
    call: nothing is cached on disk, so the card's sha256 stays the only source of truth.
    """

    def __init__(self, model: Any) -> None:
        import tensorflow as tf

        self.model = model
        shape = tuple(model.input_shape)
        spec = tf.TensorSpec((None, *shape[1:]), tf.float32)
        self._fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    def __call__(self, x: Any, training: bool = False) -> Any:
        if training:
            raise ValueError("GraphInference is for inference only")
        import tensorflow as tf

        return self._fn(tf.convert_to_tensor(x, tf.float32))


def inference_function(model: Any) -> Any:
    """The callable to run ``model`` for inference (``f(x, training=False)``): one shared
    :class:`GraphInference` per model object, or the model itself when graphs are off
    (``XRAYVIEWER_GRAPH=0``) or the model has no single fixed input."""
    if not graph_enabled():
        return model
    with _lock:
        hit = _graphs.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
        try:
            fn = GraphInference(model)
        except (AttributeError, TypeError, ValueError) as exc:  # e.g. several inputs
            log.debug("no graph for %s (%s): eager calls", getattr(model, "name", model), exc)
            return model
        _graphs[id(model)] = (model, fn)  # the model is kept alive with it: ids stay unique
        return fn


def clear_cache() -> None:
    """Forget loaded models and their graphs (tests; freeing memory)."""
    with _lock:
        _cache.clear()
        _graphs.clear()
