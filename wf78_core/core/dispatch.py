"""The data path: select a source, allocate an agent, execute with retry and fallback."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pluggy

from wf78_core.config import Config, EngineSettings
from wf78_core.core.admission import Admission, Counters
from wf78_core.core.agents import Agent
from wf78_core.core.bus import EventBus
from wf78_core.core.fallback import Fallbacks, run_attempt
from wf78_core.core.lanes import Lanes
from wf78_core.core.lifecycle import Lifecycle
from wf78_core.core.routing import Router
from wf78_core.core.scheduling import Limit
from wf78_core.core.sharing import SHARED_ACTIONS, Flight, SharedReads
from wf78_core.core.sources import Source, SourcePool
from wf78_core.core.tickets import Ticket
from wf78_core.core.tracing import instrument
from wf78_core.definitions import Operation, Result, TaskDefinition
from wf78_core.errors import OperationError, Wf78Error
from wf78_core.events import TaskEvent
from wf78_core.idempotency import PREPARED_ACTIONS, prepare, prepare_task

__all__ = ["Dispatcher"]


class Dispatcher:
    """``engine.submit`` and ``engine.enqueue``, and every data task of a workflow run.

    Holds no state of its own beyond counters and the queued tickets: the sources, the
    agents' limits and the scheduler are the engine's, passed in.
    """

    def __init__(
        self,
        config: Config,
        pm: pluggy.PluginManager,
        *,
        admission: Admission,
        pool: SourcePool,
        bus: EventBus,
        life: Lifecycle,
        counters: Counters,
        excluded_allocators: list[Any],
    ) -> None:
        self.config = config
        self.settings: EngineSettings = config.engine
        self.counters = counters
        self._admission = admission
        self._scheduler = admission.scheduler
        self._pending_alone = admission.pending.alone
        self._running_alone = admission.running.alone
        self._pool = pool
        self._named = pool.named
        self._bus = bus
        self._life = life
        self._tables = frozenset(config.tables)
        self._timeouts = {name: s.timeout for name, s in config.datasources.items()}
        self._tickets: set[Ticket] = set()
        #: identical reads in flight run once (None: ``[engine] shared_reads = false``)
        self.shared_reads = SharedReads(counters) if self.settings.shared_reads else None
        #: where operations go: source selection, agent allocation, slots
        self.router = Router(config, pm, pool, admission.scheduler, excluded_allocators)
        #: the OpenTelemetry tracer (None: off); when on, ``execute`` and ``enqueue`` are
        #: replaced on this instance by traced ones (:mod:`wf78_core.core.tracing`)
        self.tracer = instrument(self, pool)
        #: what follows a first failure: its error, or retries, then fallback sources
        self.fallbacks = Fallbacks(
            counters=counters,
            pool=pool,
            router=self.router,
            scheduler=self._scheduler,
            timeouts=self._timeouts,
            backoff_base=self.settings.retry_backoff,
            backoff_max=self.settings.retry_backoff_max,
        )
        self.fallbacks.tracer = self.tracer
        #: operations whose route configuration fixes: one step to take their slots
        self.lanes = Lanes(
            config,
            pool,
            pending=self._pending_alone,
            running=self._running_alone,
            timeouts=self._timeouts,
            counters=counters,
            reads=self.shared_reads,
            life=life,
            fallbacks=self.fallbacks,
            scheduler=self._scheduler,
        )
        self.lanes.open = self.tracer is None

    def backoff(self, attempt: int) -> float:
        """The wait before retry number ``attempt + 1`` (the engine's backoff settings)."""
        return self.fallbacks.backoff(attempt)

    def withdraw_tickets(self) -> None:
        """At shutdown: tickets still queued fail with a clear error, their slots freed."""
        scheduler = self._scheduler
        for ticket in list(self._tickets):
            if ticket.waiter is not None and scheduler.withdraw(ticket.waiter):
                self._tickets.discard(ticket)
                scheduler.release(self._pending_alone)
                ticket.set_result(None, Wf78Error("the engine shut down before the operation ran"))

    async def submit(
        self,
        op: Operation,
        *,
        priority: int | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Result:
        """Run one operation: select a source, allocate an agent, execute; return its Result.

        Waits up to ``engine.overload_timeout`` for queue space, then raises
        :class:`~wf78_core.errors.Overloaded`. Failures raise
        :class:`~wf78_core.errors.OperationError` subclasses after retries and fallbacks.
        """
        self._life.check()
        lane = self.lanes.get(op)
        if (
            lane is not None
            and op.timeout is None
            and lane.source.healthy
            and not self._bus
            and self._scheduler.try_acquire(lane.taken)
        ):
            # Every slot free at once: run inline (see wf78_core.core.lanes).
            flight = None
            if lane.shares:
                reads = self.shared_reads
                assert reads is not None  # a lane shares reads only when they are on
                flight, leads = reads.enter(op.data_source, op)
                if flight is not None and not leads:  # the same read in flight: join it
                    self._scheduler.release(lane.taken)
                    return await self._lane_join(op, priority, context, flight)
            self.counters.submitted += 1
            source = lane.source
            try:
                if op.action in PREPARED_ACTIONS:
                    op = self.prepare(op)  # a bad operation is the caller's, not the source's
            except BaseException:
                self._scheduler.release(lane.taken)
                self.lanes.done(op, failed=True)
                raise
            started = time.perf_counter()
            try:
                value = await source.adapter.execute(op)
            except Exception as failure:
                if flight is not None:
                    flight.drop()
                self._scheduler.release(lane.running)
                return await self.lanes.failed(op, lane, priority, failure, started)
            except BaseException:
                if flight is not None:
                    flight.drop()
                self._scheduler.release(lane.taken)
                self.lanes.done(op, failed=True)
                raise
            finished = time.perf_counter()
            self._scheduler.release(lane.taken)
            source.counters.ops += 1
            source.counters.latency.record(finished - started)
            lane.agent.completed += 1
            self.lanes.done(op, failed=False)
            result = Result(
                value=value,
                data_source=source.name,
                source_type=source.type,
                reason=lane.reason,
                agent=lane.agent.id,
                elapsed=finished - started,
            )
            if flight is not None:
                result = flight.land(result)
            return result
        return await self._submit(op, priority, context)

    async def _submit(
        self, op: Operation, priority: int | None, context: Mapping[str, Any] | None
    ) -> Result:
        """:meth:`submit` along the full path: admission, routing, events."""
        level = self.settings.submit_priority if priority is None else priority
        pending = self._pending_alone
        scheduler = self._scheduler
        if not scheduler.try_acquire(pending):
            await self._admission.admit(level)
        self.counters.submitted += 1
        if op.action in PREPARED_ACTIONS:
            op = self.prepare(op)  # ids and key fixed now: every attempt writes the same rows
        observed = bool(self._bus)
        if observed:
            self._bus.notify(TaskEvent(state="running", workflow="submit", task=op.action))
        try:
            result = await self.execute(op, level, context, task=None, outer=self._running_alone)
            self.counters.completed += 1
            if observed:
                self._bus.notify(
                    TaskEvent(
                        state="succeeded",
                        workflow="submit",
                        task=op.action,
                        data_source=result.data_source,
                        agent=result.agent,
                        attempt=result.attempts,
                        elapsed=result.elapsed,
                    )
                )
            return result
        except BaseException as error:
            self.counters.failed += 1
            if observed:
                self._bus.notify(
                    TaskEvent(
                        state="failed",
                        workflow="submit",
                        task=op.action,
                        data_source=getattr(error, "data_source", None),
                        attempt=getattr(error, "attempts", 0),
                        error=f"{type(error).__name__}: {error}",
                    )
                )
            raise
        finally:
            scheduler.release(pending)
            if self._life.closing:
                self._life.work_done()

    async def _lane_join(
        self,
        op: Operation,
        priority: int | None,
        context: Mapping[str, Any] | None,
        flight: Flight,
    ) -> Result:
        """A lane's read that joined the same read in flight (its slots given back): a copy
        of that read's result, or its own read on the full path when that one failed."""
        result = await flight.reads.follow(flight)
        if result is None:
            return await self._submit(op, priority, context)
        self.counters.submitted += 1
        self.lanes.done(op, failed=False)
        return result

    def prepare(self, op: Operation, task: tuple[str, str] | None = None) -> Operation:
        """:func:`~wf78_core.idempotency.prepare` (``prepare_task`` for a run's ``(run id,
        task id)``), for rows of declared tables only (they all have an ``id``): what an
        undeclared table's rows look like is its adapter's business, so no id is made up."""
        if op.table is None or op.table not in self._tables:
            if op.action in ("add", "add_many", "index", "upsert"):
                return op
        return prepare(op) if task is None else prepare_task(op, *task)

    async def enqueue(
        self,
        op: Operation,
        *,
        priority: int | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Ticket:
        """Accept an operation and return at once with a :class:`Ticket` for its Result.

        Like :meth:`submit` (same admission and back-pressure, same data path), but the
        caller need not stay: a queued ticket costs no coroutine.
        """
        self._life.check()
        level = self.settings.submit_priority if priority is None else priority
        if not self._scheduler.try_acquire(self._pending_alone):
            await self._admission.admit(level)
        op = self.prepare(op)
        ticket = Ticket(op, level, dict(context or {}))
        try:
            # Chosen now, so the ticket waits for every limit it needs and holds none.
            if op.data_source is not None:
                source, reason = (
                    self._pool.resolve(op.data_source, op.action),
                    "explicit data_source",
                )
            else:
                name, reason = await self.router.choose_source(op, None, ticket.context)
                source = self._named[name]
            agent = await self.router.allocate_agent(op, source)
        except BaseException:
            self._scheduler.release(self._pending_alone)
            raise
        self.counters.submitted += 1
        self._tickets.add(ticket)
        work = self._life.work
        assert work is not None
        limits = agent.limit_set(self._running_alone, source.limit)

        def granted() -> None:
            ticket.waiter = None
            work.start_soon(self._run_ticket, ticket, (source, agent, limits), reason)

        ticket.waiter = self._scheduler.enqueue(level, limits, granted)
        return ticket

    async def _run_ticket(
        self, ticket: Ticket, held: tuple[Source, Agent, tuple[Limit, ...]], reason: str
    ) -> None:
        try:
            result = await self.execute(
                ticket.operation,
                ticket.priority,
                ticket.context,
                task=None,
                outer=self._running_alone,
                reason=reason,
                held=held,
            )
        except Exception as error:
            self.counters.failed += 1
            ticket.set_result(None, error)
        except BaseException:
            self.counters.failed += 1
            ticket.set_result(None, Wf78Error("the engine shut down before the operation finished"))
            raise
        else:
            self.counters.completed += 1
            ticket.set_result(result, None)
        finally:
            self._tickets.discard(ticket)
            self._scheduler.release(self._pending_alone)
            self._life.work_done()

    async def execute(
        self,
        op: Operation,
        level: int,
        context: Mapping[str, Any] | None,
        *,
        task: TaskDefinition | None,
        outer: tuple[Limit, ...] = (),
        reason: str | None = None,
        held: tuple[Source, Agent, tuple[Limit, ...]] | None = None,
        join: bool = True,
    ) -> Result:
        """Select, allocate, execute; retries and fallbacks are :class:`Fallbacks`'. ``held``: a
        queued ticket's source, agent and limits. A read joins the same read in flight (``join``,
        :mod:`wf78_core.core.sharing`); a finished write ends joining reads begun before it."""
        reads = self.shared_reads
        if reads is not None and op.action in SHARED_ACTIONS:
            if join and held is None:
                return await reads.read(
                    op.data_source,
                    op,
                    lambda: self.execute(
                        op, level, context, task=task, outer=outer, reason=reason, join=False
                    ),
                )
            reads = None  # a read starts no new generation
        try:
            started = time.perf_counter()
            picked = self._picked(op, reason, held)
            if picked is None:
                picked = await self.router.route(op, task, context, reason)
            source, reason = picked
            # No timeout unless the operation, task or source sets one (a cancel scope costs).
            timeout = op.timeout or (task and task.timeout) or self._timeouts.get(source.name)
            try:
                if held is not None:
                    _, agent, limits = held
                elif source.healthy and len(source.agents) == 1:
                    agent = source.agents[0]
                    limits = agent.limit_set(outer, source.limit)
                    if not self._scheduler.try_acquire(limits):
                        await self._scheduler.acquire(level, limits)
                else:
                    agent, limits = await self.router.acquire(op, source, level, outer)
                # From here the limits are held; they are released on every path.
                attempt_started = time.perf_counter()
                try:
                    value = await run_attempt(source, op, timeout)
                finally:
                    self._scheduler.release(limits)
            except OperationError as failure:
                return await self.fallbacks.recover(
                    op, level, task, outer, source, reason, failure, started
                )
            finished = time.perf_counter()
            source.counters.ops += 1
            source.counters.latency.record(finished - attempt_started)
            agent.completed += 1
            return Result(
                value=value,
                data_source=source.name,
                source_type=source.type,
                reason=reason,
                agent=agent.id,
                elapsed=finished - started,
            )
        finally:
            if reads is not None:
                reads.wrote(op)

    def _picked(
        self, op: Operation, reason: str | None, held: tuple[Source, Agent, Any] | None
    ) -> tuple[Source, str] | None:
        """The source of a granted ticket or an explicit ``data_source``; None: route it."""
        if held is not None:
            return held[0], reason or "granted to a queued ticket"
        if op.data_source is not None and reason is None:
            return self._pool.resolve(op.data_source, op.action), "explicit data_source"
        return None
