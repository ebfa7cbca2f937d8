"""``python -m xrayviewer`` - same as the ``xrayviewer`` command."""

from .cli import main

raise SystemExit(main())
