"""Workflow runs: the public snapshot (``Run``) and the engine's mutable bookkeeping."""

from __future__ import annotations

import time
from typing import Any, Literal

import anyio
import msgspec

from wf78_core.core.scheduling import Waiter
from wf78_core.definitions import TaskDefinition, WorkflowDefinition
from wf78_core.events import TaskState

__all__ = ["Run", "RunStatus", "TaskRun"]

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
        "workflow",
    )

    def __init__(
        self, run_id: str, workflow: WorkflowDefinition, context: dict[str, Any], priority: int
    ) -> None:
        self.id = run_id
        self.priority = priority
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
