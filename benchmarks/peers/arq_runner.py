"""B11/B12 with arq: ``python -m benchmarks.peers.arq_runner drive --n 20000 --workers 2``.

Runs in arq's own virtualenv (``.venv/redis5``: arq pins ``redis < 6``). Configured as arq's
documentation shows it: a ``WorkerSettings`` class (``functions``, ``redis_settings``,
``max_jobs``, ``on_startup``) started by the ``arq`` command line, one process per worker
(arq has no multi-process option), and ``ArqRedis.enqueue_job("noop")`` per task on a pool
from ``create_pool``. The command line's logging is given at WARNING through its
``--custom-log-dict`` option (its default, INFO, writes two lines per job). Every other
setting keeps arq's default (``keep_result`` 3600 s, ``job_timeout`` 300 s, ``max_tries`` 5,
``queue_read_limit`` = max(5 * ``max_jobs``, 100)).

Completion is arq's own state: a job stays in the ``arq:queue`` sorted set until the worker
has finished it (in-progress jobs are only marked), so after the last enqueue the benchmark
polls ``ZCARD arq:queue`` until it is 0; the check afterwards reads every kept result
(``all_job_results``) and counts the successful ones.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# arq and SAQ live in .venv/redis5: type-check them there (benchmarks/README.md); the
# project's virtualenv does not have them.
from arq.connections import (  # type: ignore[import-not-found, unused-ignore]
    RedisSettings,
    create_pool,
)
from arq.constants import default_queue_name  # type: ignore[import-not-found, unused-ignore]

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

# Jobs each worker process runs at once (arq's default is 10; see benchmarks/README.md).
MAX_JOBS = concurrency(100)
# Seconds between polls of the queue when a poll found it empty (arq's default 0.5).
POLL_DELAY = 0.05
# The arq command line's logging, at WARNING: no line per job.
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"arq.standard": {"level": "WARNING", "class": "logging.StreamHandler"}},
    "loggers": {"arq": {"handlers": ["arq.standard"], "level": "WARNING"}},
}


def _settings(url: str) -> RedisSettings:
    parsed = urlparse(url)
    return RedisSettings(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 6379,
        database=int(parsed.path.lstrip("/") or 0),
    )


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def startup(ctx: dict[str, Any]) -> None:
    ready_line()


class WorkerSettings:
    functions = [noop]
    redis_settings = _settings(os.environ.get(URL_VARIABLE, redis_url(DATABASES["arq"])))
    max_jobs = MAX_JOBS
    poll_delay = POLL_DELAY
    on_startup = startup


def worker(args: argparse.Namespace, folder: Path) -> WorkerPlan:
    return WorkerPlan(
        [
            sys.executable,
            "-m",
            "arq",
            "benchmarks.peers.arq_runner.WorkerSettings",
            "--custom-log-dict",
            "benchmarks.peers.arq_runner.LOG_CONFIG",
        ],
        environment=worker_environment(args),
    )


@asynccontextmanager
async def client(args: argparse.Namespace, folder: Path) -> AsyncIterator[Client]:
    pool = await create_pool(_settings(redis_url(args.db)))

    async def enqueue(index: int) -> object:
        return await pool.enqueue_job("noop")

    async def done() -> bool:
        return int(await pool.zcard(default_queue_name)) == 0

    async def check() -> Measurement:
        results = await pool.all_job_results()
        succeeded = sum(1 for result in results if result.success)
        if succeeded != args.n:
            raise RuntimeError(f"arq kept {len(results)} results, {succeeded} successful")
        return {"successful_results": succeeded}

    try:
        yield enqueue, done, check
    finally:
        await pool.aclose()


if __name__ == "__main__":
    runner_main(Drive("arq", worker, client, packages=("arq",)))
