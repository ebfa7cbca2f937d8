"""The batch engine used by ``xrayviewer analyze`` and the GUI's batch dialog.

Three stages overlap: a prefetching loader (:class:`~xrayviewer.batch.prefetch.Prefetcher`,
``jobs`` threads) reads, hashes and decodes ahead of the models, with a bound on the decoded
bytes waiting; the models analyse one batch (up to ``batch_size`` films and
``max_batch_pixels`` pixels, started with the films that are ready rather than waiting for a
full batch); one writer thread writes the previous batch's outputs meanwhile. The models
load (``Analyzer.preload``) while the first files decode. Each image's outputs are written
atomically, then its row goes to the journal, in input order within a batch;
results.csv / results.jsonl are rebuilt atomically from the journal. Killing the process at
any point and re-running with the same --out loses and duplicates nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import NotARadiographError, XRayViewerError
from ..fsutil import atomic_write_bytes, atomic_write_text, remove_stale_temp_files
from ..imaging import XRayImage, load_image
from ..imaging.detect import sniff_format
from ..inference.control import AnalysisCancelled, CancelToken
from ..inference.result import CSV_COLUMNS, AnalysisResult, unanalysed_record
from ..provenance import DEFAULT_FORMATS, JOURNAL_NAME, OUTPUT_SUFFIXES, is_output_folder, own_output_reason
from .journal import Journal
from .prefetch import Prefetcher

log = logging.getLogger(__name__)


class BatchAnalyzer(Protocol):
    def models_key(self) -> str: ...

    def analyze_batch(self, images: Sequence[XRayImage], *, cancel: CancelToken | None = None
                      ) -> list[AnalysisResult]: ...


@dataclass(frozen=True)
class BatchItem:
    path: Path
    rel: Path  # relative output path (without suffix changes), mirrors the input layout

    @property
    def key(self) -> str:
        return self.rel.as_posix()


@dataclass(frozen=True)
class BatchOptions:
    out_dir: Path
    formats: tuple[str, ...] = DEFAULT_FORMATS
    jobs: int = 2  # decode threads
    batch_size: int = 8
    phi: bool = False  # keep patient-identifying names in outputs (off: de-identified)
    # Memory bounds that do not grow with the films' size: pixels per model batch (a batch
    # closes once it holds this many: two 2,000-pixel films, five 1,024-pixel ones, up to
    # batch_size 256-pixel PNGs) and decoded bytes waiting in the prefetch queue (about four
    # 2,000-pixel films). Larger bounds measured no faster on 2 cores, only bigger.
    max_batch_pixels: int = 4_500_000
    prefetch_bytes: int = 48 * 2**20


@dataclass(frozen=True)
class BatchProgress:
    done: int
    total: int
    skipped: int
    errors: int
    current: str
    elapsed: float

    @property
    def rate(self) -> float:
        n = self.done - self.skipped
        return n / self.elapsed if self.elapsed > 0 and n > 0 else 0.0

    @property
    def eta(self) -> float | None:
        r = self.rate
        return (self.total - self.done) / r if r > 0 else None


@dataclass
class BatchSummary:
    total: int = 0
    ok: int = 0
    refused: int = 0
    errors: int = 0
    skipped: int = 0
    cancelled: bool = False
    seconds: float = 0.0
    csv_path: Path | None = None
    jsonl_path: Path | None = None
    pdf_path: Path | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Discovery:
    """What :func:`discover` found: the inputs, the paths it could not use, and the files
    it left out because xrayviewer wrote them (each with the reason, for the summary)."""

    items: list[BatchItem] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)
    own_outputs: list[tuple[Path, str]] = field(default_factory=list)


def discover(paths: Iterable[str | Path], recursive: bool = False, *, out_dir: str | Path | None = None,
             skip_own_outputs: bool = True) -> Discovery:
    """Expand files and folders into batch items: the one discovery of the GUI, the CLI and
    any other engine.

    Files found in folders are included when their content looks like an image; hidden
    files and folders are not. Files given explicitly are included even when they are not
    images (a bad one becomes an error row).

    Never included, wherever they lie (``skip_own_outputs``, on unless a caller wants to
    *view* files rather than analyse them): the batch's own ``out_dir``, any other folder a
    batch wrote into, and any file xrayviewer wrote (by name or by its embedded marker; see
    ``xrayviewer.provenance`` for why all three signals). Such files, when they are images,
    are listed in ``Discovery.own_outputs`` so that the summary can say how many were
    skipped. A folder the user names is always searched, even if it is itself an output
    folder (``--out .``): then its files are judged one by one.
    """
    found = Discovery()
    seen: set[str] = set()
    seen_own: set[Path] = set()
    out_resolved = _resolved(out_dir) if out_dir is not None else None

    def skip(f: Path, why: str) -> None:
        if _resolved(f) not in seen_own:  # once, even if named and also found in a folder
            seen_own.add(_resolved(f))
            found.own_outputs.append((f, why))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            candidates, pruned = _walk(p, recursive, out_resolved, prune_outputs=skip_own_outputs)
            for folder, why in pruned:
                for f in _images_under(folder):
                    skip(f, why)
            for f in candidates:
                reason = own_output_reason(f) if skip_own_outputs else None
                if reason:
                    skip(f, reason)
                else:
                    _add(found.items, seen, BatchItem(f, f.relative_to(p)))
        elif p.exists():
            reason = own_output_reason(p) if skip_own_outputs and p.is_file() else None
            if reason:
                skip(p, reason)
            else:
                _add(found.items, seen, BatchItem(p, Path(p.name)))
        else:
            found.problems.append((p, "file or folder not found"))
    return found


def _resolved(path: str | Path) -> Path:
    try:
        return Path(path).resolve()
    except OSError:
        return Path(os.path.abspath(path))


def _walk(root: Path, recursive: bool, out_dir: Path | None, *, prune_outputs: bool
          ) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files under ``root``, sorted as before; output folders pruned, with why).

    Symbolic links to folders are not followed (as ``Path.rglob`` did)."""
    files: list[Path] = []
    pruned: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in dirnames:
            sub = here / d
            if d.startswith(".") or not recursive:
                continue
            if prune_outputs and out_dir is not None and _resolved(sub) == out_dir:
                pruned.append((sub, "inside this run's output folder"))
            elif prune_outputs and is_output_folder(sub):
                pruned.append((sub, f"inside an xrayviewer output folder ({sub})"))
            else:
                keep.append(d)
        dirnames[:] = keep
        files.extend(here / f for f in filenames if not f.startswith(".") and _looks_like_image(here / f))
    files.sort(key=lambda q: q.as_posix().lower())
    return files, pruned


