"""B1 dispatch: no-op operations through ``engine.submit`` against the same no-op coroutine
awaited through bare ``asyncio.gather``, both in batches of ``--in-flight``.

Cases: ``raw`` (the baseline), ``engine`` (the candidate), ``engine_timeout`` (every
operation carries ``timeout=30``, so the engine opens a cancel scope per operation).
"""

from __future__ import annotations

import argparse
import time

from benchmarks._harness import Measurement, case_main, drive_in_batches
from wf78_core import Engine, Operation

CONFIG = {"datasources": {"mem": {"type": "memory"}}}


async def noop() -> None:
    return None


async def raw(args: argparse.Namespace) -> Measurement:
    async def start(_: int) -> None:
        await noop()

    await drive_in_batches(start, args.in_flight, args.in_flight)  # warm-up
    began, cpu_began = time.perf_counter(), time.process_time()
    await drive_in_batches(start, args.n, args.in_flight)
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    return {"elapsed": elapsed, "ops_per_s": args.n / elapsed, "cpu_seconds": cpu}


async def _through_engine(args: argparse.Namespace, op: Operation) -> Measurement:
    async with Engine(CONFIG) as engine:

        async def start(_: int) -> object:
            return await engine.submit(op)

        await drive_in_batches(start, args.in_flight, args.in_flight)  # warm-up
        began, cpu_began = time.perf_counter(), time.process_time()
        await drive_in_batches(start, args.n, args.in_flight)
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu_began
        expected = args.n + args.in_flight
        if engine.completed != expected or engine.failed:
            raise RuntimeError(
                f"expected {expected} completed operations, got {engine.completed} "
                f"({engine.failed} failed)"
            )
    return {"elapsed": elapsed, "ops_per_s": args.n / elapsed, "cpu_seconds": cpu}


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
