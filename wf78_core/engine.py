"""The composition root: an :class:`Engine` wires the core, data, persistence and cluster
parts together from a configuration, opens them in order and closes them in reverse.

It holds no algorithm of its own: the data path is :mod:`wf78_core.core.dispatch`,
workflow runs are the backend's (:mod:`wf78_core.core.inprocess` or
:mod:`wf78_core.cluster`), triggers are :mod:`wf78_core.core.triggers`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from contextlib import AsyncExitStack
from importlib import import_module
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import anyio
import msgspec
import pluggy

from wf78_core.config import (
    Config,
    ConfigReport,
    Identity,
    collect_report,
    load_config,
    read_config,
    with_maintenance,
)
from wf78_core.core.actions import builtin_actions
from wf78_core.core.admission import Admission, Counters
from wf78_core.core.agents import Agent
from wf78_core.core.auth import TokenAuth
from wf78_core.core.bus import EventBus
from wf78_core.core.dispatch import Dispatcher
from wf78_core.core.fairness import resolve_fair_by
from wf78_core.core.history import History, SampleStore
from wf78_core.core.inprocess import JOURNAL_HISTORY, InProcessBackend
from wf78_core.core.introspect import engine_stats
from wf78_core.core.lifecycle import Lifecycle, close_stack
from wf78_core.core.limits import Limiter, LimitStore
from wf78_core.core.ports import Backend
from wf78_core.core.records import DeadLetter, Journal
from wf78_core.core.runs import Run, RunStore
from wf78_core.core.sources import SourcePool, build_agents
from wf78_core.core.stats import EngineStats
from wf78_core.core.tickets import Ticket
from wf78_core.core.triggers import schedule_loop, subscribers
from wf78_core.core.workflows import WorkflowRunner
from wf78_core.data import sharding
from wf78_core.data.mirrors import MirrorStats, Relay
from wf78_core.data.sharding import MaintenanceReport, maintain
from wf78_core.data.table import Table
from wf78_core.definitions import Operation, Result, WorkflowDefinition
from wf78_core.errors import ConfigError, Problem, UnknownWorkflow, Wf78Error
from wf78_core.ids import hold_node_id, release_node_id
from wf78_core.persistence.journal import open_journal
from wf78_core.plugin.datasource import (
    DataSource,
    SourceSpec,
    TableSchema,
)
from wf78_core.plugin.drivers import require_driver
from wf78_core.plugin.loading import load_registries
from wf78_core.plugin.manager import (
    import_plugins,
    load_plugins,
    make_plugin_manager,
    plugin_names,
)
from wf78_core.plugin.spec import hookimpl

__all__ = ["BACKENDS", "LIMIT_STORES", "Engine"]

# An event's payload (``Engine.emit``).
_Payload = Mapping[str, Any] | None


class _BuiltinActions:
    """The core's and the data layer's own actions, registered like any plugin's (and
    overridable)."""

    @hookimpl(trylast=True)
    def wf78_register_actions(self, registry: Any) -> None:
        for name, function in {**builtin_actions(), **sharding.builtin_actions()}.items():
            registry.add(name, function, default=True)


def _in_process(engine: Engine) -> Backend:
    keep = engine.settings.run_history * JOURNAL_HISTORY  # finished runs' summaries
    journal = open_journal(engine.settings.journal, engine.base_dir, keep_finished=keep)
    runs = RunStore(engine.settings.run_history)
    runner = WorkflowRunner(
        engine.config.workflows,
        engine=engine,
        dispatcher=engine.dispatcher,
        actions=engine.actions,
        admission=engine.admission,
        runs=runs,
        journal=journal,
        bus=engine.bus,
        life=engine.life,
        counters=engine.counters,
        default_timeout=engine.settings.default_timeout,
    )
    return InProcessBackend(
        engine.settings,
        engine.workflows,
        runner=runner,
        runs=runs,
        admission=engine.admission,
        journal=journal,
        life=engine.life,
    )


def _redis(engine: Engine) -> Backend:
    # Imported only when configured: redis is a heavy driver (the wf78[redis] extra).
    require_driver("redis", "redis", what="[engine] backend 'redis'")
    cluster: Any = import_module("wf78_core.cluster.backend")
    backend: Backend = cluster.RedisBackend.from_engine(engine)
    return backend


def _checkable(
    config: Config | Mapping[str, Any] | str | Path | None, report: ConfigReport
) -> tuple[Config, list[ModuleType]]:
    """What of ``config`` is well formed (its problems in ``report``), without its ``[engine]
    plugins``, and the modules of those that import: each that does not is a problem too,
    and the rest is still checked."""
    if not isinstance(config, Config):
        config, _ = collect_report(read_config(config), report)
    modules, problems = import_plugins(config.engine.plugins)
    report.add_checked(problems)
    settings = msgspec.structs.replace(config.engine, plugins=())
    return msgspec.structs.replace(config, engine=settings), modules


def _hold_node_id(node: int | None, stack: AsyncExitStack) -> None:
    """Mint snowflakes with ``[engine] node_id`` until ``stack`` closes; unset, the redis
    backend leases one (wf78_core.cluster.nodes), else the process's random one serves."""
    if node is not None:
        hold_node_id(node)
        stack.callback(release_node_id, node)


