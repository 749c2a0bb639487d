"""The ``wf78`` command line: validate a configuration, run a workflow, serve the demo or
any ASGI app wrapped in the middleware, maintain tables and shards."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import json
import logging
import os
import random
import secrets
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

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

from wf78_core.cli import serve
from wf78_core.core.runs import Run
from wf78_core.data.sharding import MaintenanceReport, maintain
from wf78_core.definitions import Result
from wf78_core.engine import Engine
from wf78_core.errors import ConfigError, Wf78Error
from wf78_core.events import TaskEvent
from wf78_core.plugin.spec import hookimpl

if TYPE_CHECKING:
    # Imported when a server runs: validate, run and maintain do without them.
    import httpx
    import uvicorn

__all__ = ["main"]

# A run with at least this many tasks gets a progress bar.
PROGRESS_THRESHOLD = 20
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
        help="serve the example app on the embedded default, with traffic for the dashboard",
        description="Serve the example Starlette app (examples/app.py) wrapped in "
        "Wf78Middleware, on a SQLite file, with uvicorn; print its URLs and a demo admin "
        "token, and send it some traffic in the background so the dashboard has something "
        "to show. Runs until Ctrl-C, or for --duration seconds.",
    )
    _add_server_options(demo, port=8078)
    demo.add_argument(
        "--db",
        metavar="PATH",
        default="./wf78-demo.db",
        help="the SQLite file to use (default: ./wf78-demo.db)",
    )
    demo.add_argument(
        "--duration",
        metavar="SECONDS",
        type=float,
        default=None,
        help="stop after this many seconds and print a summary (default: until Ctrl-C)",
    )
    demo.add_argument("--no-traffic", action="store_true", help="serve only; send no demo traffic")
    demo.set_defaults(handler=_demo)

    serve_command = commands.add_parser(
        "serve",
        help="wrap any ASGI app in Wf78Middleware and serve it with uvicorn",
        description="Import the ASGI app MODULE:APP, wrap it in Wf78Middleware (the koa78 "
        "data routes and the admin routes under /_wf78/) and serve it with uvicorn. "
        "Exit status 2 when MODULE:APP names no app.",
    )
    serve_command.add_argument(
        "target", metavar="MODULE:APP", help="the app, e.g. 'myproject.asgi:app'"
    )
    _add_config_option(serve_command)
    _add_server_options(serve_command, port=8000)
    serve_command.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=1,
        help="worker processes, each with its own engine (default: 1)",
    )
    serve_command.add_argument(
        "--factory",
        action="store_true",
        help="MODULE:APP is a function that returns the app",
    )
    serve_command.add_argument(
        "--app-dir",
        metavar="DIR",
        default=".",
        help="look for MODULE in this directory first (default: the current directory)",
    )
    serve_command.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug", "trace"),
        help="uvicorn's log level (default: info)",
    )
    serve_command.set_defaults(handler=_serve)

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

    worker_command = commands.add_parser(
        "worker",
        help="run workflow tasks from the redis backend, without HTTP",
        description="Start an engine that takes workflow tasks from the Redis Streams "
        'backend ([engine] backend = "redis") and runs them until Ctrl-C or SIGTERM, which '
        "let the tasks it holds finish (up to drain_timeout). Start any number, on any "
        "host, with the same configuration. Logs 'worker ready' once it takes work.",
    )
    _add_config_option(worker_command)
    worker_command.add_argument(
        "--plugin",
        metavar="MODULE",
        action="append",
        default=[],
        help="also register the plugin module MODULE (its actions, sources...); repeatable",
    )
    worker_command.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="log level (default: info)",
    )
    worker_command.set_defaults(handler=_worker)
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


# -- worker ----------------------------------------------------------------------------------


def _worker(args: argparse.Namespace) -> int:
    plugins = []
    for name in args.plugin:
        try:
            plugins.append(importlib.import_module(name))
        except ImportError as error:
            raise UsageError(f"--plugin {name!r} cannot be imported: {error}") from error
    engine = Engine(_config_path(args), plugins=plugins)
    if engine.settings.backend != "redis":
        raise UsageError(
            'wf78 worker needs [engine] backend = "redis" in its configuration '
            f"(it has {engine.settings.backend!r})"
        )
    if not engine.settings.consume:
        raise UsageError("wf78 worker needs [engine] consume = true (it says false)")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    return anyio.run(_work_until_signal, engine)


async def _work_until_signal(engine: Engine) -> int:
    # A repeated signal after the first changes nothing, up to the exit: the receiver
    # takes them while the engine drains and restores this "ignore" when it is done.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with engine:
            async for signum in signals:
                name = signal.Signals(signum).name
                print(f"wf78 worker: {name}: finishing the tasks it holds", file=sys.stderr)
                break
    return 0


# -- serving ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _stop_signals(server: uvicorn.Server) -> Iterator[None]:
    """Ctrl-C and SIGTERM end the process normally. While it serves, uvicorn takes both
    signals, shuts down gracefully, then raises the caught signal again: by default SIGTERM
    would then kill the process instead of letting it exit 0, and SIGINT raise
    KeyboardInterrupt; here that repeat is ignored. Before uvicorn takes over, either one
    raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        if not server.should_exit:
            raise KeyboardInterrupt

    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _bound_port(server: uvicorn.Server, fallback: int) -> int:
    """The port the server listens on (``--port 0`` asks the system for one)."""
    for listener in getattr(server, "servers", ()):
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    return fallback


