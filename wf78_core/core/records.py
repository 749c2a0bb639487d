"""What is remembered of runs: journal records, dead letters, and the journal's port."""

from __future__ import annotations

from typing import Any, Protocol

import anyio
import msgspec
from anyio.abc import TaskStatus

__all__ = ["DeadLetter", "Journal", "JournaledRun", "TaskCheckpoint"]


class TaskCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A finished task of a journaled run."""

    task: str
    state: str
    result: Any = None
    error: str | None = None
    attempts: int = 0
    data_source: str | None = None
    started: float | None = None
    finished: float | None = None


class JournaledRun(msgspec.Struct, frozen=True, kw_only=True):
    """A run read back from the journal: what it was started with and what finished."""

    id: str
    workflow: str
    context: dict[str, Any]
    priority: int
    created: float
    status: str = "running"
    error: str | None = None
    finished: float | None = None
    tasks: dict[str, TaskCheckpoint] = {}


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A task that failed after its retries and fallbacks, kept until it is run again."""

    id: str
    run_id: str
    workflow: str
    task: str
    action: str
    error: str
    attempts: int
    time: float


class Journal(Protocol):
    """What the engine needs of a journal. Writes are applied in the order they are made."""

    #: whether what it holds survives the process (``memory``: no)
    durable: bool

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer loop, in the engine's service task group, until cancelled."""

    async def started(self, run: JournaledRun) -> None:
        """Record an accepted run; returns once it is durable."""

    def checkpoint(self, run_id: str, task: TaskCheckpoint) -> None:
        """Queue a finished task (see :meth:`room`)."""

    def finished(self, run_id: str, status: str, error: str | None) -> None:
        """Queue the end of a run (its summary stays among the newest finished)."""

    async def room(self) -> None:
        """Wait while more than the journal's bound of records is queued."""

    async def flush(self) -> None:
        """Wait until everything queued so far is durable."""

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        """Record a dead letter; returns once it is durable."""

    async def remove_dead_letter(self, letter_id: str) -> None:
        """Forget a dead letter (it is being run again); returns once that is durable."""

    async def unfinished(self) -> list[JournaledRun]:
        """The runs that were accepted and did not finish, with their checkpoints."""

    async def load_run(self, run_id: str) -> JournaledRun | None:
        """One journaled run (finished failed runs with dead letters included)."""

    async def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, oldest first."""

    async def finished_runs(self) -> list[JournaledRun]:
        """Summaries of the newest finished runs kept, oldest first."""
