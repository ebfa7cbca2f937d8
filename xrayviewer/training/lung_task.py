"""Train, evaluate and export the lung-field segmentation model.

A *run directory* holds everything one training produced: ``model.keras`` (best epoch by
validation Dice), ``history.csv``, ``train_meta.json`` and, after evaluation,
``eval/summary.json`` plus per-image CSVs. ``export`` turns a run into ``models/<name>/``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..modellayer.common import predict_probabilities
from ..modellayer.lung import LungCard
from ..modellayer.postprocess import clean_binary, lung_labels
from ..modellayer.preprocessing import LEGACY, ROBUST
from .datasets import Record, _spread, fingerprint, read_all, read_gray, read_mask
from .export_common import (
    card_for_update,
    compare_runs,
    copy_segmentation_evals,
    lineage,
    preprocessing_text,
    provenance,
    save_inference_model,
    start_export,
    total_epochs,
    write_card,
    write_segmentation_eval,
)
from .metrics import aggregate, segmentation_metrics
from .runinfo import AUGMENTATION_ROBUST, hardware_info, library_versions, prepare_run, source_counts
from .splits import read_split, rel_key, select

log = logging.getLogger(__name__)

WEAK_CHECK_N = 48
MODEL_FILE = "model.keras"
LUNG_SOURCES = ("covid-qu-ex", "tb-shenzhen")  # both draw the visible lung fields


def lung_records(data_dir: Path, split: dict, which: str, max_images: int | None,
                 sources: tuple[str, ...] = LUNG_SOURCES) -> list[Record]:
    """Films with a lung mask of the visible-lung-field convention.

    Training takes the train part of every source in ``sources``; the checkpoint is chosen
    on COVID-QU-Ex Val alone (see :func:`train`), so the other sources' val parts are used
    for evaluation only.
    """
    recs = [r for r in read_all(data_dir, sources, max_images) if r.lung_mask]
    return select(recs, split, which, data_dir)


AUGMENTATION_LEGACY = ("rotation +-7 deg, shift +-6%, zoom 0.9-1.1, contrast 0.85-1.15, "
                       "brightness +-0.08, gamma 0.8-1.25, Gaussian noise sigma<=0.02; no flip")


# ---------------------------------------------------------------- train
def train(data_dir: Path, split_file: Path, out: Path, *, variant: str, input_size: int,
          base_filters: int, depth: int, epochs: int, batch_size: int, lr: float, seed: int,
          max_images: int | None, steps_per_epoch: int | None, train_fraction: float,
          mixed_precision: bool, command: str, normalization: str = ROBUST,
          init_from: Path | None = None) -> dict:
    """Train one variant; writes ``model.keras``, ``history.csv``, ``train_meta.json``."""
    import keras

    from .architectures import build_unet, warm_start
    from .pipeline import dice_bce_loss, dice_coef, load_arrays, make_dataset

    split, train_recs, val_recs = prepare_run(lung_records, data_dir, split_file, out, seed=seed,
                                              mixed_precision=mixed_precision, max_images=max_images,
                                              train_fraction=train_fraction)
    val_recs = [r for r in val_recs if r.source == "covid-qu-ex"]  # selection set; others: evaluation only
    robust = normalization == ROBUST
    t0 = time.time()
    xtr, ytr = load_arrays(train_recs, input_size, normalization=normalization)
    xva, yva = load_arrays(val_recs, input_size, normalization=normalization)
    log.info("loaded %d train / %d val arrays in %.1fs", len(xtr), len(xva), time.time() - t0)
    steps = steps_per_epoch or max(1, math.ceil(len(xtr) / batch_size))
    model = build_unet(input_size, base_filters, depth, variant)  # type: ignore[arg-type]
    copied = warm_start(model, init_from) if init_from else []
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, epochs * steps), alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=dice_bce_loss,
                  metrics=[dice_coef])
    ckpt = out / MODEL_FILE
    callbacks = [
        keras.callbacks.CSVLogger(str(out / "history.csv")),
        keras.callbacks.ModelCheckpoint(str(ckpt), monitor="val_dice_coef", mode="max",
                                        save_best_only=True),
    ]
    t1 = time.time()
    hist = model.fit(make_dataset(xtr, ytr, batch_size, True, seed, robust=robust), epochs=epochs,
                     steps_per_epoch=steps, validation_data=make_dataset(xva, yva, 16, False),
                     callbacks=callbacks, verbose=2, shuffle=False)  # shuffled in tf.data
    train_s = time.time() - t1
    if not ckpt.is_file():  # NaN metric etc.: keep the last weights rather than nothing
        model.save(ckpt)
    meta = {
        "variant": variant, "architecture": f"{variant} depth {depth} base {base_filters}",
        "input_size": input_size, "base_filters": base_filters, "depth": depth,
        "params": int(model.count_params()), "epochs": epochs, "batch_size": batch_size,
        "steps_per_epoch": steps, "lr": lr, "lr_schedule": "cosine decay to 5%",
        "seed": seed, "max_images": max_images, "train_fraction": train_fraction,
        "mixed_precision": mixed_precision, "loss": "Dice + BCE",
        "input_normalization": normalization,
        "init_from": str(init_from) if init_from else None, "init_layers_copied": len(copied),
        "train_sources": source_counts(train_recs), "val_sources": source_counts(val_recs),
        "augmentation": AUGMENTATION_ROBUST if robust else AUGMENTATION_LEGACY,
        "n_train": len(xtr), "n_val": len(xva), "split_file": str(split_file),
        "split_counts": split.get("counts"), "n_excluded_near_duplicates": len(split.get("excluded", [])),
        "train_wall_time_s": round(train_s, 1), "total_wall_time_s": round(time.time() - t0, 1),
        "steps_per_s": round(epochs * steps / train_s, 3),
        "best_val_soft_dice_model_res": float(max(hist.history.get("val_dice_coef", [math.nan]))),
        "command": command, "hardware": hardware_info(), "library_versions": library_versions(),
    }
    (out / "train_meta.json").write_text(json.dumps(meta, indent=1))
    log.info("trained %s in %.0fs (%.2f steps/s)", variant, train_s, meta["steps_per_s"])
    return meta


# ---------------------------------------------------------------- evaluate
def evaluate_model(model: Any, input_size: int, records: list[Record], data_dir: Path,
                   threshold: float = 0.5, normalization: str = ROBUST) -> list[dict]:
    """Per-image metrics at each image's full resolution after the app's postprocessing."""
    rows: list[dict] = []
    batch = 32
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        imgs = [read_gray(r.image) for r in chunk]
        probs = predict_probabilities(model, imgs, input_size, normalization=normalization)
        for r, p in zip(chunk, probs):
            truth = read_mask(r.lung_mask)
            if truth.shape != p.shape:  # defensive: masks are documented as image-sized
                from ..modellayer.preprocessing import resize

                p = resize(p, truth.shape)
            pred = clean_binary(p, threshold)
            m = segmentation_metrics(pred, truth)
            rows.append({"image": rel_key(r, data_dir), "label": r.label or "",
                         **{k: round(v, 5) for k, v in m.items()}})
    return rows


def weak_check_sample(val_recs: list[Record], data_dir: Path, n: int = WEAK_CHECK_N) -> list[str]:
    """A fixed, class-spread sample of COVID-QU-Ex val images (relative paths)."""
    keys = sorted(rel_key(r, data_dir) for r in val_recs if r.source == "covid-qu-ex")
    return _spread(keys, n)


def measure_latency(model: Any, input_size: int, image: np.ndarray, threshold: float,
                    repeats: int = 30, normalization: str = ROBUST) -> dict[str, float]:
    """Wall time of the app path (preprocess + model + resize back + postprocess), 1 image."""
    from .metrics import time_call

    stats = time_call(lambda: lung_labels(predict_probabilities(
        model, [image], input_size, normalization=normalization)[0], threshold), repeats)
    return {**stats, "image_shape": list(image.shape)}


def evaluate(run: Path, data_dir: Path, split_file: Path, max_images: int | None,
             threshold: float = 0.5) -> dict:
    """Evaluate a run on COVID-QU-Ex val and the GeneralBlockchain masks; write eval/."""
    import keras

    meta = json.loads((run / "train_meta.json").read_text())
    size = int(meta["input_size"])
    norm = meta.get("input_normalization", LEGACY)
    model = keras.saving.load_model(run / MODEL_FILE, compile=False)
    split = read_split(split_file)
    all_val = lung_records(data_dir, split, "val", max_images)
    val_recs = [r for r in all_val if r.source == "covid-qu-ex"]
    t0 = time.time()
    val_rows = evaluate_model(model, size, val_recs, data_dir, threshold, norm)
    sz_rows = evaluate_model(model, size, [r for r in all_val if r.source == "tb-shenzhen"],
                             data_dir, threshold, norm)
    log.info("val: %d images in %.1fs", len(val_rows), time.time() - t0)
    sample = set(weak_check_sample(val_recs, data_dir))
    weak_rows = [r for r in val_rows if r["image"] in sample]

    gb = [r for r in read_all(data_dir, ("generalblockchain",), max_images) if r.lung_mask]
    gb_rows = evaluate_model(model, size, gb, data_dir, threshold, norm) if gb else []
    # Flag GB images that are near-duplicates of a COVID-QU-Ex *training* image (leakage).
    train_recs = lung_records(data_dir, split, "train", max_images)
    if gb and train_recs:
        fp_gb = np.stack([fingerprint(read_gray(r.image)) for r in gb])
        fp_tr = np.stack([fingerprint(read_gray(r.image)) for r in train_recs])
        in_train = (fp_gb @ fp_tr.T > 0.98).any(axis=1)
        for row, flag in zip(gb_rows, in_train):
            row["near_duplicate_of_train"] = int(flag)
    unseen = [r for r in gb_rows if not r.get("near_duplicate_of_train")]

    probe = read_gray(val_recs[0].image)
    latency = measure_latency(model, size, probe, threshold, normalization=norm)
    summary = {
        "run": str(run), "threshold": threshold, "input_size": size,
        "covid_qu_ex_val": aggregate(val_rows),
        "covid_qu_ex_val_by_class": {
            c: aggregate([r for r in val_rows if r["label"] == c])
            for c in sorted({r["label"] for r in val_rows})},
        "weak_check": {"n": len(weak_rows), "images": sorted(sample),
                       "dice_mean": float(np.mean([r["dice"] for r in weak_rows])) if weak_rows else math.nan},
        "tb_shenzhen_val": aggregate(sz_rows),
        "tb_shenzhen_val_by_class": {
            c: aggregate([r for r in sz_rows if r["label"] == c])
            for c in sorted({r["label"] for r in sz_rows})},
        "input_normalization": norm,
        "generalblockchain_all": aggregate(gb_rows),
        "generalblockchain_not_in_train": aggregate(unseen),
        "latency_cpu": latency,
    }
    write_segmentation_eval(run, summary, val_rows, gb_rows)
    v = summary["covid_qu_ex_val"]
    log.info("%s: val Dice %.4f IoU %.4f HD95 %.2f | Shenzhen Dice %.4f | GB Dice %.4f | latency %.1f ms",
             run.name, v["dice"]["mean"], v["iou"]["mean"], v["hd95"]["mean"],
             summary["tb_shenzhen_val"].get("dice", {}).get("mean", math.nan),
             summary["generalblockchain_all"].get("dice", {}).get("mean", math.nan),
             latency["median_ms"])
    return summary


# ---------------------------------------------------------------- export
def _short(summary: dict, meta: dict) -> dict:
    v, g = summary["covid_qu_ex_val"], summary["generalblockchain_all"]
    return {
        "architecture": meta["architecture"], "params": meta["params"],
        "input_size": meta["input_size"], "epochs": meta["epochs"], "n_train": meta["n_train"],
        "train_wall_time_s": meta["train_wall_time_s"],
        "val_dice": round(v["dice"]["mean"], 4), "val_iou": round(v["iou"]["mean"], 4),
        "val_hd95_px": round(v["hd95"]["mean"], 2),
        "gb_dice": round(g["dice"]["mean"], 4) if g.get("n") else None,
        "latency_ms_median": summary["latency_cpu"]["median_ms"],
        "input_normalization": meta.get("input_normalization", LEGACY),
        "tb_shenzhen_val_dice": round(summary["tb_shenzhen_val"]["dice"]["mean"], 4)
        if summary.get("tb_shenzhen_val", {}).get("n") else None,
    }


def plot_history(runs: list[Path], out_png: Path) -> None:
    """Loss and val-Dice curves of one or more runs in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, run in enumerate(runs):
        if not (run / "history.csv").is_file():  # e.g. a previous bundle re-evaluated: no curves
            continue
        with open(run / "history.csv") as fh:
            rows = list(csv.DictReader(fh))
        meta = json.loads((run / "train_meta.json").read_text())
        # x = optimiser steps, so runs with different epoch lengths compare at equal compute;
        # a continuation starts where its parent stopped
        offset = sum(int(m["epochs"]) * int(m["steps_per_epoch"]) for m in lineage(meta)[:-1])
        steps = [offset + (int(r["epoch"]) + 1) * int(meta["steps_per_epoch"]) for r in rows]
        name, colour = f"{meta['variant']} ({run.name})", f"C{i}"
        ax1.plot(steps, [float(r["loss"]) for r in rows], color=colour, label=f"{name} train")
        ax1.plot(steps, [float(r["val_loss"]) for r in rows], "--", color=colour, label=f"{name} val")
        ax2.plot(steps, [float(r["val_dice_coef"]) for r in rows], "o-", color=colour, label=f"{name} val")
    ax1.set(xlabel="training steps (batch 16)", ylabel="Dice + BCE loss", title="loss")
    ax2.set(xlabel="training steps (batch 16)", ylabel="soft Dice (model resolution)", title="validation Dice")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def export(run: Path, models_dir: Path, name: str, compare: list[Path], version: str,
           split_file: Path) -> Path:
    """Write ``models/<name>/``: weights, card.json (sha256 of the written file), PNG, CSV."""
    meta, summary, dest, weights = start_export(run, models_dir, name)
    save_inference_model(run / MODEL_FILE, weights)
    copy_segmentation_evals(run, dest)
    plot_history([run, *compare], dest / "loss_curves.png")
    comparison = compare_runs([run, *compare], _short)
    split = read_split(split_file)
    v = summary["covid_qu_ex_val"]
    card = {
        "name": name, "version": version, "task": "lung-field segmentation",
        "architecture": meta["architecture"], "params": meta["params"],
        "input_size": meta["input_size"],
        "input_normalization": meta.get("input_normalization", LEGACY),
        "preprocessing": preprocessing_text(meta.get("input_normalization", LEGACY)),
        "output": "sigmoid probability of visible (aerated) lung field per pixel, (S, S, 1) "
                  "float32; resized back to the image with mask_to_full_resolution, then "
                  "thresholded, two largest components kept, holes filled, split right/left",
        "threshold": 0.5,
        "labels": {"0": "background", "1": "right lung (image left)", "2": "left lung (image right)"},
        "mask_convention": "COVID-QU-Ex: visible lung fields, excludes heart/mediastinum and "
                           "lung behind the heart or below the diaphragm dome",
        "training_data": {
            "source": ("COVID-QU-Ex Infection Segmentation Data (lung masks), shared/data/covid-qu-ex"
                       + (" + Shenzhen tuberculosis set lung masks, shared/data/tb-shenzhen (train part "
                          "of the patient-disjoint split)" if "tb-shenzhen" in meta.get("train_sources", {}) else "")),
            "train_sources": meta.get("train_sources"),
            "train": "Train folder minus near-duplicates of Val images",
            "validation": "COVID-QU-Ex Val folder (dataset's own split; checkpoint selection)",
            "n_train": meta["n_train"],
            "n_val": meta["n_val"], "train_fraction": meta["train_fraction"],
            "split_seed": split.get("seed"),
            "n_excluded_near_duplicates": len(split.get("excluded", [])),
            "augmentation": meta["augmentation"], "loss": meta["loss"], "epochs": total_epochs(meta),
            "batch_size": meta["batch_size"], "optimizer": f"Adam lr {meta['lr']} {meta['lr_schedule']}",
            "mixed_precision": meta["mixed_precision"],
        },
        "metrics": {
            "covid_qu_ex_val": v, "covid_qu_ex_val_by_class": summary["covid_qu_ex_val_by_class"],
            "tb_shenzhen_val": summary.get("tb_shenzhen_val"),
            "tb_shenzhen_val_by_class": summary.get("tb_shenzhen_val_by_class"),
            "generalblockchain_all": summary["generalblockchain_all"],
            "generalblockchain_not_in_train": summary["generalblockchain_not_in_train"],
            "note": "full-resolution masks after postprocessing; HD95 in pixels of the 256x256 "
                    "COVID-QU-Ex images / GB images (long side <= 512); GB masks include the "
                    "whole anatomical lung, so lower Dice there is expected",
        },
        "weak_check": summary["weak_check"],
        "latency_cpu": summary["latency_cpu"],
        "comparison": comparison,
        **provenance(meta, weights),
    }
    card["training_data"]["split_command"] = split.get("command")
    if meta.get("init_from"):
        card["training_data"]["init_from"] = meta["init_from"]
    notes = run / "notes.json"  # free-form facts about the run (benchmarks, caveats)
    if notes.is_file():
        card["notes"] = json.loads(notes.read_text())
    write_card(dest, card, LungCard)
    log.info("exported %s (val Dice %.4f) to %s", name, v["dice"]["mean"], dest)
    return dest


def record_comparison(models_dir: Path, name: str, runs: list[Path], note: str | None = None) -> Path:
    """Add evaluated runs (e.g. the residual U-Net of the architecture study) to the bundled
    card's comparison without touching the weights: re-exporting would re-save the same
    weights under a new sha256, and a run that is not bundled must still be in the card."""
    dest = models_dir / name
    card = card_for_update(dest)
    rows = compare_runs(runs, _short)
    card["comparison"] = {**card.get("comparison", {}),
                          **{run.name: row for run, row in zip(runs, rows.values())}}
    if note:
        card.setdefault("notes", {})["comparison"] = note
    write_card(dest, card, LungCard)
    log.info("recorded %d run(s) in %s", len(runs), dest)
    return dest

