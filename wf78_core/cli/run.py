"""``wf78 run``: run a workflow to completion and print its tasks and results."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

import anyio
import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from wf78_core.cli.common import UsageError, config_path, configure_logging, plugin_modules
from wf78_core.core.runs import Run
from wf78_core.definitions import Result
from wf78_core.engine import Engine
from wf78_core.events import TaskEvent
from wf78_core.plugin.spec import hookimpl

__all__ = ["PROGRESS_THRESHOLD", "RunTracker", "run_command"]

# A run with at least this many tasks gets a progress bar.
PROGRESS_THRESHOLD = 20
_FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled", "skipped"})
_STATE_STYLES = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "skipped": "yellow",
}


class RunTracker:
    """A ``wf78_task_event`` observer that counts the finished tasks of one run."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.progress = progress
        self.bar: TaskID | None = None
        self.run_id: str | None = None
        # Counted per run: events may arrive before engine.run() hands back the id.
        self.finished: Counter[str] = Counter()
        self.done = anyio.Event()

    def follow(self, run_id: str) -> None:
        self.run_id = run_id
        if self.progress is not None:
            self.bar = self.progress.add_task(
                "tasks", total=self.total, completed=self.finished[run_id]
            )
        self._check_done()

    @hookimpl
    def wf78_task_event(self, event: TaskEvent) -> None:
        if event.state not in _FINISHED_STATES or event.run_id is None:
            return
        self.finished[event.run_id] += 1
        if event.run_id == self.run_id:
            if self.progress is not None and self.bar is not None:
                self.progress.advance(self.bar)
            self._check_done()

    def _check_done(self) -> None:
        if self.run_id is not None and self.finished[self.run_id] >= self.total:
            self.done.set()


def _parse_context(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        context = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--context is not valid JSON: {error}") from None
    if not isinstance(context, dict):
        raise UsageError(f"--context must be a JSON object, got {type(context).__name__}")
    return context


def run_command(args: argparse.Namespace) -> int:
    configure_logging(args)
    context = _parse_context(args.context)
    config = config_path(args)
    # The tracker must exist before the engine: observers are registered at construction.
    progress: Progress | None = None
    tracker = RunTracker(0, None)
    engine = Engine(config, plugins=[*plugin_modules(args), tracker])
    workflow = engine.workflows.get(args.workflow)
    if workflow is None:
        known = ", ".join(sorted(engine.workflows)) or "none"
        raise UsageError(f"unknown workflow {args.workflow!r} (known: {known})")
    tracker.total = len(workflow.tasks)
    if tracker.total >= PROGRESS_THRESHOLD:
        progress = Progress(
            TextColumn(f"[bold]{workflow.id}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tasks"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        tracker.progress = progress
        with progress:
            run = anyio.run(_run_workflow, engine, tracker, args.workflow, context, args.priority)
    else:
        run = anyio.run(_run_workflow, engine, tracker, args.workflow, context, args.priority)
    if args.json:
        sys.stdout.write(_run_json(run) + "\n")
    else:
        _print_run(run)
    return 0 if run.status == "succeeded" else 1


async def _run_workflow(
    engine: Engine,
    tracker: RunTracker,
    workflow_id: str,
    context: dict[str, Any],
    priority: int | None,
) -> Run:
    async with engine:
        started = await engine.run(workflow_id, context, wait=False, priority=priority)
        tracker.follow(started.id)
        while True:
            # The tracker wakes us at once; the poll covers runs ended some other way.
            with anyio.move_on_after(0.25):
                await tracker.done.wait()
            run = await engine.fetch_run(started.id)
            if run.status not in ("pending", "running"):
                return run


def _to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value, enc_hook=repr)


def _run_json(run: Run) -> str:
    data = _to_builtins(run)
    data["elapsed"] = _elapsed(run)
    data["results"] = {task_id: task["result"] for task_id, task in data["tasks"].items()}
    return json.dumps(data, indent=2, default=str)


def _elapsed(run: Run) -> float | None:
    if run.started is None or run.finished is None:
        return None
    return round(run.finished - run.started, 6)


def _short(value: Any, width: int = 60) -> str:
    if isinstance(value, Result):
        value = value.value
    if value is None:
        return ""
    text = json.dumps(_to_builtins(value), default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_run(run: Run) -> None:
    console = Console()
    table = Table(title=Text(f"run {run.id} of {run.workflow}"), title_justify="left")
    table.add_column("task", overflow="fold")
    table.add_column("state")
    table.add_column("attempts", justify="right")
    table.add_column("data source")
    table.add_column("error")
    table.add_column("result")
    for task in run.tasks.values():
        table.add_row(
            _cell(task.id),
            Text(task.state, style=_STATE_STYLES.get(task.state, "")),
            _cell(task.attempts),
            _cell(task.data_source),
            _cell(task.error),
            _cell(_short(task.result)),
        )
    console.print(table)
    elapsed = _elapsed(run)
    timing = "" if elapsed is None else f" in {elapsed:.3f}s"
    status = Text(f"status: {run.status}{timing}", style=_STATE_STYLES.get(run.status, ""))
    if run.error:
        status.append(f" ({run.error})")
    console.print(status)


def _cell(value: Any) -> Text:
    """A table cell shown verbatim: wf78 values may contain rich markup brackets."""
    return Text("" if value is None else str(value))
