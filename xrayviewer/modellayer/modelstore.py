"""Locate, verify and load the bundled models (``models/<name>/card.json`` + weights).

Every load checks the card against its schema (:mod:`~xrayviewer.modellayer.cards`) and the
SHA-256 of the weights file before Keras sees it, and the card's input size against the
network's, so a truncated download, a tampered file or a card that does not fit the code fails
with a :class:`ModelError` naming the file (a :class:`CardError` also names the field) instead
of a Keras stack trace or, worse, silently wrong output. TensorFlow/Keras are imported lazily
so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .cards import CARD_FILE, REQUIRED_FIELDS, CardSection, ModelCard, check_input_shape, parse_card

__all__ = ["CARD_FILE", "ENV_MODELS_DIR", "REQUIRED_FIELDS", "ModelCard", "clear_cache", "load_model",
           "models_dir", "read_card", "sha256_file", "verify_weights"]

log = logging.getLogger(__name__)

ENV_MODELS_DIR = "XRAYVIEWER_MODELS_DIR"
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
    return Path(__file__).resolve().parents[2] / "models"


def read_card(name: str, root: Path | None = None, section: type[CardSection] | None = None) -> ModelCard:
    """Read and validate ``<models>/<name>/card.json`` against the card schema
    (:mod:`~xrayviewer.modellayer.cards`), with the model's own ``section`` when given."""
    path = (root or models_dir()) / name / CARD_FILE
    if not path.is_file():
        raise ModelError("model card not found", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model card unreadable: {exc}", path) from exc
    return parse_card(data, path, name, section)


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


def load_model(name: str, root: Path | None = None,
               section: type[CardSection] | None = None) -> tuple[Any, ModelCard]:
    """Verified, cached (model, card): the card checked against its schema (and ``section``),
    the weights against its sha256, the network's input shape against its ``input_size``.
    Raises :class:`ModelError` naming the bad file (:class:`CardError`: also the field)."""
    card = read_card(name, root, section)
    key = (str(card.directory.resolve()), card.sha256)
    with _lock:
        model = _cache.get(key)
        if model is None:
            path = verify_weights(card)
            try:
                import keras  # lazy: TensorFlow start-up is seconds

                model = keras.saving.load_model(path, compile=False)
            except Exception as exc:
                raise ModelError(f"Keras cannot load the model: {exc}", path) from exc
            log.info("loaded model %s v%s from %s", name, card.version, path)
            _cache[key] = model
    check_input_shape(card, model)  # the same weights may come with another card
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
