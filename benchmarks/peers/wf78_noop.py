"""The wf78 plugin of B11/B12: one action, ``noop``, that does nothing.

Workers load it with ``wf78 worker --plugin benchmarks.peers.wf78_noop``; the enqueuing
engine with ``Engine(config, plugins=[wf78_noop])``.
"""

from __future__ import annotations

from typing import Any

from wf78_core import hookimpl

__all__ = ["wf78_register_actions"]


async def _noop(ctx: Any) -> None:
    """Async, as the peers' no-op tasks are."""
    return None


@hookimpl
def wf78_register_actions(registry: Any) -> None:
    registry.add("noop", _noop)
