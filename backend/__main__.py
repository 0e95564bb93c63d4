"""``python -m backend``: the command line (see ``backend/cli.py``)."""

from backend.cli import main

raise SystemExit(main())
