"""What the viewer says about a film, as data: the one-line summary, the badge of a
thumbnail, the four corner annotations, the on-canvas legend, region labels, linked views
and thumbnails. No Tk here (``tests/test_architecture.py``), so all of it is tested
without a display; the Tk view only draws what these functions return.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..inference.result import AnalysisResult, record_flag
from ..rendering import ViewState
from ..rendering.overlay import BOX_COLOR, OverlayOptions

log = logging.getLogger(__name__)

BADGES = ("ok", "finding", "refused", "error")  # a thumbnail's badge once the film is analysed
AI_TAG = "AI: research use"
HEATMAP_SCALE = ("low", "high")  # Grad-CAM is relative to the film's own maximum: no units
# What the heatmap layer shows: the classifier's Grad-CAM of its top class, or the TB head's map.
HEATMAP_SOURCES = ("classifier", "tuberculosis")
THUMB_SIZE = 112


# ---------------------------------------------------------------------- summary and badges
def summary_line(result: AnalysisResult) -> tuple[str, str]:
    """(one plain-language sentence, kind) for the results panel; kind is a badge name."""
    if not result.gate.accepted:
        return f"Not scored: {result.gate.reason}", "refused"
    probs = result.probabilities or {}
    top = result.predicted_class or (max(probs, key=probs.get) if probs else "?")
    score = f"highest score {top} {probs.get(top, 0.0) * 100:.0f} %" if probs else "no scores"
    inv = result.involvement_pct
    if inv is None:
        opacity = "Opacity not assessed"
    elif not result.regions:
        opacity = "No opacity found"
    else:
        n = len(result.regions)
        opacity = (f"Opacity in {n} region{'s' if n > 1 else ''}, {inv.get('total', 0.0):.0f} % of the lungs"
                   f" ({result.severity or 'unknown'})")
    kind = ("finding" if _is_finding(top, result.covid_positive, result.regions, result.severity,
                                     result.tb_positive) else "ok")
    tb = ""
    if result.tb_positive and result.prob_tuberculosis is not None:
        tb = f"; tuberculosis score {result.prob_tuberculosis * 100:.0f} % (above its operating point)"
    return f"{opacity}; {score}{tb}", kind


def _is_finding(top: str | None, covid_positive: Any, regions: Any, severity: str | None,
                tb_positive: Any = None) -> bool:
    return bool((top and top != "Normal") or covid_positive or regions or (severity not in (None, "", "none"))
                or record_flag(tb_positive))


def badge_kind(record: dict[str, Any]) -> str:
    """The thumbnail badge of a results row (history, batch or this session's analysis)."""
    status = str(record.get("status") or "")
    if status in ("refused", "error"):
        return status
    if status != "ok":
        return "error"
    regions = record.get("opacity_regions") or 0
    return "finding" if _is_finding(record.get("predicted_class") or None, record.get("covid_positive"),
                                    regions, record.get("severity") or None, record.get("tb_positive")) else "ok"


def record_summary(record: dict[str, Any]) -> str:
    """One line about a recorded (history) analysis, for the compare view's caption."""
    if record.get("status") != "ok":
        return f"{record.get('status', '?')}: {record.get('reason') or ''}".strip()
    probs = {"Normal": record.get("prob_normal"), "COVID-19": record.get("prob_covid19"),
             "Other pneumonia": record.get("prob_other_pneumonia")}
    top = record.get("predicted_class") or "?"
    p = probs.get(top)
    text = f"highest score {top}" + (f" {float(p) * 100:.0f} %" if p is not None else "")
    total = record.get("involvement_total_pct")
    if total is not None:
        text = (f"opacity {float(total):.0f} % of the lungs ({record.get('severity') or '?'}); " if total
                else "no opacity; ") + text
    tb = record.get("prob_tuberculosis")
    if tb is not None and tb != "":
        text += f"; TB {float(tb) * 100:.0f} %" + (" (flagged)" if record_flag(record.get("tb_positive")) else "")
    return text


# ---------------------------------------------------------------------- corners
@dataclass(frozen=True)
class Corners:
    top_left: tuple[str, ...]
    top_right: tuple[str, ...]
    bottom_left: tuple[str, ...]
    bottom_right: tuple[str, ...]

    def as_dict(self) -> dict[str, tuple[str, ...]]:
        return {"nw": self.top_left, "ne": self.top_right, "sw": self.bottom_left, "se": self.bottom_right}


def corner_texts(image: Any, *, window: Any, state: ViewState | None, user_invert: bool = False,
                 identifying: bool = False, result: AnalysisResult | None = None,
                 caption: str | None = None) -> Corners:
    """The four corners reading viewers show. Patient and study lines only when the user
    asked for identifying data (Settings); otherwise the top left holds only what the film
    is (modality, view, body part)."""
    md = image.metadata
    tl: list[str] = []
    if identifying:
        pat = image.patient
        if pat.name or pat.patient_id:
            tl.append(" ".join(v for v in (pat.name, f"ID {pat.patient_id}" if pat.patient_id else None) if v))
        born = " ".join(v for v in (pat.birth_date and f"born {pat.birth_date}", pat.sex, pat.age) if v)
        if born:
            tl.append(born)
        study = " ".join(v for v in (pat.study_date and f"study {pat.study_date}",
                                     pat.accession_number and f"acc. {pat.accession_number}") if v)
        if study:
            tl.append(study)
        if pat.institution:
            tl.append(pat.institution)
    what = " ".join(v for v in (md.modality or md.format, md.view_position, md.body_part) if v)
    tl.append(what)
    if caption:
        tl.append(caption)
    tr = [AI_TAG]
    if result is not None:
        tr.append(summary_line(result)[0] if not result.gate.accepted else
                  f"{result.predicted_class or '?'} {(result.probabilities or {}).get(result.predicted_class or '', 0) * 100:.0f} %")
        if result.gate.accepted and result.tb_positive and result.prob_tuberculosis is not None:
            tr.append(f"Tuberculosis {result.prob_tuberculosis * 100:.0f} % (flagged)")
    bl: list[str] = []
    if window is not None:
        if window.kind == "lut":
            bl.append(f"VOI LUT: {window.name}")
        else:
            bl.append(f"C {window.center:.4g}  W {window.width:.4g}")
    if user_invert:
        bl.append("Inverted")
    br: list[str] = []
    if state is not None:
        br.append(f"Zoom {state.zoom * 100:.0f} %")
        extra = []
        if state.rotation % 4:
            extra.append(f"rot {90 * (state.rotation % 4)}°")
        if state.flip_h:
            extra.append("flip H")
        if state.flip_v:
            extra.append("flip V")
        if extra:
            br.append(", ".join(extra))
    br.append(f"{md.columns} x {md.rows} px")
    if md.pixel_spacing:
        br.append(f"{md.pixel_spacing[1]:.3g} mm/px")
    return Corners(tuple(tl), tuple(tr), tuple(bl), tuple(br))


# ---------------------------------------------------------------------- legend and regions
@dataclass(frozen=True)
class LegendItem:
    label: str
    colour: tuple[int, int, int] | None  # None: the heatmap's colour bar
    scale: tuple[str, str] | None = None


def shown_heatmap(result: AnalysisResult | None, source: str) -> np.ndarray | None:
    """The heatmap the layer draws: the classifier's, or the tuberculosis head's."""
    if result is None:
        return None
    return result.tb_heatmap if source == "tuberculosis" else result.heatmap


def legend_items(options: OverlayOptions, result: AnalysisResult | None,
                 heatmap_source: str = "classifier") -> list[LegendItem]:
    """One item per layer that is switched on *and* drawn for this result (a layer the
    analysis did not produce, or a refused film, has no legend entry)."""
    if result is None or not result.gate.accepted:
        return []
    items = []
    if options.lungs and result.lung_labels is not None:
        items += [LegendItem("Right lung", options.right_color), LegendItem("Left lung", options.left_color)]
    if options.opacity and result.opacity_mask is not None:
        items.append(LegendItem("Opacity", options.opacity_color))
    if options.boxes and result.regions:
        items.append(LegendItem("Opacity region", BOX_COLOR))
    if options.heatmap and shown_heatmap(result, heatmap_source) is not None:
        what = "Tuberculosis" if heatmap_source == "tuberculosis" else (result.predicted_class or "top class")
        items.append(LegendItem(f"Heatmap ({what})", None, HEATMAP_SCALE))
    return items


def region_area_text(area_px: int, spacing: tuple[float, float] | None) -> str:
    if spacing:
        return f"{area_px * spacing[0] * spacing[1] / 100.0:.1f} cm²"
    return f"{area_px} px"


def region_labels(state: ViewState | None, result: AnalysisResult | None,
                  spacing: tuple[float, float] | None) -> list[tuple[float, float, str]]:
    """(x, y, text) on screen for each opacity region: its side and size, at the box's top left."""
    if state is None or result is None or not result.gate.accepted:
        return []
    out = []
    for i, reg in enumerate(result.regions, start=1):
        x0, y0, x1, y1 = reg.bbox
        pts = [state.image_to_screen(x, y) for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))]
        side = {"right": "R", "left": "L"}.get(reg.side, "R+L")
        out.append((min(p[0] for p in pts), min(p[1] for p in pts),
                    f"{i} {side} {region_area_text(reg.area_px, spacing)}"))
    return out


