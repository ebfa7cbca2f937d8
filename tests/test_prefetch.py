"""Decoding ahead of the models (issue 19): the prefetching loader hands results back in
input order, re-raises a failed load at its turn, stops cleanly, and keeps memory bounded
by count and by cost; the batch engine built on it keeps batches within their pixel bound,
loads the models while the first files decode, and writes one batch's outputs while the
next is analysed, journaling rows in order. Correctness only: no timings are asserted
(sleeps only shuffle the order in which loads finish)."""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from factories import png_bytes
from test_batch import ThresholdAnalyzer

from xrayviewer.batch import BatchOptions, BatchRunner, discover
from xrayviewer.batch.prefetch import Prefetcher
from xrayviewer.inference.control import CancelToken


class Loads:
    """A load function that records what is in flight (started, not yet taken)."""

    def __init__(self, fail: set[int] = frozenset(), jitter: float = 0.004, seed: int = 0) -> None:
        self.fail = fail
        self.jitter = jitter
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.started: list[int] = []
        self.taken = 0
        self.max_outstanding = 0

    def __call__(self, i: int) -> int:
        with self.lock:
            self.started.append(i)
            self.max_outstanding = max(self.max_outstanding, len(self.started) - self.taken)
            delay = self.rng.random() * self.jitter
        time.sleep(delay)  # loads finish out of order
        if i in self.fail:
            raise ValueError(f"bad item {i}")
        return i


def test_results_come_back_in_input_order_whatever_order_loads_finish() -> None:
    loads = Loads()
    with Prefetcher(range(60), loads, workers=4, window=6) as p:
        out = []
        for r in p:
            out.append(r)
            loads.taken += 1
    assert out == list(range(60))
    assert sorted(loads.started) == list(range(60))
    assert loads.max_outstanding <= 6  # never more than the window started and not taken


def test_a_failed_load_raises_at_its_turn_and_the_rest_go_on() -> None:
    loads = Loads(fail={3, 7})
    out: list[object] = []
    with Prefetcher(range(10), loads, workers=3, window=4) as p:
        while p.pending():
            try:
                out.append(p.take())
            except ValueError as exc:
                out.append(str(exc))
            except StopIteration:
                break
    assert out == [0, 1, 2, "bad item 3", 4, 5, 6, "bad item 7", 8, 9]


def test_close_stops_loading_and_joins_the_threads() -> None:
    loads = Loads(jitter=0.01)
    p = Prefetcher(range(1000), loads, workers=2, window=5, thread_name_prefix="test-prefetch-close")
    first = [p.take() for _ in range(3)]
    p.close()
    started = len(loads.started)
    time.sleep(0.05)
    assert first == [0, 1, 2]
    assert started <= 3 + 5 and len(loads.started) == started  # nothing starts after close
    assert not [t for t in threading.enumerate() if t.name.startswith("test-prefetch-close")]
    with pytest.raises(StopIteration):
        p.take()


def test_loading_pauses_while_the_waiting_results_exceed_the_budget() -> None:
    """Memory bound: the cost of results loaded and not yet taken stays below the budget plus
    the loads that were running when it was reached (at most one per worker)."""
    rng = random.Random(1)
    sizes = [rng.choice([1, 5, 20]) for _ in range(80)]
    lock = threading.Lock()
    waiting = {"cost": 0, "max": 0}

    def load(i: int) -> int:
        with lock:
            waiting["cost"] += sizes[i]
            waiting["max"] = max(waiting["max"], waiting["cost"])
        return i

    budget, workers = 30, 2
    with Prefetcher(range(80), load, workers=workers, window=50, budget=budget, cost=lambda i: sizes[i]) as p:
        for i in p:
            with lock:
                waiting["cost"] -= sizes[i]
            time.sleep(0.001)  # a slow consumer: loading runs ahead until the budget stops it
    assert waiting["cost"] == 0
    # counted from the start of each load to its receipt: the budget, the loads running when
    # it was reached, and the one being handed over
    assert waiting["max"] <= budget + (workers + 1) * max(sizes)
    assert waiting["max"] < 80 * 5  # far below loading everything ahead (the unbounded case)


def test_ready_tells_whether_the_next_result_is_loaded() -> None:
    gate = threading.Event()

    def load(i: int) -> int:
        if i == 1:
            gate.wait(5)
        return i

    with Prefetcher(range(3), load, workers=2, window=3) as p:
        assert p.take() == 0
        assert not p.ready()  # item 1 waits for the gate
        gate.set()
        assert p.take() == 1 and p.take() == 2
        assert not p.ready() and not p.pending()


# ------------------------------------------------------------------ the batch engine on it
@pytest.fixture()
def films(tmp_path: Path, data_dir: Path) -> Path:
    src = tmp_path / "films"
    src.mkdir()
    nih = sorted((data_dir / "nih" / "X-Ray Image DataSet" / "No_findings").glob("*.png"))[:12]
    for k, p in enumerate(nih):
        shutil.copy(p, src / f"{k:02d}_{p.name}")
    big = np.tile(np.arange(256, dtype=np.uint8), (1200, 5))[:, :1100]  # 1200x1100 = 1.32 MP
    for k in range(3):
        (src / f"{k:02d}_big.png").write_bytes(png_bytes(big))
    return src