def _url_host(host: str) -> str:
    """The host for URLs on this machine: a wildcard bind is reached on the loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def _serve_until(
    server: uvicorn.Server,
    on_started: Callable[[int], None],
    while_serving: Callable[[str], Awaitable[None]] | None = None,
    duration: float | None = None,
) -> None:
    """Run ``server`` until a signal (or ``duration`` seconds after start-up); once it listens,
    call ``on_started(port)`` and run ``while_serving(base_url)`` beside it, stopped first."""
    stopped = anyio.Event()
    async with anyio.create_task_group() as group:

        async def serve() -> None:
            try:
                await server.serve()
            except SystemExit:
                pass  # uvicorn exits when it cannot listen (address in use), after saying why
            finally:
                stopped.set()

        group.start_soon(serve)
        while not server.started:  # uvicorn has no start-up event to wait on
            if stopped.is_set():
                return  # it could not start; it said why
            await anyio.sleep(0.05)
        if server.should_exit:  # stopped as soon as it started
            await stopped.wait()
            return
        port = _bound_port(server, server.config.port)
        on_started(port)
        side = anyio.CancelScope()
        if while_serving is not None:
            base_url = f"http://{_url_host(server.config.host)}:{port}"

            async def beside() -> None:
                with side:
                    await while_serving(base_url)

            group.start_soon(beside)
        deadline = None if duration is None else anyio.current_time() + duration
        # uvicorn's signal handlers set should_exit; stop the side task before it shuts down.
        while not server.should_exit and not stopped.is_set():
            if deadline is not None and anyio.current_time() >= deadline:
                break
            await anyio.sleep(0.1)
        side.cancel()
        server.should_exit = True
        await stopped.wait()


def _run_server(
    server: uvicorn.Server,
    on_started: Callable[[int], None],
    while_serving: Callable[[str], Awaitable[None]] | None = None,
    duration: float | None = None,
) -> None:
    """:func:`_serve_until` in its own event loop; Ctrl-C and SIGTERM end it normally.
    :class:`Wf78Error` when the server did not start."""
    try:
        with _stop_signals(server):
            anyio.run(_serve_until, server, on_started, while_serving, duration)
    except KeyboardInterrupt:
        return  # a signal before uvicorn took over: nothing started, nothing to stop
    if not server.started:
        raise Wf78Error(
            f"the server did not start on {server.config.host}:{server.config.port} "
            "(see the log above)"
        )


def _add_server_options(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="the interface to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=port,
        help=f"the port to listen on; 0 picks a free one (default: {port})",
    )


def _check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {port}")


# -- serve -----------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    _check_port(args.port)
    if args.workers < 1:
        raise UsageError("--workers must be >= 1")
    # As uvicorn does: MODULE is looked up from the current directory (or --app-dir) first.
    sys.path.insert(0, str(Path(args.app_dir).resolve()))
    config = _config_path(args)
    config = config.resolve() if config is not None else None
    # Built here even for several workers: a bad target or config fails now, once, clearly.
    app = serve.build_app(args.target, config, factory=args.factory)
    prefix = app.prefix
    if config is not None:
        described = str(config)
    elif not args.factory and serve.import_target(args.target) is app:
        described = "its own Wf78Middleware's"  # the target was wrapped already
    else:
        described = "the embedded default"

    def announce(port: int) -> None:
        url = f"http://{_url_host(args.host)}:{port}"
        print(
            f"wf78 serve: {args.target} on {url} (config: {described}); "
            f"wf78 at {url}{prefix}/ - Ctrl-C to stop",
            flush=True,
        )

    if args.workers > 1:
        os.environ[serve.TARGET_ENV] = args.target
        os.environ[serve.CONFIG_ENV] = str(config or "")
        os.environ[serve.FACTORY_ENV] = "1" if args.factory else ""
        announce(args.port)
        uvicorn.run(
            serve.FACTORY_IMPORT,
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            lifespan="on",
            log_level=args.log_level,
        )
        return 0
    server = uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=args.port, lifespan="on", log_level=args.log_level)
    )
    _run_server(server, announce)
    print("wf78 serve: stopped", flush=True)
    return 0


# -- demo ------------------------------------------------------------------------------------

DEMO_APP = "examples.app"
# Seconds between two rounds of demo traffic (a round is about ten requests).
DEMO_PACE = 0.1
# Rows of each table the traffic keeps: older ones are deleted as new ones come.
DEMO_KEEP = 50


class _Traffic:
    """Requests against the demo's own port so the dashboard has something to show: data
    routes as two users, workflow runs and events as the admin. One request at a time."""

    def __init__(self, admin_token: str, user_token: str, stopping: Callable[[], bool]) -> None:
        self.admin = {"authorization": f"Bearer {admin_token}"}
        self.user = {"authorization": f"Bearer {user_token}"}
        self.stopping = stopping
        self.requests = 0
        self.errors = 0
        self.first_errors: list[str] = []
        self.rng = random.Random(78)  # the same mix every time

    def _error(self, what: str) -> None:
        self.errors += 1
        if len(self.first_errors) < 3:
            self.first_errors.append(what)

    async def _call(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any = None,
        expect: int = 200,
    ) -> Any:
        """Send one request; the decoded JSON answer, or None when it failed (counted)."""
        import httpx

        self.requests += 1
        try:
            response = await client.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as error:
            if not self.stopping():  # the server going away is not the demo's error
                self._error(f"{method} {path}: {type(error).__name__}: {error}")
            return None
        if response.status_code != expect:
            self._error(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
            return None
        if "json" not in response.headers.get("content-type", ""):
            return response.text
        data = response.json()
        if isinstance(data, dict) and data.get("res", 0) != 0:
            self._error(f"{method} {path}: {data.get('errmsg')}")
            return None
        return data

    async def _add(
        self,
        client: httpx.AsyncClient,
        table: str,
        headers: dict[str, str],
        values: list[Any],
        kept: deque[str],
    ) -> None:
        added = await self._call(
            client, "POST", f"/api/demo/{table}/mAdd", headers, {"pars": values}
        )
        if added is not None:
            kept.append(str(added["back"]))
        if len(kept) > DEMO_KEEP:
            oldest = kept.popleft()
            await self._call(client, "POST", f"/api/demo/{table}/mdel", headers, {"mid": oldest})

    async def run(self, base_url: str) -> None:
        import httpx

        rng = self.rng
        items: deque[str] = deque()
        notes: deque[str] = deque()
        timeout = httpx.Timeout(10.0)
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
            for round_ in itertools.count():
                name = f"item-{round_}"
                item = [name, rng.randint(1, 100), round(rng.uniform(1, 500), 2)]
                await self._add(client, "items", self.admin, item, items)
                await self._call(
                    client, "POST", "/api/demo/items/get", self.admin, {"getnumber": 10}
                )
                note = [f"note {round_}", rng.choice(("buy ink", "call Bo", "ship it"))]
                await self._add(client, "notes", self.user, note, notes)
                await self._call(client, "POST", "/api/demo/notes/get", self.user, {"getnumber": 5})
                # A plain user asking for priority 0 is held to its cap (1): /hello shows it.
                await self._call(client, "GET", "/hello", {**self.user, "x-wf78-priority": "0"})
                if round_ % 3 == 0:
                    payload = {
                        "values": {"level": rng.choice(("info", "warning")), "message": name}
                    }
                    await self._call(
                        client, "POST", "/_wf78/events/log", self.admin, payload, expect=202
                    )
                if round_ % 5 == 0:
                    operation = {"action": "get", "table": "items", "limit": 5}
                    body = {"workflow": "high_priority_db_ops", "context": {"operation": operation}}
                    started = await self._call(
                        client, "POST", "/_wf78/runs", self.admin, body, expect=202
                    )
                    if started is not None:
                        await self._call(
                            client, "GET", f"/_wf78/runs/{started['run_id']}", self.admin
                        )
                if round_ % 10 == 0:
                    await self._call(client, "GET", "/_wf78/status", self.admin)
                await anyio.sleep(DEMO_PACE)


def _import_demo_app() -> Any:
    try:
        return importlib.import_module(DEMO_APP)
    except ModuleNotFoundError as error:
        if error.name not in ("examples", DEMO_APP):
            raise
        raise Wf78Error(
            f"the demo app ({DEMO_APP}) is not importable: run wf78 demo from a source "
            "checkout of wf78 (the examples/ folder is not part of the wheel)"
        ) from None


def _demo(args: argparse.Namespace) -> int:
    import uvicorn

    _check_port(args.port)
    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be a positive number of seconds")
    module = _import_demo_app()
    db = Path(args.db).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    admin_token, user_token = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    app = module.build_app(db, admin_token=admin_token, user_token=user_token)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
    )
    traffic = _Traffic(admin_token, user_token, stopping=lambda: server.should_exit)

    def announce(port: int) -> None:
        url = f"http://{_url_host(args.host)}:{port}"
        lines = [
            f"wf78 demo: {DEMO_APP} on {url} (database {db})",
            f"  app        {url}/   ({url}/hello, {url}/stream)",
            f"  dashboard  {url}/_wf78/?token={admin_token}",
            f"  status     {url}/_wf78/status",
            f"  metrics    {url}/_wf78/metrics",
            f"  data       {url}/api/demo/items/get, {url}/api/demo/notes/get",
            f"  admin token: {admin_token}   user token: {user_token}",
            f"  e.g. curl -H 'Authorization: Bearer {admin_token}' {url}/_wf78/status",
            "no traffic (--no-traffic)"
            if args.no_traffic
            else "sending demo traffic in the background",
        ]
        lines.append(
            "Ctrl-C to stop"
            if args.duration is None
            else f"stopping after {args.duration:g} seconds (Ctrl-C to stop sooner)"
        )
        print("\n".join(lines), flush=True)

    started = time.monotonic()
    _run_server(
        server,
        announce,
        while_serving=None if args.no_traffic else traffic.run,
        duration=args.duration,
    )
    elapsed = time.monotonic() - started
    for message in traffic.first_errors:
        print(f"  error: {message}", file=sys.stderr)
    print(
        f"wf78 demo: served {elapsed:.1f}s, {traffic.requests} requests sent, "
        f"{traffic.errors} errors; database {db}",
        flush=True,
    )
    return 0 if traffic.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
