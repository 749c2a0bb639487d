"""B1 dispatch: no-op operations through ``engine.submit`` against the same no-op coroutine
awaited without the engine, both driven the same way.

Shapes (``--shape``, see ``_harness.py``): ``burst``, batches of ``--in-flight`` through one
``asyncio.gather`` each (the raw side is then bare ``asyncio.gather``), and ``steady``, each
operation its own task, at most ``--in-flight`` at once under a semaphore (the raw side is
then a bare task per no-op under the same semaphore).

Cases: ``raw`` (the baseline), ``engine`` (the candidate), ``engine_timeout`` (every
operation carries ``timeout=30``, so the engine opens a cancel scope per operation).
"""

from __future__ import annotations

import argparse

from benchmarks._harness import Measurement, case_main, measure, warmup_count
from wf78_core import Engine, Operation

CONFIG = {"datasources": {"mem": {"type": "memory"}}}


async def noop() -> None:
    return None


async def raw(args: argparse.Namespace) -> Measurement:
    async def start(_: int) -> None:
        await noop()

    return await measure(args, start)


async def _through_engine(args: argparse.Namespace, op: Operation) -> Measurement:
    async with Engine(CONFIG) as engine:

        async def start(_: int) -> object:
            return await engine.submit(op)

        result = await measure(args, start)
        expected = args.n + warmup_count(args)
        if engine.completed != expected or engine.failed:
            raise RuntimeError(
                f"expected {expected} completed operations, got {engine.completed} "
                f"({engine.failed} failed)"
            )
    return result


async def engine(args: argparse.Namespace) -> Measurement:
    return await _through_engine(args, Operation(action="noop", data_source="mem"))


async def engine_timeout(args: argparse.Namespace) -> Measurement:
    return await _through_engine(args, Operation(action="noop", data_source="mem", timeout=30))


if __name__ == "__main__":
    case_main(
        {"raw": raw, "engine": engine, "engine_timeout": engine_timeout},
        description=__doc__ or "",
        default_n=100_000,
    )
