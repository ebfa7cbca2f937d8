"""Train, export and evaluate the domain gate ("is this a frontal chest X-ray?").

Gate CNN classes: 0 frontal chest film, 1 lateral chest film, 2 anything else.
Training data (train side of the patient-disjoint split only): frontal films of every
source, ieee8023 lateral rows and CT rows, plus synthetic non-X-ray images (noise,
gradients, shapes, text-like patterns, colour textures made grey, checkerboards, ...).
Evaluation: held-out (val-side, other patients) ieee8023 lateral/CT rows, the non-chest
DICOMs of the bundle (hips, CT, MR), a synthetic set made with a different seed, colour
pictures, and the pass rate on all frontal validation films (Shenzhen's too: a hospital the
CNN never saw) -- measured through the app's
own gate sequence (:meth:`xrayviewer.modellayer.gate.DomainGate.check_batch`: ``screen`` then
``confirm``, as the Analyzer runs them) with the bundled classifier (all three stages).
"""

from __future__ import annotations

import io
import json
import logging
import math
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..modellayer.common import softmax
from ..modellayer.gate import GATE_CLASSES, GateCard
from ..modellayer.preprocessing import prepare_for_model
from .datasets import Record, _spread, is_frontal_xray, read_all, read_gray
from .export_common import provenance, read_meta, save_inference_model, write_card
from .metrics import refusal_counts
from .runinfo import hardware_info, library_versions, start_run
from .splits import read_split, rel_key

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
FRONTAL, LATERAL, OTHER = 0, 1, 2
SYNTH_SIZE = 256


# ------------------------------------------------------------------ synthetic negatives
def _smooth_noise(rng: np.random.Generator, size: int, channels: int = 1) -> np.ndarray:
    import cv2

    scale = int(rng.integers(2, 32))
    small = rng.random((scale, scale, channels)).astype(np.float32)
    big = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(big.reshape(size, size, channels), 0, 1)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    if rng.random() < 0.5:
        a = rng.uniform(0, 2 * np.pi)
        g = np.cos(a) * xx + np.sin(a) * yy
    else:
        cy, cx = rng.random(2)
        g = np.hypot(yy - cy, xx - cx)
    g = (g - g.min()) / (np.ptp(g) + 1e-6)
    return g


