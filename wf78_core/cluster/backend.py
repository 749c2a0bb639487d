"""The Redis Streams backend: the core's :class:`~wf78_core.core.ports.Backend` with runs,
their tasks and leases in Redis, shared by every process that names the same
``backend_url`` and ``backend_namespace``.

Accepting, looking up and cancelling runs go to Redis (:class:`RedisStreams`); this
process's :class:`StreamWorker` (``consume = true``) runs tasks from the streams. Single
operations (``engine.submit``) stay in the process that received them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any
from uuid import uuid4

from anyio.abc import TaskGroup

from wf78_core.cluster.streams import RedisStreams
from wf78_core.cluster.worker import StreamWorker
from wf78_core.core.ports import RunStats
from wf78_core.core.records import DeadLetter, Journal
from wf78_core.core.runs import Run, TaskRun
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

    def __init__(self, streams: RedisStreams, make_worker: Any | None) -> None:
        self.streams = streams
        self.worker: StreamWorker | None = None
        self._make_worker = make_worker

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

        return cls(streams, make_worker if settings.consume else None)

    # -- what tests and benchmarks read of the store -------------------------------------

    async def finished_runs(self) -> int:
        """Runs finished in this namespace, by every process."""
        return await self.streams.finished_runs()

    async def depths(self) -> dict[int, int]:
        """Tasks ready but not yet taken, per priority level, across the namespace."""
        return await self.streams.depths()

    @property
    def repaired(self) -> int:
        return self.streams.repaired

    @property
    def reclaimed(self) -> int:
        return self.streams.reclaimed

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self, stack: AsyncExitStack) -> None:
        return None

    async def start_services(self, services: TaskGroup) -> None:
        await services.start(self.streams.run)

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
    ) -> Run:
        """Queue a run in Redis; returns once Redis holds it."""
        level = workflow.priority if priority is None else priority
        run_id = uuid4().hex
        created = time.time()
        values = dict(context or {})
        await self.streams.start_run(run_id, workflow, values, level, created, waited=waited)
        return Run(
            id=run_id,
            workflow=workflow.id,
            status="running",
            tasks={t.id: TaskRun(id=t.id, state="pending") for t in workflow.tasks},
            context=values,
            created=created,
            started=created,
        )

    async def start(
        self,
        workflow: WorkflowDefinition,
        context: Mapping[str, Any] | None,
        priority: int | None,
        *,
        wait: bool,
    ) -> Run:
        started = await self._queue(workflow, context, priority, waited=wait)
        return await self.streams.wait_run(started.id) if wait else started

    async def start_event(
        self, workflow: WorkflowDefinition, payload: Mapping[str, Any] | None
    ) -> str:
        return (await self._queue(workflow, payload, None)).id

    async def start_scheduled(self, workflow: WorkflowDefinition, due: float) -> None:
        """One run per tick across every process sharing the backend: the first process
        to claim the tick (its due time) starts it."""
        if await self.streams.claim_tick(workflow.id, due):
            await self._queue(workflow, {"scheduled_at": time.time()}, None)

    # -- looking up and acting on runs -----------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        raise _needs_await("get_run", "fetch_run")

    async def fetch_run(self, run_id: str) -> Run:
        run = await self.streams.fetch_run(run_id)
        if run is None:
            raise UnknownWorkflow(f"unknown run {run_id!r}")
        return run

    def recent_runs(self, limit: int) -> list[Run]:
        raise _needs_await("recent_runs", "fetch_recent_runs")

    async def fetch_recent_runs(self, limit: int) -> list[Run]:
        return await self.streams.recent_runs(limit) if limit > 0 else []

    async def cancel(self, run_id: str) -> Run:
        if await self.streams.cancel_run(run_id, "cancelled by request") < 0:
            raise UnknownWorkflow(f"unknown run {run_id!r}")
        return await self.fetch_run(run_id)

    def dead_letters(self) -> list[DeadLetter]:
        return self.streams.dead_cache

    async def fetch_dead_letters(self) -> list[DeadLetter]:
        return await self.streams.dead_letters()

    async def retry_dead_letter(self, letter_id: str) -> Run:
        letters = {letter.id: letter for letter in await self.streams.dead_letters()}
        letter = letters.get(letter_id)
        if letter is None:
            raise UnknownWorkflow(f"unknown dead letter {letter_id!r}")
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
        """The cluster's queue depth and running tasks as this process's worker last read
        them, and this worker's own running tasks."""
        letters = self.streams.dead_cache
        return RunStats(
            queued_by_level=dict(self.streams.depth),
            running_by_workflow=dict(self.streams.running_by_workflow),
            running=self.worker.busy if self.worker is not None else 0,
            dead_letters=letters[:100],
            dead_letter_count=len(letters),
        )


def _needs_await(name: str, instead: str) -> Wf78Error:
    return Wf78Error(
        f"engine.{name}() cannot ask Redis without awaiting: with the redis backend "
        f"use `await engine.{instead}(...)`"
    )
