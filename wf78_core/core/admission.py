"""Admission: how much accepted, unfinished work the engine holds, and how many tasks run.

Both backends admit through it: the in-process one for every operation and run, the
Redis one for the operations and tasks this process executes itself.
"""

from __future__ import annotations

import anyio

from wf78_core.config import EngineSettings
from wf78_core.core.scheduling import Limit, Scheduler
from wf78_core.errors import Overloaded

__all__ = ["Admission", "Counters"]


class Counters:
    """Engine-wide totals of the data path and the task runners."""

    __slots__ = ("completed", "failed", "fallbacks", "reads_shared", "retries", "submitted")

    def __init__(self) -> None:
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.retries = 0
        self.fallbacks = 0
        # Reads answered by an identical read in flight (wf78_core.core.sharing).
        self.reads_shared = 0


class Admission:
    """The scheduler with the engine-wide limits: ``pending`` bounds accepted, unfinished
    work (the bound on memory), ``running`` the tasks running at once."""

    __slots__ = ("fair_by", "overload_timeout", "pending", "running", "scheduler")

    def __init__(self, settings: EngineSettings, *, fair_by: str = "") -> None:
        # fair_by: the identity field tenants are told apart by ("" = FIFO in a level).
        self.scheduler = Scheduler(
            aging_seconds=settings.aging_seconds,
            fair=bool(fair_by),
            weights=settings.fair_weights,
        )
        self.fair_by = fair_by
        self.pending = Limit("pending", settings.queue_size)
        self.running = Limit("running", settings.max_running)
        self.overload_timeout = settings.overload_timeout

    async def admit(self, level: int) -> None:
        """Take a ``pending`` slot, waiting up to ``overload_timeout`` (then
        :class:`Overloaded`); the caller tried ``scheduler.try_acquire`` first."""
        with anyio.move_on_after(self.overload_timeout) as scope:
            await self.scheduler.acquire(level, (self.pending,))
        if scope.cancelled_caught:
            raise Overloaded(
                f"engine queue full ({self.pending.capacity} operations accepted and not "
                f"finished) for {self.overload_timeout}s",
                retry_after=max(self.overload_timeout, 1.0),
            )

    async def enter(self, level: int) -> None:
        """Take a ``pending`` slot for a run (released when the run finishes)."""
        if not self.scheduler.try_acquire((self.pending,)):
            await self.admit(level)

    def leave(self) -> None:
        """Give back a run's ``pending`` slot."""
        self.scheduler.release((self.pending,))
