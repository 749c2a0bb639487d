"""What every ``wf78`` command shares: the usage error, error messages, the config option."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import ModuleType

from wf78_core.errors import ConfigError, Wf78Error
from wf78_core.plugin.manager import import_plugins

__all__ = [
    "UsageError",
    "add_config_option",
    "add_plugin_option",
    "config_path",
    "describe",
    "plugin_modules",
]


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