class RecordingAnalyzer(ThresholdAnalyzer):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.batches: list[list[int]] = []
        self.preloaded_at: int | None = None

    def preload(self) -> None:
        self.preloaded_at = len(self.batches)

    def analyze_batch(self, images, *, cancel=None):
        self.batches.append([int(np.asarray(i.values).size) for i in images])
        return super().analyze_batch(images, cancel=cancel)


def test_engine_batches_stay_within_their_pixel_bound_and_rows_in_order(films: Path, tmp_path: Path) -> None:
    items = discover([films]).items
    analyzer = RecordingAnalyzer()
    opts = BatchOptions(tmp_path / "out", formats=("csv", "json", "png"), batch_size=8, max_batch_pixels=3_000_000)
    order: list[str] = []
    summary = BatchRunner(analyzer, opts, on_row=lambda r: order.append(Path(r["path"]).name)).run(items)
    assert analyzer.preloaded_at == 0  # the models start loading before the first batch
    assert summary.ok == len(items) and not summary.errors
    assert sorted(order) == sorted(i.path.name for i in items)
    assert order == sorted(order)  # journaled in input order (one writer, batches in order)
    for batch in analyzer.batches:
        assert len(batch) <= 8
        # a batch stops once it reaches the bound: all but its last film lie below it
        assert sum(batch[:-1]) < 3_000_000
    assert sum(len(b) for b in analyzer.batches) == len(items)
    for item in items:  # every output written before its row
        assert (tmp_path / "out" / f"{item.rel}.overlay.png").is_file()


def test_engine_cancel_keeps_the_written_rows_and_resumes(films: Path, tmp_path: Path) -> None:
    items = discover([films]).items
    token = CancelToken()
    out = tmp_path / "out"
    first = ThresholdAnalyzer(cancel_after=4, token=token)
    s1 = BatchRunner(first, BatchOptions(out, batch_size=2), cancel=token).run(items)
    assert s1.cancelled and 0 < s1.ok < len(items)
    second = ThresholdAnalyzer()
    s2 = BatchRunner(second, BatchOptions(out, batch_size=2)).run(items)
    assert not s2.cancelled and s2.ok == len(items) and s2.skipped == s1.ok
    assert set(second.seen).isdisjoint(first.seen[: s1.ok])
    assert not [t for t in threading.enumerate() if t.name.startswith(("xrayviewer-decode", "xrayviewer-write"))]


def test_preload_and_the_analysis_load_the_models_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from xrayviewer.inference.analyzer import Analyzer

    calls: list[str] = []

    def fake_load(self, progress) -> None:
        calls.append(threading.current_thread().name)
        time.sleep(0.05)
        self._classifier = object()

    monkeypatch.setattr(Analyzer, "_load", fake_load)
    a = Analyzer()
    a.preload()
    a.load()  # waits for the load the preload started
    a.preload()  # loaded: nothing more
    assert calls == ["xrayviewer-preload"] and a.loaded


def test_a_failed_preload_is_reported_by_the_analysis(monkeypatch: pytest.MonkeyPatch) -> None:
    from xrayviewer.inference.analyzer import Analyzer
    from xrayviewer.inference.device import DeviceError

    def failing(self, progress) -> None:
        raise DeviceError("no GPU here")

    monkeypatch.setattr(Analyzer, "_load", failing)
    a = Analyzer()
    a.preload()
    a._preload.join(5)
    with pytest.raises(DeviceError, match="no GPU"):
        a.load()


def test_engine_holds_a_bounded_number_of_decoded_films(tmp_path: Path) -> None:
    """Structural memory bound: however many large films a folder holds, the decoded films
    alive at any model call are at most one batch being analysed, one being written and what
    the prefetch bounds allow (its byte budget, plus one film per decode thread)."""
    import gc
    import weakref

    from xrayviewer.batch import engine

    src = tmp_path / "big"
    src.mkdir()
    film = (np.arange(1400 * 1300, dtype=np.uint32) % 251).astype(np.uint8).reshape(1400, 1300)
    for k in range(24):
        (src / f"{k:02d}.png").write_bytes(png_bytes(np.roll(film, k, axis=0)))
    items = discover([src]).items
    alive: weakref.WeakSet = weakref.WeakSet()
    real_load = engine.load_item

    def tracking_load(*a, **kw):
        out = real_load(*a, **kw)
        if out.image is not None:
            alive.add(out.image)
        return out

    counts: list[int] = []

    class Counting(ThresholdAnalyzer):
        def analyze_batch(self, images, *, cancel=None):
            gc.collect()
            counts.append(len(alive))
            return super().analyze_batch(images, cancel=cancel)

    per_film = 1400 * 1300 * 2  # values + display, uint8 each
    opts = BatchOptions(tmp_path / "out", formats=("csv", "png"), jobs=2, batch_size=8,
                        max_batch_pixels=2 * 1400 * 1300, prefetch_bytes=3 * per_film)
    engine.load_item = tracking_load
    try:
        summary = BatchRunner(Counting(), opts).run(items)
    finally:
        engine.load_item = real_load
    assert summary.ok == len(items)
    batch_films = 2  # max_batch_pixels holds two
    bound = batch_films * 2 + 3 + opts.jobs + 1  # analysed + written + budget + running decodes + handed over
    assert max(counts) <= bound, counts
    assert max(counts) < len(items) // 2  # and far from the whole folder
