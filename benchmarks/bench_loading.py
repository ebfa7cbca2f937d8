"""Decode speed of load_image per real DICOM file vs. a plain pydicom read (same run).

Run: python benchmarks/bench_loading.py [--repeat N]. Prints medians in milliseconds and the
ratio (ours / baseline); the difference is our display pipeline (windowing, inversion).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path

log = logging.getLogger("bench_loading")


def _data_dir() -> Path:
    env = os.environ.get("XRAYVIEWER_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import pydicom

    from xrayviewer.imaging import load_image

    rows = []
    for path in sorted((_data_dir() / "dicom").glob("*.dcm")):
        ours = _median_ms(lambda p=path: load_image(p), args.repeat)
        base = _median_ms(lambda p=path: pydicom.dcmread(p).pixel_array, args.repeat)
        ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name
        rows.append((path.name[:28], ts[:40], base, ours))
    log.info("%-28s  %-40s  %10s  %10s  %6s", "file", "transfer syntax", "pydicom ms", "ours ms", "ratio")
    for name, ts, base, ours in rows:
        log.info("%-28s  %-40s  %10.1f  %10.1f  %6.2f", name, ts, base, ours, ours / base)


if __name__ == "__main__":
    main()
