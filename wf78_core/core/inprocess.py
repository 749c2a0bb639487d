"""The in-process backend: runs accepted, run and remembered in this process, made
durable by the journal when one is configured."""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any
from uuid import uuid4

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from wf78_core.config import EngineSettings
from wf78_core.core.admission import Admission
from wf78_core.core.fairness import TENANT
from wf78_core.core.lifecycle import Lifecycle
from wf78_core.core.ports import RunStats
from wf78_core.core.records import DeadLetter, Journal, JournaledRun
from wf78_core.core.recovery import finished_summary, restore
from wf78_core.core.runkeys import RunKeys, event_key, run_key
from wf78_core.core.runs import Run, RunState, RunStore, TaskRun
from wf78_core.core.workflows import WorkflowRunner
from wf78_core.definitions import WorkflowDefinition
from wf78_core.errors import Overloaded, UnknownWorkflow, Wf78Error

__all__ = ["JOURNAL_HISTORY", "InProcessBackend"]

#: The journal keeps the summaries of this many times ``run_history`` finished runs (memory
#: keeps ``run_history`` with their results): ``fetch_run`` answers from either.
JOURNAL_HISTORY = 10


class InProcessBackend:
    """Everything in this process: fast; with a journal, accepted runs survive a crash."""

    aligned_ticks = False

    def __init__(
        self,
        settings: EngineSettings,
        workflows: Mapping[str, WorkflowDefinition],
        *,
        runner: WorkflowRunner,
        runs: RunStore,
        admission: Admission,
        journal: Journal | None,
        life: Lifecycle,
    ) -> None:
        self.settings = settings
        self.workflows = workflows
        self.runner = runner
        self.runs = runs
        self.journal = journal
        self.resumed_runs = 0
        #: run idempotency keys: in the journal when it keeps them, else in memory only
        self.keys = RunKeys(settings.idempotency_ttl, journal)
        self._admission = admission
        self._life = life
        self._events: MemoryObjectSendStream[RunState] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self, stack: AsyncExitStack) -> None:
        if self.journal is not None:
            await self.journal.open()
            stack.push_async_callback(self.journal.close)  # after its writer stopped

    async def start_services(self, services: TaskGroup) -> None:
        if self.journal is not None:
            # In the services group: it stops after the work group has drained, and
            # writes what is still queued before it returns.
            await services.start(self.journal.run)

    async def start_work(self, work: TaskGroup) -> None:
        send, receive = anyio.create_memory_object_stream[RunState](self.settings.event_queue_size)
        self._events = send
        work.start_soon(self._event_loop, receive)

    async def _event_loop(self, receive: MemoryObjectReceiveStream[RunState]) -> None:
        async with receive:
            async for run in receive:
                self.runner.start_run(run)

    def stop(self) -> None:
        if self._events is not None:
            self._events.close()

    def busy(self) -> bool:
        return any(not run.done.is_set() for run in self.runs)

    def abandon(self, why: str) -> None:
        for run in self.runs:
            if not run.done.is_set():
                self.runner.cancel_run(run, why)

    def reset(self) -> None:
        self._events = None

    async def recover(self) -> None:
        """Start again every run the journal holds as unfinished (after a crash or a
        shutdown that cancelled it): checkpointed tasks keep their outcome, the rest run."""
        journal = self.journal
        if journal is None:
            return
        self.runner.dead = {letter.id: letter for letter in await journal.dead_letters()}
        # The newest run_history into memory; fetch_run finds older ones in the journal.
        for saved in (await journal.finished_runs())[-self.settings.run_history :]:
            # How runs finished before this start (summaries: no task results), so a run
            # id answered with a 202 before a crash is still known.
            workflow = self.workflows.get(saved.workflow)
            if self.runs.get(saved.id) is None and workflow is not None:
                if saved.status == "failed":  # its checkpoints are kept for its dead letters
                    saved = await journal.load_run(saved.id) or saved
                summary = finished_summary(saved, workflow)
                self.runs.add(summary)
                self.runs.finish(summary)  # counts toward run_history
        for saved in await journal.unfinished():
            workflow = self.workflows.get(saved.workflow)
            if workflow is None:
                journal.finished(
                    saved.id, "failed", f"workflow {saved.workflow!r} is no longer configured"
                )
                continue
            await self._admission.enter(saved.priority)
            run = restore(saved, workflow)
            self.runs.add(run)
            self.resumed_runs += 1
            self.runner.start_run(run, resumed=True)

    # -- accepting runs --------------------------------------------------------------------

    def _new_run(
        self,
        workflow: WorkflowDefinition,
        context: Mapping[str, Any] | None,
        priority: int | None,
        run_id: str | None = None,
        tenant: str = "",
    ) -> RunState:
        level = workflow.priority if priority is None else priority
        run = RunState(run_id or uuid4().hex, workflow, dict(context or {}), level, tenant)
        self.runs.add(run)
        return run

    async def _journal_started(self, run: RunState) -> None:
        """Record an accepted run before anyone is told it was accepted."""
        if self.journal is None:
            return
        try:
            await self.journal.started(
                JournaledRun(
                    id=run.id,
                    workflow=run.workflow.id,
                    context=run.context,
                    priority=run.priority,
                    created=run.created,
                )
            )
        except BaseException:
            self.runs.discard(run.id)
            self._admission.leave()
            raise

    async def start(
        self,
        workflow: WorkflowDefinition,
        context: Mapping[str, Any] | None,
        priority: int | None,
        *,
        wait: bool,
        key: str | None = None,
    ) -> Run:
        claim = run_key(key, workflow.id, context, priority)
        run_id = uuid4().hex
        if claim is not None:
            first = await self.keys.claim(claim, run_id)
            if first is not None:
                return await self._replay(first, workflow, context, wait=wait)
        try:
            await self._admission.enter(workflow.priority)
            # The caller's tenant (schedules and events have none: their own, "").
            run = self._new_run(workflow, context, priority, run_id, TENANT.get())
            await self._journal_started(run)
        except BaseException:
            if claim is not None:
                self.keys.failed(claim)
            raise
        if claim is not None:
            self.keys.started(claim)
        self.runner.start_run(run)
        if wait:
            await run.done.wait()
        return run.snapshot()

    async def _replay(
        self,
        run_id: str,
        workflow: WorkflowDefinition,
        context: Mapping[str, Any] | None,
        *,
        wait: bool,
    ) -> Run:
        """The run a key started first: waited for with ``wait``; as it was accepted when
        this process no longer knows it (its first answer said no more)."""
        run = self.runs.get(run_id)
        if run is not None:
            if wait:
                await run.done.wait()
            return run.snapshot()
        try:
            return await self.fetch_run(run_id)
        except UnknownWorkflow:
            return _accepted(run_id, workflow, context)

    async def start_event(
        self,
        workflow: WorkflowDefinition,
        payload: Mapping[str, Any] | None,
        *,
        key: str | None = None,
    ) -> str:
        claim = event_key(key, workflow, payload)
        events = self._events
        assert events is not None
        run_id = uuid4().hex
        if claim is not None:
            first = await self.keys.claim(claim, run_id)
            if first is not None:
                return first
        try:
            await self._admission.enter(workflow.priority)
            run = self._new_run(workflow, payload, None, run_id)
            await self._journal_started(run)
        except BaseException:
            if claim is not None:
                self.keys.failed(claim)
            raise
        try:
            with anyio.fail_after(self.settings.overload_timeout):
                await events.send(run)
        except TimeoutError:
            self.runs.discard(run.id)
            self._admission.leave()
            if claim is not None:
                self.keys.failed(claim)
            if self.journal is not None:
                self.journal.finished(run.id, "cancelled", "event queue full")
            raise Overloaded(f"event queue full ({self.settings.event_queue_size})") from None
        if claim is not None:
            self.keys.started(claim)
        return run.id

    async def purge_run_keys(self, before: float) -> int:
        return await self.keys.purge(before)

    async def start_scheduled(self, workflow: WorkflowDefinition, due: float) -> None:
        if not self._admission.scheduler.try_acquire((self._admission.pending,)):
            return  # queue full: skip this tick rather than pile up
        run = self._new_run(workflow, {"scheduled_at": time.time()}, None)
        try:
            await self._journal_started(run)
        except Exception:
            return  # the journal refused this tick's run: the next tick tries again
        self.runner.start_run(run)

    # -- looking up and acting on runs -----------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise UnknownWorkflow(f"unknown run {run_id!r}")
        return run.snapshot()

    async def fetch_run(self, run_id: str) -> Run:
        """A run from memory, else (evicted from the newest ``run_history``) as the journal
        keeps it: a summary of a finished run, with the checkpoints it still has."""
        run = self.runs.get(run_id)
        if run is not None:
            return run.snapshot()
        saved = await self.journal.load_run(run_id) if self.journal is not None else None
        workflow = self.workflows.get(saved.workflow) if saved is not None else None
        if saved is None or workflow is None:
            raise UnknownWorkflow(f"unknown run {run_id!r}")
        if saved.status == "running":  # accepted, not (yet) taken up in this process
            pending = restore(saved, workflow)
            pending.status = "running"
            return pending.snapshot()
        return finished_summary(saved, workflow).snapshot()

    def recent_runs(self, limit: int) -> list[Run]:
        newest = heapq.nlargest(max(0, limit), self.runs, key=lambda run: run.created)
        return [run.snapshot() for run in newest]

    async def fetch_recent_runs(self, limit: int) -> list[Run]:
        return self.recent_runs(limit)

    async def cancel(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise UnknownWorkflow(f"unknown run {run_id!r}")
        self.runner.cancel_run(run, "cancelled by request")
        await anyio.lowlevel.checkpoint()
        return run.snapshot()

    def dead_letters(self) -> list[DeadLetter]:
        return sorted(self.runner.dead.values(), key=lambda letter: letter.time, reverse=True)

    async def fetch_dead_letters(self) -> list[DeadLetter]:
        return self.dead_letters()

    async def _failed_run(self, letter: DeadLetter) -> RunState:
        """The finished run of a dead letter, from memory or else from the journal."""
        run = self.runs.get(letter.run_id)
        if run is None and self.journal is not None:
            saved = await self.journal.load_run(letter.run_id)
            workflow = self.workflows.get(saved.workflow) if saved is not None else None
            if saved is not None and workflow is not None:
                run = restore(saved, workflow)
                run.status = "failed"
                run.done.set()
                self.runs.add(run)
        if run is None:
            raise UnknownWorkflow(
                f"the run {letter.run_id!r} of dead letter {letter.id!r} is no longer known"
            )
        if not run.done.is_set():
            raise Wf78Error(
                f"run {run.id!r} is still running: retry dead letter {letter.id!r} once it "
                "has finished"
            )
        return run

    async def retry_dead_letter(self, letter_id: str) -> Run:
        letter = self.runner.dead.get(letter_id)
        if letter is None:
            raise UnknownWorkflow(f"unknown dead letter {letter_id!r}")
        run = await self._failed_run(letter)
        slot = run.tasks.get(letter.task)
        if slot is None:
            raise UnknownWorkflow(f"run {run.id!r} has no task {letter.task!r}")
        await self._admission.enter(run.priority)
        run.reopen(slot)
        try:
            await self._journal_started(run)
            if self.journal is not None:
                await self.journal.remove_dead_letter(letter_id)
        except BaseException:
            self.runs.add(run)  # _journal_started discarded it: keep it known
            raise
        self.runner.dead.pop(letter_id, None)
        self.runner.start_run(run, resumed=True)
        return run.snapshot()

    # -- stats --------------------------------------------------------------------------------

    def run_stats(self) -> RunStats:
        queued_by_workflow: dict[str, int] = {}
        runs = list(self.runs)
        active = 0
        for run in runs:
            if not run.done.is_set():
                active += 1
                count = sum(1 for s in run.tasks.values() if s.state == "queued")
                queued_by_workflow[run.workflow.id] = (
                    queued_by_workflow.get(run.workflow.id, 0) + count
                )
        letters = self.dead_letters()
        return RunStats(
            queued_by_workflow=queued_by_workflow,
            running_by_workflow={name: limit.in_use for name, limit in self.runner.limits.items()},
            runs_active=active,
            runs_finished=len(runs) - active,
            dead_letters=letters[:100],
            dead_letter_count=len(letters),
            journal=self.settings.journal if self.journal is not None else "off",
        )


def _accepted(run_id: str, workflow: WorkflowDefinition, context: Mapping[str, Any] | None) -> Run:
    """A run as its acceptance answered it: running, every task pending."""
    now = time.time()
    return Run(
        id=run_id,
        workflow=workflow.id,
        status="running",
        tasks={task.id: TaskRun(id=task.id, state="pending") for task in workflow.tasks},
        context=dict(context or {}),
        created=now,
        started=now,
    )
