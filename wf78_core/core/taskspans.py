"""One attempt of a task, as the in-process runner and the stream worker run it: with the
task's log fields bound (:mod:`wf78_core.core.logcontext`), as its run's tenant
(:data:`~wf78_core.core.fairness.TENANT`: its data operations wait in that tenant's turn)
and, when tracing is on, in its ``wf78.task {task}`` span (:mod:`wf78_core.core.tracing`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wf78_core.core import tracing
from wf78_core.core.actions import TaskContext, run_action
from wf78_core.core.fairness import TENANT
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
    tenant: str = "",
) -> tuple[Any, Exception | None]:
    """:func:`~wf78_core.core.actions.run_action` (``limit``: the attempt's timeout) with
    ``run_id``, ``task_id``, ``workflow``, the task's ``data_source`` and the run's
    ``tenant`` (``""``: none, left out) bound for log records, ``tenant`` as
    :data:`~wf78_core.core.fairness.TENANT` and, when tracing is on, in a span whose parent
    is the run's span (:class:`RunTrace`) or the ``traceparent`` a queued run carried."""
    task = ctx.task
    fields = bind(
        run_id=ctx.run_id,
        task_id=task.id,
        workflow=workflow,
        data_source=task.data_source,
        tenant=tenant or None,
    )
    as_tenant = TENANT.set(tenant)
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
        TENANT.reset(as_tenant)
        unbind(fields)
