"""Reliability guarantees: killed batches resume exactly once, no network use, no models needed to view."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

KILLABLE = r"""
import sys, time
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from test_batch import ThresholdAnalyzer
from xrayviewer.batch import BatchOptions, BatchRunner, discover

class SlowAnalyzer(ThresholdAnalyzer):
    def analyze_batch(self, images, *, cancel=None):
        time.sleep(0.05)
        return super().analyze_batch(images, cancel=cancel)

items = discover([Path(sys.argv[1])]).items
BatchRunner(SlowAnalyzer(), BatchOptions(Path(sys.argv[2]), formats=("csv", "json", "png", "pdf"), batch_size=2)).run(items)
"""


def test_sigkill_at_random_points_then_resume(tmp_path: Path, data_dir: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    files = sorted((data_dir / "nih" / "X-Ray Image DataSet" / "No_findings").glob("*.png"))[:24]
    for p in files:
        shutil.copy(p, src / p.name)
    out = tmp_path / "out"
    script = tmp_path / "run.py"
    script.write_text(KILLABLE)
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(src), str(out), str(TESTS)])
        time.sleep(rng.uniform(1.0, 3.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2, "the batch finished too fast to be interrupted"
    # Final, uninterrupted run.
    subprocess.run([sys.executable, str(script), str(src), str(out), str(TESTS)], check=True, timeout=300)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in files)  # each exactly once
    assert all(r["status"] == "ok" for r in rows)
    jsonl = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(jsonl) == len(files)
    # No half-written outputs: no temp files, and every PNG/PDF is complete.
    assert not list(out.rglob("*.tmp"))
    from PIL import Image

    for png in out.rglob("*.png"):
        Image.open(png).load()
    for pdf in out.rglob("*.pdf"):
        assert pdf.read_bytes().rstrip().endswith(b"%%EOF")


NO_NETWORK = r"""
import socket, sys
def refuse(*a, **k):
    raise OSError("network access attempted")
class NoNetSocket(socket.socket):
    def __init__(self, family=-1, *a, **k):
        if family in (-1, socket.AF_INET, socket.AF_INET6):
            refuse()
        super().__init__(family, *a, **k)
    connect = connect_ex = sendto = refuse
