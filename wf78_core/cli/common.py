"""What every ``wf78`` command shares: the usage error, error messages, the config option."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from wf78_core.errors import ConfigError, Wf78Error

__all__ = ["UsageError", "add_config_option", "config_path", "describe"]


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
