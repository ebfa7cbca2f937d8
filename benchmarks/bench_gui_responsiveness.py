"""How long the Tk event loop is blocked while the viewer analyses images.

Opens a large real DICOM, then (a) analyses it, (b) runs a batch over real images, while a
5 ms ``after()`` ticker records the gaps between ticks. Target: the longest gap <= ~50 ms
(the window never freezes). Also reports the gaps with no work running (the baseline of
this machine's scheduler, measured in the same run). Needs a display (Xvfb is fine).

Also the time from pressing Analyze to the result on screen for the two 2,000-pixel chest
DICOMs (target <= 0.6 s; median of ``--repeat`` presses each).

Run: DISPLAY=:99 python benchmarks/bench_gui_responsiveness.py [--batch 40] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import _machine  # puts this checkout on sys.path (xrayviewer is imported later, in main)

log = logging.getLogger("bench_gui")


def data_dir() -> Path:
    return _machine.data_dir()


class Ticker:
    def __init__(self, root) -> None:  # noqa: ANN001
        self.root = root
        self.gaps: list[float] = []
        self.last = time.perf_counter()
        self.running = True
        root.after(5, self.tick)

    def tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append((now - self.last) * 1000)
        self.last = now
        if self.running:
            self.root.after(5, self.tick)

    def take(self) -> list[float]:
        g, self.gaps = self.gaps, []
        return g


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux
        return float("nan")


def pump(root, cond, timeout: float = 600) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        root.update()
        time.sleep(0.001)


def describe(name: str, gaps: list[float]) -> None:
    gaps = sorted(gaps)
    log.info("| %s | %d | %.1f | %.1f | %.1f |", name, len(gaps), statistics.median(gaps),
             gaps[int(0.99 * (len(gaps) - 1))], gaps[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3, help="Analyze presses per large film")
    _machine.add_isa_argument(parser)
    args = parser.parse_args()
    _machine.limit_isa(args.max_isa)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _machine.log_machine(log)
    from xrayviewer.gui.app import ViewerApp, create_root
    from xrayviewer.settings import Settings

    os.environ.setdefault("XRAYVIEWER_HISTORY_DB", str(Path(tempfile.mkdtemp()) / "h.db"))
    os.environ.setdefault("XRAYVIEWER_CACHE_DIR", tempfile.mkdtemp())  # cold thumbnail cache
    t0 = time.perf_counter()
    root = create_root()
    app = ViewerApp(root, Settings(accepted_notice_version=1), settings_path=Path(tempfile.mkdtemp()) / "s.json")
    root.update()
    log.info("window appeared in %.2f s (target < 1.5 s)", time.perf_counter() - t0)
    pump(root, lambda: app.session.models_state in ("ready", "failed"))
    if app.session.models_state != "ready":
        raise SystemExit(f"models unavailable: {app.session.analysis_error}")
    ticker = Ticker(root)
    t_end = time.monotonic() + 2
    pump(root, lambda: time.monotonic() > t_end)
    idle = ticker.take()
    app.open_path(data_dir() / "dicom" / "966_fixed.dcm")
    pump(root, lambda: app.session.image is not None)
    ticker.take()
    app.analyze()
    pump(root, lambda: app.session.analysis is not None and not app.tasks.busy("analyze"))
    t_end = time.monotonic() + 0.5
    pump(root, lambda: time.monotonic() > t_end)
    single = ticker.take()
    shown: dict[str, list[float]] = {}
    for name in ("966_fixed.dcm", "RG1_J2KI.dcm"):
        app.open_path(data_dir() / "dicom" / name)
        pump(root, lambda: app.session.image is not None and not app.tasks.busy("load"))
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            app.analyze()  # as the button does
            pump(root, lambda: app.session.analysis is not None and not app.tasks.busy("analyze"))
            root.update_idletasks()  # the redraw with the result
            shown.setdefault(name, []).append(time.perf_counter() - t0)
    ticker.take()
    src = Path(tempfile.mkdtemp())
    pool = sorted((data_dir() / "covid-qu-ex" / "Val").glob("*/images/*.png"))
    files = [pool[k % len(pool)] for k in range(args.batch)]  # repeated under distinct names past 632
    for k, f in enumerate(files):
        os.symlink(f, src / f"{k:05d}_{f.name}")
    # the thumbnails strip of the same folder (cold cache), then browsing it and a linked compare
    ticker.take()
    app.open_folder(src)
    pump(root, lambda: app.session.image is not None and not app.tasks.busy("thumbs"))
    for _ in range(5):
        app.step_file(1)
        pump(root, lambda: not app.tasks.busy("load"))
    thumbs = ticker.take()
    app.analyze()
    pump(root, lambda: app.session.analysis is not None and not app.tasks.busy("analyze"))
    app.show_compare(files[0])
    pump(root, lambda: app.compare.session.image is not None)
    ticker.take()
    for k in range(20):
        app.session.pan(5, 3)
        app.zoom(1.05 if k % 2 else 1 / 1.05)
        root.update()
    compare = ticker.take()
    app.close_compare()
    rss0 = _rss_mb()
    dlg = app.show_batch(src)
    dlg.out_var.set(str(Path(tempfile.mkdtemp()) / "out"))
    dlg.start()
    pump(root, lambda: dlg.summary is not None or dlg.error is not None)
    batch = ticker.take()
    ticker.running = False
    s = dlg.summary
    log.info("batch: %d images, ok %d, refused %d, errors %d in %.0f s; RSS %.0f MB before, %.0f MB after",
             s.total, s.ok, s.refused, s.errors, s.seconds, rss0, _rss_mb())
    log.info("| phase | ticks | median gap ms | p99 ms | max ms |")
    log.info("|---|---|---|---|---|")
    describe("idle (baseline)", idle)
    describe("analyse one 2000x2128 DICOM", single)
    describe(f"open a folder of {len(files)} (thumbnails, cold cache) and browse 5 films", thumbs)
    describe("compare: 20 linked pan/zoom redraws of both views", compare)
    describe(f"batch of {len(files)} images in the dialog", batch)
    log.info("")
    log.info("| Analyze pressed -> result shown (median of %d) | seconds | target |", args.repeat)
    log.info("|---|---|---|")
    for name, times in shown.items():
        img_shape = "x".join(map(str, _shape(name)))
        log.info("| %s (%s) | %.2f (all: %s) | <= 0.6 |", name, img_shape, statistics.median(times),
                 ", ".join(f"{t:.2f}" for t in times))
    log.info("%s", _machine.markdown_row())
    app.quit()


def _shape(name: str) -> tuple[int, int]:
    from xrayviewer.imaging import load_image

    rows, cols = load_image(data_dir() / "dicom" / name).shape
    return (cols, rows)


if __name__ == "__main__":
    main()
