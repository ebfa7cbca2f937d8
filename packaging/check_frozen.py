"""Check a PyInstaller build the way a user would use it (CI runs this after building).

1. ``xrayviewer-cli --version`` matches the single version source;
2. ``xrayviewer-cli --self-test`` passes (models + hashes, codecs, one analysis, and with a
   display the viewer's image path through Tk);
3. ``xrayviewer-cli analyze`` on real files from ``shared/data`` (a COVID-19 film, a normal
   film, two compressed chest DICOMs, a hip radiograph, a CT slice) writes the documented
   outputs, with the chest films scored, the hip and the CT refused and nothing failed;
4. the bundle holds the models and codecs but not the training module or the tests;
5. the windowed executable exists next to the console twin.

    python packaging/check_frozen.py dist/xrayviewer [--data ../shared/data]

Prints the bundle size and the timings; exits non-zero with the reason on any failure.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("check_frozen")
ROOT = Path(__file__).resolve().parents[1]


class CheckFailed(Exception):
    pass


def _run(cmd: list[str], timeout: int = 600, **extra_env: str) -> tuple[str, float]:
    # The bundle must be self-contained: no source tree on the path, no models from elsewhere.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XRAYVIEWER_MODELS_DIR")}
    env.update(extra_env)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr, dt


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def check(bundle: Path, data: Path) -> dict[str, float]:
    exe = "xrayviewer-cli.exe" if sys.platform == "win32" else "xrayviewer-cli"
    cli = bundle / exe
    gui = bundle / ("xrayviewer.exe" if sys.platform == "win32" else "xrayviewer")
    for f in (cli, gui):
        if not f.is_file():
            raise CheckFailed(f"missing executable {f}")
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "xrayviewer" / "__init__.py").read_text()).group(1)
    out, _ = _run([str(cli), "--version"])
    if version not in out:
        raise CheckFailed(f"--version printed {out.strip()!r}, expected {version}")

    internal = bundle / "_internal" if (bundle / "_internal").is_dir() else bundle
    names = {p.name for p in internal.rglob("*")}
    for model in ("lung_unet", "xray_classifier", "xray_gate"):
        if not (internal / "models" / model / "card.json").is_file():
            raise CheckFailed(f"model {model} not in the bundle")
    if any(n in names for n in ("test_batch.py", "conftest.py")) or (internal / "xrayviewer" / "training").exists():
        raise CheckFailed("tests or the training module were bundled")

    out, self_test_s = _run([str(cli), "--self-test"])
    verdict = next((line for line in out.splitlines() if "self-test:" in line), "")
    if ": OK" not in verdict:
        raise CheckFailed(f"self-test verdict missing or not OK: {out[-2000:]}")
    if os.environ.get("DISPLAY") and "viewer ok" not in verdict:
        raise CheckFailed(f"the viewer was not checked although a display is set: {verdict}")
    log.info("self-test (%.1f s): %s", self_test_s, verdict)

    files = [
        sorted((data / "covid-qu-ex" / "Val" / "COVID-19" / "images").glob("*.png"))[0],
        sorted((data / "covid-qu-ex" / "Val" / "Normal" / "images").glob("*.png"))[0],
        data / "dicom" / "966_fixed.dcm",     # chest DX, JPEG 2000, MONOCHROME1
        data / "dicom" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",  # chest CR, JPEG baseline
        data / "dicom" / "RG2_JPLL.dcm",      # hip CR, JPEG lossless: refused (body part)
        data / "dicom" / "non_cxr" / "CT_small.dcm",  # CT: refused
    ]
    for f in files:
        if not f.is_file():
            raise CheckFailed(f"test input missing: {f}")
    with tempfile.TemporaryDirectory(prefix="xrv-frozen-") as tmp:
        out_dir = Path(tmp) / "out"
        home = Path(tmp) / "home"
        _, analyze_s = _run([str(cli), "analyze", *map(str, files), "--out", str(out_dir),
                             "--format", "csv,json,png,pdf,dicom", "--quiet"],
                            XRAYVIEWER_HISTORY_DB=str(home / "history.sqlite"),
                            XRAYVIEWER_CONFIG_DIR=str(home / "config"))
        rows = list(csv.DictReader((out_dir / "results.csv").open(encoding="utf-8")))
        if len(rows) != len(files):
            raise CheckFailed(f"{len(rows)} CSV rows for {len(files)} inputs")
        # Rows come in input order; names may be de-identified (a file name holding a
        # patient field is replaced), so match by position.
        status = [r["status"] for r in rows]
        want = ["ok", "ok", "ok", "ok", "refused", "refused"]
        if status != want:
            raise CheckFailed(f"statuses {status}, expected {want}: {rows}")
        covid = rows[0]
        if not covid["predicted_class"] or not covid["prob_covid19"]:
            raise CheckFailed(f"COVID film not scored: {covid}")
        pdfs = list(out_dir.rglob("*.pdf"))
        overlays = list(out_dir.rglob("*.overlay.png"))
        segs = list(out_dir.rglob("*.seg.dcm"))  # de-identified by the table the bundle must carry
        if len(segs) != 2:
            raise CheckFailed(f"expected the SEG of the two chest DICOMs, got {sorted(p.name for p in segs)}")
        if not pdfs or not overlays or any(p.stat().st_size == 0 for p in pdfs + overlays):
            raise CheckFailed(f"missing outputs: {sorted(p.name for p in out_dir.rglob('*'))}")
    size = _size_mb(bundle)
    log.info("frozen analyze of %d files: %.1f s; bundle %.0f MB", len(files), analyze_s, size)
    return {"self_test_s": self_test_s, "analyze_s": analyze_s, "bundle_mb": size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, nargs="?", default=ROOT / "dist" / "xrayviewer")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("XRAYVIEWER_DATA_DIR", ROOT.parent / "shared" / "data")))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        figures = check(args.bundle.resolve(), args.data.resolve())
    except (CheckFailed, subprocess.TimeoutExpired) as exc:
        log.error("frozen app check FAILED: %s", exc)
        return 1
    log.info("frozen app check passed: %s", ", ".join(f"{k}={v:.1f}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