def heat_bar(width: int, height: int) -> np.ndarray:
    """The heatmap's colour bar (RGB uint8), low on the left."""
    from ..rendering.overlay import heat_colormap

    ramp = np.linspace(0.0, 1.0, max(width, 1), dtype=np.float32)[None, :].repeat(max(height, 1), 0)
    return heat_colormap(ramp)


# ---------------------------------------------------------------------- linked views
def linked_state(source: ViewState, target: ViewState) -> ViewState:
    """``target`` zoomed and panned like ``source``: the same magnification relative to each
    film's fitted size, the same point (as a fraction of the film) at the canvas centre, the
    same rotation and flips. Two films of different sizes thus stay aligned."""
    s_fit = replace(source, rotation=source.rotation).fit()
    t = replace(target, rotation=source.rotation, flip_h=source.flip_h, flip_v=source.flip_v)
    t_fit = t.fit()
    rel_zoom = source.zoom / s_fit.zoom if s_fit.zoom else 1.0
    s_rows, s_cols = source.image_shape
    t_rows, t_cols = target.image_shape
    fx, fy = source.center[0] / max(s_cols, 1), source.center[1] / max(s_rows, 1)
    return replace(t, zoom=t_fit.zoom * rel_zoom, center=(fx * t_cols, fy * t_rows))


