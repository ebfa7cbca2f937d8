"""``xrayviewer --self-test``: is this installation (or frozen app) whole?

Checks every bundled model against its card (sha256) and loads it, decodes a small image
in each pixel-data codec we can encode here (RLE, JPEG 2000, JPEG baseline, uncompressed
explicit/implicit) and confirms a decoder is available for the others, then runs the full
analysis on a synthetic image. Prints one line and returns 0 only if everything passed.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from typing import TextIO

import numpy as np

from . import __version__

log = logging.getLogger(__name__)

DECODE_ONLY = {
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
}


def _phantom(size: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size), 180.0)
    for cx in (0.3, 0.7):
        img[((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1] = 60
    return img.astype(np.uint8)


def _dicom(pixels: np.ndarray, ts: str, pixel_bytes: bytes | None = None, implicit: bool = False) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(ts)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = encapsulate([pixel_bytes]) if pixel_bytes is not None else pixels.tobytes()
    if pixel_bytes is not None:
        ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=implicit if not meta.TransferSyntaxUID.is_compressed
               else False)
    return buf.getvalue()


def codec_samples(pixels: np.ndarray) -> dict[str, bytes]:
    """Small DICOMs in each transfer syntax we can encode with what is installed."""
    from PIL import Image

    out = {
        "Explicit VR Little Endian": _dicom(pixels, "1.2.840.10008.1.2.1"),
        "Implicit VR Little Endian": _dicom(pixels, "1.2.840.10008.1.2", implicit=True),
    }
    from pydicom.pixels.encoders import RLELosslessEncoder

    rle = RLELosslessEncoder.encode(pixels.tobytes(), rows=pixels.shape[0], columns=pixels.shape[1],
                                    samples_per_pixel=1, bits_allocated=8, bits_stored=8, pixel_representation=0,
                                    photometric_interpretation="MONOCHROME2", number_of_frames=1)
    out["RLE Lossless"] = _dicom(pixels, "1.2.840.10008.1.2.5", rle)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    out["JPEG Baseline"] = _dicom(pixels, "1.2.840.10008.1.2.4.50", buf.getvalue())
    from openjpeg import encode as encode_array

    out["JPEG 2000 Lossless"] = _dicom(pixels, "1.2.840.10008.1.2.4.90", encode_array(pixels, codec_format=0))
    return out


def run_self_test(out: TextIO, *, analyze: bool = True,
                  extra_steps: Sequence[tuple[str, Callable[[], str | None]]] = ()) -> int:
    """Run every check, print one line, return 0 only if all passed.

    ``extra_steps`` lets the composition root add the viewer's check (this module may not
    import the GUI).
    """
    problems: list[str] = []
    notes: list[str] = []

    def step(name: str, fn: Callable[[], str | None]) -> None:
        try:
            msg = fn()
            if msg:
                notes.append(msg)
        except Exception as exc:  # collect everything: one line at the end says what failed
            log.debug("self-test step %s failed", name, exc_info=True)
            problems.append(f"{name}: {type(exc).__name__}: {exc}")

    from .imaging import load_image

    pixels = _phantom()

    def codecs() -> str:
        ok = 0
        for name, data in codec_samples(pixels).items():
            img = load_image(data, name=f"self-test {name}")
            tol = 8 if name == "JPEG Baseline" else 0
            if np.abs(img.values.astype(int) - pixels.astype(int)).max() > tol:
                raise ValueError(f"{name} decoded to wrong pixels")
            ok += 1
        from pydicom.pixels import get_decoder

        for uid, name in DECODE_ONLY.items():
            if not get_decoder(uid).is_available:
                raise ValueError(f"no decoder available for {name}")
        return f"{ok} codecs decoded, {len(DECODE_ONLY)} more available"

    step("codecs", codecs)

    def models() -> str:
        from .inference.analyzer import _bundled, model_names, require_models

        bad = require_models()
        if bad:
            raise ValueError("; ".join(bad))
        present = [n for n in model_names() if _bundled(n, None)]
        missing = [n for n in model_names() if n not in present]
        return f"{len(present)} models verified" + (f" ({', '.join(missing)} not installed)" if missing else "")

    step("models", models)

    if analyze and not problems:
        def analysis() -> str:
            from .inference.analyzer import Analyzer

            t0 = time.perf_counter()
            a = Analyzer(device="auto")
            a.load()
            r = a.analyze(load_image(_dicom(pixels, "1.2.840.10008.1.2.1"), name="self-test phantom"))
            if r.gate.code == "":
                raise ValueError("analysis returned no gate verdict")
            return f"analysis ran on {a.device} in {time.perf_counter() - t0:.1f} s ({r.status})"

        step("analysis", analysis)
    for name, fn in extra_steps:
        step(name, fn)
    if problems:
        out.write(f"xrayviewer {__version__} self-test: FAILED - " + " | ".join(problems) + "\n")
        return 1
    out.write(f"xrayviewer {__version__} self-test: OK - " + "; ".join(notes) + "\n")
    return 0
