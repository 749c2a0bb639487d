"""``python -m wf78_core.cli``."""

from wf78_core.cli import main

raise SystemExit(main())
