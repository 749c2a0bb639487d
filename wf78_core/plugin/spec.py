"""The hooks of the ``wf78`` pluggy project. Every hook may be sync or async."""

from __future__ import annotations

from typing import Any

import pluggy

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("wf78")
hookimpl = pluggy.HookimplMarker("wf78")


@hookspec
def wf78_register_datasources(registry: Any) -> None:
    """Add data-source adapter factories: ``registry.add("sqlite", factory)``.

    :param registry: a :class:`wf78_core.registry.Registry`; two plugins adding one name
        is a start-up error, but an entry added with ``default=True`` (the built-ins)
        gives way to a plugin's.

    A factory (or a ``"module:attribute"`` string naming one, imported when a configured
    source first needs it) is called as ``factory(spec)`` with a :class:`wf78_core.datasource.SourceSpec`
    and returns an object following :class:`wf78_core.datasource.DataSource`. It may carry
    an ``Options`` msgspec Struct used to validate the type-specific keys of its config.
    """


@hookspec
def wf78_register_actions(registry: Any) -> None:
    """Add named task actions: ``registry.add("name", fn)``.

    :param registry: a :class:`wf78_core.registry.Registry`; two plugins adding one name
        is a start-up error, but an entry added with ``default=True`` (the built-ins)
        gives way to a plugin's.

    ``fn(ctx)`` may be sync or async and returns the task's result; ``ctx`` is a
    :class:`wf78_core.actions.TaskContext` with ``params``, ``results``, ``context``
    and ``engine``.
    """


@hookspec
def wf78_select_datasource(
    operation: Any, task: Any, context: Any, candidates: Any
) -> str | tuple[str, str] | None:
    """Choose the data source for an operation that does not name one.

    :param operation: the :class:`~wf78_core.Operation` to serve.
    :param task: the :class:`~wf78_core.TaskDefinition` it belongs to, or ``None`` for
        ``engine.submit``.
    :param context: the run's context mapping (may be empty).
    :param candidates: the healthy sources able to perform the action, as a list of
        :class:`wf78_core.datasource.SourceInfo`, best first.

    Return a source name (or ``(name, reason)``), or ``None`` to let the next strategy
    decide. Strategies are asked in pluggy order; built-ins are ``trylast``.
    """


@hookspec
def wf78_allocate_agent(task: Any, agents: Any) -> Any | None:
    """Choose the agent that runs a task.

    :param task: the :class:`~wf78_core.Operation` about to run.
    :param agents: the agents in rotation that serve its data source and have a free slot,
        as a list of :class:`wf78_core.agents.Agent`.

    Return one of ``agents``, or ``None`` to let the engine take the first free agent.
    Only the plugin named in ``[agents] allocator`` (``least_load`` by default, or
    ``priority``, or a third party's plugin name) is asked.
    """


@hookspec
def wf78_authenticate(scope: Any) -> Any | None:
    """Return the caller's identity for an ASGI ``scope``, or ``None`` if unknown."""


@hookspec
def wf78_task_event(event: Any) -> None:
    """Observe a task state change (a :class:`wf78_core.events.TaskEvent`).

    Called for every transition: ``queued``, ``running``, ``retrying``, ``succeeded``,
    ``failed``, ``cancelled``, ``skipped``. Observers must be quick; an async observer
    is awaited before the engine moves on.
    """
