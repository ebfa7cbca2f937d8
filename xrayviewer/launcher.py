"""Composition root: ``xrayviewer`` with no command (or with image paths) opens the viewer,
``xrayviewer <command> ...`` runs the command line.

This is the one module allowed to import the GUI (lazily): the rest of the package never
depends on it (tests/test_architecture.py).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from .cli import COMMANDS, setup_logging
from .cli import main as cli_main


def main(argv: Sequence[str] | None = None) -> int:
    from .inference.device import tune_allocator

    tune_allocator()  # before any large array: large films' buffers go back to the system
    args = list(sys.argv[1:] if argv is None else argv)
    if "--self-test" in args:
        return _finish(cli_main(args, self_test_steps=[("viewer", _check_viewer)]), argv)
    if args and (args[0] in COMMANDS or args[0].startswith("-")):
        return _finish(cli_main(args), argv)
    if args and args[0] == "view":
        args = args[1:]
    setup_logging(0)
    logging.getLogger(__name__).debug("starting the viewer with %s", args)
    from .gui.app import run  # Tk loads only when the viewer is wanted

    return run(args)


def _finish(rc: int, argv: Sequence[str] | None) -> int:
    """A command run from the command line (``argv`` None) that loaded TensorFlow ends
    without Python's interpreter shutdown, which with TensorFlow loaded takes about a second
    on a 2-core CPU (its modules and native thread pools torn down one by one) for nothing:
    every file we write is complete by then (atomic outputs, the fsynced journal, history
    rows committed as they come). Output is flushed and logging shut down first. Called from
    Python (tests, other programs: ``argv`` given), it returns normally."""
    if argv is None and "tensorflow" in sys.modules:
        import os

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        os._exit(rc)
    return rc


def _check_viewer() -> str:
    from .gui.selftest import check_gui  # Tk loads only for this check

    return check_gui()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
