"""``wf78 worker``: run workflow tasks from the redis backend, without HTTP."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

import anyio

from wf78_core.cli.common import UsageError, config_path
from wf78_core.engine import Engine

__all__ = ["worker_command"]


def worker_command(args: argparse.Namespace) -> int:
    plugins = []
    for name in args.plugin:
        try:
            plugins.append(importlib.import_module(name))
        except ImportError as error:
            raise UsageError(f"--plugin {name!r} cannot be imported: {error}") from error
    engine = Engine(config_path(args), plugins=plugins)
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
