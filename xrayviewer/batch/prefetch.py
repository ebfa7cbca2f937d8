"""Decode ahead of the models: a prefetching loader with bounded memory.

:class:`Prefetcher` runs a ``load`` function (read, hash, decode) on the inputs in background
threads while the caller analyses what was loaded before, and hands the results back in
input order. Two bounds keep memory flat whatever the films' size:

* ``window``: at most this many inputs are being loaded or waiting to be taken, and no
  more are handed to the threads than they can run at once (none queue up unstarted);
* ``budget``: no load starts while the results waiting to be taken weigh (``cost``, e.g. the
  decoded pixels' bytes) at least this much, so a folder of 2,000-pixel films holds a few
  decoded films ahead, a folder of 256-pixel PNGs many. What waits never exceeds the budget
  by more than the loads running when it was reached (one per thread).

Loading continues while the caller is busy (each finished load schedules the next), stops
at :meth:`close` (not-started loads are dropped, running ones finish), and a load that
raises re-raises in the caller when its turn comes, never earlier or later.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Prefetcher(Generic[T, R]):
    def __init__(self, items: Iterable[T], load: Callable[[T], R], *, workers: int = 2, window: int = 8,
                 budget: float | None = None, cost: Callable[[R], float] | None = None,
                 thread_name_prefix: str = "xrayviewer-prefetch") -> None:
        self._items = iter(items)
        self._load = load
        self._window = max(1, int(window))
        self._budget = budget
        self._cost = cost
        self._workers = max(1, int(workers))
        self._running = 0  # handed to the threads and not finished
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix=thread_name_prefix)
        self._lock = threading.Lock()
        self._queue: deque[Future[R]] = deque()  # in input order: loading, or loaded and waiting
        self._waiting_cost = 0.0  # of loaded results not yet taken
        self._costs: dict[int, float] = {}
        self._exhausted = False
        self._closed = False
        self._refill()

    # ------------------------------------------------------------------ scheduling
    def _refill(self) -> None:
        started = []
        with self._lock:
            while (not self._closed and not self._exhausted and len(self._queue) < self._window
                   and self._running < self._workers
                   and (self._budget is None or self._waiting_cost < self._budget)):
                try:
                    item = next(self._items)
                except StopIteration:
                    self._exhausted = True
                    break
                fut = self._pool.submit(self._load, item)
                self._running += 1
                self._queue.append(fut)
                started.append(fut)
        for fut in started:  # outside the lock: a load already done runs its callback right here
            fut.add_done_callback(self._loaded)

    def _loaded(self, fut: Future[R]) -> None:
        """A load finished (in a worker): count its cost, schedule the next."""
        c = 0.0
        if self._cost is not None and not fut.cancelled() and fut.exception() is None:
            try:
                c = float(self._cost(fut.result()))
            except Exception:  # noqa: BLE001 - a cost that cannot be measured never blocks loading
                c = 0.0
        with self._lock:
            self._running -= 1
            if c and fut in self._queue:  # not taken (nor dropped) meanwhile
                self._costs[id(fut)] = c
                self._waiting_cost += c
        self._refill()

    # ------------------------------------------------------------------ consuming
    def ready(self) -> bool:
        """Whether the next result can be taken without waiting (False when none is left)."""
        with self._lock:
            return bool(self._queue) and self._queue[0].done()

    def pending(self) -> bool:
        """Whether results remain to be taken."""
        with self._lock:
            return bool(self._queue) or not (self._exhausted or self._closed)

    def take(self) -> R:
        """The next result in input order (waits for it); raises what its load raised, or
        ``StopIteration`` when none is left."""
        with self._lock:
            if not self._queue and (self._closed or self._exhausted):
                raise StopIteration
            fut = self._queue[0] if self._queue else None
        if fut is None:  # between scheduling rounds: schedule, then try again
            self._refill()
            return self.take()
        try:
            return fut.result()
        finally:
            with self._lock:
                if self._queue and self._queue[0] is fut:
                    self._queue.popleft()
                self._waiting_cost -= self._costs.pop(id(fut), 0.0)
            self._refill()

    def __iter__(self) -> Iterator[R]:
        while True:
            try:
                yield self.take()
            except StopIteration:
                return

    # ------------------------------------------------------------------ stopping
    def close(self) -> None:
        """Stop loading: drop what has not started, wait for running loads, free the threads."""
        with self._lock:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            self._costs.clear()
            self._waiting_cost = 0.0
        for fut in dropped:
            fut.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
