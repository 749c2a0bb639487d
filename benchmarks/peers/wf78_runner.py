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
    Client,
    Drive,
    Measurement,
    WorkerPlan,
    redis_url,
    runner_main,
)
from wf78_core import Engine

NAMESPACE = "bench"
# Runs read back at once by the check afterwards.
CHECKS = 50


# The DAG case: a fan-out/fan-in workflow of 10 tasks, a root, 8 in parallel, a join.
DAG_FANOUT = 8
DAG_TASKS = DAG_FANOUT + 2


def workflow_toml(dag: bool) -> str:
    """The benchmark's workflow: ``noop`` (one task), or ``dag`` (:data:`DAG_TASKS` no-op
    tasks: ``root``, ``f0``..``f7`` depending on it, ``join`` depending on all eight)."""
    if not dag:
        return """\
[[workflows]]
id = "noop"
max_concurrent = 1000000

[[workflows.tasks]]
id = "noop"
action = "noop"
"""
    fan = [f"f{i}" for i in range(DAG_FANOUT)]
    tasks = ['[[workflows.tasks]]\nid = "root"\naction = "noop"\n']
    tasks += [
        f'[[workflows.tasks]]\nid = "{name}"\naction = "noop"\ndepends_on = ["root"]\n'
        for name in fan
    ]
    joined = ", ".join(f'"{name}"' for name in fan)
    tasks.append(f'[[workflows.tasks]]\nid = "join"\naction = "noop"\ndepends_on = [{joined}]\n')
    return '[[workflows]]\nid = "dag"\nmax_concurrent = 1000000\n\n' + "\n".join(tasks)


def write_config(folder: Path, db: int, *, consume: bool, dag: bool = False) -> Path:
    path = folder / ("wf78-worker.toml" if consume else "wf78-enqueue.toml")
    path.write_text(
        f"""\
[engine]
backend = "redis"
backend_url = "{redis_url(db)}"
backend_namespace = "{NAMESPACE}"
journal = "off"
consume = {"true" if consume else "false"}

{workflow_toml(dag)}""",
        encoding="utf-8",
    )
    return path


def worker(args: argparse.Namespace, folder: Path, *, dag: bool = False) -> WorkerPlan:
    config = write_config(folder, args.db, consume=True, dag=dag)
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
async def client(
    args: argparse.Namespace, folder: Path, *, dag: bool = False
) -> AsyncIterator[Client]:
    config = write_config(folder, args.db, consume=False, dag=dag)
    workflow = "dag" if dag else "noop"
    run_ids: list[str] = []
    async with Engine(config, plugins=[wf78_noop]) as engine:

        async def enqueue(index: int) -> object:
            run = await engine.run(workflow, wait=False)
            run_ids.append(run.id)
            return run

        async def done() -> bool:
            return await engine.backend.finished_runs() >= args.n  # type: ignore[attr-defined, no-any-return]

        async def check() -> Measurement:
            statuses: dict[str, int] = {}
            tasks_done = 0
            # A few at a time (never timed): a loaded machine answers late, not wrongly.
            for start in range(0, len(run_ids), CHECKS):
                runs = await asyncio.gather(
                    *(engine.fetch_run(run_id) for run_id in run_ids[start : start + CHECKS])
                )
                for run in runs:
                    statuses[run.status] = statuses.get(run.status, 0) + 1
                    tasks_done += sum(t.state == "succeeded" for t in run.tasks.values())
            finished = await engine.backend.finished_runs()  # type: ignore[attr-defined]
            tasks = args.n * (DAG_TASKS if dag else 1)
            if statuses.get("succeeded", 0) != args.n or finished != args.n or tasks_done != tasks:
                raise RuntimeError(
                    f"wf78 runs {statuses}, runs_finished {finished}, tasks succeeded "
                    f"{tasks_done} of {tasks}"
                )
            return {
                "succeeded": statuses["succeeded"],
                "runs_finished": finished,
                "tasks_succeeded": tasks_done,
            }

        yield enqueue, done, check


if __name__ == "__main__":
    from benchmarks._harness import _check_code_origin

    runner_main(Drive("wf78", worker, client, packages=("wf78",)))
    _check_code_origin()
