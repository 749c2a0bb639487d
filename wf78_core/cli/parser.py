"""The ``wf78`` argument parser: one subcommand per command module, each with its handler."""

from __future__ import annotations

import argparse
from importlib import metadata
from typing import Protocol

from wf78_core.cli.common import add_config_option, add_log_options, add_plugin_option
from wf78_core.cli.demo import demo_command
from wf78_core.cli.maintain import maintain_command
from wf78_core.cli.run import run_command
from wf78_core.cli.serve import serve_command
from wf78_core.cli.validate import validate_command
from wf78_core.cli.worker import worker_command

__all__ = ["build_parser"]


class _Commands(Protocol):
    """What the ``_add_*`` functions use of ``add_subparsers()`` (whose class argparse
    names privately)."""

    def add_parser(self, name: str, *, help: str, description: str) -> argparse.ArgumentParser:
        """A new subcommand's parser."""
        ...


def build_parser() -> argparse.ArgumentParser:
    """The parser; each subcommand sets ``handler`` (``args -> exit status``)."""
    parser = argparse.ArgumentParser(
        prog="wf78",
        description="wf78: a workflow engine for data operations.",
        epilog="Configuration: --config FILE, else $WF78_CONFIG, else the embedded default.",
    )
    parser.add_argument("--version", action="version", version=f"wf78 {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_validate(commands)
    _add_run(commands)
    _add_demo(commands)
    _add_serve(commands)
    _add_maintain(commands)
    _add_worker(commands)
    return parser


def _version() -> str:
    try:
        return metadata.version("wf78")
    except metadata.PackageNotFoundError:
        return "unknown"


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


def _add_validate(commands: _Commands) -> None:
    parser = commands.add_parser(
        "validate",
        help="check a configuration file and list every problem",
        description="Check a configuration file (TOML or JSON) and list every problem "
        "with its path. Exit status 1 when there are problems.",
    )
    parser.add_argument("file", metavar="FILE", help="the configuration file")
    add_plugin_option(parser)
    parser.set_defaults(handler=validate_command)


def _add_run(commands: _Commands) -> None:
    parser = commands.add_parser(
        "run",
        help="run a workflow to completion and print its tasks and results",
        description="Run a workflow to completion and print its status, its tasks and "
        "their results. Exit status 0 when the run succeeded, 1 otherwise.",
    )
    parser.add_argument("workflow", metavar="WORKFLOW", help="the workflow id")
    parser.add_argument(
        "--context",
        metavar="JSON",
        default=None,
        help="the run context as a JSON object, e.g. '{\"operation\": {...}}'",
    )
    add_config_option(parser)
    parser.add_argument(
        "--priority",
        metavar="N",
        type=int,
        default=None,
        help="run at this priority instead of the workflow's (smaller = more urgent)",
    )
    parser.add_argument("--json", action="store_true", help="print the run as JSON")
    add_plugin_option(parser)
    add_log_options(parser, default="warning")
    parser.set_defaults(handler=run_command)


def _add_demo(commands: _Commands) -> None:
    parser = commands.add_parser(
        "demo",
        help="serve the example app on the embedded default, with traffic for the dashboard",
        description="Serve the example Starlette app (examples/app.py) wrapped in "
        "Wf78Middleware, on a SQLite file, with uvicorn; print its URLs and a demo admin "
        "token, and send it some traffic in the background so the dashboard has something "
        "to show. Runs until Ctrl-C, or for --duration seconds.",
    )
    _add_server_options(parser, port=8078)
    parser.add_argument(
        "--db",
        metavar="PATH",
        default="./wf78-demo.db",
        help="the SQLite file to use (default: ./wf78-demo.db)",
    )
    parser.add_argument(
        "--duration",
        metavar="SECONDS",
        type=float,
        default=None,
        help="stop after this many seconds and print a summary (default: until Ctrl-C)",
    )
    parser.add_argument(
        "--no-traffic", action="store_true", help="serve only; send no demo traffic"
    )
    add_plugin_option(parser)
    parser.set_defaults(handler=demo_command)


def _add_serve(commands: _Commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="wrap any ASGI app in Wf78Middleware and serve it with uvicorn",
        description="Import the ASGI app MODULE:APP, wrap it in Wf78Middleware (the koa78 "
        "data routes and the admin routes under /_wf78/) and serve it with uvicorn. "
        "Exit status 2 when MODULE:APP names no app.",
    )
    parser.add_argument("target", metavar="MODULE:APP", help="the app, e.g. 'myproject.asgi:app'")
    add_config_option(parser)
    _add_server_options(parser, port=8000)
    parser.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=1,
        help="worker processes, each with its own engine (default: 1)",
    )
    parser.add_argument(
        "--factory",
        action="store_true",
        help="MODULE:APP is a function that returns the app",
    )
    parser.add_argument(
        "--app-dir",
        metavar="DIR",
        default=".",
        help="look for MODULE in this directory first (default: the current directory)",
    )
    add_log_options(
        parser,
        levels=("critical", "error", "warning", "info", "debug", "trace"),
        level_help="uvicorn's log level",
        text_help="text: uvicorn's",
    )
    add_plugin_option(parser)
    parser.set_defaults(handler=serve_command)


def _add_maintain(commands: _Commands) -> None:
    parser = commands.add_parser(
        "maintain",
        help="create missing tables and upcoming shards, drop expired shards, now",
        description="Run table maintenance now: create the declared tables the SQL "
        "sources lack, create today's and the next shards of sharded tables and drop "
        "shards past their retention (what the wf78.maintenance workflow does hourly); "
        "with --migrate, add the declared columns existing tables lack.",
    )
    add_config_option(parser)
    parser.add_argument("--json", action="store_true", help="print what changed as JSON")
    parser.add_argument(
        "--migrate",
        action="store_true",
        help="also add the declared columns that existing tables and shards lack "
        "(additive only: nothing is dropped or changed)",
    )
    add_plugin_option(parser)
    add_log_options(parser, default="warning")
    parser.set_defaults(handler=maintain_command)


def _add_worker(commands: _Commands) -> None:
    parser = commands.add_parser(
        "worker",
        help="run workflow tasks from the redis backend, without HTTP",
        description="Start an engine that takes workflow tasks from the Redis Streams "
        'backend ([engine] backend = "redis") and runs them until Ctrl-C or SIGTERM, which '
        "let the tasks it holds finish (up to drain_timeout). Start any number, on any "
        "host, with the same configuration. Logs 'worker ready' once it takes work.",
    )
    add_config_option(parser)
    add_plugin_option(parser)
    parser.add_argument(
        "--ready-file",
        metavar="PATH",
        default=None,
        help="write PATH (JSON: pid, consumer, capabilities, slots) once the worker takes "
        "work, and remove it when it stops taking work (a signal) or exits: a readiness "
        "check for supervisors",
    )
    add_log_options(parser)
    parser.set_defaults(handler=worker_command)
