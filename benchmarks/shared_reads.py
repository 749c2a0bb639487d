"""B13 shared reads: many concurrent gets of a few hot rows, on MariaDB.

``--n`` gets (20,000), each its own task, at most ``--in-flight`` (1,000) in flight under a
semaphore (a steady window: a new get starts as soon as one ends), spread round-robin over
:data:`HOT` hot rows of a :data:`ROWS`-row table owned by ``cid = "bench"``. Every get
checks its row.

``direct``  aiomysql ``SELECT ... WHERE cid = %s AND id = %s`` (the owner filter every
            wf78 read carries) on a connection acquired from a pool of the adapter's
            settings (``maxsize = 10``, autocommit, utf8mb4), the row as a dict.
``engine``  ``engine.submit(Operation(action="get", where={"cid", "id"}))`` on a ``mysql``
            source: identical reads in flight run once (``[engine] shared_reads``).
``http``    ``GET /api/bench/<table>/get?cols=id&pars=<id>`` through ``Wf78Middleware`` in
            process (``middleware_passthrough.AsgiDriver``), bearer token of ``cid = bench``.
``http_direct``  the baseline of ``http``: a hand-written Starlette endpoint
            ``GET /items/get?id=<id>`` (token looked up in a dict, ``direct``'s query on the
            same pool settings, the row as JSON), driven the same way.
``engine_unshared``  informational: ``engine`` with ``shared_reads = false``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.applications import Starlette

from benchmarks._harness import Measurement, case_main
from benchmarks._services import MYSQL_SERVER, MYSQL_URL, mysql_table, unique_name
from benchmarks.middleware_passthrough import AUTH_HEADERS, CID, TOKEN, AsgiDriver

COLUMNS = {"name": "text", "qty": "int"}
ROWS = 1000
HOT = 10
WARMUP = 1000
SELECT = (
    "SELECT `id`, `name`, `qty`, `cid`, `upby`, `uptime` FROM `{table}` "
    "WHERE `cid` = %s AND `id` = %s"
)

Get = Callable[[str], Awaitable[None]]


def _ids() -> list[str]:
    return [str(10**17 + i) for i in range(ROWS)]


def _hot() -> list[str]:
    ids = _ids()
    return [ids[i * (ROWS // HOT)] for i in range(HOT)]


async def _fill(table: str) -> None:
    import aiomysql

    connection = await aiomysql.connect(**MYSQL_SERVER, autocommit=True)
    try:
        async with connection.cursor() as cursor:
            await cursor.executemany(
                f"INSERT INTO `{table}` (`id`, `name`, `qty`, `cid`) VALUES (%s, %s, %s, %s)",
                [(row_id, f"row {i}", i, CID) for i, row_id in enumerate(_ids())],
            )
    finally:
        connection.close()


async def _steady(get: Get, n: int, in_flight: int) -> Measurement:
    """``n`` gets, each its own task, at most ``in_flight`` at once; warmed up first."""
    hot = _hot()
    window = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        try:
            await get(hot[i % HOT])
        finally:
            window.release()

    async def run(count: int) -> None:
        tasks = set()
        for i in range(count):
            await window.acquire()
            task = asyncio.ensure_future(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)

    await run(WARMUP)
    began, cpu_began = time.perf_counter(), time.process_time()
    await run(n)
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    return {
        "elapsed": elapsed,
        "ops_per_s": n / elapsed,
        "cpu_per_op_us": cpu / n * 1e6,
        "in_flight": in_flight,
        "hot_rows": HOT,
    }


def _check(row_id: str, rows: Any) -> None:
    if not rows or rows[0]["id"] != row_id or rows[0]["cid"] != CID:
        raise RuntimeError(f"get {row_id}: {rows!r:.200}")


async def direct(args: argparse.Namespace) -> Measurement:
    import aiomysql

    async with mysql_table(unique_name("b13"), COLUMNS, "cid") as table:
        await _fill(table)
        pool = await aiomysql.create_pool(
            **MYSQL_SERVER, minsize=1, maxsize=10, autocommit=True, charset="utf8mb4"
        )
        sql = SELECT.format(table=table)
        try:

            async def get(row_id: str) -> None:
                async with pool.acquire() as connection, connection.cursor() as cursor:
                    await cursor.execute(sql, (CID, row_id))
                    names = [column[0] for column in cursor.description]
                    rows = [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]
                _check(row_id, rows)

            return await _steady(get, args.n, args.in_flight)
        finally:
            pool.close()
            await pool.wait_closed()


def _config(table: str, *, shared: bool = True) -> dict[str, Any]:
    return {
        "engine": {"shared_reads": shared, "journal": "off"},
        "datasources": {"db": {"type": "mysql", "url": MYSQL_URL, "create_tables": False}},
        "tables": {
            table: {"columns": COLUMNS, "owner": "cid", "route": "api/bench", "data_source": "db"}
        },
        "auth": {"tokens": {TOKEN: {"uid": "u-bench", "cid": CID, "uname": "bench"}}},
    }


async def _engine(args: argparse.Namespace, *, shared: bool) -> Measurement:
    from wf78_core import Engine, Operation

    async with mysql_table(unique_name("b13"), COLUMNS, "cid") as table:
        await _fill(table)
        async with Engine(_config(table, shared=shared)) as engine:

            async def get(row_id: str) -> None:
                op = Operation(
                    action="get", table=table, where={"cid": CID, "id": row_id}, data_source="db"
                )
                _check(row_id, (await engine.submit(op)).value)

            result = await _steady(get, args.n, args.in_flight)
            result["reads_shared"] = engine.stats().reads_shared
            return result


async def engine(args: argparse.Namespace) -> Measurement:
    return await _engine(args, shared=True)


async def engine_unshared(args: argparse.Namespace) -> Measurement:
    return await _engine(args, shared=False)


async def http(args: argparse.Namespace) -> Measurement:
    from wf78_core import Wf78Middleware

    async with mysql_table(unique_name("b13"), COLUMNS, "cid") as table:
        await _fill(table)
        app = Wf78Middleware(Starlette(), config=_config(table))
        path = f"/api/bench/{table}/get"
        async with AsgiDriver(app) as driver:

            async def get(row_id: str) -> None:
                status, body = await driver.request(
                    "GET", path, f"cols=id&pars={row_id}".encode(), AUTH_HEADERS
                )
                if status != 200:
                    raise RuntimeError(f"get {row_id}: {status} {body[:200]!r}")
                _check(row_id, msgspec.json.decode(body)["back"])

            result = await _steady(get, args.n, args.in_flight)
            result["reads_shared"] = app.engine.stats().reads_shared
            return result


async def http_direct(args: argparse.Namespace) -> Measurement:
    import contextlib

    import aiomysql
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    tokens = {TOKEN: CID}
    async with mysql_table(unique_name("b13"), COLUMNS, "cid") as table:
        await _fill(table)
        sql = SELECT.format(table=table)
        pools: list[Any] = []

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> Any:
            pool = await aiomysql.create_pool(
                **MYSQL_SERVER, minsize=1, maxsize=10, autocommit=True, charset="utf8mb4"
            )
            pools.append(pool)
            try:
                yield
            finally:
                pool.close()
                await pool.wait_closed()

        async def get(request: Request) -> Response:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            cid = tokens.get(token) if scheme.lower() == "bearer" else None
            if cid is None:
                return JSONResponse({"error": "who are you"}, status_code=401)
            async with pools[0].acquire() as connection, connection.cursor() as cursor:
                await cursor.execute(sql, (cid, request.query_params["id"]))
                names = [column[0] for column in cursor.description]
                rows = [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]
            for row in rows:
                row["uptime"] = row["uptime"] and row["uptime"].isoformat()
            return JSONResponse(rows)

        app = Starlette(routes=[Route("/items/get", get)], lifespan=lifespan)
        async with AsgiDriver(app) as driver:

            async def one(row_id: str) -> None:
                status, body = await driver.request(
                    "GET", "/items/get", f"id={row_id}".encode(), AUTH_HEADERS
                )
                if status != 200:
                    raise RuntimeError(f"get {row_id}: {status} {body[:200]!r}")
                _check(row_id, msgspec.json.decode(body))

            return await _steady(one, args.n, args.in_flight)


CASES = {
    "direct": direct,
    "engine": engine,
    "http_direct": http_direct,
    "http": http,
    "engine_unshared": engine_unshared,
}

if __name__ == "__main__":
    case_main(CASES, description=__doc__ or "", default_n=20_000)
