"""What every model export shares: reading an evaluated run, its lineage, the card's provenance,
and writing the card in the app's card schema (checked by reading it back as the app does).

A run may continue another one (``--init-from <run>/model.keras``): its card must then name
every command and count every second and epoch that produced the weights, not only the last
stage, or "training command and time" would understate what it took to rebuild the model.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..modellayer.cards import CARD_FILE, SCHEMA_VERSION, CardSection
from ..modellayer.modelstore import read_card, sha256_file, verify_weights
from ..modellayer.preprocessing import ROBUST

VAL_CSV, GB_CSV = "metrics_covid_qu_ex_val.csv", "metrics_generalblockchain.csv"
SEGMENTATION_EVAL_FILES = {VAL_CSV: "val_metrics.csv", GB_CSV: "generalblockchain_metrics.csv"}


def read_meta(run: Path) -> dict[str, Any]:
    return json.loads((run / "train_meta.json").read_text())


def read_summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "eval" / "summary.json").read_text())


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_segmentation_eval(run: Path, summary: dict, val_rows: list[dict], gb_rows: list[dict]) -> None:
    """``<run>/eval/``: per-film CSVs (COVID-QU-Ex Val, GeneralBlockchain) and summary.json."""
    ev = run / "eval"
    ev.mkdir(parents=True, exist_ok=True)
    write_csv(ev / VAL_CSV, val_rows)
    write_csv(ev / GB_CSV, gb_rows)
    (ev / "summary.json").write_text(json.dumps(summary, indent=1))


def preprocessing_text(normalization: str) -> str:
    """The card's one-line description of a segmentation model's input."""
    if normalization == ROBUST:
        return ("xrayviewer.modellayer.preprocessing.film_input + FilmInput.model_array (rank-v1): modality values "
                "(MONOCHROME1 inverted), squash-resized (area) to input_size x input_size, mapped through "
                "the film's rank map (256 quantiles of the central 80% of the film at 256 px, mid-rank "
                "ties), shape (S, S, 1) in [0, 1]")
    return ("xrayviewer.modellayer.preprocessing.prepare_for_model (display-v1): grey uint8 / 255, "
            "squash-resize (area) to input_size x input_size, shape (S, S, 1)")


def parent_run(meta: dict[str, Any]) -> Path | None:
    """The run this one continued, when it was initialised from another run's checkpoint
    (a bundled model such as ``models/lung_unet`` is a warm start, not a parent)."""
    init = meta.get("init_from")
    if not init:
        return None
    folder = Path(init).parent
    return folder if (folder / "train_meta.json").is_file() else None


def lineage(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Metas of every stage that produced a run's weights, first stage first."""
    chain = [meta]
    seen: set[Path] = set()
    while (parent := parent_run(chain[0])) is not None and parent.resolve() not in seen:
        seen.add(parent.resolve())
        chain.insert(0, read_meta(parent))
    return chain


def total_epochs(meta: dict[str, Any]) -> int:
    return int(sum(m.get("epochs_run", m.get("epochs", 0)) for m in lineage(meta)))


