"""The workflow engine: one anyio task group, priority scheduling, the data path."""

from __future__ import annotations

import heapq
import inspect
import logging
import random
import time
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import msgspec
import pluggy
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from croniter import croniter

from wf78_core.config import (
    Config,
    Identity,
    check_references,
    collect_config,
    load_config,
    msgspec_problem,
    read_config,
    with_maintenance,
)
from wf78_core.core.actions import TaskContext, builtin_actions, run_action, worth_retrying
from wf78_core.core.agents import Agent
from wf78_core.core.backend import Backend, InProcessBackend
from wf78_core.core.runs import Run, RunState, TaskRun, TaskSlot
from wf78_core.core.scheduling import Limit
from wf78_core.core.stats import AgentStats, EngineStats, SourceCounters, SourceStats, WorkflowStats
from wf78_core.core.tickets import Ticket
from wf78_core.data.mirrors import MirrorStats, Relay
from wf78_core.data.sharding import MaintenanceReport, maintain
from wf78_core.data.table import Table
from wf78_core.definitions import Operation, Result, TaskDefinition, WorkflowDefinition
from wf78_core.errors import (
    ConfigError,
    DataSourceError,
    NoAgentAvailable,
    NoDataSource,
    OperationError,
    Overloaded,
    Problem,
    TaskTimeout,
    UnknownWorkflow,
    Wf78Error,
)
from wf78_core.events import TaskEvent, TaskState
from wf78_core.idempotency import prepare, prepare_task
from wf78_core.persistence.journal import (
    DeadLetter,
    Journal,
    JournaledRun,
    TaskCheckpoint,
    open_journal,
)
from wf78_core.plugin.datasource import (
    DataSource,
    SourceInfo,
    SourceSpec,
    TableSchema,
    load_factory,
    options_for,
)
from wf78_core.plugin.manager import HookChain, collect_registry, make_plugin_manager, plugin_names
from wf78_core.plugin.spec import hookimpl

if TYPE_CHECKING:
    from wf78_core.cluster.streams import RedisBackend
    from wf78_core.cluster.worker import StreamWorker

__all__ = ["Engine"]

logger = logging.getLogger("wf78.engine")


class _BuiltinActions:
    """The core's own actions, registered like any plugin's (and overridable)."""

    @hookimpl(trylast=True)
    def wf78_register_actions(self, registry: Any) -> None:
        for name, function in builtin_actions().items():
            registry.add(name, function, default=True)


# An unhealthy source is checked again by an attempt at most this often (seconds).
PROBE_INTERVAL = 0.5


class _Source:
    """A configured data source at run time: adapter, limit, health and counters."""

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


