"""Where queue and run state live, behind one internal interface.

The engine talks only to a :class:`Backend`. :class:`InProcessBackend` keeps limits,
waiters and runs in this process; a shared backend (Redis Streams, a later issue)
implements the same interface so many processes see one queue. Nothing in the
engine's public API assumes a single process: runs are addressed by id only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Protocol

from wf78_core.config import EngineSettings
from wf78_core.core.runs import RunState
from wf78_core.core.scheduling import Limit, Scheduler
from wf78_core.definitions import WorkflowDefinition

__all__ = ["Backend", "InProcessBackend"]


class Backend(Protocol):
    """Admission, limits and run bookkeeping for one engine (or a fleet of them)."""

    scheduler: Scheduler
    #: accepted and unfinished work (operations and runs): the bound on memory
    pending: Limit
    #: tasks running at once across the engine
    running: Limit

    def workflow_limit(self, workflow_id: str) -> Limit: ...

    def add_run(self, run: RunState) -> None: ...

    def get_run(self, run_id: str) -> RunState | None: ...

    def discard_run(self, run_id: str) -> None: ...

    def finish_run(self, run: RunState) -> None: ...

    def runs(self) -> Iterable[RunState]: ...


class InProcessBackend:
    """Everything in this process: fast, and gone when the process ends."""

    def __init__(self, settings: EngineSettings, workflows: Iterable[WorkflowDefinition]):
        self.scheduler = Scheduler(aging_seconds=settings.aging_seconds)
        self.pending = Limit("pending", settings.queue_size)
        self.running = Limit("running", settings.max_running)
        self._workflow_limits = {
            w.id: Limit(f"workflow:{w.id}", max(1, w.max_concurrent)) for w in workflows
        }
        self._history = settings.run_history
        self._runs: dict[str, RunState] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    def workflow_limit(self, workflow_id: str) -> Limit:
        return self._workflow_limits[workflow_id]

    def add_run(self, run: RunState) -> None:
        self._runs[run.id] = run

    def get_run(self, run_id: str) -> RunState | None:
        return self._runs.get(run_id)

    def discard_run(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def finish_run(self, run: RunState) -> None:
        """Keep a finished run for lookups, forgetting the oldest past ``run_history``."""
        self._finished[run.id] = None
        while len(self._finished) > self._history:
            old, _ = self._finished.popitem(last=False)
            self._runs.pop(old, None)

    def runs(self) -> Iterator[RunState]:
        return iter(list(self._runs.values()))
