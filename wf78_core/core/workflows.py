"""Workflow runs in this process: a DAG's tasks queued as their dependencies finish,
each run by its action under the engine's limits, with retry, dead letters and cancel."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any
from uuid import uuid4

import anyio

from wf78_core.core.actions import TaskContext, worth_retrying
from wf78_core.core.admission import Admission, Counters
from wf78_core.core.bus import EventBus
from wf78_core.core.concurrency_keys import ConcurrencyKeys
from wf78_core.core.dispatch import Dispatcher
from wf78_core.core.fairness import TENANT
from wf78_core.core.lifecycle import Lifecycle
from wf78_core.core.records import DeadLetter, Journal
from wf78_core.core.recovery import checkpoint_of
from wf78_core.core.runs import RunState, RunStore, TaskSlot
from wf78_core.core.scheduling import Limit
from wf78_core.core.taskspans import run_task
from wf78_core.definitions import Result, WorkflowDefinition
from wf78_core.events import TaskEvent, TaskState

__all__ = ["WorkflowRunner"]


class WorkflowRunner:
    """Runs the tasks of in-process runs. ``limits`` holds each workflow's
    ``max_concurrent``; the engine-wide ones come from :class:`Admission`."""

    def __init__(
        self,
        workflows: Iterable[WorkflowDefinition],
        *,
        engine: Any,
        dispatcher: Dispatcher,
        actions: dict[str, Callable[..., Any]],
        admission: Admission,
        runs: RunStore,
        journal: Journal | None,
        bus: EventBus,
        life: Lifecycle,
        counters: Counters,
        default_timeout: float | None,
    ) -> None:
        workflows = tuple(workflows)
        self.limits = {w.id: Limit(f"workflow:{w.id}", max(1, w.max_concurrent)) for w in workflows}
        self.dead: dict[str, DeadLetter] = {}
        #: the running runs per value of each workflow's ``concurrency_key``
        self.keys = ConcurrencyKeys(workflows, admission.scheduler)
        self._engine = engine
        self._dispatcher = dispatcher
        self._actions = actions
        self._admission = admission
        self._scheduler = admission.scheduler
        self._running = admission.running
        self._runs = runs
        self._journal = journal
        self._bus = bus
        self._life = life
        self._counters = counters
        self._default_timeout = default_timeout

    def start_run(self, run: RunState, *, resumed: bool = False) -> None:
        if run.done.is_set():  # cancelled while it waited in the event queue
            return
        refused = self.keys.admit(
            run.id, run.workflow, run.context, run.priority, lambda: self._begin_run(run, resumed)
        )
        if refused is not None:
            self._refuse_run(run, refused)

    def _refuse_run(self, run: RunState, why: str) -> None:
        """A run that cannot start (no value for its concurrency key): failed, tasks skipped."""
        run.status = "failed"
        run.error = why
        for slot in run.tasks.values():
            if not slot.done:
                slot.state = "skipped"
                slot.error = why
                slot.finished = time.time()
                run.left -= 1
                self._emit_event(run, slot, "skipped", error=why)
        self._finish_run(run)

    def _begin_run(self, run: RunState, resumed: bool) -> None:
        """Start a run's ready tasks (once its concurrency key, if any, has room)."""
        run.status = "running"
        run.started = run.started or time.time()
        if run.trace is not None:
            run.trace.start(run.id, run.workflow.id)
        if not resumed:
            for slot in run.tasks.values():
                if slot.remaining == 0:
                    self._queue_task(run, slot)
            return
        # Checkpointed tasks keep their outcome; what they left pending continues.
        for slot in run.tasks.values():
            if slot.state == "failed":
                self._skip_dependants(run, slot)
        for slot in run.tasks.values():
            if slot.state == "pending" and slot.remaining == 0:
                self._queue_task(run, slot)
        if run.left == 0:
            self._finish_run(run)

    def _queue_task(self, run: RunState, slot: TaskSlot) -> None:
        work = self._life.group()
        assert work is not None
        slot.state = "queued"
        limits = (self._running, self.limits[run.workflow.id])
        self._emit_event(run, slot, "queued")

        def granted() -> None:
            slot.waiter = None
            work.start_soon(self._run_task, run, slot, limits)

        tenant = TENANT.set(run.tenant)  # it waits in its run's tenant's turn
        try:
            slot.waiter = self._scheduler.enqueue(run.priority, limits, granted)
        finally:
            TENANT.reset(tenant)

    async def _run_task(self, run: RunState, slot: TaskSlot, limits: tuple[Limit, ...]) -> None:
        if slot.done:  # cancelled between the grant and this task starting
            self._scheduler.release(limits)
            return
        task = slot.definition
        action = self._actions[task.action]
        owns_retry = getattr(action, "wf78_owns_retry", False)
        slot.state = "running"
        slot.attempts += 1
        slot.started = slot.started or time.time()
        self._emit_event(run, slot, "running")
        ctx = TaskContext(
            engine=self._engine,
            dispatcher=self._dispatcher,
            task=task,
            run_id=run.id,
            priority=run.priority,
            context=run.context,
            results={dep: run.tasks[dep].result for dep in task.depends_on},
        )
        error: Exception | None = None
        value: Any = None
        with anyio.CancelScope() as scope:
            slot.scope = scope
            try:
                timeout = None if owns_retry else (task.timeout or self._default_timeout)
                value, error = await run_task(
                    action,
                    ctx,
                    timeout,
                    workflow=run.workflow.id,
                    attempt=slot.attempts,
                    parent=run.trace,
                    tenant=run.tenant,
                )
            except BaseException:
                # Shutdown cancels past our own scope: finish the task (and run) anyway so
                # nobody waiting on the run hangs; a no-op when our scope catches it.
                self._finish_task(run, slot, "cancelled", error=run.error or "cancelled")
                raise
            finally:
                slot.scope = None
                self._scheduler.release(limits)
        if scope.cancelled_caught:
            self._finish_task(run, slot, "cancelled", error=run.error or "cancelled")
            return
        if error is None:
            slot.result = value
            if isinstance(value, Result):
                slot.data_source = value.data_source
            self._finish_task(run, slot, "succeeded")
            if self._journal is not None:
                await self._journal.room()
            return
        if worth_retrying(error, owns_retry, slot.attempts, task.retry):
            self._counters.retries += 1
            slot.state = "retrying"
            self._emit_event(run, slot, "retrying", error=str(error))
            with anyio.CancelScope() as backoff:
                slot.scope = backoff
                await anyio.sleep(self._dispatcher.backoff(slot.attempts - 1))
            slot.scope = None
            if slot.state == "retrying":
                self._queue_task(run, slot)
            return
        message = f"{type(error).__name__}: {error}"
        await self._dead_letter(run, slot, message)
        self._finish_task(run, slot, "failed", error=message)
        if self._journal is not None:
            await self._journal.room()

    async def _dead_letter(self, run: RunState, slot: TaskSlot, error: str) -> None:
        """Keep a task that failed for good, to be looked at and run again."""
        task = slot.definition
        letter = DeadLetter(
            id=uuid4().hex,
            run_id=run.id,
            workflow=run.workflow.id,
            task=task.id,
            action=task.action,
            error=error,
            attempts=slot.attempts,
            time=time.time(),
        )
        if self._journal is not None:
            try:
                with anyio.CancelScope(shield=True):
                    await self._journal.add_dead_letter(letter)
            except Exception:
                pass  # not durable, but still listed: the failure itself is recorded below
        self.dead[letter.id] = letter

    def _finish_task(
        self, run: RunState, slot: TaskSlot, state: TaskState, *, error: str | None = None
    ) -> None:
        if slot.done:
            return
        slot.state = state
        slot.error = error
        slot.finished = time.time()
        run.left -= 1
        self._emit_event(run, slot, state, error=error)
        if self._journal is not None and state != "cancelled":
            self._journal.checkpoint(run.id, checkpoint_of(slot))
        if state == "succeeded":
            for dependant in slot.dependants:
                dependant.remaining -= 1
                if dependant.remaining == 0 and dependant.state == "pending":
                    self._queue_task(run, dependant)
        else:
            self._skip_dependants(run, slot)
        if run.left == 0:
            self._finish_run(run)

    def _skip_dependants(self, run: RunState, slot: TaskSlot) -> None:
        stack = list(slot.dependants)
        while stack:
            dependant = stack.pop()
            if dependant.done:
                continue
            dependant.state = "skipped"
            dependant.error = f"dependency {slot.definition.id!r} did not succeed"
            dependant.finished = time.time()
            run.left -= 1
            self._emit_event(run, dependant, "skipped", error=dependant.error)
            if self._journal is not None:
                self._journal.checkpoint(run.id, checkpoint_of(dependant))
            stack.extend(dependant.dependants)

    def _finish_run(self, run: RunState) -> None:
        if run.status == "running":
            failed = any(s.state == "failed" for s in run.tasks.values())
            run.status = "failed" if failed else "succeeded"
            if failed:
                run.error = next(
                    f"task {s.definition.id!r}: {s.error}"
                    for s in run.tasks.values()
                    if s.state == "failed"
                )
        run.finished = time.time()
        if run.trace is not None:
            run.trace.finish(run.status, run.error)
        run.done.set()
        self._admission.leave()
        self.keys.leave(run.id)  # may start the next run waiting for this run's key
        self._runs.finish(run)
        if self._journal is not None and not (self._life.closing and run.status == "cancelled"):
            # A run cancelled by shutdown stays unfinished in the journal: the next start
            # resumes it (its finished tasks are not run again).
            self._journal.finished(run.id, run.status, run.error)
        self._life.work_done()

    def cancel_run(self, run: RunState, why: str) -> None:
        if run.done.is_set():
            return
        if run.status == "pending":
            # Queued in the event stream: it will start and find every task cancelled.
            run.status = "running"
        run.status = "cancelled"
        run.error = why
        for slot in run.tasks.values():
            if slot.done:
                continue
            if slot.state == "running" and slot.scope is not None:
                slot.scope.cancel()  # _run_task finishes it and frees its slots
                continue
            if slot.waiter is not None:
                self._scheduler.withdraw(slot.waiter)
                slot.waiter = None
            if slot.scope is not None:  # sleeping before a retry
                slot.scope.cancel()
            slot.state = "cancelled"
            slot.error = why
            slot.finished = time.time()
            run.left -= 1
            self._emit_event(run, slot, "cancelled", error=why)
        if run.left == 0:
            self._finish_run(run)

    def _emit_event(
        self, run: RunState, slot: TaskSlot, state: TaskState, *, error: str | None = None
    ) -> None:
        if self._bus:
            self._bus.notify(
                TaskEvent(
                    state=state,
                    workflow=run.workflow.id,
                    task=slot.definition.id,
                    run_id=run.id,
                    data_source=slot.data_source,
                    attempt=slot.attempts,
                    error=error,
                    time=time.time(),
                )
            )
