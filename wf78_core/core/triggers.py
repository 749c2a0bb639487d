"""The ``schedule`` and ``event`` triggers: which workflows start, and when."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import anyio
from croniter import croniter

from wf78_core.core.lifecycle import Lifecycle
from wf78_core.core.ports import Backend
from wf78_core.definitions import WorkflowDefinition

__all__ = ["schedule_loop", "subscribers"]

logger = logging.getLogger("wf78.engine")


def subscribers(
    workflows: Iterable[WorkflowDefinition], event: str
) -> Iterator[WorkflowDefinition]:
    """The workflows an event starts."""
    for workflow in workflows:
        if workflow.trigger == "event" and workflow.event == event:
            yield workflow


async def schedule_loop(workflow: WorkflowDefinition, backend: Backend, life: Lifecycle) -> None:
    """Start a run of ``workflow`` at every tick of its cron string or interval."""
    schedule = workflow.schedule
    assert schedule is not None
    cron = croniter(schedule, datetime.now(UTC)) if isinstance(schedule, str) else None
    aligned = backend.aligned_ticks
    while True:
        if cron is not None:
            due = cron.get_next(datetime).timestamp()
        else:
            assert isinstance(schedule, int | float)
            period = float(schedule)
            # Aligned: every process wakes on the same multiples of the period.
            due = (time.time() // period + 1) * period if aligned else time.time() + period
        await anyio.sleep(max(due - time.time(), 0.0))
        if life.closing:
            return
        try:
            await backend.start_scheduled(workflow, due)
        except Exception as error:  # the backend is away: the next tick tries again
            logger.warning("scheduled run of %r skipped: %s", workflow.id, error)
