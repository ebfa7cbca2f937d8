"""Readers for the four public dataset layouts in the shared data bundle.

Each reader walks the *original* public layout (so a user who downloads the full
datasets can retrain with ``--data-dir``) and returns :class:`Record` objects. Labels use
the project vocabulary Normal / COVID-19 / Other pneumonia (``None`` = not mapped).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

NORMAL, COVID, OTHER = "Normal", "COVID-19", "Other pneumonia"
LABELS = (NORMAL, COVID, OTHER)
# ieee8023 / GeneralBlockchain view positions of a frontal film (the classifier's and gate's data)
FRONTAL_VIEWS = frozenset({"PA", "AP", "AP Supine", "AP Erect", "AP semi erect"})
TUBERCULOSIS = "Tuberculosis"  # Shenzhen only: a finding outside the three COVID-era classes

_QU_CLASSES = {"COVID-19": COVID, "Non-COVID": OTHER, "Normal": NORMAL}
_NIH_CLASSES = {"No_findings": NORMAL, "Pneumonia": OTHER}
_PNEUMONIA_WORDS = (
    "SARS", "MERS", "Pneumocystis", "Streptococcus", "Klebsiella", "Legionella",
    "Mycoplasma", "E.Coli", "Bacterial", "Chlamydophila", "Influenza", "Varicella",
    "Pneumonia", "Lipoid",
)
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class Record:
    """One image and what we know about it. Paths are absolute strings."""

    image: str
    source: str
    label: str | None = None
    lung_mask: str | None = None
    infection_mask: str | None = None
    patient_id: str | None = None
    view: str | None = None
    modality: str | None = None
    folder_split: str | None = None  # the dataset's own split folder (COVID-QU-Ex Train/Val)

    @property
    def key(self) -> str:
        """Stable identifier: source + path relative to the source root."""
        return f"{self.source}:{self.image.split('/' + self.source + '/', 1)[-1]}"

    def to_dict(self) -> dict:
        return asdict(self)


def map_finding(finding: str) -> str | None:
    """Map an ieee8023 / GeneralBlockchain ``finding`` string to the project vocabulary."""
    f = (finding or "").strip()
    if "COVID-19" in f:
        return COVID
    if f == "No Finding":
        return NORMAL
    if any(w.lower() in f.lower() for w in _PNEUMONIA_WORDS):
        return OTHER
    return None  # ARDS alone, todo, empty


def read_covid_qu_ex(root: Path) -> list[Record]:
    """``<Split>/<Class>/images|lung masks|infection masks/<name>.png``."""
    out: list[Record] = []
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for cls_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            label = _QU_CLASSES.get(cls_dir.name)
            if label is None:
                log.warning("unknown COVID-QU-Ex class folder %s", cls_dir)
                continue
            for img in sorted((cls_dir / "images").glob("*.png")):
                lung = cls_dir / "lung masks" / img.name
                inf = cls_dir / "infection masks" / img.name
                out.append(Record(
                    image=str(img), source="covid-qu-ex", label=label,
                    lung_mask=str(lung) if lung.is_file() else None,
                    infection_mask=str(inf) if inf.is_file() else None,
                    folder_split=split_dir.name,
                ))
    return out


def _metadata_records(root: Path, source: str, with_masks: bool) -> list[Record]:
    out: list[Record] = []
    seen: set[str] = set()
    with open(root / "metadata.csv", newline="", encoding="utf-8", errors="replace") as fh:
        for row in csv.DictReader(fh):
            img = root / (row.get("folder") or "images") / row["filename"]
            if with_masks:
                img = root / "images" / row["filename"]
            if not img.is_file() or str(img) in seen:
                continue  # same file listed under two patient ids: keep the first row
            seen.add(str(img))
            lung = root / "lung" / (img.stem + ".png")
            ggo = root / "ggo" / (img.stem + ".png")
            out.append(Record(
                image=str(img), source=source, label=map_finding(row.get("finding", "")),
                lung_mask=str(lung) if with_masks and lung.is_file() else None,
                infection_mask=str(ggo) if with_masks and ggo.is_file() else None,
                patient_id=(row.get("patientid") or "").strip() or None,
                view=(row.get("view") or "").strip() or None,
                modality=(row.get("modality") or "").strip() or None,
            ))
    return out


def read_ieee8023(root: Path) -> list[Record]:
    """``metadata.csv`` + ``images/``; keeps view/modality so callers can drop CT/lateral."""
    return _metadata_records(root, "ieee8023", with_masks=False)


def read_generalblockchain(root: Path) -> list[Record]:
    """``metadata.csv`` + ``images/`` + ``lung/`` and ``ggo/`` masks (whole-lung convention)."""
    return _metadata_records(root, "generalblockchain", with_masks=True)


def read_nih(root: Path) -> list[Record]:
    """``X-Ray Image DataSet/<No_findings|Pneumonia>/<patient>_<followup>.png``."""
    base = root / "X-Ray Image DataSet"
    out: list[Record] = []
    for folder, label in _NIH_CLASSES.items():
        for img in sorted((base / folder).glob("*")):
            if img.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            out.append(Record(image=str(img), source="nih", label=label,
                              patient_id=img.stem.split("_")[0]))
    return out


def read_tb_shenzhen(root: Path) -> list[Record]:
    """``Lung Segmentation/CXR_png/CHNCXR_<nnnn>_<label>.png`` + ``masks/<stem>_mask.png``.

    The last digit of the name is the label (1 = tuberculosis, 0 = normal); one film per
    patient, so the film number is the patient id.
    """
    base = root / "Lung Segmentation"
    out: list[Record] = []
    for img in sorted((base / "CXR_png").glob("CHNCXR_*.png")):
        parts = img.stem.split("_")
        if len(parts) != 3 or parts[2] not in ("0", "1"):
            log.warning("unexpected Shenzhen file name %s", img.name)
            continue
        mask = base / "masks" / f"{img.stem}_mask.png"
        out.append(Record(image=str(img), source="tb-shenzhen",
                          label=TUBERCULOSIS if parts[2] == "1" else NORMAL,
                          lung_mask=str(mask) if mask.is_file() else None,
                          patient_id=parts[1]))
    return out


READERS = {
    "covid-qu-ex": read_covid_qu_ex,
    "ieee8023": read_ieee8023,
    "nih": read_nih,
    "generalblockchain": read_generalblockchain,
    "tb-shenzhen": read_tb_shenzhen,
}


def read_all(data_dir: Path, sources: tuple[str, ...] = tuple(READERS),
             max_images: int | None = None) -> list[Record]:
    """Read every available source. ``max_images`` caps each source (and each
    COVID-QU-Ex split folder) for smoke runs, taking an evenly spaced, deterministic subset."""
    records: list[Record] = []
    for name in sources:
        root = Path(data_dir) / name
        if not root.is_dir():
            log.warning("source %s not found under %s", name, data_dir)
            continue
        recs = READERS[name](root)
        if max_images is not None:
            if name == "covid-qu-ex":
                recs = [r for s in ("Train", "Val") for r in _spread(
                    [r for r in recs if r.folder_split == s], max_images)]
            else:
                recs = _spread(recs, max_images)
        log.info("%s: %d records", name, len(recs))
        records.extend(recs)
    return records


def is_frontal_xray(r: Record) -> bool:
    """COVID-QU-Ex and NIH are frontal by construction; ieee8023 rows say so in metadata."""
    if r.source in ("ieee8023", "generalblockchain"):
        return (r.modality or "") == "X-ray" and (r.view or "") in FRONTAL_VIEWS
    return True


def _spread(items: list, n: int) -> list:
    if len(items) <= n:
        return items
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def read_gray(path: str | Path) -> np.ndarray:
    """Read an image file as 2-D uint8 grey (datasets are 8-bit PNG/JPEG)."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if arr is None:  # cv2 fails on a few odd files; PIL is more lenient
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    return arr


def read_mask(path: str | Path) -> np.ndarray:
    """Read a 0/255 mask as a bool array."""
    return read_gray(path) > 127


def fingerprint(gray: np.ndarray) -> np.ndarray:
    """DATA.md near-duplicate fingerprint: autocontrast, 32x32 squash, mean-removed, L2-normalised."""
    from PIL import Image, ImageOps

    im = ImageOps.autocontrast(Image.fromarray(np.asarray(gray, dtype=np.uint8)))
    v = np.asarray(im.resize((32, 32), Image.BILINEAR), dtype=np.float32).ravel()
    v -= v.mean()
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v
