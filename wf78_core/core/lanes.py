"""The express lane of ``engine.submit``: operations whose route is fixed by configuration.

An operation that names its source (``data_source``), or whose table names one, on a source
with one agent and no timeout, needs no selection, no allocation and no cancel scope: where
it goes and which slots it takes are the same every time. A :class:`Lane` keeps that answer
(the source, its agent, the one tuple of limits an operation takes: admission, running,
source, agent), so such an operation takes every slot in one step and runs inline. Anything
else (a strategy picks the source, several agents, a timeout, observers of task events,
tracing) takes the full path; so does a lane's operation whenever a slot is not free at once
or its source is unhealthy. A read of a lane joins the same read in flight, as on the full
path (:mod:`wf78_core.core.sharing`).
"""

from __future__ import annotations

from collections.abc import Mapping

from wf78_core.config import Config
from wf78_core.core.admission import Counters
from wf78_core.core.agents import Agent
from wf78_core.core.fallback import Fallbacks, failed_as
from wf78_core.core.lifecycle import Lifecycle
from wf78_core.core.scheduling import Limit, Scheduler
from wf78_core.core.sharing import SHARED_ACTIONS, SharedReads
from wf78_core.core.sources import Source, SourcePool
from wf78_core.definitions import Operation, Result
from wf78_core.errors import NoDataSource

__all__ = ["Lane", "Lanes"]

# Lanes kept at most (keys come from operations: a flood of unknown names must not grow it).
_MAX_LANES = 1024


class Lane:
    """Where an operation of one ``(data_source, table, action)`` goes, and what it holds."""

    __slots__ = ("agent", "reason", "running", "shares", "source", "taken")

    def __init__(
        self,
        source: Source,
        agent: Agent,
        reason: str,
        *,
        pending: tuple[Limit, ...],
        running: tuple[Limit, ...],
        shares: bool = False,
    ) -> None:
        self.source = source
        self.agent = agent
        self.reason = reason
        #: a read that joins the same read in flight (shared reads on)
        self.shares = shares
        #: every slot the operation holds, admission included, as one tuple
        self.taken = agent.limit_set(pending + running, source.limit)
        #: the slots its attempt holds (given back alone when the attempt fails)
        self.running = agent.limit_set(running, source.limit)


class Lanes:
    """The lanes found so far, by ``(data_source, table, action)`` (None: no lane), and the
    books of their operations once they end."""

    def __init__(
        self,
        config: Config,
        pool: SourcePool,
        *,
        pending: tuple[Limit, ...],
        running: tuple[Limit, ...],
        timeouts: Mapping[str, float | None],
        counters: Counters,
        reads: SharedReads | None,
        life: Lifecycle,
        fallbacks: Fallbacks,
        scheduler: Scheduler,
    ) -> None:
        self._tables = config.tables
        self._submit_priority = config.engine.submit_priority
        self._timeouts = timeouts
        self._pool = pool
        self._pending = pending
        self._running = running
        self._joins_reads = reads is not None
        self._counters = counters
        self._reads = reads
        self._life = life
        self._fallbacks = fallbacks
        self._scheduler = scheduler
        self._lanes: dict[tuple[str | None, str | None, str], Lane | None] = {}
        #: False turns the lanes off (tracing: every operation takes the traced path)
        self.open = True

    def clear(self) -> None:
        """Forget every lane (the engine stopped: its sources are closed)."""
        self._lanes.clear()

    def done(self, op: Operation, *, failed: bool) -> None:
        """Book an operation of a lane that has given back its slots."""
        if failed:
            self._counters.failed += 1
        else:
            self._counters.completed += 1
        reads = self._reads
        if reads is not None:
            reads.wrote(op)
        if self._life.closing:
            self._life.work_done()

    async def failed(
        self,
        op: Operation,
        lane: Lane,
        priority: int | None,
        failure: Exception,
        started: float,
    ) -> Result:
        """A lane's first attempt failed (its attempt's slots given back, its admission
        slot still held): the retries and fallbacks of the full path, or the error
        (:meth:`Fallbacks.recover <wf78_core.core.fallback.Fallbacks.recover>`)."""
        failed = True
        try:
            reported = failed_as(lane.source, failure)
            if reported is not failure:
                reported.__cause__ = failure  # as ``raise reported from failure``
            level = self._submit_priority if priority is None else priority
            result = await self._fallbacks.recover(
                op, level, None, self._running, lane.source, lane.reason, reported, started
            )
            failed = False
            return result
        finally:
            self._scheduler.release(self._pending)
            self.done(op, failed=failed)

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
        if not self.open:
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
        return Lane(
            source,
            source.agents[0],
            reason,
            pending=self._pending,
            running=self._running,
            shares=self._joins_reads and op.action in SHARED_ACTIONS,
        )
