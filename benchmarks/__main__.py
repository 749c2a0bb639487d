"""``python -m benchmarks``: the same as ``python benchmarks/run.py``."""

from __future__ import annotations

from benchmarks.run import main

raise SystemExit(main())
