"""What hooks are given and return, as the plugin layer sees it.

The engine's own objects (its agents, a task's context) live in layers above this one: the
hooks see them through these protocols, which those objects satisfy structurally.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeAlias, TypeVar, runtime_checkable

__all__ = ["Action", "AgentInfo", "Choice", "MaybeAwaitable", "Scope"]

T = TypeVar("T")

# A hook implementation may be a plain or a coroutine function.
MaybeAwaitable: TypeAlias = T | Awaitable[T]

# An ASGI connection scope, as the middleware passes it to ``wf78_authenticate``.
Scope: TypeAlias = dict[str, Any]

# A strategy's answer: a source (or source type) name, with the reason to report, or no opinion.
Choice: TypeAlias = str | tuple[str, str] | None

# A task action: ``fn(ctx)`` with a :class:`wf78_core.TaskContext` (``params``, ``results``,
# ``context``, ``engine``), returning the task's result or an awaitable of it.
Action: TypeAlias = Callable[[Any], Any]


@runtime_checkable
class AgentInfo(Protocol):
    """An agent as an allocator sees it (:class:`wf78_core.Agent` is one).

    ``capabilities`` holds the source names or types it serves; ``order`` is its place in
    ``[[agents.pool]]``; ``capacity`` is its concurrency and ``running`` how much of it is
    in use, so ``load`` is ``running / capacity``.
    """

    @property
    def id(self) -> str: ...

    @property
    def capabilities(self) -> tuple[str, ...]: ...

    @property
    def order(self) -> int: ...

    @property
    def capacity(self) -> int: ...

    @property
    def running(self) -> int: ...

    @property
    def load(self) -> float: ...

    @property
    def has_free_slot(self) -> bool: ...

    def serves(self, name: str, type: str) -> bool: ...
