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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from wf78_core.cluster import scripts
from wf78_core.config import EngineSettings
from wf78_core.core.backend import InProcessBackend
from wf78_core.core.runs import Run, RunStatus, TaskRun
from wf78_core.definitions import Result, TaskDefinition, WorkflowDefinition
from wf78_core.errors import Wf78Error
from wf78_core.persistence.journal import DeadLetter

__all__ = ["Completion", "RedisBackend", "Taken", "encode_result"]

#: the capability of a task that names no data source: any worker runs it
ANY = "*"
_BATCH = 256
_CONNECTIONS = 32
# Seconds between attempts to listen again after the pub/sub connection was lost.
_RECONNECT = 0.5
logger = logging.getLogger("wf78.streams")
# Contexts and results are kept as JSON text (the scripts read their arguments with
# cmsgpack, which takes text but not binary strings); a Result stays a Result.
_RESULT, _VALUE = "R", "V"
_json = msgspec.json.Encoder().encode
_decode_value = msgspec.json.Decoder().decode
_decode_result = msgspec.json.Decoder(Result).decode
_dead_decode = msgspec.json.Decoder(DeadLetter).decode
_pack = msgspec.msgpack.Encoder().encode


def encode_result(value: Any) -> str:
    """A task result as stored in its run's hash (JSON; a :class:`Result` stays one)."""
    if isinstance(value, Result):
        return _RESULT + _json(value).decode()
    return _VALUE + _json(value).decode()


def _decode(data: bytes | None) -> Any:
    if not data:
        return None
    if data[:1] == b"R":
        return _decode_result(data[1:])
    return _decode_value(data[1:])


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class Taken:
    """A task a worker took from a stream (or took over from another worker)."""

    __slots__ = (
        "attempts",
        "capability",
        "context",
        "deliveries",
        "entry",
        "priority",
        "run_id",
        "stream",
        "task",
        "workflow",
    )

    def __init__(self, row: Sequence[Any]) -> None:
        self.stream: str = row[0].decode()
        self.capability: str = row[1].decode()
        self.entry: str = row[2].decode()
        self.run_id: str = row[3].decode()
        self.task: str = row[4].decode()
        self.workflow: str = row[5].decode()
        self.priority = int(row[6])
        self.attempts = int(row[7])
        self.context: dict[str, Any] = _decode_value(row[8]) if row[8] else {}
        self.deliveries = int(row[9])


class Completion(msgspec.Struct, kw_only=True):
    """How a taken task ended, as the worker reports it."""

    outcome: str  # succeeded | failed
    result: str = ""
    error: str = ""
    run_error: str = ""
    data_source: str = ""
    extra_attempts: int = 0
    dead_letter: DeadLetter | None = None


class _Graph:
    """What the scripts need of a workflow's DAG: dependants, and what a failure skips."""

    __slots__ = ("capabilities", "dependants", "rows", "skips", "tasks")

    def __init__(self, workflow: WorkflowDefinition) -> None:
        self.tasks = {t.id: t for t in workflow.tasks}
        self.capabilities = {t.id: t.data_source or ANY for t in workflow.tasks}
        dependants: dict[str, list[str]] = {t.id: [] for t in workflow.tasks}
        for task in workflow.tasks:
            for dep in dict.fromkeys(task.depends_on):
                dependants[dep].append(task.id)
        self.dependants = {k: tuple(v) for k, v in dependants.items()}
        # What START stores per task: id, capability, unfinished dependencies.
        self.rows = [
            (t.id, self.capabilities[t.id], len(set(t.depends_on))) for t in workflow.tasks
        ]
        self.skips: dict[str, tuple[tuple[str, str], ...]] = {}
        for task_id in self.tasks:
            seen: dict[str, str] = {}
            stack = [(d, task_id) for d in self.dependants[task_id]]
            while stack:
                dep, parent = stack.pop()
                if dep not in seen:
                    seen[dep] = f"dependency {parent!r} did not succeed"
                    stack.extend((d, dep) for d in self.dependants[dep])
            self.skips[task_id] = tuple(seen.items())


