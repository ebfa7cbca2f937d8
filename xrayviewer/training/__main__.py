"""``python -m xrayviewer.training``: split, train, evaluate and export the bundled models.

Typical full run of the lung model (see README "Lung model")::

    python -m xrayviewer.training split --out runs/split.json
    python -m xrayviewer.training train-lung --split runs/split.json --out runs/unet --variant unet
    python -m xrayviewer.training evaluate-lung --split runs/split.json --run runs/unet
    python -m xrayviewer.training export-lung --split runs/split.json --run runs/unet

and of the opacity generator (README "Opacity model"): ``train-opacity`` (``--variant pix2pix``
and ``--variant unet`` for the with/without-critic comparison), ``evaluate-opacity``,
``export-opacity --run <pix2pix run> --compare <unet run>``; the tuberculosis head (README
"Tuberculosis"): ``train-tb --split runs/split.json --out runs/tb``, ``export-tb --run runs/tb``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from . import classifier_cli
from .cli_args import REPO_ROOT, add_augmentation, add_common, add_export, add_normalization, add_train

log = logging.getLogger("xrayviewer.training")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m xrayviewer.training", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("split", help="write a deterministic, patient-disjoint split file")
    add_common(p)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "split.json")
    p.add_argument("--val-fraction", type=float, default=0.2)

    p = sub.add_parser("train-lung", help="train the lung-field U-Net")
    add_train(p, epochs=12, batch_size=16, lr=2e-3)
    p.add_argument("--variant", choices=("unet", "resunet"), default="unet")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    add_normalization(p)
    p.add_argument("--init-from", type=Path, default=None,
                   help="warm-start from a saved U-Net with the same layout (layers matched by name)")

    p = sub.add_parser("evaluate-lung", help="metrics on COVID-QU-Ex val + GeneralBlockchain, latency")
    add_common(p)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--threshold", type=float, default=0.5)

    p = sub.add_parser("export-lung", help="write models/<name>/ with weights and card.json")
    add_export(p, name="lung_unet")

    p = sub.add_parser("record-lung-comparison",
                       help="add evaluated runs to the bundled lung card's comparison (weights untouched)")
    p.add_argument("--run", type=Path, nargs="+", required=True, help="evaluated runs")
    p.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    p.add_argument("--name", default="lung_unet")
    p.add_argument("--note", default=None, help="what the comparison shows, for the card's notes")

    p = sub.add_parser("evaluate-sources",
                       help="per-source table of the bundled lung and opacity models (the app's path)")
    add_common(p)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--models-dir", type=Path, default=None, help="models folder (default: bundled)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "source_eval.json")
    p.add_argument("--into-cards", action="store_true",
                   help="also write the table into the lung and opacity cards (per_source_evaluation)")

    p = sub.add_parser("compare-normalizations",
                       help="invariance and source gap of candidate model-input normalisations")
    add_common(p)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "normalization_study.json")
    _add_opacity_parsers(sub)
    classifier_cli.add_parsers(sub)
    _add_tb_parsers(sub)
    return ap


def _add_tb_parsers(sub: argparse._SubParsersAction) -> None:
    """train-tb / export-tb (README "Tuberculosis")."""
    p = sub.add_parser("train-tb", help="fit and evaluate the tuberculosis head on the classifier's features "
                                        "(Shenzhen TB vs Shenzhen normal), with the design comparison")
    add_common(p)
    p.add_argument("--split", type=Path, required=True, help="split file from `split`")
    p.add_argument("--out", type=Path, required=True, help="run directory (features are cached there)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="where the classifier, lung model and gate are bundled (default: models/)")
    p.add_argument("--design", choices=("gap", "lung", "multi_gap", "multi_lung"), default=None,
                   help="bundle this design instead of the best by cross-validated AUC on Shenzhen train")

    p = sub.add_parser("export-tb", help="write models/<name>/ (head weights + card.json)")
    p.add_argument("--run", type=Path, required=True, help="run directory of train-tb")
    p.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    p.add_argument("--name", default="tb_head")
    p.add_argument("--version", default="1.0.0")


def _threshold_arg(text: str) -> float | None:
    return None if text == "auto" else float(text)


def _add_opacity_parsers(sub: argparse._SubParsersAction) -> None:
    """train-opacity / evaluate-opacity / export-opacity (README "Opacity model")."""
    p = sub.add_parser("train-opacity", help="train the opacity generator (pix2pix or plain U-Net)")
    add_train(p, epochs=15, batch_size=16, lr=2e-3)
    p.add_argument("--variant", choices=("pix2pix", "unet"), default="pix2pix",
                   help="pix2pix = generator + patch critic; unet = same generator, no critic")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--critic-filters", type=int, default=16)
    p.add_argument("--critic-blocks", type=int, default=2)
    p.add_argument("--d-lr", type=float, default=2e-4, help="critic learning rate")
    p.add_argument("--adv-weight", type=float, default=0.05, help="weight of the adversarial term")
    p.add_argument("--positive-fraction", type=float, default=None,
                   help="draw films with a non-empty opacity mask with this probability (default: their "
                        "natural share, about a third)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="warm-start the generator from a saved U-Net with the same layout "
                        "(e.g. models/lung_unet/lung_unet.keras, or another run's model.keras to "
                        "continue it); layers are matched by name and shape")
    add_normalization(p)
    p.add_argument("--input-crop", choices=("lung-box", "none"), default="lung-box",
                   help="feed the box around the lung fields found by the bundled lung model "
                        "(default) or the whole film")
    p.add_argument("--loss", choices=("focal-tversky-bce", "dice-bce"), default="focal-tversky-bce",
                   help="segmentation loss (default %(default)s)")
    add_augmentation(p)
    p.add_argument("--adv-warmup-epochs", type=float, default=0.0,
                   help="pix2pix: ramp the adversarial weight up from 0 over this many epochs")
    p.add_argument("--no-negatives", dest="negatives", action="store_false",
                   help="train on COVID-QU-Ex only (no NIH / ieee8023 empty-mask films)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="where the lung model used for the crops is bundled (default: models/)")

    p = sub.add_parser("evaluate-opacity", help="COVID-QU-Ex val per class + GeneralBlockchain GGO, latency")
    add_common(p)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--threshold", type=_threshold_arg, default=0.5,
                   help="mask threshold, or 'auto': chosen on validation under a Normal false-positive "
                        "budget, with 2-fold cross-fitted figures (default: %(default)s)")
    p.add_argument("--min-region-fraction", type=float, default=0.001,
                   help="smallest reported region, as a fraction of the image area")
    p.add_argument("--lung", choices=("auto", "model", "truth"), default="auto",
                   help="lung field for the constraint: bundled lung model, dataset masks, or "
                        "the model when bundled (default)")
    p.add_argument("--models-dir", type=Path, default=None, help="where the lung model is bundled")

    p = sub.add_parser("export-opacity", help="write models/<name>/ (generator only) with card.json")
    add_export(p, name="opacity_generator")

    p = sub.add_parser("continue-from-bundle",
                       help="rebuild a bundled opacity generator's run folders from its card, to continue it "
                            "with train-opacity --init-from")
    p.add_argument("--model-dir", type=Path, default=Path("models/opacity_generator"))
    p.add_argument("--out", type=Path, required=True)


def _run_opacity(args: argparse.Namespace, command: str) -> int:
    from . import opacity_task

    if args.cmd == "train-opacity":
        opacity_task.train(args.data_dir, args.split, args.out, variant=args.variant,
                           input_size=args.input_size, base_filters=args.base_filters, depth=args.depth,
                           critic_filters=args.critic_filters, critic_blocks=args.critic_blocks,
                           epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, d_lr=args.d_lr,
                           adv_weight=args.adv_weight, seed=args.seed, max_images=args.max_images,
                           steps_per_epoch=args.steps_per_epoch, train_fraction=args.train_fraction,
                           mixed_precision=args.mixed_precision, command=command,
                           init_from=args.init_from, positive_fraction=args.positive_fraction,
                           normalization=args.normalization, input_crop=args.input_crop, loss=args.loss,
                           adv_warmup_epochs=args.adv_warmup_epochs, negatives=args.negatives,
                           models_dir=args.models_dir, augmentation=args.augmentation)
    elif args.cmd == "evaluate-opacity":
        opacity_task.evaluate(args.run, args.data_dir, args.split, args.max_images, args.threshold,
                              args.min_region_fraction, args.lung, args.models_dir)
    elif args.cmd == "export-opacity":
        opacity_task.export(args.run, args.models_dir, args.name, args.compare, args.version, args.split)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = "python -m xrayviewer.training " + shlex.join(argv)
    if args.cmd == "split":
        from .datasets import read_all
        from .splits import make_split, write_split

        records = read_all(args.data_dir, max_images=args.max_images)
        split = make_split(records, args.data_dir, args.seed, args.val_fraction)
        split["command"] = command
        write_split(split, args.out)
        log.info("wrote %s", args.out)
        return 0
    if args.cmd == "evaluate-sources":
        from .source_eval import run as evaluate_sources

        evaluate_sources(args.data_dir, args.split, args.out, args.models_dir, args.max_images,
                         args.into_cards)
        print(args.out.with_suffix(".md").read_text())
        return 0
    if args.cmd == "compare-normalizations":
        from .normalization_study import run as study

        study(args.data_dir, args.out)
        print((args.out.with_suffix(".md")).read_text())
        return 0
    if args.cmd == "continue-from-bundle":
        from .export_common import run_from_bundle

        print(run_from_bundle(args.model_dir, args.out))
        return 0
    if args.cmd.endswith("-opacity"):
        return _run_opacity(args, command)
    if args.cmd in ("train-tb", "export-tb"):
        from . import tb_task

        if args.cmd == "train-tb":
            tb_task.train(args.data_dir, args.split, args.out, seed=args.seed, max_images=args.max_images,
                          command=command, models_dir=args.models_dir, design=args.design)
        else:
            tb_task.export(args.run, args.models_dir, args.name, args.version)
        return 0
    if args.cmd in classifier_cli.COMMANDS:
        return classifier_cli.run(args, command)
    from . import lung_task

    if args.cmd == "train-lung":
        lung_task.train(args.data_dir, args.split, args.out, variant=args.variant,
                        input_size=args.input_size, base_filters=args.base_filters,
                        depth=args.depth, epochs=args.epochs, batch_size=args.batch_size,
                        lr=args.lr, seed=args.seed, max_images=args.max_images,
                        steps_per_epoch=args.steps_per_epoch, train_fraction=args.train_fraction,
                        mixed_precision=args.mixed_precision, command=command,
                        normalization=args.normalization, init_from=args.init_from)
    elif args.cmd == "evaluate-lung":
        lung_task.evaluate(args.run, args.data_dir, args.split, args.max_images, args.threshold)
    elif args.cmd == "export-lung":
        lung_task.export(args.run, args.models_dir, args.name, args.compare, args.version, args.split)
    elif args.cmd == "record-lung-comparison":
        lung_task.record_comparison(args.models_dir, args.name, args.run, args.note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
