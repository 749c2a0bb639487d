"""Workflow runs on Redis Streams: one queue for many processes and hosts.

``[engine] backend = "redis"`` keeps workflow runs in Redis instead of this process:

* a ready task waits in its run's tenant's lane of the stream of its capability (the
  task's ``data_source``, or ``*`` for any worker) and priority level; workers read the
  most urgent entries across their capabilities' streams (level minus one per
  ``aging_seconds`` waited, the same aging as in process), and only as many as they have
  free slots, moving tasks from the lanes into the stream in the tenants' turns (fair
  shares across the cluster, :mod:`wf78_core.cluster.shares`);
* ``max_concurrent`` holds across all processes: a task enters its stream holding one of
  its workflow's leases, or waits in the workflow's wait set for one; a worker renews the
  leases of the tasks it runs with its heartbeat, every exit path releases them, and a
  reconciler drops leases that drifted;
* finishing a task acknowledges its entry and updates the run's DAG in one Lua script, so
  fan-in survives a crash; a dead worker's entries are taken over when its heartbeat
  expires; a live worker's heartbeat keeps the entries it works on from going idle (up to
  the task's budget), so an entry nobody works on (lost with a Redis restart, or past
  its budget) is taken over (``XAUTOCLAIM``) once idle for a lease plus ``claim_margin``;
  an entry delivered more than ``max_deliveries`` times is a dead letter;
* a run of a workflow with ``concurrency_key`` holds a slot of its key value from its
  start to its end, or waits for one, in Redis (:mod:`wf78_core.cluster.shares`);
* cancelling a run rings the workers' bell: those running its tasks interrupt them;
* run state and results live in a hash per run, kept ``run_ttl`` seconds after the run
  finished; every key carries the namespace's hash tag, so Redis Cluster works.

Single operations (``engine.submit``, the data routes) still run in the process that
received them. See :mod:`wf78_core.cluster.scripts` for the keys and the scripts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskStatus
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from wf78_core.cluster import scripts, work_scripts
from wf78_core.cluster.shares import start_row
from wf78_core.cluster.wire import (
    BATCH,
    Batcher,
    Bell,
    Call,
    Completion,
    Graph,
    Taken,
    decode,
    decode_dead,
    encode_result,
    json_encode,
    keep_results,
    needing_results,
    pack,
    run_from,
)
from wf78_core.config import EngineSettings
from wf78_core.core.records import DeadLetter
from wf78_core.core.runs import Run
from wf78_core.definitions import TaskDefinition, WorkflowDefinition
from wf78_core.errors import BackendUnavailable, Wf78Error

__all__ = ["Completion", "RedisStreams", "Taken", "encode_result", "shown_url"]

_CONNECTIONS = 32
# Seconds between attempts to listen again after the pub/sub connection was lost.
_RECONNECT = 0.5
# Seconds between attempts to send a start again while Redis does not answer.
_START_RETRY = 0.05
# A bell message that says a run was cancelled: the prefix, then the run id.
_CANCELLED = b"c:"
logger = logging.getLogger("wf78.streams")


class RedisStreams:
    """Runs, their tasks, leases and results in Redis, shared by every process that
    names the same ``backend_url`` and ``backend_namespace``.

    The store under :class:`~wf78_core.cluster.backend.RedisBackend`: it speaks to
    Redis (Lua scripts, batching), and the backend and the worker speak to it.
    """

    distributed = True

    def __init__(self, settings: EngineSettings, workflows: Iterable[WorkflowDefinition]):
        workflows = list(workflows)
        self.settings = settings
        self.prefix = f"wf78:{{{settings.backend_namespace}}}:"
        self._stats_key = self.prefix + "stats"
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._graphs = {w.id: Graph(w) for w in workflows}
        self._workflows = {w.id: w for w in workflows}
        # Any: redis-py types every reply as bytes | str; this client always answers bytes.
        self._redis: Any = None
        self._waiters: dict[str, anyio.Event] = {}
        #: rung when work was queued (or a worker should look again): idle workers wait on it
        self.bell = Bell()
        self._starts = Batcher("start", self._send_starts, BATCH * 4)
        self._completions = Batcher("complete", self._send_completions, BATCH * 4)
        # The cluster as depths() last read it (the backend refreshes it for stats()).
        self.depth: dict[int, int] = {}
        self.running_by_workflow: dict[str, int] = {}
        self.dead_cache: list[DeadLetter] = []
        # Runs accepted and not finished, and finished, in the namespace (every process).
        self.runs_active = 0
        self.runs_finished = 0
        #: called with a run id when the run was cancelled (the workers of this process)
        self.cancel_listeners: list[Callable[[str], None]] = []
        self.reclaimed = 0
        self.poisoned = 0
        self.repaired = 0
        self.taken = 0

    @property
    def redis(self) -> Any:
        if self._redis is None:
            raise Wf78Error("the redis backend is not open: use `async with engine:` first")
        return self._redis

    def _args(self, *args: Any) -> list[Any]:
        return [self.prefix, int(self.settings.run_ttl), *args]

    def unreachable(self, error: BaseException, run_id: str | None = None) -> BackendUnavailable:
        """What a caller is told when Redis did not answer (``run_id``: a start that was
        sent, and may have been stored)."""
        return _unreachable(self.settings.backend_url, error, run_id)

    # -- life cycle -------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, and keep the batchers and the done/bell listener going until cancelled."""
        # Callers wait for a free connection rather than fail when many ask at once.
        pool = BlockingConnectionPool.from_url(
            self.settings.backend_url, max_connections=_CONNECTIONS, timeout=None
        )
        redis: Any = Redis(connection_pool=pool)
        try:
            try:
                await redis.ping()
            except (RedisError, OSError) as error:
                raise Wf78Error(
                    f"the redis backend at {shown_url(self.settings.backend_url)} does not "
                    f"answer: {error}"
                ) from error
            self._scripts = {
                name: redis.register_script(getattr(module, name))
                for module in (scripts, work_scripts)
                for name in module.SCRIPTS
            }
            self._redis = redis
            async with anyio.create_task_group() as group:
                await group.start(self._starts.run)
                await group.start(self._completions.run)
                await group.start(self._listen)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._starts.close()
            self._completions.close()
            self._redis = None
            with anyio.CancelScope(shield=True):
                await redis.aclose(close_connection_pool=True)

    async def _listen(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Finished runs wake their waiters; the bell wakes idle workers. A lost connection
        is opened again; waiters and workers look for themselves meanwhile."""
        done, bell = (self.prefix + "done").encode(), (self.prefix + "bell").encode()
        channels = [done, *([bell] if self.settings.consume else [])]
        started = False
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(*channels)
                if not started:
                    started = True
                    task_status.started()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is None:
                        continue
                    if message["channel"] == bell:
                        self._rang(message["data"])
                        continue
                    event = self._waiters.get(message["data"].decode())
                    if event is not None:
                        event.set()
            except (RedisError, OSError) as error:
                if not started:
                    raise
                logger.warning("redis backend: listening again after %s", error)
                self.bell.ring()  # workers look at the streams now
                for event in list(self._waiters.values()):
                    event.set()  # waiters look at their runs now
                await anyio.sleep(_RECONNECT)
            finally:
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()

    def _rang(self, data: bytes) -> None:
        if data.startswith(_CANCELLED):
            run_id = data[len(_CANCELLED) :].decode()
            for listener in list(self.cancel_listeners):
                listener(run_id)
        else:
            self.bell.ring()

    # -- runs ------------------------------------------------------------------------

    async def start_run(
        self,
        run_id: str,
        workflow: WorkflowDefinition,
        context: Mapping[str, Any],
        priority: int,
        created: float,
        *,
        waited: bool = False,
        tenant: str = "",
    ) -> bool:
        """Store a run and queue its first tasks; returns once Redis has both: True, or
        False when Redis held a run of this id already (stored by an earlier attempt).
        ``waited``: :meth:`wait_run` will wait for it (Redis then announces its end).
        ``tenant``: whose turns its tasks wait in (:func:`~wf78_core.cluster.shares.start_row`).

        A start is idempotent by its run id, so one whose answer was lost is sent again
        under the same id, for up to ``overload_timeout``; then :class:`BackendUnavailable`
        (naming the run when an attempt may have reached Redis)."""
        graph, weights = self._graphs[workflow.id], self.settings.fair_weights
        call = start_row(
            run_id, workflow, graph, context, priority, created, waited, tenant, weights
        )
        deadline = time.monotonic() + self.settings.overload_timeout
        sent = False  # whether an attempt may have reached Redis
        while True:
            try:
                return bool(await self._starts.call(call))
            except (RedisError, OSError) as error:
                sent = sent or not _never_sent(error)
                if time.monotonic() >= deadline:
                    raise self.unreachable(error, run_id if sent else None) from error
            await anyio.sleep(_START_RETRY)

    async def _send_starts(self, calls: list[Call]) -> None:
        answers = await self._scripts["START"](
            keys=[self._stats_key],
            args=self._args(pack([call.args for call in calls]), self.settings.run_history),
        )
        for call, answer in zip(calls, answers, strict=True):
            call.value = answer

    async def wait_run(self, run_id: str) -> Run:
        """The run once it finished (woken by its ``done`` message, re-checked now and then
        in case a message was lost with a reconnect; the run is accepted, so a Redis that
        does not answer for a while is waited out)."""
        event = self._waiters.setdefault(run_id, anyio.Event())
        try:
            while True:
                pause = 5.0
                try:
                    run = await self.fetch_run(run_id)
                except (RedisError, OSError) as error:
                    logger.debug("redis backend: waiting for run %s: %s", run_id, error)
                    run, pause = None, _RECONNECT
                if run is not None and run.status not in ("pending", "running"):
                    return run
                with anyio.move_on_after(pause):
                    await event.wait()
                event = self._waiters[run_id] = anyio.Event()
        finally:
            self._waiters.pop(run_id, None)

    async def fetch_run(self, run_id: str) -> Run | None:
        """The run as Redis holds it now, or None (unknown, or expired after ``run_ttl``)."""
        return run_from(
            run_id, await self.redis.hgetall(self.prefix + "run:" + run_id), self._workflows
        )

    async def recent_runs(self, limit: int) -> list[Run]:
        """The newest ``limit`` runs still kept, newest first: one round trip for the ids,
        one pipeline for the runs."""
        ids = [i.decode() for i in await self.redis.zrevrange(self.prefix + "recent", 0, limit - 1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hgetall(self.prefix + "run:" + run_id)
            hashes = await pipe.execute()
        runs = (
            run_from(run_id, raw, self._workflows) for run_id, raw in zip(ids, hashes, strict=True)
        )
        return [run for run in runs if run is not None]

    async def cancel_run(self, run_id: str, reason: str) -> int:
        """-1: unknown run, 0: it had finished, 1: cancelled (the workers running its
        tasks hear it on the bell and interrupt them)."""
        answer = await self._scripts["CANCEL"](
            keys=[self._stats_key], args=self._args(run_id, reason)
        )
        return int(answer)

    async def reopen(self, letter: DeadLetter) -> int:
        """Run a dead letter's task again in its run (see ``REOPEN``): 1 reopened, 0 its
        run still runs, -1 the run is gone, -2 no such dead letter."""
        graph = self._graphs.get(letter.workflow)
        if graph is None or letter.task not in graph.tasks:
            return -1
        order = [letter.task, *(dep for dep, _ in graph.skips[letter.task])]
        rows = [[t, list(dict.fromkeys(graph.tasks[t].depends_on))] for t in order]
        answer = await self._scripts["REOPEN"](
            keys=[self._stats_key], args=self._args(letter.id, letter.run_id, pack(rows))
        )
        return int(answer)

    async def finished_runs(self) -> int:
        """Runs finished in this namespace, by every process (a counter kept by Redis)."""
        value = await self.redis.hget(self._stats_key, "runs_finished")
        return int(value or 0)

    async def dead_letters(self) -> list[DeadLetter]:
        raw = await self.redis.hgetall(self.prefix + "dead")
        letters = sorted(
            (decode_dead(v) for v in raw.values()), key=lambda letter: letter.time, reverse=True
        )
        self.dead_cache = letters
        return letters

    async def depths(self) -> dict[int, int]:
        """Tasks ready but not yet taken, per priority level, across the namespace (and,
        kept for ``engine.stats()``, tasks running per workflow and the run counts)."""
        levels, running, runs = await self._scripts["DEPTHS"](
            keys=[self._stats_key], args=self._args()
        )
        started, finished = (int(value or 0) for value in runs)
        self.runs_finished = finished
        self.runs_active = max(0, started - finished)
        self.depth = {
            int(float(levels[i])): int(levels[i + 1])
            for i in range(0, len(levels), 2)
            if int(levels[i + 1])
        }
        self.running_by_workflow = {
            running[i].decode(): int(running[i + 1]) for i in range(0, len(running), 2)
        }
        return self.depth

    async def claim_tick(self, workflow_id: str, due: float) -> bool:
        """True for the one process that claims this scheduled tick of the workflow."""
        key = f"{self.prefix}tick:{workflow_id}:{round(due * 1000)}"
        return bool(await self.redis.set(key, self.consumer, nx=True, ex=3600))

    # -- workers ------------------------------------------------------------------------

    def graph(self, workflow_id: str) -> Graph | None:
        return self._graphs.get(workflow_id)

    async def take(self, capabilities: Sequence[str], count: int) -> list[Taken]:
        rows = await self._scripts["TAKE"](
            keys=[self._stats_key],
            args=self._args(
                self.consumer,
                count,
                int(self.settings.aging_seconds * 1000),
                int(self.settings.lease_ttl * 1000),
                len(capabilities),
                *capabilities,
            ),
        )
        self.taken += len(rows)
        return [Taken(row) for row in rows]

    async def reclaim(
        self, capabilities: Sequence[str], stuck_after: float, room: int
    ) -> list[Taken]:
        """Take over at most ``room`` tasks of dead or stuck workers."""
        rows = await self._scripts["RECLAIM"](
            keys=[self._stats_key],
            args=self._args(
                self.consumer,
                int(stuck_after * 1000),
                int(self.settings.lease_ttl * 1000),
                room,
                len(capabilities),
                *capabilities,
            ),
        )
        self.reclaimed += len(rows)
        return [Taken(row) for row in rows]

    async def prefetch_results(self, batch: Sequence[Taken]) -> None:
        """The batch's dependency results, in one round trip (each Taken keeps its own)."""
        wanted = needing_results(self._graphs, batch)
        if wanted:
            async with self.redis.pipeline(transaction=False) as pipe:
                for taken, deps in wanted:
                    pipe.hmget(self.prefix + "run:" + taken.run_id, [f"r:{d}" for d in deps])
                keep_results(wanted, await pipe.execute())

    async def dependency_results(self, taken: Taken, task: TaskDefinition) -> dict[str, Any]:
        if not task.depends_on:
            return {}
        if taken.results is not None:  # read with its batch (prefetch_results)
            return taken.results
        deps = list(dict.fromkeys(task.depends_on))
        values = await self.redis.hmget(
            self.prefix + "run:" + taken.run_id, [f"r:{d}" for d in deps]
        )
        return {dep: decode(value) for dep, value in zip(deps, values, strict=True)}

    async def complete(self, taken: Taken, completion: Completion) -> None:
        """Report a taken task's end: returns once Redis acknowledged it and moved the DAG."""
        graph = self._graphs.get(taken.workflow)
        followers: Sequence[Any] = ()
        if graph is not None and taken.task in graph.tasks:
            if completion.outcome == "succeeded":
                followers = graph.dependants[taken.task]
            else:
                followers = graph.skips[taken.task]
        letter = completion.dead_letter
        await self._completions.call(
            [
                taken.stream,
                taken.capability,
                taken.entry,
                taken.run_id,
                taken.task,
                taken.workflow,
                self.consumer,
                completion.outcome,
                completion.result,
                completion.error,
                completion.run_error,
                completion.data_source,
                completion.extra_attempts,
                letter.id if letter else "",
                json_encode(letter).decode() if letter else "",
                followers,
            ]
        )

    async def _send_completions(self, calls: list[Call]) -> None:
        await self._scripts["COMPLETE"](
            keys=[self._stats_key], args=self._args(pack([call.args for call in calls]))
        )

    async def heartbeat(self, held: Sequence[Taken], touch: Sequence[bool] = ()) -> list[int]:
        """Say this worker lives and keep the leases of what it runs; entries whose
        ``touch`` is true are marked as in progress (their idle time starts again), so
        only entries nobody works on go idle and are taken over. Returns the positions in
        ``held`` of entries no longer this worker's to run: their run was cancelled or
        finished, or the entry was taken over or lost (with a Redis restart, say)."""
        rows = [
            [t.stream, t.capability, t.entry, t.run_id, t.task, t.workflow, int(flag)]
            for t, flag in zip(held, [*touch, *[False] * (len(held) - len(touch))], strict=True)
        ]
        gone = await self._scripts["HEARTBEAT"](
            keys=[self._stats_key],
            args=self._args(self.consumer, int(self.settings.lease_ttl * 1000), pack(rows)),
        )
        return [int(position) - 1 for position in gone]

    async def leave(self) -> None:
        """A clean exit: others take over what this worker still holds at once."""
        await self.redis.delete(self.prefix + "hb:" + self.consumer)

    async def reconcile(self) -> int:
        dropped = int(await self._scripts["RECONCILE"](keys=[self._stats_key], args=self._args()))
        self.repaired += dropped
        return dropped


def shown_url(url: str) -> str:
    """``url`` as messages and logs may show it: without user name and password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _unreachable(url: str, error: BaseException, run_id: str | None) -> BackendUnavailable:
    message = f"the redis backend at {shown_url(url)} cannot be reached ({type(error).__name__})"
    if run_id is None:
        return BackendUnavailable(message + "; try again")
    return BackendUnavailable(
        f"{message}: the start of run {run_id!r} was sent but not confirmed, so it may "
        "have been stored; look the run up before starting it again",
        run_id=run_id,
    )


def _never_sent(error: BaseException) -> bool:
    """Whether a failed call surely never reached Redis (the connection was refused)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
