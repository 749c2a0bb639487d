"""Concurrency keys of workflows: at most ``max_per_key`` running runs per value of a
context field (Hatchet's concurrency keys).

``[[workflows]] concurrency_key = "context.customer_id"`` with ``max_per_key = 2`` lets
two runs of that workflow per customer run at once; a third run of the same customer
waits, holding nothing, in priority order (aged like every waiter) until one of them
finishes, while other customers' runs start at once. Each key value is a
:class:`~wf78_core.core.scheduling.Limit` of ``max_per_key`` slots, made when a run first
asks for that value and dropped once no run holds or waits for it, so a million customers
cost memory only while they have runs. A run holds its key's slot from the moment it
starts until it finishes (whatever its tasks do in between); a run cancelled while it
waits frees nothing, since it held nothing.

Like Hatchet, where a concurrency expression that reads a missing input field fails the
run, a run whose context has no such field (or has it ``null``) fails at once with an
error naming the field, instead of being counted under some shared key. Values are
compared as text (``1`` and ``"1"`` are one key). A dotted path reads nested objects
(``context.customer.id``).

Here the keys are kept by the process that runs the runs (the in-process backend); with
``[engine] backend = "redis"`` the same rules hold for the whole cluster, kept in Redis by
the backend's Lua scripts (wf78_core.cluster.shares), which read a run's key with
:func:`key_value`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from wf78_core.core.scheduling import Limit, Scheduler, Waiter
from wf78_core.definitions import WorkflowDefinition

__all__ = ["PREFIX", "ConcurrencyKeys", "key_value"]

#: What every ``concurrency_key`` starts with: the field is read from the run's context.
PREFIX = "context."

_MISSING = object()


def key_value(path: str, context: Mapping[str, Any]) -> str | None:
    """The key of a run: the value at ``path`` (``context.a.b``) as text, or None if absent
    or null."""
    value: Any = context
    for part in path.removeprefix(PREFIX).split("."):
        value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
        if value is _MISSING or value is None:
            return None
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


class ConcurrencyKeys:
    """The key limits of every workflow with a ``concurrency_key``, taken per run."""

    def __init__(self, workflows: Iterable[WorkflowDefinition], scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._keyed = {
            w.id: (w.concurrency_key, w.max_per_key or 1) for w in workflows if w.concurrency_key
        }
        self._limits: dict[tuple[str, str], Limit] = {}
        # run id -> (workflow, key value) and the key limit it holds a slot of
        self._held: dict[str, tuple[tuple[str, str], Limit]] = {}
        # run id -> (workflow, key value) and its place in that key limit's queue
        self._waiting: dict[str, tuple[tuple[str, str], Waiter]] = {}

    def admit(
        self,
        run_id: str,
        workflow: WorkflowDefinition,
        context: Mapping[str, Any],
        priority: int,
        start: Callable[[], object],
    ) -> str | None:
        """Call ``start`` once the run may run: now, or when its key has a free slot.

        Returns an error (and calls nothing) when the run's context lacks the key's field.
        """
        keyed = self._keyed.get(workflow.id)
        if keyed is None or run_id in self._held:
            start()
            return None
        path, capacity = keyed
        value = key_value(path, context)
        if value is None:
            return (
                f"concurrency_key {path!r}: the run's context has no "
                f"{path.removeprefix(PREFIX)!r} (or it is null)"
            )
        key = (workflow.id, value)
        limit = self._limits.get(key)
        if limit is None:
            limit = self._limits[key] = Limit(f"workflow:{workflow.id}:key:{value}", capacity)

        def granted() -> None:
            self._waiting.pop(run_id, None)
            self._held[run_id] = (key, limit)
            start()

        waiter = self._scheduler.enqueue(priority, limit.alone, granted)
        if waiter.state == 0:
            self._waiting[run_id] = (key, waiter)
        return None

    def leave(self, run_id: str) -> None:
        """The run finished or was cancelled: give back its slot, or its place in line."""
        waiting = self._waiting.pop(run_id, None)
        if waiting is not None:
            key, waiter = waiting
            self._scheduler.withdraw(waiter)
            self._drop_if_idle(key)
            return
        held = self._held.pop(run_id, None)
        if held is not None:
            key, limit = held
            self._scheduler.release(limit.alone)  # may start the next run of this key
            self._drop_if_idle(key)

    def _drop_if_idle(self, key: tuple[str, str]) -> None:
        limit = self._limits.get(key)
        if limit is not None and limit.in_use == 0 and limit.waiting == 0:
            del self._limits[key]

    def waiting(self, run_id: str) -> bool:
        """Whether the run waits for a slot of its key."""
        return run_id in self._waiting

    def limits(self) -> dict[tuple[str, str], Limit]:
        """The key limits in use: (workflow, key value) -> its limit."""
        return dict(self._limits)
