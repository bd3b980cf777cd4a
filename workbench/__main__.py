"""``python -m workbench ...``: the command line (the same as the ``workbench`` script)."""

from .run.cli import main

raise SystemExit(main())