class Engine:
    """The wf78 workflow engine.

    ``Engine(config)`` takes a :class:`~wf78_core.config.Config`, a mapping, a path, or
    ``None`` for the embedded default. Use it as an async context manager: entering
    opens data sources, starts agents, health checks and triggers; leaving stops the
    triggers, lets accepted work finish (up to ``engine.drain_timeout``), cancels what
    is left and closes the sources.
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any] | str | Path | None = None,
        *,
        plugins: Iterable[Any] = (),
        base_dir: str | Path | None = None,
    ) -> None:
        if isinstance(config, str | Path) and base_dir is None:
            base_dir = Path(config).resolve().parent
        # A sharded table brings the wf78.maintenance workflow along.
        self.config = with_maintenance(load_config(config))
        self.settings = self.config.engine
        self.base_dir = str(base_dir or ".")
        self.pm: pluggy.PluginManager = make_plugin_manager([_BuiltinActions(), *plugins])
        self.workflows: dict[str, WorkflowDefinition] = {w.id: w for w in self.config.workflows}
        # The redis backend when configured (imported only then: redis is a heavy driver).
        self.shared: RedisBackend | None = None
        if self.settings.backend == "redis":
            from wf78_core.cluster.streams import RedisBackend

            self.shared = RedisBackend(self.settings, self.config.workflows)
        self.backend: Backend = self.shared or InProcessBackend(
            self.settings, self.config.workflows
        )
        # The redis backend's consumer in this process (None: in-process runs, or consume=false).
        self.worker: StreamWorker | None = None
        self.scheduler = self.backend.scheduler
        self._pending = self.backend.pending
        self._global = self.backend.running
        self._tables = {
            name: TableSchema.from_config(name, table) for name, table in self.config.tables.items()
        }
        self._sources: dict[str, _Source] = {}
        self._by_type: dict[str, list[_Source]] = {}
        # The outbox relay, when some table has mirrors (wf78_core.mirrors).
        self.mirrors: Relay | None = None
        if any(t.search_mirror or t.cache_mirror for t in self.config.tables.values()):
            self.mirrors = Relay(self)
        self._agents: list[Agent] = []
        self._route_cache: dict[tuple[str, str], _Source] = {}
        self._stack: AsyncExitStack | None = None
        self._work: TaskGroup | None = None
        self._running = False
        self._closing = False
        self._idle = anyio.Event()
        self._events_send: MemoryObjectSendStream[RunState] | None = None
        self._started_at = time.monotonic()
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.retries = 0
        self.fallbacks = 0
        self._tickets: set[Ticket] = set()
        # Accepted runs and task checkpoints (None: "off"), and the dead letters it holds.
        # With the redis backend, Redis holds accepted runs and their progress.
        self.journal: Journal | None = (
            None
            if self.shared is not None
            else open_journal(
                self.settings.journal, self.base_dir, keep_finished=self.settings.run_history
            )
        )
        self._dead: dict[str, DeadLetter] = {}
        self.resumed_runs = 0
        # What the sharding maintenance of the last start-up did (None: no sharded table).
        self.startup_maintenance: MaintenanceReport | None = None
        allocators = plugin_names(self.pm, "wf78_allocate_agent")
        # Only the configured built-in allocator takes part; others stay registered.
        self._allocators = allocators
        self._allocate = HookChain(
            self.pm,
            "wf78_allocate_agent",
            exclude=[p for n, p in allocators.items() if n != self.config.agents.allocator],
        )
        self._select = HookChain(self.pm, "wf78_select_datasource")
        self._observers = HookChain(self.pm, "wf78_task_event")

    @classmethod
    def from_file(cls, path: str | Path, *, plugins: Iterable[Any] = ()) -> Engine:
        return cls(Path(path), plugins=plugins)

    # -- start-up and shutdown -------------------------------------------------------

    async def _load_plugins(self) -> None:
        self._source_types = await collect_registry(
            self.pm, "wf78_register_datasources", "data-source type"
        )
        self.actions = await collect_registry(self.pm, "wf78_register_actions", "action")
        problems = check_references(
            self.config, source_types=self._source_types, actions=self.actions
        )
        allocators = self._allocators
        chosen = self.config.agents.allocator
        if allocators and chosen not in allocators:
            problems.append(
                Problem(
                    "agents.allocator",
                    f"unknown allocator {chosen!r} (known: {sorted(allocators)})",
                )
            )
        sources: dict[str, tuple[Any, Any]] = {}
        for name, source in self.config.datasources.items():
            registered = self._source_types.get(source.type)
            if registered is None:
                continue
            factory = load_factory(registered)
            try:
                sources[name] = (factory, options_for(factory, source.options))
            except msgspec.ValidationError as error:
                problems.append(msgspec_problem(f"datasources.{name}", error))
        if problems:
            raise ConfigError(problems)
        self._factories = sources

    @classmethod
    async def check(
        cls,
        config: Config | Mapping[str, Any] | str | Path | None,
        *,
        plugins: Iterable[Any] = (),
    ) -> list[Problem]:
        """Every problem of a configuration, the plugin-dependent ones included; [] if valid."""
        problems: list[Problem] = []
        try:
            if isinstance(config, Config):
                partial = config
            else:
                partial, problems = collect_config(read_config(config))
            engine = cls(partial, plugins=plugins)
            await engine._load_plugins()
        except ConfigError as error:
            problems.extend(error.problems)
        return problems

    def _build_agents(self) -> None:
        pool = self.config.agents.pool
        if pool:
            for order, agent_config in enumerate(pool):
                concurrency = agent_config.concurrency or max(
                    (
                        s.limit.capacity
                        for s in self._sources.values()
                        if s.name in agent_config.capabilities
                        or s.type in agent_config.capabilities
                    ),
                    default=1,
                )
                self._agents.append(
                    Agent(agent_config.id, agent_config.capabilities, concurrency, order)
                )
        else:
            for order, source in enumerate(self._sources.values()):
                self._agents.append(
                    Agent(f"agent-{source.name}", (source.name,), source.limit.capacity, order)
                )
        for source in self._sources.values():
            source.agents = [a for a in self._agents if a.serves(source.name, source.type)]
            for agent in source.agents:
                agent.sources.append(source.name)

    async def __aenter__(self) -> Engine:
        if self._running:
            raise Wf78Error("engine is already running")
        await self._load_plugins()
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            for name, (factory, options) in self._factories.items():
                config = self.config.datasources[name]
                spec = SourceSpec(
                    name=name,
                    type=config.type,
                    url=config.url,
                    options=options,
                    tables=self._tables,
                    base_dir=self.base_dir,
                )
                adapter: DataSource = factory(spec)
                await adapter.open()
                stack.push_async_callback(adapter.close)
                capacity = config.pool_size or adapter.concurrency
                source = _Source(name, config.type, adapter, capacity)
                self._sources[name] = source
                self._by_type.setdefault(config.type, []).append(source)
            self._build_agents()
            if self.journal is not None:
                await self.journal.open()
                stack.push_async_callback(self.journal.close)  # after its writer stopped
            services = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(services.cancel_scope.cancel)
            for source in self._sources.values():
                run = getattr(source.adapter, "run", None)
                if run is not None:
                    await services.start(run)
            services.start_soon(self._health_loop)
            if self.journal is not None:
                # In the services group: it stops after the work group has drained, and
                # writes what is still queued before it returns.
                await services.start(self.journal.run)
            if self.mirrors is not None:
                await services.start(self.mirrors.run)
            if self.shared is not None:
                await services.start(self.shared.run)
            # Work (runs and triggers) lives in its own group so it can drain first.
            self._work = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._drain)
            send, receive = anyio.create_memory_object_stream[RunState](
                self.settings.event_queue_size
            )
            self._events_send = send
            self._work.start_soon(self._event_loop, receive)
            if self.shared is not None and self.settings.consume:
                from wf78_core.cluster.worker import StreamWorker

                self.worker = StreamWorker(self, self.shared)
                await self._work.start(self.worker.run)
            for workflow in self.config.workflows:
                if workflow.trigger == "schedule":
                    self._work.start_soon(self._schedule_loop, workflow)
        except BaseException:
            await stack.__aexit__(None, None, None)
            self._reset()
            raise
        self._stack = stack
        self._running = True
        self._closing = False
        self._started_at = time.monotonic()
        if self.mirrors is not None:
            self.mirrors.start()  # first pass: what a crash left in the outbox
        if self.journal is not None:
            try:
                await self._resume()
            except BaseException:
                await self.__aexit__(None, None, None)
                raise
        if any(table.sharding is not None for table in self.config.tables.values()):
            # Today's shards exist before the first write; the workflow keeps them coming.
            try:
                self.startup_maintenance = await maintain(self)
            except BaseException:
                await self.__aexit__(None, None, None)
                raise
        return self

    @property
    def running(self) -> bool:
        """Entered and not shutting down: accepting work."""
        return self._running and not self._closing

    def table(
        self, name: str, *, identity: Identity | None = None, priority: int | None = None
    ) -> Table:
        """The configured table ``name`` as seen by ``identity``: koa78's Base78 methods."""
        return Table(self, name, identity=identity, priority=priority)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        try:
            return await stack.__aexit__(exc_type, exc, tb)
        finally:
            self._reset()

    def _reset(self) -> None:
        self._running = False
        self.worker = None
        self._work = None
        self._sources.clear()
        self._by_type.clear()
        self._agents.clear()
        self._route_cache.clear()

    async def _drain(self) -> None:
        """Stop triggers, let accepted work finish for ``drain_timeout``, cancel the rest."""
        self._closing = True
        if self._events_send is not None:
            await self._events_send.aclose()
        worker = self.worker
        if worker is not None:
            worker.stop()
        with anyio.move_on_after(self.settings.drain_timeout):
            while (
                self._pending.in_use
                or any(not r.done.is_set() for r in self.backend.runs())
                or (worker is not None and worker.busy)
            ):
                self._idle = anyio.Event()
                await self._idle.wait()
        for run in self.backend.runs():
            if not run.done.is_set():
                self._cancel_run(run, "engine shut down")
        for ticket in list(self._tickets):
            if ticket.waiter is not None and self.scheduler.withdraw(ticket.waiter):
                self._tickets.discard(ticket)
                self.scheduler.release((self._pending,))
                ticket._finish(None, Wf78Error("the engine shut down before the operation ran"))
        assert self._work is not None
        self._work.cancel_scope.cancel()

    def _check_running(self) -> None:
        if not self._running or self._closing:
            raise Wf78Error("the engine is not running: use `async with engine:` first")

    def _work_done(self) -> None:
        if self._closing:
            self._idle.set()

    # -- the data path ------------------------------------------------------------------

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
        self._check_running()
        level = self.settings.submit_priority if priority is None else priority
        pending = self._pending.alone
        scheduler = self.scheduler
        if not scheduler.try_acquire(pending):
            await self._admit(level)
        self.submitted += 1
        op = self._prepare(op)  # ids and key fixed now: every attempt writes the same rows
        observed = bool(self._observers)
        if observed:
            self._notify(TaskEvent(state="running", workflow="submit", task=op.action))
        try:
            result = await self._data_path(op, level, context, task=None, outer=self._global.alone)
            self.completed += 1
            if observed:
                self._notify(
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
            self.failed += 1
            if observed:
                self._notify(
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
            if self._closing:
                self._work_done()

    def _prepare(self, op: Operation, task: tuple[str, str] | None = None) -> Operation:
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
        self._check_running()
        level = self.settings.submit_priority if priority is None else priority
        if not self.scheduler.try_acquire(self._pending.alone):
            await self._admit(level)
        op = self._prepare(op)
        ticket = Ticket(op, level, dict(context or {}))
        try:
            # Chosen now, so the ticket waits for every limit it needs and holds none.
            if op.data_source is not None:
                source, reason = self._resolve(op.data_source, op.action), "explicit data_source"
            else:
                name, reason = await self._choose_source(op, None, ticket.context)
                source = self._sources[name]
            agent = await self._allocate_agent(op, source)
        except BaseException:
            self.scheduler.release(self._pending.alone)
            raise
        self.submitted += 1
        self._tickets.add(ticket)
        work = self._work
        assert work is not None
        limits = agent.limit_set(self._global.alone, source.limit)

        def granted() -> None:
            ticket.waiter = None
            work.start_soon(self._run_ticket, ticket, (source, agent, limits), reason)

        ticket.waiter = self.scheduler.enqueue(level, limits, granted)
        return ticket

    async def _run_ticket(
        self, ticket: Ticket, held: tuple[_Source, Agent, tuple[Limit, ...]], reason: str
    ) -> None:
        try:
            result = await self._data_path(
                ticket.operation,
                ticket.priority,
                ticket.context,
                task=None,
                outer=self._global.alone,
                reason=reason,
                held=held,
            )
        except Exception as error:
            self.failed += 1
            ticket._finish(None, error)
        except BaseException:
            self.failed += 1
            ticket._finish(None, Wf78Error("the engine shut down before the operation finished"))
            raise
        else:
            self.completed += 1
            ticket._finish(result, None)
        finally:
            self._tickets.discard(ticket)
            self.scheduler.release(self._pending.alone)
            self._work_done()

    async def _admit(self, level: int) -> None:
        with anyio.move_on_after(self.settings.overload_timeout) as scope:
            await self.scheduler.acquire(level, (self._pending,))
        if scope.cancelled_caught:
            raise Overloaded(
                f"engine queue full ({self._pending.capacity} operations accepted and not "
                f"finished) for {self.settings.overload_timeout}s",
                retry_after=max(self.settings.overload_timeout, 1.0),
            )

    def _resolve(self, name: str, action: str) -> _Source:
        """A configured source by name, or the first healthy source of that type."""
        key = (name, action)
        cached = self._route_cache.get(key)
        if cached is not None and cached.healthy:
            return cached
        source = self._sources.get(name)
        if source is None:
            of_type = self._by_type.get(name)
            if not of_type:
                raise NoDataSource(
                    f"unknown data source {name!r} (configured: {sorted(self._sources)})",
                    data_source=name,
                )
            able = [s for s in of_type if action in s.info.actions] or of_type
            source = next((s for s in able if s.healthy), able[0])
        self._route_cache[key] = source
        return source

    async def _choose_source(
        self, op: Operation, task: TaskDefinition | None, context: Mapping[str, Any]
    ) -> tuple[str, str]:
        """The source for an operation and the reason (note 3.1, rules of 4.1)."""
        explicit = op.data_source or (task.data_source if task is not None else None)
        if explicit:
            return self._resolve(explicit, op.action).name, "explicit data_source"
        table = self.config.tables.get(op.table) if op.table else None
        if table is not None and table.data_source:
            return self._resolve(table.data_source, op.action).name, "table data_source"
        if table is not None and table.kind and op.kind is None:
            op = msgspec.structs.replace(op, kind=table.kind)
        candidates = [
            s.info for s in self._sources.values() if s.healthy and op.action in s.info.actions
        ]
        if not candidates:
            raise NoDataSource(f"no healthy data source can perform {op.action!r}", retryable=True)
        choice = await self._select.first(
            operation=op, task=task, context=context, candidates=candidates
        )
        if choice is None:
            return candidates[0].name, "first candidate (no strategy chose)"
        name, reason = (choice, "strategy") if isinstance(choice, str) else choice
        if name not in self._sources:
            name = self._resolve(name, op.action).name
        return name, reason

    async def _data_path(
        self,
        op: Operation,
        level: int,
        context: Mapping[str, Any] | None,
        *,
        task: TaskDefinition | None,
        outer: tuple[Limit, ...] = (),
        reason: str | None = None,
        run_id: str | None = None,
        held: tuple[_Source, Agent, tuple[Limit, ...]] | None = None,
    ) -> Result:
        """Select, allocate, execute with retry and fallback. ``held``: the source, agent
        and limits a queued ticket was granted, used (and released) by the first attempt."""
        if held is not None:
            source, reason = held[0], reason or "granted to a queued ticket"
        elif op.data_source is not None and reason is None:
            source = self._resolve(op.data_source, op.action)
            reason = "explicit data_source"
        else:
            name, chosen_reason = await self._choose_source(op, task, context or {})
            source = self._sources[name]
            reason = reason or chosen_reason
        fallback = op.fallback or (task.fallback if task is not None else ())
        retry = op.retry if op.retry is not None else (task.retry if task is not None else 0)
        # engine.submit has no timeout unless the operation or its source sets one: a
        # cancel scope per operation would cost more than the dispatch itself.
        timeout = op.timeout or (task.timeout if task is not None else None)
        if timeout is None:
            timeout = self.config.datasources[source.name].timeout
        attempts = 0
        tried: tuple[str, ...] = ()
        error: OperationError | None = None
        started = time.perf_counter()
        scheduler = self.scheduler
        for index in range(1 + len(fallback)):
            if index:
                try:
                    source = self._resolve(fallback[index - 1], op.action)
                except NoDataSource as missing:
                    error = missing
                    continue
                self.fallbacks += 1
                source.counters.fallbacks += 1
                reason = f"fallback after {tried[-1]} failed: {error}"
            tries = 1 + retry if index == 0 else 1
            for attempt in range(tries):
                attempts += 1
                counters = source.counters
                # Each attempt runs here, not in coroutines of its own: with 1,000 operations
                # in flight, every frame alive while they wait is 1,000 more objects for the
                # garbage collector to walk (the B6 benchmark).
                try:
                    if held is not None:
                        _, agent, limits = held
                        held = None
                    else:
                        if not source.healthy:
                            # Back already? An attempt may ask, at most once per PROBE_INTERVAL
                            # per source, rather than wait for the next round of health checks.
                            now = anyio.current_time()
                            if now >= source.probe_at:
                                source.probe_at = now + PROBE_INTERVAL
                                await self._check_source(source)
                            if not source.healthy:
                                raise NoAgentAvailable(
                                    f"data source {source.name!r} failed its health check",
                                    data_source=source.name,
                                )
                        agents = source.agents
                        if len(agents) == 1:
                            agent = agents[0]
                        else:
                            agent = await self._allocate_agent(op, source)
                        limits = agent.limit_set(outer, source.limit)
                        if not scheduler.try_acquire(limits):
                            await scheduler.acquire(level, limits)
                    # From here the limits are held; they are released on every path.
                    attempt_started = time.perf_counter()
                    try:
                        if timeout is None:
                            value = await source.adapter.execute(op)
                        else:
                            with anyio.CancelScope(
                                deadline=anyio.current_time() + timeout
                            ) as scope:
                                value = await source.adapter.execute(op)
                            if scope.cancelled_caught:
                                raise TaskTimeout(
                                    f"{op.action} on {source.name!r} timed out after {timeout}s",
                                    data_source=source.name,
                                )
                    except OperationError as failure:
                        counters.errors += 1
                        if failure.data_source is None:
                            failure.data_source = source.name
                        raise
                    except Exception as failure:
                        counters.errors += 1
                        raise DataSourceError(
                            f"{source.name!r} raised {type(failure).__name__}: {failure}",
                            data_source=source.name,
                        ) from failure
                    finally:
                        scheduler.release(limits)
                except OperationError as failure:
                    error = failure
                    if not failure.retryable:
                        failure.attempts = attempts
                        raise
                    if attempt + 1 < tries:
                        self.retries += 1
                        counters.retries += 1
                        await anyio.sleep(self._backoff(attempt))
                    continue
                finished = time.perf_counter()
                counters.ops += 1
                counters.latency.record(finished - attempt_started)
                agent.completed += 1
                return Result(
                    value=value,
                    data_source=source.name,
                    source_type=source.type,
                    reason=reason,
                    agent=agent.id,
                    attempts=attempts,
                    fallback_from=tried,
                    elapsed=finished - started,
                )
            tried += (source.name,)
        assert error is not None
        error.attempts = attempts
        error.exhausted = True  # type: ignore[attr-defined]
        raise error

    async def _allocate_agent(self, op: Operation, source: _Source) -> Agent:
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

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter (AWS architecture blog's recommendation)."""
        ceiling = min(self.settings.retry_backoff_max, self.settings.retry_backoff * 2**attempt)
        return random.uniform(0, ceiling)

    # -- health --------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        interval = self.config.agents.health_interval
        while True:
            await anyio.sleep(interval)
            await self.check_health()

    async def check_health(self) -> dict[str, bool]:
        """Run every source's health check now; failing sources leave rotation."""
        return {
            source.name: await self._check_source(source) for source in list(self._sources.values())
        }

    async def _check_source(self, source: _Source) -> bool:
        try:
            with anyio.fail_after(max(self.config.agents.health_interval, 1.0)):
                await source.adapter.health()
            healthy = True
        except Exception:
            healthy = False
        if healthy != source.healthy:
            source.healthy = healthy
            self._route_cache.clear()
        # Strategies see recent latency so they can demote a slow source.
        source.info = msgspec.structs.replace(
            source.info, healthy=healthy, latency=source.counters.latency.percentile(0.5)
        )
        return healthy

    # -- workflow runs ---------------------------------------------------------------------

    async def run(
        self,
        workflow_id: str,
        context: Mapping[str, Any] | None = None,
        *,
        wait: bool = True,
        priority: int | None = None,
    ) -> Run:
        """Start a run of a workflow (the ``api`` trigger); wait for it unless ``wait=False``."""
        self._check_running()
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            raise UnknownWorkflow(
                f"unknown workflow {workflow_id!r} (known: {sorted(self.workflows)})"
            )
        if self.shared is not None:
            started = await self._start_remote(workflow, context, priority, waited=wait)
            return await self.shared.wait_run(started.id) if wait else started
        if not self.scheduler.try_acquire((self._pending,)):
            await self._admit(workflow.priority)
        run = self._new_run(workflow, context, priority)
        await self._journal_started(run)
        self._start_run(run)
        if wait:
            await run.done.wait()
        return run.snapshot()

    async def _start_remote(
        self,
        workflow: WorkflowDefinition,
        context: Mapping[str, Any] | None,
        priority: int | None,
        *,
        waited: bool = False,
    ) -> Run:
        """Queue a run on the redis backend; returns once Redis holds it."""
        assert self.shared is not None
        level = workflow.priority if priority is None else priority
        run_id = uuid4().hex
        created = time.time()
        values = dict(context or {})
        await self.shared.start_run(run_id, workflow, values, level, created, waited=waited)
        return Run(
            id=run_id,
            workflow=workflow.id,
            status="running",
            tasks={t.id: TaskRun(id=t.id, state="pending") for t in workflow.tasks},
            context=values,
            created=created,
            started=created,
        )

    async def _journal_started(self, run: RunState) -> None:
        """Record an accepted run before anyone is told it was accepted."""
        if self.journal is None:
            return
        try:
            await self.journal.started(
                JournaledRun(
                    id=run.id,
                    workflow=run.workflow.id,
                    context=run.context,
                    priority=run.priority,
                    created=run.created,
                )
            )
        except BaseException:
            self.backend.discard_run(run.id)
            self.scheduler.release((self._pending,))
            raise

    def _new_run(
        self,
        workflow: WorkflowDefinition,
        context: Mapping[str, Any] | None,
        priority: int | None,
    ) -> RunState:
        level = workflow.priority if priority is None else priority
        run = RunState(uuid4().hex, workflow, dict(context or {}), level)
        self.backend.add_run(run)
        return run

    async def emit(self, event: str, payload: Mapping[str, Any] | None = None) -> list[str]:
        """The ``event`` trigger: queue a run of every workflow subscribed to ``event``."""
        self._check_running()
        assert self._events_send is not None
        run_ids = []
        for workflow in self.workflows.values():
            if workflow.trigger != "event" or workflow.event != event:
                continue
            if self.shared is not None:
                run_ids.append((await self._start_remote(workflow, payload, None)).id)
                continue
            if not self.scheduler.try_acquire((self._pending,)):
                await self._admit(workflow.priority)
            run = self._new_run(workflow, payload, None)
            await self._journal_started(run)
            try:
                with anyio.fail_after(self.settings.overload_timeout):
                    await self._events_send.send(run)
            except TimeoutError:
                self.backend.discard_run(run.id)
                self.scheduler.release((self._pending,))
                if self.journal is not None:
                    self.journal.finished(run.id, "cancelled", "event queue full")
                raise Overloaded(f"event queue full ({self.settings.event_queue_size})") from None
            run_ids.append(run.id)
        return run_ids

    async def _event_loop(self, receive: MemoryObjectReceiveStream[RunState]) -> None:
        async with receive:
            async for run in receive:
                self._start_run(run)

    async def _schedule_loop(self, workflow: WorkflowDefinition) -> None:
        schedule = workflow.schedule
        assert schedule is not None
        cron = croniter(schedule, datetime.now(UTC)) if isinstance(schedule, str) else None
        shared = self.shared is not None
        while True:
            if cron is not None:
                due = cron.get_next(datetime).timestamp()
            else:
                assert isinstance(schedule, int | float)
                period = float(schedule)
                # Shared: every process wakes on the same multiples of the period.
                due = (time.time() // period + 1) * period if shared else time.time() + period
            await anyio.sleep(max(due - time.time(), 0.0))
            if self._closing:
                return
            if shared:
                await self._scheduled_remote(workflow, due)
                continue
            if not self.scheduler.try_acquire((self._pending,)):
                continue  # queue full: skip this tick rather than pile up
            run = self._new_run(workflow, {"scheduled_at": time.time()}, None)
            try:
                await self._journal_started(run)
            except Exception:
                continue  # the journal refused this tick's run: the next tick tries again
            self._start_run(run)

    async def _scheduled_remote(self, workflow: WorkflowDefinition, due: float) -> None:
        """One run per tick across every process sharing the backend: the first process
        to claim the tick (its due time) starts it."""
        assert self.shared is not None
        try:
            if await self.shared.claim_tick(workflow.id, due):
                await self._start_remote(workflow, {"scheduled_at": time.time()}, None)
        except Exception as error:  # Redis away: the next tick tries again
            logger.warning("scheduled run of %r skipped: %s", workflow.id, error)

    def _start_run(self, run: RunState, *, resumed: bool = False) -> None:
        if run.done.is_set():  # cancelled while it waited in the event queue
            return
        run.status = "running"
        run.started = run.started or time.time()
        if not resumed:
            for slot in run.tasks.values():
                if slot.remaining == 0:
                    self._queue_task(run, slot)
            return
        # Checkpointed tasks keep their outcome; what they left pending continues.
        for slot in run.tasks.values():
            if slot.state == "failed":
                self._skip_dependants(run, slot)
        for slot in run.tasks.values():
            if slot.state == "pending" and slot.remaining == 0:
                self._queue_task(run, slot)
        if run.left == 0:
            self._finish_run(run)

    def _queue_task(self, run: RunState, slot: TaskSlot) -> None:
        work = self._work
        assert work is not None
        slot.state = "queued"
        limits = (self._global, self.backend.workflow_limit(run.workflow.id))
        self._emit_event(run, slot, "queued")

        def granted() -> None:
            slot.waiter = None
            work.start_soon(self._run_task, run, slot, limits)

        slot.waiter = self.scheduler.enqueue(run.priority, limits, granted)

    async def _run_task(self, run: RunState, slot: TaskSlot, limits: tuple[Limit, ...]) -> None:
        if slot.done:  # cancelled between the grant and this task starting
            self.scheduler.release(limits)
            return
        task = slot.definition
        action = self.actions[task.action]
        owns_retry = getattr(action, "wf78_owns_retry", False)
        slot.state = "running"
        slot.attempts += 1
        slot.started = slot.started or time.time()
        self._emit_event(run, slot, "running")
        ctx = TaskContext(
            engine=self,
            task=task,
            run_id=run.id,
            priority=run.priority,
            context=run.context,
            results={dep: run.tasks[dep].result for dep in task.depends_on},
        )
        error: Exception | None = None
        value: Any = None
        with anyio.CancelScope() as scope:
            slot.scope = scope
            try:
                timeout = None if owns_retry else (task.timeout or self.settings.default_timeout)
                value, error = await run_action(action, ctx, timeout)
            except BaseException:
                # Shutdown cancels past our own scope: finish the task (and run) anyway so
                # nobody waiting on the run hangs; a no-op when our scope catches it.
                self._finish_task(run, slot, "cancelled", error=run.error or "cancelled")
                raise
            finally:
                slot.scope = None
                self.scheduler.release(limits)
        if scope.cancelled_caught:
            self._finish_task(run, slot, "cancelled", error=run.error or "cancelled")
            return
        if error is None:
            slot.result = value
            if isinstance(value, Result):
                slot.data_source = value.data_source
            self._finish_task(run, slot, "succeeded")
            if self.journal is not None:
                await self.journal.room()
            return
        if worth_retrying(error, owns_retry, slot.attempts, task.retry):
            self.retries += 1
            slot.state = "retrying"
            self._emit_event(run, slot, "retrying", error=str(error))
            with anyio.CancelScope() as backoff:
                slot.scope = backoff
                await anyio.sleep(self._backoff(slot.attempts - 1))
            slot.scope = None
            if slot.state == "retrying":
                self._queue_task(run, slot)
            return
        message = f"{type(error).__name__}: {error}"
        await self._dead_letter(run, slot, message)
        self._finish_task(run, slot, "failed", error=message)
        if self.journal is not None:
            await self.journal.room()

    async def _dead_letter(self, run: RunState, slot: TaskSlot, error: str) -> None:
        """Keep a task that failed for good, to be looked at and run again."""
        task = slot.definition
        letter = DeadLetter(
            id=uuid4().hex,
            run_id=run.id,
            workflow=run.workflow.id,
            task=task.id,
            action=task.action,
            error=error,
            attempts=slot.attempts,
            time=time.time(),
        )
        if self.journal is not None:
            try:
                with anyio.CancelScope(shield=True):
                    await self.journal.add_dead_letter(letter)
            except Exception:
                pass  # not durable, but still listed: the failure itself is recorded below
        self._dead[letter.id] = letter

    def _finish_task(
        self, run: RunState, slot: TaskSlot, state: TaskState, *, error: str | None = None
    ) -> None:
        if slot.done:
            return
        slot.state = state
        slot.error = error
        slot.finished = time.time()
        run.left -= 1
        self._emit_event(run, slot, state, error=error)
        if self.journal is not None and state != "cancelled":
            self.journal.checkpoint(run.id, _checkpoint(slot))
        if state == "succeeded":
            for dependant in slot.dependants:
                dependant.remaining -= 1
                if dependant.remaining == 0 and dependant.state == "pending":
                    self._queue_task(run, dependant)
        else:
            self._skip_dependants(run, slot)
        if run.left == 0:
            self._finish_run(run)

    def _skip_dependants(self, run: RunState, slot: TaskSlot) -> None:
        stack = list(slot.dependants)
        while stack:
            dependant = stack.pop()
            if dependant.done:
                continue
            dependant.state = "skipped"
            dependant.error = f"dependency {slot.definition.id!r} did not succeed"
            dependant.finished = time.time()
            run.left -= 1
            self._emit_event(run, dependant, "skipped", error=dependant.error)
            if self.journal is not None:
                self.journal.checkpoint(run.id, _checkpoint(dependant))
            stack.extend(dependant.dependants)

    def _finish_run(self, run: RunState) -> None:
        if run.status == "running":
            failed = any(s.state == "failed" for s in run.tasks.values())
            run.status = "failed" if failed else "succeeded"
            if failed:
                run.error = next(
                    f"task {s.definition.id!r}: {s.error}"
                    for s in run.tasks.values()
                    if s.state == "failed"
                )
        run.finished = time.time()
        run.done.set()
        self.scheduler.release((self._pending,))
        self.backend.finish_run(run)
        if self.journal is not None and not (self._closing and run.status == "cancelled"):
            # A run cancelled by shutdown stays unfinished in the journal: the next start
            # resumes it (its finished tasks are not run again).
            self.journal.finished(run.id, run.status, run.error)
        self._work_done()

    # -- the journal: resuming runs, dead letters ----------------------------------------

    async def _resume(self) -> None:
        """Start again every run the journal holds as unfinished (after a crash or a
        shutdown that cancelled it): checkpointed tasks keep their outcome, the rest run."""
        journal = self.journal
        assert journal is not None
        self._dead = {letter.id: letter for letter in await journal.dead_letters()}
        for saved in await journal.finished_runs():
            # How runs finished before this start (summaries: no task results), so a run
            # id answered with a 202 before a crash is still known.
            if self.backend.get_run(saved.id) is None and saved.workflow in self.workflows:
                if saved.status == "failed":  # its checkpoints are kept for its dead letters
                    saved = await journal.load_run(saved.id) or saved
                summary = self._finished_summary(saved)
                self.backend.add_run(summary)
                self.backend.finish_run(summary)  # counts toward run_history
        for saved in await journal.unfinished():
            workflow = self.workflows.get(saved.workflow)
            if workflow is None:
                journal.finished(
                    saved.id, "failed", f"workflow {saved.workflow!r} is no longer configured"
                )
                continue
            if not self.scheduler.try_acquire((self._pending,)):
                await self._admit(saved.priority)
            run = self._restore(saved, workflow)
            self.backend.add_run(run)
            self.resumed_runs += 1
            self._start_run(run, resumed=True)

    def _restore(self, saved: JournaledRun, workflow: WorkflowDefinition) -> RunState:
        """A run as the journal left it: finished tasks done, their dependants counted."""
        run = RunState(saved.id, workflow, dict(saved.context), saved.priority)
        run.created = saved.created
        for task_id, checkpoint in saved.tasks.items():
            slot = run.tasks.get(task_id)
            if slot is None or checkpoint.state not in ("succeeded", "failed", "skipped"):
                continue
            slot.state = checkpoint.state  # type: ignore[assignment]
            slot.result = checkpoint.result
            slot.error = checkpoint.error
            slot.attempts = checkpoint.attempts
            slot.data_source = checkpoint.data_source
            slot.started = checkpoint.started
            slot.finished = checkpoint.finished
            run.left -= 1
        for slot in run.tasks.values():
            if slot.state == "succeeded":
                for dependant in slot.dependants:
                    dependant.remaining -= 1
        return run

    def _finished_summary(self, saved: JournaledRun) -> RunState:
        """A run that finished before this start, as its journal summary tells it."""
        run = self._restore(saved, self.workflows[saved.workflow])
        run.status = saved.status  # type: ignore[assignment]
        run.error = saved.error
        run.finished = saved.finished
        # A succeeded run's tasks all succeeded; of other runs, tasks without a checkpoint
        # are reported cancelled (what they did is not known any more).
        state = "succeeded" if saved.status == "succeeded" else "cancelled"
        for slot in run.tasks.values():
            if not slot.done:
                slot.state = state  # type: ignore[assignment]
                slot.finished = saved.finished
        run.left = 0
        run.done.set()
        return run

    def dead_letters(self) -> list[DeadLetter]:
        """Tasks that failed after their retries and fallbacks, newest first (with the
        redis backend: as last read from Redis; ``fetch_dead_letters`` reads them now)."""
        if self.shared is not None:
            return self.shared.dead_cache
        return sorted(self._dead.values(), key=lambda letter: letter.time, reverse=True)

    async def fetch_dead_letters(self) -> list[DeadLetter]:
        """:meth:`dead_letters`, read from the redis backend when there is one."""
        if self.shared is not None:
            return await self.shared.dead_letters()
        return self.dead_letters()

    async def retry_dead_letter(self, letter_id: str) -> Run:
        """Run a dead letter's task again, in its own run: the run reopens, the task and the
        dependants it made skip go back to pending, and the run goes on from there.

        Raises :class:`UnknownWorkflow` for an unknown letter and :class:`Wf78Error`
        while its run is still running (retry once it has finished).
        """
        self._check_running()
        if self.shared is not None:
            return await self._retry_remote(letter_id)
        letter = self._dead.get(letter_id)
        if letter is None:
            raise UnknownWorkflow(f"unknown dead letter {letter_id!r}")
        run = self.backend.get_run(letter.run_id)
        if run is None and self.journal is not None:
            saved = await self.journal.load_run(letter.run_id)
            workflow = self.workflows.get(saved.workflow) if saved is not None else None
            if saved is not None and workflow is not None:
                run = self._restore(saved, workflow)
                run.status = "failed"
                run.done.set()
                self.backend.add_run(run)
        if run is None:
            raise UnknownWorkflow(
                f"the run {letter.run_id!r} of dead letter {letter_id!r} is no longer known"
            )
        if not run.done.is_set():
            raise Wf78Error(
                f"run {run.id!r} is still running: retry dead letter {letter_id!r} once it "
                "has finished"
            )
        slot = run.tasks.get(letter.task)
        if slot is None:
            raise UnknownWorkflow(f"run {run.id!r} has no task {letter.task!r}")
        if not self.scheduler.try_acquire((self._pending,)):
            await self._admit(run.priority)
        reopened = [slot]
        stack = list(slot.dependants)
        while stack:
            dependant = stack.pop()
            if dependant.state == "skipped":
                reopened.append(dependant)
                stack.extend(dependant.dependants)
        for reset in reopened:
            reset.state = "pending"
            reset.error = None
            reset.result = None
            reset.attempts = 0
            reset.started = reset.finished = None
            definition = reset.definition
            reset.remaining = sum(
                1 for dep in set(definition.depends_on) if run.tasks[dep].state != "succeeded"
            )
        run.left += len(reopened)
        run.status = "running"
        run.error = None
        run.finished = None
        run.done = anyio.Event()
        try:
            await self._journal_started(run)
            if self.journal is not None:
                await self.journal.remove_dead_letter(letter_id)
        except BaseException:
            self.backend.add_run(run)  # _journal_started discarded it: keep it known
            raise
        self._dead.pop(letter_id, None)
        self._start_run(run, resumed=True)
        return run.snapshot()

    async def _retry_remote(self, letter_id: str) -> Run:
        assert self.shared is not None
        letters = {letter.id: letter for letter in await self.shared.dead_letters()}
        letter = letters.get(letter_id)
        if letter is None:
            raise UnknownWorkflow(f"unknown dead letter {letter_id!r}")
        answer = await self.shared.reopen(letter)
        if answer == 0:
            raise Wf78Error(
                f"run {letter.run_id!r} is still running: retry dead letter {letter_id!r} "
                "once it has finished"
            )
        if answer == -2:
            raise UnknownWorkflow(f"unknown dead letter {letter_id!r}")
        if answer < 0:
            raise UnknownWorkflow(
                f"the run {letter.run_id!r} of dead letter {letter_id!r} is no longer known"
            )
        return await self.fetch_run(letter.run_id)

    def get_run(self, run_id: str) -> Run:
        """The current snapshot of a run; :class:`UnknownWorkflow` if there is none.

        With the redis backend runs live in Redis: use ``await engine.fetch_run(run_id)``.
        """
        self._check_local("get_run", "fetch_run")
        run = self.backend.get_run(run_id)
        if run is None:
            raise UnknownWorkflow(f"unknown run {run_id!r}")
        return run.snapshot()

    async def fetch_run(self, run_id: str) -> Run:
        """:meth:`get_run` for every backend: with the redis backend, the run as Redis
        holds it now, whichever process started it."""
        if self.shared is not None:
            run = await self.shared.fetch_run(run_id)
            if run is None:
                raise UnknownWorkflow(f"unknown run {run_id!r}")
            return run
        return self.get_run(run_id)

    def _check_local(self, name: str, instead: str) -> None:
        if self.shared is not None:
            raise Wf78Error(
                f"engine.{name}() cannot ask Redis without awaiting: with the redis backend "
                f"use `await engine.{instead}(...)`"
            )

    async def cancel(self, run_id: str) -> Run:
        """Cancel a run: queued tasks are withdrawn, running ones cancelled, slots freed.

        With the redis backend, tasks already running on a worker finish there and what
        they return is dropped."""
        if self.shared is not None:
            if await self.shared.cancel_run(run_id, "cancelled by request") < 0:
                raise UnknownWorkflow(f"unknown run {run_id!r}")
            return await self.fetch_run(run_id)
        run = self.backend.get_run(run_id)
        if run is None:
            raise UnknownWorkflow(f"unknown run {run_id!r}")
        self._cancel_run(run, "cancelled by request")
        await anyio.lowlevel.checkpoint()
        return run.snapshot()

    def recent_runs(self, limit: int = 20) -> list[Run]:
        """Snapshots of the newest ``limit`` runs still known (active and finished), newest first."""
        self._check_local("recent_runs", "fetch_recent_runs")
        newest = heapq.nlargest(max(0, limit), self.backend.runs(), key=lambda run: run.created)
        return [run.snapshot() for run in newest]

    async def fetch_recent_runs(self, limit: int = 20) -> list[Run]:
        """:meth:`recent_runs` for every backend (with redis: from every process)."""
        if self.shared is None:
            return self.recent_runs(limit)
        return await self.shared.recent_runs(limit) if limit > 0 else []

    def _cancel_run(self, run: RunState, why: str) -> None:
        if run.done.is_set():
            return
        if run.status == "pending":
            # Queued in the event stream: it will start and find every task cancelled.
            run.status = "running"
        run.status = "cancelled"
        run.error = why
        for slot in run.tasks.values():
            if slot.done:
                continue
            if slot.state == "running" and slot.scope is not None:
                slot.scope.cancel()  # _run_task finishes it and frees its slots
                continue
            if slot.waiter is not None:
                self.scheduler.withdraw(slot.waiter)
                slot.waiter = None
            if slot.scope is not None:  # sleeping before a retry
                slot.scope.cancel()
            slot.state = "cancelled"
            slot.error = why
            slot.finished = time.time()
            run.left -= 1
            self._emit_event(run, slot, "cancelled", error=why)
        if run.left == 0:
            self._finish_run(run)

    def _emit_event(
        self, run: RunState, slot: TaskSlot, state: TaskState, *, error: str | None = None
    ) -> None:
        if self._observers:
            self._notify(
                TaskEvent(
                    state=state,
                    workflow=run.workflow.id,
                    task=slot.definition.id,
                    run_id=run.id,
                    data_source=slot.data_source,
                    attempt=slot.attempts,
                    error=error,
                    time=time.time(),
                )
            )

    def _notify(self, event: TaskEvent) -> None:
        """Call observers in order; async ones are awaited in the engine's task group."""
        for _, function, _ in self._observers.impls:
            result = function(event=event)
            if inspect.isawaitable(result):
                if self._work is not None:
                    self._work.start_soon(_await, result)
                else:
                    result.close()  # type: ignore[attr-defined]

    # -- introspection --------------------------------------------------------------------------

    async def mirror_stats(self) -> MirrorStats | None:
        """The outbox relay's counters and pending entries; None when no table has mirrors."""
        return None if self.mirrors is None else await self.mirrors.stats()

    def stats(self) -> EngineStats:
        """A snapshot of queues, limits, agents, sources and totals."""
        sources = []
        for source in self._sources.values():
            counters = source.counters
            latency = counters.latency
            sources.append(
                SourceStats(
                    name=source.name,
                    type=source.type,
                    healthy=source.healthy,
                    in_flight=source.limit.in_use,
                    capacity=source.limit.capacity,
                    ops=counters.ops,
                    errors=counters.errors,
                    retries=counters.retries,
                    fallbacks=counters.fallbacks,
                    latency_mean=latency.total / latency.count if latency.count else 0.0,
                    latency_p50=latency.percentile(0.5),
                    latency_p90=latency.percentile(0.9),
                    latency_p99=latency.percentile(0.99),
                )
            )
        agents = []
        for agent in self._agents:
            in_rotation = any(self._sources[name].healthy for name in agent.sources)
            agents.append(
                AgentStats(
                    id=agent.id,
                    capabilities=agent.capabilities,
                    status=agent.status if in_rotation else "out_of_rotation",
                    running=agent.running,
                    capacity=agent.capacity,
                    load=agent.load,
                    completed=agent.completed,
                )
            )
        queued_by_workflow: dict[str, int] = {}
        runs = list(self.backend.runs())
        for run in runs:
            if not run.done.is_set():
                count = sum(1 for s in run.tasks.values() if s.state == "queued")
                queued_by_workflow[run.workflow.id] = (
                    queued_by_workflow.get(run.workflow.id, 0) + count
                )
        workflows = [
            WorkflowStats(
                id=w.id,
                priority=w.priority,
                running=(
                    self.shared.running_by_workflow.get(w.id, 0)
                    if self.shared is not None
                    else self.backend.workflow_limit(w.id).in_use
                ),
                max_concurrent=w.max_concurrent,
                queued=queued_by_workflow.get(w.id, 0),
            )
            for w in self.workflows.values()
        ]
        active = sum(1 for run in runs if not run.done.is_set())
        queued = dict(self.scheduler.queued_by_priority)
        running = self._global.in_use
        if self.shared is not None:
            for level, depth in self.shared.depth.items():
                queued[level] = queued.get(level, 0) + depth
            running += self.worker.busy if self.worker is not None else 0
        return EngineStats(
            queued=dict(sorted(queued.items())),
            pending=self._pending.in_use,
            running=running,
            max_running=self._global.capacity,
            workflows=workflows,
            agents=agents,
            sources=sources,
            submitted=self.submitted,
            completed=self.completed,
            failed=self.failed,
            retries=self.retries,
            fallbacks=self.fallbacks,
            runs_active=active,
            runs_finished=len(runs) - active,
            uptime=time.monotonic() - self._started_at if self._running else 0.0,
            dead_letters=self.dead_letters()[:100],
            dead_letter_count=len(self.dead_letters()),
            journal=self.settings.journal if self.journal is not None else "off",
        )


async def _await(awaitable: Any) -> None:
    await awaitable


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it (plain values as they are: most task results)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    return msgspec.to_builtins(value, enc_hook=repr)


def _checkpoint(slot: TaskSlot) -> TaskCheckpoint:
    """A finished task as the journal keeps it; a result JSON cannot hold is kept as its repr."""
    return TaskCheckpoint(
        task=slot.definition.id,
        state=slot.state,
        result=_plain(slot.result),
        error=slot.error,
        attempts=slot.attempts,
        data_source=slot.data_source,
        started=slot.started,
        finished=slot.finished,
    )
