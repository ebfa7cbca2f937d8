"""Command-line interface: ``xrayviewer <command>``.

Each file is handled on its own: one bad file is reported and the rest go on, and the exit
status says whether any failed (0 all ok, 1 some failed, 2 usage error).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import RESEARCH_NOTICE, __version__
from .errors import XRayViewerError
from .provenance import DEFAULT_FORMATS, OUTPUT_FORMATS

log = logging.getLogger("xrayviewer")


COMMANDS = ("info", "analyze", "history", "send", "query", "retrieve", "help")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xrayviewer",
        description="Offline chest X-ray viewer and analyser. " + RESEARCH_NOTICE,
        epilog="Without a command (or with image/folder paths, or `view PATH`), xrayviewer opens the viewer window.",
    )
    parser.add_argument("--version", action="version", version=f"xrayviewer {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output, TensorFlow's start-up lines included (-vv for debug)")
    parser.add_argument("--self-test", action="store_true",
                        help="check the installation (models, codecs, one analysis), print one line, exit 0/1")
    # -v also after the command (`xrayviewer analyze DIR -v`); SUPPRESS keeps a -v given before it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                         help="more log output, TensorFlow's start-up lines included (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", parents=[verbose],
                          help="show what was loaded from image files (format, size, window, spacing)")
    info.add_argument("files", nargs="+", type=Path, metavar="FILE", help="DICOM, PNG, JPEG, TIFF or BMP files")
    info.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    info.add_argument("--phi", action="store_true", help="include patient-identifying fields (off by default)")
    info.set_defaults(func=cmd_info)
    an = sub.add_parser(
        "analyze", parents=[verbose],
        help="analyse images and folders with the bundled models (CSV/JSON summary, overlay PNGs)",
        description="Analyse chest X-rays. " + RESEARCH_NOTICE,
    )
    an.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files and/or folders")
    an.add_argument("--out", type=Path, default=Path("xrayviewer-results"),
                    help="output folder (default: ./xrayviewer-results); re-running with the same folder resumes")
    an.add_argument("--format", default=",".join(DEFAULT_FORMATS),
                    help=f"comma-separated outputs: {', '.join(OUTPUT_FORMATS)} (SEG + Secondary Capture, DICOM "
                         f"inputs only) (default: {','.join(DEFAULT_FORMATS)})")
    an.add_argument("--phi", action="store_true",
                    help="keep patient-identifying file names in outputs (default: de-identified)")
    an.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    an.add_argument("--jobs", "-j", type=int, default=2, help="image-decoding threads (default 2)")
    an.add_argument("--batch-size", type=int, default=8, help="images per model call (default 8)")
    an.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                    help="where the models run (default: GPU if TensorFlow sees one)")
    an.add_argument("--no-heatmap", action="store_true", help="skip the classifier heatmap (faster)")
    an.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    an.add_argument("--cluster", metavar="SPEC",
                    help="run on Dask distributed: local[:N] (N worker processes here), tcp://HOST:PORT (a running "
                         "scheduler) or FILE.json (a scheduler file); needs the cluster extra. --batch-size files "
                         "make one task")
    an.set_defaults(func=cmd_analyze)

    hi = sub.add_parser("history", parents=[verbose], help="list or export the local history of analyses")
    hi.add_argument("--search", help="only entries whose path, class, status or severity contains this text")
    hi.add_argument("--limit", type=int, default=50, help="newest N entries (default 50)")
    hi.add_argument("--json", action="store_true", help="one JSON object per line")
    hi.add_argument("--export", type=Path, metavar="FILE.csv", help="export the whole history as CSV")
    hi.set_defaults(func=cmd_history)

    from .cli_pacs import add_commands

    add_commands(sub, [verbose])
    sub.add_parser("help", help="show this help").set_defaults(func=lambda a, out: (parser.print_help(out), 0)[1])
    return parser


def describe_image(path: Path, *, phi: bool = False) -> dict[str, Any]:
    """Load one file and summarise it as a JSON-able dict (no patient data unless ``phi``)."""
    from .imaging import load_image

    img = load_image(path)
    meta = img.metadata.as_dict()
    record: dict[str, Any] = {"path": str(path), "status": "ok", **meta}
    record["window"] = {
        "name": img.default_window.name,
        "center": img.default_window.center,
        "width": img.default_window.width,
        "function": img.default_window.function,
        "kind": img.default_window.kind,
    }
    record["windows"] = [w.describe() for w in img.windows]
    record["inverted"] = img.invert
    record["dtype"] = str(img.values.dtype)
    record["warnings"] = list(img.warnings)
    if phi:
        record["patient"] = img.patient.as_dict()
    return record


def _format_text(rec: dict[str, Any]) -> str:
    if rec["status"] != "ok":
        return f"{rec['path']}: ERROR {rec['error']}"
    parts = [
        rec["format"],
        f"{rec['columns']}x{rec['rows']}",
        f"{rec['bits_stored']}/{rec['bits_allocated']} bits",
        rec["photometric"],
    ]
    if rec.get("modality"):
        parts.append(f"modality {rec['modality']}")
    if rec.get("view_position"):
        parts.append(f"view {rec['view_position']}")
    w = rec["window"]
    parts.append("window VOI LUT" if w["kind"] == "lut" else f"window C={w['center']:g} W={w['width']:g}")
    if rec.get("inverted"):
        parts.append("inverted for display")
    spacing = rec.get("pixel_spacing_mm")
    parts.append(
        f"spacing {spacing[0]:g}x{spacing[1]:g} mm ({rec['spacing_source']})" if spacing else "spacing unknown"
    )
    if rec.get("transfer_syntax_name"):
        parts.append(f"transfer syntax {rec['transfer_syntax_name']}")
    line = f"{rec['path']}: " + ", ".join(parts)
    if rec.get("warnings"):
        line += " [warning: " + "; ".join(rec["warnings"]) + "]"
    if rec.get("patient"):
        pat = {k: v for k, v in rec["patient"].items() if v}
        line += " [patient: " + ", ".join(f"{k}={v}" for k, v in pat.items()) + "]"
    return line


def cmd_info(args: argparse.Namespace, out: TextIO) -> int:
    failed = 0
    for path in args.files:
        try:
            rec = describe_image(path, phi=args.phi)
        except XRayViewerError as exc:
            failed += 1
            rec = {"path": str(path), "status": "error", "error": exc.message, "error_type": type(exc).__name__}
        except Exception as exc:  # a bug, not the file's fault: still report and go on
            failed += 1
            log.exception("unexpected error while reading %s", path)
            rec = {"path": str(path), "status": "error", "error": f"internal error: {exc}", "error_type": "InternalError"}
        out.write((json.dumps(rec, default=str) if args.json else _format_text(rec)) + "\n")
        out.flush()
    return 1 if failed else 0


class _QuietLibraries(logging.Filter):
    """Drop pydicom's per-plugin decode tracebacks and header-quirk warnings, and pynetdicom's
    association log (our messages name the node and what failed).

    Our own error message already names the file and the problem; the library detail is
    kept for ``-vv``. A handler filter (not a level) because pydicom resets its logger's
    level when it is imported.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith(("pydicom", "pynetdicom", "py.warnings"))
                    and record.levelno < logging.CRITICAL)