async def _close(adapter: DataSource) -> None:
    """Close a source even when the shutdown happens under a cancelled scope: a close cut
    short leaves connections (and their threads) open. Bounded, so a stuck driver cannot
    hold the shutdown for ever."""
    with anyio.CancelScope(shield=True, deadline=anyio.current_time() + CLOSE_TIMEOUT):
        await adapter.close()


def _sample_store(engine: Engine) -> Callable[[], SampleStore] | None:
    """With the redis backend, every process's dashboard samples go to Redis too."""
    if engine.settings.backend != "redis":
        return None
    samples: Any = import_module("wf78_core.cluster.samples")
    factory: Callable[[], SampleStore] = samples.store_factory(engine.settings)
    return factory


#: seconds a source's close may take at shutdown
CLOSE_TIMEOUT = 30.0

#: ``[engine] backend`` -> how an engine builds it. Both satisfy :class:`Backend`.
BACKENDS: dict[str, Callable[[Engine], Backend]] = {"memory": _in_process, "redis": _redis}


def _redis_limits(engine: Engine) -> LimitStore:
    cluster: Any = import_module("wf78_core.cluster.limits")
    store: LimitStore = cluster.RedisLimitStore(engine.settings)
    return store


#: ``[engine] backend`` -> where ``[limits.<name>]`` are decided (None: in this process).
LIMIT_STORES: dict[str, Callable[[Engine], LimitStore | None]] = {
    "memory": lambda engine: None,
    "redis": _redis_limits,
}


def _begin(engine: Engine) -> None:
    """A start-up begins: refused under anything but asyncio. Before a restart (a second
    lifespan of the same app, on this event loop or a new one) the backend (journal writer,
    runs, cluster links) and the outbox relay are built anew, so nothing the last start
    bound to its event loop is used again. The engine's counters and configuration stay,
    the relay's counters start again; finished runs come back from a durable journal."""
    if not engine.life.begin():
        return
    engine.backend = BACKENDS[engine.settings.backend](engine)
    old = engine.mirrors
    if old is not None:
        engine.mirrors = Relay(engine)
        for tunable in ("batch", "interval", "concurrency", "poison_attempts"):
            setattr(engine.mirrors, tunable, getattr(old, tunable))


