"""Where an operation goes: its source (explicit, the table's, or the selection
strategies), its agent (the allocator plugins), and the slots it holds while it runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import msgspec
import pluggy

from wf78_core.config import Config
from wf78_core.core.agents import Agent
from wf78_core.core.scheduling import Limit, Scheduler
from wf78_core.core.sources import Source, SourcePool
from wf78_core.definitions import Operation, TaskDefinition
from wf78_core.errors import NoAgentAvailable, NoDataSource
from wf78_core.plugin.manager import HookChain

__all__ = ["PROBE_INTERVAL", "Router"]

# An unhealthy source is checked again by an attempt at most this often (seconds).
PROBE_INTERVAL = 0.5


class Router:
    """Source selection and agent allocation over the engine's sources."""

    def __init__(
        self,
        config: Config,
        pm: pluggy.PluginManager,
        pool: SourcePool,
        scheduler: Scheduler,
        excluded_allocators: list[Any],
    ) -> None:
        self.config = config
        self._pool = pool
        self._named = pool.named
        self._scheduler = scheduler
        self._allocate = HookChain(pm, "wf78_allocate_agent", exclude=excluded_allocators)
        self._select = HookChain(pm, "wf78_select_datasource")

    async def choose_source(
        self, op: Operation, task: TaskDefinition | None, context: Mapping[str, Any]
    ) -> tuple[str, str]:
        """The source for an operation and the reason (note 3.1, rules of 4.1)."""
        explicit = op.data_source or (task.data_source if task is not None else None)
        if explicit:
            return self._pool.resolve(explicit, op.action).name, "explicit data_source"
        table = self.config.tables.get(op.table) if op.table else None
        if table is not None and table.data_source:
            return self._pool.resolve(table.data_source, op.action).name, "table data_source"
        if table is not None and table.kind and op.kind is None:
            op = msgspec.structs.replace(op, kind=table.kind)
        candidates = [
            s.info for s in self._named.values() if s.healthy and op.action in s.info.actions
        ]
        if not candidates:
            raise NoDataSource(f"no healthy data source can perform {op.action!r}", retryable=True)
        choice = await self._select.first(
            operation=op, task=task, context=context, candidates=candidates
        )
        if choice is None:
            return candidates[0].name, "first candidate (no strategy chose)"
        name, reason = (choice, "strategy") if isinstance(choice, str) else choice
        if name not in self._named:
            name = self._pool.resolve(name, op.action).name
        return name, reason

    async def route(
        self,
        op: Operation,
        task: TaskDefinition | None,
        context: Mapping[str, Any] | None,
        reason: str | None,
    ) -> tuple[Source, str]:
        """The first source to try, and why."""
        if op.data_source is not None and reason is None:
            return self._pool.resolve(op.data_source, op.action), "explicit data_source"
        name, chosen_reason = await self.choose_source(op, task, context or {})
        return self._named[name], reason or chosen_reason

    async def _probe(self, source: Source) -> None:
        """An unhealthy source: back already? An attempt may ask, at most once per
        ``PROBE_INTERVAL`` per source, rather than wait for the next round of checks (a
        source that never opened is left to the health loop: opening may take seconds)."""
        now = anyio.current_time()
        if now >= source.probe_at and source.opened:
            source.probe_at = now + PROBE_INTERVAL
            await self._pool.check(source)
        if not source.healthy:
            raise self._pool.unavailable(source)

    async def acquire(
        self, op: Operation, source: Source, level: int, outer: tuple[Limit, ...]
    ) -> tuple[Agent, tuple[Limit, ...]]:
        """An agent for ``source`` and every limit the attempt holds, acquired."""
        if not source.healthy:
            await self._probe(source)
        agents = source.agents
        agent = agents[0] if len(agents) == 1 else await self.allocate_agent(op, source)
        limits = agent.limit_set(outer, source.limit)
        if not self._scheduler.try_acquire(limits):
            await self._scheduler.acquire(level, limits)
        return agent, limits

    async def allocate_agent(self, op: Operation, source: Source) -> Agent:
        agents = source.agents
        if len(agents) == 1:
            return agents[0]
        if not agents:
            raise NoAgentAvailable(
                f"no agent serves data source {source.name!r}", data_source=source.name
            )
        free = [a for a in agents if a.has_free_slot] or agents
        agent = await self._allocate.first(task=op, agents=free) if self._allocate else None
        return agent if isinstance(agent, Agent) else free[0]
