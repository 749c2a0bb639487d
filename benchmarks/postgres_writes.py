"""B15 PostgreSQL: single-row adds through the engine's ``postgres`` source (group commit)
against the same inserts made directly with asyncpg in autocommit mode on a pool of 10, and
gets by id one at a time against asyncpg's own ``fetchrow``.

Every case uses a fresh table in the ``test`` database of the shared server (created as the
adapter would, dropped afterwards) with the same statements and snowflake ids.

``direct``      the baseline of adds: ``asyncpg.create_pool(max_size=10)``, each insert acquires
                a connection and runs its INSERT, so commits it (autocommit).
``engine``      ``engine.submit(add)``: one transaction per batch, a batch's identical INSERTs
                as one pipelined ``executemany``.
``get_direct``  the baseline of gets: ``fetchrow(SELECT ... WHERE id = $1)`` on one connection
                (the statement prepared once, as asyncpg caches it), one at a time.
``get_pool``    informational: the same on a connection acquired from an asyncpg pool with its
                default reset (one more round trip per release: the adapter's pool skips it).
``get_engine``  ``engine.submit(get where id)``, one at a time.
``copy`` / ``values`` / ``unnest``  informational: how else a batch of ``--in-flight`` rows
                could be written in one transaction (``copy_records_to_table``; one multi-row
                ``INSERT ... VALUES``; ``INSERT ... SELECT * FROM unnest($1::text[], ...)``),
                beside ``pipeline``, asyncpg's ``executemany``, which the writer uses.

``python -m benchmarks.postgres_writes engine --n 20000 --in-flight 64 --shape steady``
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from benchmarks._harness import Measurement, case_main, drive, measure, warmup_count
from benchmarks._services import unique_name
from wf78_core import Engine, Operation
from wf78_core.ids import snowflake_id

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
COLUMNS = {"name": "text", "qty": "int"}
ROWS = 1000
WARMUP = 200
SEED = 78


@asynccontextmanager
async def pg_table(prefix: str) -> AsyncIterator[str]:
    """A fresh table shaped as the adapter makes one of :data:`COLUMNS`; dropped after."""
    name = unique_name(prefix)
    connection = await asyncpg.connect(PG_URL)
    try:
        await connection.execute(
            f'CREATE TABLE "{name}" ("id" VARCHAR(255) NOT NULL PRIMARY KEY, "name" TEXT, '
            '"qty" BIGINT, "upby" TEXT, "uptime" TIMESTAMP(6))'
        )
        yield name
    finally:
        await connection.execute(f'DROP TABLE IF EXISTS "{name}"')
        await connection.close()


async def _count(table: str) -> int:
    connection = await asyncpg.connect(PG_URL)
    try:
        found: int = await connection.fetchval(f'SELECT count(*) FROM "{table}"')
        return found
    finally:
        await connection.close()


async def _check_rows(table: str, expected: int) -> None:
    found = await _count(table)
    if found != expected:
        raise RuntimeError(f"expected {expected} rows in {table}, found {found}")


def _config(table: str) -> dict[str, Any]:
    return {
        "datasources": {"db": {"type": "postgres", "url": PG_URL}},
        "tables": {table: {"columns": dict(COLUMNS)}},
    }


async def direct(args: argparse.Namespace) -> Measurement:
    async with pg_table("b15_direct") as table:
        insert = f'INSERT INTO "{table}" ("id", "name", "qty") VALUES ($1, $2, $3)'
        pool = await asyncpg.create_pool(PG_URL, min_size=10, max_size=10)
        try:

            async def start(i: int) -> None:
                async with pool.acquire() as connection:
                    await connection.execute(insert, snowflake_id(), f"row {i}", i)

            result = await measure(args, start)
        finally:
            await pool.close()
        await _check_rows(table, args.n + warmup_count(args))
    return result


async def engine(args: argparse.Namespace) -> Measurement:
    async with pg_table("b15_engine") as table:
        async with Engine(_config(table)) as wf78:

            async def start(i: int) -> object:
                op = Operation(
                    action="add",
                    table=table,
                    values={"name": f"row {i}", "qty": i},
                    data_source="db",
                )
                return await wf78.submit(op)

            count = warmup_count(args)
            await drive(args, start, count, first=-count)
            adapter: Any = wf78.sources.named["db"].adapter  # informational counts only
            before = adapter.transactions
            result = await measure(args, start, warmed=True)
            transactions = adapter.transactions - before
            if wf78.failed:
                raise RuntimeError(f"{wf78.failed} operations failed")
        await _check_rows(table, args.n + count)
    return {
        **result,
        "transactions": transactions,
        "writes_per_transaction": args.n / transactions if transactions > 0 else None,
    }


# -- gets by id, one at a time ----------------------------------------------------------------


def _ids() -> list[str]:
    return [f"r{i:06d}" for i in range(ROWS)]


async def _fill(table: str) -> None:
    connection = await asyncpg.connect(PG_URL)
    try:
        await connection.executemany(
            f'INSERT INTO "{table}" ("id", "name", "qty") VALUES ($1, $2, $3)',
            [(row_id, f"row {i}", i) for i, row_id in enumerate(_ids())],
        )
    finally:
        await connection.close()


async def _time_gets(get: Any, n: int) -> Measurement:
    order = _ids()
    random.Random(SEED).shuffle(order)
    for i in range(WARMUP):
        await get(order[i % ROWS])
    began, cpu_began = time.perf_counter(), time.process_time()
    for i in range(n):
        await get(order[i % ROWS])
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    return {
        "elapsed": elapsed,
        "per_op_us": elapsed / n * 1e6,
        "cpu_per_op_us": cpu / n * 1e6,
        "ops_per_s": n / elapsed,
    }


def _select(table: str) -> str:
    return f'SELECT "id", "name", "qty", "upby", "uptime" FROM "{table}" WHERE "id" = $1'


async def get_direct(args: argparse.Namespace) -> Measurement:
    async with pg_table("b15_gets") as table:
        await _fill(table)
        select = _select(table)
        connection = await asyncpg.connect(PG_URL, server_settings={"timezone": "UTC"})
        try:

            async def get(row_id: str) -> None:
                row = await connection.fetchrow(select, row_id)
                if row is None or row["id"] != row_id:
                    raise RuntimeError(f"get {row_id!r} returned {row!r}")

            return await _time_gets(get, args.n)
        finally:
            await connection.close()


async def get_pool(args: argparse.Namespace) -> Measurement:
    async with pg_table("b15_gets") as table:
        await _fill(table)
        select = _select(table)
        pool = await asyncpg.create_pool(PG_URL, min_size=1, max_size=10)
        try:

            async def get(row_id: str) -> None:
                async with pool.acquire() as connection:
                    row = await connection.fetchrow(select, row_id)
                if row is None or row["id"] != row_id:
                    raise RuntimeError(f"get {row_id!r} returned {row!r}")

            return await _time_gets(get, args.n)
        finally:
            await pool.close()


async def get_engine(args: argparse.Namespace) -> Measurement:
    async with pg_table("b15_gets") as table:
        await _fill(table)
        async with Engine(_config(table)) as wf78:

            async def get(row_id: str) -> None:
                op = Operation(action="get", table=table, where={"id": row_id}, data_source="db")
                value = (await wf78.submit(op)).value
                if value[0]["id"] != row_id:
                    raise RuntimeError(f"get {row_id!r} returned {value!r}")

            return await _time_gets(get, args.n)


# -- how a batch could be written (informational) -------------------------------------------


async def _batches(args: argparse.Namespace, prefix: str, write: Any) -> Measurement:
    """``--n`` rows in transactions of ``--in-flight`` rows each, written by ``write``."""
    async with pg_table(prefix) as table:
        connection = await asyncpg.connect(PG_URL)
        try:
            size = args.in_flight
            rows = [(snowflake_id(), f"row {i}", i) for i in range(args.n)]
            began, cpu_began = time.perf_counter(), time.process_time()
            for start in range(0, args.n, size):
                async with connection.transaction():
                    await write(connection, table, rows[start : start + size])
            elapsed = time.perf_counter() - began
            cpu = time.process_time() - cpu_began
        finally:
            await connection.close()
        await _check_rows(table, args.n)
    return {"elapsed": elapsed, "cpu": cpu, "ops_per_s": args.n / elapsed}


async def pipeline(args: argparse.Namespace) -> Measurement:
    async def write(connection: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
        await connection.executemany(
            f'INSERT INTO "{table}" ("id", "name", "qty") VALUES ($1, $2, $3)', rows
        )

    return await _batches(args, "b15_pipeline", write)


async def copy(args: argparse.Namespace) -> Measurement:
    async def write(connection: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
        await connection.copy_records_to_table(table, records=rows, columns=["id", "name", "qty"])

    return await _batches(args, "b15_copy", write)


async def values(args: argparse.Namespace) -> Measurement:
    async def write(connection: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
        marks = ", ".join(f"(${3 * i + 1}, ${3 * i + 2}, ${3 * i + 3})" for i in range(len(rows)))
        flat = [value for row in rows for value in row]
        await connection.execute(
            f'INSERT INTO "{table}" ("id", "name", "qty") VALUES {marks}', *flat
        )

    return await _batches(args, "b15_values", write)


async def unnest(args: argparse.Namespace) -> Measurement:
    async def write(connection: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
        ids, names, qtys = (list(column) for column in zip(*rows, strict=True))
        await connection.execute(
            f'INSERT INTO "{table}" ("id", "name", "qty") '
            "SELECT * FROM unnest($1::varchar[], $2::text[], $3::bigint[])",
            ids,
            names,
            qtys,
        )

    return await _batches(args, "b15_unnest", write)


if __name__ == "__main__":
    case_main(
        {
            "direct": direct,
            "engine": engine,
            "get_direct": get_direct,
            "get_engine": get_engine,
            "get_pool": get_pool,
            "pipeline": pipeline,
            "copy": copy,
            "values": values,
            "unnest": unnest,
        },
        description=__doc__ or "",
        default_n=20_000,
    )