class Engine:
    """The wf78 workflow engine.

    ``Engine(config)`` takes a :class:`~wf78_core.config.Config`, a mapping, a path, or
    ``None`` for the embedded default. Use it as an async context manager: entering
    opens data sources, starts agents, health checks and triggers; leaving stops the
    triggers, lets accepted work finish (up to ``engine.drain_timeout``), cancels what
    is left and closes the sources; ``migrate=True`` adds the columns tables lack.
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any] | str | Path | None = None,
        *,
        plugins: Iterable[Any] = (),
        base_dir: str | Path | None = None,
        migrate: bool = False,
    ) -> None:
        if isinstance(config, str | Path) and base_dir is None:
            base_dir = Path(config).resolve().parent
        # A sharded table brings the wf78.maintenance workflow along.
        self.config = with_maintenance(load_config(config))
        self.settings = self.config.engine
        self.base_dir = str(base_dir or ".")
        own = [_BuiltinActions(), TokenAuth(self.config.auth), *load_plugins(self.settings.plugins)]
        self.pm: pluggy.PluginManager = make_plugin_manager([*own, *plugins])
        self.workflows: dict[str, WorkflowDefinition] = {w.id: w for w in self.config.workflows}
        self.life = Lifecycle()
        owned = any(table.owner for table in self.config.tables.values())
        self.admission = Admission(
            self.settings, fair_by=resolve_fair_by(self.settings.fair_by, owned)
        )
        #: ``[limits.<name>]``, asked by each caller's Table call (wf78_core.data.tenancy)
        self.limits = Limiter(self.config.limits)
        self.scheduler = self.admission.scheduler
        self.counters = Counters()
        self.bus = EventBus(self.pm)
        self.sources = SourcePool(self.config.agents.health_interval)
        self.agents: list[Agent] = []
        # Filled at start-up from the plugins (the runner reads this same dict).
        self.actions: dict[str, Callable[..., Any]] = {}
        self._tables = {
            name: TableSchema.from_config(name, table) for name, table in self.config.tables.items()
        }
        # Only the configured built-in allocator takes part; others stay registered.
        self._allocators = plugin_names(self.pm, "wf78_allocate_agent")
        chosen = self.config.agents.allocator
        self.dispatcher = Dispatcher(
            self.config,
            self.pm,
            admission=self.admission,
            pool=self.sources,
            bus=self.bus,
            life=self.life,
            counters=self.counters,
            excluded_allocators=[p for n, p in self._allocators.items() if n != chosen],
        )
        # The outbox relay, when some table has mirrors (wf78_core.data.mirrors).
        self.mirrors: Relay | None = None
        if any(t.search_mirror or t.cache_mirror for t in self.config.tables.values()):
            self.mirrors = Relay(self)
        self.backend: Backend = BACKENDS[self.settings.backend](self)
        #: the dashboard's per-second samples (wf78_core.core.history)
        self.history = History(self.sources, self.stats, make_store=_sample_store(self))
        self._stack: AsyncExitStack | None = None
        self._started_at = time.monotonic()
        self.migrate = migrate  # start-up adds missing columns rather than refuse to start
        # A source that opens after the start gets the start's table maintenance then.
        self.sources.on_late_open = lambda _: maintain(self, startup=True, migrate=migrate)
        # What the table maintenance of the last start-up did (None: not started yet).
        self.startup_maintenance: MaintenanceReport | None = None

    @classmethod
    def from_file(cls, path: str | Path, *, plugins: Iterable[Any] = ()) -> Engine:
        return cls(Path(path), plugins=plugins)

    # -- plugins and configuration ---------------------------------------------------------

    async def _load_plugins(self) -> dict[str, tuple[Any, Any]]:
        """Collect the plugins' registries; every problem of the configuration that
        depends on them, in one :class:`ConfigError`. Returns the source factories."""
        loaded = await load_registries(self.pm, self.config, self._allocators)
        self.source_types = loaded.source_types
        self.actions.clear()
        self.actions.update(loaded.actions)
        return loaded.factories

    @classmethod
    async def check(
        cls,
        config: Config | Mapping[str, Any] | str | Path | None,
        *,
        plugins: Iterable[Any] = (),
    ) -> list[Problem]:
        """Every problem of a configuration, the plugin-dependent ones included; [] if valid."""
        report = ConfigReport()
        try:
            partial, modules = _checkable(config, report)
            engine = cls(partial, plugins=[*modules, *plugins])
            await engine._load_plugins()
        except ConfigError as error:
            report.add_checked(error.problems)
        return report.problems

    # -- start-up and shutdown -------------------------------------------------------------

    async def _open_sources(self, stack: AsyncExitStack, factories: dict[str, Any]) -> None:
        for name, (factory, options) in factories.items():
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
            stack.push_async_callback(_close, adapter)
            await self.sources.open(name, config, adapter)  # kept even when it cannot open
        self.agents[:] = build_agents(self.config.agents.pool, self.sources)

    async def __aenter__(self) -> Engine:
        if self.life.open:
            raise Wf78Error("engine is already running")
        _begin(self)  # asyncio only; a restart gets parts bound to this event loop
        factories = await self._load_plugins()
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            _hold_node_id(self.settings.node_id, stack)
            await self._open_sources(stack, factories)
            await self.backend.open(stack)
            if self.limits:  # a store bound to this start's event loop
                self.limits.store = store = LIMIT_STORES[self.settings.backend](self)
                if store is not None:
                    stack.push_async_callback(store.close)
            services = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(services.cancel_scope.cancel)
            await self.sources.serve(services)  # the sources' own loops, health checks
            await self.backend.start_services(services)
            await services.start(self.history.run)  # a sample a second, for the dashboard
            if self.mirrors is not None:
                await services.start(self.mirrors.run)
            # Work (runs and triggers) lives in its own group so it can drain first.
            work = await stack.enter_async_context(anyio.create_task_group())
            self.life.work = work
            self.bus.attach(work)
            stack.push_async_callback(self._drain)
            await self.backend.start_work(work)
            for workflow in self.config.workflows:
                if workflow.trigger == "schedule":
                    work.start_soon(schedule_loop, workflow, self.backend, self.life)
        except BaseException:
            await stack.__aexit__(None, None, None)
            self._reset()
            raise
        self._stack = stack
        self.life.open = True
        self.life.closing = False
        self._started_at = time.monotonic()
        try:
            # Tables, today's shards and their columns are there before the first write.
            self.startup_maintenance = await maintain(self, startup=True, migrate=self.migrate)
            if self.mirrors is not None:
                self.mirrors.start()  # first pass: what a crash left in the outbox
            await self.backend.recover()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        try:
            return await close_stack(stack, exc_type, exc, tb)  # the body's own exception
        finally:
            self._reset()

    def _reset(self) -> None:
        self.life.open = False
        self.life.work = None
        self.bus.attach(None)
        self.backend.reset()
        self.sources.clear()
        self.dispatcher.lanes.clear()  # they name this start's sources
        self.agents.clear()

    async def _drain(self) -> None:
        """Stop triggers, let accepted work finish for ``drain_timeout``, cancel the rest."""
        life = self.life
        life.closing = True
        backend = self.backend
        backend.stop()
        with anyio.move_on_after(self.settings.drain_timeout):
            while self.admission.pending.in_use or backend.busy():
                await life.next_done()
        backend.abandon("engine shut down")
        self.dispatcher.withdraw_tickets()
        life.group().cancel_scope.cancel()

    @property
    def running(self) -> bool:
        """Entered and not shutting down: accepting work."""
        return self.life.accepting

    # -- the data path ---------------------------------------------------------------------

    def submit(
        self,
        op: Operation,
        *,
        priority: int | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Coroutine[Any, Any, Result]:
        """``await engine.submit(op)``: select a source, allocate an agent, execute; the
        :class:`Result`. Waits up to ``engine.overload_timeout`` for queue space, then
        raises :class:`~wf78_core.errors.Overloaded`; failures raise
        :class:`~wf78_core.errors.OperationError` subclasses after retries and fallbacks.
        """
        # The dispatcher's coroutine itself, not one wrapped in another: no extra frame
        # per operation.
        return self.dispatcher.submit(op, priority=priority, context=context)

    async def enqueue(
        self,
        op: Operation,
        *,
        priority: int | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Ticket:
        """Accept an operation and return at once with a :class:`Ticket` for its Result."""
        return await self.dispatcher.enqueue(op, priority=priority, context=context)

    def table(
        self, name: str, *, identity: Identity | None = None, priority: int | None = None
    ) -> Table:
        """The configured table ``name`` as seen by ``identity``: koa78's Base78 methods."""
        return Table(self, name, identity=identity, priority=priority)

    async def check_health(self) -> dict[str, bool]:
        """Run every source's health check now; failing sources leave rotation."""
        return await self.sources.check_all()

    # -- workflow runs ---------------------------------------------------------------------

    def _workflow(self, workflow_id: str) -> WorkflowDefinition:
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            raise UnknownWorkflow(
                f"unknown workflow {workflow_id!r} (known: {sorted(self.workflows)})"
            )
        return workflow

    async def run(
        self,
        workflow_id: str,
        context: Mapping[str, Any] | None = None,
        *,
        wait: bool = True,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> Run:
        """Start a run of a workflow (the ``api`` trigger); wait for it unless ``wait=False``."""
        self.life.check()
        workflow = self._workflow(workflow_id)
        return await self.backend.start(workflow, context, priority, wait=wait, key=idempotency_key)

    async def emit(
        self, event: str, payload: _Payload = None, *, idempotency_key: str | None = None
    ) -> list[str]:
        """The ``event`` trigger: queue a run of every workflow subscribed to ``event``."""
        self.life.check()
        return [
            await self.backend.start_event(workflow, payload, key=idempotency_key)
            for workflow in subscribers(self.workflows.values(), event)
        ]

    def get_run(self, run_id: str) -> Run:
        """The current snapshot of a run; :class:`UnknownWorkflow` if there is none.

        With the redis backend runs live in Redis: use ``await engine.fetch_run(run_id)``.
        """
        return self.backend.get_run(run_id)

    async def fetch_run(self, run_id: str) -> Run:
        """:meth:`get_run` for every backend: the run as Redis holds it now (any process's),
        or in process from memory, else from the journal (runs past ``run_history``)."""
        return await self.backend.fetch_run(run_id)

    async def cancel(self, run_id: str) -> Run:
        """Cancel a run: queued tasks are withdrawn, running ones cancelled, slots freed.

        With the redis backend every worker hears it: those running the run's tasks
        interrupt them."""
        return await self.backend.cancel(run_id)

    def recent_runs(self, limit: int = 20) -> list[Run]:
        """Snapshots of the newest ``limit`` runs still known (active and finished), newest first."""
        return self.backend.recent_runs(limit)

    async def fetch_recent_runs(self, limit: int = 20) -> list[Run]:
        """:meth:`recent_runs` for every backend (with redis: from every process)."""
        return await self.backend.fetch_recent_runs(limit)

    def dead_letters(self) -> list[DeadLetter]:
        """Tasks that failed after their retries and fallbacks, newest first (with the
        redis backend: as last read from Redis; ``fetch_dead_letters`` reads them now)."""
        return self.backend.dead_letters()

    async def fetch_dead_letters(self) -> list[DeadLetter]:
        """:meth:`dead_letters`, read from the redis backend when there is one."""
        return await self.backend.fetch_dead_letters()

    async def retry_dead_letter(self, letter_id: str) -> Run:
        """Run a dead letter's task again, in its own run: the run reopens, the task and the
        dependants it made skip go back to pending, and the run goes on from there.

        Raises :class:`UnknownWorkflow` for an unknown letter and :class:`Wf78Error`
        while its run is still running (retry once it has finished).
        """
        self.life.check()
        return await self.backend.retry_dead_letter(letter_id)

    # -- introspection -----------------------------------------------------------------------

    @property
    def journal(self) -> Journal | None:
        """Where accepted runs are recorded (None: ``journal = "off"`` or the redis backend)."""
        return self.backend.journal

    @property
    def worker(self) -> Any:
        """This process's consumer of the redis backend (None otherwise)."""
        return getattr(self.backend, "worker", None)

    @property
    def node_id(self) -> int | None:
        """The snowflake node id it mints with: configured, leased in Redis, or None (random)."""
        leased: int | None = getattr(self.backend, "node_id", None)
        return leased if self.settings.node_id is None else self.settings.node_id

    @property
    def resumed_runs(self) -> int:
        """Runs the last start-up took up again from the journal."""
        return self.backend.resumed_runs

    @property
    def submitted(self) -> int:
        return self.counters.submitted

    @property
    def completed(self) -> int:
        return self.counters.completed

    @property
    def failed(self) -> int:
        return self.counters.failed

    @property
    def retries(self) -> int:
        return self.counters.retries

    @property
    def fallbacks(self) -> int:
        return self.counters.fallbacks

    async def mirror_stats(self) -> MirrorStats | None:
        """The outbox relay's counters and pending entries; None when no table has mirrors."""
        return None if self.mirrors is None else await self.mirrors.stats()

    def stats(self) -> EngineStats:
        """A snapshot of queues, limits, agents, sources and totals."""
        stats = engine_stats(
            admission=self.admission,
            sources=self.sources,
            agents=self.agents,
            workflows=self.workflows.values(),
            runs=self.backend.run_stats(),
            counters=self.counters,
            uptime=time.monotonic() - self._started_at if self.life.open else 0.0,
        )
        return msgspec.structs.replace(
            stats,
            fair_by=self.admission.fair_by,
            queued_by_tenant=dict(sorted(self.scheduler.queued_by_tenant.items())),
            limits=self.limits.stats(),
        )
