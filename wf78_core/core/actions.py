"""Task actions: the context they receive and the built-in data-path actions."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from wf78_core.definitions import Operation, TaskDefinition
from wf78_core.errors import InvalidOperation, TaskTimeout, Wf78Error

if TYPE_CHECKING:
    from wf78_core.core.dispatch import Dispatcher

__all__ = ["TaskContext", "builtin_actions", "operation_from", "run_action", "worth_retrying"]


async def run_action(
    action: Callable[[TaskContext], Any], ctx: TaskContext, limit: float | None
) -> tuple[Any, Exception | None]:
    """One attempt of a task's action (sync or async) within ``limit`` seconds (its
    timeout): ``(value, None)``, or ``(None, error)`` when it raised or timed out."""
    try:
        with anyio.fail_after(limit):
            value = action(ctx)
            if inspect.isawaitable(value):
                value = await value
    except TimeoutError:
        return None, TaskTimeout(f"task {ctx.task.id!r} timed out after {limit}s")
    except Exception as error:
        return None, error
    return value, None


def worth_retrying(error: BaseException, owns_retry: bool, attempts: int, retry: int) -> bool:
    """Whether a task whose attempt number ``attempts`` failed with ``error`` runs again:
    wf78's own errors say whether they are retryable; others are; an action that retries
    by itself (``wf78_owns_retry``) has done so already."""
    retryable = getattr(error, "retryable", not isinstance(error, Wf78Error))
    exhausted = getattr(error, "exhausted", False) or owns_retry
    return bool(retryable) and not exhausted and attempts <= retry


class TaskContext:
    """What an action receives: its ``params``, its dependencies' ``results``, the run's
    ``context`` and the ``engine`` (the :class:`~wf78_core.Engine`); ``dispatcher`` is the
    engine's data path, which the built-in ``datasource.*`` actions use."""

    __slots__ = (
        "context",
        "dispatcher",
        "engine",
        "params",
        "priority",
        "results",
        "run_id",
        "task",
    )

    def __init__(
        self,
        *,
        engine: Any,
        dispatcher: Dispatcher,
        task: TaskDefinition,
        run_id: str,
        priority: int,
        context: dict[str, Any],
        results: dict[str, Any],
    ) -> None:
        self.engine = engine
        self.dispatcher = dispatcher
        self.task = task
        self.run_id = run_id
        self.priority = priority
        self.params = task.params
        self.context = context
        self.results = results


def operation_from(ctx: TaskContext) -> Operation:
    """The task's operation: its ``params`` overlaid with the run context's ``operation``."""
    fields: dict[str, Any] = dict(ctx.params)
    extra = ctx.context.get("operation")
    if isinstance(extra, Mapping):
        fields.update(extra)
    if "values" not in fields and isinstance(ctx.context.get("values"), Mapping):
        fields["values"] = ctx.context["values"]
    try:
        return msgspec.convert(fields, Operation)
    except msgspec.ValidationError as error:
        raise InvalidOperation(f"task {ctx.task.id!r}: bad operation: {error}") from error


async def select_action(ctx: TaskContext) -> dict[str, Any]:
    """``datasource.select``: decide the source (note 3.1 step one) and say why."""
    op = operation_from(ctx)
    name, reason = await ctx.dispatcher.router.choose_source(op, ctx.task, ctx.context)
    return {"data_source": name, "reason": reason}


async def execute_action(ctx: TaskContext) -> Any:
    """``datasource.execute``: run the operation (note 3.1 step two), with the task's
    timeout, retry and fallback, on the source chosen by a ``datasource.select``
    dependency when there is one."""
    op = operation_from(ctx)
    task = ctx.task
    reason = None
    if op.data_source is None and task.data_source is None:
        for result in ctx.results.values():
            if isinstance(result, Mapping) and isinstance(result.get("data_source"), str):
                op = msgspec.structs.replace(op, data_source=result["data_source"])
                reason = str(result.get("reason", "chosen by datasource.select"))
                break
    if op.timeout is None:
        timeout = task.timeout or ctx.dispatcher.settings.default_timeout
        if timeout is not None:
            op = msgspec.structs.replace(op, timeout=timeout)
    if op.retry is None:
        op = msgspec.structs.replace(op, retry=task.retry)
    if not op.fallback and task.fallback:
        op = msgspec.structs.replace(op, fallback=task.fallback)
    # A write that could double gets the same key every time this task of this run runs,
    # a run resumed after a crash included: a write that committed before is not made twice.
    op = ctx.dispatcher.prepare(op, (ctx.run_id, task.id))
    return await ctx.dispatcher.execute(op, ctx.priority, ctx.context, task=task, reason=reason)


def noop_action(ctx: TaskContext) -> None:
    """``noop``: does nothing (a join point in a DAG, or a benchmark task)."""
    return None


# The engine gives these actions the task's timeout and retry itself (per attempt).
execute_action.wf78_owns_retry = True  # type: ignore[attr-defined]


def builtin_actions() -> dict[str, Any]:
    return {
        "datasource.select": select_action,
        "datasource.execute": execute_action,
        "noop": noop_action,
    }
