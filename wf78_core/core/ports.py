"""The ports of the core: where runs live (:class:`Backend`) and what they report.

The engine talks to one :class:`Backend` and never asks which it has. The in-process
backend (:mod:`wf78_core.core.inprocess`) keeps runs in this process, with the journal
behind the :class:`~wf78_core.core.records.Journal` port; the Redis Streams backend
(:mod:`wf78_core.cluster`) shares them between processes. A configuration names one,
and the engine's backend registry builds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any, Protocol

import msgspec
from anyio.abc import TaskGroup

from wf78_core.core.records import DeadLetter, Journal
from wf78_core.core.runs import Run
from wf78_core.definitions import WorkflowDefinition

__all__ = ["Backend", "RunStats"]


class RunStats(msgspec.Struct, kw_only=True):
    """A backend's part of ``engine.stats()``."""

    queued_by_level: dict[int, int] = {}
    queued_by_workflow: dict[str, int] = {}
    running_by_workflow: dict[str, int] = {}
    #: tasks running in this process outside the engine-wide limit (a cluster worker's)
    running: int = 0
    runs_active: int = 0
    runs_finished: int = 0
    dead_letters: list[DeadLetter] = []
    dead_letter_count: int = 0
    journal: str = "off"


class Backend(Protocol):
    """Where workflow runs are accepted, run, remembered and looked up."""

    #: schedule ticks fall on multiples of the period, so every process sharing the
    #: backend wakes for the same tick (and one of them starts its run)
    aligned_ticks: bool
    #: where accepted runs are recorded in this process (None: nowhere, or not here)
    journal: Journal | None
    #: runs the last start-up took up again
    resumed_runs: int

    async def open(self, stack: AsyncExitStack) -> None:
        """Open what it keeps; push the cleanups on ``stack`` (they run after the
        services have stopped)."""

    async def start_services(self, services: TaskGroup) -> None:
        """Start background services (connections, writers) in ``services``."""

    async def start_work(self, work: TaskGroup) -> None:
        """Start what consumes work, in the engine's work group (drained first at exit)."""

    async def recover(self) -> None:
        """After start-up: take up what a previous process left unfinished."""

    def stop(self) -> None:
        """The engine is draining: take no new work."""

    def busy(self) -> bool:
        """Whether accepted work is still running here (the drain waits for it)."""

    def abandon(self, why: str) -> None:
        """The drain timed out: cancel what is left here."""

    def reset(self) -> None:
        """The engine closed: forget per-session state."""

    async def start(
        self,
        workflow: WorkflowDefinition,
        context: Mapping[str, Any] | None,
        priority: int | None,
        *,
        wait: bool,
        key: str | None = None,
    ) -> Run:
        """Accept a run (durably, before returning); wait for it to finish if ``wait``.
        ``key``, the caller's idempotency key (:func:`~wf78_core.core.runkeys.run_key`): a
        replay answers the key's first run and starts nothing; the key sent with another
        request raises IdempotencyConflict; ValueError for a key of no 1 to 200 characters."""

    async def start_event(
        self,
        workflow: WorkflowDefinition,
        payload: Mapping[str, Any] | None,
        *,
        key: str | None = None,
    ) -> str:
        """Accept a run started by the event ``workflow.event``; returns its id (``key``:
        as :meth:`start`'s, claimed per workflow, :func:`~wf78_core.core.runkeys.event_key`)."""

    async def purge_run_keys(self, before: float) -> int:
        """Forget run keys claimed before ``before`` (seconds since the epoch) where they
        do not expire by themselves; how many."""

    async def start_scheduled(self, workflow: WorkflowDefinition, due: float) -> None:
        """A schedule tick: start one run for the tick ``due`` (once across processes)."""

    def get_run(self, run_id: str) -> Run: ...

    async def fetch_run(self, run_id: str) -> Run: ...

    def recent_runs(self, limit: int) -> list[Run]: ...

    async def fetch_recent_runs(self, limit: int) -> list[Run]: ...

    async def cancel(self, run_id: str) -> Run: ...

    def dead_letters(self) -> list[DeadLetter]: ...

    async def fetch_dead_letters(self) -> list[DeadLetter]: ...

    async def retry_dead_letter(self, letter_id: str) -> Run: ...

    def run_stats(self) -> RunStats: ...
