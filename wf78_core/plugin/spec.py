"""The hooks of the ``wf78`` pluggy project. Every hook may be sync or async.

wf78 calls implementations itself and awaits what they return when it is awaitable, hence
the ``MaybeAwaitable`` return types. Hook and parameter names are part of the public
contract; an implementation may take any subset of a hook's parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pluggy

from wf78_core.config import Identity
from wf78_core.definitions import Operation, TaskDefinition
from wf78_core.events import TaskEvent
from wf78_core.plugin.datasource import DataSourceFactory, SourceInfo
from wf78_core.plugin.registry import Registry
from wf78_core.plugin.types import Action, AgentInfo, Choice, MaybeAwaitable, Scope

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("wf78")
hookimpl = pluggy.HookimplMarker("wf78")


@hookspec
def wf78_register_datasources(
    registry: Registry[DataSourceFactory | str],
) -> MaybeAwaitable[None]:
    """Add data-source adapter factories: ``registry.add("sqlite", factory)``.

    :param registry: a :class:`wf78_core.plugin.Registry`; two plugins adding one name
        is a start-up error, but an entry added with ``default=True`` (the built-ins)
        gives way to a plugin's.

    A factory (or a ``"module:attribute"`` string naming one, imported when a configured
    source first needs it) is called as ``factory(spec)`` with a
    :class:`wf78_core.plugin.SourceSpec` and returns an object following
    :class:`wf78_core.plugin.DataSource`. It may carry an ``Options`` msgspec Struct used to
    validate the type-specific keys of its config. An adapter whose driver is an optional
    package imports it through :func:`wf78_core.plugin.require_driver`.
    """


@hookspec
def wf78_register_actions(registry: Registry[Action]) -> MaybeAwaitable[None]:
    """Add named task actions: ``registry.add("name", fn)``.

    :param registry: a :class:`wf78_core.plugin.Registry`; two plugins adding one name
        is a start-up error, but an entry added with ``default=True`` (the built-ins)
        gives way to a plugin's.

    ``fn(ctx)`` may be sync or async and returns the task's result; ``ctx`` is a
    :class:`wf78_core.TaskContext` with ``params``, ``results``, ``context`` and ``engine``.
    """


@hookspec
def wf78_select_datasource(
    operation: Operation,
    task: TaskDefinition | None,
    context: Mapping[str, Any],
    candidates: Sequence[SourceInfo],
) -> MaybeAwaitable[Choice]:
    """Choose the data source for an operation that does not name one.

    :param operation: the :class:`~wf78_core.Operation` to serve.
    :param task: the :class:`~wf78_core.TaskDefinition` it belongs to, or ``None`` for
        ``engine.submit``.
    :param context: the run's context mapping (may be empty).
    :param candidates: the healthy sources able to perform the action, as
        :class:`wf78_core.plugin.SourceInfo`, best first.

    Return a source name (or ``(name, reason)``), or ``None`` to let the next strategy
    decide. Strategies are asked in pluggy order; built-ins are ``trylast``.
    """


@hookspec
def wf78_allocate_agent(
    task: Operation, agents: Sequence[AgentInfo]
) -> MaybeAwaitable[AgentInfo | None]:
    """Choose the agent that runs a task.

    :param task: the :class:`~wf78_core.Operation` about to run.
    :param agents: the agents in rotation that serve its data source and have a free slot,
        as :class:`wf78_core.plugin.AgentInfo` (the engine's :class:`wf78_core.Agent`).

    Return one of ``agents``, or ``None`` to let the engine take the first free agent.
    Only the plugin named in ``[agents] allocator`` (``least_load`` by default, or
    ``priority``, or a third party's plugin name) is asked.
    """


@hookspec
def wf78_authenticate(scope: Scope) -> MaybeAwaitable[Identity | None]:
    """Return the caller's :class:`~wf78_core.Identity` for an ASGI ``scope``, or ``None``.

    The built-in bearer-token lookup (``[auth.tokens]``, then ``[auth] guest``) is a
    ``trylast`` implementation: a plugin's answer comes first, and ``None`` passes on.
    """


@hookspec
def wf78_task_event(event: TaskEvent) -> MaybeAwaitable[None]:
    """Observe a task state change (a :class:`wf78_core.TaskEvent`).

    Called for every transition: ``queued``, ``running``, ``retrying``, ``succeeded``,
    ``failed``, ``cancelled``, ``skipped``. Observers must be quick; an async observer
    is awaited before the engine moves on.
    """
