"""B2 SQLite writes: single-row adds through the engine's ``sqlite`` source (group commit)
against the same inserts made directly with aiosqlite, one commit each.

Every case writes to a fresh database file in a temporary directory, into the table the
adapter creates for ``bench``, with the same snowflake ids, and keeps ``--in-flight`` writes
going in the shape ``--shape`` names: ``burst`` (``asyncio.gather`` batches) or ``steady``
(a task per write, at most ``--in-flight`` at once under a semaphore); ``--latency`` (steady
only) also reports each write's p50 and p99 latency.

Cases:

``direct``            the primary baseline, the issue's wording taken literally: aiosqlite
                      with SQLite's own defaults (no PRAGMA: rollback journal,
                      ``synchronous = FULL``), one shared connection, ``execute(INSERT)`` then
                      ``commit()`` per row under an ``asyncio.Lock`` (without it concurrent
                      tasks would share transactions: not one commit each).
``engine``            ``engine.submit(add)`` on a ``sqlite`` source with the adapter's defaults
                      (WAL, ``synchronous = FULL``): group commit.
``direct_wal_full``   the same execute + commit under the lock, with the engine's pragmas
                      (WAL, ``synchronous = FULL``): informational in the burst shape, the
                      baseline of the steady shape and of the latency comparison.
``direct_wal_full_autocommit``    informational: WAL + FULL, autocommit mode, so each INSERT
                      is its own transaction in one thread hop.
``direct_wal_normal_autocommit``  informational: WAL + NORMAL, autocommit: the fastest
                      baseline, not durable on power loss ...
``engine_normal``     ... compared with the engine at ``synchronous = "NORMAL"``.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from benchmarks._harness import Measurement, case_main, drive, measure, warmup_count
from wf78_core import Engine, Operation
from wf78_core.ids import snowflake_id

TABLE = "bench"
COLUMNS = {"name": "text", "qty": "int"}
# The table the adapter creates for ``COLUMNS``: the declared columns and the base ones.
CREATE = (
    f'CREATE TABLE "{TABLE}" ("id" TEXT PRIMARY KEY, "name" TEXT, "qty" INTEGER, '
    '"upby" TEXT, "uptime" TEXT)'
)
INSERT = f'INSERT INTO "{TABLE}" ("id", "name", "qty") VALUES (?, ?, ?)'

Mode = Literal["commit", "autocommit"]


def _count_rows(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        (count,) = connection.execute(f'SELECT count(*) FROM "{TABLE}"').fetchone()
    return int(count)


def _check_rows(path: Path, expected: int) -> None:
    found = _count_rows(path)
    if found != expected:
        raise RuntimeError(f"expected {expected} rows in {path}, found {found}")


async def _pragma(connection: aiosqlite.Connection, name: str) -> str:
    rows = list(await connection.execute_fetchall(f"PRAGMA {name}"))
    return str(rows[0][0])


async def direct(
    args: argparse.Namespace,
    *,
    journal_mode: str | None = None,
    synchronous: str | None = None,
    mode: Mode = "commit",
) -> Measurement:
    """Insert every row with its own commit; no PRAGMA at all unless given."""
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        path = Path(folder) / "direct.db"
        # "commit": Python's default isolation level, so the INSERT opens a transaction that
        # commit() ends. "autocommit": no implicit transaction, each INSERT commits alone.
        isolation: str | None = "" if mode == "commit" else None
        async with aiosqlite.connect(path, isolation_level=isolation) as connection:
            if journal_mode is not None:
                await connection.execute(f"PRAGMA journal_mode = {journal_mode}")
            if synchronous is not None:
                await connection.execute(f"PRAGMA synchronous = {synchronous}")
            await connection.execute(CREATE)
            await connection.commit()
            settings = {
                "journal_mode": await _pragma(connection, "journal_mode"),
                # 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA
                "synchronous": await _pragma(connection, "synchronous"),
            }
            lock = asyncio.Lock()

            async def commit_each(i: int) -> None:
                async with lock:
                    await connection.execute(INSERT, (snowflake_id(), f"row {i}", i))
                    await connection.commit()

            async def autocommit(i: int) -> None:
                await connection.execute(INSERT, (snowflake_id(), f"row {i}", i))

            start = commit_each if mode == "commit" else autocommit
            result = await measure(args, start)
        _check_rows(path, args.n + warmup_count(args))
    return {**result, **settings}


async def engine(args: argparse.Namespace, synchronous: str | None = None) -> Measurement:
    """``engine.submit(add)``; ``synchronous`` None keeps the adapter's default."""
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        path = Path(folder) / "engine.db"
        source: dict[str, Any] = {"type": "sqlite", "url": f"sqlite:///{path}"}
        if synchronous is not None:
            source["synchronous"] = synchronous
        config: dict[str, Any] = {
            "datasources": {"db": source},
            "tables": {TABLE: {"columns": dict(COLUMNS)}},
        }
        async with Engine(config) as wf78:

            async def start(i: int) -> object:
                op = Operation(
                    action="add",
                    table=TABLE,
                    values={"name": f"row {i}", "qty": i},
                    data_source="db",
                )
                return await wf78.submit(op)

            count = warmup_count(args)
            await drive(args, start, count, first=-count)
            transactions_before = _transactions(wf78)
            result = await measure(args, start, warmed=True)
            transactions = _transactions(wf78) - transactions_before
            adapter = _adapter(wf78)
            used = getattr(getattr(adapter, "options", None), "synchronous", None)
            if wf78.failed:
                raise RuntimeError(f"{wf78.failed} operations failed")
        _check_rows(path, args.n + count)
    return {
        **result,
        "synchronous": used,
        "transactions": transactions,
        "writes_per_transaction": args.n / transactions if transactions > 0 else None,
    }


def _adapter(wf78: Engine) -> Any:
    # Informational only: the adapter as the engine's source pool holds it.
    source = wf78.sources.get("db")
    return None if source is None else source.adapter


def _transactions(wf78: Engine) -> int:
    """Committed write transactions of the ``db`` source, -1 if it does not say."""
    return int(getattr(_adapter(wf78), "transactions", -1))


if __name__ == "__main__":
    case_main(
        {
            "direct": direct,
            "engine": engine,
            "direct_wal_full": partial(direct, journal_mode="WAL", synchronous="FULL"),
            "direct_wal_full_autocommit": partial(
                direct, journal_mode="WAL", synchronous="FULL", mode="autocommit"
            ),
            "direct_wal_normal_autocommit": partial(
                direct, journal_mode="WAL", synchronous="NORMAL", mode="autocommit"
            ),
            "engine_normal": partial(engine, synchronous="NORMAL"),
        },
        description=__doc__ or "",
        default_n=20_000,
    )
