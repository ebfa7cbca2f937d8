"""Coverage-guided fuzzing of the image loaders with atheris (libFuzzer): the longer CI job.

Seeded with every real file in ``shared/data/dicom`` (all transfer syntaxes, the broken ones
too) plus a few raster images built here (8/16-bit PNG, TIFF, JPEG). Each input must end in
a valid ``XRayImage`` or an ``XRayViewerError`` naming the input; any other exception, a hang
over ``--timeout`` seconds or more than ``--rss-mb`` of memory is a failure: libFuzzer writes
the input to ``--out``/crash-* (or timeout-*/oom-*) and the script exits non-zero. Turn a
crasher into a regression case in ``tests/test_fuzz_loaders.py`` (as bytes built by the test).

    python -m pip install -e ".[fuzz]"
    python tests/fuzz/atheris_loaders.py --seconds 240 --out runs/fuzz

Not collected by pytest (no ``test_`` prefix); ``.ci/run`` runs it after the unit tests.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger("fuzz")


def _data_dir() -> Path:
    env = os.environ.get("XRAYVIEWER_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def build_corpus(corpus: Path, data_dir: Path) -> int:
    """Seed corpus: the real DICOM files plus raster images made with numpy (not copied data)."""
    from PIL import Image

    corpus.mkdir(parents=True, exist_ok=True)
    n = 0
    for path in sorted((data_dir / "dicom").rglob("*")):
        if path.is_file() and path.suffix.lower() in (".dcm", "") and path.stat().st_size < 8 * 2**20:
            (corpus / f"dicom_{n:03d}").write_bytes(path.read_bytes())
            n += 1
    if n == 0:
        raise SystemExit(f"no DICOM seeds under {data_dir / 'dicom'} (set XRAYVIEWER_DATA_DIR)")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:96, 0:80]
    grad = (x * 3 + y * 2).astype(np.float64)
    for name, arr, fmt in [
        ("png8", (grad % 256).astype(np.uint8), "PNG"),
        ("png16", (grad * 300).astype(np.uint16), "PNG"),
        ("tif16", (grad * 250 + rng.integers(0, 50, grad.shape)).astype(np.uint16), "TIFF"),
        ("jpeg", (grad % 256).astype(np.uint8), "JPEG"),
        ("rgbpng", np.dstack([(grad % 256).astype(np.uint8)] * 3), "PNG"),
    ]:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        (corpus / f"raster_{name}").write_bytes(buf.getvalue())
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=240, help="total fuzzing time")
    ap.add_argument("--timeout", type=int, default=10, help="per-input time limit (s)")
    ap.add_argument("--rss-mb", type=int, default=3072, help="memory limit (MB)")
    ap.add_argument("--max-len", type=int, default=1 << 20, help="largest input (bytes)")
    ap.add_argument("--seed", type=int, default=0,
                    help="libFuzzer seed (0: random; CI fixes one so that a run is repeatable)")
    ap.add_argument("--out", type=Path, default=Path("runs/fuzz"), help="crash artifacts go here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import atheris
    except ImportError:
        log.error("atheris is not installed: python -m pip install -e '.[fuzz]' (Linux/macOS)")
        return 2

    # atheris' import hook does not see editable-install finders: import from the checkout.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    with atheris.instrument_imports(include=["xrayviewer", "pydicom", "PIL"]):
        import PIL.Image
        import pydicom  # noqa: F401  (imported here so that its parser is instrumented)

        PIL.Image.init()  # loads the format plugins inside the instrumented block
        from xrayviewer.errors import XRayViewerError
        from xrayviewer.imaging import XRayImage, load_image
    # pydicom logs every failed decode with a traceback (millions of lines over a run); its
    # config sets the logger's level on import, so quieten it after the import.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)

    def one_input(data: bytes) -> None:
        try:
            with warnings.catch_warnings():  # the parsers' warnings on garbage are expected here
                warnings.simplefilter("ignore")
                img = load_image(data, name="fuzz-input")
        except XRayViewerError as exc:
            if "fuzz-input" not in str(exc):
                raise AssertionError(f"error does not name the input: {exc}") from exc
            return
        if not isinstance(img, XRayImage) or img.display.dtype != np.uint8 \
                or img.display.shape != img.values.shape[:2]:
            raise AssertionError(f"invalid image from load_image: {type(img)}")

    args.out.mkdir(parents=True, exist_ok=True)
    # The corpus lives under --out (atheris.Fuzz() exits the process, so a temporary folder
    # would never be removed); seeds are rewritten, inputs found by earlier runs are kept.
    corpus = args.out / "corpus"
    n = build_corpus(corpus, _data_dir())
    log.info("atheris: %d seeds, %d s, per-input limit %d s, %d MB", n, args.seconds, args.timeout, args.rss_mb)
    flags = [sys.argv[0], str(corpus), f"-max_total_time={args.seconds}", f"-timeout={args.timeout}",
             f"-rss_limit_mb={args.rss_mb}", f"-max_len={args.max_len}",
             f"-artifact_prefix={args.out.resolve()}/", "-print_final_stats=1",
             "-len_control=0"]  # mutate whole files from the start, not short prefixes
    if args.seed:
        flags.append(f"-seed={args.seed}")
    atheris.Setup(flags, one_input)
    atheris.Fuzz()  # exits the process: 0 when the time is up, non-zero on a finding
    return 0  # pragma: no cover


if __name__ == "__main__":
    raise SystemExit(main())
