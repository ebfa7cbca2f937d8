"""Train, evaluate and export the disease classifier (Normal / COVID-19 / Other pneumonia).

Data: COVID-QU-Ex, the NIH subset and the *frontal, labelled* ieee8023 rows; the split file
from ``split`` (patient-disjoint, near-duplicates kept together) decides train/val.
GeneralBlockchain is left out: 62 of its 66 images are ieee8023 copies.

``exclude_source="ieee8023"`` makes the *source-disjoint* run: ieee8023 and every image in
another source that is a near-duplicate of an ieee8023 file (fingerprint corr > 0.98, e.g.
~170 COVID-QU-Ex COVID-19 images) are removed from training and validation, and all
frontal labelled ieee8023 rows become the test set.

A run directory holds ``model.keras`` (best epoch by validation macro AUC),
``history.csv``, ``train_meta.json``, ``eval/summary.json`` and ``eval/predictions.npz``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..modellayer.classifier import EMBEDDING_LAYER, ClassifierCard
from ..modellayer.common import mahalanobis, softmax
from ..modellayer.modelstore import sha256_file
from ..modellayer.preprocessing import LEGACY, NORMALIZATIONS
from .classifier_metrics import (
    auc_binary,
    cross_fitted_ece,
    expected_calibration_error,
    fit_temperature,
    macro_auc,
    nll,
    per_class_auc,
    reliability_diagram,
    sens_spec,
    youden_threshold,
)
from .datasets import COVID, NORMAL, OTHER, Record, _spread, fingerprint, is_frontal_xray, read_all, read_gray
from .export_common import card_for_update, preprocessing_text, provenance, write_card
from .runinfo import hardware_info, library_versions, resolve_augmentation, start_run, training_sets
from .splits import NEAR_DUP_CORR, read_split, rel_key

log = logging.getLogger(__name__)

CLASS_NAMES = (NORMAL, COVID, OTHER)
SOURCES = ("covid-qu-ex", "nih", "ieee8023")
COVID_SOURCES = ("covid-qu-ex", "ieee8023")  # the sources with COVID-19 films: leave-one-source-out runs
BALANCING = ("class", "source-class")
# source-class balancing: a pair's weight grows at most this much over plain class balancing
MAX_PAIR_BOOST = 4.0
MODEL_FILE = "model.keras"
WEAK_CHECK_PER_CLASS = 20


# ------------------------------------------------------------------ records
def labelled_frontal(records: list[Record]) -> list[Record]:
    return [r for r in records if r.label in CLASS_NAMES and is_frontal_xray(r)]


def split_records(data_dir: Path, split: dict, max_images: int | None
                  ) -> tuple[list[Record], list[Record], list[Record]]:
    """(train, val, every record read) for the classifier, per the split file."""
    recs = read_all(data_dir, SOURCES, max_images)
    a = split["assignment"]
    usable = labelled_frontal(recs)
    train = [r for r in usable if a.get(rel_key(r, data_dir)) == "train"]
    val = [r for r in usable if a.get(rel_key(r, data_dir)) == "val"]
    return train, val, recs


def _cached_per_image(records: list[Record], cache: Path | None, field: str,
                      compute: Callable[[list[Record]], list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays keyed by image path, kept in an .npz cache; ``compute`` runs only on the missing."""
    store: dict[str, np.ndarray] = {}
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            store = dict(zip(z["keys"].tolist(), z[field]))
    missing = [r for r in records if r.image not in store]
    if missing:
        store.update({r.image: a for r, a in zip(missing, compute(missing))})
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, keys=np.array(list(store)), **{field: np.stack(list(store.values()))})
    return store


def _fingerprints(records: list[Record], cache: Path | None) -> np.ndarray:
    """DATA.md fingerprints, cached by image path (they take ~20 s for the bundle)."""
    def compute(missing: list[Record]) -> list[np.ndarray]:
        with ThreadPoolExecutor(2) as ex:
            return list(ex.map(lambda r: fingerprint(read_gray(r.image)), missing))

    store = _cached_per_image(records, cache, "fp", compute)
    return np.stack([store[r.image] for r in records]).astype(np.float32)


def drop_source_and_duplicates(records: list[Record], source: str, source_records: list[Record],
                               cache: Path | None = None) -> tuple[list[Record], int]:
    """Remove ``source`` and near-duplicates of any of its images; returns (kept, n_dups)."""
    others = [r for r in records if r.source != source]
    if not others or not source_records:
        return others, 0
    fp_o = _fingerprints(others, cache)
    fp_s = _fingerprints(source_records, cache)
    dup = np.zeros(len(others), bool)
    for start in range(0, len(others), 2048):
        dup[start:start + 2048] = (fp_o[start:start + 2048] @ fp_s.T > NEAR_DUP_CORR).any(axis=1)
    return [r for r, d in zip(others, dup) if not d], int(dup.sum())


# ------------------------------------------------------------------ arrays
def _lung_masks(grays: list[np.ndarray]) -> list[np.ndarray | None]:
    """Lung masks from the bundled lung model (the app uses the same one)."""
    from ..modellayer.lung import LungSegmenter

    seg = LungSegmenter()
    return [r.mask for r in seg.segment_batch(grays, batch_size=32)]


def load_inputs(records: list[Record], size: int, mode: str, cache_dir: Path | None,
                normalization: str = LEGACY) -> np.ndarray:
    """(N, S, S, 1) float32 model inputs made by the app's own preprocessing, cached.

    ``rank-v1`` crops take the lung box from the film's own rank map (the whole film's), as
    the app does (``DiseaseClassifier.model_input``)."""
    if mode not in ("full", "lung_crop"):
        raise ValueError(f"unknown input mode {mode!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown input normalization {normalization!r}")
    tag = "" if normalization == LEGACY else f"_{normalization}"
    cache = cache_dir / f"inputs_{mode}_{size}{tag}.npz" if cache_dir else None

    def compute(missing: list[Record]) -> list[np.ndarray]:
        t0 = time.time()
        with ThreadPoolExecutor(2) as ex:
            grays = list(ex.map(lambda r: read_gray(r.image), missing))
        masks = _lung_masks(grays) if mode == "lung_crop" else [None] * len(grays)
        xs = [model_input(g, m, size, mode, normalization).astype(np.float16) for g, m in zip(grays, masks)]
        log.info("prepared %d %s %s inputs in %.1fs", len(missing), mode, normalization, time.time() - t0)
        return xs

    store = _cached_per_image(records, cache, "x", compute)
    if not records:
        return np.zeros((0, size, size, 1), np.float32)
    return np.stack([store[r.image] for r in records]).astype(np.float32)


