"""B6 Redis cache writes: ``cache_set`` through the engine's ``redis`` source
(auto-pipelining) against the same SETs made directly with ``redis.asyncio``.

Every case writes under its own key prefix (deleted afterwards) with the adapter's key layout
(``{prefix}:cache:{key}``) and value encoding (msgspec JSON), and keeps ``--in-flight``
commands going in the shape ``--shape`` names: ``burst`` (``asyncio.gather`` batches) or
``steady`` (a task per command, at most ``--in-flight`` at once under a semaphore; not for
``pipelined``, whose unit is a pipeline).

Cases:

``direct``     the baseline: one ``SET`` per call on a ``Redis`` client over
               ``BlockingConnectionPool(max_connections=100)``.
``pipelined``  the second baseline: the commands of each batch hand-packed into pipelines
               of :data:`PIPELINE` commands (``transaction=False``), sent concurrently.
``engine``     ``engine.submit(Operation(action="cache_set", ...))``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis

from benchmarks._harness import (
    Measurement,
    case_main,
    drive,
    drive_in_batches,
    measure,
    warmup_count,
)
from benchmarks._services import REDIS_URL, redis_drop_prefix, unique_name
from wf78_core import Engine, Operation

PIPELINE = 500
_encode = msgspec.json.Encoder().encode


def _value(i: int) -> dict[str, Any]:
    return {"n": i, "name": f"row {i}"}


async def _finish(prefix: str, expected: int) -> None:
    """Delete the case's keys; there must have been exactly ``expected``."""
    found = await redis_drop_prefix(prefix)
    if found != expected:
        raise RuntimeError(f"expected {expected} keys under {prefix}:, found {found}")


async def direct(args: argparse.Namespace) -> Measurement:
    prefix = unique_name("b6direct")
    client = Redis(connection_pool=BlockingConnectionPool.from_url(REDIS_URL, max_connections=100))
    try:

        async def start(i: int) -> None:
            await client.set(f"{prefix}:cache:k{i}", _encode(_value(i)))

        result = await measure(args, start)
    finally:
        await client.aclose()
    await _finish(prefix, args.n + warmup_count(args))
    return result


async def pipelined(args: argparse.Namespace) -> Measurement:
    prefix = unique_name("b6pipe")
    if args.n % PIPELINE or args.in_flight % PIPELINE:
        raise SystemExit(f"--n and --in-flight must be multiples of {PIPELINE}")
    if args.shape != "burst":
        raise SystemExit("pipelined runs in the burst shape only")
    client = Redis(connection_pool=BlockingConnectionPool.from_url(REDIS_URL, max_connections=100))
    try:

        async def start(number: int) -> None:
            pipe = client.pipeline(transaction=False)
            for i in range(number * PIPELINE, (number + 1) * PIPELINE):
                pipe.set(f"{prefix}:cache:k{i}", _encode(_value(i)))
            replies = await pipe.execute()
            if not all(replies):
                raise RuntimeError("a SET failed")

        pipelines_in_flight = args.in_flight // PIPELINE
        await drive_in_batches(
            start, pipelines_in_flight, pipelines_in_flight, first=-pipelines_in_flight
        )
        began, cpu_began = time.perf_counter(), time.process_time()
        await drive_in_batches(start, args.n // PIPELINE, pipelines_in_flight)
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu_began
    finally:
        await client.aclose()
    await _finish(prefix, args.n + args.in_flight)
    return {"elapsed": elapsed, "ops_per_s": args.n / elapsed, "cpu_seconds": cpu}


async def engine(args: argparse.Namespace) -> Measurement:
    prefix = unique_name("b6engine")
    config: dict[str, Any] = {
        "datasources": {"cache": {"type": "redis", "url": REDIS_URL, "key_prefix": prefix}}
    }
    async with Engine(config) as wf78:

        async def start(i: int) -> object:
            op = Operation(action="cache_set", key=f"k{i}", value=_value(i), data_source="cache")
            return await wf78.submit(op)

        count = warmup_count(args)
        await drive(args, start, count, first=-count)
        adapter = wf78.sources.named[
            "cache"
        ].adapter  # informational: the adapter behind the source
        pipelines_before, commands_before = adapter.pipelines, adapter.commands
        result = await measure(args, start, warmed=True)
        pipelines = adapter.pipelines - pipelines_before
        commands = adapter.commands - commands_before
        if wf78.failed:
            raise RuntimeError(f"{wf78.failed} operations failed")
    await _finish(prefix, args.n + count)
    return {
        **result,
        "pipelines": pipelines,
        "commands_per_pipeline": commands / pipelines if pipelines else None,
    }


if __name__ == "__main__":
    case_main(
        {"direct": direct, "pipelined": pipelined, "engine": engine},
        description=__doc__ or "",
        default_n=50_000,
    )