class _Call:
    """One queued call of a batcher: its arguments, and its answer once sent."""

    __slots__ = ("args", "done", "error", "value")

    def __init__(self, args: list[Any]) -> None:
        self.args = args
        self.done = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class _Batcher:
    """Calls made together share one round trip: a bounded stream of calls, drained by
    one task that sends what is waiting as one pipeline (or one script call)."""

    def __init__(
        self, name: str, send: Callable[[list[_Call]], Awaitable[None]], size: int
    ) -> None:
        self.name = name
        self._flush = send
        self._send: MemoryObjectSendStream[_Call] | None = None
        self._size = size

    async def call(self, args: list[Any]) -> Any:
        send = self._send
        if send is None:
            raise Wf78Error(f"the redis backend is not running ({self.name})")
        call = _Call(args)
        try:
            await send.send(call)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise Wf78Error(f"the redis backend is not running ({self.name})") from None
        await call.done.wait()
        if call.error is not None:
            raise call.error
        return call.value

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        send, receive = anyio.create_memory_object_stream[_Call](self._size)
        self._send = send
        task_status.started()
        try:
            async for first in receive:
                calls = [first]
                while len(calls) < _BATCH:
                    try:
                        calls.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                with anyio.CancelScope(shield=True):
                    try:
                        await self._flush(calls)
                    except Exception as error:
                        for call in calls:
                            call.error = error
                    for call in calls:
                        call.done.set()
        finally:
            # Stopped with calls still queued: they were never sent, and say so.
            self._send = None
            while True:
                try:
                    call = receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                call.error = Wf78Error(f"the redis backend stopped before this {self.name}")
                call.done.set()
            receive.close()
            send.close()

    def close(self) -> None:
        if self._send is not None:
            self._send.close()
            self._send = None


class RedisBackend(InProcessBackend):
    """Runs, their tasks, leases and results in Redis, shared by every process that
    names the same ``backend_url`` and ``backend_namespace``.

    Single operations keep the in-process limits this class inherits.
    """

    distributed = True

    def __init__(self, settings: EngineSettings, workflows: Iterable[WorkflowDefinition]):
        workflows = list(workflows)
        super().__init__(settings, workflows)
        self.settings = settings
        self.prefix = f"wf78:{{{settings.backend_namespace}}}:"
        self._stats_key = self.prefix + "stats"
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._graphs = {w.id: _Graph(w) for w in workflows}
        self._workflows = {w.id: w for w in workflows}
        # Any: redis-py types every reply as bytes | str; this client always answers bytes.
        self._redis: Any = None
        self._waiters: dict[str, anyio.Event] = {}
        self._bell = anyio.Event()
        self._starts = _Batcher("start", self._send_starts, _BATCH * 4)
        self._completions = _Batcher("complete", self._send_completions, _BATCH * 4)
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
            text = _json(context).decode()
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

    async def _send_starts(self, calls: list[_Call]) -> None:
        answers = await self._scripts["START"](
            keys=[self._stats_key],
            args=self._args(_pack([call.args for call in calls]), self.settings.run_history),
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
                result=_decode(fields.get(f"r:{task_id}")),
                error=_text(fields.get(f"e:{task_id}")),
                data_source=_text(fields.get(f"d:{task_id}")),
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
            context=_decode_value(fields["ctx"]) if fields.get("ctx") else {},
            created=float(fields["cr"]),
            started=number("sa"),
            finished=number("fi"),
            error=_text(fields.get("err")),
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
            keys=[self._stats_key], args=self._args(letter.id, letter.run_id, _pack(rows))
        )
        return int(answer)

    async def finished_runs(self) -> int:
        """Runs finished in this namespace, by every process (a counter kept by Redis)."""
        value = await self.redis.hget(self._stats_key, "runs_finished")
        return int(value or 0)

    async def dead_letters(self) -> list[DeadLetter]:
        raw = await self.redis.hgetall(self.prefix + "dead")
        letters = sorted(
            (_dead_decode(v) for v in raw.values()), key=lambda letter: letter.time, reverse=True
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

    def graph(self, workflow_id: str) -> _Graph | None:
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
        return {dep: _decode(value) for dep, value in zip(deps, values, strict=True)}

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
                _json(letter).decode() if letter else "",
                followers,
            ]
        )

    async def _send_completions(self, calls: list[_Call]) -> None:
        await self._scripts["COMPLETE"](
            keys=[self._stats_key], args=self._args(_pack([call.args for call in calls]))
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
