"""B11/B12 with SAQ: ``python -m benchmarks.peers.saq_runner drive --n 20000 --workers 2``.

Configured as SAQ's README shows it: a module-level ``settings`` dict (``queue``,
``functions``, ``concurrency``) started by the ``saq`` command line, one process per worker
(``saq benchmarks.peers.saq_runner.settings``; the command's default logging, errors only),
a ``RedisQueue`` from ``Queue.from_url`` and ``queue.enqueue("noop")`` per task. Every other
setting keeps SAQ's default (job ``timeout`` 10 s, ``ttl`` 600 s, ``retries`` 1, the worker's
timers).

Completion is SAQ's own state: a job leaves the ``saq:default:incomplete`` sorted set when
it finishes, so after the last enqueue the benchmark polls ``ZCARD`` until it is 0; the check
afterwards reads every job and counts ``status == "complete"``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

# arq and SAQ live in .venv/redis5: type-check them there (benchmarks/README.md); the
# project's virtualenv does not have them.
from saq.queue.redis import RedisQueue  # type: ignore[import-not-found, unused-ignore]

from benchmarks.peers._common import (
    DATABASES,
    URL_VARIABLE,
    Client,
    Drive,
    Measurement,
    WorkerPlan,
    concurrency,
    ready_line,
    redis_url,
    runner_main,
    worker_environment,
)

# Jobs each worker process runs at once (SAQ's default is 10; see benchmarks/README.md).
CONCURRENCY = concurrency(100)


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def startup(ctx: dict[str, Any]) -> None:
    ready_line()


queue = RedisQueue.from_url(os.environ.get(URL_VARIABLE, redis_url(DATABASES["saq"])))
settings = {
    "queue": queue,
    "functions": [noop],
    "concurrency": CONCURRENCY,
    "startup": startup,
}


def worker(args: argparse.Namespace, folder: Path) -> WorkerPlan:
    return WorkerPlan(
        [sys.executable, "-m", "saq", "benchmarks.peers.saq_runner.settings"],
        environment=worker_environment(args),
    )


@asynccontextmanager
async def client(args: argparse.Namespace, folder: Path) -> AsyncIterator[Client]:
    producer = RedisQueue.from_url(redis_url(args.db))
    await producer.connect()
    redis = producer.redis
    incomplete = producer.namespace("incomplete")

    async def enqueue(index: int) -> object:
        return await producer.enqueue("noop")

    async def done() -> bool:
        return int(await redis.zcard(incomplete)) == 0

    async def check() -> Measurement:
        keys = [key async for key in redis.scan_iter(match="saq:job:default:*", count=1000)]
        statuses: dict[str, int] = {}
        for start in range(0, len(keys), 1000):
            for raw in await redis.mget(keys[start : start + 1000]):
                status = str(json.loads(raw)["status"])
                statuses[status] = statuses.get(status, 0) + 1
        if statuses.get("complete", 0) != args.n:
            raise RuntimeError(f"SAQ finished {statuses}, expected {args.n} complete")
        return {"complete": statuses["complete"]}

    try:
        yield enqueue, done, check
    finally:
        await producer.disconnect()


if __name__ == "__main__":
    runner_main(Drive("saq", worker, client, packages=("saq",)))
