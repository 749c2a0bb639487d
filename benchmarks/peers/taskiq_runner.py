"""B11/B12 with taskiq and taskiq-redis:
``python -m benchmarks.peers.taskiq_runner drive --n 20000 --workers 2``.

Configured as taskiq-redis's README shows it: ``RedisStreamBroker`` (the broker its README
puts first: Redis Streams with a consumer group and acknowledgements; ``ListQueueBroker``
"if you don't want acknowledges"), a task declared with ``@broker.task``, sent with
``noop.kiq()``, and workers started by ``taskiq worker benchmarks.peers.taskiq_runner:broker``,
one command per worker process (``--workers 1``; the command's default is 2 processes) with
``--log-level WARNING`` (its default, INFO, logs every task). No result backend: the
benchmark never reads results. Every other setting keeps the defaults
(``--max-async-tasks`` 100, acknowledgement ``when_saved``, ``xread_count`` 100).

Completion is taskiq's own state: with ``when_saved`` a worker acknowledges (XACK) a message
after the task ran and its result was handled, so the benchmark polls the consumer group
(``XINFO GROUPS``) until ``entries-read`` is N and ``pending`` is 0; the check afterwards
also wants ``XLEN`` N.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from taskiq import TaskiqEvents, TaskiqState
from taskiq_redis import RedisStreamBroker

from benchmarks.peers._common import (
    DATABASES,
    URL_VARIABLE,
    Client,
    Drive,
    Measurement,
    WorkerPlan,
    ready_line,
    redis_url,
    runner_main,
    worker_environment,
)

STREAM = "taskiq"  # RedisStreamBroker's default queue_name
GROUP = "taskiq"  # and consumer_group_name

broker = RedisStreamBroker(url=os.environ.get(URL_VARIABLE, redis_url(DATABASES["taskiq"])))


@broker.task(task_name="noop")
async def noop() -> None:
    return None


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def startup(state: TaskiqState) -> None:
    ready_line()


def worker(args: argparse.Namespace, folder: Path) -> WorkerPlan:
    return WorkerPlan(
        [
            sys.executable,
            "-m",
            "taskiq",
            "worker",
            "benchmarks.peers.taskiq_runner:broker",
            "--workers",
            "1",
            "--log-level",
            "WARNING",
            *(["--max-async-tasks", str(args.concurrency)] if args.concurrency else []),
        ],
        environment=worker_environment(args),
    )


@asynccontextmanager
async def client(args: argparse.Namespace, folder: Path) -> AsyncIterator[Client]:
    # The kicking side: the same module-level broker, pointed at this run's database.
    sender = RedisStreamBroker(url=redis_url(args.db))
    task = sender.register_task(noop.original_func, task_name="noop")
    await sender.startup()
    redis: Redis = Redis.from_url(redis_url(args.db))

    async def group() -> dict[str, Any]:
        for entry in await redis.xinfo_groups(STREAM):
            if entry["name"] in (GROUP, GROUP.encode()):
                return dict(entry)
        raise RuntimeError(f"no consumer group {GROUP!r} on stream {STREAM!r}")

    async def enqueue(index: int) -> object:
        return await task.kiq()

    async def done() -> bool:
        state = await group()
        return int(state["entries-read"] or 0) >= args.n and int(state["pending"]) == 0

    async def check() -> Measurement:
        state = await group()
        length = int(await redis.xlen(STREAM))
        if length != args.n or int(state["entries-read"]) != args.n or state["pending"]:
            raise RuntimeError(f"taskiq stream length {length}, group {state}")
        return {"acknowledged": int(state["entries-read"]) - int(state["pending"])}

    try:
        yield enqueue, done, check
    finally:
        await redis.aclose()
        await sender.shutdown()


if __name__ == "__main__":
    runner_main(Drive("taskiq", worker, client, packages=("taskiq", "taskiq-redis")))
