"""The viewer's one background-task mechanism: threads do the work, the Tk thread gets the
progress messages and the results.

Loading an image, loading the models, analysing, exporting and the batch dialog's run all go
through :class:`BackgroundTasks`. Workers never touch Tk. A job receives a ``post``
function for progress messages; its messages and its result are put on a queue that the Tk
thread drains with ``after()`` polling (as Thonny's workdlg and Porcupine's git_status do).
Every job has a channel ("load", "analyze", ...) and a generation number; submitting a new
job on a channel (or :meth:`~BackgroundTasks.invalidate`) makes older ones stale, and the
messages and results of stale jobs are dropped instead of shown.

The class itself does not import Tk: without a widget nothing polls, and a test (or any
other loop) calls :meth:`~BackgroundTasks.drain` itself.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Post = Callable[[Any], None]


@dataclass
class _Event:
    channel: str
    generation: int
    kind: str  # "message", "done" or "error"
    value: Any


@dataclass
class _Job:
    on_done: Callable[[Any], None]
    on_error: Callable[[BaseException], None]
    on_message: Callable[[Any], None] | None


def _run_job(out: queue.Queue[_Event], channel: str, gen: int, fn: Callable[[Post], Any]) -> None:
    """Thread body. Holds no reference to Tk objects: if the last reference to a Tk object
    were dropped on this thread, Tcl would abort the process."""

    def post(message: Any) -> None:
        out.put(_Event(channel, gen, "message", message))

    try:
        value, kind = fn(post), "done"
    except BaseException as exc:  # delivered to on_error on the Tk thread
        value, kind = exc, "error"
    out.put(_Event(channel, gen, kind, value))


class BackgroundTasks:
    """Run callables on daemon threads; deliver their messages and results on the Tk thread.

    ``on_callback_error`` receives an exception raised by an ``on_done``/``on_error``/
    ``on_message`` callback (the viewer records it like any Tk callback error); the other
    events still get delivered and polling goes on.
    """

    def __init__(self, widget: Any | None = None, poll_ms: int = 25,
                 on_callback_error: Callable[[BaseException], None] | None = None) -> None:
        self._widget = widget
        self._poll_ms = poll_ms
        self._on_callback_error = on_callback_error
        self._queue: queue.Queue[_Event] = queue.Queue()
        self._generation: dict[str, int] = {}
        self._jobs: dict[tuple[str, int], _Job] = {}
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._closed = False
        self._after_id = widget.after(poll_ms, self._poll) if widget is not None else None

    def submit(self, channel: str, fn: Callable[[Post], Any], on_done: Callable[[Any], None],
               on_error: Callable[[BaseException], None], on_message: Callable[[Any], None] | None = None) -> int:
        """Start ``fn(post)`` on a thread; returns its generation. Older jobs on ``channel`` go stale.

        ``post(message)`` (from the worker) hands ``message`` to ``on_message`` on the Tk
        thread, in order and before the result, unless the job has gone stale meanwhile."""
        with self._lock:
            gen = self._generation.get(channel, 0) + 1
            self._generation[channel] = gen
            self._active[channel] = self._active.get(channel, 0) + 1
        self._jobs[(channel, gen)] = _Job(on_done, on_error, on_message)
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

    def drain(self) -> None:
        """Deliver everything the workers have finished or posted (on the calling thread)."""
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                return
            key = (event.channel, event.generation)
            if event.kind == "message":
                job = self._jobs.get(key)
            else:
                self._active[event.channel] = max(0, self._active.get(event.channel, 1) - 1)
                job = self._jobs.pop(key, None)
            if job is None or not self.is_current(*key):
                log.debug("dropping stale %s %s (generation %d)", event.channel, event.kind, event.generation)
                continue
            callback = {"message": job.on_message, "done": job.on_done, "error": job.on_error}[event.kind]
            if callback is None:
                continue
            try:
                callback(event.value)
            except Exception as exc:  # noqa: BLE001 - reported, and the other events still arrive
                if self._on_callback_error is None:
                    raise
                self._on_callback_error(exc)

    def _poll(self) -> None:
        if self._closed:
            return
        try:
            self.drain()
        finally:
            if not self._closed:  # a callback may have closed the window
                self._after_id = self._widget.after(self._poll_ms, self._poll)

    def close(self) -> None:
        self._closed = True
        if self._widget is None:
            return
        try:
            self._widget.after_cancel(self._after_id)
        except Exception:  # widget already destroyed
            pass
