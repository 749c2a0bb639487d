"""One attempt of a task, as the in-process runner and the stream worker run it: with the
task's log fields bound (:mod:`wf78_core.core.logcontext`) and, when tracing is on, in its
``wf78.task {task}`` span (:mod:`wf78_core.core.tracing`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wf78_core.core import tracing
from wf78_core.core.actions import TaskContext, run_action
from wf78_core.core.logcontext import bind, unbind
from wf78_core.core.tracing import RunTrace, task_span

__all__ = ["run_task"]


async def run_task(
    action: Callable[[TaskContext], Any],
    ctx: TaskContext,
    limit: float | None,
    *,
    workflow: str,
    attempt: int,
    parent: RunTrace | str | None,
) -> tuple[Any, Exception | None]:
    """:func:`~wf78_core.core.actions.run_action` (``limit``: the attempt's timeout) with
    ``run_id``, ``task_id``, ``workflow`` and the task's ``data_source`` bound for log
    records and, when tracing is on, in a span whose parent is the run's span
    (:class:`RunTrace`) or the ``traceparent`` a queued run carried."""
    task = ctx.task
    fields = bind(
        run_id=ctx.run_id, task_id=task.id, workflow=workflow, data_source=task.data_source
    )
    try:
        tracer = tracing.TRACER
        if tracer is None:
            return await run_action(action, ctx, limit)
        with task_span(tracer, ctx.run_id, workflow, task, attempt, parent) as span:
            value, error = await run_action(action, ctx, limit)
            if error is not None:
                tracing.failed(span, error)
            return value, error
    finally:
        unbind(fields)
