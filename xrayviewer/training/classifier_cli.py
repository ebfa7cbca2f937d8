"""CLI subcommands for the disease classifier and the domain gate.

Kept in their own module so that ``__main__`` only needs two lines: :func:`add_parsers` and
:func:`run`; the flags they share with the other tasks come from :mod:`.cli_args`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_args import REPO_ROOT, add_augmentation, add_common, add_export, add_train

COMMANDS = ("train-classifier", "evaluate-classifier", "export-classifier", "record-classifier-transfer",
            "record-classifier-comparison",
            "train-gate", "export-gate", "evaluate-gate", "fit-gate-distance")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the classifier/gate subcommands."""
    p = sub.add_parser("train-classifier", help="train (and evaluate) one disease classifier")
    add_train(p, epochs=14, batch_size=32, lr=2e-3)
    p.add_argument("--arch", choices=("compact", "mobilenetv2", "efficientnetb0"), default="compact")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--input-mode", choices=("full", "lung_crop"), default="full",
                   help="whole image, or the lung bounding box from the bundled lung model")
    p.add_argument("--width", type=int, default=16, help="compact CNN base width")
    p.add_argument("--exclude-source", choices=("ieee8023", "covid-qu-ex"), default=None,
                   help="leave-one-source-out run: drop this source and its near-duplicates, test on it")
    p.add_argument("--normalization", choices=("display-v1", "rank-v1"), default="display-v1",
                   help="model input (xrayviewer.modellayer.preprocessing); rank-v1 also uses the "
                        "hospital-imitating augmentation (default: %(default)s)")
    add_augmentation(p)
    p.add_argument("--balance", choices=("class", "source-class"), default="class",
                   help="loss weights: per class, or per class with every source an equal share "
                        "(default: %(default)s)")
    p.add_argument("--time-budget-s", type=float, default=None, help="stop after this much training")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="cache of prepared inputs (keep it outside the repository)")

    p = sub.add_parser("evaluate-classifier", help="re-evaluate a classifier run")
    add_common(p)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--cache-dir", type=Path, default=None)

    p = sub.add_parser("export-classifier", help="calibrate and write models/<name>/")
    add_common(p)
    add_export(p, name="xray_classifier")
    p.add_argument("--source-disjoint", type=Path, default=None,
                   help="source-disjoint run of the bundled configuration")
    p.add_argument("--source-disjoint-compare", type=Path, nargs="*", default=[],
                   help="other source-disjoint runs (e.g. the lung-cropped input)")
    p.add_argument("--loso", type=Path, nargs="*", default=[],
                   help="leave-one-source-out runs of the bundled recipe (train-classifier --exclude-source)")
    p.add_argument("--probe-baseline", type=Path, default=None,
                   help="a bundled model folder whose source probe is recorded as 'before'")
    p.add_argument("--dropped", nargs="*", default=[], metavar="ROW=REASON",
                   help="comparison rows left out of the table, with the reason")
    p.add_argument("--cache-dir", type=Path, default=None)

    p = sub.add_parser("record-classifier-transfer",
                       help="write leave-one-source-out runs, the source probe, the calibration comparison and "
                            "candidate runs into a bundled classifier's card (weights untouched)")
    add_common(p)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    p.add_argument("--name", default="xray_classifier")
    p.add_argument("--loso", type=Path, nargs="*", default=[], help="leave-one-source-out runs")
    p.add_argument("--candidates", type=Path, nargs="*", default=[], help="candidate runs not bundled")
    p.add_argument("--cache-dir", type=Path, default=None)

    p = sub.add_parser("record-classifier-comparison",
                       help="add evaluated runs to a bundled classifier's architecture comparison and drop "
                            "rows with a reason (weights untouched)")
    p.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    p.add_argument("--name", default="xray_classifier")
    p.add_argument("--run", type=Path, nargs="*", default=[], help="evaluated runs to add (or replace)")
    p.add_argument("--drop", nargs="*", default=[], metavar="ROW=REASON",
                   help="move a row out of the table, with the reason")

    p = sub.add_parser("train-gate", help="train the frontal-chest-X-ray gate CNN")
    add_train(p, epochs=10, batch_size=64, lr=3e-3, train_fraction=False, mixed_precision=False)
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--n-frontal", type=int, default=2500)
    p.add_argument("--n-synthetic", type=int, default=1800)

    p = sub.add_parser("export-gate", help="write models/<name>/ for the gate, then evaluate it")
    add_common(p)
    add_export(p, name="xray_gate", compare=False)
    p.add_argument("--classifier", default="xray_classifier")

    p = sub.add_parser("evaluate-gate", help="re-measure the bundled gate (all three stages) into its card, "
                                             "e.g. after fit-gate-distance changed stage 3")
    add_common(p)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    p.add_argument("--name", default="xray_gate")
    p.add_argument("--classifier", default="xray_classifier")

    p = sub.add_parser("fit-gate-distance",
                       help="refit the gate's last stage (Mahalanobis distance on the classifier embedding) on "
                            "frontal films of every source; threshold for a per-source pass rate; measure the "
                            "whole gate before/after and on every out-of-domain case")
    add_common(p)
    p.add_argument("--split", type=Path, required=True, help="split file from `split`")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "gate_distance",
                   help="report and cached embeddings (default: %(default)s)")
    p.add_argument("--models-dir", type=Path, default=None, help="models folder (default: bundled)")
    p.add_argument("--classifier", default="xray_classifier")
    p.add_argument("--gate", default="xray_gate")
    p.add_argument("--pass-rate", type=float, default=0.995,
                   help="frontal pass rate every source's val films must reach (default: %(default)s)")
    p.add_argument("--weighting", choices=("pooled", "balanced"), default="pooled",
                   help="pool the train films of all sources, or weight each source equally")
    p.add_argument("--version", default="2.0", help="version of the statistics (the card's mahalanobis.version)")
    p.add_argument("--dry-run", action="store_true", help="report only; leave the bundled statistics alone")


