"""What the Redis Streams backend stores and sends: task entries taken by a worker,
completions, runs as their hash holds them, each workflow's graph, and the batching of
script calls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from wf78_core.core.records import DeadLetter
from wf78_core.core.runs import Run, RunStatus, TaskRun
from wf78_core.definitions import Result, WorkflowDefinition
from wf78_core.errors import Wf78Error

__all__ = [
    "TENANT_FIELD",
    "TRACE_FIELD",
    "Batcher",
    "Bell",
    "Call",
    "Completion",
    "Graph",
    "Taken",
    "context_of",
    "decode",
    "decode_dead",
    "decode_value",
    "encode_result",
    "json_encode",
    "keep_results",
    "needing_results",
    "pack",
    "run_from",
    "text",
]

#: the capability of a task that names no data source: any worker runs it
ANY = "*"
#: script calls sent at once
BATCH = 256

# Contexts and results are kept as JSON text (the scripts read their arguments with
# cmsgpack, which takes text but not binary strings); a Result stays a Result.
RESULT, VALUE = "R", "V"
json_encode = msgspec.json.Encoder().encode
decode_value = msgspec.json.Decoder().decode
decode_result = msgspec.json.Decoder(Result).decode
decode_dead = msgspec.json.Decoder(DeadLetter).decode
pack = msgspec.msgpack.Encoder().encode
#: the field of a stored run context that carries the W3C ``traceparent`` of the run's
#: queueing (see wf78_core.core.tracing): the workers' task spans join the submitter's
#: trace. Taken out again when the context is read (:func:`context_of`).
TRACE_FIELD = "__wf78_traceparent__"
#: the field of a stored run context that carries the run's tenant (the ``fair_by`` field
#: of the identity that started it; absent: ``""``, as in runs stored before it existed)
TENANT_FIELD = "__wf78_tenant__"


def context_of(raw: bytes | None) -> tuple[dict[str, Any], str | None, str]:
    """A run context as stored, the traceparent queued with it (None: none) and the
    run's tenant (``""``: none)."""
    if not raw:
        return {}, None, ""
    context: dict[str, Any] = decode_value(raw)
    return context, context.pop(TRACE_FIELD, None), context.pop(TENANT_FIELD, "")


def encode_result(value: Any) -> str:
    """A task result as stored in its run's hash (JSON; a :class:`Result` stays one)."""
    if isinstance(value, Result):
        return RESULT + json_encode(value).decode()
    return VALUE + json_encode(value).decode()


def decode(data: bytes | None) -> Any:
    if not data:
        return None
    if data[:1] == b"R":
        return decode_result(data[1:])
    return decode_value(data[1:])


def text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def run_from(run_id: str, raw: Any, workflows: Mapping[str, WorkflowDefinition]) -> Run | None:
    """A run from its hash (``HGETALL``, bytes); None for an empty one (unknown run)."""
    if not raw:
        return None
    fields = {k.decode(): v for k, v in raw.items()}
    workflow_id = fields["wf"].decode()
    workflow = workflows.get(workflow_id)
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
        context=context_of(fields.get("ctx"))[0],
        created=float(fields["cr"]),
        started=number("sa"),
        finished=number("fi"),
        error=text(fields.get("err")),
    )


class Taken:
    """A task a worker took from a stream (or took over from another worker)."""

    __slots__ = (
        "attempts",
        "capability",
        "context",
        "deliveries",
        "entry",
        "priority",
        "results",
        "run_id",
        "stream",
        "task",
        "tenant",
        "traceparent",
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
        self.context, self.traceparent, self.tenant = context_of(row[8])
        self.deliveries = int(row[9])
        #: its dependencies' results, when read with its batch's (None: not read yet)
        self.results: dict[str, Any] | None = None


def needing_results(
    graphs: Mapping[str, Graph], batch: Sequence[Taken]
) -> list[tuple[Taken, list[str]]]:
    """The taken tasks that have dependencies, each with its dependencies' ids."""
    wanted: list[tuple[Taken, list[str]]] = []
    for taken in batch:
        graph = graphs.get(taken.workflow)
        task = graph.tasks.get(taken.task) if graph is not None else None
        if task is not None and task.depends_on:
            wanted.append((taken, list(dict.fromkeys(task.depends_on))))
    return wanted


def keep_results(wanted: Sequence[tuple[Taken, list[str]]], answers: Sequence[Any]) -> None:
    """Each taken task keeps its dependencies' results (``answers``: one HMGET each)."""
    for (taken, deps), values in zip(wanted, answers, strict=True):
        taken.results = {dep: decode(v) for dep, v in zip(deps, values, strict=True)}


class Completion(msgspec.Struct, kw_only=True):
    """How a taken task ended, as the worker reports it."""

    outcome: str  # succeeded | failed
    result: str = ""
    error: str = ""
    run_error: str = ""
    data_source: str = ""
    extra_attempts: int = 0
    dead_letter: DeadLetter | None = None


class Graph:
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


class Bell:
    """What wakes an idle worker: rung when something was queued (the pub/sub bell), when
    a slot freed or the worker stops."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def ring(self) -> None:
        self._event.set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = anyio.Event()

    async def wait(self, within: float) -> None:
        """Until it rings, at most ``within`` seconds."""
        with anyio.move_on_after(within):
            await self._event.wait()


class Call:
    """One queued call of a batcher: its arguments, and its answer once sent."""

    __slots__ = ("args", "done", "error", "value")

    def __init__(self, args: list[Any]) -> None:
        self.args = args
        self.done = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class Batcher:
    """Calls made together share one round trip: a bounded stream of calls, drained by
    one task that sends what is waiting as one pipeline (or one script call)."""

    def __init__(self, name: str, send: Callable[[list[Call]], Awaitable[None]], size: int) -> None:
        self.name = name
        self._flush = send
        self._send: MemoryObjectSendStream[Call] | None = None
        self._size = size

    async def call(self, args: list[Any]) -> Any:
        send = self._send
        if send is None:
            raise Wf78Error(f"the redis backend is not running ({self.name})")
        call = Call(args)
        try:
            try:
                # Queued at once when there is room (no scheduler turn: the wait for the
                # answer below is the call's one suspension); else wait for room.
                send.send_nowait(call)
            except anyio.WouldBlock:
                await send.send(call)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise Wf78Error(f"the redis backend is not running ({self.name})") from None
        await call.done.wait()
        if call.error is not None:
            raise call.error
        return call.value

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        send, receive = anyio.create_memory_object_stream[Call](self._size)
        self._send = send
        task_status.started()
        try:
            async for first in receive:
                calls = [first]
                while len(calls) < BATCH:
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
