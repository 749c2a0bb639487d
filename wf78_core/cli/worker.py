"""``wf78 worker``: run workflow tasks from the redis backend, without HTTP; its records
(``--log-format json``: one JSON object per line) name the run, task, workflow, data
source and tenant of the task they are about."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import signal
from pathlib import Path

import anyio

from wf78_core.cli.common import UsageError, config_path, configure_logging, plugin_modules
from wf78_core.engine import Engine

__all__ = ["loop_options", "worker_command"]

logger = logging.getLogger("wf78.worker")


def worker_command(args: argparse.Namespace) -> int:
    engine = Engine(config_path(args), plugins=plugin_modules(args))
    if engine.settings.backend != "redis":
        raise UsageError(
            'wf78 worker needs [engine] backend = "redis" in its configuration '
            f"(it has {engine.settings.backend!r})"
        )
    if not engine.settings.consume:
        raise UsageError("wf78 worker needs [engine] consume = true (it says false)")
    ready = Path(args.ready_file) if getattr(args, "ready_file", None) else None
    if ready is not None and not ready.parent.is_dir():
        raise UsageError(
            f"--ready-file {str(ready)!r}: the folder {str(ready.parent)!r} does not exist"
        )
    configure_logging(args)
    return anyio.run(_work_until_signal, engine, ready, backend_options=loop_options())


def loop_options() -> dict[str, bool]:
    """The worker runs on uvloop when it is installed (as taskiq's and uvicorn's do): a
    faster event loop for the many small tasks a worker runs."""
    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


def _write_ready(path: Path, engine: Engine) -> None:
    """The ready file, whole or not at all (written beside it, then renamed)."""
    described = {"pid": os.getpid(), **engine.worker.describe()}
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(described) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _remove_ready(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _work_until_signal(engine: Engine, ready: Path | None = None) -> int:
    # A repeated signal after the first changes nothing, up to the exit: the receiver
    # takes them while the engine drains and restores this "ignore" when it is done.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with engine:
            try:
                if ready is not None:  # the worker takes work once the engine is open
                    _write_ready(ready, engine)
                async for signum in signals:
                    name = signal.Signals(signum).name
                    logger.info("wf78 worker: %s: finishing the tasks it holds", name)
                    break
            finally:
                if ready is not None:  # it takes no more work from here on
                    _remove_ready(ready)
    return 0
