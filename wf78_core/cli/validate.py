"""``wf78 validate``: check a configuration file and list every problem."""

from __future__ import annotations

import argparse
from pathlib import Path

import anyio

from wf78_core.cli.common import plugin_modules
from wf78_core.engine import Engine

__all__ = ["validate_command"]


def validate_command(args: argparse.Namespace) -> int:
    path = Path(args.file)
    plugins = plugin_modules(args)
    problems = anyio.run(lambda: Engine.check(path, plugins=plugins))
    if not problems:
        print(f"{path}: OK")
        return 0
    for problem in problems:
        print(problem)
    count = len(problems)
    print(f"{path}: {count} problem{'' if count == 1 else 's'}")
    return 1