def run(args: argparse.Namespace, command: str) -> int:
    """Dispatch one of :data:`COMMANDS`."""
    from . import classifier_task, gate_task

    if args.cmd == "train-classifier":
        classifier_task.train(args.data_dir, args.split, args.out, arch=args.arch,
                              input_size=args.input_size, input_mode=args.input_mode,
                              epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              seed=args.seed, max_images=args.max_images,
                              steps_per_epoch=args.steps_per_epoch,
                              exclude_source=args.exclude_source, time_budget_s=args.time_budget_s,
                              train_fraction=args.train_fraction, cache_dir=args.cache_dir,
                              mixed_precision=args.mixed_precision, width=args.width, command=command,
                              normalization=args.normalization, balance=args.balance,
                              augmentation=args.augmentation)
    elif args.cmd == "evaluate-classifier":
        classifier_task.evaluate(args.run, args.data_dir, args.split, args.max_images, args.cache_dir)
    elif args.cmd == "export-classifier":
        classifier_task.export(args.run, args.models_dir, args.name, args.compare, args.source_disjoint,
                               args.version, args.data_dir, args.split, args.cache_dir,
                               source_disjoint_compare=args.source_disjoint_compare, loso=args.loso,
                               probe_baseline=args.probe_baseline,
                               dropped=dict(d.split("=", 1) for d in args.dropped))
    elif args.cmd == "record-classifier-comparison":
        drops = dict(d.split("=", 1) for d in args.drop if "=" in d)
        if len(drops) != len(args.drop):
            raise SystemExit("--drop takes ROW=REASON")
        classifier_task.record_comparison(args.models_dir, args.name, args.run, drops)
    elif args.cmd == "record-classifier-transfer":
        classifier_task.record_transfer(args.models_dir, args.name, args.data_dir, args.split, args.cache_dir,
                                        args.loso, args.candidates, args.max_images, command)
    elif args.cmd == "train-gate":
        gate_task.train(args.data_dir, args.split, args.out, input_size=args.input_size,
                        width=args.width, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        seed=args.seed, max_images=args.max_images, n_frontal=args.n_frontal,
                        n_synthetic=args.n_synthetic, steps_per_epoch=args.steps_per_epoch,
                        command=command)
    elif args.cmd == "export-gate":
        gate_task.export(args.run, args.models_dir, args.name, args.version)
        gate_task.evaluate(args.data_dir, args.split, args.models_dir, args.name, args.classifier,
                           args.max_images)
    elif args.cmd == "evaluate-gate":
        gate_task.evaluate(args.data_dir, args.split, args.models_dir, args.name, args.classifier,
                           args.max_images)
    elif args.cmd == "fit-gate-distance":
        from . import gate_distance

        gate_distance.run(args.data_dir, args.split, args.out, args.models_dir, args.classifier, args.gate,
                          args.pass_rate, args.version, args.weighting, command, write=not args.dry_run,
                          max_images=args.max_images)
        print((args.out / "report.md").read_text())
    return 0
