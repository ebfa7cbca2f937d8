"""Load run: a batch of >= 2,000 real images (repeated) through the real models, watching
memory, threads and open files as it goes.

A leak shows as growth per image: the script samples resident memory (RSS), live threads and
open file descriptors every ``--every`` images from the batch engine's progress callback,
fits a line to RSS after the first pass over the distinct images (warm-up: every image has
been seen once, so the allocator's high-water mark is set), and prints the slope in MB per
1,000 images next to the counts before and after. ``--pool`` real COVID-QU-Ex/NIH PNGs and
four large DICOMs, shuffled, are linked under distinct names (the journal keys outputs by
name, so each counts).

Run: python benchmarks/bench_load.py [--images 2000] [--formats csv,json,png]
(Linux: reads /proc/self for RSS and descriptors.)
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("bench_load")


def data_dir() -> Path:
    env = os.environ.get("XRAYVIEWER_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def slope_per_1000(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs, scaled to per 1,000 images."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--formats", default="csv,json,png")
    ap.add_argument("--every", type=int, default=100, help="sample every N images")
    ap.add_argument("--pool", type=int, default=500, help="distinct real images, repeated")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("XRAYVIEWER_HISTORY_DB", str(Path(tempfile.mkdtemp()) / "h.db"))

    from xrayviewer.batch.engine import BatchOptions, BatchRunner, discover
    from xrayviewer.inference.analyzer import Analyzer

    d = data_dir()
    pool = sorted((d / "covid-qu-ex" / "Val").glob("*/images/*.png"))[:: 2][: args.pool // 2]
    pool += sorted((d / "nih" / "X-Ray Image DataSet").glob("*/*.png"))[:: 3][: args.pool - len(pool) - 4]
    pool += [d / "dicom" / n for n in ("RG2_JPLL.dcm", "RG1_J2KI.dcm", "RG2_JLSL.dcm", "966_fixed.dcm")]
    random.Random(0).shuffle(pool)
    # Warm-up = one pass over the pool: by then every distinct image (the large DICOMs too)
    # has set the allocator's high-water mark; growth after that is growth per image.
    warmup = len(pool)
    src = Path(tempfile.mkdtemp(prefix="xrv-load-src-"))
    for k in range(args.images):
        f = pool[k % len(pool)]
        os.symlink(f, src / f"{k:05d}_{f.name}")
    found = discover([src])
    items, errors = found.items, found.problems
    assert len(items) == args.images and not errors, (len(items), errors)

    analyzer = Analyzer()
    analyzer.load()
    base = {"rss": rss_mb(), "threads": threading.active_count(), "fds": open_fds()}
    samples: list[tuple[int, float, int, int]] = []
    last = [0]

    def progress(p) -> None:  # noqa: ANN001
        if p.done - last[0] >= args.every or p.done == p.total:
            last[0] = p.done
            samples.append((p.done, rss_mb(), threading.active_count(), open_fds()))

    out = Path(tempfile.mkdtemp(prefix="xrv-load-out-"))
    t0 = time.perf_counter()
    summary = BatchRunner(analyzer, BatchOptions(out, formats=tuple(args.formats.split(",")), jobs=2,
                                                 batch_size=16), progress=progress).run(items)
    wall = time.perf_counter() - t0
    time.sleep(0.5)  # let the decode pool's threads finish exiting
    after = {"rss": rss_mb(), "threads": threading.active_count(), "fds": open_fds()}

    steady = [s for s in samples if s[0] >= warmup]
    slope = slope_per_1000([s[0] for s in steady], [s[1] for s in steady])
    rss = [s[1] for s in samples]
    log.info("%d images in %.0f s (%.1f images/s): ok %d, refused %d, errors %d",
             summary.total, wall, summary.total / wall, summary.ok, summary.refused, summary.errors)
    log.info("| measure | before | during (min-max) | after |")
    log.info("|---|---|---|---|")
    log.info("| RSS MB | %.0f | %.0f-%.0f | %.0f |", base["rss"], min(rss), max(rss), after["rss"])
    log.info("| threads | %d | %d-%d | %d |", base["threads"], min(s[2] for s in samples),
             max(s[2] for s in samples), after["threads"])
    log.info("| open files | %d | %d-%d | %d |", base["fds"], min(s[3] for s in samples),
             max(s[3] for s in samples), after["fds"])
    log.info("RSS slope after the first pass over the %d distinct images: %+.1f MB per 1,000 images "
             "(%d samples, %.0f -> %.0f MB)", warmup, slope, len(steady), steady[0][1], steady[-1][1])
    log.info("RSS MB by images done: %s", ", ".join(f"{d}:{r:.0f}" for d, r, _, _ in samples))


if __name__ == "__main__":
    main()
