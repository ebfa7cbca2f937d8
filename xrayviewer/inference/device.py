"""Where TensorFlow runs: ``auto`` (GPU when TensorFlow sees one), ``cpu`` or ``gpu``, and
how it starts without filling stderr.

Must be applied before the first model is built; asking for ``gpu`` without one is a clear
error, not a silent fall-back.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import XRayViewerError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "gpu")

# absl/glog line header: severity, MMDD (0000 before absl is initialised), time, thread, file:line]
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_CONTINUATIONS = (b"To enable the following instructions:",)  # second line of cpu_feature_guard's message
_import_lock = threading.Lock()


class DeviceError(XRayViewerError):
    """The requested compute device is not available."""


def tf_min_log_level() -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as a number (0 show all, 1 hide info, 2 also warnings, 3 also
    errors); the command line sets it to 2 unless ``-v`` is given."""
    try:
        return max(0, min(3, int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))))
    except ValueError:
        return 0


def import_tensorflow() -> Any:
    """Import TensorFlow, keeping its start-up lines off stderr when ``TF_CPP_MIN_LOG_LEVEL``
    asks for it.

    TensorFlow 2.16+ logs through absl before absl is initialised, and those lines ("WARNING:
    All log messages before absl::InitializeLog() ...", "I0000 ... port.cc ... oneDNN custom
    operations are on") ignore ``TF_CPP_MIN_LOG_LEVEL``; no setting turns them off. So the
    import runs with the process's stderr (file descriptor 2, where C++ writes) sent to a
    temporary file, and afterwards everything but absl-format lines below the level and
    their preamble is written back: output from our code or other threads during those
    seconds is delayed, never lost. From level 2 on, absl's Python logging is set to errors
    only too. Level 0 (unset, or ``-v``): a plain import.
    """
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    level = tf_min_log_level()
    with _import_lock:
        with _stderr_filtered(level) if level > 0 else _nothing():
            import tensorflow as tf
    if level >= 2:
        try:
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_logging.ERROR)
        except ImportError:  # pragma: no cover - absl comes with TensorFlow
            pass
    return tf


def filter_startup_noise(data: bytes, level: int) -> bytes:
    """Drop absl/glog-format lines with a severity below ``level`` (I=0, W=1, E=2, F=3), the
    absl pre-initialisation preamble and known continuation lines; keep everything else."""
    if level <= 0:
        return data
    kept = []
    for line in data.splitlines(keepends=True):
        m = _ABSL_LINE.match(line)
        if m and "IWEF".index(m.group(1).decode()) < level:
            continue
        if line.startswith(_ABSL_PREAMBLE) or line.startswith(_CONTINUATIONS):
            continue
        kept.append(line)
    return b"".join(kept)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _stderr_filtered(level: int) -> Iterator[None]:
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no stderr (windowed app): nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (AttributeError, OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = filter_startup_noise(tmp.read(), level)
            while kept:
                kept = kept[os.write(2, kept):]


# glibc mallopt parameters
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_allocator(mmap_threshold: int = 1 << 20, arena_max: int = 2) -> bool:
    """Let freed image-sized buffers go back to the system at once (glibc only; a no-op
    elsewhere or when the user set ``MALLOC_*`` variables). True when applied.

    A 2,000-pixel film passes through many short-lived arrays of 4-17 MB. glibc serves
    blocks above a threshold with their own mappings, but after the first free it raises
    that threshold up to 32 MB, so later arrays come from the heap, whose freed space stays
    resident; each thread also gets its own heap. Fixing the threshold at 1 MB and the
    heaps at two keeps the resident size of a batch of 2,000-pixel films some 100-150 MB
    lower (``benchmarks/bench_large_films.py``) for a negligible cost.
    """
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
    return bool(mallopt(_M_ARENA_MAX, int(arena_max))) and ok


def configure_device(preference: str = "auto") -> str:
    """Configure TensorFlow and return the device actually used ("cpu" or "gpu")."""
    pref = preference.lower()
    if pref not in DEVICES:
        raise DeviceError(f"unknown device {preference!r}; use one of {', '.join(DEVICES)}")
    tf = import_tensorflow()

    gpus = tf.config.list_physical_devices("GPU")
    if pref == "gpu" and not gpus:
        raise DeviceError(
            "a GPU was requested but TensorFlow sees none (install tensorflow[and-cuda] and a CUDA driver, "
            "or use --device cpu / auto)"
        )
    try:
        if pref == "cpu":
            tf.config.set_visible_devices([], "GPU")
            return "cpu"
        for g in gpus:
            tf.config.experimental.set_memory_growth(g, True)
    except RuntimeError as exc:  # already initialised: keep what is configured
        log.info("TensorFlow devices already initialised (%s)", exc)
        visible = tf.config.get_visible_devices("GPU")
        if pref == "cpu" and visible:
            raise DeviceError("TensorFlow already started on the GPU; restart to use the CPU") from exc
        return "gpu" if visible else "cpu"
    return "gpu" if gpus else "cpu"
