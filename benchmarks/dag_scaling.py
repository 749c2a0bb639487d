"""B4 scaling: one run of a generated layered DAG of ``--n`` ``noop`` tasks.

Layers of :data:`WIDTH` tasks; each task depends on the task at its position in the layer
before and, half the time, on one other task of that layer (a seeded choice, so every run
of a size has the same graph). After a 100-task warm-up run the DAG runs until at least
:data:`MIN_TASKS` tasks have run (once from 10k up), and the case reports the mean time per
task of ``engine.run``, building the run's state and garbage collection included.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from typing import Any

from benchmarks._harness import Measurement, case_main, rss
from wf78_core import Engine

WIDTH = 100
SEED = 78
# Small runs repeat so that every size averages over as many tasks (and collections).
MIN_TASKS = 10_000


def layered_dag(
    workflow_id: str, n: int, *, width: int = WIDTH, seed: int = SEED
) -> dict[str, Any]:
    """A workflow of ``n`` noop tasks in layers of ``width``, 1-2 dependencies per task."""
    choose = random.Random(seed)
    tasks: list[dict[str, Any]] = []
    for index in range(n):
        layer, position = divmod(index, width)
        depends_on: list[str] = []
        if layer:
            previous = (layer - 1) * width
            depends_on.append(f"t{previous + position}")
            other = previous + choose.randrange(width)
            if choose.random() < 0.5 and other != previous + position:
                depends_on.append(f"t{other}")
        tasks.append({"id": f"t{index}", "action": "noop", "depends_on": depends_on})
    return {"id": workflow_id, "max_concurrent": 100_000, "tasks": tasks}


async def dag(args: argparse.Namespace) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        return await _dag(args.n, f"sqlite:///{folder}/journal.db")


async def dag_no_journal(args: argparse.Namespace) -> Measurement:
    return await _dag(args.n, "off")


async def _dag(n: int, journal: str) -> Measurement:
    config = {
        "engine": {"journal": journal},
        "datasources": {"mem": {"type": "memory"}},
        "workflows": [layered_dag("warmup", 100), layered_dag("dag", n)],
    }
    began = time.perf_counter()
    engine = Engine(config)
    build = time.perf_counter() - began
    repeats = -(-MIN_TASKS // n)
    elapsed: list[float] = []
    async with engine:
        await engine.run("warmup")
        for _ in range(repeats):
            began = time.perf_counter()
            run = await engine.run("dag")
            elapsed.append(time.perf_counter() - began)
            if run.status != "succeeded" or len(run.tasks) != n:
                raise RuntimeError(f"the run ended {run.status} with {len(run.tasks)} tasks")
        peak = rss()
    return {
        "elapsed": sum(elapsed),
        "repeats": repeats,
        "per_task_us": sum(elapsed) / (repeats * n) * 1e6,
        "spread_us": [round(seconds / n * 1e6, 2) for seconds in (min(elapsed), max(elapsed))],
        "build_per_task_us": build / n * 1e6,
        "rss_after": peak,
    }


if __name__ == "__main__":
    case_main(
        {"dag": dag, "dag_no_journal": dag_no_journal},
        description=__doc__ or "",
        default_n=1_000,
    )
