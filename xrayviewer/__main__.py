"""``python -m xrayviewer`` - same as the ``xrayviewer`` command."""

from .launcher import main

raise SystemExit(main())
