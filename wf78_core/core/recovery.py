"""Runs rebuilt from the journal, and tasks as the journal keeps them."""

from __future__ import annotations

from typing import Any

import msgspec

from wf78_core.core.records import JournaledRun, TaskCheckpoint
from wf78_core.core.runs import RunState, TaskSlot
from wf78_core.definitions import WorkflowDefinition

__all__ = ["checkpoint_of", "finished_summary", "restore"]


def restore(saved: JournaledRun, workflow: WorkflowDefinition) -> RunState:
    """A run as the journal left it: finished tasks done, their dependants counted."""
    run = RunState(saved.id, workflow, dict(saved.context), saved.priority)
    run.created = saved.created
    for task_id, checkpoint in saved.tasks.items():
        slot = run.tasks.get(task_id)
        if slot is None or checkpoint.state not in ("succeeded", "failed", "skipped"):
            continue
        slot.state = checkpoint.state  # type: ignore[assignment]
        slot.result = checkpoint.result
        slot.error = checkpoint.error
        slot.attempts = checkpoint.attempts
        slot.data_source = checkpoint.data_source
        slot.started = checkpoint.started
        slot.finished = checkpoint.finished
        run.left -= 1
    for slot in run.tasks.values():
        if slot.state == "succeeded":
            for dependant in slot.dependants:
                dependant.remaining -= 1
    return run


def finished_summary(saved: JournaledRun, workflow: WorkflowDefinition) -> RunState:
    """A run that finished before this start, as its journal summary tells it."""
    run = restore(saved, workflow)
    run.status = saved.status  # type: ignore[assignment]
    run.error = saved.error
    run.finished = saved.finished
    # A succeeded run's tasks all succeeded; of other runs, tasks without a checkpoint
    # are reported cancelled (what they did is not known any more).
    state = "succeeded" if saved.status == "succeeded" else "cancelled"
    for slot in run.tasks.values():
        if not slot.done:
            slot.state = state  # type: ignore[assignment]
            slot.finished = saved.finished
    run.left = 0
    run.done.set()
    return run


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it (plain values as they are: most task results)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    return msgspec.to_builtins(value, enc_hook=repr)


def checkpoint_of(slot: TaskSlot) -> TaskCheckpoint:
    """A finished task as the journal keeps it; a result JSON cannot hold is kept as its repr."""
    return TaskCheckpoint(
        task=slot.definition.id,
        state=slot.state,
        result=_plain(slot.result),
        error=slot.error,
        attempts=slot.attempts,
        data_source=slot.data_source,
        started=slot.started,
        finished=slot.finished,
    )
