"""Purging idempotency keys past ``[engine] idempotency_ttl``: a step of maintenance.

Keys that do not expire by themselves are purged here: the callers' keys a SQL source
records with its writes (every source performing ``purge_idempotency``) and the run keys the
journal keeps (``engine.backend.purge_run_keys``). Redis expires its own markers and run keys.
"""

from __future__ import annotations

import time

from wf78_core.data.ports import EnginePort
from wf78_core.definitions import Operation

__all__ = ["PURGE_ACTION", "purge_keys"]

#: The action of a data source that forgets the callers' keys recorded before ``value``.
PURGE_ACTION = "purge_idempotency"


async def purge_keys(
    engine: EnginePort, *, priority: int | None = None, now: float | None = None
) -> tuple[int, int]:
    """Forget idempotency keys older than ``idempotency_ttl``: (data-source keys, run keys)
    forgotten. Every source in rotation able to is asked, through ``engine.submit``."""
    before = (time.time() if now is None else now) - engine.settings.idempotency_ttl
    purged = 0
    for source in engine.sources:
        if source.healthy and PURGE_ACTION in source.info.actions:
            op = Operation(action=PURGE_ACTION, data_source=source.name, value=before)
            purged += int((await engine.submit(op, priority=priority)).value)
    return purged, await engine.backend.purge_run_keys(before)
