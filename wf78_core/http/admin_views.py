"""The dashboard's read routes beside the admin API: the history of the last 15 minutes
(``GET {prefix}/history``), runs filtered and paginated (``GET {prefix}/runs``), one run
with its DAG (``GET {prefix}/runs/{id}/graph``), and the workflows with their triggers and
next fire times (``GET {prefix}/workflows``).

Each answers a bad query with 400 naming the parameter, an unknown run with 404; the admin
app checked the caller's role before any of them runs (a non-admin learns nothing of which
runs exist).
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from typing import Any, get_args

from croniter import croniter

from wf78_core.core.runs import Run, RunStatus
from wf78_core.definitions import WorkflowDefinition
from wf78_core.engine import Engine
from wf78_core.errors import UnknownWorkflow
from wf78_core.http.admin_answers import ENCODER, error, send_json, shown
from wf78_core.http.asgi import Scope, Send, query_params

__all__ = [
    "DEFAULT_RUNS_LIMIT",
    "RESULT_CHARS",
    "next_fire",
    "send_history",
    "send_run_graph",
    "send_runs",
    "send_workflows",
]

DEFAULT_RUNS_LIMIT = 20
#: A task's result or params in the run view: their JSON, cut past this many characters.
RESULT_CHARS = 2000
_DIGITS = re.compile(r"[0-9]{1,9}")
_NUMBER = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
_STATUSES = frozenset(get_args(RunStatus))


class BadQuery(ValueError):
    """A query parameter that is not what the route takes: 400 naming it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _query(scope: Scope) -> dict[str, str]:
    return {name: values[-1] for name, values in query_params(scope).items()}


def _integer(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name, str(default))
    # ASCII digits only: str.isdigit() accepts '²', and int() refuses over 4300 digits.
    value = int(raw) if _DIGITS.fullmatch(raw) else low - 1
    if not low <= value <= high:
        raise BadQuery(name, f"{name} must be an integer from {low} to {high}, got {shown(raw)}")
    return value


def _seconds(query: dict[str, str], name: str) -> float | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if not _NUMBER.fullmatch(raw):
        raise BadQuery(name, f"{name} must be a time in seconds since the epoch, got {shown(raw)}")
    return float(raw)


async def _refuse(send: Send, problem: BadQuery) -> None:
    await error(send, 400, str(problem), field=problem.field)


# -- history -------------------------------------------------------------------------------


async def send_history(engine: Engine, scope: Scope, send: Send) -> None:
    """``GET {prefix}/history?since=<t>``: the samples after ``t`` (all 15 minutes unset)."""
    try:
        since = _seconds(_query(scope), "since") or 0.0
    except BadQuery as problem:
        await _refuse(send, problem)
        return
    await send_json(send, 200, await engine.history.fetch(since))


# -- runs ------------------------------------------------------------------------------------


class _RunFilter:
    """``workflow``, ``status``, ``since`` and ``until`` (on the run's creation time)."""

    def __init__(self, engine: Engine, query: dict[str, str]) -> None:
        self.workflow = query.get("workflow") or None
        if self.workflow is not None and self.workflow not in engine.workflows:
            known = ", ".join(sorted(engine.workflows))
            raise BadQuery("workflow", f"unknown workflow {shown(self.workflow)} (known: {known})")
        self.status = query.get("status") or None
        if self.status is not None and self.status not in _STATUSES:
            allowed = ", ".join(sorted(_STATUSES))
            raise BadQuery("status", f"status must be one of {allowed}, got {shown(self.status)}")
        self.since = _seconds(query, "since")
        self.until = _seconds(query, "until")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.workflow, self.status, self.since, self.until))

    def __call__(self, run: Run) -> bool:
        return (
            (self.workflow is None or run.workflow == self.workflow)
            and (self.status is None or run.status == self.status)
            and (self.since is None or run.created >= self.since)
            and (self.until is None or run.created <= self.until)
        )


async def send_runs(engine: Engine, scope: Scope, send: Send) -> None:
    """``GET {prefix}/runs``: the newest runs first, ``limit`` from ``offset``, filtered by
    ``workflow``, ``status``, ``since`` and ``until``; ``next_offset`` when there are more.
    Runs are those the backend keeps (``[engine] run_history``)."""
    most = engine.settings.run_history
    query = _query(scope)
    try:
        limit = _integer(query, "limit", DEFAULT_RUNS_LIMIT, 1, most)
        offset = _integer(query, "offset", 0, 0, most)
        wanted = _RunFilter(engine, query)
    except BadQuery as problem:
        await _refuse(send, problem)
        return
    if wanted.active:
        runs = [run for run in await engine.fetch_recent_runs(most) if wanted(run)]
    else:  # one more than the page: is there a next one?
        runs = await engine.fetch_recent_runs(min(most, offset + limit + 1))
    page = runs[offset : offset + limit]
    more = len(runs) > offset + limit
    payload: dict[str, Any] = {
        "runs": page,
        "offset": offset,
        "limit": limit,
        "next_offset": offset + limit if more else None,
    }
    if wanted.active:
        payload["total"] = len(runs)
    await send_json(send, 200, payload)


