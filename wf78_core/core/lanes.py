"""The express lane of ``engine.submit``: operations whose route is fixed by configuration.

An operation that names its source (``data_source``), or whose table names one, on a source
with one agent and no timeout, needs no selection, no allocation and no cancel scope: where
it goes and which slots it takes are the same every time. A :class:`Lane` keeps that answer
(the source, its agent, the one tuple of limits an operation takes: admission, running,
source, agent), so such an operation takes every slot in one step and runs inline. Anything
else (a strategy picks the source, several agents, a timeout, shared reads, observers of
task events, tracing) takes the full path; so does a lane's operation whenever a slot is
not free at once or its source is unhealthy.
"""

from __future__ import annotations

from collections.abc import Mapping

from wf78_core.config import Config
from wf78_core.core.agents import Agent
from wf78_core.core.scheduling import Limit
from wf78_core.core.sharing import SHARED_ACTIONS
from wf78_core.core.sources import Source, SourcePool
from wf78_core.definitions import Operation
from wf78_core.errors import NoDataSource

__all__ = ["Lane", "Lanes"]

# Lanes kept at most (keys come from operations: a flood of unknown names must not grow it).
_MAX_LANES = 1024


class Lane:
    """Where an operation of one ``(data_source, table, action)`` goes, and what it holds."""

    __slots__ = ("agent", "reason", "running", "source", "taken")

    def __init__(
        self,
        source: Source,
        agent: Agent,
        reason: str,
        *,
        pending: tuple[Limit, ...],
        running: tuple[Limit, ...],
    ) -> None:
        self.source = source
        self.agent = agent
        self.reason = reason
        #: every slot the operation holds, admission included, as one tuple
        self.taken = agent.limit_set(pending + running, source.limit)
        #: the slots its attempt holds (given back alone when the attempt fails)
        self.running = agent.limit_set(running, source.limit)


class Lanes:
    """The lanes found so far, by ``(data_source, table, action)``; None: no lane."""

    def __init__(
        self,
        config: Config,
        pool: SourcePool,
        *,
        pending: tuple[Limit, ...],
        running: tuple[Limit, ...],
        joins_reads: bool,
        timeouts: Mapping[str, float | None],
    ) -> None:
        self._tables = config.tables
        self._timeouts = timeouts
        self._pool = pool
        self._pending = pending
        self._running = running
        self._joins_reads = joins_reads
        self._lanes: dict[tuple[str | None, str | None, str], Lane | None] = {}
        #: False turns the lanes off (tracing: every operation takes the traced path)
        self.open = True

    def clear(self) -> None:
        """Forget every lane (the engine stopped: its sources are closed)."""
        self._lanes.clear()

    def get(self, op: Operation) -> Lane | None:
        """The lane of ``op``, or None: it takes the full path."""
        key = (op.data_source, op.table, op.action)
        try:
            return self._lanes[key]
        except KeyError:
            pass
        if len(self._lanes) >= _MAX_LANES:
            self._lanes.clear()
        lane = self._lanes[key] = self._find(op)
        return lane

    def _find(self, op: Operation) -> Lane | None:
        if not self.open or (self._joins_reads and op.action in SHARED_ACTIONS):
            return None
        if op.data_source is not None:
            name, reason = op.data_source, "explicit data_source"
        else:
            table = self._tables.get(op.table) if op.table is not None else None
            if table is None or not table.data_source:
                return None  # chosen per operation
            name, reason = table.data_source, "table data_source"
        source = self._pool.named.get(name)
        if source is None or len(source.agents) != 1 or self._timeouts.get(name) is not None:
            return None  # a type (its healthy source may change), agents to pick, a deadline
        try:
            if self._pool.resolve(name, op.action) is not source:
                return None
        except NoDataSource:
            return None  # the full path says why
        return Lane(source, source.agents[0], reason, pending=self._pending, running=self._running)