socket.socket = NoNetSocket
socket.create_connection = refuse
socket.getaddrinfo = refuse
from xrayviewer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_cli_works_with_sockets_blocked(tmp_path: Path, dicom_dir: Path) -> None:
    script = tmp_path / "nonet.py"
    script.write_text(NO_NETWORK)
    proc = subprocess.run([sys.executable, str(script), "info", "--json", *map(str, sorted(dicom_dir.glob("*.dcm")))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "network access attempted" not in proc.stdout + proc.stderr
    assert len(proc.stdout.splitlines()) == len(list(dicom_dir.glob("*.dcm")))


def test_viewer_opens_images_without_models(display: str, tmp_path: Path, dicom_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from test_gui import pump

    monkeypatch.setenv("XRAYVIEWER_MODELS_DIR", str(tmp_path / "no-models"))
    monkeypatch.setenv("XRAYVIEWER_HISTORY_DB", str(tmp_path / "h.db"))
    from xrayviewer.gui.app import ViewerApp, create_root
    from xrayviewer.settings import Settings

    root = create_root()
    app = ViewerApp(root, Settings(accepted_notice_version=1), settings_path=tmp_path / "s.json")
    pump(app, lambda: app.session.models_state == "failed", timeout=60)
    assert "card" in app.results.text() and "Viewing still works" in app.results.text()
    app.open_path(dicom_dir / "dx_image.dcm")
    pump(app, lambda: app.session.image is not None)
    assert app.render_current() is not None
    app.analyze()
    assert "unavailable" in app.status_var.get()
    assert app.callback_errors == []
    app.quit()


def test_long_batch_keeps_memory_threads_and_files_flat(tmp_path: Path, data_dir: Path) -> None:
    """2,000 real images (repeated under distinct names) through the batch engine: resident
    memory does not grow per image after warm-up, and no thread or file handle is leaked.
    (The engine with a cheap analyzer; benchmarks/bench_load.py does the same with the real
    models and reports the figures.)"""
    import threading

    from test_batch import ThresholdAnalyzer

    from xrayviewer.batch import BatchOptions, BatchRunner, discover

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    if not Path("/proc/self/statm").exists():
        pytest.skip("needs /proc (Linux)")
    pool = sorted((data_dir / "covid-qu-ex" / "Val").glob("*/images/*.png"))[:300]
    src = tmp_path / "src"
    src.mkdir()
    n = 2000
    for k in range(n):
        os.symlink(pool[k % len(pool)], src / f"{k:05d}_{pool[k % len(pool)].name}")
    found = discover([src])
    items, errors = found.items, found.problems
    assert len(items) == n and not errors
    fds_before = len(os.listdir("/proc/self/fd"))
    threads_before = threading.active_count()
    samples: list[tuple[int, float]] = []

    def progress(p) -> None:  # noqa: ANN001
        if not samples or p.done - samples[-1][0] >= 100:
            samples.append((p.done, rss_mb()))

    summary = BatchRunner(ThresholdAnalyzer(), BatchOptions(tmp_path / "out", formats=("csv", "json"), batch_size=16),
                          progress=progress).run(items)
    assert summary.ok == n and summary.errors == 0
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == threads_before
    assert len(os.listdir("/proc/self/fd")) <= fds_before
    # After the first quarter (allocator warm-up), memory stays within a few MB: a leak of even
    # 20 kB per image would add 30 MB over the remaining 1,500 images.
    steady = [r for d, r in samples if d >= n // 4]
    assert max(steady) - steady[0] < 15, samples
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(rows) == n + 1


LEAK_PROBE = r"""
import os, sys
from xrayviewer.errors import CorruptImageError
from xrayviewer.imaging import load_image
data = open(sys.argv[1], "rb").read()
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
def once():
    try:
        load_image(data, name="bad-jpeg-ls.dcm")
    except CorruptImageError as exc:
        assert "JPEG-LS" in str(exc), exc
    else:
        raise SystemExit("the corrupt stream decoded")
once(); once()  # warm-up: the first loads set the allocator's high-water mark
before = rss_mb()
for _ in range(10):
    once()
print(rss_mb() - before)
"""


def test_corrupt_jpeg_ls_does_not_leak_memory(tmp_path: Path) -> None:
    """The atheris job found that a corrupt JPEG-LS stream made pylibjpeg-libjpeg leak its
    output buffer on every attempt (~16 MB per load of a 2048x2048 image). The stream is
    built here: encode with CharLS, then mutate bytes until both decoders reject it; memory
    is measured in a fresh process (pytest's log capture keeps tracebacks, and their arrays,
    alive until the test ends)."""
    import io
    import random

    import jpeg_ls
    import libjpeg
    import numpy as np
    import pydicom
    from factories import make_dicom
    from pydicom.encaps import encapsulate

    if not Path("/proc/self/statm").exists():
        pytest.skip("needs /proc (Linux)")
    pixels = (np.add.outer(np.arange(2048), np.arange(2048)) % 4096).astype(np.uint16)
    stream = bytes(jpeg_ls.encode(pixels))
    rng = random.Random(1)
    bad = None
    for _ in range(300):
        d = bytearray(stream)
        for _ in range(3):
            d[rng.randrange(len(d))] = rng.randrange(256)
        d = bytes(d)
        try:
            jpeg_ls.decode(np.frombuffer(d, np.uint8))
            continue
        except Exception:
            pass
        try:
            libjpeg.decode(d)
        except Exception:
            bad = d
            break
    assert bad is not None, "no stream that both decoders reject"
    ds = pydicom.dcmread(io.BytesIO(make_dicom(pixels, transfer_syntax="1.2.840.10008.1.2.4.80")))
    ds.PixelData = encapsulate([bad])
    path = tmp_path / "bad-jpeg-ls.dcm"
    ds.save_as(path)
    out = subprocess.run([sys.executable, "-c", LEAK_PROBE, str(path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    growth = float(out.stdout.strip().splitlines()[-1])
    assert growth < 40, f"RSS grew {growth:.0f} MB over ten loads of a corrupt JPEG-LS file"  # was ~160


def test_stale_temp_files_of_dead_writers_are_removed_live_ones_kept(tmp_path: Path) -> None:
    """A run killed during an atomic write leaves '.<name>.<pid>.<random>.tmp'; the next run
    removes it, but never a temp file whose writer is alive (another run writing now), nor
    a file of another name."""
    import os
    import subprocess
    import sys

    from xrayviewer.fsutil import atomic_write_bytes, remove_stale_temp_files

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    stale = sub / f".x.png.{dead_pid}.k3j_9q.tmp"
    live = tmp_path / f".y.csv.{os.getpid()}.abc123.tmp"
    other = tmp_path / ".notes.tmp"
    for f in (stale, live, other):
        f.write_bytes(b"partial")
    assert remove_stale_temp_files(tmp_path) == 1
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temp_files(tmp_path / "missing") == 0
    target = atomic_write_bytes(tmp_path / "z.bin", b"ok")  # our own names carry our pid
    assert target.read_bytes() == b"ok" and not list(tmp_path.glob(".z.bin.*"))