class _ProgressBar:
    """One-line progress on a terminal (rate, ETA); silent when stderr is not a TTY."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled and stream.isatty()
        self._last = 0.0

    def __call__(self, p: Any) -> None:
        import time

        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and p.done < p.total:
            return
        self._last = now
        width = 30
        filled = int(width * p.done / max(1, p.total))
        eta = p.eta
        eta_s = f"{int(eta // 60)}:{int(eta % 60):02d}" if eta is not None else "--:--"
        name = Path(p.current).name[-30:] if p.current else ""
        self.stream.write(f"\r[{'=' * filled}{' ' * (width - filled)}] {p.done}/{p.total} "
                          f"{p.rate:4.1f} img/s ETA {eta_s} {name:<30}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def cmd_analyze(args: argparse.Namespace, out: TextIO) -> int:
    import signal

    from .batch import BatchOptions, BatchRunner, discover
    from .inference.analyzer import Analyzer, require_models
    from .inference.control import CancelToken

    formats = tuple(f.strip().lower() for f in args.format.split(",") if f.strip())
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if unknown or not formats:
        log.error("unknown --format value(s): %s (use %s)", ", ".join(unknown) or "(none)", ", ".join(OUTPUT_FORMATS))
        return 2
    cluster = None
    if getattr(args, "cluster", None):
        cluster = _cluster_module()
        if cluster is None:
            return 2
        try:
            spec = cluster.parse_cluster_spec(args.cluster)
        except ValueError as exc:
            log.error("%s", exc)
            return 2
    missing = require_models()
    if missing:
        for m in missing:
            log.error("model not usable: %s", m)
        log.error("the bundled models are missing or damaged; reinstall xrayviewer")
        return 3
    found = discover(args.paths, recursive=args.recursive, out_dir=args.out)
    items, problems = found.items, found.problems
    for path, why in problems:
        log.error("%s: %s", path, why)
    named = set(args.paths)
    for path, why in found.own_outputs:
        if path in named:
            log.warning("%s: skipped: %s (xrayviewer never analyses its own outputs)", path, why)
        else:
            log.info("skipped %s: %s", path, why)
    own = _own_outputs_note(len(found.own_outputs))
    if not items:
        log.error("no images found in %s%s", ", ".join(map(str, args.paths)), f" ({own})" if own else "")
        return 1
    cancel = CancelToken()

    def on_sigint(signum: int, frame: Any) -> None:
        if cancel.cancelled:
            raise KeyboardInterrupt
        log.warning("cancelling after the current batch (Ctrl+C again to abort now)")
        cancel.cancel()

    previous = signal.signal(signal.SIGINT, on_sigint)
    bar = _ProgressBar(sys.stderr, not args.quiet)
    try:
        from .inference.device import DeviceError

        analyzer = Analyzer(device=args.device, heatmap=not args.no_heatmap)
        history = _open_history()
        options = BatchOptions(args.out, formats, max(1, args.jobs), max(1, args.batch_size), phi=args.phi)

        def remember(row: dict[str, Any]) -> None:
            if history is not None:
                try:
                    history.record(row, origin="cli")
                except Exception as exc:  # the history must never stop an analysis
                    log.warning("could not record in history: %s", exc)

        try:
            if cluster is not None:
                summary = _run_on_cluster(cluster, spec, args, options, items, progress=bar, cancel=cancel,
                                          on_row=remember)
            else:
                runner = BatchRunner(analyzer, options, progress=bar, cancel=cancel, on_row=remember)
                summary = runner.run(items)
        except DeviceError as exc:
            bar.close()
            log.error("%s", exc.message)
            return 2
        except XRayViewerError as exc:  # the cluster's: unreachable, no workers, inputs unreadable there
            bar.close()
            log.error("%s", exc.message)
            return 2
    finally:
        signal.signal(signal.SIGINT, previous)
    bar.close()
    out.write(
        f"{summary.total} image(s): {summary.ok} analysed, {summary.refused} refused, {summary.errors} failed"
        f"{f', {summary.skipped} already done' if summary.skipped else ''}"
        f"{' (cancelled)' if summary.cancelled else ''} in {summary.seconds:.1f} s"
        f"{f'; {own}' if own else ''}\n"
    )
    for path in (summary.csv_path, summary.jsonl_path, summary.pdf_path):
        if path:
            out.write(f"  {path}\n")
    if summary.cancelled:
        return 130
    return 1 if summary.errors or problems else 0


def _cluster_module() -> Any:
    """``xrayviewer.batch.cluster``, or None (after saying how to install it) without Dask."""
    try:
        from .batch import cluster
    except ImportError as exc:
        log.error("--cluster needs Dask distributed, which is not installed (%s): pip install \"xrayviewer[cluster]\" "
                  "(or pip install -e \".[cluster]\" in a checkout)", exc)
        return None
    return cluster


def _run_on_cluster(cluster: Any, spec: Any, args: argparse.Namespace, options: Any, items: Any, **kw: Any) -> Any:
    """The batch on Dask: start or join the cluster, run, always close what we started."""
    import functools

    from .inference.analyzer import Analyzer

    factory = functools.partial(Analyzer, device=args.device, heatmap=not args.no_heatmap)
    # Dask logs its start and stop at INFO on its own handler: ours to show only with -v/-vv.
    verbose = getattr(args, "verbose", 0)
    logging.getLogger("distributed").setLevel(logging.CRITICAL if verbose == 0 else logging.WARNING if verbose == 1
                                              else logging.INFO)
    client, local = cluster.connect(spec)
    try:
        log.info("running on %s (dashboard %s)", spec.describe(), client.dashboard_link)
        runner = cluster.ClusterRunner(client, factory, options, **kw)
        summary = runner.run(items)
        log.info("%d worker(s) took part", runner.workers)
        return summary
    finally:
        client.close()
        if local is not None:
            local.close()


def _own_outputs_note(n: int) -> str:
    return f"{n} file{'s' if n != 1 else ''} skipped as xrayviewer's own outputs" if n else ""


def _open_history() -> Any:
    from .history import History

    try:
        h = History()
    except Exception as exc:
        log.warning("history unavailable: %s", exc)
        return None
    if h.recovered_from:
        log.warning("the history database was damaged; it was kept as %s and a new one started", h.recovered_from)
    return h


def cmd_history(args: argparse.Namespace, out: TextIO) -> int:
    h = _open_history()
    if h is None:
        return 1
    if args.export:
        path = h.export_csv(args.export)
        out.write(f"{h.count()} analyses exported to {path}\n")
        return 0
    entries = h.entries(search=args.search, limit=args.limit)
    if args.json:
        for e in entries:
            out.write(json.dumps({"id": e.id, "created_at": e.created_at, "origin": e.origin, "path": e.input_path,
                                  "status": e.status, "predicted_class": e.predicted_class,
                                  "prob_covid19": e.prob_covid19, "involvement_total_pct": e.involvement_total_pct,
                                  "severity": e.severity, "reports": list(e.report_paths),
                                  "prob_tuberculosis": e.prob_tuberculosis, "tb_positive": e.tb_positive}) + "\n")
        return 0
    for e in entries:
        if e.status == "ok" and e.prob_covid19 is not None:
            what = f"{e.predicted_class} (COVID-19 {e.prob_covid19 * 100:.0f}%)"
            if e.involvement_total_pct is not None:  # None: no opacity model in that installation
                what += f", involvement {e.involvement_total_pct:.1f}% {e.severity}"
            if e.prob_tuberculosis is not None:
                what += f", TB {e.prob_tuberculosis * 100:.0f}%" + (" (flagged)" if e.tb_positive else "")
        else:
            what = e.reason or e.status
        out.write(f"{e.id:>6}  {e.created_at}  {e.origin:<5}  {e.status:<7}  {e.input_path}  {what}\n")
    if not entries:
        out.write("no analyses recorded yet\n")
    return 0


def quiet_tensorflow(verbosity: int) -> None:
    """Keep TensorFlow's and absl's start-up lines off stderr unless ``-v`` is given.

    Must run before anything imports TensorFlow: the C++ side reads the variable once.
    ``setdefault`` leaves a user's own ``TF_CPP_MIN_LOG_LEVEL`` alone. The lines TensorFlow
    writes before that setting applies are filtered where it is imported
    (``inference.device.import_tensorflow``), which also quiets absl's Python logging. No
    warnings filter is installed: our own warnings and errors still show.
    """
    if verbosity == 0:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def setup_logging(verbosity: int) -> None:
    quiet_tensorflow(verbosity)
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if verbosity < 2:
        handler.addFilter(_QuietLibraries())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         self_test_steps: Sequence[tuple[str, Callable[[], str | None]]] = ()) -> int:
    """Run the command line; ``self_test_steps`` are extra ``--self-test`` checks (the viewer's)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.self_test:
        from .selftest import run_self_test

        return run_self_test(out or sys.stdout, extra_steps=self_test_steps)
    if args.command is None:
        parser.print_help(out or sys.stdout)
        return 0
    return int(args.func(args, out or sys.stdout))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
