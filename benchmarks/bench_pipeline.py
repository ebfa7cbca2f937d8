"""Speed of the full analysis on real images, next to the seed projects' naive baseline.

Measures, on the 2-core CPU (or whatever this machine is):
  * warm per-image latency of ``Analyzer.analyze`` (median over images, after warm-up);
  * folder throughput of the batch engine on >= 200 real images (csv outputs, median of runs);
  * the naive baseline measured in the same run: per image, PIL decode then
    ``model.predict()`` on each of the four models in turn (no batching, no overlap);
  * cold start to first result (a fresh process: TensorFlow's import and the models' load
    started in the background, ``Analyzer.preload``, while the first file decodes, as the
    viewer and ``analyze`` do) and peak memory (max RSS);
  * the median time of each stage per image (from the results' timings).

``--device cpu|gpu|auto`` selects where the models run (``auto``: the GPU when TensorFlow
sees one); ``benchmarks/gpu_check.sh`` runs this with ``--device gpu``. The machine's CPU and
vector extensions are printed first.

Run: python benchmarks/bench_pipeline.py [--images 200] [--runs 3] [--device cpu] [--max-isa avx2]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _machine  # puts this checkout on sys.path (xrayviewer is imported later, in main)

log = logging.getLogger("bench_pipeline")


def data_dir() -> Path:
    return _machine.data_dir()


def real_images(n: int) -> list[Path]:
    d = data_dir()
    files = sorted((d / "covid-qu-ex" / "Val").glob("*/images/*.png"))
    files += sorted((d / "nih" / "X-Ray Image DataSet").glob("*/*.png"))
    step = max(1, len(files) // n)
    return files[::step][:n]


def naive_baseline(paths: list[Path]) -> float:
    """Images/s of the seed projects' loop: decode, then model.predict() per model per image."""
    import numpy as np
    from PIL import Image

    from xrayviewer.inference.analyzer import Analyzer
    from xrayviewer.modellayer import modelstore
    from xrayviewer.modellayer.preprocessing import prepare_for_model

    # The same models the pipeline uses (the opacity model only when it is bundled).
    models = [modelstore.load_model(m.name) for m in Analyzer().model_infos()]
    t0 = time.perf_counter()
    for p in paths:
        grey = np.asarray(Image.open(p).convert("L"))
        for model, card in models:
            model.predict(prepare_for_model(grey, card.input_size)[None], verbose=0)
    return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-images", type=int, default=30)
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="where the models run (auto: the GPU when TensorFlow sees one)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline loop")
    _machine.add_isa_argument(parser)
    args = parser.parse_args()
    _machine.limit_isa(args.max_isa)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _machine.log_machine(log)

    from xrayviewer.batch import BatchOptions, BatchRunner, discover
    from xrayviewer.imaging import load_image
    from xrayviewer.inference.analyzer import Analyzer

    paths = real_images(args.images)
    log.info("%d real images from %s; device %s", len(paths), data_dir(), args.device)

    # Cold start: a fresh interpreter, import to first result; the models load in the
    # background (preload) while the file decodes, as in the viewer and `analyze`.
    code = ("import time; t=time.perf_counter(); from xrayviewer.imaging import load_image;"
            "from xrayviewer.inference.analyzer import Analyzer;"
            f"a=Analyzer(device={args.device!r}); a.preload(); img=load_image({str(paths[0])!r});"
            "a.analyze(img); print(time.perf_counter()-t)")
    colds = []
    for _ in range(max(1, args.runs - 1)):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=_machine.child_env())
        colds.append(float(out.stdout.strip().splitlines()[-1]))

    analyzer = Analyzer(device=args.device)
    analyzer.load()
    log.info("models on %s", analyzer.device)
    images = [load_image(p) for p in paths[: args.latency_images]]
    analyzer.analyze(images[0])  # warm-up
    lat = []
    stages: dict[str, list[float]] = {}
    for img in images:
        t0 = time.perf_counter()
        res = analyzer.analyze(img)
        lat.append(time.perf_counter() - t0)
        for k, v in res.timings.items():
            stages.setdefault(k, []).append(v)

    tmp = Path(tempfile.mkdtemp(prefix="xrv-bench-"))
    try:
        src = tmp / "in"
        src.mkdir()
        for i, p in enumerate(paths):
            os.symlink(p, src / f"{i:04d}_{p.name}")
        items = discover([src]).items
        rates = []
        for r in range(args.runs):
            out = tmp / f"out{r}"
            t0 = time.perf_counter()
            BatchRunner(analyzer, BatchOptions(out, formats=("csv",), jobs=2, batch_size=16)).run(items)
            rates.append(len(items) / (time.perf_counter() - t0))
        naive = ([] if args.no_naive else
                 [naive_baseline(paths[: min(60, len(paths))]) for _ in range(max(1, args.runs - 1))])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    thr = statistics.median(rates)
    log.info("")
    log.info("| measure | value |")
    log.info("|---|---|")
    log.info("| warm latency per image, median (p90) | %.3f s (%.3f s) |", statistics.median(lat),
             sorted(lat)[int(0.9 * (len(lat) - 1))])
    log.info("| per stage, median | %s |", ", ".join(f"{k} {statistics.median(v) * 1000:.0f} ms"
                                                    for k, v in stages.items() if k != "load_models"))
    log.info("| folder throughput, %d images, median of %d | %.2f images/s |", len(paths), args.runs, thr)
    if naive:
        base = statistics.median(naive)
        log.info("| naive predict() loop (same run) | %.2f images/s |", base)
        log.info("| speed-up over naive | %.1fx |", thr / base)
    log.info("| cold start to first result, median | %.1f s |", statistics.median(colds))
    log.info("| peak memory (max RSS) | %.0f MB |", peak_mb)
    log.info("| device | %s |", analyzer.device)
    log.info("%s", _machine.markdown_row())


if __name__ == "__main__":
    main()
