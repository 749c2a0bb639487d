"""A process's share of a Redis Streams backend: its agents pull tasks and run them.

One :class:`StreamWorker` per engine with ``[engine] backend = "redis"`` and ``consume =
true`` (``wf78 worker`` is an engine with no HTTP). It serves the capabilities of this
process's data sources and agents plus ``*``, runs at most ``worker_slots`` tasks, and
takes only what it has free slots for. A task runs exactly as in process (the action,
its timeout, its retries with backoff); its end is reported in one Lua call that
acknowledges the entry and moves the run on (the ends of the tasks that finished meanwhile
go in the same call; a task's slot is free once its action returned, while its end is
reported, so taking and reporting overlap). A task whose run was cancelled (heard on the
bell, or found by the heartbeat) or whose entry is no longer this worker's is interrupted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from uuid import uuid4

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus
from redis.exceptions import RedisError

from wf78_core.cluster.streams import RedisStreams
from wf78_core.cluster.wire import Completion, Taken, encode_result
from wf78_core.config import EngineSettings
from wf78_core.core.actions import TaskContext, worth_retrying
from wf78_core.core.admission import Counters
from wf78_core.core.agents import Agent
from wf78_core.core.bus import EventBus
from wf78_core.core.dispatch import Dispatcher
from wf78_core.core.lifecycle import Lifecycle
from wf78_core.core.logcontext import bind, unbind
from wf78_core.core.records import DeadLetter
from wf78_core.core.sources import SourcePool
from wf78_core.core.taskspans import run_task
from wf78_core.definitions import Result, TaskDefinition, WorkflowDefinition
from wf78_core.errors import Wf78Error
from wf78_core.events import TaskEvent, TaskState

__all__ = ["StreamWorker"]

logger = logging.getLogger("wf78.worker")
# How long to wait before trying Redis again after it failed to answer.
_REDIS_RETRY = 0.5
# Without a bell, look at the streams this often anyway (a lost pub/sub message).
_IDLE_LOOK = 1.0


class _Held:
    """A task this worker runs: its entry, what interrupts it, and until when (monotonic
    seconds: its budget plus ``claim_margin``) the heartbeat keeps its entry from idling."""

    __slots__ = ("scope", "taken", "touch_until")

    def __init__(self, taken: Taken, touch_until: float) -> None:
        self.taken = taken
        self.scope = anyio.CancelScope()
        self.touch_until = touch_until


class StreamWorker:
    """Pulls tasks from the backend's streams into this engine's free slots."""

    def __init__(
        self,
        backend: RedisStreams,
        *,
        engine: Any,
        dispatcher: Dispatcher,
        settings: EngineSettings,
        workflows: Iterable[WorkflowDefinition],
        sources: SourcePool,
        agents: Iterable[Agent],
        actions: Mapping[str, Callable[..., Any]],
        bus: EventBus,
        counters: Counters,
        life: Lifecycle,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self._engine = engine  # what actions see as ctx.engine
        self._dispatcher = dispatcher
        self._actions = actions
        self._bus = bus
        self._counters = counters
        self._life = life
        self.slots = settings.worker_slots
        self._batch = max(1, self.slots // 4)
        capabilities = {"*"}
        for source in sources:
            capabilities.update((source.name, source.type))
        for agent in agents:
            capabilities.update(agent.capabilities)
        self.capabilities = sorted(capabilities)
        # An entry nobody works on goes idle: taken over once idle this long (a live
        # worker's heartbeat, every lease_ttl / 3, keeps what it runs from idling).
        self.stuck_after = settings.claim_margin + settings.lease_ttl
        self._budgets = {
            (w.id, task.id): _budget(task, settings) + settings.claim_margin
            for w in workflows
            for task in w.tasks
        }
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self._held: dict[tuple[str, str], _Held] = {}
        # Tasks whose action runs (held ones whose end is being reported no longer count:
        # the worker takes more meanwhile, so reporting and running overlap).
        self._running = 0
        self._freed = anyio.Event()
        self._stopping = False
        self._group: TaskGroup | None = None

    @property
    def busy(self) -> int:
        """Tasks this worker holds now."""
        return len(self._held)

    def stop(self) -> None:
        """Take nothing more; what is held runs to its end."""
        self._stopping = True
        self._freed.set()
        self.backend.bell.ring()

    def describe(self) -> dict[str, Any]:
        """Who this worker is: its consumer name, capabilities and slots."""
        return {
            "consumer": self.backend.consumer,
            "capabilities": self.capabilities,
            "slots": self.slots,
        }

    def cancel_run(self, run_id: str) -> None:
        """Interrupt the tasks of ``run_id`` this worker runs (its run was cancelled)."""
        for held in list(self._held.values()):
            if held.taken.run_id == run_id:
                held.scope.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.backend.cancel_listeners.append(self.cancel_run)
        try:
            await self.backend.heartbeat(())
            async with anyio.create_task_group() as group:
                self._group = group
                group.start_soon(self._heartbeats)
                group.start_soon(self._maintenance)
                task_status.started()
                logger.info(
                    "worker ready: %s serves %s with %d slots",
                    self.backend.consumer,
                    ", ".join(self.capabilities),
                    self.slots,
                )
                await self._pull()
                while self._held:  # the engine's drain cancels us when it has waited enough
                    self._freed = anyio.Event()
                    await self._freed.wait()
                group.cancel_scope.cancel()
        finally:
            self._group = None
            if self.cancel_run in self.backend.cancel_listeners:
                self.backend.cancel_listeners.remove(self.cancel_run)
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                try:
                    await self.backend.leave()
                except (RedisError, OSError, Wf78Error):
                    pass  # the heartbeat expires by itself

    async def _pull(self) -> None:
        while not self._stopping:
            free = self.slots - self._running
            # Take in batches (a quarter of the slots free, or nothing running): one
            # script call per batch instead of one per finished task.
            if free <= 0 or (self._running and free < self._batch):
                self._freed = anyio.Event()
                await self._freed.wait()
                continue
            self.backend.bell.clear()
            try:
                batch = await self.backend.take(self.capabilities, free)
            except (RedisError, OSError) as error:
                logger.warning("taking work from redis failed: %s", error)
                await anyio.sleep(_REDIS_RETRY)
                continue
            if not batch:
                await self.backend.bell.wait(_IDLE_LOOK)
                continue
            await self._prefetch(batch)
            self._start(batch)

    async def _prefetch(self, batch: list[Taken]) -> None:
        """The batch's dependency results in one round trip; when that fails, each task
        reads its own as it starts (:meth:`_dependency_results`)."""
        try:
            await self.backend.prefetch_results(batch)
        except (RedisError, OSError) as error:
            logger.debug("reading a batch's dependency results failed: %s", error)

    def _start(self, batch: list[Taken]) -> None:
        assert self._group is not None
        now = time.monotonic()
        for taken in batch:
            self._running += 1
            budget = self._budgets.get((taken.workflow, taken.task), 0.0)
            held = self._held[taken.stream, taken.entry] = _Held(taken, now + budget)
            # The task started copies the fields: its records, reporting included, name it.
            fields = bind(
                run_id=taken.run_id,
                task_id=taken.task,
                workflow=taken.workflow,
                tenant=taken.tenant or None,
            )
            self._group.start_soon(self._execute, held)
            unbind(fields)

    async def _heartbeats(self) -> None:
        while True:
            await anyio.sleep(self.settings.lease_ttl / 3)
            held = list(self._held.values())
            now = time.monotonic()
            try:
                gone = await self.backend.heartbeat(
                    [h.taken for h in held], [now < h.touch_until for h in held]
                )
            except (RedisError, OSError) as error:
                logger.warning("worker heartbeat failed: %s", error)
                continue
            for position in gone:
                held[position].scope.cancel()  # its run ended, or another worker runs it

    async def _maintenance(self) -> None:
        """Take over dead or stuck workers' tasks, repair lease drift."""
        interval = self.settings.lease_ttl / 2
        rounds = 0
        while True:
            await anyio.sleep(interval)
            rounds += 1
            try:
                room = self.slots - self._running
                if not self._stopping and room > 0:
                    reclaimed = await self.backend.reclaim(
                        self.capabilities, self.stuck_after, room
                    )
                    if reclaimed:
                        logger.info("took over %d tasks from other workers", len(reclaimed))
                        await self._prefetch(reclaimed)
                        self._start(reclaimed)
                if rounds % 2 == 0:
                    await self.backend.reconcile()
            except (RedisError, OSError) as error:
                logger.warning("worker maintenance failed: %s", error)

    async def _execute(self, held: _Held) -> None:
        taken = held.taken
        running = True
        try:
            completion: Completion | None = None
            with held.scope:
                completion = await self._outcome(taken)
            if completion is None:  # interrupted: the entry goes back, the run is not touched
                why = "interrupted: its run was cancelled, or another worker took it over"
                self._event(taken, "cancelled", taken.attempts, why)
                completion = Completion(outcome="cancelled")
            # Its slot is free while its end is reported (still held: leased, heartbeat).
            running = False
            self._running -= 1
            self._freed.set()
            while True:
                try:
                    await self.backend.complete(taken, completion)
                    break
                except (RedisError, OSError) as error:
                    # Held until Redis takes it: the lease is renewed meanwhile.
                    logger.warning("reporting task %s failed, retrying: %s", taken.task, error)
                    await anyio.sleep(_REDIS_RETRY)
            if completion.outcome == "succeeded":
                self.completed += 1
            elif completion.outcome == "cancelled":
                self.cancelled += 1
            else:
                self.failed += 1
        finally:
            if running:
                self._running -= 1
            self._held.pop((taken.stream, taken.entry), None)
            self._freed.set()
            self._life.work_done()

    async def _outcome(self, taken: Taken) -> Completion:
        graph = self.backend.graph(taken.workflow)
        task = graph.tasks.get(taken.task) if graph is not None else None
        if task is None:
            unknown = (
                f"this worker's configuration has no task {taken.task!r} in workflow "
                f"{taken.workflow!r}: every process must load the same workflows"
            )
            return self._failure(taken, None, unknown, 0)
        if taken.deliveries > self.settings.max_deliveries:
            poison = (
                f"PoisonTask: delivered {taken.deliveries} times without finishing "
                f"(max_deliveries = {self.settings.max_deliveries})"
            )
            self.backend.poisoned += 1
            return self._failure(taken, task, poison, 0)
        action = self._actions[task.action]
        owns_retry = getattr(action, "wf78_owns_retry", False)
        ctx = TaskContext(
            engine=self._engine,
            dispatcher=self._dispatcher,
            task=task,
            run_id=taken.run_id,
            priority=taken.priority,
            context=taken.context,
            results=await self._dependency_results(taken, task),
        )
        extra = 0
        timeout = None if owns_retry else (task.timeout or self.settings.default_timeout)
        while True:
            number = taken.attempts + extra
            self._event(taken, "running", number)
            value, error = await run_task(
                action,
                ctx,
                timeout,
                workflow=taken.workflow,
                attempt=number,
                parent=taken.traceparent,
                tenant=taken.tenant,
            )
            if error is None:
                try:
                    result = encode_result(value)
                except (TypeError, msgspec.EncodeError) as failure:
                    message = (
                        f"ResultNotStorable: the result of task {task.id!r} cannot be kept "
                        f"in redis ({failure})"
                    )
                    return self._failure(taken, task, message, extra)
                self._event(taken, "succeeded", number)
                source = value.data_source if isinstance(value, Result) else None
                return Completion(
                    outcome="succeeded",
                    result=result,
                    data_source=source or "",
                    extra_attempts=extra,
                )
            if worth_retrying(error, owns_retry, number, task.retry):
                self._counters.retries += 1
                self._event(taken, "retrying", number, str(error))
                await anyio.sleep(self._dispatcher.backoff(number - 1))
                extra += 1
                continue
            return self._failure(taken, task, f"{type(error).__name__}: {error}", extra)

    async def _dependency_results(self, taken: Taken, task: TaskDefinition) -> dict[str, Any]:
        while True:
            try:
                return await self.backend.dependency_results(taken, task)
            except (RedisError, OSError) as error:
                logger.warning("reading results for task %s failed, retrying: %s", task.id, error)
                await anyio.sleep(_REDIS_RETRY)

    def _failure(
        self, taken: Taken, task: TaskDefinition | None, message: str, extra: int
    ) -> Completion:
        task_id = taken.task
        self._event(taken, "failed", taken.attempts + extra, message)
        letter = DeadLetter(
            id=uuid4().hex,
            run_id=taken.run_id,
            workflow=taken.workflow,
            task=task_id,
            action=task.action if task is not None else "",
            error=message,
            attempts=taken.attempts + extra,
            time=time.time(),
        )
        return Completion(
            outcome="failed",
            error=message,
            run_error=f"task {task_id!r}: {message}",
            extra_attempts=extra,
            dead_letter=letter,
        )

    def _event(
        self, taken: Taken, state: TaskState, attempt: int, error: str | None = None
    ) -> None:
        if self._bus:
            self._bus.notify(
                TaskEvent(
                    state=state,
                    workflow=taken.workflow,
                    task=taken.task,
                    run_id=taken.run_id,
                    attempt=attempt,
                    error=error,
                    time=time.time(),
                )
            )


def _budget(task: TaskDefinition, settings: Any) -> float:
    """The longest a live worker may hold a task: every attempt timing out, plus backoffs."""
    timeout = task.timeout or settings.default_timeout or 24 * 3600.0
    backoff = sum(
        min(settings.retry_backoff * 2**i, settings.retry_backoff_max) for i in range(task.retry)
    )
    return float(timeout * (task.retry + 1) + backoff)