def model_input(gray: np.ndarray, lung_mask: np.ndarray | None, size: int, mode: str,
                normalization: str) -> np.ndarray:
    """One training film (bright = dense grey) -> the classifier's input, by the app's code."""
    from ..modellayer.classifier import classifier_input

    return classifier_input(gray, lung_mask, size, mode, normalization)[0]


def labels_of(records: list[Record]) -> np.ndarray:
    return np.array([CLASS_NAMES.index(r.label) for r in records], np.int64)


# ------------------------------------------------------------------ tf.data
def augment_image(x: Any, size: int) -> Any:
    """Mild geometric + photometric augmentation (no flips: the heart is on one side)."""
    import tensorflow as tf

    from .pipeline import _affine

    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=_affine(size, 8.0, 0.06, (0.9, 1.12)),
        output_shape=[size, size], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="CONSTANT")[0]
    mean = tf.reduce_mean(x)
    x = (x - mean) * tf.random.uniform([], 0.8, 1.2) + mean + tf.random.uniform([], -0.08, 0.08)
    x = tf.clip_by_value(x, 0.0, 1.0) ** tf.random.uniform([], 0.8, 1.25)
    x = x + tf.random.normal(tf.shape(x)) * tf.random.uniform([], 0.0, 0.02)
    return tf.clip_by_value(x, 0.0, 1.0)


def augment_robust(x: Any, size: int) -> Any:
    """Geometric augmentation, then the hospital-imitating set of the segmentation models
    (``pipeline.augment_hospital``: windows, gamma, blur/sharpen, resolution loss, noise,
    burned-in text) -- the ``rank-v1`` input's augmentation."""
    import tensorflow as tf

    from .pipeline import _affine, augment_hospital

    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=_affine(size, 10.0, 0.06, (0.88, 1.15)),
        output_shape=[size, size], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="CONSTANT")[0]
    return augment_hospital(x, size)


def source_class_weights(records: list[Record], y: np.ndarray, max_boost: float = MAX_PAIR_BOOST
                         ) -> tuple[np.ndarray, dict[str, float]]:
    """Per-film weights: each class carries the same total weight, and inside a class each
    source that has it carries an equal share, except that no (source, class) pair is
    raised more than ``max_boost`` times over plain class balancing (a handful of films must
    not be repeated into a batch's majority). Returns the weights (mean 1) and the weight
    of one film of each pair."""
    src = np.array([r.source for r in records])
    n = len(y)
    w = np.zeros(n, np.float64)
    pairs: dict[str, float] = {}
    for k in range(len(CLASS_NAMES)):
        in_class = y == k
        n_class = int(in_class.sum())
        if not n_class:
            continue
        sources = sorted(set(src[in_class]))
        for s in sources:
            sel = in_class & (src == s)
            share = n_class / (len(sources) * int(sel.sum()))  # equal shares inside the class
            w[sel] = min(share, max_boost) / n_class
    # each class the same total weight, then mean 1
    for k in range(len(CLASS_NAMES)):
        in_class = y == k
        if in_class.any():
            w[in_class] /= w[in_class].sum()
    w *= n / w.sum()
    for k, c in enumerate(CLASS_NAMES):
        for s in sorted(set(src[y == k])):
            pairs[f"{s}/{c}"] = round(float(w[(y == k) & (src == s)][0]), 4)
    return w, pairs


