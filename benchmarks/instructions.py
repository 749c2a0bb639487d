"""Instructions per operation, counted by valgrind's callgrind: stable where time is not.

CPU speed here drifts by up to 2x, so time per operation moves between runs; the number of
instructions executed does not. Each case runs ``engine.submit`` of one operation kind,
``--n`` times (each its own task, 64 in flight in a steady window), in a fresh process under
``valgrind --tool=callgrind``, twice: with a small and a large ``n``. The difference of the two
totals divided by the difference of the ``n`` is the cost of one more operation, every thread
included (aiosqlite's, the interpreter's), start-up and shutdown cancelled out.

    python -m benchmarks.instructions                  # every case
    python -m benchmarks.instructions noop sqlite_add  # some of them

``noop``        ``Operation(action="noop")`` on the ``memory`` source: the engine alone.
``sqlite_add``  ``Operation(action="add")`` of one row on a ``sqlite`` source (WAL, FULL).
``redis_set``   ``Operation(action="cache_set")`` on a ``redis`` source (127.0.0.1:6379).
``pg_get``      ``Operation(action="get")`` by id on a ``postgres`` source (127.0.0.1:5432), one
                in flight, as B15get.
``direct_*``    the same work without the engine, for scale: a bare coroutine, an aiosqlite
                INSERT + COMMIT, a redis.asyncio SET, an asyncpg ``fetchrow`` on one
                connection, driven the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SMALL, LARGE = 1_000, 6_000
WINDOW = 64
REDIS_URL = "redis://127.0.0.1:6379/0"
CASES = (
    "noop",
    "direct_noop",
    "sqlite_add",
    "direct_sqlite_add",
    "redis_set",
    "direct_redis_set",
    "pg_get",
    "direct_pg_get",
)


async def _steady(one: Any, n: int, in_flight: int = WINDOW) -> None:
    window = asyncio.Semaphore(in_flight)
    tasks: set[asyncio.Task[None]] = set()

    async def run(i: int) -> None:
        try:
            await one(i)
        finally:
            window.release()

    for i in range(n):
        await window.acquire()
        task = asyncio.ensure_future(run(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*tasks)


async def _case(case: str, n: int, folder: str) -> None:
    from wf78_core import Engine, Operation

    if case == "direct_noop":

        async def noop(i: int) -> None:
            return None

        await _steady(noop, n)
        return
    if case == "direct_sqlite_add":
        import aiosqlite

        async with aiosqlite.connect(Path(folder) / "d.db") as db:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = FULL")
            await db.execute('CREATE TABLE t ("id" TEXT PRIMARY KEY, "name" TEXT, "qty" INTEGER)')
            await db.commit()
            lock = asyncio.Lock()

            async def insert(i: int) -> None:
                async with lock:
                    await db.execute("INSERT INTO t VALUES (?, ?, ?)", (str(i), "x", i))
                    await db.commit()

            await _steady(insert, n)
        return
    if case == "direct_redis_set":
        from redis.asyncio import BlockingConnectionPool, Redis

        client = Redis(
            connection_pool=BlockingConnectionPool.from_url(REDIS_URL, max_connections=100)
        )
        prefix = f"wf78insn:{os.getpid()}"
        try:

            async def put(i: int) -> None:
                await client.set(f"{prefix}:{i}", b"v", ex=60)

            await _steady(put, n)
        finally:
            await client.aclose()
        return
    if case in ("pg_get", "direct_pg_get"):
        await _pg_get(case, n)
        return
    # WF78_SHARED_READS=0: the engine without shared reads, to see what they cost a write.
    shared = os.environ.get("WF78_SHARED_READS", "1") == "1"
    config: dict[str, Any] = {
        "engine": {"journal": "off", "drain_timeout": 5.0, "shared_reads": shared}
    }
    if case == "noop":
        config["datasources"] = {"mem": {"type": "memory"}}
        make = lambda i: Operation(action="noop", data_source="mem")  # noqa: E731
    elif case == "sqlite_add":
        config["datasources"] = {"db": {"type": "sqlite", "url": f"sqlite:///{folder}/e.db"}}
        config["tables"] = {"t": {"columns": {"name": "text", "qty": "int"}, "data_source": "db"}}
        make = lambda i: Operation(action="add", table="t", values={"name": "x", "qty": i})  # noqa: E731
    else:
        prefix = f"wf78insn{os.getpid()}"
        config["datasources"] = {"r": {"type": "redis", "url": REDIS_URL, "key_prefix": prefix}}
        make = lambda i: Operation(  # noqa: E731
            action="cache_set", key=f"k{i}", value="v", ttl=60, data_source="r"
        )
    async with Engine(config) as engine:

        async def submit(i: int) -> None:
            await engine.submit(make(i))

        await _steady(submit, n)


async def _pg_get(case: str, n: int) -> None:
    """Gets by id on PostgreSQL one at a time (B15get's shape): ``engine.submit(get)``, or
    asyncpg's ``fetchrow`` on one connection (B15get's baseline)."""
    import asyncpg

    from benchmarks.postgres_writes import PG_URL, ROWS, _config, _fill, _select, pg_table
    from wf78_core import Engine, Operation

    ids = [f"r{i:06d}" for i in range(ROWS)]
    async with pg_table("insn_gets") as table:
        await _fill(table)
        if case == "direct_pg_get":
            select = _select(table)
            connection = await asyncpg.connect(PG_URL, server_settings={"timezone": "UTC"})
            turn = asyncio.Lock()
            try:

                async def fetch(i: int) -> None:
                    async with turn:
                        await connection.fetchrow(select, ids[i % ROWS])

                await _steady(fetch, n, 1)
            finally:
                await connection.close()
            return
        async with Engine(_config(table)) as engine:

            async def get(i: int) -> None:
                where = {"id": ids[i % ROWS]}
                op = Operation(action="get", table=table, where=where, data_source="db")
                await engine.submit(op)

            await _steady(get, n, 1)


def _run_child(case: str, n: int) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
    with tempfile.TemporaryDirectory(prefix="wf78-insn-") as folder:
        asyncio.run(_case(case, n, folder))


def _count(case: str, n: int) -> int:
    """Instructions of one child run of ``case`` with ``n`` operations, every thread."""
    with tempfile.TemporaryDirectory(prefix="wf78-cg-") as folder:
        out = Path(folder) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "--separate-threads=no",
                sys.executable,
                "-m",
                "benchmarks.instructions",
                "--child",
                case,
                "--n",
                str(n),
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        text = out.read_text(errors="replace")
    match = re.search(r"^summary:\s+(\d+)", text, re.MULTILINE) or re.search(
        r"^totals:\s+(\d+)", text, re.MULTILINE
    )
    if match is None:
        raise SystemExit(f"{case}: no total in callgrind's output")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cases", nargs="*", help=f"some of {', '.join(CASES)} (default: all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=SMALL, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _run_child(args.cases[0], args.n)
        return 0
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    for case in args.cases or CASES:
        small, large = _count(case, SMALL), _count(case, LARGE)
        per_op = (large - small) / (LARGE - SMALL)
        print(f"{case:<20} {per_op:>12,.0f} instructions per operation", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
