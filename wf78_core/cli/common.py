"""What every ``wf78`` command shares: the usage error, error messages, the config option,
the log options (``--log-level``, ``--log-format text|json``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from wf78_core.core.logcontext import ContextFilter, JsonFormatter
from wf78_core.errors import ConfigError, Wf78Error
from wf78_core.plugin.manager import import_plugins

__all__ = [
    "LOG_FIELDS_HELP",
    "TEXT_LOG_FORMAT",
    "UsageError",
    "add_config_option",
    "add_log_options",
    "add_plugin_option",
    "config_path",
    "configure_logging",
    "describe",
    "log_config",
    "plugin_modules",
]

#: a text line: when, which process, which logger, how bad, what
TEXT_LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
#: what ``--log-format json`` writes, for the commands' help
LOG_FIELDS_HELP = (
    "json: one JSON object per line on stderr, wf78's records with run_id, task_id, "
    "workflow, data_source, tenant and the trace and span ids"
)


class UsageError(Wf78Error):
    """The command line itself is wrong (bad JSON, unknown workflow): exit status 2."""

    exit_code = 2


def describe(error: Wf78Error) -> str:
    """The message ``wf78: error:`` shows: every problem of an invalid configuration."""
    if isinstance(error, ConfigError) and len(error.problems) > 1:
        lines = "\n".join(f"  {problem}" for problem in error.problems)
        return f"invalid configuration ({len(error.problems)} problems):\n{lines}"
    return str(error)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="the configuration file (default: $WF78_CONFIG, else the embedded default)",
    )


def config_path(args: argparse.Namespace) -> Path | None:
    """``--config``, else ``$WF78_CONFIG``, else ``None`` (the embedded default)."""
    chosen = args.config or os.environ.get("WF78_CONFIG")
    return Path(chosen) if chosen else None


def add_plugin_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin",
        metavar="MODULE",
        action="append",
        default=[],
        help="also register the plugin module MODULE (its actions, data sources, hooks), "
        "besides the configuration's [engine] plugins; repeatable",
    )


def plugin_modules(args: argparse.Namespace) -> list[ModuleType]:
    """The modules ``--plugin`` names, imported; :class:`UsageError` names each one that
    cannot be. Like ``python -m``, the command finds modules in the current directory too
    (searched last, after the installed packages), also for ``[engine] plugins``."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)
    modules, problems = import_plugins(args.plugin, where="--plugin")
    if problems:
        raise UsageError("; ".join(f"--plugin {problem.message}" for problem in problems))
    return modules


def add_log_options(
    parser: argparse.ArgumentParser,
    *,
    default: str = "info",
    levels: Sequence[str] = ("critical", "error", "warning", "info", "debug"),
    level_help: str = "log level",
    text_help: str = "text: a line per record",
) -> None:
    """``--log-level`` and ``--log-format text|json`` (:func:`configure_logging`)."""
    parser.add_argument(
        "--log-level",
        default=default,
        choices=tuple(levels),
        help=f"{level_help} (default: {default})",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help=f"{LOG_FIELDS_HELP}; {text_help} (default: text)",
    )


def log_config(level: str, log_format: str) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for every logger: records at ``level`` and above
    on stderr, with their log fields (:class:`~wf78_core.core.logcontext.ContextFilter`),
    as :data:`TEXT_LOG_FORMAT` lines or (``json``) one JSON object each. Loggers that exist
    already are kept."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter} if log_format == "json" else {"format": TEXT_LOG_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "filters": ["context"],
                "formatter": "default",
            }
        },
        "root": {"handlers": ["default"], "level": level.upper()},
    }


class _CommandHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` adds: it writes to ``sys.stderr`` as it is
    when a record comes (``main()`` called in a process that swaps it, such as tests)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always sys.stderr


def configure_logging(args: argparse.Namespace) -> None:
    """Log as ``--log-level`` and ``--log-format`` say: the records of every logger at
    that level and above, each with its log fields, on stderr (what :func:`log_config`
    configures, without removing the handlers the process had: a command run twice in
    one process replaces only its own)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _CommandHandler)]:
        root.removeHandler(handler)
    handler = _CommandHandler()
    handler.addFilter(ContextFilter())
    json = args.log_format == "json"
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(TEXT_LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(args.log_level.upper())
