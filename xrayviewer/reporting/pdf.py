"""PDF reports: one page per image (plain image beside the overlay and the tuberculosis
heatmap, calibrated scores with the operating point, the tuberculosis score, per-lung
involvement, regions, gate verdict, model identities,
input hash, software version, date, research notice), plus a summary page for a batch.

fpdf2 writes real (selectable, searchable) text with an embedded Unicode font (DejaVu Sans,
shipped with matplotlib) and lets us set the PDF metadata.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import RESEARCH_NOTICE, __version__
from ..fsutil import atomic_write_bytes
from ..imaging import XRayImage
from ..inference.result import CLASS_NAMES, AnalysisResult, record_flag
from ..rendering.overlay import OverlayOptions, compose_overlay
from .deid import safe_stem

MAX_EMBED_PX = 1400  # long side of embedded images: sharp at print size, modest file size

EXPLANATIONS = (
    ("Domain check", "Before scoring, the image is checked to be a frontal chest X-ray resembling the training "
     "data. Images that fail are not scored, with the reason given."),
    ("Scores", "Calibrated probabilities (temperature scaling on validation data) for three classes. The black tick "
     "is the operating point: the score above which the model flags that class. Scores from public COVID-19 data "
     "generalise poorly to other hospitals; see the model card."),
    ("Lung fields", "Outlines from the lung segmentation model: blue = patient's right lung (image left), "
     "orange = left lung."),
    ("Opacity", "Red: regions the opacity model marks as ground-glass/consolidation, restricted to the lung fields. "
     "Involvement = opacity area / lung area for each lung. Yellow boxes: connected opacity regions."),
    ("Tuberculosis", "A separate screening score, not a fourth class, learned from one hospital's films (Shenzhen); "
     "it can be high together with COVID-19 or pneumonia. Its heatmap: where in the lungs the score comes from."),
)


@dataclass(frozen=True)
class ReportItem:
    result: AnalysisResult
    image: XRayImage
    path: str  # the input as the user gave it


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"


def _png(arr: np.ndarray) -> io.BytesIO:
    from PIL import Image

    img = Image.fromarray(arr)
    scale = MAX_EMBED_PX / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    buf.seek(0)
    return buf


def _embedded_overlay(display: np.ndarray, r: AnalysisResult, *, heatmap: np.ndarray | None = None,
                      options: OverlayOptions | None = None) -> np.ndarray:
    """The overlay drawn at the size it is embedded at (long side MAX_EMBED_PX), not drawn at
    full resolution and then shrunk: the film and a heatmap shrunk by area, the masks by
    nearest neighbour, the boxes scaled. Default layers: lungs, opacity and boxes."""
    opts = options or OverlayOptions(alpha=0.35, legend=False)
    rows, cols = display.shape[:2]
    scale = MAX_EMBED_PX / max(rows, cols)
    if scale >= 1:
        return compose_overlay(display, lung_labels=r.lung_labels, opacity_mask=r.opacity_mask, regions=r.regions,
                               heatmap=heatmap, options=opts)
    import cv2

    from ..inference.result import Region

    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    sy, sx = size[1] / rows, size[0] / cols

    def nearest(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else cv2.resize(np.asarray(a, np.uint8), size, interpolation=cv2.INTER_NEAREST)

    regions = tuple(Region((int(x0 * sx), int(y0 * sy), max(int(x0 * sx) + 1, round(x1 * sx)),
                            max(int(y0 * sy) + 1, round(y1 * sy))), reg.area_px, reg.side, reg.mean_probability)
                    for reg in r.regions for x0, y0, x1, y1 in [reg.bbox])
    heat = (None if heatmap is None else
            cv2.resize(np.asarray(heatmap, np.float32), size, interpolation=cv2.INTER_AREA))
    return compose_overlay(cv2.resize(display, size, interpolation=cv2.INTER_AREA), lung_labels=nearest(r.lung_labels),
                           opacity_mask=nearest(r.opacity_mask), regions=regions, heatmap=heat, options=opts)


def _pdf_class() -> type:
    from fpdf import FPDF

    class _PDF(FPDF):
        def footer(self) -> None:  # called by fpdf2 at every page end
            self.set_y(-12)
            self.set_font("DejaVu", "", 7)
            self.set_text_color(110, 110, 110)
            self.cell(0, 4, f"xrayviewer {__version__} - {RESEARCH_NOTICE} - page {self.page_no()}/{{nb}}",
                      align="C")
            self.set_text_color(0, 0, 0)

    return _PDF


class _Doc:
    def __init__(self, title: str) -> None:
        pdf = _pdf_class()(orientation="P", unit="mm", format="A4")
        fonts = _font_dir()
        pdf.add_font("DejaVu", "", str(fonts / "DejaVuSans.ttf"))
        pdf.add_font("DejaVu", "B", str(fonts / "DejaVuSans-Bold.ttf"))
        pdf.set_auto_page_break(auto=True, margin=16)
        pdf.set_title(title)
        pdf.set_author("xrayviewer")
        pdf.set_subject("Chest X-ray analysis (research use only)")
        pdf.set_creator(f"xrayviewer {__version__}")
        pdf.set_keywords("chest X-ray, research use only, not for diagnosis")
        pdf.set_creation_date(dt.datetime.now(dt.timezone.utc))
        pdf.alias_nb_pages()
        self.pdf = pdf
        self.title = title

    def header(self, subtitle: str) -> None:
        p = self.pdf
        p.add_page()
        p.set_font("DejaVu", "B", 15)
        p.cell(0, 8, self.title, new_x="LMARGIN", new_y="NEXT")
        p.set_font("DejaVu", "", 9)
        p.set_text_color(90, 90, 90)
        p.cell(0, 5, subtitle, new_x="LMARGIN", new_y="NEXT")
        p.set_text_color(176, 0, 32)
        p.set_font("DejaVu", "B", 9)
        p.cell(0, 6, RESEARCH_NOTICE, new_x="LMARGIN", new_y="NEXT")
        p.set_text_color(0, 0, 0)

    def heading(self, text: str) -> None:
        p = self.pdf
        p.ln(1.5)
        p.set_font("DejaVu", "B", 10.5)
        p.cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
        p.set_font("DejaVu", "", 9)

    def row(self, cells: Sequence[str], widths: Sequence[float], bold: bool = False, h: float = 5.2) -> None:
        p = self.pdf
        p.set_font("DejaVu", "B" if bold else "", 8.5)
        for text, w in zip(cells, widths):
            p.cell(w, h, text, border="B" if bold else 0)
        p.ln(h)
        p.set_font("DejaVu", "", 9)


def _page(doc: _Doc, item: ReportItem, *, phi: bool, generated: str) -> None:
    r, img = item.result, item.image
    p = doc.pdf
    name = safe_stem(item.path, img, r.file_sha256, phi=phi)
    doc.header(f"{name} - generated {generated}")
    md = img.metadata
    p.set_font("DejaVu", "", 8.5)
    facts = [f"Input: {name}", f"Format: {md.format}, {md.columns} x {md.rows} px, {md.bits_stored}-bit"]
    if md.modality:
        facts.append(f"Modality: {md.modality}{', view ' + md.view_position if md.view_position else ''}")
    p.multi_cell(0, 4.4, "   ".join(facts), new_x="LMARGIN", new_y="NEXT")
    p.multi_cell(0, 4.4, f"Input SHA-256 (file): {r.file_sha256 or 'n/a'}", new_x="LMARGIN", new_y="NEXT")
    p.multi_cell(0, 4.4, f"Pixel SHA-256: {r.pixel_sha256}", new_x="LMARGIN", new_y="NEXT")
    if phi and img.patient.values():
        pat = img.patient
        p.multi_cell(0, 4.4, f"Patient: {pat.name or '-'}, ID {pat.patient_id or '-'}, born {pat.birth_date or '-'}, "
                             f"accession {pat.accession_number or '-'}", new_x="LMARGIN", new_y="NEXT")
    # Images side by side (a third one, the tuberculosis heatmap, when there is one).
    plain = img.display
    overlay = _embedded_overlay(plain, r)  # colours explained below
    tb_heat = None
    if r.gate.accepted and r.tb_heatmap is not None:
        tb_heat = _embedded_overlay(plain, r, heatmap=r.tb_heatmap,
                                    options=OverlayOptions(opacity=False, boxes=False, heatmap=True, alpha=0.55))
    panels = 3 if tb_heat is not None else 2
    y = p.get_y() + 2
    avail_w = (p.w - p.l_margin - p.r_margin - 6 * (panels - 1)) / panels
    # Keep the page to one A4 sheet: the images give up the height the region table and the
    # warnings take (a 4.2 mm row each), down to 50 mm.
    extra_rows = max(0, len(r.regions) - 1) + 2 * len(r.warnings)
    if r.gate.accepted:  # the tuberculosis row, its model line and its two-line explanation
        extra_rows += 4
    max_h = max(50.0, 80.0 - 4.2 * extra_rows)
    aspect = plain.shape[0] / plain.shape[1]
    w = min(avail_w, max_h / aspect)
    h = w * aspect
    x0 = p.l_margin
    p.image(_png(plain), x=x0, y=y, w=w, h=h)
    p.image(_png(overlay), x=x0 + avail_w + 6, y=y, w=w, h=h)
    if tb_heat is not None:
        p.image(_png(tb_heat), x=x0 + 2 * (avail_w + 6), y=y, w=w, h=h)
    p.set_xy(x0, y + h + 1)
    p.set_font("DejaVu", "", 7.5)
    p.cell(avail_w + 6, 4, "Image as loaded (default window)")
    if tb_heat is None:
        p.cell(avail_w, 4, "Lung fields, opacity and regions", new_x="LMARGIN", new_y="NEXT")
    else:
        p.cell(avail_w + 6, 4, "Lung fields, opacity and regions")
        p.cell(avail_w, 4, f"Tuberculosis heatmap (score {(r.prob_tuberculosis or 0) * 100:.0f} %)",
               new_x="LMARGIN", new_y="NEXT")

    doc.heading("Domain check")
    verdict = "Accepted: " if r.gate.accepted else "NOT SCORED: "
    p.multi_cell(0, 4.6, verdict + r.gate.reason, new_x="LMARGIN", new_y="NEXT")
    if r.gate.accepted:
        doc.heading("Scores (calibrated)")
        widths = (52, 30, 36, 60)
        doc.row(("Class", "Probability", "Operating point", "At operating point"), widths, bold=True)
        for c in CLASS_NAMES:
            prob = (r.probabilities or {}).get(c)
            op = (r.operating_point or {}).get(c)
            flag = "" if op is None or prob is None else ("above (flagged)" if prob >= op else "below")
            doc.row((c + (" (highest)" if c == r.predicted_class else ""), f"{prob * 100:.1f} %" if prob is not None
                     else "-", f"{op:.2f}" if op is not None else "-", flag), widths)
        if r.prob_tuberculosis is None:
            p.multi_cell(0, 4.6, "Tuberculosis: not available (the tuberculosis model is not installed in this "
                                 "build).", new_x="LMARGIN", new_y="NEXT")
        else:
            op = r.tb_operating_point
            doc.row(("Tuberculosis (separate score)", f"{r.prob_tuberculosis * 100:.1f} %",
                     f"{op:.2f}" if op is not None else "-",
                     "above (flagged)" if r.tb_positive else "below"), widths)
        inv = r.involvement_pct or {}
        doc.heading("Opacity and lung involvement")
    if r.gate.accepted and r.involvement_pct is None:
        p.multi_cell(0, 4.6, "Not available: the opacity model is not installed in this build.",
                     new_x="LMARGIN", new_y="NEXT")
    elif r.gate.accepted:
        widths = (52, 30, 30, 30)
        doc.row(("", "Right lung", "Left lung", "Both lungs"), widths, bold=True)
        doc.row(("Involvement (% of lung area)", f"{inv.get('right', 0):.1f} %", f"{inv.get('left', 0):.1f} %",
                 f"{inv.get('total', 0):.1f} %"), widths)
        p.multi_cell(0, 4.6, f"Severity grade: {r.severity}.   Opacity regions: {len(r.regions)}.",
                     new_x="LMARGIN", new_y="NEXT")
        if r.regions:
            widths = (14, 26, 60, 34, 34)
            doc.row(("#", "Side", "Box x0,y0 - x1,y1 (px)", "Area (px)", "Mean prob."), widths, bold=True)
            for i, reg in enumerate(r.regions[:8], 1):
                x0_, y0_, x1_, y1_ = reg.bbox
                doc.row((str(i), reg.side, f"{x0_},{y0_} - {x1_},{y1_}", f"{reg.area_px:,}",
                         f"{reg.mean_probability:.2f}"), widths)
            if len(r.regions) > 8:
                p.cell(0, 4.6, f"... and {len(r.regions) - 8} more", new_x="LMARGIN", new_y="NEXT")
    doc.heading("Models")
    for m in r.models:
        p.set_font("DejaVu", "", 8)
        p.cell(0, 4.2, f"{m.name} v{m.version}   sha256 {m.sha256}", new_x="LMARGIN", new_y="NEXT")
    p.set_font("DejaVu", "", 8)
    p.cell(0, 4.2, f"Analysis time {r.total_seconds:.2f} s", new_x="LMARGIN", new_y="NEXT")
    doc.heading("How to read this page")
    for title, text in EXPLANATIONS:
        p.set_font("DejaVu", "B", 8)
        p.cell(28, 4.2, title)
        p.set_font("DejaVu", "", 8)
        p.multi_cell(0, 4.2, text, new_x="LMARGIN", new_y="NEXT")
    if r.warnings:
        doc.heading("Warnings")
        for w_ in r.warnings:
            p.multi_cell(0, 4.2, w_, new_x="LMARGIN", new_y="NEXT")


def _summary(doc: _Doc, rows: Sequence[dict], *, generated: str) -> None:
    """Batch summary from result records (already de-identified by the caller)."""
    p = doc.pdf
    doc.header(f"Batch summary - {len(rows)} image(s) - generated {generated}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    p.multi_cell(0, 5, f"Analysed: {counts.get('ok', 0)}   Not scored (out of domain): {counts.get('refused', 0)}   "
                       f"Failed: {counts.get('error', 0)}", new_x="LMARGIN", new_y="NEXT")
    widths = (50, 16, 32, 20, 20, 24, 24)
    doc.row(("Image", "Status", "Highest score", "COVID-19", "TB", "Involvement", "Severity"), widths, bold=True)
    for r in rows:
        name = Path(str(r.get("path", ""))).name
        name = name if len(name) <= 32 else name[:29] + "..."
        covid = r.get("prob_covid19")
        tb = r.get("prob_tuberculosis")
        flagged = record_flag(r.get("tb_positive"))
        inv = r.get("involvement_total_pct")
        status = r.get("status", "")
        doc.row((name, status, (r.get("predicted_class") or "-") if status == "ok" else (r.get("reason") or "")[:22],
                 f"{covid * 100:.0f} %" if isinstance(covid, (int, float)) else "-",
                 (f"{tb * 100:.0f} %" + (" (+)" if flagged else "")) if isinstance(tb, (int, float)) else "-",
                 f"{inv:.1f} %" if isinstance(inv, (int, float)) else "-", r.get("severity") or "-"), widths)


def write_summary_pdf(rows: Sequence[dict], path: str | os.PathLike, *,
                      title: str = "Chest X-ray analysis report") -> Path:
    """The batch summary page on its own (rows are result records, de-identified)."""
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    doc = _Doc(title)
    _summary(doc, rows, generated=generated)
    return atomic_write_bytes(path, bytes(doc.pdf.output()))


def write_pdf_report(items: Sequence[ReportItem], path: str | os.PathLike, *, phi: bool = False,
                     title: str = "Chest X-ray analysis report") -> Path:
    """Write the report atomically; a batch (more than one item) starts with a summary page."""
    if not items:
        raise ValueError("a report needs at least one analysed image")
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    doc = _Doc(title)
    if len(items) > 1:
        rows = []
        for it in items:
            rec = it.result.to_record(safe_stem(it.path, it.image, it.result.file_sha256, phi=phi))
            rows.append(rec)
        _summary(doc, rows, generated=generated)
    for it in items:
        _page(doc, it, phi=phi, generated=generated)
    return atomic_write_bytes(path, bytes(doc.pdf.output()))
