"""PyInstaller entry point: an absolute import, because a frozen script has no package."""

from xrayviewer.launcher import main

raise SystemExit(main())
