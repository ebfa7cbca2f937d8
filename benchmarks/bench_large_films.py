"""``xrayviewer analyze`` from the command line, as a user runs it, on the films people have.

Two sets, each run in a fresh process (start-up included), default outputs unless --format:

* ``large``: the real chest DICOMs of ``shared/data/dicom`` (1841x1955 and 2000x2128 JPEG 2000,
  1024x1024 JPEG; the list in ``xrayviewer.training.source_eval``), ``--copies`` links each
  under distinct names in a temporary folder (the data are read in place, never copied);
* ``small``: ``--small-images`` 256-pixel COVID-QU-Ex/NIH PNGs (the 256-px figures of
  ``bench_pipeline.py``, through the command line).

Prints films/s (wall clock, start-up included), the median per film of the ``seconds``
column (decode + analysis) and of each stage, the CPU time the process used per film (less
sensitive than the wall clock to another job sharing the CPU) and its peak memory (max RSS),
next to the machine's CPU and vector extensions.

Run: python benchmarks/bench_large_films.py [--set large|small|both] [--copies 10] [--runs 1]
     [--max-isa avx2] [-- extra analyze options, e.g. --batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _machine  # puts this checkout on sys.path (xrayviewer is imported later, in main)

log = logging.getLogger("bench_large_films")

LARGE = ("RG1_J2KI.dcm", "966_fixed.dcm", "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")


def large_films() -> list[Path]:
    """The real chest DICOMs of 1,000 pixels and more (source_eval's list, small DX and the
    MONOCHROME1 twin of the SIIM sample left out: they repeat a size already there)."""
    d = _machine.data_dir() / "dicom"
    return [d / name for name in LARGE if (d / name).is_file()]


def small_films(n: int) -> list[Path]:
    d = _machine.data_dir()
    files = sorted((d / "covid-qu-ex" / "Val").glob("*/images/*.png"))
    files += sorted((d / "nih" / "X-Ray Image DataSet").glob("*/*.png"))
    step = max(1, len(files) // max(1, n))
    return files[::step][:n]


def link_inputs(files: list[Path], copies: int, folder: Path) -> int:
    folder.mkdir(parents=True)
    n = 0
    for c in range(copies):
        for f in files:
            os.symlink(f.resolve(), folder / f"{c:03d}_{f.name}")
            n += 1
    return n


def run_analyze(inputs: Path, out: Path, extra: list[str]) -> dict:
    """One ``python -m xrayviewer analyze`` in a fresh process: wall time and its own max RSS."""
    env = _machine.child_env()
    env.setdefault("XRAYVIEWER_HISTORY_DB", str(out.parent / f"{out.name}-history.sqlite"))
    env.setdefault("XRAYVIEWER_CONFIG_DIR", str(out.parent / f"{out.name}-config"))
    cmd = [sys.executable, "-m", "xrayviewer", "analyze", str(inputs), "--out", str(out), "-q", *extra]
    with open(out.parent / f"{out.name}.stdout", "w+b") as so, open(out.parent / f"{out.name}.stderr", "w+b") as se:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=str(_machine.REPO_ROOT), stdout=so, stderr=se)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (max RSS)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read().decode(errors="replace"), se.read().decode(errors="replace")
    if proc.returncode not in (0, 1):
        raise SystemExit(f"analyze failed ({proc.returncode}): {stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    stages: dict[str, list[float]] = {}
    for r in rows:
        for k, v in (r.get("timings") or {}).items():
            if k != "load_models":
                stages.setdefault(k, []).append(float(v))
    return {"wall": wall, "rows": rows, "peak_mb": usage.ru_maxrss / 1024, "stdout": stdout.strip(),
            "cpu": usage.ru_utime + usage.ru_stime,
            "stages": {k: statistics.median(v) for k, v in stages.items()},
            "seconds": statistics.median(float(r["seconds"]) for r in rows) if rows else float("nan")}


def bench(name: str, files: list[Path], copies: int, runs: int, extra: list[str], tmp: Path) -> None:
    inputs = tmp / f"{name}-in"
    n = link_inputs(files, copies, inputs)
    results = [run_analyze(inputs, tmp / f"{name}-out{r}", extra) for r in range(runs)]
    wall = statistics.median(r["wall"] for r in results)
    last = results[-1]
    status = {s: sum(r["status"] == s for r in last["rows"]) for s in ("ok", "refused", "error")}
    sizes = sorted({tuple(r.get("image_shape") or ()) for r in last["rows"]})
    log.info("")
    log.info("%s: %d films (%d files x %d), sizes %s; %s", name, n, len(files), copies,
             ", ".join("x".join(map(str, s[::-1])) for s in sizes if s), last["stdout"].splitlines()[0])
    log.info("| measure (%s, median of %d run%s) | value |", name, runs, "s" if runs > 1 else "")
    log.info("|---|---|")
    log.info("| films/s through `analyze` (wall clock, start-up included) | %.2f (%.1f s for %d) |", n / wall, wall, n)
    log.info("| per film, median of `seconds` (decode + analysis) | %.3f s |", last["seconds"])
    log.info("| per stage, median | %s |", ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in last["stages"].items()))
    log.info("| CPU time of the analyze process (user + system), per film | %.2f s (%.0f s in all) |",
             statistics.median(r["cpu"] for r in results) / n, statistics.median(r["cpu"] for r in results))
    log.info("| peak memory of the analyze process (max RSS) | %.0f MB |", max(r["peak_mb"] for r in results))
    log.info("| rows | %s |", ", ".join(f"{k} {v}" for k, v in status.items()))
    log.info("%s", _machine.markdown_row())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=("large", "small", "both"), default="large")
    parser.add_argument("--copies", type=int, default=10, help="links per large film (default 10)")
    parser.add_argument("--small-images", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1)
    _machine.add_isa_argument(parser)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: options passed to analyze")
    args = parser.parse_args()
    _machine.limit_isa(args.max_isa)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _machine.log_machine(log)
    extra = [a for a in args.extra if a != "--"]
    tmp = Path(tempfile.mkdtemp(prefix="xrv-bench-large-"))
    try:
        if args.set in ("large", "both"):
            films = large_films()
            if not films:
                raise SystemExit(f"no chest DICOMs under {_machine.data_dir() / 'dicom'}")
            bench("large", films, args.copies, args.runs, extra, tmp)
        if args.set in ("small", "both"):
            bench("small", small_films(args.small_images), 1, args.runs, extra, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