def provenance(meta: dict[str, Any], weights: Path) -> dict[str, Any]:
    """Card fields on how the weights were made: command(s), time, machine, libraries, hash."""
    chain = lineage(meta)
    out: dict[str, Any] = {
        "training_command": " && ".join(m["command"] for m in chain),
        "wall_time_s": round(sum(float(m["total_wall_time_s"]) for m in chain), 1),
        "train_wall_time_s": round(sum(float(m["train_wall_time_s"]) for m in chain), 1),
        "hardware": meta["hardware"], "library_versions": meta["library_versions"],
        "weights_file": weights.name, "sha256": sha256_file(weights),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if len(chain) > 1:
        out["training_stages"] = [
            {"command": m["command"], "epochs_run": m.get("epochs_run", m.get("epochs")),
             "train_wall_time_s": m["train_wall_time_s"], "total_wall_time_s": m["total_wall_time_s"],
             "hardware": m["hardware"]["summary"]} for m in chain]
    return out


def start_export(run: Path, models_dir: Path, name: str) -> tuple[dict, dict, Path, Path]:
    """(meta, eval summary, destination folder, weights path) of an evaluated run."""
    dest = models_dir / name
    dest.mkdir(parents=True, exist_ok=True)
    return read_meta(run), read_summary(run), dest, dest / f"{name}.keras"


def save_inference_model(checkpoint: Path, weights: Path) -> None:
    """Re-save without the optimizer state (checkpoints carry Adam moments: 3x the size)."""
    import keras

    keras.saving.load_model(checkpoint, compile=False).save(weights)


def copy_segmentation_evals(run: Path, dest: Path) -> None:
    for src, dst in SEGMENTATION_EVAL_FILES.items():
        if (run / "eval" / src).is_file():
            shutil.copyfile(run / "eval" / src, dest / dst)


def compare_runs(runs: list[Path], short: Callable[[dict, dict], dict]) -> dict[str, dict]:
    """One comparison row per evaluated run, keyed by its variant (by its folder name where
    two runs share a variant, e.g. a run and its continuation)."""
    metas = [read_meta(r) for r in runs]
    variants = [m["variant"] for m in metas]
    rows = {}
    for run, meta in zip(runs, metas):
        key = meta["variant"] if variants.count(meta["variant"]) == 1 else run.name
        row = short(read_summary(run), meta)
        parent = parent_run(meta)
        row["continued_from"] = parent.name if parent is not None else None
        row["epochs_total"] = total_epochs(meta)
        rows[key] = row
    return rows


def card_for_update(dest: Path) -> dict[str, Any]:
    """A bundled model's card as a dict to amend without re-exporting (weights untouched: a
    re-export would re-save them under a new sha256). Refuses when the weights no longer
    match the card; ``schema_version`` is left to :func:`write_card`."""
    card = json.loads((dest / CARD_FILE).read_text())
    weights = dest / card["weights_file"]
    if sha256_file(weights) != card.get("sha256"):
        raise SystemExit(f"{weights}: sha256 differs from its card; export the model instead")
    card.pop("schema_version", None)
    return card


def write_card(dest: Path, card: dict[str, Any], section: type[CardSection]) -> Path:
    """``<dest>/card.json`` with the current ``schema_version``, then read back through the
    app's card checks with the model's ``section`` (``modellayer.cards``), so an export never
    leaves a card the app would refuse (raises :class:`~xrayviewer.errors.CardError`)."""
    path = dest / CARD_FILE
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, **card}, indent=1, default=float))
    read_card(dest.name, dest.parent, section)
    return path


def run_from_bundle(model_dir: Path, out: Path) -> Path:
    """Turn a bundled model back into a run folder that ``--init-from`` can continue.

    Why: a continuation's card sums every stage's epochs and time (``lineage``), but the
    bundled model's own run folders live on the machine that trained it. The card keeps each
    stage's command, epochs, times and hardware (``training_stages``), so the chain of
    ``train_meta.json`` files is rebuilt from it: ``out/stage1 ... out/stageN``, the weights in
    the last one. Returns the weights path to pass to ``--init-from``. Made for the opacity
    generator: the lung task's loss curves also need each stage's ``steps_per_epoch``, which
    cards do not keep.
    """
    parsed = read_card(model_dir.name, model_dir.parent)
    try:
        weights = verify_weights(parsed)
    except ModelError as exc:
        raise SystemExit(f"{exc}; not a bundled model to continue") from exc
    card = parsed.raw
    stages = card.get("training_stages")
    if not stages:  # a one-run card names no epoch count outside its command
        raise SystemExit(f"{model_dir}: its card has no training_stages, so the epochs of its training "
                         "are not recorded; continue its original run folder instead")
    base = {k: card[k] for k in ("variant", "architecture", "params", "input_size", "library_versions")
            if k in card}
    base["input_normalization"] = parsed.input_normalization
    base["rebuilt_from_card"] = f"{parsed.name} v{parsed.version} ({parsed.sha256[:12]})"
    parent: Path | None = None
    for i, stage in enumerate(stages, 1):
        folder = out / f"stage{i}"
        folder.mkdir(parents=True, exist_ok=True)
        meta = dict(base, command=stage["command"], epochs_run=stage["epochs_run"],
                    epochs=stage["epochs_run"], train_wall_time_s=stage["train_wall_time_s"],
                    total_wall_time_s=stage["total_wall_time_s"],
                    hardware={**card["hardware"], "summary": stage["hardware"]},
                    init_from=str(parent / "model.keras") if parent else None)
        (folder / "train_meta.json").write_text(json.dumps(meta, indent=1))
        parent = folder
    assert parent is not None
    shutil.copyfile(weights, parent / "model.keras")
    return parent / "model.keras"
