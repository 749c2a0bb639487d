"""``python -m wf78_core.cli``."""

from wf78_core.cli import main

__all__: list[str] = []

raise SystemExit(main())
