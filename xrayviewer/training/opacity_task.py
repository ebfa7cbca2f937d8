"""Train, evaluate and export the opacity generator (pix2pix: U-Net generator + patch critic).

Task: COVID-QU-Ex "infection" masks (opacity on COVID-19 films; all-zero masks on Normal and
Non-COVID films, kept in training so the generator learns to answer "none"), plus negatives
from the other sources that have them (NIH No_findings and Pneumonia, ieee8023 "No Finding"
frontal films: empty masks). Shenzhen films never enter opacity training: their normals are
the unseen-hospital test. With ``--input-crop lung-box`` the generator sees the box around
the lung fields that the bundled lung model finds (as the app does), at ``--input-size``.

Two variants share the generator, the segmentation loss, the data and the schedule, so
the comparison isolates the critic:

* ``pix2pix`` -- generator loss = Dice + BCE + ``adv_weight`` x adversarial (non-saturating
  BCE on the critic's patch logits); the critic is a PatchGAN of spectrally normalised
  residual blocks that sees (image, mask) pairs, real or generated;
* ``unet`` -- the same generator trained with Dice + BCE alone.

A *run directory* holds ``model.keras`` (the generator only, best epoch by the validation
selection score), ``history.csv``, ``train_meta.json`` and, after evaluation,
``eval/summary.json`` plus per-image CSVs. ``export`` writes ``models/<name>/``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..modellayer.opacity import (
    DEFAULT_MIN_REGION_FRACTION,
    DEFAULT_THRESHOLD,
    FILM_RULE_CLASSIFIER,
    GRADES,
    LUNG_BOX_MARGIN,
    OpacityCard,
    analyze_probability,
    involvement,
    lung_box,
    predict_maps,
)
from ..modellayer.postprocess import split_lungs
from ..modellayer.preprocessing import LEGACY, ROBUST, film_input, prepare_for_model, resize
from .datasets import COVID, NORMAL, OTHER, Record, _spread, fingerprint, read_all, read_gray, read_mask
from .export_common import (
    compare_runs,
    copy_segmentation_evals,
    lineage,
    preprocessing_text,
    provenance,
    start_export,
    total_epochs,
    write_card,
    write_segmentation_eval,
)
from .metrics import aggregate, segmentation_metrics, time_call
from .runinfo import (
    AUGMENTATION_ROBUST,
    hardware_info,
    library_versions,
    prepare_run,
    resolve_augmentation,
    source_counts,
)
from .splits import read_split, rel_key, select

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
VARIANTS = ("pix2pix", "unet")
WEAK_CHECK_PER_CLASS = 8
NATURAL_SAMPLING = "each training film once per epoch (natural class shares)"  # also runs older than the option
LOSS_NAMES = {"dice-bce": "Dice + BCE",
              "focal-tversky-bce": "focal Tversky (alpha 0.7 on misses, beta 0.3, gamma 0.75, per film) + BCE"}
THRESHOLD_GRID = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
THRESHOLD_FP_BUDGET = 0.025  # Normal films with any region, when choosing the threshold (target 5%)
AUGMENTATION = ("rotation +-7 deg, shift +-6%, zoom 0.9-1.1, contrast 0.85-1.15, brightness +-0.08, "
                "gamma 0.8-1.25, Gaussian noise sigma<=0.02; no flip (xrayviewer.training.pipeline)")


# ---------------------------------------------------------------- architectures
def build_generator(input_size: int = 128, base_filters: int = 16, depth: int = 4,
                    name: str = "opacity_generator") -> Any:
    """U-Net generator: the plain U-Net of :mod:`.architectures` with an ``opacity_prob`` head.

    Output (H, W, 1) float32 sigmoid probability of opacity per pixel. Deterministic (no
    dropout noise): for segmentation the conditional output should be a single answer.
    """
    from .architectures import build_unet

    return build_unet(input_size, base_filters, depth, "unet", name=name, head_name="opacity_prob")


def _sn_conv(filters: int, kernel: int, name: str, strides: int = 1) -> Any:
    from keras import layers

    return layers.SpectralNormalization(
        layers.Conv2D(filters, kernel, strides=strides, padding="same", name=f"{name}_conv"),
        name=f"{name}_sn")


def _critic_res_block(x: Any, filters: int, name: str) -> Any:
    """Residual down-sampling block (BigGAN-D style): LReLU-conv-LReLU-conv-avgpool + 1x1 shortcut."""
    from keras import layers

    y = layers.LeakyReLU(0.2, name=f"{name}_act1")(x)
    y = _sn_conv(filters, 3, f"{name}_c1")(y)
    y = layers.LeakyReLU(0.2, name=f"{name}_act2")(y)
    y = _sn_conv(filters, 3, f"{name}_c2")(y)
    y = layers.AveragePooling2D(2, name=f"{name}_pool")(y)
    s = _sn_conv(filters, 1, f"{name}_sc")(x)
    s = layers.AveragePooling2D(2, name=f"{name}_scpool")(s)
    return layers.Add(name=f"{name}_add")([s, y])


def build_critic(input_size: int = 128, base_filters: int = 16, n_blocks: int = 2,
                 name: str = "opacity_critic") -> Any:
    """PatchGAN critic: (image, mask) -> (S/2**(n+1), S/2**(n+1), 1) float32 real/fake logits.

    A stride-2 4x4 stem (as in pix2pix) then residual down-sampling blocks, all spectrally
    normalised (no batch norm, which would let the critic compare samples within a batch).
    Each logit judges one patch of the pair (~40 px receptive field at 128 px input with two
    blocks). The stride-2 stem matters on CPU: full-resolution critic convolutions, run
    on real and generated pairs, cost more than the whole generator (measured 3x slower).
    """
    import keras
    from keras import layers

    if input_size % (2 ** (n_blocks + 1)):
        raise ValueError(f"input_size {input_size} not divisible by 2**{n_blocks + 1}")
    image = keras.Input((input_size, input_size, 1), name="image")
    mask = keras.Input((input_size, input_size, 1), name="mask")
    x = layers.Concatenate(name="pair")([image, mask])
    x = _sn_conv(base_filters, 4, "stem", strides=2)(x)
    for i in range(n_blocks):
        x = _critic_res_block(x, base_filters * 2 ** min(i + 1, 3), f"block{i}")
    x = layers.LeakyReLU(0.2, name="head_act")(x)
    out = layers.Conv2D(1, 1, dtype="float32", name="patch_logits")(x)
    return keras.Model([image, mask], out, name=name)


# ---------------------------------------------------------------- data
NEGATIVE_SOURCES = ("nih", "ieee8023")  # films with nothing to mark in the COVID-QU-Ex convention
FRONTAL_VIEWS = ("PA", "AP", "AP Supine")


def negative_record(r: Record) -> bool:
    """A film of another source that is an empty-mask example: every NIH film (No_findings,
    and Pneumonia, which COVID-QU-Ex's convention leaves empty like its Non-COVID class) and
    ieee8023 frontal X-ray films labelled "No Finding"."""
    if r.source == "nih":
        return True
    return (r.source == "ieee8023" and r.label == NORMAL and (r.view or "") in FRONTAL_VIEWS
            and (r.modality or "X-ray") == "X-ray")


def opacity_records(data_dir: Path, split: dict, which: str, max_images: int | None,
                    negatives: bool = False) -> list[Record]:
    """COVID-QU-Ex records (all three classes) that have infection and lung masks, and with
    ``negatives`` the empty-mask films of :data:`NEGATIVE_SOURCES` (``infection_mask`` None)."""
    recs = [r for r in read_all(data_dir, ("covid-qu-ex",), max_images)
            if r.infection_mask and r.lung_mask]
    if negatives:
        recs += [r for r in read_all(data_dir, NEGATIVE_SOURCES, max_images) if negative_record(r)]
    return select(recs, split, which, data_dir)


@dataclass(frozen=True)
class InputSpec:
    """How a run's generator is fed: size, normalisation, lung-box crop (from train_meta)."""

    size: int
    normalization: str = LEGACY
    crop: bool = False
    margin: float = LUNG_BOX_MARGIN

    @classmethod
    def from_meta(cls, meta: dict) -> "InputSpec":
        margin = meta.get("crop_margin")  # None in a whole-film run's meta
        return cls(int(meta["input_size"]), meta.get("input_normalization", LEGACY),
                   meta.get("input_crop") == "lung-box", float(LUNG_BOX_MARGIN if margin is None else margin))

    def films(self, grays: Sequence[np.ndarray]) -> list[Any]:
        return [film_input(g) for g in grays] if self.normalization == ROBUST else list(grays)

    def boxes(self, films: Sequence[Any], lungs: Sequence[np.ndarray | None]) -> list[Any]:
        from ..modellayer.common import image_shape

        if not self.crop:
            return [None] * len(films)
        return [lung_box(lab, image_shape(f), self.margin) for f, lab in zip(films, lungs)]


def load_crop_arrays(records: list[Record], spec: InputSpec, segmenter: Any,
                     batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Training arrays fed exactly as the app feeds the generator: the robust input of the
    lung box that ``segmenter`` (the bundled lung model) finds, mask cropped alike."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        grays = [read_gray(r.image) for r in chunk]
        films = spec.films(grays)
        lungs = [res.labels for res in segmenter.segment_batch(films)]
        for r, g, film, box in zip(chunk, grays, films, spec.boxes(films, lungs)):
            m = read_mask(r.infection_mask) if r.infection_mask else np.zeros(g.shape, bool)
            if m.shape != g.shape:
                m = resize(m.astype(np.uint8), g.shape, nearest=True) > 0
            x0, y0, x1, y1 = box if box is not None else (0, 0, g.shape[1], g.shape[0])
            xs.append(film.model_array(spec.size, box) if hasattr(film, "model_array")
                      else prepare_for_model(film, spec.size, spec.normalization))
            ys.append(np.clip(resize(m[y0:y1, x0:x1].astype(np.float32), spec.size), 0, 1)[..., None])
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


def _class_counts(recs: list[Record]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in recs:
        out[r.label or ""] = out.get(r.label or "", 0) + 1
    return out


# ---------------------------------------------------------------- training step
def make_train_step(generator: Any, critic: Any | None, g_opt: Any, d_opt: Any | None,
                    adv_weight: Any, loss: str = "dice-bce") -> Any:
    """A compiled (tf.function) step: returns dict of scalar losses for one batch.

    ``adv_weight`` may be a ``tf.Variable`` (the caller ramps it up during a warm-up).
    """
    import tensorflow as tf

    from .pipeline import SEG_LOSSES

    bce_logits = tf.nn.sigmoid_cross_entropy_with_logits
    seg_loss = SEG_LOSSES[loss]

    @tf.function
    def step(x: Any, y: Any) -> dict[str, Any]:
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            p = generator(x, training=True)
            seg = seg_loss(y, p)
            g_loss = seg
            if critic is not None:
                # real and generated pairs in one critic call (one pass over the weights)
                both = tf.cast(critic([tf.concat([x, x], 0), tf.concat([tf.cast(y, p.dtype), p], 0)],
                                      training=True), tf.float32)
                real, fake = tf.split(both, 2, axis=0)
                g_adv = tf.reduce_mean(bce_logits(labels=tf.ones_like(fake), logits=fake))
                # one-sided label smoothing (0.9) keeps the critic from saturating early
                d_loss = 0.5 * (tf.reduce_mean(bce_logits(labels=0.9 * tf.ones_like(real), logits=real))
                                + tf.reduce_mean(bce_logits(labels=tf.zeros_like(fake), logits=fake)))
                g_loss = seg + tf.cast(adv_weight, tf.float32) * g_adv
            else:
                g_adv = tf.constant(0.0)
                d_loss = tf.constant(0.0)
        g_vars = generator.trainable_variables
        g_opt.apply_gradients(zip(g_tape.gradient(g_loss, g_vars), g_vars))
        if critic is not None:
            d_vars = critic.trainable_variables
            d_opt.apply_gradients(zip(d_tape.gradient(d_loss, d_vars), d_vars))
        return {"loss": g_loss, "seg_loss": seg, "g_adv": g_adv, "d_loss": d_loss}

    return step


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)


def _drop_specks(mask: np.ndarray, fraction: float = DEFAULT_MIN_REGION_FRACTION) -> np.ndarray:
    """Connected components smaller than ``fraction`` of the array removed (8-connected)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= max(1, round(fraction * mask.size))
    keep[0] = False
    return keep[lab]


def _val_scores(generator: Any, xva: np.ndarray, yva: np.ndarray, labels: list[str],
                threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """Model-resolution validation figures used to pick the checkpoint (fast, no lung model)."""
    import tensorflow as tf

    from .pipeline import dice_bce_loss

    losses, dices, fp_any = [], [], []
    for start in range(0, len(xva), 32):
        xb, yb = xva[start:start + 32], yva[start:start + 32]
        p = generator(xb, training=False)
        losses.append(float(dice_bce_loss(tf.constant(yb), p)) * len(xb))
        # specks below the app's smallest region are dropped, as the app drops them: otherwise
        # a few stray pixels on a Normal film outweigh a lesion found on a COVID film
        pb = [_drop_specks(a) for a in np.asarray(p)[..., 0] > threshold]
        tb = yb[..., 0] > 0.5
        for a, b in zip(pb, tb):
            inter, s = np.count_nonzero(a & b), np.count_nonzero(a) + np.count_nonzero(b)
            dices.append(1.0 if s == 0 else 2.0 * inter / s)
            fp_any.append(bool(a.any()))
    lab = np.array(labels)
    d = np.array(dices)
    covid = lab == COVID
    normal = lab == NORMAL
    out = {
        "val_loss": sum(losses) / len(xva),
        "val_dice_all": float(d.mean()),
        "val_dice_covid": float(d[covid].mean()) if covid.any() else math.nan,
        "val_any_positive_normal": float(np.mean(np.array(fp_any)[normal])) if normal.any() else math.nan,
    }
    # Selection score: mean hard Dice over all val films with "both empty" = 1, so it rewards
    # overlap on COVID films and silence on Normal / Non-COVID films at once.
    out["val_select"] = out["val_dice_all"]
    return out


def train(data_dir: Path, split_file: Path, out: Path, *, variant: str, input_size: int,
          base_filters: int, depth: int, critic_filters: int, critic_blocks: int, epochs: int,
          batch_size: int, lr: float, d_lr: float, adv_weight: float, seed: int,
          max_images: int | None, steps_per_epoch: int | None, train_fraction: float,
          mixed_precision: bool, command: str, init_from: Path | None = None,
          positive_fraction: float | None = None, normalization: str = ROBUST,
          input_crop: str = "lung-box", loss: str = "focal-tversky-bce", adv_warmup_epochs: float = 0.0,
          negatives: bool = True, models_dir: Path | None = None, augmentation: str | None = None) -> dict:
    """Train one variant; writes ``model.keras`` (generator), ``history.csv``, ``train_meta.json``.

    ``augmentation``: ``mild`` or ``hospital`` (default: hospital for rank-v1, mild for
    display-v1); the hospital set lets a display-input generator see the window, gamma and
    sharpening of other hospitals' films, which display-v1 passes straight to the model.
    """
    import keras
    import tensorflow as tf

    from .architectures import warm_start
    from .pipeline import load_arrays, make_dataset

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    if input_crop == "lung-box" and normalization != ROBUST:
        raise SystemExit("--input-crop lung-box needs --normalization rank-v1")
    augmentation = resolve_augmentation(augmentation, normalization)

    def records(d: Path, sp: dict, which: str, mx: int | None) -> list[Record]:
        # negatives of other sources train; the checkpoint is chosen on COVID-QU-Ex Val only
        return opacity_records(d, sp, which, mx, negatives=negatives and which == "train")

    split, train_recs, val_recs = prepare_run(records, data_dir, split_file, out, seed=seed,
                                              mixed_precision=mixed_precision, max_images=max_images,
                                              train_fraction=train_fraction)
    spec = InputSpec(input_size, normalization, input_crop == "lung-box")
    t0 = time.time()
    lung_info = None
    if spec.crop:
        from ..modellayer.lung import LungSegmenter

        segmenter = LungSegmenter(models_root=models_dir)
        lung_info = {"name": segmenter.card.name, "version": segmenter.card.version,
                     "sha256": segmenter.card.sha256, "input_normalization": segmenter.normalization}
        xtr, ytr = load_crop_arrays(train_recs, spec, segmenter)
        xva, yva = load_crop_arrays(val_recs, spec, segmenter)
    else:
        xtr, ytr = load_arrays(train_recs, input_size, mask_attr="infection_mask", normalization=normalization)
        xva, yva = load_arrays(val_recs, input_size, mask_attr="infection_mask", normalization=normalization)
    val_labels = [r.label or "" for r in val_recs]
    log.info("loaded %d train / %d val arrays in %.1fs", len(xtr), len(xva), time.time() - t0)
    steps = steps_per_epoch or max(1, math.ceil(len(xtr) / batch_size))

    generator = build_generator(input_size, base_filters, depth)
    copied = warm_start(generator, init_from) if init_from else []
    critic = build_critic(input_size, critic_filters, critic_blocks) if variant == "pix2pix" else None
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, epochs * steps), alpha=0.05)
    g_opt = keras.optimizers.Adam(schedule)
    d_opt = keras.optimizers.Adam(d_lr, beta_1=0.5) if critic is not None else None
    adv_var = tf.Variable(0.0 if adv_warmup_epochs > 0 else adv_weight, trainable=False, dtype=tf.float32)
    warmup_steps = max(1, int(round(adv_warmup_epochs * steps)))
    step = make_train_step(generator, critic, g_opt, d_opt, adv_var, loss)
    it = iter(make_dataset(xtr, ytr, batch_size, True, seed, positive_fraction,
                           robust=augmentation == "hospital"))

    ckpt = out / MODEL_FILE
    history: list[dict[str, float]] = []
    best = -math.inf
    best_epoch = 0
    step_s = 0.0
    t1 = time.time()
    for epoch in range(epochs):
        te = time.time()
        sums: dict[str, float] = {}
        for i in range(steps):
            xb, yb = next(it)
            if adv_warmup_epochs > 0:  # the critic's voice grows linearly over the warm-up
                adv_var.assign(adv_weight * min(1.0, (epoch * steps + i) / warmup_steps))
            ts = time.perf_counter()
            res = step(xb, yb)
            for k, v in res.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if epoch or i:  # the first call traces the graph (seconds): not a training step's cost
                step_s += time.perf_counter() - ts
        row: dict[str, float] = {"epoch": epoch, **{k: v / steps for k, v in sums.items()}}
        row.update(_val_scores(generator, xva, yva, val_labels))
        row["epoch_s"] = round(time.time() - te, 1)
        history.append(row)
        _write_history(out / "history.csv", history)  # every epoch, so a long run can be watched
        if not math.isfinite(row["loss"]):
            log.error("non-finite loss at epoch %d; stopping", epoch + 1)
            break
        if row["val_select"] > best:
            best, best_epoch = row["val_select"], epoch + 1
            generator.save(ckpt)
        generator.save(out / "model_last.keras")
        log.info("epoch %d/%d %.0fs: loss %.4f seg %.4f g_adv %.3f d %.3f | val loss %.4f dice(all) %.4f "
                 "dice(COVID) %.4f Normal-any+ %.3f", epoch + 1, epochs, row["epoch_s"], row["loss"],
                 row["seg_loss"], row["g_adv"], row["d_loss"], row["val_loss"], row["val_dice_all"],
                 row["val_dice_covid"], row["val_any_positive_normal"])
    train_s = time.time() - t1
    if not ckpt.is_file():
        generator.save(ckpt)
    meta = {
        "variant": variant,
        "architecture": f"U-Net generator depth {depth} base {base_filters}"
                        + (f" + PatchGAN critic ({critic_blocks} spectral-norm residual blocks, base "
                           f"{critic_filters}, training only)" if critic is not None else " (no critic)"),
        "input_size": input_size, "base_filters": base_filters, "depth": depth,
        "critic_filters": critic_filters if critic is not None else None,
        "critic_blocks": critic_blocks if critic is not None else None,
        "params": int(generator.count_params()),
        "critic_params": int(critic.count_params()) if critic is not None else 0,
        "epochs": epochs, "epochs_run": len(history), "best_epoch": best_epoch,
        "batch_size": batch_size, "steps_per_epoch": steps, "lr": lr,
        "lr_schedule": "cosine decay to 5%", "d_lr": d_lr if critic is not None else None,
        "adv_weight": adv_weight if critic is not None else 0.0, "seed": seed,
        "max_images": max_images, "train_fraction": train_fraction, "mixed_precision": mixed_precision,
        "init_from": str(init_from) if init_from else None, "init_layers_copied": len(copied),
        "positive_fraction": positive_fraction,
        "sampling": (f"films with a non-empty mask drawn with probability {positive_fraction}"
                     if positive_fraction else NATURAL_SAMPLING),
        "loss": LOSS_NAMES[loss] + (f" + {adv_weight} x non-saturating adversarial (critic: BCE on patch "
                                    "logits, real label 0.9"
                                    + (f", weight ramped up over {adv_warmup_epochs} epochs" if adv_warmup_epochs else "")
                                    + ")" if critic is not None else ""),
        "seg_loss": loss, "adv_warmup_epochs": adv_warmup_epochs if critic is not None else None,
        "input_normalization": normalization, "input_crop": input_crop if spec.crop else "none",
        "crop_margin": spec.margin if spec.crop else None, "crop_lung_model": lung_info,
        "train_sources": source_counts(train_recs), "negatives": negatives,
        "checkpoint_selection": "epoch with the best mean hard Dice over all COVID-QU-Ex Val films "
                                "(empty-vs-empty = 1) at model resolution, specks below the app's "
                                "smallest region dropped first; the last epoch is kept as model_last.keras",
        "augmentation": AUGMENTATION_ROBUST if augmentation == "hospital" else AUGMENTATION,
        "augmentation_set": augmentation,
        "n_train": len(xtr), "n_val": len(xva), "train_classes": _class_counts(train_recs),
        "val_classes": _class_counts(val_recs), "split_file": str(split_file),
        "split_counts": split.get("counts"),
        "n_excluded_near_duplicates": len(split.get("excluded", [])),
        "train_wall_time_s": round(train_s, 1), "total_wall_time_s": round(time.time() - t0, 1),
        "steps_per_s": round(len(history) * steps / train_s, 3),
        "train_steps_per_s_excluding_validation": round((len(history) * steps - 1) / max(step_s, 1e-9), 3),
        "best_val_select": best, "command": command, "hardware": hardware_info(),
        "library_versions": library_versions(),
    }
    (out / "train_meta.json").write_text(json.dumps(meta, indent=1))
    keras.mixed_precision.set_global_policy("float32")
    log.info("trained %s in %.0fs (%.3f steps/s), best epoch %d", variant, train_s,
             meta["steps_per_s"], best_epoch)
    return meta


# ---------------------------------------------------------------- evaluate
def _lung_labels_for(records: list[Record], images: list[np.ndarray], lung_source: str,
                     segmenter: Any) -> list[np.ndarray]:
    """Lung label masks for evaluation: the bundled lung model, or the dataset's lung masks."""
    if lung_source == "model":
        return [res.labels for res in segmenter.segment_batch(images)]
    out = []
    for r, img in zip(records, images):
        m = read_mask(r.lung_mask)
        if m.shape != img.shape:
            from ..modellayer.preprocessing import resize

            m = resize(m.astype(np.uint8), img.shape, nearest=True) > 0
        out.append(split_lungs(m))
    return out


def _truth_figures(truth: np.ndarray, truth_lung: np.ndarray, min_fraction: float) -> tuple[float, str]:
    """Involvement % and grade of a ground-truth mask against the ground-truth lung."""
    from ..modellayer.opacity import min_area_px, severity_grade

    _, _, pct = involvement(truth & (truth_lung > 0), truth_lung)
    has = int(np.count_nonzero(truth)) >= min_area_px(truth.shape, min_fraction)
    return pct["total"], severity_grade(pct["total"], has)


def evaluate_records(model: Any, spec: InputSpec | int, records: list[Record], data_dir: Path,
                     lung_source: str, segmenter: Any, thresholds: Sequence[float],
                     min_fraction: float) -> dict[float, list[dict]]:
    """Per-image metrics at full resolution through the app's own figures (analyze_probability),
    ``{threshold: rows}`` from a single pass of the model (one threshold, or the sweep of
    :func:`choose_threshold`)."""
    spec = spec if isinstance(spec, InputSpec) else InputSpec(int(spec))
    grid = [float(x) for x in thresholds]
    out: dict[float, list[dict]] = {th: [] for th in grid}
    for start in range(0, len(records), 32):
        chunk = records[start:start + 32]
        imgs = [read_gray(r.image) for r in chunk]
        films = spec.films(imgs)
        lungs = _lung_labels_for(chunk, films, lung_source, segmenter)
        probs = predict_maps(model, films, spec.boxes(films, lungs), spec.size, spec.normalization)
        for r, img, p, lung in zip(chunk, imgs, probs, lungs):
            truth = read_mask(r.infection_mask)
            if truth.shape != img.shape:
                from ..modellayer.preprocessing import resize

                truth = resize(truth.astype(np.uint8), img.shape, nearest=True) > 0
            truth_lung = read_mask(r.lung_mask)
            if truth_lung.shape != img.shape:
                from ..modellayer.preprocessing import resize

                truth_lung = resize(truth_lung.astype(np.uint8), img.shape, nearest=True) > 0
            t_pct, t_grade = _truth_figures(truth, split_lungs(truth_lung), min_fraction)
            for th in grid:
                res = analyze_probability(p, lung, th, min_fraction)
                m = segmentation_metrics(res.mask, truth)
                out[th].append({
                    "image": rel_key(r, data_dir), "label": r.label or "",
                    **{k: round(v, 5) for k, v in m.items()},
                    "tp": int(np.count_nonzero(res.mask & truth)), "pred_px": int(np.count_nonzero(res.mask)),
                    "truth_px": int(np.count_nonzero(truth)), "n_regions": len(res.regions),
                    "any_region": int(res.has_opacity),
                    "involvement_pct": round(res.involvement_pct["total"], 3),
                    "truth_involvement_pct": round(t_pct, 3), "grade": res.grade, "truth_grade": t_grade,
                })
    return out


def _operating_point(rows: list[dict]) -> tuple[float, float]:
    """(COVID per-film mean Dice, Normal any-region rate) of one threshold's rows."""
    covid = [r["dice"] for r in rows if r["label"] == COVID]
    normal = [r["any_region"] for r in rows if r["label"] == NORMAL]
    return (float(np.mean(covid)) if covid else math.nan, float(np.mean(normal)) if normal else 0.0)


def _best_threshold(by_t: dict[float, list[dict]], max_normal_fp: float) -> float:
    """Highest COVID Dice among thresholds whose Normal false-positive rate is within budget
    (ties: the higher threshold); the highest threshold when none is."""
    ok = [(d, th) for th, rows in by_t.items() for d, fp in [_operating_point(rows)] if fp <= max_normal_fp]
    return max(ok)[1] if ok else max(by_t)


def choose_threshold(by_t: dict[float, list[dict]], max_normal_fp: float = THRESHOLD_FP_BUDGET) -> dict:
    """Pick the mask threshold on validation, and say what that choice is worth honestly.

    The threshold is chosen on all validation films; because choosing and scoring on the same
    films flatters the result, the figures reported with it are 2-fold cross-fitted (each half
    scored at the threshold chosen on the other half). The false-positive budget is half the
    5% target, a margin for films the model has not seen.
    """
    grid = sorted(by_t)
    n = len(by_t[grid[0]])
    folds = [np.arange(n) % 2 == k for k in (0, 1)]
    chosen = _best_threshold(by_t, max_normal_fp)
    cross = []
    for k in (0, 1):
        fit = {th: [r for r, f in zip(rows, folds[k]) if f] for th, rows in by_t.items()}
        th_k = _best_threshold(fit, max_normal_fp)
        cross.append((th_k, [r for r, f in zip(by_t[th_k], folds[1 - k]) if f]))
    held = [r for _, rows in cross for r in rows]
    d_cv, fp_cv = _operating_point(held)
    return {
        "threshold": chosen, "rule": f"maximise COVID-19 per-film Dice on COVID-QU-Ex Val with the Normal "
                                     f"any-region rate <= {max_normal_fp:.3f}",
        "fold_thresholds": [th for th, _ in cross],
        "cross_fitted_2fold": {"covid_dice_mean": d_cv, "normal_false_positive_rate": fp_cv},
        "sweep": [{"threshold": th, "covid_dice_mean": round(d, 4), "normal_false_positive_rate": round(fp, 4)}
                  for th in grid for d, fp in [_operating_point(by_t[th])]],
    }


def _pooled(rows: list[dict]) -> dict[str, float]:
    """Pixel-pooled Dice / precision / recall over a set of images (one big confusion matrix)."""
    tp = sum(r["tp"] for r in rows)
    pp = sum(r["pred_px"] for r in rows)
    tt = sum(r["truth_px"] for r in rows)
    return {"dice": 2 * tp / (pp + tt) if pp + tt else math.nan,
            "precision": tp / pp if pp else math.nan, "recall": tp / tt if tt else math.nan}


def _class_summary(rows: list[dict]) -> dict[str, Any]:
    if not rows:
        return {"n": 0}
    inv_err = [abs(r["involvement_pct"] - r["truth_involvement_pct"]) for r in rows]
    return {
        **aggregate(rows),
        "pooled": _pooled(rows),
        "any_region_rate": float(np.mean([r["any_region"] for r in rows])),
        "involvement_abs_error_pct_points": {"mean": float(np.mean(inv_err)),
                                             "median": float(np.median(inv_err))},
        "grade_agreement": float(np.mean([r["grade"] == r["truth_grade"] for r in rows])),
        "grade_confusion": {t: {p: sum(1 for r in rows if r["truth_grade"] == t and r["grade"] == p)
                                for p in GRADES} for t in GRADES},
    }


def _gb_summary(rows: list[dict]) -> dict[str, Any]:
    """Per-image aggregates, pooled figures and the any-region rate of a GB subset."""
    if not rows:
        return {"n": 0}
    return {**aggregate(rows), "pooled": _pooled(rows),
            "any_region_rate": float(np.mean([r["any_region"] for r in rows]))}


def weak_check_sample(val_recs: list[Record], data_dir: Path, n: int = WEAK_CHECK_PER_CLASS) -> list[str]:
    """Fixed sample of COVID-19 and Normal COVID-QU-Ex Val films (relative paths)."""
    out: list[str] = []
    for label in (COVID, NORMAL):
        keys = sorted(rel_key(r, data_dir) for r in val_recs if r.label == label)
        out.extend(_spread(keys, n))
    return out


def measure_latency(model: Any, spec: InputSpec, image: np.ndarray, lung: np.ndarray,
                    threshold: float, min_fraction: float, repeats: int = 20) -> dict[str, Any]:
    """Wall time of the app path for one image: preprocess + generator + resize + figures."""
    def once() -> None:
        films = spec.films([image])
        p = predict_maps(model, films, spec.boxes(films, [lung]), spec.size, spec.normalization)[0]
        analyze_probability(p, lung, threshold, min_fraction)

    return {**time_call(once, repeats), "image_shape": list(image.shape)}


def evaluate(run: Path, data_dir: Path, split_file: Path, max_images: int | None,
             threshold: float | None = DEFAULT_THRESHOLD, min_fraction: float = DEFAULT_MIN_REGION_FRACTION,
             lung_source: str = "auto", models_dir: Path | None = None) -> dict:
    """COVID-QU-Ex Val (per class) and GeneralBlockchain GGO metrics, latency; writes eval/."""
    import keras

    meta = json.loads((run / "train_meta.json").read_text())
    size = int(meta["input_size"])
    spec = InputSpec.from_meta(meta)
    model = keras.saving.load_model(run / MODEL_FILE, compile=False)
    segmenter = None
    if lung_source in ("auto", "model"):
        try:
            from ..modellayer.lung import LungSegmenter

            segmenter = LungSegmenter(models_root=models_dir)
            lung_source = "model"
        except Exception as exc:  # noqa: BLE001 - ModelError or Keras failure
            if lung_source == "model":
                raise
            log.warning("bundled lung model unavailable (%s); constraining to the dataset lung masks", exc)
            lung_source = "truth"
    split = read_split(split_file)
    val_recs = opacity_records(data_dir, split, "val", max_images)  # COVID-QU-Ex Val
    t0 = time.time()
    tuning = None
    by_t = evaluate_records(model, spec, val_recs, data_dir, lung_source, segmenter,
                            THRESHOLD_GRID if threshold is None else [threshold], min_fraction)
    if threshold is None:  # choose it on validation (cross-fitted figures in the summary)
        tuning = choose_threshold(by_t)
        threshold = tuning["threshold"]
        log.info("threshold %.2f chosen on val (folds %s); cross-fitted COVID Dice %.4f, Normal FP %.3f",
                 threshold, tuning["fold_thresholds"], tuning["cross_fitted_2fold"]["covid_dice_mean"],
                 tuning["cross_fitted_2fold"]["normal_false_positive_rate"])
    rows = by_t[float(threshold)]
    log.info("val: %d images in %.1fs", len(rows), time.time() - t0)
    by_class = {c: _class_summary([r for r in rows if r["label"] == c]) for c in (COVID, NORMAL, OTHER)}
    sample = set(weak_check_sample(val_recs, data_dir))
    weak = [r for r in rows if r["image"] in sample]

    gb = [r for r in read_all(data_dir, ("generalblockchain",), max_images) if r.infection_mask and r.lung_mask]
    gb_rows = evaluate_records(model, spec, gb, data_dir, lung_source, segmenter, [threshold],
                               min_fraction)[float(threshold)] if gb else []
    train_recs = opacity_records(data_dir, split, "train", max_images)
    if gb and train_recs:  # flag GB films that are near-duplicates of a training image (leakage)
        fp_gb = np.stack([fingerprint(read_gray(r.image)) for r in gb])
        fp_tr = np.stack([fingerprint(read_gray(r.image)) for r in train_recs])
        for row, flag in zip(gb_rows, (fp_gb @ fp_tr.T > 0.98).any(axis=1)):
            row["near_duplicate_of_train"] = int(flag)
    gb_unseen = [r for r in gb_rows if not r.get("near_duplicate_of_train")]
    gb_ggo = [r for r in gb_rows if r["truth_px"] > 0]  # films whose radiologist GGO mask is non-empty
    gb_ggo_unseen = [r for r in gb_unseen if r["truth_px"] > 0]

    probe_rec = next((r for r in val_recs if r.label == COVID), val_recs[0])
    probe = read_gray(probe_rec.image)
    probe_lung = _lung_labels_for([probe_rec], spec.films([probe]), lung_source, segmenter)[0]
    import cv2

    big = cv2.resize(probe, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    big_lung = cv2.resize(probe_lung, (1024, 1024), interpolation=cv2.INTER_NEAREST)
    covid = by_class[COVID]
    summary = {
        "run": str(run), "variant": meta["variant"], "threshold": threshold, "threshold_tuning": tuning,
        "min_region_fraction": min_fraction, "input_size": size, "lung_source": lung_source,
        "covid_qu_ex_val_by_class": by_class,
        "targets": {
            "covid_dice_mean": covid.get("dice", {}).get("mean", math.nan) if covid["n"] else math.nan,
            "covid_dice_pooled": covid["pooled"]["dice"] if covid["n"] else math.nan,
            "normal_false_positive_rate": by_class[NORMAL].get("any_region_rate", math.nan),
            "non_covid_any_region_rate": by_class[OTHER].get("any_region_rate", math.nan),
        },
        "weak_check": {"n": len(weak), "images": sorted(sample),
                       "covid_dice_mean": float(np.mean([r["dice"] for r in weak if r["label"] == COVID]))
                       if any(r["label"] == COVID for r in weak) else math.nan,
                       "normal_any_region": int(sum(r["any_region"] for r in weak if r["label"] == NORMAL))},
        "generalblockchain_all": _gb_summary(gb_rows),
        "generalblockchain_not_in_train": _gb_summary(gb_unseen),
        "generalblockchain_with_ggo": _gb_summary(gb_ggo),
        "generalblockchain_with_ggo_not_in_train": _gb_summary(gb_ggo_unseen),
        "latency_cpu": {"256px": measure_latency(model, spec, probe, probe_lung, threshold, min_fraction),
                        "1024px": measure_latency(model, spec, big, big_lung, threshold, min_fraction)},
    }
    write_segmentation_eval(run, summary, rows, gb_rows)
    t = summary["targets"]
    log.info("%s: COVID Dice %.4f (pooled %.4f) | Normal FP rate %.3f | GB GGO-film Dice %.4f | %.1f ms",
             run.name, t["covid_dice_mean"], t["covid_dice_pooled"], t["normal_false_positive_rate"],
             summary["generalblockchain_with_ggo"].get("dice", {}).get("mean", math.nan),
             summary["latency_cpu"]["256px"]["median_ms"])
    return summary


# ---------------------------------------------------------------- export
def _short(summary: dict, meta: dict) -> dict:
    t, g = summary["targets"], summary.get("generalblockchain_with_ggo", summary["generalblockchain_all"])
    return {
        "variant": meta["variant"], "architecture": meta["architecture"], "params": meta["params"],
        "critic_params": meta.get("critic_params", 0), "input_size": meta["input_size"],
        "epochs": meta["epochs_run"], "best_epoch": meta["best_epoch"], "n_train": meta["n_train"],
        "train_wall_time_s": meta["train_wall_time_s"], "steps_per_s": meta["steps_per_s"],
        "covid_dice_mean": round(t["covid_dice_mean"], 4),
        "covid_dice_pooled": round(t["covid_dice_pooled"], 4),
        "normal_false_positive_rate": round(t["normal_false_positive_rate"], 4),
        "non_covid_any_region_rate": round(t["non_covid_any_region_rate"], 4),
        "gb_ggo_films_dice_mean": round(g["dice"]["mean"], 4) if g.get("n") else None,
        "gb_ggo_films_dice_pooled": round(g["pooled"]["dice"], 4) if g.get("n") else None,
        "gb_ggo_films_precision_mean": round(g["precision"]["mean"], 4) if g.get("n") else None,
        "gb_ggo_films_recall_mean": round(g["recall"]["mean"], 4) if g.get("n") else None,
        "latency_ms_median_256px": summary["latency_cpu"]["256px"]["median_ms"],
        "lung_source": summary["lung_source"],
    }


def plot_history(runs: list[Path], out_png: Path) -> None:
    """Generator/critic losses and validation Dice of one or more runs in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run in runs:
        if not (run / "history.csv").is_file():  # e.g. a previous bundle re-evaluated: no curves
            continue
        with open(run / "history.csv") as fh:
            rows = list(csv.DictReader(fh))
        meta = json.loads((run / "train_meta.json").read_text())
        stages = lineage(meta)
        offset = sum(int(m["epochs_run"]) for m in stages[:-1])  # a continuation starts where its parent ended
        ep = [offset + int(r["epoch"]) + 1 for r in rows]
        name = meta["variant"] + (f" (continued, {run.name})" if offset else "")
        axes[0].plot(ep, [float(r["seg_loss"]) for r in rows], label=f"{name} train")
        axes[0].plot(ep, [float(r["val_loss"]) for r in rows], "--", label=f"{name} val")
        if any(float(r["d_loss"]) for r in rows):
            axes[1].plot(ep, [float(r["g_adv"]) for r in rows], label=f"{name} generator adv")
            axes[1].plot(ep, [float(r["d_loss"]) for r in rows], "--", label=f"{name} critic")
        axes[2].plot(ep, [float(r["val_dice_covid"]) for r in rows], label=f"{name} COVID films")
        axes[2].plot(ep, [float(r["val_dice_all"]) for r in rows], ":", label=f"{name} all films")
    axes[0].set(xlabel="epoch", ylabel="Dice + BCE", title="segmentation loss")
    axes[1].set(xlabel="epoch", ylabel="BCE on patch logits", title="adversarial losses")
    axes[2].set(xlabel="epoch", ylabel="hard Dice (model resolution)", title="validation Dice")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def critic_verdict(comparison: dict[str, dict], exported: str | None = None) -> str:
    """One sentence: did the critic help, judged on COVID Dice and the Normal FP rate.

    Only runs on the same schedule are compared: a pix2pix and a no-critic run that continue
    the same parent (or both start fresh). The pair of the exported run is preferred; when a
    variant has several seeds, their means are compared and the seeds' spread is the tolerance.
    """
    groups: dict[str | None, dict[str, list[dict]]] = {}
    for row in comparison.values():
        groups.setdefault(row.get("continued_from"), {}).setdefault(row["variant"], []).append(row)
    paired = {parent: g for parent, g in groups.items() if {"pix2pix", "unet"} <= set(g)}
    if not paired:
        return "not compared (only one variant evaluated)"
    own = comparison[exported].get("continued_from") if exported in comparison else ""
    parent = own if own in paired else (None if None in paired else next(iter(paired)))
    a, b = paired[parent]["pix2pix"], paired[parent]["unet"]

    def mean(rows: list[dict], key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    def spread(rows: list[dict]) -> float:
        d = [r["covid_dice_mean"] for r in rows]
        return max(d) - min(d)

    da, db = mean(a, "covid_dice_mean"), mean(b, "covid_dice_mean")
    fa, fb = mean(a, "normal_false_positive_rate"), mean(b, "normal_false_positive_rate")
    dd, dfp = da - db, fa - fb
    seeds = min(len(a), len(b))
    tol = max(0.005, spread(a), spread(b)) if seeds > 1 else 0.005
    helped = dd > tol and dfp <= 0.01
    hurt = dd < -tol or dfp > 0.02
    word = "helped" if helped else "hurt" if hurt else "made no material difference"
    if seeds > 1:
        basis = (f"mean of {len(a)} and {len(b)} seeds; seed spread of COVID Dice {spread(a):.4f} with, "
                 f"{spread(b):.4f} without")
    else:
        basis = "one seed each"
    schedule = f"both continuing {parent}" if parent else "same data and schedule"
    return (f"the critic {word}: COVID Dice {da:.4f} with vs {db:.4f} without ({dd:+.4f}); "
            f"Normal false-positive rate {fa:.3f} vs {fb:.3f} ({basis}, {schedule})")


def export(run: Path, models_dir: Path, name: str, compare: list[Path], version: str,
           split_file: Path) -> Path:
    """Write ``models/<name>/``: generator weights, card.json (sha256), loss plot, metric CSVs."""
    meta, summary, dest, weights = start_export(run, models_dir, name)
    shutil.copyfile(run / MODEL_FILE, weights)
    copy_segmentation_evals(run, dest)
    plot_history([run, *compare], dest / "loss_curves.png")
    comparison = compare_runs([run, *compare], _short)
    if len({c["lung_source"] for c in comparison.values()}) > 1:
        log.warning("compared runs were evaluated with different lung sources: %s",
                    {k: c["lung_source"] for k, c in comparison.items()})
    split = read_split(split_file)
    card = {
        "name": name, "version": version,
        "task": "ground-glass / consolidation opacity segmentation (COVID-QU-Ex infection convention)",
        "architecture": meta["architecture"], "variant": meta["variant"], "params": meta["params"],
        "input_size": meta["input_size"],
        "input_normalization": meta.get("input_normalization", LEGACY),
        "input_crop": meta.get("input_crop", "none"),
        **({"crop_margin": meta["crop_margin"], "crop_lung_model": meta.get("crop_lung_model")}
           if meta.get("input_crop") == "lung-box" else {}),
        "preprocessing": preprocessing_text(meta.get("input_normalization", LEGACY))
        + ("; cropped to the box around the lung fields of lung_unet (xrayviewer.modellayer.opacity.lung_box, "
           f"margin {meta.get('crop_margin')} of the box on each side) before the resize"
           if meta.get("input_crop") == "lung-box" else ""),
        "output": "sigmoid probability of opacity per pixel, (S, S, 1) float32; resized back to the "
                  "image (or the lung box, pasted into a zero map) with mask_to_full_resolution, restricted to the lung labels of lung_unet, "
                  "thresholded, components smaller than min_region_fraction of the image dropped "
                  "(xrayviewer.modellayer.opacity.analyze_probability)",
        "threshold": summary["threshold"], "threshold_tuning": summary.get("threshold_tuning"),
        "min_region_fraction": summary["min_region_fraction"],
        # The app's film-level rule (xrayviewer.modellayer.opacity.apply_film_rule); evaluate-sources
        # measures the model with it and writes the figures into this card.
        "film_rule": FILM_RULE_CLASSIFIER,
        "labels": {"0": "no opacity", "1": "opacity (ground glass / consolidation)"},
        "figures": {
            "involvement": "opacity pixels in a lung / that lung's pixels x 100 (right, left, total)",
            "extent_score": "per lung 0 no region, 1 <25%, 2 25-50%, 3 50-75%, 4 >=75% (RALE-style "
                            "extent); total 0-8",
            "grade": "none (no region) / mild (<25% total) / moderate (25-50%) / severe (>=50%)",
        },
        "mask_convention": "COVID-QU-Ex 'infection' masks: COVID-19 infected region inside the visible "
                           "lung field; all-zero masks on Normal and Non-COVID films",
        "training_data": {
            "source": "COVID-QU-Ex Infection Segmentation Data (infection masks, all three classes), "
                      "shared/data/covid-qu-ex"
                      + ("; empty-mask negatives: NIH No_findings and Pneumonia, ieee8023 'No Finding' frontal "
                         "films (train part of the patient-disjoint split); Shenzhen films never used"
                         if meta.get("negatives") else ""),
            "train_sources": meta.get("train_sources"),
            "train": "Train folder minus near-duplicates of Val images", "validation": "Val folder",
            "n_train": meta["n_train"], "n_val": meta["n_val"], "train_classes": meta["train_classes"],
            "val_classes": meta["val_classes"], "train_fraction": meta["train_fraction"],
            "split_seed": split.get("seed"),
            "n_excluded_near_duplicates": len(split.get("excluded", [])),
            "augmentation": meta["augmentation"], "loss": meta["loss"], "epochs": total_epochs(meta),
            "best_epoch": meta["best_epoch"], "checkpoint_selection": meta["checkpoint_selection"],
            "batch_size": meta["batch_size"], "sampling": [m.get("sampling", NATURAL_SAMPLING) for m in lineage(meta)],
            "optimizer": f"Adam lr {meta['lr']} {meta['lr_schedule']}"
                         + (f"; critic Adam lr {meta['d_lr']} beta1 0.5" if meta.get("d_lr") else ""),
            "mixed_precision": meta["mixed_precision"], "init_from": meta.get("init_from"),
        },
        "metrics": {
            "covid_qu_ex_val_by_class": summary["covid_qu_ex_val_by_class"],
            "targets": summary["targets"],
            "generalblockchain_all": summary["generalblockchain_all"],
            "generalblockchain_not_in_train": summary["generalblockchain_not_in_train"],
            "generalblockchain_with_ggo": summary["generalblockchain_with_ggo"],
            "generalblockchain_with_ggo_not_in_train": summary["generalblockchain_with_ggo_not_in_train"],
            "lung_source": summary["lung_source"],
            "note": "full-resolution masks through the app's figures; the checkpoint was selected on "
                    "COVID-QU-Ex Val, so Val figures are slightly optimistic (the official Test split "
                    "is not in the bundle). GeneralBlockchain GGO masks follow another annotator and "
                    "scope (DATA.md), so lower Dice there is expected; the seed's GB test Dice was 0.501",
        },
        "weak_check": summary["weak_check"],
        "latency_cpu": summary["latency_cpu"],
        "comparison": comparison,
        "critic_verdict": critic_verdict(comparison, next(iter(comparison))),  # the exported run's row comes first
        **provenance(meta, weights),
    }
    notes = run / "notes.json"  # free-form facts about the run (trials that did not finish, caveats)
    if notes.is_file():
        card["notes"] = json.loads(notes.read_text())
    write_card(dest, card, OpacityCard)
    log.info("exported %s (%s, COVID Dice %.4f) to %s", name, meta["variant"],
             summary["targets"]["covid_dice_mean"], dest)
    return dest
