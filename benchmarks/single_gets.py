"""B8 nothing to batch: get-by-id, one at a time, through the engine against the driver call
the adapter makes for that get. With one operation in flight there is nothing to group, so
this is the engine's own cost per operation on top of the driver's round trip.

Each case fills its own table or key prefix with :data:`ROWS` rows (before the clock
starts; removed afterwards), then reads them by id in a seeded shuffled order, ``--n``
times, each awaited before the next, after :data:`WARMUP` warm-up reads, and reports the
mean time per get.

``sqlite_direct``  aiosqlite ``execute_fetchall(SELECT ... WHERE id = ?)`` on one connection
                   (``row_factory = sqlite3.Row``, as the adapter's readers), WAL file.
``mysql_direct``   aiomysql ``SELECT ... WHERE id = %s`` on a connection acquired from a pool
                   (``maxsize = 10``, autocommit, utf8mb4: the adapter's pool settings).
``redis_direct``   redis.asyncio ``GET`` of the cache key (the adapter's default pool
                   settings), against the engine's ``cache_get``.
``redis_table_direct``  informational: ``HGETALL`` of a table row, against the engine's
                   table ``get`` by id, which the adapter runs as a Lua script (EVALSHA) that
                   also applies the filters: not the same command.
``*_engine``       ``engine.submit(Operation(action="get" or "cache_get", ...))``.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from benchmarks._harness import Measurement, case_main
from benchmarks._services import (
    MYSQL_SERVER,
    MYSQL_URL,
    REDIS_URL,
    mysql_table,
    redis_drop_prefix,
    unique_name,
)
from wf78_core import Engine, Operation

TABLE = "bench"
COLUMNS = {"name": "text", "qty": "int"}
ROWS = 1000
WARMUP = 200
SEED = 78
SQLITE_CREATE = (
    f'CREATE TABLE "{TABLE}" ("id" TEXT PRIMARY KEY, "name" TEXT, "qty" INTEGER, '
    '"upby" TEXT, "uptime" TEXT)'
)
# The SELECT the sql adapters build for get(where={"id": ...}).
SQLITE_SELECT = f'SELECT "id", "name", "qty", "upby", "uptime" FROM "{TABLE}" WHERE "id" = ?'
MYSQL_SELECT = "SELECT `id`, `name`, `qty`, `upby`, `uptime` FROM `{table}` WHERE `id` = %s"

Get = Callable[[str], Awaitable[None]]


def _ids() -> list[str]:
    return [f"r{i:06d}" for i in range(ROWS)]


def _rows() -> list[tuple[str, str, int]]:
    return [(row_id, f"row {i}", i) for i, row_id in enumerate(_ids())]


async def _time_gets(get: Get, n: int) -> Measurement:
    """``get`` each id in a shuffled order, ``n`` times in all, one at a time."""
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


def _engine_get(wf78: Engine, source: str, *, table: str | None = None) -> Get:
    """Get by id from ``table``, or ``cache_get`` of the key when there is no table."""

    async def get(row_id: str) -> None:
        if table is None:
            op = Operation(action="cache_get", key=row_id, data_source=source)
        else:
            op = Operation(action="get", table=table, where={"id": row_id}, data_source=source)
        value = (await wf78.submit(op)).value
        found = value["id"] if table is None else value[0]["id"]
        if found != row_id:
            raise RuntimeError(f"get {row_id!r} returned {value!r}")

    return get


# -- SQLite ---------------------------------------------------------------------------------


def _sqlite_file(folder: str) -> Path:
    path = Path(folder) / "gets.db"
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(SQLITE_CREATE)
        connection.executemany(
            f'INSERT INTO "{TABLE}" ("id", "name", "qty") VALUES (?, ?, ?)', _rows()
        )
    return path


async def sqlite_direct(args: argparse.Namespace) -> Measurement:
    import aiosqlite

    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        path = _sqlite_file(folder)
        async with aiosqlite.connect(path, isolation_level=None) as connection:
            connection.row_factory = sqlite3.Row

            async def get(row_id: str) -> None:
                rows = await connection.execute_fetchall(SQLITE_SELECT, (row_id,))
                if next(iter(rows))[0] != row_id:
                    raise RuntimeError(f"get {row_id!r} returned {rows!r}")

            return await _time_gets(get, args.n)


async def sqlite_engine(args: argparse.Namespace) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        path = _sqlite_file(folder)
        config = {
            "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{path}"}},
            "tables": {TABLE: {"columns": dict(COLUMNS)}},
        }
        async with Engine(config) as wf78:
            return await _time_gets(_engine_get(wf78, "db", table=TABLE), args.n)


# -- MySQL ----------------------------------------------------------------------------------


async def _mysql_fill(table: str) -> None:
    import aiomysql

    connection = await aiomysql.connect(**MYSQL_SERVER, autocommit=True)
    try:
        async with connection.cursor() as cursor:
            await cursor.executemany(
                f"INSERT INTO `{table}` (`id`, `name`, `qty`) VALUES (%s, %s, %s)", _rows()
            )
    finally:
        connection.close()


async def mysql_direct(args: argparse.Namespace) -> Measurement:
    import aiomysql

    async with mysql_table(unique_name("b8_direct"), COLUMNS) as table:
        await _mysql_fill(table)
        select = MYSQL_SELECT.format(table=table)
        pool = await aiomysql.create_pool(
            maxsize=10, autocommit=True, charset="utf8mb4", **MYSQL_SERVER
        )
        try:

            async def get(row_id: str) -> None:
                async with pool.acquire() as connection, connection.cursor() as cursor:
                    await cursor.execute(select, (row_id,))
                    rows = await cursor.fetchall()
                if rows[0][0] != row_id:
                    raise RuntimeError(f"get {row_id!r} returned {rows!r}")

            return await _time_gets(get, args.n)
        finally:
            pool.close()
            await pool.wait_closed()


async def mysql_engine(args: argparse.Namespace) -> Measurement:
    async with mysql_table(unique_name("b8_engine"), COLUMNS) as table:
        await _mysql_fill(table)
        config = {
            "datasources": {"db": {"type": "mysql", "url": MYSQL_URL}},
            "tables": {table: {"columns": dict(COLUMNS)}},
        }
        async with Engine(config) as wf78:
            return await _time_gets(_engine_get(wf78, "db", table=table), args.n)


# -- Redis ----------------------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode


def _redis_client() -> Any:
    from redis.asyncio import BlockingConnectionPool, Redis

    # The adapter's pool settings (RedisOptions defaults).
    pool = BlockingConnectionPool.from_url(
        REDIS_URL,
        max_connections=50,
        timeout=10.0,
        socket_timeout=5.0,
        socket_connect_timeout=5.0,
        health_check_interval=15.0,
    )
    return Redis.from_pool(pool)


async def _redis_cache_fill(prefix: str) -> None:
    client = _redis_client()
    try:
        pipe = client.pipeline(transaction=False)
        for row_id, name, qty in _rows():
            pipe.set(f"{prefix}:cache:{row_id}", _encode({"id": row_id, "name": name, "qty": qty}))
        await pipe.execute()
    finally:
        await client.aclose()


async def _with_prefix(
    name: str, case: Callable[[str], Awaitable[Measurement]], expected: int
) -> Measurement:
    prefix = unique_name(name)
    try:
        result = await case(prefix)
    finally:
        found = await redis_drop_prefix(prefix)
    if found != expected:
        raise RuntimeError(f"expected {expected} keys under {prefix}:, found {found}")
    return result


async def redis_direct(args: argparse.Namespace) -> Measurement:
    async def case(prefix: str) -> Measurement:
        await _redis_cache_fill(prefix)
        client = _redis_client()
        try:

            async def get(row_id: str) -> None:
                if await client.get(f"{prefix}:cache:{row_id}") is None:
                    raise RuntimeError(f"no key for {row_id!r}")

            return await _time_gets(get, args.n)
        finally:
            await client.aclose()

    return await _with_prefix("b8direct", case, ROWS)


async def redis_engine(args: argparse.Namespace) -> Measurement:
    async def case(prefix: str) -> Measurement:
        await _redis_cache_fill(prefix)
        config = {
            "datasources": {"cache": {"type": "redis", "url": REDIS_URL, "key_prefix": prefix}}
        }
        async with Engine(config) as wf78:
            return await _time_gets(_engine_get(wf78, "cache"), args.n)

    return await _with_prefix("b8engine", case, ROWS)


def _redis_table_config(prefix: str) -> dict[str, Any]:
    return {
        "datasources": {"cache": {"type": "redis", "url": REDIS_URL, "key_prefix": prefix}},
        "tables": {TABLE: {"columns": dict(COLUMNS)}},
    }


async def _redis_table_fill(wf78: Engine) -> None:
    rows = [{"id": row_id, "name": name, "qty": qty} for row_id, name, qty in _rows()]
    op = Operation(action="add_many", table=TABLE, rows=rows, data_source="cache")
    await wf78.submit(op)


async def redis_table_direct(args: argparse.Namespace) -> Measurement:
    async def case(prefix: str) -> Measurement:
        async with Engine(_redis_table_config(prefix)) as filler:
            await _redis_table_fill(filler)
        client = _redis_client()
        try:

            async def get(row_id: str) -> None:
                row = await client.hgetall(f"{prefix}:{{{TABLE}}}:row:{row_id}")
                if row.get(b"id") != row_id.encode():
                    raise RuntimeError(f"get {row_id!r} returned {row!r}")

            return await _time_gets(get, args.n)
        finally:
            await client.aclose()

    return await _with_prefix("b8tdirect", case, ROWS + 1)  # rows and the id set


async def redis_table_engine(args: argparse.Namespace) -> Measurement:
    async def case(prefix: str) -> Measurement:
        async with Engine(_redis_table_config(prefix)) as wf78:
            await _redis_table_fill(wf78)
            return await _time_gets(_engine_get(wf78, "cache", table=TABLE), args.n)

    return await _with_prefix("b8tengine", case, ROWS + 1)


if __name__ == "__main__":
    case_main(
        {
            "sqlite_direct": sqlite_direct,
            "sqlite_engine": sqlite_engine,
            "mysql_direct": mysql_direct,
            "mysql_engine": mysql_engine,
            "redis_direct": redis_direct,
            "redis_engine": redis_engine,
            "redis_table_direct": redis_table_direct,
            "redis_table_engine": redis_table_engine,
        },
        description=__doc__ or "",
        default_n=5_000,
    )
