"""B11/B12 with wf78: ``python -m benchmarks.peers.wf78_runner drive --n 20000 --workers 2``.

wf78's Redis Streams backend (``[engine] backend = "redis"``, ``journal = "off"``), a
workflow ``noop`` of one task running the ``noop`` action of
:mod:`benchmarks.peers.wf78_noop`, with ``max_concurrent`` high enough never to bind. Workers
are ``python -m wf78_core.cli worker --config FILE --plugin benchmarks.peers.wf78_noop``, one
process each, at their default log level (they log nothing per task); one is ready when it
logs ``worker ready``. The enqueuing side is an ``Engine`` in this process with
``consume = false`` (it runs no task) calling ``engine.run("noop", wait=False)`` per task.

Completion is wf78's own state: the namespace's stats hash counts finished runs
(``engine.backend.finished_runs()``, an HGET of ``runs_finished``); the check afterwards
reads every run (``engine.fetch_run``) and counts the succeeded ones.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from benchmarks.peers import wf78_noop
from benchmarks.peers._common import (
    BATCH,
    Client,
    Drive,
    Measurement,
    WorkerPlan,
    redis_url,
    runner_main,
)
from wf78_core import Engine

NAMESPACE = "bench"


def write_config(folder: Path, db: int, *, consume: bool) -> Path:
    path = folder / ("wf78-worker.toml" if consume else "wf78-enqueue.toml")
    path.write_text(
        f"""\
[engine]
backend = "redis"
backend_url = "{redis_url(db)}"
backend_namespace = "{NAMESPACE}"
journal = "off"
consume = {"true" if consume else "false"}

[[workflows]]
id = "noop"
max_concurrent = 1000000

[[workflows.tasks]]
id = "noop"
action = "noop"
""",
        encoding="utf-8",
    )
    return path


def worker(args: argparse.Namespace, folder: Path) -> WorkerPlan:
    config = write_config(folder, args.db, consume=True)
    return WorkerPlan(
        [
            sys.executable,
            "-m",
            "wf78_core.cli",
            "worker",
            "--config",
            str(config),
            "--plugin",
            "benchmarks.peers.wf78_noop",
        ],
        ready_text="worker ready",
    )


@asynccontextmanager
async def client(args: argparse.Namespace, folder: Path) -> AsyncIterator[Client]:
    config = write_config(folder, args.db, consume=False)
    run_ids: list[str] = []
    async with Engine(config, plugins=[wf78_noop]) as engine:

        async def enqueue(index: int) -> object:
            run = await engine.run("noop", wait=False)
            run_ids.append(run.id)
            return run

        async def done() -> bool:
            return await engine.backend.finished_runs() >= args.n  # type: ignore[attr-defined, no-any-return]

        async def check() -> Measurement:
            statuses: dict[str, int] = {}
            for start in range(0, len(run_ids), BATCH):
                runs = await asyncio.gather(
                    *(engine.fetch_run(run_id) for run_id in run_ids[start : start + BATCH])
                )
                for run in runs:
                    statuses[run.status] = statuses.get(run.status, 0) + 1
            finished = await engine.backend.finished_runs()  # type: ignore[attr-defined]
            if statuses.get("succeeded", 0) != args.n or finished != args.n:
                raise RuntimeError(f"wf78 runs {statuses}, runs_finished {finished}")
            return {"succeeded": statuses["succeeded"], "runs_finished": finished}

        yield enqueue, done, check


if __name__ == "__main__":
    from benchmarks._harness import _check_code_origin

    runner_main(Drive("wf78", worker, client, packages=("wf78",)))
    _check_code_origin()
