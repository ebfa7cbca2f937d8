"""The viewer's state and logic without Tk: what is open, how it is shown, what was measured
and analysed, and what an export is called.

:class:`ViewerSession` holds the image, its window, the view geometry, the rulers, the
analysis and its overlays, and the render caches; it renders the canvas-sized view, the
info rows and the full-resolution export, names exports, records analyses in the history
and owns the analyzer. The Tk window (:mod:`xrayviewer.gui.app`) only turns events into
calls and shows what this returns, so everything here is tested without a display.
This module never imports tkinter (``tests/test_architecture.py`` checks it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import XRayViewerError
from ..fsutil import atomic_write_bytes
from ..imaging import XRayImage, render_display
from ..imaging.types import WindowPreset
from ..inference.result import AnalysisResult
from ..rendering import ViewState, measure, render_view, wl_from_drag
from ..rendering.overlay import OverlayOptions, blend, compose_overlay, encode_png, hex_to_rgb, view_layer
from ..settings import Settings
from . import readout

log = logging.getLogger(__name__)

Point = tuple[float, float]
LAYERS = ("lungs", "opacity", "boxes", "heatmap")  # the overlay toggles, in OverlayOptions' names
OUTSIDE_GREY = 16  # canvas pixels outside the image


def list_images(folder: Path) -> list[Path]:
    """Files in ``folder`` (not recursive) whose content is an image: the batch engine's rule.

    Our own outputs are listed too: this list is for looking at files (an overlay PNG is
    worth viewing); only a batch leaves them out."""
    from ..batch import discover

    return [item.path for item in discover([folder], skip_own_outputs=False).items]


def error_text(exc: BaseException, what: str) -> str:
    """What the user reads about a failure: our own errors say it themselves; anything else
    is a bug, logged with its traceback."""
    if isinstance(exc, XRayViewerError):
        return exc.message
    log.error("%s failed", what, exc_info=exc)
    return f"internal error ({type(exc).__name__}: {exc})"


class ViewerSession:
    """One viewer's state; every method runs on the Tk thread (or a test's)."""

    def __init__(self, settings: Settings, *, settings_path: Path | None = None, analyzer: Any | None = None) -> None:
        self.settings = settings
        self.settings_path = settings_path
        self.image: XRayImage | None = None
        self.path: Path | None = None
        self.state: ViewState | None = None
        self.window: WindowPreset | None = None
        self.user_invert = False
        self.rulers: list[tuple[Point, Point]] = []
        self.ruler_mode = False
        self.layers = {name: name != "heatmap" for name in LAYERS}
        self.heatmap_source = "classifier"  # readout.HEATMAP_SOURCES: which heatmap the layer draws
        # analysis
        self.analyzer = analyzer
        self.analysis: AnalysisResult | None = None
        self.models_state = "not loaded"  # loading | ready | failed
        self.analysis_error: str | None = None
        self.history: Any = None
        self.history_id: int | None = None
        self.on_history_recovered: Callable[[Path], None] | None = None
        # render caches: the warped values per view state, the overlay layer per (result, options, state)
        self._values_f32: np.ndarray | None = None
        self._value_range = 255.0
        self._warp_key: Any = None
        self._warped: np.ndarray | None = None
        self.inside: np.ndarray | None = None  # canvas pixels that show the image
        self._layer_key: Any = None
        self._layer: np.ndarray | None = None
        self.caption: str | None = None  # a line under the corner text (the compare view's "previous analysis")
        self.badges: dict[str, str] = {}  # resolved path -> thumbnail badge (readout.BADGES)

    # ------------------------------------------------------------------ image
    def open(self, path: Path, image: XRayImage, canvas_size: tuple[int, int]) -> None:
        """Show a newly loaded image: default window, fitted, no rulers, no analysis."""
        self.forget_analysis()
        self.image, self.path = image, path
        self._values_f32 = np.ascontiguousarray(image.values, dtype=np.float32)
        self._value_range = float(self._values_f32.max() - self._values_f32.min())
        self._warp_key = None
        self.rulers = []
        self.user_invert = False
        self.window = self.default_window_for(image)
        self.state = ViewState.fitted(image.shape, canvas_size)
        self.settings.add_recent(path)
        self.save_settings()

    def close(self) -> None:
        self.forget_analysis()
        self.image = self.state = None
        self.caption = None

    def default_window_for(self, image: XRayImage) -> WindowPreset:
        """The image's window according to the user's default-window setting."""
        choice = self.settings.default_window
        if choice == "auto":
            return next((w for w in image.windows if w.name.startswith("Auto")), image.default_window)
        if choice == "full":
            return next((w for w in image.windows if w.name.startswith("Full")), image.default_window)
        return image.default_window

    def info_rows(self) -> list[tuple[str, str]]:
        """The image panel: (text, tag) rows ("bold", "warn" or "")."""
        img = self.image
        if img is None:
            return []
        md = img.metadata
        rows: list[tuple[str, str]] = [
            (f"{self.path.name if self.path else img.source}\n", "bold"),
            (f"Format: {md.format}\n", ""),
            (f"Size: {md.columns} x {md.rows} px, {md.bits_stored}/{md.bits_allocated} bits\n", ""),
            (f"Photometric: {md.photometric}{' (shown inverted)' if img.invert else ''}\n", ""),
        ]
        if md.modality:
            rows.append((f"Modality: {md.modality}" + (f", view {md.view_position}" if md.view_position else "") + "\n", ""))
        if md.body_part:
            rows.append((f"Body part: {md.body_part}\n", ""))
        if md.transfer_syntax_name:
            rows.append((f"Transfer syntax: {md.transfer_syntax_name}\n", ""))
        if md.pixel_spacing:
            rows.append((f"Pixel spacing: {md.pixel_spacing[0]:g} x {md.pixel_spacing[1]:g} mm ({md.spacing_source})\n", ""))
        else:
            rows.append(("Pixel spacing: unknown (rulers in pixels)\n", ""))
        if self.window is not None:
            rows.append((f"Window: {self.window.describe()}\n", ""))
        for w in img.warnings:
            rows.append((f"Warning: {w}\n", "warn"))
        return rows

    def pixel_text(self, x: float, y: float) -> str:
        """The status bar's readout under the cursor: position, modality value, mm if known."""
        if self.image is None or self.state is None:
            return ""
        rc = self.state.pixel_at(x, y)
        if rc is None:
            return ""
        r, c = rc
        v = self.image.values[r, c]
        text = f"x={c} y={r}  value={v:g}" if np.issubdtype(type(v), np.floating) else f"x={c} y={r}  value={int(v)}"
        sp = self.image.metadata.pixel_spacing
        if sp:
            text += f"  ({c * sp[1]:.1f}, {r * sp[0]:.1f}) mm"
        return text

    # ------------------------------------------------------------------ window/level
    def window_labels(self) -> list[str]:
        return [w.describe() for w in self.image.windows] if self.image is not None else []

    def set_window(self, preset: WindowPreset) -> None:
        self.window = preset

    def select_window(self, label: str) -> bool:
        for w in self.image.windows if self.image is not None else ():
            if w.describe() == label:
                self.window = w
                return True
        return False

    def next_window(self) -> bool:
        if self.image is None:
            return False
        presets = list(self.image.windows)
        i = presets.index(self.window) + 1 if self.window in presets else 0
        self.window = presets[i % len(presets)]
        return True

    def window_drag_start(self) -> tuple[float, float] | None:
        """(centre, width) a window/level drag starts from (a VOI LUT starts from the first window)."""
        if self.image is None or self.window is None:
            return None
        w = self.window
        if w.kind == "lut":
            w = next(p for p in self.image.windows if p.kind == "window")
        return w.center, w.width

    def drag_window(self, start: tuple[float, float], dx: float, dy: float) -> None:
        c, w = wl_from_drag(start[0], start[1], dx, dy, self._value_range)
        self.window = WindowPreset(name="Custom", center=c, width=w, function="LINEAR", source="user")

    # ------------------------------------------------------------------ view geometry
    def _change(self, fn: Callable[[ViewState], ViewState]) -> None:
        if self.state is not None:
            self.state = fn(self.state)

    def fit(self) -> None:
        self._change(ViewState.fit)

    def one_to_one(self) -> None:
        self._change(ViewState.one_to_one)

    def zoom(self, factor: float) -> None:
        """Zoom about the canvas centre."""
        self._change(lambda s: s.zoom_at(factor, s.canvas_size[0] / 2, s.canvas_size[1] / 2))

    def zoom_at(self, factor: float, x: float, y: float) -> None:
        self._change(lambda s: s.zoom_at(factor, x, y))

    def pan(self, dx: float, dy: float) -> None:
        self._change(lambda s: s.pan(dx, dy))

    def rotate(self, quarter: int) -> None:
        self._change(lambda s: s.rotate(quarter).fit())

    def flip_h(self) -> None:
        self._change(ViewState.toggle_flip_h)

    def flip_v(self) -> None:
        self._change(ViewState.toggle_flip_v)

    def toggle_invert(self) -> None:
        self.user_invert = not self.user_invert

    def reset_view(self) -> bool:
        """File's default window, no inversion, fitted; False when nothing is open."""
        if self.image is None or self.state is None:
            return False
        self.user_invert = False
        self.window = self.default_window_for(self.image)
        self.state = ViewState.fitted(self.image.shape, self.state.canvas_size)
        return True

    def resize(self, width: int, height: int) -> bool:
        """A new canvas size (a fitted view stays fitted); False when the size did not change."""
        if self.state is None or tuple(self.state.canvas_size) == (width, height):
            return False
        fitted = abs(self.state.zoom - self.state.fit().zoom) < 1e-9
        self.state = self.state.with_canvas((width, height))
        if fitted:
            self.state = self.state.fit()
        return True

    # ------------------------------------------------------------------ rulers
    def start_ruler(self, x: float, y: float) -> None:
        if self.state is not None:
            p = self.state.screen_to_image(x, y)
            self.rulers.append((p, p))

    def drag_ruler(self, x: float, y: float) -> None:
        if self.state is not None and self.rulers:
            self.rulers[-1] = (self.rulers[-1][0], self.state.screen_to_image(x, y))

    def end_ruler(self) -> str | None:
        """The finished ruler's label; None (and no ruler) when it was a click, not a drag."""
        if not self.rulers:
            return None
        p1, p2 = self.rulers[-1]
        if np.hypot(p2[0] - p1[0], p2[1] - p1[1]) * (self.state.zoom if self.state else 1) < 3:
            self.rulers.pop()
            return None
        return self.measure_label(p1, p2)

    def measure_label(self, p1: Point, p2: Point) -> str:
        meta = self.image.metadata if self.image else None
        return measure(p1, p2, meta.pixel_spacing if meta else None, meta.spacing_source if meta else None).label()

    def ruler_marks(self) -> list[tuple[Point, Point, str]]:
        """Each ruler's ends on screen and its label."""
        if self.state is None:
            return []
        return [(self.state.image_to_screen(*p1), self.state.image_to_screen(*p2), self.measure_label(p1, p2))
                for p1, p2 in self.rulers]

    # ------------------------------------------------------------------ rendering
    def overlay_options(self) -> OverlayOptions:
        s = self.settings
        return OverlayOptions(**self.layers, alpha=float(s.overlay_alpha), right_color=hex_to_rgb(s.lung_colors[0]),
                              left_color=hex_to_rgb(s.lung_colors[1]), opacity_color=hex_to_rgb(s.opacity_color))

    def render(self) -> np.ndarray | None:
        """The canvas-sized view for the current state, window and inversion, overlays blended
        in (the cost follows the canvas, not the image: fast enough for the Tk thread)."""
        if self.image is None or self.state is None or self.window is None or self._values_f32 is None:
            return None
        if self.state != self._warp_key:
            self._warped = render_view(self._values_f32, self.state)
            self.inside = render_view(np.ones(self.image.shape, np.uint8), self.state, nearest=True) > 0
            self._warp_key = self.state
        out = render_display(self._warped, self.window, dataset=self.image.dataset, file_invert=self.image.invert,
                             user_invert=self.user_invert)
        out[~self.inside] = OUTSIDE_GREY
        layer = self._view_layer()
        return out if layer is None else blend(out, layer)

    def _view_layer(self) -> np.ndarray | None:
        r = self.analysis
        if r is None or self.state is None:
            return None
        opts = self.overlay_options()
        key = (id(r), opts, self.state, self.heatmap_source)
        if key != self._layer_key:
            self._layer = view_layer(self.state, lung_labels=r.lung_labels, opacity_mask=r.opacity_mask,
                                     regions=r.regions, heatmap=readout.shown_heatmap(r, self.heatmap_source),
                                     options=opts)
            self._layer_key = key
        return self._layer

    def set_heatmap_source(self, source: str) -> None:
        """Show the classifier's heatmap or the tuberculosis head's (readout.HEATMAP_SOURCES)."""
        if source not in readout.HEATMAP_SOURCES:
            raise ValueError(f"unknown heatmap {source!r}")
        self.heatmap_source = source

    def next_heatmap_source(self) -> str:
        """The other heatmap (Shift+G); switches the layer on."""
        i = readout.HEATMAP_SOURCES.index(self.heatmap_source)
        self.set_heatmap_source(readout.HEATMAP_SOURCES[(i + 1) % len(readout.HEATMAP_SOURCES)])
        self.layers["heatmap"] = True
        return self.heatmap_source

    def overlays_changed(self) -> None:
        """Colours in the settings changed: the cached overlay layer is stale."""
        self._layer_key = None

    def annotations(self) -> tuple[dict[str, tuple[str, ...]], list[readout.LegendItem],
                                   list[tuple[float, float, str]]] | None:
        """What the canvas shows over the film: the four corners, the legend of the layers
        drawn, and the opacity regions' labels (with the boxes); None when nothing is open."""
        if self.image is None or self.state is None:
            return None
        corners = readout.corner_texts(self.image, window=self.window, state=self.state, user_invert=self.user_invert,
                                       identifying=bool(self.settings.show_identifying), result=self.analysis,
                                       caption=self.caption)
        opts = self.overlay_options()
        labels = (readout.region_labels(self.state, self.analysis, self.image.metadata.pixel_spacing)
                  if opts.boxes else [])
        return corners.as_dict(), readout.legend_items(opts, self.analysis, self.heatmap_source), labels

    def follow(self, other: ViewerSession) -> bool:
        """Take ``other``'s zoom, pan, rotation, flips, window and inversion (linked compare
        views); False when either has no image."""
        if self.state is None or other.state is None or self.image is None or other.image is None:
            return False
        self.state = readout.linked_state(other.state, self.state)
        self.window = readout.linked_window(other.window, other.image, self.image) or self.window
        self.user_invert = other.user_invert
        return True

    # ------------------------------------------------------------------ analysis
    def get_analyzer(self) -> Any:
        if self.analyzer is None:
            from ..inference.analyzer import Analyzer

            self.analyzer = Analyzer(device=self.settings.device)
        return self.analyzer

    def models_failed(self, exc: BaseException) -> str:
        self.models_state = "failed"
        self.analysis_error = error_text(exc, "model loading")
        return self.analysis_error

    def set_analysis(self, result: AnalysisResult) -> str:
        """Show a finished analysis, record it in the history; returns the status line."""
        self.analysis = result
        self._layer_key = None
        self.remember(result)
        if self.path is not None:
            self.badges[str(Path(self.path).resolve())] = readout.badge_kind(result.to_record())
        if result.gate.accepted:
            sev = f", severity {result.severity}" if result.severity else ""
            return f"Analysed in {result.total_seconds:.2f} s: highest score {result.predicted_class}{sev}"
        return f"Not scored: {result.gate.reason}"

    def forget_analysis(self) -> None:
        self.analysis = None
        self._layer_key = None

    def get_history(self) -> Any:
        if self.history is None:
            from ..history import History

            self.history = History()
            if self.history.recovered_from and self.on_history_recovered is not None:
                self.on_history_recovered(self.history.recovered_from)
        return self.history

    def remember(self, result: AnalysisResult) -> None:
        try:
            record = result.to_record(str(self.path or result.source))
            self.history_id = self.get_history().record(record, origin="gui")
        except Exception as exc:  # recording must never break the viewer
            log.warning("could not record the analysis in the history: %s", exc)
            self.history_id = None

    def record_batch_row(self, row: dict) -> None:
        if row.get("path"):
            self.badges[str(Path(row["path"]).resolve())] = readout.badge_kind(row)
        try:
            self.get_history().record(row, origin="batch")
        except Exception as exc:
            log.warning("could not record in history: %s", exc)

    def badge_for(self, path: Path) -> str | None:
        return self.badges.get(str(Path(path).resolve()))

    def load_badges(self, paths: list[Path]) -> None:
        """Badges of earlier analyses (any origin) of these files, from the history."""
        if not paths:
            return
        wanted = {str(Path(p).resolve()) for p in paths}
        try:
            entries = self.get_history().entries(search=str(Path(paths[0]).resolve().parent), limit=5000)
        except Exception as exc:  # the history must never break browsing
            log.warning("history unavailable for badges: %s", exc)
            return
        for e in reversed(entries):  # oldest first: the latest analysis wins
            key = str(Path(e.input_path).resolve())
            if key in wanted:
                self.badges[key] = readout.badge_kind(e.record)

    def previous_analysis(self) -> Any:
        """The history entry to show beside the open film: this film's latest earlier
        analysis (same file hash or path), else the latest analysis of another film still on
        disk; None when there is none."""
        if self.path is None or self.image is None:
            return None
        me, sha = str(Path(self.path).resolve()), self.image.file_sha256
        try:
            entries = self.get_history().entries(limit=500)
        except Exception as exc:
            log.warning("history unavailable: %s", exc)
            return None

        def mine(e: Any) -> bool:
            return (bool(sha) and e.input_sha256 == sha) or str(Path(e.input_path).resolve()) == me

        same = [e for e in entries if mine(e) and e.id != self.history_id]
        others = [e for e in entries if not mine(e) and Path(e.input_path).is_file()]
        return (same or others or [None])[0]

    def settings_changed(self) -> str:
        """Apply saved settings; returns the status line."""
        self.save_settings()
        a = self.analyzer
        if a is not None and getattr(a, "device_preference", None) not in (None, self.settings.device) \
                and not getattr(a, "loaded", False):
            a.device_preference = self.settings.device
        self.overlays_changed()
        return "Settings saved" + (" (the device applies after a restart)" if self.models_state == "ready" else "")

    def save_settings(self) -> None:
        try:
            self.settings.save(self.settings_path)
        except OSError as exc:
            log.warning("could not save settings: %s", exc)

    # ------------------------------------------------------------------ export
    def export_name(self, suffix: str) -> str:
        """The suggested file name: de-identified the way batch outputs are (the input's name
        unless it contains the file's own patient data, else ``image-<file hash>``)."""
        from ..reporting.deid import safe_stem

        assert self.image is not None
        return f"{safe_stem(self.path or 'image', self.image, self.image.file_sha256)}{suffix}"

    def png_export(self, path: Path) -> Callable[[], Path]:
        """A job writing the full-resolution view (current window and inversion, overlays as
        shown, with the legend) as PNG; it holds what it needs, so it may run on a worker."""
        if self.image is None or self.window is None:
            raise XRayViewerError("nothing to export: open an image first")
        image, window, invert, r = self.image, self.window, self.user_invert, self.analysis
        opts = replace(self.overlay_options(), legend=True)
        heat = readout.shown_heatmap(r, self.heatmap_source)

        def job() -> Path:
            grey = image.render(window, invert=invert)
            if r is None:
                return atomic_write_bytes(path, encode_png(np.dstack([grey] * 3), "view"))
            rgb = compose_overlay(grey, lung_labels=r.lung_labels, opacity_mask=r.opacity_mask, regions=r.regions,
                                  heatmap=heat, options=opts)
            return atomic_write_bytes(path, encode_png(rgb, "overlay"))

        return job

    def pdf_export(self, path: Path) -> Callable[[], Path]:
        """A job writing the PDF report of the analysis and adding it to its history entry."""
        from ..reporting.pdf import ReportItem, write_pdf_report

        if self.image is None or self.analysis is None:
            raise XRayViewerError("analyse the image first: a report needs an analysis")
        item = ReportItem(self.analysis, self.image, str(self.path or self.image.source))
        history, history_id = self.history, self.history_id

        def job() -> Path:
            out = write_pdf_report([item], path, phi=False)
            if history is not None and history_id is not None:
                try:
                    history.add_report(history_id, str(out))
                except Exception as exc:
                    log.warning("could not record the report in the history: %s", exc)
            return out

        return job
