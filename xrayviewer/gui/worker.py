"""Background work for the GUI: threads do the work, the Tk thread gets the results.

Workers never touch Tk. Each finished job is put on a queue that the Tk thread drains
with ``after()`` polling (as Thonny's workdlg and Porcupine's git_status do). Every job
has a channel ("load", "analyze", ...) and a generation number; submitting a new job on a
channel makes older ones stale, and stale results are dropped instead of shown.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class _Done:
    channel: str
    generation: int
    ok: bool
    value: Any


def _run_job(out: queue.Queue[_Done], channel: str, gen: int, fn: Callable[[], Any]) -> None:
    """Thread body. Holds no reference to Tk objects: if the last reference to a Tk object
    were dropped on this thread, Tcl would abort the process."""
    try:
        value, ok = fn(), True
    except BaseException as exc:  # delivered to on_error on the Tk thread
        value, ok = exc, False
    out.put(_Done(channel, gen, ok, value))


class BackgroundTasks:
    """Run callables on daemon threads and deliver results on the Tk thread."""

    def __init__(self, widget: Any, poll_ms: int = 25) -> None:
        self._widget = widget
        self._poll_ms = poll_ms
        self._queue: queue.Queue[_Done] = queue.Queue()
        self._generation: dict[str, int] = {}
        self._callbacks: dict[tuple[str, int], tuple[Callable[[Any], None], Callable[[BaseException], None]]] = {}
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._closed = False
        self._after_id = self._widget.after(self._poll_ms, self._poll)

    def submit(
        self,
        channel: str,
        fn: Callable[[], Any],
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
    ) -> int:
        """Start ``fn`` on a thread; returns its generation. Older jobs on ``channel`` go stale."""
        with self._lock:
            gen = self._generation.get(channel, 0) + 1
            self._generation[channel] = gen
            self._active[channel] = self._active.get(channel, 0) + 1
        self._callbacks[(channel, gen)] = (on_done, on_error)

        threading.Thread(
            target=_run_job, args=(self._queue, channel, gen, fn), name=f"xrayviewer-{channel}-{gen}", daemon=True
        ).start()
        return gen

    def invalidate(self, channel: str) -> None:
        """Make any running job on ``channel`` stale (e.g. a new image was opened)."""
        with self._lock:
            self._generation[channel] = self._generation.get(channel, 0) + 1

    def is_current(self, channel: str, generation: int) -> bool:
        return self._generation.get(channel) == generation

    def busy(self, channel: str) -> bool:
        return self._active.get(channel, 0) > 0

    def _poll(self) -> None:
        if self._closed:
            return
        try:
            while True:
                done = self._queue.get_nowait()
                self._active[done.channel] = max(0, self._active.get(done.channel, 1) - 1)
                callbacks = self._callbacks.pop((done.channel, done.generation), None)
                if callbacks is None or not self.is_current(done.channel, done.generation):
                    log.debug("dropping stale %s result (generation %d)", done.channel, done.generation)
                    continue
                on_done, on_error = callbacks
                if done.ok:
                    on_done(done.value)
                else:
                    on_error(done.value)
        except queue.Empty:
            pass
        self._after_id = self._widget.after(self._poll_ms, self._poll)

    def close(self) -> None:
        self._closed = True
        try:
            self._widget.after_cancel(self._after_id)
        except Exception:  # widget already destroyed
            pass
