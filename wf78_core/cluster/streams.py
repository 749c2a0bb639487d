"""Workflow runs on Redis Streams: one queue for many processes and hosts.

``[engine] backend = "redis"`` keeps workflow runs in Redis instead of this process:

* a ready task is an entry in the stream of its capability (the task's ``data_source``,
  or ``*`` for any worker) and priority level; workers read the most urgent entries
  across their capabilities' streams (level minus one per ``aging_seconds`` waited, the
  same aging as in process), and only as many as they have free slots;
* ``max_concurrent`` holds across all processes: a task enters its stream holding one of
  its workflow's leases, or waits in the workflow's wait set for one; a worker renews the
  leases of the tasks it runs with its heartbeat, every exit path releases them, and a
  reconciler drops leases that drifted;
* finishing a task acknowledges its entry and updates the run's DAG in one Lua script, so
  fan-in survives a crash; a dead worker's entries are taken over when its heartbeat
  expires, a stuck one's (``XAUTOCLAIM``) when idle past the longest task budget plus
  ``claim_margin``; an entry delivered more than ``max_deliveries`` times is a dead letter;
* run state and results live in a hash per run, kept ``run_ttl`` seconds after the run
  finished; every key carries the namespace's hash tag, so Redis Cluster works.

Single operations (``engine.submit``, the data routes) still run in the process that
received them. See :mod:`wf78_core.streams_scripts` for the keys and the scripts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from wf78_core.cluster import scripts
from wf78_core.cluster.wire import (
    BATCH,
    Batcher,
    Call,
    Completion,
    Graph,
    Taken,
    decode,
    decode_dead,
    decode_value,
    encode_result,
    json_encode,
    pack,
    text,
)
from wf78_core.config import EngineSettings
from wf78_core.core.records import DeadLetter
from wf78_core.core.runs import Run, RunStatus, TaskRun
from wf78_core.definitions import TaskDefinition, WorkflowDefinition
from wf78_core.errors import Wf78Error

__all__ = ["Completion", "RedisStreams", "Taken", "encode_result"]

_CONNECTIONS = 32
# Seconds between attempts to listen again after the pub/sub connection was lost.
_RECONNECT = 0.5
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
        self._bell = anyio.Event()
        self._starts = Batcher("start", self._send_starts, BATCH * 4)
        self._completions = Batcher("complete", self._send_completions, BATCH * 4)
        # Refreshed by this process's worker (every lease_ttl) or by depths().
        self.depth: dict[int, int] = {}
        self.running_by_workflow: dict[str, int] = {}
        self.dead_cache: list[DeadLetter] = []
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
                    f"the redis backend at {self.settings.backend_url} does not answer: {error}"
                ) from error
            self._scripts = {
                name: redis.register_script(getattr(scripts, name)) for name in scripts.__all__
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
                        self._bell.set()
                        continue
                    event = self._waiters.get(message["data"].decode())
                    if event is not None:
                        event.set()
            except (RedisError, OSError) as error:
                if not started:
                    raise
                logger.warning("redis backend: listening again after %s", error)
                self._bell.set()  # workers look at the streams now
                for event in list(self._waiters.values()):
                    event.set()  # waiters look at their runs now
                await anyio.sleep(_RECONNECT)
            finally:
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()

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
    ) -> None:
        """Store a run and queue its first tasks; returns once Redis has both.
        ``waited``: :meth:`wait_run` will wait for it (Redis then announces its end)."""
        try:
            text = json_encode(context).decode()
        except (TypeError, msgspec.EncodeError) as error:
            raise Wf78Error(f"the run context cannot be kept in redis as JSON: {error}") from None
        stored = await self._starts.call(
            [
                run_id,
                workflow.id,
                priority,
                max(1, workflow.max_concurrent),
                text,
                repr(created),
                int(waited),
                self._graphs[workflow.id].rows,
            ]
        )
        if not stored:
            raise Wf78Error(f"run id {run_id!r} is already known to the redis backend")

    async def _send_starts(self, calls: list[Call]) -> None:
        answers = await self._scripts["START"](
            keys=[self._stats_key],
            args=self._args(pack([call.args for call in calls]), self.settings.run_history),
        )
        for call, answer in zip(calls, answers, strict=True):
            call.value = answer

    async def wait_run(self, run_id: str) -> Run:
        """The run once it finished (woken by its ``done`` message, re-checked now and then
        in case a message was lost with a reconnect)."""
        event = self._waiters.setdefault(run_id, anyio.Event())
        try:
            while True:
                run = await self.fetch_run(run_id)
                if run is not None and run.status not in ("pending", "running"):
                    return run
                with anyio.move_on_after(5.0):
                    await event.wait()
                event = self._waiters[run_id] = anyio.Event()
        finally:
            self._waiters.pop(run_id, None)

    async def fetch_run(self, run_id: str) -> Run | None:
        """The run as Redis holds it now, or None (unknown, or expired after ``run_ttl``)."""
        return self._run_from(run_id, await self.redis.hgetall(self.prefix + "run:" + run_id))

    async def recent_runs(self, limit: int) -> list[Run]:
        """The newest ``limit`` runs still kept, newest first: one round trip for the ids,
        one pipeline for the runs."""
        ids = [i.decode() for i in await self.redis.zrevrange(self.prefix + "recent", 0, limit - 1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hgetall(self.prefix + "run:" + run_id)
            hashes = await pipe.execute()
        runs = (self._run_from(run_id, raw) for run_id, raw in zip(ids, hashes, strict=True))
        return [run for run in runs if run is not None]

    def _run_from(self, run_id: str, raw: Any) -> Run | None:
        if not raw:
            return None
        fields = {k.decode(): v for k, v in raw.items()}
        workflow_id = fields["wf"].decode()
        workflow = self._workflows.get(workflow_id)
        task_ids = (
            [t.id for t in workflow.tasks]
            if workflow is not None
            else [k[2:] for k in fields if k.startswith("s:")]
        )

        def number(key: str) -> float | None:
            value = fields.get(key)
            return float(value) if value is not None else None

        tasks = {
            task_id: TaskRun(
                id=task_id,
                state=fields[f"s:{task_id}"].decode(),
                attempts=int(fields.get(f"a:{task_id}", 0)),
                result=decode(fields.get(f"r:{task_id}")),
                error=text(fields.get(f"e:{task_id}")),
                data_source=text(fields.get(f"d:{task_id}")),
                started=number(f"ts:{task_id}"),
                finished=number(f"tf:{task_id}"),
            )
            for task_id in task_ids
        }
        status: RunStatus = fields["st"].decode()
        return Run(
            id=run_id,
            workflow=workflow_id,
            status=status,
            tasks=tasks,
            context=decode_value(fields["ctx"]) if fields.get("ctx") else {},
            created=float(fields["cr"]),
            started=number("sa"),
            finished=number("fi"),
            error=text(fields.get("err")),
        )

    async def cancel_run(self, run_id: str, reason: str) -> int:
        """-1: unknown run, 0: it had finished, 1: cancelled (running tasks finish on
        their workers; what they return is dropped)."""
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
        """Tasks ready but not yet taken, per priority level, across the namespace."""
        levels, running = await self._scripts["DEPTHS"](keys=[self._stats_key], args=self._args())
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

    async def dependency_results(self, taken: Taken, task: TaskDefinition) -> dict[str, Any]:
        if not task.depends_on:
            return {}
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

    async def heartbeat(self, held: Iterable[Taken]) -> None:
        """Say this worker lives, and keep the leases of what it runs."""
        ttl_ms = int(self.settings.lease_ttl * 1000)
        expiry = int(time.time() * 1000) + ttl_ms
        pipe: Pipeline
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.prefix + "hb:" + self.consumer, 1, px=ttl_ms)
            for taken in held:
                pipe.zadd(
                    self.prefix + "lease:" + taken.workflow,
                    {f"{taken.run_id}\x1f{taken.task}": expiry},
                    xx=True,
                )
            await pipe.execute()

    async def leave(self) -> None:
        """A clean exit: others take over what this worker still holds at once."""
        await self.redis.delete(self.prefix + "hb:" + self.consumer)

    async def reconcile(self) -> int:
        dropped = int(await self._scripts["RECONCILE"](keys=[self._stats_key], args=self._args()))
        self.repaired += dropped
        return dropped

    async def wait_for_work(self, within: float) -> None:
        """Sleep until the bell rings (something was queued), at most ``within`` seconds."""
        with anyio.move_on_after(within):
            await self._bell.wait()

    def ring(self) -> None:
        """Wake this process's worker (it is stopping, or a slot freed)."""
        self._bell.set()

    def clear_bell(self) -> None:
        if self._bell.is_set():
            self._bell = anyio.Event()
