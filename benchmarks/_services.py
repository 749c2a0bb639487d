"""The real servers the data-source benchmarks (B5-B8) use, and names no other run shares.

MariaDB at 127.0.0.1:3306 (user ``root``, database ``test``) and Redis at 127.0.0.1:6379, as
the test suite uses them. Every case works in its own table or key prefix, made unique by
process id and a random suffix, and removes it afterwards, so cases and test suites running
at the same time never see each other's data.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from wf78_core.config import load_config
from wf78_core.plugin.datasource import TableSchema

__all__ = [
    "MYSQL_SERVER",
    "MYSQL_URL",
    "REDIS_URL",
    "mysql_count",
    "mysql_table",
    "redis_drop_prefix",
    "table_schema",
    "unique_name",
]

MYSQL_SERVER: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 3306,
    "user": "root",
    "password": "",
    "db": "test",
}
MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


def unique_name(prefix: str) -> str:
    """``prefix`` plus this process's id and a random suffix: a plain identifier."""
    return f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"


def table_schema(name: str, columns: dict[str, str], owner: str | None = None) -> TableSchema:
    """The schema the engine builds for a table declared with ``columns`` (and ``owner``)."""
    config = load_config({"tables": {name: {"columns": dict(columns), "owner": owner}}})
    return TableSchema.from_config(name, config.tables[name])


@asynccontextmanager
async def mysql_table(
    name: str, columns: dict[str, str], owner: str | None = None
) -> AsyncIterator[str]:
    """Create table ``name`` as the mysql adapter would, and drop it afterwards."""
    import aiomysql

    from wf78_mysql.statements import MYSQL
    from wf78_sql import create_table_sql

    statements = create_table_sql(table_schema(name, columns, owner), MYSQL)
    connection = await aiomysql.connect(**MYSQL_SERVER, autocommit=True)
    try:
        async with connection.cursor() as cursor:
            for sql in statements:
                await cursor.execute(sql)
        yield name
    finally:
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(f"DROP TABLE IF EXISTS `{name}`")
        finally:
            connection.close()


async def mysql_count(name: str) -> int:
    import aiomysql

    connection = await aiomysql.connect(**MYSQL_SERVER, autocommit=True)
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(f"SELECT count(*) FROM `{name}`")
            (count,) = await cursor.fetchone()
    finally:
        connection.close()
    return int(count)


async def redis_drop_prefix(prefix: str) -> int:
    """Delete every key under ``prefix:`` and return how many there were."""
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                deleted += await client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await client.unlink(*batch)
    finally:
        await client.aclose()
    return deleted