def make_dataset(x: np.ndarray, y: np.ndarray, w: np.ndarray, batch_size: int, seed: int,
                 robust: bool = False) -> Any:
    """Shuffled, augmented, repeated batches of (image, one-hot, sample weight)."""
    import tensorflow as tf

    size = int(x.shape[1])
    n_classes = len(CLASS_NAMES)
    aug = augment_robust if robust else augment_image
    ds = tf.data.Dataset.from_tensor_slices((x, y, w.astype(np.float32)))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(lambda a, b, c: (aug(a, size), tf.one_hot(b, n_classes), c),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict_logits(model: Any, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    out = [np.asarray(model(x[i:i + batch_size], training=False), np.float64)
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(CLASS_NAMES)))


# ------------------------------------------------------------------ train
def _datasets_for_run(data_dir: Path, split: dict, max_images: int | None, exclude_source: str | None,
                      cache_dir: Path | None) -> dict[str, Any]:
    train, val, recs = split_records(data_dir, split, max_images)
    info: dict[str, Any] = {}
    test: list[Record] = []
    if exclude_source:
        if exclude_source not in COVID_SOURCES:
            raise ValueError(f"leave-one-source-out runs leave out a source with COVID-19 films {COVID_SOURCES}, "
                             f"not {exclude_source!r}")
        fp_cache = cache_dir / "fingerprints.npz" if cache_dir else None
        src_all = [r for r in recs if r.source == exclude_source]
        n_tr, n_va = len(train), len(val)
        train, d_tr = drop_source_and_duplicates(train, exclude_source, src_all, fp_cache)
        val, d_va = drop_source_and_duplicates(val, exclude_source, src_all, fp_cache)
        test = labelled_frontal(src_all)
        info = {"excluded_source": exclude_source, "removed_near_duplicates_train": d_tr,
                "removed_near_duplicates_val": d_va, "removed_train_total": n_tr - len(train),
                "removed_val_total": n_va - len(val), "n_test": len(test)}
    return {"train": train, "val": val, "test": test, "info": info}


def train(data_dir: Path, split_file: Path, out: Path, *, arch: str, input_size: int,
          input_mode: str, epochs: int, batch_size: int, lr: float, seed: int,
          max_images: int | None, steps_per_epoch: int | None, exclude_source: str | None,
          time_budget_s: float | None, train_fraction: float, cache_dir: Path | None,
          mixed_precision: bool, width: int, command: str, normalization: str = LEGACY,
          balance: str = "class", augmentation: str | None = None) -> dict:
    """Train one classifier; keeps the epoch with the best validation macro AUC.

    ``normalization``: the model input; ``augmentation``: ``mild`` or ``hospital`` (default:
    ``hospital`` for ``rank-v1``, ``mild`` otherwise); ``balance``: ``class`` weights, or
    ``source-class`` (see :func:`source_class_weights`)."""
    augmentation = resolve_augmentation(augmentation, normalization)
    if balance not in BALANCING:
        raise ValueError(f"unknown balancing {balance!r} (known: {BALANCING})")
    import keras

    from .classifier_architectures import build_classifier

    start_run(out, seed=seed, mixed_precision=mixed_precision)
    t0 = time.time()
    split = read_split(split_file)
    sets = _datasets_for_run(data_dir, split, max_images, exclude_source, cache_dir)
    va = sets["val"]
    tr = training_sets(sets["train"], va, train_fraction)
    xtr, ytr = load_inputs(tr, input_size, input_mode, cache_dir, normalization), labels_of(tr)
    xva, yva = load_inputs(va, input_size, input_mode, cache_dir, normalization), labels_of(va)
    counts = np.bincount(ytr, minlength=len(CLASS_NAMES))
    cw = len(ytr) / (len(CLASS_NAMES) * np.maximum(counts, 1))
    if balance == "source-class":
        sample_w, pair_w = source_class_weights(tr, ytr)
    else:
        sample_w, pair_w = cw[ytr], {}
    log.info("train %d (%s), val %d, class weights %s, data ready in %.1fs", len(tr),
             dict(zip(CLASS_NAMES, counts.tolist())), len(va), np.round(cw, 3), time.time() - t0)

    model = build_classifier(arch, input_size, len(CLASS_NAMES), width=width)
    steps = steps_per_epoch or max(1, math.ceil(len(xtr) / batch_size))
    # With a time budget the cosine decay runs over wall-clock time instead of steps, so a
    # run ends annealed on time even when the CPU is shared (see _TimeCosine).
    schedule = (lr if time_budget_s else keras.optimizers.schedules.CosineDecay(
        lr, decay_steps=max(1, epochs * steps), alpha=0.02))
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    ckpt = out / MODEL_FILE
    state = {"best": -1.0, "best_epoch": -1}
    t_fit = time.time()

    class _ValAUC(keras.callbacks.Callback):
        """Validation macro AUC each epoch; saves the best model; enforces the time budget."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            auc = macro_auc(yva, softmax(predict_logits(self.model, xva)))
            if logs is not None:
                logs["val_macro_auc"] = auc
            if auc > state["best"]:
                state.update(best=auc, best_epoch=epoch + 1)
                self.model.save(ckpt)
            elapsed = time.time() - t_fit
            log.info("epoch %d: val macro AUC %.4f (best %.4f @ %d), %.0fs", epoch + 1, auc,
                     state["best"], state["best_epoch"], elapsed)
            if time_budget_s and elapsed * (epoch + 2) / (epoch + 1) > time_budget_s:
                log.info("time budget %.0fs reached: stopping after epoch %d", time_budget_s, epoch + 1)
                self.model.stop_training = True

    class _TimeCosine(keras.callbacks.Callback):
        """Cosine learning-rate decay over the wall-clock budget (to 2% of ``lr``)."""

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            frac = min(1.0, (time.time() - t_fit) / float(time_budget_s))
            self.model.optimizer.learning_rate.assign(lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac))))

    callbacks = [_ValAUC(), keras.callbacks.CSVLogger(str(out / "history.csv"))]
    if time_budget_s:
        callbacks.insert(0, _TimeCosine())
    robust = augmentation == "hospital"
    hist = model.fit(make_dataset(xtr, ytr, sample_w, batch_size, seed, robust), epochs=epochs,
                     steps_per_epoch=steps, callbacks=callbacks, verbose=2)
    train_s = time.time() - t_fit
    epochs_run = len(hist.history.get("loss", []))
    meta = {
        "arch": arch, "architecture": f"{arch} (from scratch, grey {input_size}x{input_size}, {input_mode})",
        "input_size": input_size, "input_mode": input_mode, "width": width,
        "input_normalization": normalization, "balance": balance, "pair_weights": pair_w,
        "augmentation_set": augmentation,
        "params": int(model.count_params()), "epochs": epochs, "epochs_run": epochs_run,
        "best_epoch": state["best_epoch"], "best_val_macro_auc": state["best"],
        "batch_size": batch_size, "steps_per_epoch": steps, "lr": lr,
        "optimizer": f"AdamW lr {lr} cosine decay to 2% over "
                     + (f"a {time_budget_s:.0f} s wall-clock budget" if time_budget_s else f"{epochs} epochs")
                     + ", weight decay 1e-4",
        "loss": ("class-weighted" if balance == "class" else
                 f"source-and-class-weighted (each class equal, each source an equal share of its class, "
                 f"a pair boosted at most {MAX_PAIR_BOOST:g}x)") + " softmax cross-entropy on logits",
        "class_weights": cw.round(4).tolist(),
        "seed": seed, "max_images": max_images, "train_fraction": train_fraction,
        "mixed_precision": mixed_precision, "time_budget_s": time_budget_s,
        "augmentation": ("rotation +-10 deg, shift +-6%, zoom 0.88-1.15, then the hospital set of the "
                         "segmentation models (contrast 0.8-1.25, brightness +-0.08, gamma exp(+-0.35), "
                         "blur/unsharp p 0.5, down/up-sampling 0.4-1.0 p 0.3, noise sigma<=0.03, burned-in "
                         "border/text p 0.3); no flip" if robust else
                         "rotation +-8 deg, shift +-6%, zoom 0.9-1.12, contrast 0.8-1.2, "
                         "brightness +-0.08, gamma 0.8-1.25, Gaussian noise sigma<=0.02; no flip"),
        "n_train": len(tr), "n_val": len(va),
        "train_counts": {c: int(n) for c, n in zip(CLASS_NAMES, counts)},
        "train_by_source": {s: sum(r.source == s for r in tr) for s in SOURCES},
        "val_by_source": {s: sum(r.source == s for r in va) for s in SOURCES},
        "source_disjoint": sets["info"], "split_file": str(split_file),
        "train_wall_time_s": round(train_s, 1), "total_wall_time_s": round(time.time() - t0, 1),
        "images_per_s": round(epochs_run * steps * batch_size / max(train_s, 1e-6), 1),
        "command": command, "hardware": hardware_info(), "library_versions": library_versions(),
    }
    (out / "train_meta.json").write_text(json.dumps(meta, indent=1))
    log.info("trained %s in %.0fs, best val macro AUC %.4f at epoch %d", arch, train_s,
             state["best"], state["best_epoch"])
    evaluate(out, data_dir, split_file, max_images, cache_dir)
    return meta


# ------------------------------------------------------------------ evaluate
def class_report(y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Macro AUC, per-class AUC and argmax sensitivity/specificity, accuracy."""
    pred = probs.argmax(axis=1)
    per = per_class_auc(y, probs)
    rep: dict[str, Any] = {"n": len(y), "macro_auc": macro_auc(y, probs),
                           "accuracy": float((pred == y).mean()) if len(y) else math.nan,
                           "covid_vs_rest_auc": auc_binary(y == 1, probs[:, 1]),
                           "per_class": {}}
    for k, c in enumerate(CLASS_NAMES):
        se, sp = sens_spec(y, pred, k)
        rep["per_class"][c] = {"n": int((y == k).sum()), "auc": per[k], "sensitivity": se,
                               "specificity": sp}
    return rep


def measure_latency(model: Any, size: int, image: np.ndarray, mode: str, repeats: int = 30,
                    normalization: str = LEGACY) -> dict:
    """Wall time of the app's scoring path on one image (preprocess + forward [+ lungs])."""
    from ..modellayer.classifier import classifier_input

    seg = None
    if mode == "lung_crop":
        from ..modellayer.lung import LungSegmenter

        seg = LungSegmenter()

    def once() -> None:
        mask = seg.segment(image).mask if seg is not None else None
        x = classifier_input(image, mask, size, mode, normalization)[0]
        np.asarray(model(x[None], training=False))

    from .metrics import time_call

    return {**time_call(once, repeats), "image_shape": list(image.shape),
            "includes": "preprocess + forward" + (" + lung segmentation + crop" if seg else "")}


def evaluate(run: Path, data_dir: Path, split_file: Path, max_images: int | None,
             cache_dir: Path | None) -> dict:
    """Validation (and, for source-disjoint runs, ieee8023 test) metrics; writes eval/."""
    import keras

    meta = json.loads((run / "train_meta.json").read_text())
    size, mode = int(meta["input_size"]), meta["input_mode"]
    norm = meta.get("input_normalization", LEGACY)
    model = keras.saving.load_model(run / MODEL_FILE, compile=False)
    split = read_split(split_file)
    sets = _datasets_for_run(data_dir, split, max_images, (meta.get("source_disjoint") or {}).get(
        "excluded_source"), cache_dir)
    va = sets["val"]
    yva = labels_of(va)
    lva = predict_logits(model, load_inputs(va, size, mode, cache_dir, norm))
    pva = softmax(lva)
    summary: dict[str, Any] = {"run": str(run), "arch": meta["arch"], "input_mode": mode,
                               "input_normalization": norm,
                               "val": class_report(yva, pva), "val_by_source": {}}
    for s in SOURCES:
        sel = np.array([r.source == s for r in va])
        if sel.any():
            summary["val_by_source"][s] = class_report(yva[sel], pva[sel])
    saved = {"val_logits": lva, "val_y": yva,
             "val_keys": np.array([rel_key(r, data_dir) for r in va])}
    if sets["test"]:
        te = sets["test"]
        yte = labels_of(te)
        lte = predict_logits(model, load_inputs(te, size, mode, cache_dir, norm))
        summary["source_disjoint_test"] = {"source": sets["info"]["excluded_source"],
                                           **class_report(yte, softmax(lte))}
        saved.update(test_logits=lte, test_y=yte,
                     test_keys=np.array([rel_key(r, data_dir) for r in te]))
    summary["latency_cpu"] = measure_latency(model, size, read_gray(va[0].image), mode, normalization=norm)
    ev = run / "eval"
    ev.mkdir(parents=True, exist_ok=True)
    model.save(ev / "inference.keras")  # what would be bundled: no optimizer state
    summary["weights_bytes"] = (ev / "inference.keras").stat().st_size
    summary["params"] = meta["params"]
    np.savez(ev / "predictions.npz", **saved)
    (ev / "summary.json").write_text(json.dumps(summary, indent=1))
    v = summary["val"]
    log.info("%s: val macro AUC %.4f, COVID-vs-rest %.4f, acc %.3f, latency %.1f ms%s", run.name,
             v["macro_auc"], v["covid_vs_rest_auc"], v["accuracy"],
             summary["latency_cpu"]["median_ms"],
             (f" | source-disjoint {summary['source_disjoint_test']['source']}: COVID-vs-rest AUC "
              f"{summary['source_disjoint_test']['covid_vs_rest_auc']:.4f}") if sets["test"] else "")
    return summary


# ------------------------------------------------------------------ export
def comparison_row(run: Path) -> dict[str, Any]:
    """One row of the architecture comparison table."""
    meta = json.loads((run / "train_meta.json").read_text())
    s = json.loads((run / "eval" / "summary.json").read_text())
    v = s["val"]
    row = {"run": run.name, "arch": meta["arch"], "input_mode": meta["input_mode"],
           "input_size": meta["input_size"], "params": meta["params"],
           "size_mb": round(s["weights_bytes"] / 2**20, 2), "epochs_run": meta["epochs_run"],
           "best_epoch": meta["best_epoch"], "train_wall_time_s": meta["train_wall_time_s"],
           "n_train": meta["n_train"], "val_n": v["n"], "val_macro_auc": round(v["macro_auc"], 4),
           "val_covid_vs_rest_auc": round(v["covid_vs_rest_auc"], 4),
           "val_accuracy": round(v["accuracy"], 4),
           "latency_ms_median": s["latency_cpu"]["median_ms"]}
    for c, pc in v["per_class"].items():
        row[f"sens_{c}"] = round(pc["sensitivity"], 4)
        row[f"spec_{c}"] = round(pc["specificity"], 4)
    if "source_disjoint_test" in s:
        row["source_disjoint_covid_vs_rest_auc"] = round(s["source_disjoint_test"]["covid_vs_rest_auc"], 4)
    return row


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table (README and card)."""
    head = ("| run | architecture | input | params | size MB | val macro AUC | COVID-vs-rest AUC | "
            "sens/spec Normal | sens/spec COVID-19 | sens/spec Other pn. | CPU latency ms | train s |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['arch']} | {r['input_mode']} {r['input_size']} | {r['params']:,} | "
            f"{r['size_mb']} | {r['val_macro_auc']:.3f} | {r['val_covid_vs_rest_auc']:.3f} | "
            f"{r['sens_Normal']:.2f}/{r['spec_Normal']:.2f} | {r['sens_COVID-19']:.2f}/{r['spec_COVID-19']:.2f} | "
            f"{r['sens_Other pneumonia']:.2f}/{r['spec_Other pneumonia']:.2f} | "
            f"{r['latency_ms_median']} | {r['train_wall_time_s']:.0f} |")
    return "\n".join(lines)


def weak_check_sample(keys: np.ndarray, y: np.ndarray, per_class: int = WEAK_CHECK_PER_CLASS) -> list[int]:
    """Fixed, class-balanced, evenly spread indices into the validation set."""
    idx: list[int] = []
    for k in range(len(CLASS_NAMES)):
        members = sorted(np.nonzero(y == k)[0].tolist(), key=lambda i: str(keys[i]))
        idx += _spread(members, per_class)
    return idx


def embedding_features(model: Any, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    import keras

    emb = keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).output)
    return np.concatenate([np.asarray(emb(x[i:i + batch_size], training=False), np.float64)
                           for i in range(0, len(x), batch_size)])


def fit_embedding_stats(train_emb: np.ndarray, shrinkage: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision of a shrunk shared covariance (stable with few samples per dim)."""
    mean = train_emb.mean(axis=0)
    cov = np.cov(train_emb - mean, rowvar=False)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    return mean, np.linalg.inv(cov)


def source_disjoint_row(run: Path) -> dict[str, Any]:
    """Internal (without ieee8023) vs ieee8023-test numbers of one source-disjoint run."""
    meta = json.loads((run / "train_meta.json").read_text())
    s = json.loads((run / "eval" / "summary.json").read_text())
    t, v = s["source_disjoint_test"], s["val"]
    return {"run": run.name, "arch": meta["arch"], "input_mode": meta["input_mode"],
            "n_train": meta["n_train"], "internal_val_n": v["n"],
            "internal_val_macro_auc": round(v["macro_auc"], 4),
            "internal_val_covid_vs_rest_auc": round(v["covid_vs_rest_auc"], 4),
            "ieee8023_n": t["n"], "ieee8023_macro_auc": round(t["macro_auc"], 4),
            "ieee8023_covid_vs_rest_auc": round(t["covid_vs_rest_auc"], 4),
            "ieee8023_accuracy": round(t["accuracy"], 4),
            "ieee8023_covid_sensitivity": round(t["per_class"][COVID]["sensitivity"], 4),
            "ieee8023_covid_specificity": round(t["per_class"][COVID]["specificity"], 4),
            "gap_covid_vs_rest_auc": round(v["covid_vs_rest_auc"] - t["covid_vs_rest_auc"], 4),
            "train_wall_time_s": meta["train_wall_time_s"]}


def probe_records(e_tr: np.ndarray, tr: list[Record], e_va: np.ndarray, va: list[Record]) -> dict[str, Any]:
    """:func:`source_probe.source_probe` on embeddings of training and validation records."""
    from .source_probe import source_probe

    return source_probe(e_tr, [r.source for r in tr], [r.label for r in tr],
                        e_va, [r.source for r in va], [r.label for r in va])


PROBE_METHOD = ("linear softmax regression on standardised embeddings, fitted on the training films, balanced "
                "accuracy on the validation films; per class among the sources that have it (>= 20 train / 5 val "
                "films): the shortcut check of DeGrave et al. 2021")


def probe_of_model(model: Any, size: int, mode: str, norm: str, sets: dict[str, Any],
                   cache_dir: Path | None) -> dict[str, Any]:
    """The source probe of a classifier's embedding on the split's train and val films."""
    e_tr = embedding_features(model, load_inputs(sets["train"], size, mode, cache_dir, norm))
    e_va = embedding_features(model, load_inputs(sets["val"], size, mode, cache_dir, norm))
    return probe_records(e_tr, sets["train"], e_va, sets["val"])


def _bundled(model_dir: Path) -> tuple[dict[str, Any], Any, int, str, str]:
    """A bundled classifier's card, network, input size, input mode and normalisation."""
    import keras

    card = json.loads((model_dir / "card.json").read_text())
    model = keras.saving.load_model(model_dir / card["weights_file"], compile=False)
    return (card, model, int(card["input_size"]), card.get("input_mode", "full"),
            card.get("input_normalization", LEGACY))


def _named_probe(card: dict[str, Any], model: Any, size: int, mode: str, norm: str, sets: dict[str, Any],
                 cache_dir: Path | None) -> dict[str, Any]:
    return {"model": f"{card['name']} {card['version']} ({norm}, {mode})",
            **probe_of_model(model, size, mode, norm, sets, cache_dir)}


def probe_of_bundled(model_dir: Path, sets: dict[str, Any], cache_dir: Path | None) -> dict[str, Any]:
    """The source probe of a bundled classifier (its card's input, size and mode)."""
    return _named_probe(*_bundled(model_dir), sets, cache_dir)


def loso_row(run: Path) -> dict[str, Any]:
    """One leave-one-source-out run: trained without a source (and its near-duplicates),
    scored on every frontal labelled film of it."""
    meta = json.loads((run / "train_meta.json").read_text())
    s = json.loads((run / "eval" / "summary.json").read_text())
    t, v = s["source_disjoint_test"], s["val"]
    cov = t["per_class"][COVID]
    return {"run": run.name, "left_out": t["source"], "arch": meta["arch"], "input_mode": meta["input_mode"],
            "input_normalization": meta.get("input_normalization", LEGACY), "balance": meta.get("balance", "class"),
            "n_train": meta["n_train"], "train_wall_time_s": meta["train_wall_time_s"],
            "internal_val_n": v["n"], "internal_val_macro_auc": round(v["macro_auc"], 4),
            "test_n": t["n"], "test_counts": {c: pc["n"] for c, pc in t["per_class"].items()},
            "test_covid_vs_rest_auc": round(t["covid_vs_rest_auc"], 4),
            "test_macro_auc": None if math.isnan(t["macro_auc"]) else round(t["macro_auc"], 4),
            "test_covid_sensitivity": round(cov["sensitivity"], 4),
            "test_covid_specificity": round(cov["specificity"], 4)}


def loso_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| left-out source | run | input | balancing | train films | its films (N/C/O) | COVID-vs-rest AUC on it | "
             "macro AUC on it | internal val macro AUC | train s |", "|" + "---|" * 10]
    for r in rows:
        c = r["test_counts"]
        lines.append(f"| {r['left_out']} | {r['run']} | {r['input_normalization']} {r['input_mode']} | {r['balance']} | "
                     f"{r['n_train']} | {c.get(NORMAL, 0)}/{c.get(COVID, 0)}/{c.get(OTHER, 0)} | "
                     f"{r['test_covid_vs_rest_auc']:.3f} | "
                     + (f"{r['test_macro_auc']:.3f}" if r["test_macro_auc"] is not None else "n/a")
                     + f" | {r['internal_val_macro_auc']:.3f} | {r['train_wall_time_s']:.0f} |")
    return "\n".join(lines)


