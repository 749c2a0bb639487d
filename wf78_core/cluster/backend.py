"""The Redis Streams backend: the core's :class:`~wf78_core.core.ports.Backend` with runs,
their tasks and leases in Redis, shared by every process that names the same
``backend_url`` and ``backend_namespace``.

Accepting, looking up and cancelling runs go to Redis (:class:`RedisStreams`); this
process's :class:`StreamWorker` (``consume = true``) runs tasks from the streams. Single
operations (``engine.submit``) stay in the process that received them. A Redis that does
not answer is a :class:`~wf78_core.errors.BackendUnavailable` (HTTP 503), never a driver
error.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager
from typing import Any
from uuid import uuid4

import anyio
import msgspec
from anyio.abc import TaskGroup
from redis.exceptions import RedisError

from wf78_core.cluster.keys import RedisRunKeys
from wf78_core.cluster.nodes import NodeLease
from wf78_core.cluster.shares import run_key_of
from wf78_core.cluster.streams import RedisStreams
from wf78_core.cluster.wire import TENANT_FIELD, TRACE_FIELD, json_encode
from wf78_core.cluster.worker import StreamWorker
from wf78_core.core.fairness import TENANT
from wf78_core.core.ports import RunStats
from wf78_core.core.records import DeadLetter, Journal
from wf78_core.core.runkeys import KeyedRun, RunKey, event_key, run_key
from wf78_core.core.runs import Run, TaskRun
from wf78_core.core.tracing import queued_run
from wf78_core.definitions import WorkflowDefinition
from wf78_core.errors import UnknownWorkflow, Wf78Error

__all__ = ["RedisBackend"]

logger = logging.getLogger("wf78.engine")


class RedisBackend:
    """Runs in Redis. ``worker`` is this process's consumer (None with ``consume = false``
    or while closed)."""

    aligned_ticks = True
    journal: Journal | None = None  # Redis holds accepted runs and their progress
    resumed_runs = 0  # a run left behind is taken over by any worker, not resumed

    def __init__(
        self, streams: RedisStreams, make_worker: Any | None, nodes: NodeLease | None = None
    ) -> None:
        self.streams = streams
        self.worker: StreamWorker | None = None
        #: run idempotency keys, in Redis beside the runs (wf78_core.cluster.keys)
        self.keys = RedisRunKeys(streams.prefix, streams.settings.idempotency_ttl)
        self._make_worker = make_worker
        # This process's snowflake node id, leased while open (None: [engine] node_id set).
        self.nodes = nodes

    @classmethod
    def from_engine(cls, engine: Any) -> RedisBackend:
        """Built from an engine's public parts (the engine's backend registry calls it)."""
        settings = engine.settings
        streams = RedisStreams(settings, engine.config.workflows)

        def make_worker() -> StreamWorker:
            return StreamWorker(
                streams,
                engine=engine,
                dispatcher=engine.dispatcher,
                settings=settings,
                workflows=engine.workflows.values(),
                sources=engine.sources,
                agents=engine.agents,
                actions=engine.actions,
                bus=engine.bus,
                counters=engine.counters,
                life=engine.life,
            )

        nodes = None
        if settings.node_id is None:
            nodes = NodeLease(settings.backend_url, settings.backend_namespace)
        return cls(streams, make_worker if settings.consume else None, nodes)

    @property
    def node_id(self) -> int | None:
        """The snowflake node id leased in Redis while open (wf78_core.cluster.nodes)."""
        return None if self.nodes is None else self.nodes.node_id

    # -- what tests and benchmarks read of the store -------------------------------------

    async def finished_runs(self) -> int:
        """Runs finished in this namespace, by every process."""
        with self._reaching():
            return await self.streams.finished_runs()

    async def depths(self) -> dict[int, int]:
        """Tasks ready but not yet taken, per priority level, across the namespace."""
        with self._reaching():
            return await self.streams.depths()

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """Redis errors become :class:`BackendUnavailable` (503 + Retry-After)."""
        try:
            yield
        except (RedisError, OSError) as error:
            raise self.streams.unreachable(error) from error

    @property
    def repaired(self) -> int:
        return self.streams.repaired

    @property
    def reclaimed(self) -> int:
        return self.streams.reclaimed

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self, stack: AsyncExitStack) -> None:
        if self.nodes is not None:  # leased before anything mints an id, released last
            await self.nodes.acquire()
            stack.push_async_callback(self.nodes.release)

    async def start_services(self, services: TaskGroup) -> None:
        await services.start(self.streams.run)
        if self.nodes is not None:
            await services.start(self.nodes.renew)
        services.start_soon(self._refresh)

    async def _refresh(self) -> None:
        """Keep what ``engine.stats()`` shows of the whole cluster fresh, in every process:
        queue depths, running tasks and run counts (every ``lease_ttl / 2``, at most a
        second apart), dead letters (every ``lease_ttl``)."""
        settings = self.streams.settings
        interval = min(settings.lease_ttl / 2, 1.0)
        letters_every = max(1, round(settings.lease_ttl / interval))
        for rounds in itertools.count():
            try:
                await self.streams.depths()
                if rounds % letters_every == 0:
                    await self.streams.dead_letters()
            except (RedisError, OSError) as error:
                logger.debug("redis backend: refreshing the cluster's counts failed: %s", error)
            await anyio.sleep(interval)

    async def start_work(self, work: TaskGroup) -> None:
        if self._make_worker is not None:
            self.worker = self._make_worker()
            await work.start(self.worker.run)

    async def recover(self) -> None:
        return None

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def busy(self) -> bool:
        return self.worker is not None and self.worker.busy > 0

    def abandon(self, why: str) -> None:
        return None  # held entries are taken over by another worker once their lease ends

    def reset(self) -> None:
        self.worker = None

    # -- accepting runs ----------------------------------------------------------------------

    async def _queue(
        self,
        workflow: WorkflowDefinition,
        context: Mapping[str, Any] | None,
        priority: int | None,
        *,
        waited: bool = False,
        run_id: str | None = None,
        tenant: str = "",
    ) -> Run:
        """Queue a run in Redis; returns once Redis holds it. ``tenant``: whose run it is
        ("": schedules', events', runs started without one)."""
        level = workflow.priority if priority is None else priority
        run_id = run_id or uuid4().hex
        created = time.time()
        values = dict(context or {})
        # Sent again under the same id while its answer is lost: stored once, whichever
        # attempt Redis took (start_run's False). With tracing on, the run's span and the
        # traceparent its workers' spans join (kept in the stored context, as the tenant).
        with queued_run(workflow.id, run_id) as traceparent:
            stored = values if traceparent is None else {**values, TRACE_FIELD: traceparent}
            if tenant:
                stored = {**stored, TENANT_FIELD: tenant}
            await self.streams.start_run(
                run_id, workflow, stored, level, created, waited=waited, tenant=tenant
            )
        # A keyed workflow's run without a value for its key failed at once (in Redis too).
        refused = run_key_of(workflow, values)[1] or None
        return Run(
            id=run_id,
            workflow=workflow.id,
            status="failed" if refused else "running",
            tasks={
                t.id: TaskRun(id=t.id, state="skipped" if refused else "pending", error=refused)
                for t in workflow.tasks
            },
            context=values,
            created=created,
            started=created,
            error=refused,
        )

    async def start(
        self,
        workflow: WorkflowDefinition,
        context: Mapping[str, Any] | None,
        priority: int | None,
        *,
        wait: bool,
        key: str | None = None,
    ) -> Run:
        claim = run_key(key, workflow.id, context, priority)
        run_id = uuid4().hex
        tenant = TENANT.get()  # the caller's, for its workers' log records and fair shares
        if claim is not None:
            first = await self._claim(claim, run_id, workflow, context, priority, tenant)
            if first is not None:
                return await self._replay(first, workflow, context, wait=wait)
        started = await self._queue(
            workflow, context, priority, waited=wait, run_id=run_id, tenant=tenant
        )
        return await self.streams.wait_run(started.id) if wait else started

    async def start_event(
        self,
        workflow: WorkflowDefinition,
        payload: Mapping[str, Any] | None,
        *,
        key: str | None = None,
    ) -> str:
        claim = event_key(key, workflow, payload)
        run_id = uuid4().hex
        if claim is not None:
            first = await self._claim(claim, run_id, workflow, payload, None)
            if first is not None:
                return first
        return (await self._queue(workflow, payload, None, run_id=run_id)).id

    async def _claim(
        self,
        key: RunKey,
        run_id: str,
        workflow: WorkflowDefinition,
        context: Mapping[str, Any] | None,
        priority: int | None,
        tenant: str = "",
    ) -> str | None:
        """Claim ``key`` for ``run_id`` (None), or the id of the run it started first. A
        first run Redis does not hold within ``run_ttl`` of its claim was never stored (its
        start failed on the way): it is sent again now, under its id, stored once."""
        _check_context(context)  # a context Redis cannot keep never claims a key
        claimed = KeyedRun(key.fingerprint, run_id, time.time())
        with self._reaching():
            first = await self.keys.claim(self.streams.redis, key, claimed)
        if first is None:
            return None
        first_id = first.replayed_by(key)
        if time.time() < first.created + self.streams.settings.run_ttl:
            with self._reaching():
                missing = await self.streams.fetch_run(first_id) is None
            if missing:
                await self._queue(workflow, context, priority, run_id=first_id, tenant=tenant)
        return first_id

    async def _replay(
        self,
        run_id: str,
        workflow: WorkflowDefinition,
        context: Mapping[str, Any] | None,
        *,
        wait: bool,
    ) -> Run:
        """The run a key started first (waited for with ``wait``: polled, as Redis
        announces the end only of runs their starter waits for); as its acceptance
        answered once Redis no longer holds it."""
        pause = 0.02
        while True:
            with self._reaching():
                run = await self.streams.fetch_run(run_id)
            if run is None or not wait or run.status not in ("pending", "running"):
                break
            await anyio.sleep(pause)
            pause = min(pause * 2, 1.0)
        if run is not None:
            return run
        return Run(
            id=run_id,
            workflow=workflow.id,
            status="running",
            tasks={t.id: TaskRun(id=t.id, state="pending") for t in workflow.tasks},
            context=dict(context or {}),
            created=time.time(),
        )

    async def purge_run_keys(self, before: float) -> int:
        return 0  # keys in Redis expire by themselves (idempotency_ttl)

    async def start_scheduled(self, workflow: WorkflowDefinition, due: float) -> None:
        """One run per tick across every process sharing the backend: the first process
        to claim the tick (its due time) starts it."""
        with self._reaching():
            claimed = await self.streams.claim_tick(workflow.id, due)
        if claimed:
            await self._queue(workflow, {"scheduled_at": time.time()}, None)

    # -- looking up and acting on runs -----------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        raise _needs_await("get_run", "fetch_run")

    async def fetch_run(self, run_id: str) -> Run:
        with self._reaching():
            run = await self.streams.fetch_run(run_id)
        if run is None:
            raise UnknownWorkflow(f"unknown run {run_id!r}")
        return run

    def recent_runs(self, limit: int) -> list[Run]:
        raise _needs_await("recent_runs", "fetch_recent_runs")

    async def fetch_recent_runs(self, limit: int) -> list[Run]:
        with self._reaching():
            return await self.streams.recent_runs(limit) if limit > 0 else []

    async def cancel(self, run_id: str) -> Run:
        """Cancel a run in Redis; the workers running its tasks interrupt them."""
        with self._reaching():
            answer = await self.streams.cancel_run(run_id, "cancelled by request")
        if answer < 0:
            raise UnknownWorkflow(f"unknown run {run_id!r}")
        return await self.fetch_run(run_id)

    def dead_letters(self) -> list[DeadLetter]:
        return self.streams.dead_cache

    async def fetch_dead_letters(self) -> list[DeadLetter]:
        with self._reaching():
            return await self.streams.dead_letters()

    async def retry_dead_letter(self, letter_id: str) -> Run:
        with self._reaching():
            letters = {letter.id: letter for letter in await self.streams.dead_letters()}
        letter = letters.get(letter_id)
        if letter is None:
            raise UnknownWorkflow(f"unknown dead letter {letter_id!r}")
        with self._reaching():
            answer = await self.streams.reopen(letter)
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

    def run_stats(self) -> RunStats:
        """The whole cluster's queue depth, running tasks and runs (accepted and not
        finished; finished since the namespace began) as last read from Redis (see
        :meth:`_refresh`), and this worker's own running tasks."""
        letters = self.streams.dead_cache
        streams = self.streams
        return RunStats(
            queued_by_level=dict(streams.depth),
            running_by_workflow=dict(streams.running_by_workflow),
            running=self.worker.busy if self.worker is not None else 0,
            runs_active=streams.runs_active,
            runs_finished=streams.runs_finished,
            dead_letters=letters[:100],
            dead_letter_count=len(letters),
        )


def _needs_await(name: str, instead: str) -> Wf78Error:
    return Wf78Error(
        f"engine.{name}() cannot ask Redis without awaiting: with the redis backend "
        f"use `await engine.{instead}(...)`"
    )


def _check_context(context: Mapping[str, Any] | None) -> None:
    """Refuse, before anything is claimed, a run context Redis cannot keep as JSON."""
    try:
        json_encode(dict(context or {}))
    except (TypeError, msgspec.EncodeError) as error:
        raise Wf78Error(f"the run context cannot be kept in redis as JSON: {error}") from None
