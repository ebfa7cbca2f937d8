"""Progress and cancellation: core concepts shared by CLI, batch and GUI (no Tk here).

A progress callback receives ``(stage, fraction)``; a :class:`CancelToken` is checked
between stages, and :class:`AnalysisCancelled` is raised when it is set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import XRayViewerError

ProgressFn = Callable[[str, float], None]


class AnalysisCancelled(XRayViewerError):
    """The user cancelled; not an error in the input."""


class CancelToken:
    """Thread-safe cancel flag, set from any thread (GUI button, Ctrl+C handler)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise AnalysisCancelled("analysis cancelled")


def report(progress: ProgressFn | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, max(0.0, min(1.0, fraction)))
