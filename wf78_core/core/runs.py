"""Workflow runs: the public snapshot (``Run``) and the engine's mutable bookkeeping."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Literal

import anyio
import msgspec

from wf78_core.core import tracing
from wf78_core.core.scheduling import Waiter
from wf78_core.core.tracing import RunTrace
from wf78_core.definitions import TaskDefinition, WorkflowDefinition
from wf78_core.events import TaskState

__all__ = ["Run", "RunStatus", "RunStore", "TaskRun"]

RunStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]
_TERMINAL = frozenset({"succeeded", "failed", "cancelled", "skipped"})


class TaskRun(msgspec.Struct, frozen=True, kw_only=True):
    """One task of a run as seen from outside."""

    id: str
    state: TaskState
    attempts: int = 0
    result: Any = None
    error: str | None = None
    data_source: str | None = None
    started: float | None = None
    finished: float | None = None


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one workflow run: status, per-task states and results, timings."""

    id: str
    workflow: str
    status: RunStatus
    tasks: dict[str, TaskRun]
    context: dict[str, Any]
    created: float
    started: float | None = None
    finished: float | None = None
    error: str | None = None

    @property
    def results(self) -> dict[str, Any]:
        return {task_id: task.result for task_id, task in self.tasks.items()}


class TaskSlot:
    """Mutable state of one task of a run (slots: a run may hold 100k of these)."""

    __slots__ = (
        "attempts",
        "data_source",
        "definition",
        "dependants",
        "error",
        "finished",
        "remaining",
        "result",
        "scope",
        "started",
        "state",
        "waiter",
    )

    def __init__(self, definition: TaskDefinition) -> None:
        self.definition = definition
        self.state: TaskState = "pending"
        self.remaining = len(set(definition.depends_on))
        self.dependants: list[TaskSlot] = []
        self.attempts = 0
        self.result: Any = None
        self.error: str | None = None
        self.data_source: str | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self.scope: anyio.CancelScope | None = None
        self.waiter: Waiter | None = None

    @property
    def done(self) -> bool:
        return self.state in _TERMINAL


class RunState:
    """The engine's record of a run while it executes."""

    __slots__ = (
        "context",
        "created",
        "done",
        "error",
        "finished",
        "id",
        "left",
        "priority",
        "started",
        "status",
        "tasks",
        "tenant",
        "trace",
        "workflow",
    )

    def __init__(
        self,
        run_id: str,
        workflow: WorkflowDefinition,
        context: dict[str, Any],
        priority: int,
        tenant: str = "",
    ) -> None:
        self.id = run_id
        self.priority = priority
        #: whose run it is: its tasks' log records and fair shares ("": no identity's)
        self.tenant = tenant
        self.workflow = workflow
        self.context = context
        self.status: RunStatus = "pending"
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.error: str | None = None
        self.done = anyio.Event()
        self.tasks: dict[str, TaskSlot] = {t.id: TaskSlot(t) for t in workflow.tasks}
        for slot in self.tasks.values():
            for dep in set(slot.definition.depends_on):
                self.tasks[dep].dependants.append(slot)
        self.left = len(self.tasks)
        # With tracing on: the run's span, child of the context the run was made in.
        self.trace: RunTrace | None = None if tracing.TRACER is None else RunTrace()

    def reopen(self, slot: TaskSlot) -> None:
        """Run a failed task again: it and the dependants it made skip go back to
        pending, and the run is running again (a dead letter's retry)."""
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
                1 for dep in set(definition.depends_on) if self.tasks[dep].state != "succeeded"
            )
        self.left += len(reopened)
        self.status = "running"
        self.error = None
        self.finished = None
        self.done = anyio.Event()

    def snapshot(self) -> Run:
        return Run(
            id=self.id,
            workflow=self.workflow.id,
            status=self.status,
            tasks={
                task_id: TaskRun(
                    id=task_id,
                    state=slot.state,
                    attempts=slot.attempts,
                    result=slot.result,
                    error=slot.error,
                    data_source=slot.data_source,
                    started=slot.started,
                    finished=slot.finished,
                )
                for task_id, slot in self.tasks.items()
            },
            context=self.context,
            created=self.created,
            started=self.started,
            finished=self.finished,
            error=self.error,
        )


class RunStore:
    """The runs this process knows: active ones, and the newest ``history`` finished."""

    def __init__(self, history: int) -> None:
        self._history = history
        self._runs: dict[str, RunState] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    def add(self, run: RunState) -> None:
        self._runs[run.id] = run

    def get(self, run_id: str) -> RunState | None:
        return self._runs.get(run_id)

    def discard(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def finish(self, run: RunState) -> None:
        """Keep a finished run for lookups, forgetting the oldest past ``history``."""
        self._finished[run.id] = None
        while len(self._finished) > self._history:
            old, _ = self._finished.popitem(last=False)
            self._runs.pop(old, None)

    def __iter__(self) -> Iterator[RunState]:
        return iter(list(self._runs.values()))