def calibration_study(lva: np.ndarray, yva: np.ndarray, src: np.ndarray, min_per_bin: int = 100) -> dict[str, Any]:
    """Temperature vs vector scaling, each cross-fitted (2 folds), ECE in equal-count bins of
    >= ``min_per_bin`` films, overall and per source (a source with >= 2 bins' worth)."""
    from .classifier_metrics import cross_fitted_probs, equal_mass_ece, fit_vector_scaling

    def temp_apply(z: np.ndarray, t: float) -> np.ndarray:
        return softmax(z, t)

    def vec_apply(z: np.ndarray, prm: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return softmax(z * prm[0] + prm[1])

    out: dict[str, Any] = {"min_films_per_bin": min_per_bin, "folds": 2}
    raw = softmax(lva)
    cands = {"none": raw,
             "temperature": cross_fitted_probs(lva, yva, fit_temperature, temp_apply)[0],
             "vector": cross_fitted_probs(lva, yva, fit_vector_scaling, vec_apply)[0]}
    for k, p in cands.items():
        ece, bins = equal_mass_ece(p, yva, min_per_bin)
        row = {"ece_cross_fitted": round(ece, 4), "bins": bins,
               "nll_cross_fitted": round(float(-np.mean(np.log(np.clip(p[np.arange(len(yva)), yva], 1e-12, 1)))), 4),
               "by_source": {}}
        for s_ in sorted(set(src.tolist())):
            sel = src == s_
            if sel.sum() >= 2 * min_per_bin:
                e, b = equal_mass_ece(p[sel], yva[sel], min_per_bin)
                row["by_source"][s_] = {"n": int(sel.sum()), "ece": round(e, 4), "bins": b}
        out[k] = row
    return out


def export(run: Path, models_dir: Path, name: str, compare: list[Path], source_disjoint: Path | None,
           version: str, data_dir: Path, split_file: Path, cache_dir: Path | None,
           gate_quantile: float = 0.995, source_disjoint_compare: list[Path] | None = None,
           loso: list[Path] | None = None, probe_baseline: Path | None = None,
           dropped: dict[str, str] | None = None) -> Path:
    """Write ``models/<name>/``: weights, calibration, embedding stats, card, plots.

    ``loso``: leave-one-source-out runs of the bundled recipe; ``probe_baseline``: a bundled
    model folder whose embedding's source probe is recorded as "before" (read before this
    export overwrites anything); ``dropped``: comparison rows left out, with the reason."""
    import keras

    meta = json.loads((run / "train_meta.json").read_text())
    norm = meta.get("input_normalization", LEGACY)
    # read before anything is written: the baseline may be the folder this export replaces
    sets = _datasets_for_run(data_dir, read_split(split_file), meta.get("max_images"), None, cache_dir)
    probe_before = probe_of_bundled(probe_baseline, sets, cache_dir) if probe_baseline is not None else None
    summary = json.loads((run / "eval" / "summary.json").read_text())
    with np.load(run / "eval" / "predictions.npz") as z:
        lva, yva, keys = z["val_logits"], z["val_y"], z["val_keys"]
    dest = models_dir / name
    dest.mkdir(parents=True, exist_ok=True)

    # Calibration: T on all validation images; ECE after measured cross-fitted too.
    temp = fit_temperature(lva, yva)
    p_raw, p_cal = softmax(lva), softmax(lva, temp)
    ece_before = expected_calibration_error(p_raw, yva)
    ece_after_in = expected_calibration_error(p_cal, yva)
    ece_after_cv, cv_temps = cross_fitted_ece(lva, yva)
    reliability_diagram({"raw softmax": p_raw, f"temperature {temp:.2f}": p_cal}, yva,
                        dest / "reliability.png",
                        title=f"{name}: validation reliability (n={len(yva)})")
    ops = {c: youden_threshold(yva == k, p_cal[:, k]) for k, c in enumerate(CLASS_NAMES)}
    val_src = np.array([str(k).split("/")[0] for k in keys])
    cal_study = calibration_study(lva, yva, val_src)

    # Weak-correctness sample for the tests.
    idx = weak_check_sample(keys, yva)
    sample_auc = macro_auc(yva[idx], p_cal[idx])
    floor = math.floor((min(sample_auc, summary["val"]["macro_auc"]) - 0.03) * 100) / 100

    # Embedding statistics for the domain gate: fitted on training images only.
    model = keras.saving.load_model(run / MODEL_FILE, compile=False)
    size, mode = int(meta["input_size"]), meta["input_mode"]
    e_tr = embedding_features(model, load_inputs(sets["train"], size, mode, cache_dir, norm))
    e_va = embedding_features(model, load_inputs(sets["val"], size, mode, cache_dir, norm))
    probe_after = probe_records(e_tr, sets["train"], e_va, sets["val"])
    mean, prec = fit_embedding_stats(e_tr)
    d_tr, d_va = mahalanobis(e_tr, mean, prec), mahalanobis(e_va, mean, prec)
    thr = float(np.quantile(d_va, gate_quantile))
    stats_file = dest / "embedding_stats.npz"
    np.savez(stats_file, mean=mean.astype(np.float32), precision=prec.astype(np.float32),
             threshold=np.float32(thr))

    weights = dest / f"{name}.keras"
    model.save(weights)  # loaded with compile=False: no optimizer state, a third of the size
    rows = [comparison_row(run)] + [comparison_row(c) for c in compare]
    sd = None
    if source_disjoint is not None:
        sds = json.loads((source_disjoint / "eval" / "summary.json").read_text())
        sdm = json.loads((source_disjoint / "train_meta.json").read_text())
        t = sds["source_disjoint_test"]
        if t["source"] != "ieee8023":  # the section's keys and text name ieee8023
            raise ValueError(f"--source-disjoint takes the ieee8023 run; {source_disjoint} left out "
                             f"{t['source']}: pass it with --loso")
        internal = summary["val"]
        sd = {
            "run": source_disjoint.name, "arch": sdm["architecture"],
            "design": "retrained without ieee8023 and without its near-duplicates in other "
                      "sources (fingerprint corr > 0.98); tested on every frontal labelled "
                      "ieee8023 row",
            "removed": sdm["source_disjoint"], "n_train": sdm["n_train"],
            "internal_val_without_ieee8023": sds["val"], "test_ieee8023": t,
            "gap_covid_vs_rest_auc": round(internal["covid_vs_rest_auc"] - t["covid_vs_rest_auc"], 4),
            "gap_macro_auc": round(internal["macro_auc"] - t["macro_auc"], 4),
            "bundled_model_on_ieee8023_val_rows_patient_disjoint": summary["val_by_source"].get("ieee8023"),
            "by_input_mode": [source_disjoint_row(p) for p in [source_disjoint, *(source_disjoint_compare or [])]],
        }
    card = {
        "name": name, "version": version, "task": "chest X-ray classification",
        "architecture": meta["architecture"], "params": meta["params"],
        "input_size": size, "input_mode": mode, "input_normalization": norm,
        "preprocessing": ("xrayviewer.modellayer.classifier.classifier_input: " + preprocessing_text(norm)
                          + ("; applied to the lung bounding box (+8% margin) of the bundled "
                             "lung model's mask (xrayviewer.modellayer.classifier.lung_box)" if mode == "lung_crop" else "")),
        "output": "logits (3); probabilities = softmax(logits / temperature); "
                  "layer 'cam_features' for Grad-CAM, 'embedding' for the domain gate",
        "class_names": list(CLASS_NAMES),
        "labels": {str(k): c for k, c in enumerate(CLASS_NAMES)},
        "threshold": ops[COVID]["threshold"],
        "temperature": round(temp, 5),
        "operating_points": {c: {k: (round(v, 5) if isinstance(v, float) else v) for k, v in o.items()}
                             for c, o in ops.items()},
        "operating_point_rule": "per class, calibrated probability >= threshold flags the class; "
                                "threshold maximises Youden's J on validation",
        "calibration": {
            "method": "temperature scaling fitted on validation NLL",
            "temperature": round(temp, 5), "ece_bins": 15,
            "ece_before": round(ece_before, 4), "ece_after_in_sample": round(ece_after_in, 4),
            "ece_after_cross_fitted_2fold": round(ece_after_cv, 4),
            "cross_fit_temperatures": [round(t, 4) for t in cv_temps],
            "nll_before": round(nll(lva, yva, 1.0), 4), "nll_after": round(nll(lva, yva, temp), 4),
            "target_ece": 0.02, "reliability_diagram": "reliability.png",
            "validation_sources": {s_: int((val_src == s_).sum()) for s_ in sorted(set(val_src.tolist()))},
            "comparison_equal_count_bins": cal_study,
        },
        "training_data": {
            "sources": "covid-qu-ex (Train/Val folders), nih subset, ieee8023 frontal labelled "
                       "rows; generalblockchain left out (ieee8023 copies)",
            "split": "patient-disjoint, near-duplicates grouped (python -m xrayviewer.training split)",
            "n_train": meta["n_train"], "n_val": meta["n_val"], "train_counts": meta["train_counts"],
            "train_by_source": meta["train_by_source"], "val_by_source": meta["val_by_source"],
            "augmentation": meta["augmentation"], "loss": meta["loss"],
            "balance": meta.get("balance", "class"), "pair_weights": meta.get("pair_weights", {}),
            "optimizer": meta["optimizer"], "epochs_run": meta["epochs_run"],
            "best_epoch": meta["best_epoch"], "batch_size": meta["batch_size"],
            "mixed_precision": meta["mixed_precision"],
        },
        "metrics": {"internal_val": summary["val"], "internal_val_by_source": summary["val_by_source"],
                    "note": "argmax sensitivity/specificity; AUC one-vs-rest on calibrated scores "
                            "(temperature does not change AUC)"},
        "source_disjoint": sd,
        "leave_one_source_out": ({"rows": [loso_row(p) for p in loso], "markdown": loso_markdown([loso_row(p) for p in loso]),
                                  "design": "the bundled recipe retrained without the source and without its "
                                            "near-duplicates in other sources (fingerprint corr > 0.98), tested on "
                                            "every frontal labelled film of it"} if loso else None),
        "source_probe": {"method": PROBE_METHOD, "after": probe_after, "before": probe_before},
        "targets": {"internal_macro_auc": 0.97, "source_disjoint_covid_vs_rest_auc": 0.80, "ece": 0.02},
        "comparison": rows, "comparison_markdown": markdown_table(rows),
        "comparison_dropped": dropped or {},
        "weak_check": {"n": len(idx), "images": [str(keys[i]) for i in idx],
                       "labels": [CLASS_NAMES[int(yva[i])] for i in idx],
                       "macro_auc_at_export": round(sample_auc, 4), "macro_auc_floor": floor},
        "embedding_stats_file": stats_file.name, "embedding_stats_sha256": sha256_file(stats_file),
        "mahalanobis": {"fitted_on": f"{len(e_tr)} training embeddings (dim {e_tr.shape[1]}), "
                                     "covariance shrunk 5% toward its mean variance",
                        "threshold": round(thr, 4), "threshold_rule": f"{gate_quantile:.1%} quantile of validation distances",
                        "train_quantiles": {q: round(float(np.quantile(d_tr, q)), 3) for q in (0.5, 0.99, 0.995)},
                        "val_quantiles": {q: round(float(np.quantile(d_va, q)), 3) for q in (0.5, 0.99, 0.995)}},
        "latency_cpu": summary["latency_cpu"],
        **provenance(meta, weights),
        "intended_use": "research only; not a medical device. Public COVID data confound class "
                        "with source: see source_disjoint.",
    }
    write_card(dest, card, ClassifierCard)
    with open(dest / "comparison.csv", "w", newline="") as fh:
        keys_all = sorted({k for r in rows for k in r})
        w = csv.DictWriter(fh, fieldnames=keys_all)
        w.writeheader()
        w.writerows(rows)
    log.info("exported %s: val macro AUC %.4f, T %.3f, ECE %.4f -> %.4f (cv %.4f), floor %.2f",
             name, summary["val"]["macro_auc"], temp, ece_before, ece_after_in, ece_after_cv, floor)
    return dest


# ------------------------------------------------------------------ transfer record (card only)
OUTSIDE_GROUPS = ("nih val No_findings", "tb-shenzhen normal (all)")


def outside_groups(data_dir: Path, split: dict, max_images: int | None = None) -> dict[str, list[Record]]:
    """Normal films no classifier trains on (:data:`OUTSIDE_GROUPS`): NIH No_findings of the
    val side, and every Shenzhen normal film (a hospital no classifier trains on)."""
    recs = read_all(data_dir, ("nih", "tb-shenzhen"), max_images)
    a = split["assignment"]
    return {OUTSIDE_GROUPS[0]: [r for r in recs if r.source == "nih" and r.label == NORMAL
                                and a.get(rel_key(r, data_dir)) == "val"],
            OUTSIDE_GROUPS[1]: [r for r in recs if r.source == "tb-shenzhen" and r.label == NORMAL]}


def outside_normals(model: Any, size: int, mode: str, norm: str, groups: dict[str, list[Record]]) -> dict[str, Any]:
    """The :func:`outside_groups` films loaded as the app loads them: the share the classifier
    calls COVID-19 or Other pneumonia (arg-max)."""
    from ..imaging import load_image
    from ..modellayer.classifier import classifier_input
    from ..modellayer.lung import LungSegmenter
    from ..modellayer.preprocessing import film_input

    seg = LungSegmenter() if mode == "lung_crop" else None
    out: dict[str, Any] = {}
    for g, rs in groups.items():
        tops: list[int] = []
        for start in range(0, len(rs), 32):
            films = [film_input(load_image(r.image)) for r in rs[start:start + 32]]
            masks = [x.mask for x in seg.segment_batch(films)] if seg else [None] * len(films)
            x = np.stack([classifier_input(f, m, size, mode, norm)[0] for f, m in zip(films, masks)])
            tops.extend(predict_logits(model, x).argmax(axis=1).tolist())
        t = np.array(tops, np.int64)
        out[g] = {"n": len(t), "called_not_normal": round(float((t != 0).mean()), 4) if len(t) else None,
                  "counts": {c: int((t == k).sum()) for k, c in enumerate(CLASS_NAMES)}}
    return out


def _earlier_source_disjoint_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The card's earlier ieee8023 source-disjoint runs (``source_disjoint.by_input_mode``) as
    leave-one-source-out rows (display input, class weights: the v1 recipes)."""
    rows = []
    sd = card.get("source_disjoint") or {}
    for r in sd.get("by_input_mode", []):
        t = sd.get("test_ieee8023", {}).get("per_class", {})  # one test set for every such run
        rows.append({"run": r["run"], "left_out": "ieee8023", "arch": r["arch"], "input_mode": r["input_mode"],
                     "input_normalization": LEGACY, "balance": "class", "n_train": r["n_train"],
                     "train_wall_time_s": r["train_wall_time_s"], "internal_val_n": r["internal_val_n"],
                     "internal_val_macro_auc": r["internal_val_macro_auc"], "test_n": r["ieee8023_n"],
                     "test_counts": {c: pc["n"] for c, pc in t.items()},
                     "test_covid_vs_rest_auc": r["ieee8023_covid_vs_rest_auc"],
                     "test_macro_auc": r["ieee8023_macro_auc"],
                     "test_covid_sensitivity": r["ieee8023_covid_sensitivity"],
                     "test_covid_specificity": r["ieee8023_covid_specificity"]})
    return rows


def record_transfer(models_dir: Path, name: str, data_dir: Path, split_file: Path, cache_dir: Path | None,
                    loso: list[Path], candidates: list[Path], max_images: int | None = None,
                    command: str = "") -> dict[str, Any]:
    """Write what says whether a bundled classifier's scores transfer into its card, leaving the
    weights alone: leave-one-source-out runs of its recipe, the source probe of its embedding
    (and of candidate runs), the calibration comparison in equal-count bins, the normal films of
    sources outside training called disease, and the candidate runs' rows."""
    import keras

    dest = models_dir / name
    card, model, size, mode, norm = _bundled(dest)
    card.pop("schema_version", None)
    split = read_split(split_file)
    sets = _datasets_for_run(data_dir, split, max_images, None, cache_dir)
    groups = outside_groups(data_dir, split, max_images)
    va = sets["val"]
    yva = labels_of(va)
    src = np.array([r.source for r in va])
    lva = predict_logits(model, load_inputs(va, size, mode, cache_dir, norm))
    card["calibration"]["comparison_equal_count_bins"] = calibration_study(lva, yva, src)
    card["calibration"]["target_ece"] = 0.02
    probe = {"method": PROBE_METHOD,
             "bundled": _named_probe(card, model, size, mode, norm, sets, cache_dir),
             "candidates": {}}
    rows = []
    for run in candidates:
        meta = json.loads((run / "train_meta.json").read_text())
        m = keras.saving.load_model(run / MODEL_FILE, compile=False)
        c_size, c_mode = int(meta["input_size"]), meta["input_mode"]
        c_norm = meta.get("input_normalization", LEGACY)
        probe["candidates"][run.name] = probe_of_model(m, c_size, c_mode, c_norm, sets, cache_dir)
        row = comparison_row(run)
        row.update(input_normalization=c_norm, balance=meta.get("balance", "class"),
                   augmentation_set=resolve_augmentation(meta.get("augmentation_set"), c_norm),
                   val_macro_auc_by_source={s: round(b["macro_auc"], 4) for s, b in json.loads(
                       (run / "eval" / "summary.json").read_text())["val_by_source"].items()},
                   outside_normals=outside_normals(m, c_size, c_mode, c_norm, groups),
                   probe_within_class=probe["candidates"][run.name]["mean_within_class_balanced_accuracy"])
        rows.append(row)
    card["source_probe"] = probe
    card["outside_normals"] = outside_normals(model, size, mode, norm, groups)
    if loso:
        lrows = _earlier_source_disjoint_rows(card) + [loso_row(p) for p in loso]
        card["leave_one_source_out"] = {
            "rows": lrows, "markdown": loso_markdown(lrows),
            "design": "a recipe retrained without the source and without its near-duplicates in other sources "
                      "(fingerprint corr > 0.98), tested on every frontal labelled film of it"}
    card["robust_input_candidates"] = rows
    card["transfer_record"] = {"command": command, "date": time.strftime("%Y-%m-%d"),
                               "hardware": hardware_info(), "note": "figures only; the weights and their "
                               "sha256 are the exported ones"}
    write_card(dest, card, ClassifierCard)
    log.info("recorded transfer figures in %s", dest / "card.json")
    return card


def record_comparison(models_dir: Path, name: str, runs: list[Path], dropped: dict[str, str]) -> Path:
    """Put evaluated runs into a bundled classifier's architecture comparison, and move rows
    that do not measure what the table claims into ``comparison_dropped`` with the reason,
    without touching the weights (a re-export would re-fit calibration and re-save them).

    A run whose name is already in the table replaces that row."""
    dest = models_dir / name
    card = card_for_update(dest)
    # a row dropped before may have its reason restated
    unknown = set(dropped) - {r["run"] for r in card.get("comparison", [])} - set(card.get("comparison_dropped") or {})
    if unknown:
        raise SystemExit(f"no comparison row named {sorted(unknown)} in {dest / 'card.json'}")
    new = [comparison_row(run) for run in runs]
    names = {r["run"] for r in new}
    kept = [r for r in card.get("comparison", []) if r["run"] not in names and r["run"] not in dropped]
    rows = kept + new
    card["comparison"] = rows
    card["comparison_markdown"] = markdown_table(rows)
    card["comparison_dropped"] = {**(card.get("comparison_dropped") or {}), **dropped}
    write_card(dest, card, ClassifierCard)
    log.info("comparison of %s: %d rows, %d dropped", dest, len(rows), len(card["comparison_dropped"]))
    return dest

