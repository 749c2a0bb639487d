"""The ``wf78`` command line: validate a configuration, run a workflow, run the demo load,
maintain tables and shards."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
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

from .config import DEFAULT_CONFIG_TOML
from .definitions import Kind, Operation, Result
from .engine import Engine
from .errors import ConfigError, Wf78Error
from .events import TaskEvent
from .hookspecs import hookimpl
from .runs import Run
from .sharding import MaintenanceReport, maintain
from .stats import EngineStats

__all__ = ["main"]

# A run with at least this many tasks gets a progress bar.
PROGRESS_THRESHOLD = 20
# Demo operations in flight at once.
DEMO_CONCURRENCY = 200
_FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled", "skipped"})
_STATE_STYLES = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "skipped": "yellow",
}


class UsageError(Wf78Error):
    """The command line itself is wrong (bad JSON, unknown workflow): exit status 2."""

    exit_code = 2


# -- entry point ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``wf78`` command with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, --version and argparse usage errors
        return exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except Wf78Error as error:
        print(f"wf78: error: {_describe(error)}", file=sys.stderr)
        return getattr(error, "exit_code", 1)
    except KeyboardInterrupt:
        print("wf78: interrupted", file=sys.stderr)
        return 130


def _describe(error: Wf78Error) -> str:
    if isinstance(error, ConfigError) and len(error.problems) > 1:
        lines = "\n".join(f"  {problem}" for problem in error.problems)
        return f"invalid configuration ({len(error.problems)} problems):\n{lines}"
    return str(error)


def _version() -> str:
    try:
        return metadata.version("wf78")
    except metadata.PackageNotFoundError:
        return "unknown"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wf78",
        description="wf78: a workflow engine for data operations.",
        epilog="Configuration: --config FILE, else $WF78_CONFIG, else the embedded default.",
    )
    parser.add_argument("--version", action="version", version=f"wf78 {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check a configuration file and list every problem",
        description="Check a configuration file (TOML or JSON) and list every problem "
        "with its path. Exit status 1 when there are problems.",
    )
    validate.add_argument("file", metavar="FILE", help="the configuration file")
    validate.set_defaults(handler=_validate)

    run = commands.add_parser(
        "run",
        help="run a workflow to completion and print its tasks and results",
        description="Run a workflow to completion and print its status, its tasks and "
        "their results. Exit status 0 when the run succeeded, 1 otherwise.",
    )
    run.add_argument("workflow", metavar="WORKFLOW", help="the workflow id")
    run.add_argument(
        "--context",
        metavar="JSON",
        default=None,
        help="the run context as a JSON object, e.g. '{\"operation\": {...}}'",
    )
    _add_config_option(run)
    run.add_argument(
        "--priority",
        metavar="N",
        type=int,
        default=None,
        help="run at this priority instead of the workflow's (smaller = more urgent)",
    )
    run.add_argument("--json", action="store_true", help="print the run as JSON")
    run.set_defaults(handler=_run)

    demo = commands.add_parser(
        "demo",
        help="drive a mixed load through the embedded default and print engine stats",
        description="Run the embedded default's two workflows under a mixed load of "
        "operations, runs and events on a SQLite file, then print the engine's stats.",
    )
    demo.add_argument(
        "--operations",
        metavar="N",
        type=int,
        default=3000,
        help="how many operations to perform (default: 3000)",
    )
    demo.add_argument(
        "--db",
        metavar="PATH",
        default="./wf78-demo.db",
        help="the SQLite file to use (default: ./wf78-demo.db)",
    )
    demo.add_argument(
        "--seed", action="store_true", help="insert sample rows into `items` before the load"
    )
    demo.set_defaults(handler=_demo)

    maintain_command = commands.add_parser(
        "maintain",
        help="create missing tables and upcoming shards, drop expired shards, now",
        description="Run table maintenance now: create the declared tables the SQL "
        "sources lack, create today's and the next shards of sharded tables and drop "
        "shards past their retention (what the wf78.maintenance workflow does hourly).",
    )
    _add_config_option(maintain_command)
    maintain_command.add_argument("--json", action="store_true", help="print what changed as JSON")
    maintain_command.set_defaults(handler=_maintain)
    return parser


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="the configuration file (default: $WF78_CONFIG, else the embedded default)",
    )


def _config_path(args: argparse.Namespace) -> Path | None:
    chosen = args.config or os.environ.get("WF78_CONFIG")
    return Path(chosen) if chosen else None


def _cell(value: Any) -> Text:
    """A table cell shown verbatim: wf78 values may contain rich markup brackets."""
    return Text("" if value is None else str(value))


# -- validate --------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    path = Path(args.file)
    problems = anyio.run(Engine.check, path)
    if not problems:
        print(f"{path}: OK")
        return 0
    for problem in problems:
        print(problem)
    count = len(problems)
    print(f"{path}: {count} problem{'' if count == 1 else 's'}")
    return 1


# -- run -------------------------------------------------------------------------------------


class _RunTracker:
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


def _run(args: argparse.Namespace) -> int:
    context = _parse_context(args.context)
    config = _config_path(args)
    # The tracker must exist before the engine: observers are registered at construction.
    progress: Progress | None = None
    tracker = _RunTracker(0, None)
    engine = Engine(config, plugins=[tracker])
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
    tracker: _RunTracker,
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
            run = engine.get_run(started.id)
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


# -- maintain --------------------------------------------------------------------------------


def _maintain(args: argparse.Namespace) -> int:
    engine = Engine(_config_path(args))
    report = anyio.run(_maintain_now, engine)
    if args.json:
        sys.stdout.write(json.dumps(msgspec.to_builtins(report), indent=2) + "\n")
        return 0
    for what, changes in (
        ("created table", report.tables_created),
        ("created shard", report.created),
        ("dropped shard", report.dropped),
    ):
        for change in changes:
            print(f"{what} {change.table} on {change.source}")
    print(
        f"wf78 maintain: {len(report.tables_created)} tables created, "
        f"{len(report.created)} shards created, {len(report.dropped)} shards dropped"
    )
    return 0


async def _maintain_now(engine: Engine) -> MaintenanceReport:
    async with engine:
        report = await maintain(engine, create_tables=True)
        # Starting the engine already maintained the shards: report that work too.
        startup = engine.startup_maintenance
        if startup is not None:
            report.created[:0] = startup.created
            report.dropped[:0] = startup.dropped
        return report


# -- demo ------------------------------------------------------------------------------------


class _DemoTally:
    """A ``wf78_task_event`` observer counting finished tasks by state and finished runs."""

    def __init__(self) -> None:
        self.states: Counter[str] = Counter()
        self.sizes: dict[str, int] = {}  # tasks per workflow id
        self.runs_finished = 0
        self.runs_failed = 0  # finished with a failed or cancelled task
        self.runs_expected: int | None = None
        self.all_done = anyio.Event()
        self._left: dict[str, tuple[int, bool]] = {}  # run id -> (unfinished tasks, failed)

    def expect(self, runs: int) -> None:
        """Set ``all_done`` once ``runs`` runs have finished."""
        self.runs_expected = runs
        self._check()

    @hookimpl
    def wf78_task_event(self, event: TaskEvent) -> None:
        if event.state not in _FINISHED_STATES or event.run_id is None:
            return  # engine.submit reports its operations too, without a run
        self.states[event.state] += 1
        left, failed = self._left.pop(event.run_id, (self.sizes.get(event.workflow, 1), False))
        left -= 1
        failed = failed or event.state in ("failed", "cancelled")
        if left > 0:
            self._left[event.run_id] = (left, failed)
            return
        self.runs_finished += 1
        self.runs_failed += failed
        self._check()

    def _check(self) -> None:
        if self.runs_expected is not None and self.runs_finished >= self.runs_expected:
            self.all_done.set()


class _DemoReport(msgspec.Struct, kw_only=True):
    operations: int
    by_kind: dict[str, int]
    failures: int  # operations that raised
    first_errors: list[str]
    elapsed: float
    stats: EngineStats


_DEMO_KINDS = ("add", "get", "run", "event")
_DEMO_WEIGHTS = (35, 25, 20, 20)
# Selection hints on submitted operations (None: no hint, the first candidate serves).
_ADD_KINDS: tuple[Kind | None, ...] = ("core", "history", None)
_GET_KINDS: tuple[Kind | None, ...] = ("core", "temp", None)


def _demo(args: argparse.Namespace) -> int:
    if args.operations < 0:
        raise UsageError("--operations must be >= 0")
    db = Path(args.db).resolve()
    raw = tomllib.loads(DEFAULT_CONFIG_TOML)
    raw["datasources"]["default"]["url"] = f"sqlite:///{db}"
    tally = _DemoTally()
    engine = Engine(raw, plugins=[tally])
    tally.sizes = {workflow.id: len(workflow.tasks) for workflow in engine.workflows.values()}
    report = anyio.run(_demo_load, engine, tally, args.operations, args.seed)
    _print_stats(report, tally)
    failed = report.failures + tally.runs_failed
    rate = report.operations / report.elapsed if report.elapsed else 0.0
    print(
        f"wf78 demo: {report.operations} operations in {report.elapsed:.2f}s "
        f"({rate:,.0f} ops/s), {failed} failed; database {db}"
    )
    for message in report.first_errors:
        print(f"  error: {message}", file=sys.stderr)
    return 0 if failed == 0 else 1


def _item(rng: random.Random, index: int) -> dict[str, Any]:
    return {
        "name": f"item-{index}",
        "qty": rng.randint(1, 100),
        "price": round(rng.uniform(1, 500), 2),
    }


async def _demo_load(engine: Engine, tally: _DemoTally, operations: int, seed: bool) -> _DemoReport:
    rng = random.Random(78)  # the same mix every time
    plan = rng.choices(_DEMO_KINDS, weights=_DEMO_WEIGHTS, k=operations)
    by_kind = Counter(plan)
    failures = 0
    runs_started = 0
    first_errors: list[str] = []
    work: Iterator[tuple[int, str]] = iter(enumerate(plan))

    async def perform(index: int, kind: str) -> None:
        nonlocal runs_started
        if kind == "add":
            hint = rng.choice(_ADD_KINDS)
            await engine.submit(
                Operation(action="add", table="items", values=_item(rng, index), kind=hint)
            )
        elif kind == "get":
            hint = rng.choice(_GET_KINDS)
            await engine.submit(Operation(action="get", table="items", limit=10, kind=hint))
        elif kind == "run":
            operation: dict[str, Any] = (
                {"action": "add", "table": "items", "values": _item(rng, index)}
                if index % 2
                else {"action": "get", "table": "items", "limit": 10}
            )
            run = await engine.run("high_priority_db_ops", {"operation": operation})
            runs_started += 1
            if run.status != "succeeded" and len(first_errors) < 3:
                first_errors.append(f"run {run.id}: {run.error}")  # the tally counts it
        else:
            level = rng.choice(("debug", "info", "warning", "error"))
            payload = {"values": {"level": level, "message": f"demo {index}"}}
            run_ids = await engine.emit("log", payload)
            runs_started += len(run_ids)  # after the await: `x += await f()` loses updates

    async def worker() -> None:
        nonlocal failures
        for index, kind in work:
            try:
                await perform(index, kind)
            except Wf78Error as error:
                failures += 1
                if len(first_errors) < 3:
                    first_errors.append(f"{kind}: {type(error).__name__}: {error}")

    async with engine:
        if seed:
            rows = [_item(rng, index) for index in range(100)]
            await engine.submit(Operation(action="add_many", table="items", rows=rows))
        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(min(DEMO_CONCURRENCY, operations)):
                group.start_soon(worker)
        # Runs started by events finish in the background: wait for them too.
        tally.expect(runs_started)
        with anyio.move_on_after(60):
            await tally.all_done.wait()
        elapsed = time.perf_counter() - started
        stats = engine.stats()
    return _DemoReport(
        operations=operations,
        by_kind=dict(by_kind),
        failures=failures,
        first_errors=first_errors,
        elapsed=elapsed,
        stats=stats,
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _print_stats(report: _DemoReport, tally: _DemoTally) -> None:
    stats = report.stats
    console = Console()

    sources = Table(title="data sources", title_justify="left")
    for header in ("source", "type", "healthy", "ops", "errors", "p50 ms", "p99 ms"):
        sources.add_column(header, justify="left" if header in ("source", "type") else "right")
    for source in stats.sources:
        sources.add_row(
            _cell(source.name),
            _cell(source.type),
            _cell("yes" if source.healthy else "no"),
            _cell(source.ops),
            _cell(source.errors),
            _cell(_ms(source.latency_p50)),
            _cell(_ms(source.latency_p99)),
        )

    workflows = Table(title="workflows", title_justify="left")
    for header in ("workflow", "priority", "max_concurrent", "running", "queued"):
        workflows.add_column(header, justify="left" if header == "workflow" else "right")
    for workflow in stats.workflows:
        workflows.add_row(
            _cell(workflow.id),
            _cell(workflow.priority),
            _cell(workflow.max_concurrent),
            _cell(workflow.running),
            _cell(workflow.queued),
        )

    agents = Table(title="agents", title_justify="left")
    for header in ("agent", "serves", "status", "load", "completed"):
        agents.add_column(header, justify="left" if header in ("agent", "serves") else "right")
    for agent in stats.agents:
        agents.add_row(
            _cell(agent.id),
            _cell(", ".join(agent.capabilities)),
            _cell(agent.status),
            _cell(f"{agent.load:.2f}"),
            _cell(agent.completed),
        )

    totals = Table(title="totals", title_justify="left")
    totals.add_column("counter")
    totals.add_column("value", justify="right")
    rate = report.operations / report.elapsed if report.elapsed else 0.0
    mix = ", ".join(f"{report.by_kind.get(kind, 0)} {kind}" for kind in _DEMO_KINDS)
    for name, value in (
        ("operations", f"{report.operations} ({mix})"),
        ("submitted", stats.submitted),
        ("completed", stats.completed),
        ("failed", stats.failed),
        ("retries", stats.retries),
        ("fallbacks", stats.fallbacks),
        ("runs finished", f"{tally.runs_finished} ({tally.runs_failed} failed)"),
        ("workflow tasks", ", ".join(f"{n} {s}" for s, n in sorted(tally.states.items()))),
        ("elapsed", f"{report.elapsed:.2f}s"),
        ("throughput", f"{rate:,.0f} ops/s"),
    ):
        totals.add_row(_cell(name), _cell(value))

    for table in (sources, workflows, agents, totals):
        console.print(table)


if __name__ == "__main__":
    sys.exit(main())
