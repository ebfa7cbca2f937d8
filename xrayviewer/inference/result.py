"""The result of analysing one image: a frozen dataclass shared by GUI, CLI, batch and reports.

Arrays are at the input image's full resolution. ``to_record`` flattens it to the stable
CSV/JSON schema documented in the README (columns are only ever added, never renamed).

Two hashes, each for one purpose: ``file_sha256`` (the bytes of the input file) identifies
the *file* -- the CSV's ``input_sha256``, resume, de-identified names, the history's index;
``pixel_sha256`` (the decoded pixels) identifies the *image*, whatever container it came in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The classifier's output order (checked against its card), re-exported for reports and the viewer.
from ..modellayer.classifier import CLASS_NAMES  # noqa: F401
from ..modellayer.gate import GateVerdict  # the domain gate's verdict, part of every result

CSV_COLUMNS = (
    "path",
    "status",
    "reason",
    "predicted_class",
    "prob_normal",
    "prob_covid19",
    "prob_other_pneumonia",
    "involvement_right_pct",
    "involvement_left_pct",
    "involvement_total_pct",
    "severity",
    "opacity_regions",
    "seconds",
    "models",
    "input_sha256",
    "gate_code",
    "covid_positive",
    "warnings",
    "file_sha256",
    "pixel_sha256",
    "opacity_withheld_regions",
    "prob_tuberculosis",
    "tb_positive",
)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str

    def label(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Region:
    """A connected opacity region: bbox (x0, y0, x1, y1) exclusive, in full-res pixels."""

    bbox: tuple[int, int, int, int]
    area_px: int
    side: str  # "right" | "left" | "both"
    mean_probability: float

    def to_dict(self) -> dict[str, Any]:
        return {"bbox": list(self.bbox), "area_px": self.area_px, "side": self.side,
                "mean_probability": round(self.mean_probability, 4)}


@dataclass(frozen=True, eq=False)
class AnalysisResult:
    source: str
    file_sha256: str  # of the input file's bytes ("" when it was not loaded from bytes)
    pixel_sha256: str  # of the decoded pixels
    image_shape: tuple[int, int]
    gate: GateVerdict
    models: tuple[ModelInfo, ...]
    timings: dict[str, float]
    probabilities: dict[str, float] | None = None  # calibrated
    predicted_class: str | None = None
    operating_point: dict[str, float] | None = None  # e.g. {"COVID-19": 0.42}
    covid_positive: bool | None = None  # COVID probability >= operating point
    heatmap: np.ndarray | None = field(default=None, repr=False)
    lung_labels: np.ndarray | None = field(default=None, repr=False)  # 0 bg, 1 right, 2 left
    opacity_mask: np.ndarray | None = field(default=None, repr=False)
    regions: tuple[Region, ...] = ()
    involvement_pct: dict[str, float] | None = None  # right, left, total
    severity: str | None = None
    warnings: tuple[str, ...] = ()
    # Regions the opacity card's film-level rule did not report (the classifier read the
    # film as Normal); None when no opacity model ran.
    opacity_withheld_regions: int | None = None
    # Tuberculosis head (optional model; None when not installed or the film was refused).
    # Not one of the classes above: P(TB) is a separate screening score, see xrayviewer.modellayer.tuberculosis.
    prob_tuberculosis: float | None = None  # calibrated
    tb_positive: bool | None = None  # prob_tuberculosis >= tb_operating_point
    tb_operating_point: float | None = None
    tb_heatmap: np.ndarray | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        return "ok" if self.gate.accepted else "refused"

    @property
    def total_seconds(self) -> float:
        return float(sum(self.timings.values()))

    def models_label(self) -> str:
        return ";".join(m.label() for m in self.models)

    def to_record(self, path: str | None = None) -> dict[str, Any]:
        """One row of results.csv / one object of results.jsonl."""
        probs = self.probabilities or {}
        inv = self.involvement_pct or {}

        def r(v: float | None, nd: int = 4) -> float | None:
            return None if v is None else round(float(v), nd)

        return {
            "path": path or self.source,
            "status": self.status,
            "reason": "" if self.gate.accepted else self.gate.reason,
            "predicted_class": self.predicted_class or "",
            "prob_normal": r(probs.get("Normal")),
            "prob_covid19": r(probs.get("COVID-19")),
            "prob_other_pneumonia": r(probs.get("Other pneumonia")),
            "involvement_right_pct": r(inv.get("right"), 2),
            "involvement_left_pct": r(inv.get("left"), 2),
            "involvement_total_pct": r(inv.get("total"), 2),
            "severity": self.severity or "",
            "opacity_regions": len(self.regions) if self.involvement_pct is not None else None,
            "seconds": round(self.total_seconds, 4),
            "models": self.models_label(),
            "input_sha256": self.file_sha256,
            "gate_code": self.gate.code,
            "covid_positive": self.covid_positive,
            "warnings": "; ".join(self.warnings),
            "file_sha256": self.file_sha256,
            "pixel_sha256": self.pixel_sha256,
            "opacity_withheld_regions": self.opacity_withheld_regions,
            "prob_tuberculosis": r(self.prob_tuberculosis),
            "tb_positive": self.tb_positive,
        }

    def to_json(self, path: str | None = None) -> dict[str, Any]:
        """The record plus structured detail (regions, timings, model hashes) for JSONL."""
        rec = self.to_record(path)
        rec["regions"] = [reg.to_dict() for reg in self.regions]
        rec["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        rec["model_details"] = [{"name": m.name, "version": m.version, "sha256": m.sha256} for m in self.models]
        rec["operating_point"] = self.operating_point
        rec["tb_operating_point"] = self.tb_operating_point
        rec["gate_scores"] = {k: round(float(v), 4) for k, v in self.gate.scores.items()}
        rec["image_shape"] = list(self.image_shape)
        return rec


def record_flag(value: Any) -> bool:
    """A flag of a result record as read back: a bool, or its text in a ``results.csv`` row
    ("True"/"False"/"", also "1"/"yes"); absent or empty is False."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def unanalysed_record(path: str, status: str, reason: str, *, seconds: float = 0.0, file_sha256: str = "",
                      gate_code: str = "") -> dict[str, Any]:
    """The CSV/JSON row of a file no model looked at: it could not be loaded or analysed
    (status "error"), or its loader already knew it is no radiograph (status "refused", with
    the refusal's ``gate_code``; e.g. a colour ultrasound)."""
    rec: dict[str, Any] = {c: None for c in CSV_COLUMNS}
    rec.update(path=path, status=status, reason=reason, seconds=round(seconds, 4), input_sha256=file_sha256,
               predicted_class="", severity="", models="", gate_code=gate_code, warnings="",
               file_sha256=file_sha256, pixel_sha256="")
    return rec