def linked_window(source_window: Any, source_image: Any, target_image: Any) -> Any:
    """The window for the other film: the same preset when it has it, else the same centre
    and width relative to each film's value range."""
    from ..imaging.types import WindowPreset

    if source_window is None or target_image is None:
        return None
    for w in target_image.windows:
        if w == source_window:
            return w
    if source_window.kind == "lut":
        return target_image.default_window
    s_lo, s_hi = float(np.min(source_image.values)), float(np.max(source_image.values))
    t_lo, t_hi = float(np.min(target_image.values)), float(np.max(target_image.values))
    scale = (t_hi - t_lo) / (s_hi - s_lo) if s_hi > s_lo else 1.0
    return WindowPreset(name="Linked", center=t_lo + (source_window.center - s_lo) * scale,
                        width=max(1.0, source_window.width * scale), function="LINEAR", source="user")


# ---------------------------------------------------------------------- thumbnails
def thumbnail(image: Any, size: int = THUMB_SIZE) -> np.ndarray:
    """A small uint8 picture of the film in its default window (longest side ``size``)."""
    import cv2

    grey = image.render()
    rows, cols = grey.shape[:2]
    scale = size / max(rows, cols)
    return cv2.resize(grey, (max(1, round(cols * scale)), max(1, round(rows * scale))), interpolation=cv2.INTER_AREA)


class ThumbnailCache:
    """Thumbnails on disk, keyed by the file's path, size and modification time (a changed
    file gets a new thumbnail); in memory once read. Safe to call from a worker thread."""

    def __init__(self, folder: Path | None, size: int = THUMB_SIZE) -> None:
        self.folder = folder
        self.size = size
        self.memory: dict[str, np.ndarray] = {}

    def key(self, path: Path) -> str:
        st = path.stat()
        raw = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.size}"
        return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def get(self, path: Path) -> np.ndarray:
        """The thumbnail (computed, and stored, when missing); raises what loading raises."""
        key = self.key(path)
        if key in self.memory:
            return self.memory[key]
        file = self.folder / f"{key}.png" if self.folder is not None else None
        arr = None
        if file is not None and file.is_file():
            try:
                from PIL import Image

                with Image.open(file) as im:
                    arr = np.asarray(im.convert("L"))
            except (OSError, ValueError) as exc:  # a damaged cache file is rebuilt
                log.info("thumbnail cache %s unreadable (%s)", file, exc)
        if arr is None:
            from ..imaging import load_image

            arr = thumbnail(load_image(path), self.size)
            if file is not None:
                try:
                    from ..fsutil import atomic_write_bytes
                    from ..rendering.overlay import encode_png

                    atomic_write_bytes(file, encode_png(arr, "thumbnail"))
                except OSError as exc:
                    log.info("could not cache thumbnail %s: %s", file, exc)
        self.memory[key] = arr
        return arr


def default_cache_dir() -> Path | None:
    """``XRAYVIEWER_CACHE_DIR``/thumbnails, else the per-user cache folder (platformdirs)."""
    import os

    env = os.environ.get("XRAYVIEWER_CACHE_DIR")
    if env:
        return Path(env) / "thumbnails"
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("xrayviewer", appauthor=False)) / "thumbnails"
    except Exception:  # noqa: BLE001 - no cache is fine
        return None
