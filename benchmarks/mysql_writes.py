"""B5 MySQL writes: single-row adds through the engine's ``mysql`` source (group commit)
against the same inserts made directly with aiomysql in autocommit mode on a pool of 10.

Both sides write to a fresh table in MariaDB's ``test`` database (created as the adapter
would, dropped afterwards), with the same INSERT statement and snowflake ids, and keep
``--in-flight`` writes going in the shape ``--shape`` names: ``burst`` (``asyncio.gather``
batches) or ``steady`` (a task per write, at most ``--in-flight`` at once under a semaphore);
``--latency`` (steady only) also reports each write's p50 and p99 latency.

Cases: ``direct`` (the baseline: ``aiomysql.create_pool(maxsize=10, autocommit=True)``,
each insert acquires a connection, runs its INSERT and so commits it) and ``engine``
(``engine.submit(add)``: one transaction per batch, identical INSERTs as one multi-row
INSERT).
"""

from __future__ import annotations

import argparse
from typing import Any

import aiomysql

from benchmarks._harness import Measurement, case_main, drive, measure, warmup_count
from benchmarks._services import MYSQL_SERVER, MYSQL_URL, mysql_count, mysql_table, unique_name
from wf78_core import Engine, Operation
from wf78_core.ids import snowflake_id

COLUMNS = {"name": "text", "qty": "int"}


async def _check_rows(table: str, expected: int) -> None:
    found = await mysql_count(table)
    if found != expected:
        raise RuntimeError(f"expected {expected} rows in {table}, found {found}")


async def direct(args: argparse.Namespace) -> Measurement:
    async with mysql_table(unique_name("b5_direct"), COLUMNS) as table:
        insert = f"INSERT INTO `{table}` (`id`, `name`, `qty`) VALUES (%s, %s, %s)"
        pool = await aiomysql.create_pool(
            maxsize=10, autocommit=True, charset="utf8mb4", **MYSQL_SERVER
        )
        try:

            async def start(i: int) -> None:
                async with pool.acquire() as connection, connection.cursor() as cursor:
                    await cursor.execute(insert, (snowflake_id(), f"row {i}", i))

            result = await measure(args, start)
        finally:
            pool.close()
            await pool.wait_closed()
        await _check_rows(table, args.n + warmup_count(args))
    return result


async def engine(args: argparse.Namespace) -> Measurement:
    async with mysql_table(unique_name("b5_engine"), COLUMNS) as table:
        config: dict[str, Any] = {
            "datasources": {"db": {"type": "mysql", "url": MYSQL_URL}},
            "tables": {table: {"columns": dict(COLUMNS)}},
        }
        async with Engine(config) as wf78:

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
            adapter = _adapter(wf78)
            transactions_before = adapter.transactions
            inserts_before = adapter.multi_row_inserts
            result = await measure(args, start, warmed=True)
            transactions = adapter.transactions - transactions_before
            inserts = adapter.multi_row_inserts - inserts_before
            if wf78.failed:
                raise RuntimeError(f"{wf78.failed} operations failed")
        await _check_rows(table, args.n + count)
    return {
        **result,
        "transactions": transactions,
        "multi_row_inserts": inserts,
        "writes_per_transaction": args.n / transactions if transactions > 0 else None,
    }


def _adapter(wf78: Engine) -> Any:
    # Informational only: the adapter as the engine's source pool holds it.
    return wf78.sources.named["db"].adapter


if __name__ == "__main__":
    case_main(
        {"direct": direct, "engine": engine},
        description=__doc__ or "",
        default_n=20_000,
    )