def _looks_like_image(f: Path) -> bool:
    try:
        if not f.is_file():
            return False
        with open(f, "rb") as fh:
            return bool(sniff_format(fh.read(512)))
    except OSError:
        return False


def _images_under(folder: Path) -> list[Path]:
    """The image files in a pruned output folder (counted as skipped, never analysed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out.extend(Path(dirpath) / f for f in filenames
                   if not f.startswith(".") and _looks_like_image(Path(dirpath) / f))
    return sorted(out, key=lambda q: q.as_posix().lower())


def _add(items: list[BatchItem], seen: set[str], item: BatchItem) -> None:
    key = item.key
    if key in seen:  # same name from two folders: keep both, disambiguated
        n = 2
        while f"{key}~{n}" in seen:
            n += 1
        item = BatchItem(item.path, item.rel.with_name(f"{item.rel.name}~{n}"))
    seen.add(item.key)
    items.append(item)


def output_paths(out_dir: Path, rel: Path) -> dict[str, Path]:
    base = out_dir / rel
    return {kind: base.with_name(base.name + suffix) for kind, suffix in OUTPUT_SUFFIXES.items()}


def safe_rel(item: BatchItem, image: XRayImage | None, file_sha256: str, phi: bool) -> Path:
    """The item's relative path, or its file-hash name when any part of it carries the patient's identity."""
    from ..reporting.deid import contains_phi, hashed_stem

    if phi or image is None or not contains_phi(item.rel.as_posix(), image):
        return item.rel
    return Path(hashed_stem(file_sha256))


def write_image_outputs(result: AnalysisResult, image: XRayImage, paths: dict[str, Path]) -> list[str]:
    """Overlay, lung label and opacity PNGs at full resolution (atomic). Returns paths written."""
    from ..rendering.overlay import OverlayOptions, compose_overlay, encode_png

    written = []
    overlay = compose_overlay(
        image.display, lung_labels=result.lung_labels, opacity_mask=result.opacity_mask, regions=result.regions,
        heatmap=result.heatmap, options=OverlayOptions(heatmap=result.heatmap is not None, legend=True, alpha=0.35),
    )
    atomic_write_bytes(paths["overlay"], encode_png(overlay, "overlay"))
    written.append(str(paths["overlay"]))
    del overlay  # the full-size RGB picture: gone before the masks are encoded
    if result.lung_labels is not None:
        atomic_write_bytes(paths["lung"], encode_png(np.asarray(result.lung_labels, np.uint8), "lung-labels"))
        written.append(str(paths["lung"]))
    if result.opacity_mask is not None:
        mask = np.asarray(result.opacity_mask)
        mask8 = np.multiply(mask, np.uint8(255), dtype=np.uint8) if mask.dtype == bool else \
            (mask > 0).astype(np.uint8) * np.uint8(255)
        atomic_write_bytes(paths["opacity"], encode_png(mask8, "opacity-mask"))
        written.append(str(paths["opacity"]))
    return written


@dataclass
class _Loaded:
    item: BatchItem
    sha256: str = ""  # of the file's bytes (file_sha256)
    image: XRayImage | None = None
    error: str | None = None
    refusal: NotARadiographError | None = None  # refused by its loader: no model runs
    skip: bool = False
    seconds: float = 0.0


def load_item(item: BatchItem, is_done: Callable[[str], bool] | None = None, *,
              read_path: Path | None = None) -> _Loaded:
    """Read, hash and decode one input (``read_path`` when the bytes lie elsewhere than the
    path shown, e.g. an absolute path on a cluster worker). ``is_done(sha256)`` true: skip it
    without decoding (resume). Never raises: a failure is recorded in the result."""
    t0 = time.perf_counter()
    out = _Loaded(item)
    try:
        data = (read_path or item.path).read_bytes()
    except OSError as exc:
        out.error = f"cannot read file ({exc.strerror or exc})"
        return out
    out.sha256 = hashlib.sha256(data).hexdigest()
    if is_done is not None and is_done(out.sha256):
        out.skip = True
        return out
    try:
        out.image = load_image(data, name=str(item.path))
        del data
        out.image.pixel_sha256()  # hashed here, in the decode thread (cached on the image)
    except NotARadiographError as exc:
        out.refusal = exc
    except XRayViewerError as exc:
        out.error = exc.message
    except Exception as exc:  # a loader bug must not stop the batch
        log.exception("unexpected error loading %s", item.path)
        out.error = f"internal error: {type(exc).__name__}: {exc}"
    out.seconds = time.perf_counter() - t0
    return out


def analyze_loaded(analyzer: BatchAnalyzer, batch: list[_Loaded], cancel: CancelToken | None = None
                   ) -> list[AnalysisResult | BaseException]:
    """One model call for the batch; if it fails, one call per image, so that one bad image
    cannot sink the rest (its exception takes its place in the list)."""
    images = [b.image for b in batch]
    try:
        return list(analyzer.analyze_batch(images, cancel=cancel))
    except AnalysisCancelled:
        raise
    except Exception as exc:
        log.warning("batch analysis failed (%s); retrying images one by one", exc)
    results: list[AnalysisResult | BaseException] = []
    for b in batch:
        try:
            results.extend(analyzer.analyze_batch([b.image], cancel=cancel))
        except AnalysisCancelled:
            raise
        except Exception as one_exc:
            if not isinstance(one_exc, XRayViewerError):
                log.exception("unexpected error analysing %s", b.item.path)
            results.append(one_exc)
    return results


def row_names(loaded: _Loaded, phi: bool) -> tuple[Path, str]:
    """(output path relative to --out, path shown in rows/reports), both de-identified unless phi."""
    rel = safe_rel(loaded.item, loaded.image, loaded.sha256, phi)
    return rel, (str(loaded.item.path) if rel == loaded.item.rel else rel.as_posix())


def unanalysed_row(loaded: _Loaded, options: BatchOptions) -> dict[str, Any]:
    """The row of a file that failed (``loaded.error``) or that its loader refused."""
    _, shown = row_names(loaded, options.phi)
    if loaded.error is None and loaded.refusal is not None:
        return unanalysed_record(shown, "refused", loaded.refusal.reason, seconds=loaded.seconds,
                                 file_sha256=loaded.sha256, gate_code=loaded.refusal.code)
    return unanalysed_record(shown, "error", loaded.error or "unknown error", seconds=loaded.seconds,
                             file_sha256=loaded.sha256)


def result_row(loaded: _Loaded, res: AnalysisResult | BaseException, options: BatchOptions) -> dict[str, Any]:
    """Write the image's outputs (atomically) and return its row; an analysis that raised, or
    outputs that cannot be written, give an error row."""
    if isinstance(res, BaseException):
        loaded.error = res.message if isinstance(res, XRayViewerError) else f"internal error: {res}"
        return unanalysed_row(loaded, options)
    rel, shown_path = row_names(loaded, options.phi)
    paths = output_paths(options.out_dir, rel)
    written: list[str] = []
    extra_warnings: list[str] = []
    try:
        if "png" in options.formats and loaded.image is not None:
            written = write_image_outputs(res, loaded.image, paths)
        if "pdf" in options.formats and loaded.image is not None:
            from ..reporting.pdf import ReportItem, write_pdf_report

            write_pdf_report([ReportItem(res, loaded.image, shown_path)], paths["pdf"], phi=options.phi)
            written.append(str(paths["pdf"]))
        if "dicom" in options.formats and loaded.image is not None and loaded.image.is_dicom:
            from ..reporting.dicom_out import DicomOutputError, write_secondary_capture, write_segmentation

            try:
                write_secondary_capture(res, loaded.image, paths["sc"], phi=options.phi)
                written.append(str(paths["sc"]))
                if res.lung_labels is not None:
                    write_segmentation(res, loaded.image, paths["seg"], phi=options.phi)
                    written.append(str(paths["seg"]))
            except DicomOutputError as exc:
                extra_warnings.append(f"DICOM outputs skipped: {exc.message}")
    except OSError as exc:
        loaded.error = f"cannot write outputs to {paths['overlay'].parent} ({exc.strerror or exc})"
        return unanalysed_row(loaded, options)
    record = res.to_json(path=shown_path)
    record["seconds"] = round(res.total_seconds + loaded.seconds, 4)
    record["outputs"] = [str(Path(w).relative_to(options.out_dir)) for w in written]
    if "dicom" in options.formats and loaded.image is not None:
        from ..reporting.dicom_out import burned_in_warning

        bw = burned_in_warning(loaded.image)
        if bw:
            extra_warnings.append(bw)
    if extra_warnings:
        record["warnings"] = "; ".join([w for w in [record.get("warnings")] if w] + extra_warnings)
    return record


def _pixels(loaded: _Loaded) -> int:
    return int(loaded.image.values.size) if loaded.image is not None else 0


def _decoded_bytes(loaded: _Loaded) -> int:
    """What a decoded film holds in memory while it waits (its values and display image)."""
    img = loaded.image
    return 0 if img is None else int(img.values.nbytes) + int(np.asarray(img.display).nbytes)


class BatchRunner:
    def __init__(
        self,
        analyzer: BatchAnalyzer,
        options: BatchOptions,
        *,
        progress: Callable[[BatchProgress], None] | None = None,
        on_row: Callable[[dict[str, Any]], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        self.analyzer = analyzer
        self.options = options
        self.progress = progress
        self.on_row = on_row
        self.cancel = cancel or CancelToken()
        self.journal = Journal(options.out_dir / JOURNAL_NAME)

    def _load(self, item: BatchItem, models: str) -> _Loaded:
        return load_item(item, lambda sha: self.journal.is_done(item.key, sha, models))

    def run(self, items: Sequence[BatchItem]) -> BatchSummary:
        opts = self.options
        opts.out_dir.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temp_files(opts.out_dir)
        if stale:
            log.info("removed %d temp file(s) an interrupted run left in %s", stale, opts.out_dir)
        models = self.analyzer.models_key()
        preload = getattr(self.analyzer, "preload", None)
        if callable(preload):
            preload()  # TensorFlow and the models load while the first files decode
        summary = BatchSummary(total=len(items))
        t_start = time.perf_counter()
        done = 0
        window = max(2, opts.jobs * 2 + opts.batch_size)
        writing: list[tuple[_Loaded, Future[dict[str, Any]]]] = []  # the previous batch's outputs

        def report(current: str) -> None:
            if self.progress:
                self.progress(BatchProgress(done, len(items), summary.skipped, summary.errors, current,
                                            time.perf_counter() - t_start))

        def commit_written() -> None:
            """Journal the previous batch once its outputs are written, in input order."""
            nonlocal done
            while writing:
                b, fut = writing.pop(0)
                self._commit(b.item.key, b.sha256, fut.result(), models, summary)
                done += 1
                if not writing:
                    report(str(b.item.path))

        loads: Prefetcher[BatchItem, _Loaded] = Prefetcher(
            items, lambda it: self._load(it, models), workers=opts.jobs, window=window,
            budget=opts.prefetch_bytes, cost=_decoded_bytes, thread_name_prefix="xrayviewer-decode")
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xrayviewer-write")
        try:
            batch: list[_Loaded] = []
            pixels = 0
            while loads.pending() or batch:
                self.cancel.check()
                # Fill the batch with what is decoded; wait only for its first film.
                while (loads.pending() and len(batch) < opts.batch_size and pixels < opts.max_batch_pixels
                       and (not batch or loads.ready())):
                    try:
                        loaded = loads.take()
                    except StopIteration:
                        break
                    if loaded.skip:
                        summary.skipped += 1
                        done += 1
                        report(str(loaded.item.path))
                    elif loaded.error is not None or loaded.refusal is not None:
                        self._commit(loaded.item.key, loaded.sha256, unanalysed_row(loaded, opts), models, summary)
                        done += 1
                        report(str(loaded.item.path))
                    else:
                        batch.append(loaded)
                        pixels += _pixels(loaded)
                if batch:
                    results = analyze_loaded(self.analyzer, batch, self.cancel)
                    commit_written()
                    writing.extend((b, writer.submit(result_row, b, res, opts)) for b, res in zip(batch, results))
                    batch, pixels = [], 0
            commit_written()
        except AnalysisCancelled:
            summary.cancelled = True
            commit_written()  # outputs already being written still count
        finally:
            loads.close()
            writer.shutdown(wait=True)
        summary.seconds = time.perf_counter() - t_start
        self._write_summaries(items, summary)
        return summary

    def _commit(self, key: str, sha256: str, record: dict[str, Any], models: str, summary: BatchSummary) -> None:
        """Journal one finished input (the single writer), count it, tell the caller."""
        self.journal.append(key, sha256, models, record)
        status = record.get("status")
        if status == "ok":
            summary.ok += 1
        elif status == "refused":
            summary.refused += 1
        else:
            summary.errors += 1
        if self.on_row:
            self.on_row(record)

    def _write_summaries(self, items: Sequence[BatchItem], summary: BatchSummary) -> None:
        rows = [self.journal.entries[i.key]["record"] for i in items if i.key in self.journal.entries]
        summary.rows = rows
        # Counts cover every row of this input set, including rows resumed from an earlier run.
        summary.ok = sum(r.get("status") == "ok" for r in rows)
        summary.refused = sum(r.get("status") == "refused" for r in rows)
        summary.errors = sum(r.get("status") == "error" for r in rows)
        out = self.options.out_dir
        if "csv" in self.options.formats:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
            summary.csv_path = atomic_write_text(out / "results.csv", buf.getvalue())
        if "json" in self.options.formats:
            text = "".join(json.dumps(r, default=str) + "\n" for r in rows)
            summary.jsonl_path = atomic_write_text(out / "results.jsonl", text)
        if "pdf" in self.options.formats and rows:
            from ..reporting.pdf import write_summary_pdf

            summary.pdf_path = write_summary_pdf(rows, out / "summary.pdf")