def _shapes(rng: np.random.Generator, size: int) -> np.ndarray:
    import cv2

    img = np.full((size, size), rng.integers(0, 256), np.uint8)
    for _ in range(int(rng.integers(3, 15))):
        colour = int(rng.integers(0, 256))
        kind = rng.integers(0, 3)
        p = rng.integers(0, size, 4)
        if kind == 0:
            cv2.circle(img, (int(p[0]), int(p[1])), int(rng.integers(5, size // 3)), colour, -1)
        elif kind == 1:
            cv2.rectangle(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, -1)
        else:
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, int(rng.integers(1, 8)))
    return img.astype(np.float32) / 255


def _text(rng: np.random.Generator, size: int) -> np.ndarray:
    import cv2

    bg = int(rng.choice([rng.integers(200, 256), rng.integers(0, 60)]))
    fg = 255 - bg
    img = np.full((size, size), bg, np.uint8)
    y = int(rng.integers(10, 25))
    scale = float(rng.uniform(0.3, 0.8))
    while y < size:
        n = int(rng.integers(8, 40))
        line = "".join(rng.choice(list(string.ascii_letters + string.digits + "  .,"), n))
        cv2.putText(img, line, (int(rng.integers(0, 20)), y), cv2.FONT_HERSHEY_SIMPLEX, scale, fg, 1)
        y += int(rng.integers(12, 30))
    return img.astype(np.float32) / 255


def _colour_texture_grey(rng: np.random.Generator, size: int) -> np.ndarray:
    import cv2

    rgb = (_smooth_noise(rng, size, 3) * 255).astype(np.uint8)
    if rng.random() < 0.5:
        rgb = np.ascontiguousarray(rgb[..., ::-1])
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255


def _checker(rng: np.random.Generator, size: int) -> np.ndarray:
    n = int(rng.integers(2, 32))
    yy, xx = np.mgrid[0:size, 0:size] * n // size
    if rng.random() < 0.5:
        return ((yy + xx) % 2).astype(np.float32)
    return (xx % 2).astype(np.float32)


def _uniform(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.random((size, size)).astype(np.float32)


def _flat(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.clip(rng.random() + rng.normal(0, 0.02, (size, size)), 0, 1).astype(np.float32)


def _sinusoids(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    g = sum(np.sin(2 * np.pi * (rng.uniform(0.5, 8) * xx * np.cos(a) + rng.uniform(0.5, 8) * yy * np.sin(a)))
            for a in rng.uniform(0, np.pi, int(rng.integers(1, 4))))
    return ((g - g.min()) / (np.ptp(g) + 1e-6)).astype(np.float32)


SYNTHETIC_KINDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "uniform_noise": _uniform, "smooth_noise": lambda r, s: _smooth_noise(r, s)[..., 0],
    "gradient": _gradient, "shapes": _shapes, "text": _text,
    "colour_texture_grey": _colour_texture_grey, "checker_stripes": _checker, "flat": _flat,
    "sinusoids": _sinusoids,
}


def synthetic_images(n: int, seed: int, size: int = SYNTH_SIZE) -> tuple[list[np.ndarray], list[str]]:
    """``n`` uint8 grey non-X-ray images cycling through :data:`SYNTHETIC_KINDS`."""
    rng = np.random.default_rng(seed)
    kinds = list(SYNTHETIC_KINDS)
    imgs, names = [], []
    for i in range(n):
        k = kinds[i % len(kinds)]
        img = SYNTHETIC_KINDS[k](rng, size)
        if rng.random() < 0.3:
            img = 1.0 - img
        imgs.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
        names.append(k)
    return imgs, names


def colour_pictures(n: int, seed: int, size: int = SYNTH_SIZE) -> list[bytes]:
    """PNG/JPEG bytes of colourful synthetic pictures (stand-ins for photos)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rgb = (_smooth_noise(rng, size, 3) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG" if i % 2 else "JPEG")
        out.append(buf.getvalue())
    return out


# ------------------------------------------------------------------ data
# Sources of the gate CNN's training films (the bundled v1.1.0 recipe) and of its evaluation,
# which adds the Shenzhen films (frontal films of a hospital the CNN has not seen).
TRAIN_SOURCES = ("covid-qu-ex", "nih", "ieee8023", "generalblockchain")
EVAL_SOURCES = (*TRAIN_SOURCES, "tb-shenzhen")
STAGES = ["header: modality / body part / view position / colour picture",
          "gate CNN: P(frontal) >= threshold",
          ("Mahalanobis distance on the classifier embedding <= the threshold of the classifier card's "
           "mahalanobis block (fitted on frontal films of every source; every source's val films pass >= 99.5%)")]


def gate_records(data_dir: Path, split: dict, which: str, max_images: int | None,
                 sources: tuple[str, ...] = TRAIN_SOURCES) -> dict[str, list[Record]]:
    """Frontal films (of ``sources``), lateral rows and CT rows on one side of the split."""
    recs = read_all(data_dir, sources, max_images)
    a = split["assignment"]
    side = [r for r in recs if a.get(rel_key(r, data_dir)) == which]
    return {
        "frontal": [r for r in side if is_frontal_xray(r)],
        "lateral": [r for r in side if r.source == "ieee8023" and r.modality == "X-ray" and r.view == "L"],
        "ct": [r for r in side if r.source == "ieee8023" and r.modality == "CT"],
    }


def _inputs(grays: list[np.ndarray], size: int) -> np.ndarray:
    if not grays:
        return np.zeros((0, size, size, 1), np.float32)
    return np.stack([prepare_for_model(g, size) for g in grays])


def _augment(x: Any, size: int) -> Any:
    import tensorflow as tf

    from .pipeline import _affine

    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=_affine(size, 10.0, 0.08, (0.85, 1.15)),
        output_shape=[size, size], fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    x = tf.image.random_flip_left_right(x)  # a mirrored film is still a chest film
    mean = tf.reduce_mean(x)
    x = (x - mean) * tf.random.uniform([], 0.75, 1.25) + mean + tf.random.uniform([], -0.1, 0.1)
    x = tf.clip_by_value(x, 0.0, 1.0) ** tf.random.uniform([], 0.75, 1.33)
    return tf.clip_by_value(x, 0.0, 1.0)


def train(data_dir: Path, split_file: Path, out: Path, *, input_size: int, width: int, epochs: int,
          batch_size: int, lr: float, seed: int, max_images: int | None, n_frontal: int,
          n_synthetic: int, steps_per_epoch: int | None, command: str) -> dict:
    """Train the gate CNN; picks P(frontal) threshold on validation frontal films."""
    import keras
    import tensorflow as tf

    from .classifier_architectures import build_gate

    start_run(out, seed=seed)
    t0 = time.time()
    split = read_split(split_file)
    tr = gate_records(data_dir, split, "train", max_images)
    va = gate_records(data_dir, split, "val", max_images)
    frontal = _spread(sorted(tr["frontal"], key=lambda r: r.image), n_frontal)
    synth, _ = synthetic_images(n_synthetic, seed + 1)
    x = np.concatenate([_inputs([read_gray(r.image) for r in frontal], input_size),
                        _inputs([read_gray(r.image) for r in tr["lateral"]], input_size),
                        _inputs([read_gray(r.image) for r in tr["ct"]], input_size),
                        _inputs(synth, input_size)])
    y = np.array([FRONTAL] * len(frontal) + [LATERAL] * len(tr["lateral"])
                 + [OTHER] * (len(tr["ct"]) + len(synth)), np.int64)
    counts = np.bincount(y, minlength=3)
    cw = len(y) / (3 * np.maximum(counts, 1))
    log.info("gate train: frontal %d, lateral %d, CT %d, synthetic %d (%.1fs)", len(frontal),
             len(tr["lateral"]), len(tr["ct"]), len(synth), time.time() - t0)
    ds = tf.data.Dataset.from_tensor_slices((x, y, cw[y].astype(np.float32)))
    ds = ds.shuffle(len(x), seed=seed).repeat().map(
        lambda a, b, c: (_augment(a, input_size), tf.one_hot(b, 3), c),
        num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    model = build_gate(input_size, 3, width)
    steps = steps_per_epoch or max(1, math.ceil(len(x) / batch_size))
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        lr, max(1, epochs * steps), alpha=0.02)),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    t1 = time.time()
    model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=2,
              callbacks=[keras.callbacks.CSVLogger(str(out / "history.csv"))])
    train_s = time.time() - t1
    model.save(out / MODEL_FILE)

    # Threshold on validation frontal films: pass >= 99.7% of them (never stricter than 0.5).
    p_va = softmax(np.asarray(model.predict(_inputs([read_gray(r.image) for r in va["frontal"]],
                                                    input_size), verbose=0), np.float64))
    thr = float(min(0.5, np.quantile(p_va[:, FRONTAL], 0.003))) if len(p_va) else 0.5
    meta = {"architecture": f"gate CNN width {width}, grey {input_size}x{input_size}, 3 classes",
            "input_size": input_size, "width": width, "params": int(model.count_params()),
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
            "n_train": {"frontal": len(frontal), "lateral": len(tr["lateral"]), "ct": len(tr["ct"]),
                        "synthetic": len(synth)},
            "class_weights": cw.round(4).tolist(), "threshold_p_frontal": thr,
            "threshold_rule": "min(0.5, 0.3% quantile of P(frontal) on validation frontal films)",
            "val_frontal_n": len(p_va),
            "augmentation": "rotation +-10 deg, shift +-8%, zoom 0.85-1.15, horizontal flip, "
                            "contrast 0.75-1.25, brightness +-0.1, gamma 0.75-1.33",
            "train_wall_time_s": round(train_s, 1), "total_wall_time_s": round(time.time() - t0, 1),
            "command": command, "hardware": hardware_info(), "library_versions": library_versions()}
    (out / "train_meta.json").write_text(json.dumps(meta, indent=1))
    log.info("gate trained in %.0fs; P(frontal) threshold %.4f", train_s, thr)
    return meta


# ------------------------------------------------------------------ export + evaluate
def export(run: Path, models_dir: Path, name: str, version: str) -> Path:
    """Write ``models/<name>/`` (weights + card); rejection rates are added by :func:`evaluate`."""
    meta = read_meta(run)
    dest = models_dir / name
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / f"{name}.keras"
    save_inference_model(run / MODEL_FILE, weights)
    card = {
        "name": name, "version": version, "task": "domain gate: frontal chest X-ray or not",
        "architecture": meta["architecture"], "params": meta["params"],
        "input_size": meta["input_size"],
        "preprocessing": "xrayviewer.modellayer.preprocessing.prepare_for_model (grey / 255, squash-resize)",
        "output": "logits over [frontal chest X-ray, lateral chest X-ray, not a chest X-ray]; "
                  "softmax; image passes stage 2 when P(frontal) >= threshold",
        "threshold": meta["threshold_p_frontal"], "threshold_rule": meta["threshold_rule"],
        "labels": {str(i): c for i, c in enumerate(GATE_CLASSES)},
        "stages": STAGES,
        "training_data": {"n_train": meta["n_train"], "class_weights": meta["class_weights"],
                          "split": "train side of the patient-disjoint split (ieee8023 lateral/CT "
                                   "rows of validation patients are held out)",
                          "synthetic_kinds": list(SYNTHETIC_KINDS), "augmentation": meta["augmentation"],
                          "epochs": meta["epochs"], "batch_size": meta["batch_size"]},
        "metrics": {},
        **provenance(meta, weights),
    }
    write_card(dest, card, GateCard)
    return dest


def _rate(results: list[Any]) -> dict[str, Any]:
    n, rejected, by_stage, by_code = refusal_counts(results)
    return {"n": n, "rejected": rejected, "rejection_rate": round(rejected / n, 4) if n else None,
            "pass_rate": round(1 - rejected / n, 4) if n else None,
            "by_reason": by_code, "by_stage": by_stage}


def evaluate(data_dir: Path, split_file: Path, models_dir: Path, name: str, classifier_name: str,
             max_images: int | None, seed: int = 12345) -> dict:
    """Rejection / pass rates of the full app gate; written into the gate card."""
    from ..imaging import load_image
    from ..modellayer.classifier import DiseaseClassifier
    from ..modellayer.gate import DomainGate
    from ..modellayer.lung import LungSegmenter

    gate = DomainGate(name, models_dir)
    # As in the app: the classifier takes its lung masks (a lung_crop input) from the lung model.
    clf = DiseaseClassifier(classifier_name, models_dir, lung_segmenter=LungSegmenter(models_root=models_dir))
    split = read_split(split_file)
    va = gate_records(data_dir, split, "val", max_images, EVAL_SOURCES)
    tr = gate_records(data_dir, split, "train", max_images, EVAL_SOURCES)

    def run_files(paths: list[str], chunk: int = 64) -> list[Any]:
        """The app's gate sequence on files loaded as the app loads them, a chunk at a time."""
        out = []
        for start in range(0, len(paths), chunk):
            out.extend(gate.check_batch([load_image(p) for p in paths[start:start + chunk]], clf))
        return out

    def run_arrays(arrays: list[np.ndarray]) -> list[Any]:
        return gate.check_batch(arrays, clf)

    report: dict[str, Any] = {}
    t0 = time.time()
    report["ieee8023_lateral_heldout"] = _rate(run_files([r.image for r in va["lateral"]]))
    report["ieee8023_ct_heldout"] = _rate(run_files([r.image for r in va["ct"]]))
    report["ieee8023_lateral_train_side"] = _rate(run_files([r.image for r in tr["lateral"]]))
    report["ieee8023_ct_train_side"] = _rate(run_files([r.image for r in tr["ct"]]))
    dicom = data_dir / "dicom"
    non_chest = sorted(str(p) for p in dicom.glob("RG2_*.dcm")) + sorted(str(p) for p in (dicom / "non_cxr").glob("*.dcm"))
    res = run_files(non_chest)
    report["non_chest_dicoms"] = {**_rate(res), "files": {Path(p).name: r.as_dict() for p, r in zip(non_chest, res)}}
    # Same pixels without the header: does the CNN alone catch them?
    nc_pix = [load_image(p).display for p in non_chest]
    res = run_arrays(nc_pix)
    report["non_chest_dicoms_pixels_only"] = {**_rate(res), "files": {Path(p).name: r.as_dict() for p, r in zip(non_chest, res)}}
    synth, kinds = synthetic_images(270, seed)
    res = run_arrays(synth)
    report["synthetic_heldout_seed"] = _rate(res)
    report["synthetic_by_kind"] = {k: _rate([r for r, kk in zip(res, kinds) if kk == k]) for k in SYNTHETIC_KINDS}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # from files, as the app opens them
        paths = []
        for i, b in enumerate(colour_pictures(40, seed)):
            paths.append(Path(tmp) / f"colour{i}.img")
            paths[-1].write_bytes(b)
        report["colour_pictures"] = _rate(run_files([str(p) for p in paths]))
    # dx_image.dcm (highdicom test file) is a small *lateral* thorax film of an animal: it
    # belongs with the refusals, not with the frontal chest films.
    chest_dicoms = sorted(str(p) for p in dicom.glob("*.dcm")
                          if not p.name.startswith("RG2_") and p.name not in ("dx_image.dcm", "Fake_MONOHR1.dcm"))
    res = run_files(chest_dicoms)
    report["chest_dicoms_pass"] = {**_rate(res), "files": {Path(p).name: r.as_dict() for p, r in zip(chest_dicoms, res)}}
    if (dicom / "dx_image.dcm").is_file():
        report["dx_image_lateral_animal_thorax"] = run_files([str(dicom / "dx_image.dcm")])[0].as_dict()
    if (dicom / "Fake_MONOHR1.dcm").is_file():  # SIIM pixels mis-tagged MONOCHROME1: shows inverted
        report["fake_monochrome1_inverted_film"] = run_files([str(dicom / "Fake_MONOHR1.dcm")])[0].as_dict()
    fr = va["frontal"]
    res = run_files([r.image for r in fr])
    report["frontal_val_films"] = _rate(res)
    report["frontal_val_by_source"] = {s: _rate([r for r, rec in zip(res, fr) if rec.source == s])
                                       for s in sorted({r.source for r in fr})}
    report["frontal_val_refused_examples"] = [
        {"image": rel_key(rec, data_dir), **r.as_dict()} for r, rec in zip(res, fr) if not r.accepted][:20]
    report["heldout_files"] = {"lateral": [rel_key(r, data_dir) for r in va["lateral"]],
                               "ct": [rel_key(r, data_dir) for r in va["ct"]]}
    report["eval_wall_time_s"] = round(time.time() - t0, 1)
    card_path = models_dir / name / "card.json"
    card = json.loads(card_path.read_text())
    card["metrics"] = report
    card["stages"] = STAGES
    block = clf.card.raw.get("mahalanobis") or {}
    card["classifier_for_stage3"] = {"name": classifier_name, "sha256": clf.card.sha256,
                                     "embedding_stats_sha256": clf.card.raw.get("embedding_stats_sha256"),
                                     "mahalanobis_version": block.get("version"),
                                     "mahalanobis_threshold": block.get("threshold")}
    card_path.write_text(json.dumps(card, indent=1))
    log.info("gate: frontal val pass %.4f; lateral held-out rejected %.3f; CT held-out %.3f; "
             "non-chest DICOMs %.3f; synthetic %.3f; colour %.3f",
             report["frontal_val_films"]["pass_rate"], report["ieee8023_lateral_heldout"]["rejection_rate"] or 0,
             report["ieee8023_ct_heldout"]["rejection_rate"] or 0, report["non_chest_dicoms"]["rejection_rate"],
             report["synthetic_heldout_seed"]["rejection_rate"], report["colour_pictures"]["rejection_rate"])
    return report