def _cut(value: Any) -> tuple[str | None, bool]:
    """``value`` as JSON text, cut past :data:`RESULT_CHARS`; and whether it was cut."""
    if value is None:
        return None, False
    text = ENCODER.encode(value).decode()
    if len(text) <= RESULT_CHARS:
        return text, False
    return text[:RESULT_CHARS] + "…", True


def _graph_tasks(run: Run, workflow: WorkflowDefinition | None) -> list[dict[str, Any]]:
    defined = {task.id: task for task in workflow.tasks} if workflow is not None else {}
    tasks = []
    for task_id, task in run.tasks.items():
        definition = defined.get(task_id)
        result, cut = _cut(task.result)
        params, _ = _cut(definition.params if definition is not None else None)
        tasks.append(
            {
                "id": task_id,
                "name": definition.name if definition is not None else "",
                "action": definition.action if definition is not None else None,
                "depends_on": list(definition.depends_on) if definition is not None else [],
                "params": params,
                "state": task.state,
                "attempts": task.attempts,
                "result": result,
                "result_truncated": cut,
                "error": task.error,
                "data_source": task.data_source,
                "started": task.started,
                "finished": task.finished,
            }
        )
    return tasks


async def send_run_graph(engine: Engine, send: Send, run_id: str) -> None:
    """``GET {prefix}/runs/{id}/graph``: the run and its tasks as a DAG (``depends_on``
    from the workflow's definition), with params and results as (cut) JSON text."""
    try:
        run = await engine.fetch_run(run_id)
    except UnknownWorkflow as problem:
        await error(send, 404, str(problem), field="run_id")
        return
    context, _ = _cut(run.context)
    summary = {
        "id": run.id,
        "workflow": run.workflow,
        "status": run.status,
        "created": run.created,
        "started": run.started,
        "finished": run.finished,
        "error": run.error,
        "context": context,
    }
    tasks = _graph_tasks(run, engine.workflows.get(run.workflow))
    letters: dict[str, str] = {}
    if any(task.state == "failed" for task in run.tasks.values()):  # its retry, by task
        letters = {
            letter.task: letter.id
            for letter in await engine.fetch_dead_letters()
            if letter.run_id == run.id
        }
    for task in tasks:
        task["dead_letter"] = letters.get(task["id"])
    await send_json(send, 200, {"run": summary, "tasks": tasks})


# -- workflows -------------------------------------------------------------------------------


def next_fire(
    workflow: WorkflowDefinition, now: float, *, aligned: bool, since: float
) -> float | None:
    """When ``workflow``'s schedule fires next (seconds since the epoch; None without one).
    A cron string is exact; an interval is on its multiples with ``aligned`` ticks, else
    counted from ``since`` (the engine's start: the in-process loop drifts by the time
    each start takes, so this is approximate)."""
    schedule = workflow.schedule
    if workflow.trigger != "schedule" or schedule is None:
        return None
    if isinstance(schedule, str):
        start = datetime.fromtimestamp(now, UTC)
        return float(croniter(schedule, start).get_next(datetime).timestamp())
    period = float(schedule)
    if aligned or since <= 0:
        return (now // period + 1) * period
    return since + math.floor((now - since) / period + 1) * period


async def send_workflows(engine: Engine, send: Send) -> None:
    """``GET {prefix}/workflows``: each workflow's trigger, schedule and next fire time."""
    now = time.time()
    stats = engine.stats()
    started = now - stats.uptime if stats.uptime else 0.0
    aligned = engine.backend.aligned_ticks
    running = {w.id: w for w in stats.workflows}
    workflows = []
    for workflow in engine.workflows.values():
        live = running.get(workflow.id)
        workflows.append(
            {
                "id": workflow.id,
                "name": workflow.name,
                "priority": workflow.priority,
                "max_concurrent": workflow.max_concurrent,
                "trigger": workflow.trigger,
                "event": workflow.event,
                "schedule": workflow.schedule,
                "next_fire": next_fire(workflow, now, aligned=aligned, since=started),
                "next_fire_exact": isinstance(workflow.schedule, str) or aligned,
                "tasks": [task.id for task in workflow.tasks],
                "running": live.running if live is not None else 0,
                "queued": live.queued if live is not None else 0,
            }
        )
    await send_json(send, 200, {"workflows": workflows, "now": now})
