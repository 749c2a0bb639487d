"""The task state changes observers receive through ``wf78_task_event``."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["TaskEvent", "TaskState"]

TaskState = Literal[
    "pending", "queued", "running", "retrying", "succeeded", "failed", "cancelled", "skipped"
]


class TaskEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One transition of one task (``run_id`` is ``None`` for ``engine.submit``)."""

    state: TaskState
    workflow: str
    task: str
    run_id: str | None = None
    data_source: str | None = None
    agent: str | None = None
    attempt: int = 0
    error: str | None = None
    elapsed: float = 0.0
    time: float = 0.0
