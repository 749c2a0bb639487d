"""The configured data sources at run time: adapters, limits, health and counters."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import anyio
import msgspec

from wf78_core.config import AgentConfig
from wf78_core.core.agents import Agent
from wf78_core.core.scheduling import Limit
from wf78_core.core.stats import SourceCounters
from wf78_core.errors import NoDataSource
from wf78_core.plugin.datasource import DataSource, SourceInfo

__all__ = ["Source", "SourcePool", "build_agents"]


class Source:
    """One configured data source: its adapter, its limit, health and counters."""

    __slots__ = (
        "adapter",
        "agents",
        "counters",
        "healthy",
        "info",
        "limit",
        "name",
        "probe_at",
        "type",
    )

    def __init__(self, name: str, type: str, adapter: DataSource, capacity: int) -> None:
        self.name = name
        self.type = type
        self.adapter = adapter
        self.limit = Limit(f"source:{name}", capacity)
        self.healthy = True
        self.probe_at = 0.0  # when an attempt may next check an unhealthy source itself
        self.agents: list[Agent] = []
        self.counters = SourceCounters()
        self.info = SourceInfo(name, type, frozenset(adapter.actions))


class SourcePool:
    """Every open source by name and by type, with their health checks.

    ``named`` is the live mapping (the data path reads it directly: no call per lookup).
    """

    def __init__(self, health_interval: float) -> None:
        self.health_interval = health_interval
        self.named: dict[str, Source] = {}
        self._by_type: dict[str, list[Source]] = {}
        self._routes: dict[tuple[str, str], Source] = {}

    def add(self, source: Source) -> None:
        self.named[source.name] = source
        self._by_type.setdefault(source.type, []).append(source)

    def clear(self) -> None:
        self.named.clear()
        self._by_type.clear()
        self._routes.clear()

    def __iter__(self) -> Iterator[Source]:
        return iter(list(self.named.values()))

    def __len__(self) -> int:
        return len(self.named)

    def get(self, name: str) -> Source | None:
        return self.named.get(name)

    def of_type(self, type: str) -> list[Source]:
        """The sources of a type, in configuration order."""
        return list(self._by_type.get(type, ()))

    def matching(self, name: str) -> list[Source]:
        """The source called ``name``, else every source of type ``name``."""
        source = self.named.get(name)
        return [source] if source is not None else self.of_type(name)

    def resolve(self, name: str, action: str) -> Source:
        """A configured source by name, or the first healthy source of that type able to
        perform ``action``; :class:`NoDataSource` when there is neither."""
        key = (name, action)
        cached = self._routes.get(key)
        if cached is not None and cached.healthy:
            return cached
        source = self.named.get(name)
        if source is None:
            of_type = self._by_type.get(name)
            if not of_type:
                raise NoDataSource(
                    f"unknown data source {name!r} (configured: {sorted(self.named)})",
                    data_source=name,
                )
            able = [s for s in of_type if action in s.info.actions] or of_type
            source = next((s for s in able if s.healthy), able[0])
        self._routes[key] = source
        return source

    def candidates(self, action: str) -> list[SourceInfo]:
        """What a selection strategy chooses from: healthy sources able to do ``action``."""
        return [s.info for s in self.named.values() if s.healthy and action in s.info.actions]

    async def watch(self) -> None:
        """Check every source every ``health_interval`` seconds, for ever."""
        while True:
            await anyio.sleep(self.health_interval)
            await self.check_all()

    async def check_all(self) -> dict[str, bool]:
        """Run every source's health check now; failing sources leave rotation."""
        return {source.name: await self.check(source) for source in self}

    async def check(self, source: Source) -> bool:
        """One source's health check; a change of health forgets the cached routes."""
        try:
            with anyio.fail_after(max(self.health_interval, 1.0)):
                await source.adapter.health()
            healthy = True
        except Exception:
            healthy = False
        if healthy != source.healthy:
            source.healthy = healthy
            self._routes.clear()
        # Strategies see recent latency so they can demote a slow source.
        source.info = msgspec.structs.replace(
            source.info, healthy=healthy, latency=source.counters.latency.percentile(0.5)
        )
        return healthy


def build_agents(pool: Sequence[AgentConfig], sources: Iterable[Source]) -> list[Agent]:
    """The configured agents (``[[agents.pool]]``), or one per source with the source's
    capacity; each source learns which agents serve it."""
    sources = list(sources)
    agents: list[Agent] = []
    if pool:
        for order, config in enumerate(pool):
            concurrency = config.concurrency or max(
                (
                    s.limit.capacity
                    for s in sources
                    if s.name in config.capabilities or s.type in config.capabilities
                ),
                default=1,
            )
            agents.append(Agent(config.id, config.capabilities, concurrency, order))
    else:
        for order, source in enumerate(sources):
            agents.append(
                Agent(f"agent-{source.name}", (source.name,), source.limit.capacity, order)
            )
    for source in sources:
        source.agents = [a for a in agents if a.serves(source.name, source.type)]
        for agent in source.agents:
            agent.sources.append(source.name)
    return agents
