"""Task state changes, handed to every ``wf78_task_event`` observer."""

from __future__ import annotations

import inspect
from typing import Any

import pluggy
from anyio.abc import TaskGroup

from wf78_core.events import TaskEvent
from wf78_core.plugin.manager import HookChain

__all__ = ["EventBus"]


class EventBus:
    """The observers of task events. ``bool(bus)`` is False when nobody listens, so the
    hot paths build no event at all."""

    __slots__ = ("_chain", "_group")

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._chain = HookChain(pm, "wf78_task_event")
        self._group: TaskGroup | None = None

    def __bool__(self) -> bool:
        return bool(self._chain)

    def attach(self, group: TaskGroup | None) -> None:
        """Where async observers run (None: they are closed unrun, as after shutdown)."""
        self._group = group

    def notify(self, event: TaskEvent) -> None:
        """Call observers in order; async ones are awaited in the attached task group."""
        for _, function, _ in self._chain.impls:
            result = function(event=event)
            if inspect.isawaitable(result):
                if self._group is not None:
                    self._group.start_soon(_await, result)
                else:
                    result.close()  # type: ignore[attr-defined]


async def _await(awaitable: Any) -> None:
    await awaitable
