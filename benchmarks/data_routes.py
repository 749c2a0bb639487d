"""B10 data routes: the koa78 routes ``Wf78Middleware`` serves, against hand-written
Starlette endpoints doing the same with aiosqlite.

Both sides are driven in process with ``middleware_passthrough.AsgiDriver`` (the app
started through its lifespan; an ``http`` scope and ``receive``/``send`` per request), every
request with ``Authorization: Bearer <token>``. The wf78 side is ``Wf78Middleware`` around an
empty Starlette app, configured with a ``sqlite`` source (the adapter's defaults: WAL,
``synchronous = FULL``), the table ``items`` (``name text``, ``qty int``, owner ``cid``,
route ``api/bench``) and the token, whose identity has ``cid = "bench"``. The hand-written
side looks the token up in a dict to get the ``cid``, and works on one shared aiosqlite
connection opened in its lifespan, on a table made with the DDL the adapter generates.

``get_direct``  ``GET /items/get?id=<id>``: ``SELECT "id", "name", "qty", "cid", "upby",
                "uptime" FROM "items" WHERE "cid" = ? AND "id" = ?`` (the owner filter the
                route applies too) with ``execute_fetchall``, the row as a JSON object.
``get_wf78``    ``GET /api/bench/items/get?cols=id&pars=<id>`` (koa78's equality filter on
                ``id``). Both read :data:`ROWS` rows of a WAL file in a seeded shuffled order,
                one request at a time (B10a).
``add_direct``  ``POST /items/add`` with ``{"name": ..., "qty": ...}``: a snowflake id, then
                ``execute(INSERT)`` + ``commit()`` under an ``asyncio.Lock``, with SQLite's
                defaults (no PRAGMA: rollback journal, ``synchronous = FULL``): B2's primary
                baseline, in a hand-written endpoint.
``add_wf78``    ``POST /api/bench/items/mAdd`` with ``{"pars": [name, qty]}``: the engine's
                ``add`` (WAL, ``synchronous = FULL``, group commit). Both sides run
                ``--n`` requests from ``--in-flight`` workers (64), each sending its next
                request when the last one answered (B10b), and count the rows afterwards.
``add_direct_wal``  informational: ``add_direct`` with the engine's pragmas (WAL + FULL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from benchmarks._harness import Measurement, case_main
from benchmarks.middleware_passthrough import (
    AUTH_HEADERS,
    CID,
    TOKEN,
    AsgiDriver,
    time_requests,
    wf78_config,
)
from wf78_core.ids import snowflake_id

ROWS = 1000
SEED = 78
# The DDL the sqlite adapter generates for wf78_config's ``items`` table.
CREATE = (
    'CREATE TABLE IF NOT EXISTS "items" ("id" TEXT NOT NULL, "name" TEXT, "qty" INTEGER, '
    '"cid" TEXT NOT NULL DEFAULT \'\', "upby" TEXT, "uptime" TEXT, PRIMARY KEY ("cid", "id"))',
)
SELECT = (
    'SELECT "id", "name", "qty", "cid", "upby", "uptime" FROM "items" WHERE "cid" = ? AND "id" = ?'
)
INSERT = (
    'INSERT INTO "items" ("id", "name", "qty", "cid", "upby", "uptime") VALUES (?, ?, ?, ?, ?, ?)'
)
# The hand-written app's own token table: token -> (uid, cid).
TOKENS = {TOKEN: ("u-bench", CID)}
JSON_HEADERS = [*AUTH_HEADERS, (b"content-type", b"application/json")]

_encode = msgspec.json.Encoder().encode


def _ids() -> list[str]:
    return [str(10**17 + i) for i in range(ROWS)]


def _fill(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode = WAL")
        for statement in CREATE:
            connection.execute(statement)
        connection.executemany(
            'INSERT INTO "items" ("id", "name", "qty", "cid") VALUES (?, ?, ?, ?)',
            [(row_id, f"row {i}", i, CID) for i, row_id in enumerate(_ids())],
        )


def _count(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        (count,) = connection.execute('SELECT count(*) FROM "items"').fetchone()
    return int(count)


# -- the hand-written app ---------------------------------------------------------------------


def _caller(request: Request) -> tuple[str, str] | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return TOKENS.get(token) if scheme.lower() == "bearer" else None


def direct_app(path: Path, *, pragmas: tuple[str, ...] = ()) -> Starlette:
    """Starlette with ``/items/get`` and ``/items/add`` on one aiosqlite connection."""
    import aiosqlite

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Python's default isolation level: the INSERT opens a transaction, commit() ends it.
        async with aiosqlite.connect(path) as connection:
            connection.row_factory = sqlite3.Row
            for pragma in pragmas:
                await connection.execute(f"PRAGMA {pragma}")
            for statement in CREATE:
                await connection.execute(statement)
            await connection.commit()
            app.state.db = connection
            app.state.lock = asyncio.Lock()
            yield

    async def get(request: Request) -> JSONResponse:
        caller = _caller(request)
        if caller is None:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        row_id = request.query_params.get("id")
        rows = await request.app.state.db.execute_fetchall(SELECT, (caller[1], row_id))
        return JSONResponse([dict(row) for row in rows])

    async def add(request: Request) -> JSONResponse:
        caller = _caller(request)
        if caller is None:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        values = await request.json()
        row_id = snowflake_id()
        uptime = datetime.now(UTC).isoformat()
        state = request.app.state
        async with state.lock:
            await state.db.execute(
                INSERT, (row_id, values["name"], values["qty"], caller[1], caller[0], uptime)
            )
            await state.db.commit()
        return JSONResponse({"id": row_id})

    return Starlette(
        routes=[Route("/items/get", get), Route("/items/add", add, methods=["POST"])],
        lifespan=lifespan,
    )


def wf78_app(path: Path) -> Any:
    from wf78_core import Wf78Middleware

    return Wf78Middleware(Starlette(), config=wf78_config(path))


# -- B10a: get by id, one at a time --------------------------------------------------------------


async def _gets(app: Any, n: int, request_for: Any) -> Measurement:
    order = _ids()
    random.Random(SEED).shuffle(order)
    async with AsgiDriver(app) as driver:

        async def one(i: int) -> None:
            row_id = order[i % ROWS]
            path, query = request_for(row_id)
            status, body = await driver.request("GET", path, query, AUTH_HEADERS)
            decoded = msgspec.json.decode(body) if status == 200 else None
            rows = decoded["back"] if isinstance(decoded, dict) else decoded
            if status != 200 or not rows or rows[0]["id"] != row_id:
                raise RuntimeError(f"get {row_id}: {status} {body[:200]!r}")

        return await time_requests(one, n, 1, warmup=200)


async def get_direct(args: argparse.Namespace) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        path = Path(folder) / "b10.db"
        _fill(path)
        return await _gets(
            direct_app(path), args.n, lambda row_id: ("/items/get", f"id={row_id}".encode())
        )


async def get_wf78(args: argparse.Namespace) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        path = Path(folder) / "b10.db"
        _fill(path)
        return await _gets(
            wf78_app(path),
            args.n,
            lambda row_id: ("/api/bench/items/get", f"cols=id&pars={row_id}".encode()),
        )


# -- B10b: mAdd, 64 in flight -------------------------------------------------------------------


async def _adds(app: Any, path: Path, n: int, workers: int, route: str, wf78: bool) -> Measurement:
    warmup = 200
    async with AsgiDriver(app) as driver:

        async def one(i: int) -> None:
            name, qty = f"row {i}", i
            body = _encode({"pars": [name, qty]} if wf78 else {"name": name, "qty": qty})
            status, answer = await driver.request("POST", route, b"", JSON_HEADERS, body)
            if status != 200:
                raise RuntimeError(f"add {i}: {status} {answer[:200]!r}")

        result = await time_requests(one, n, workers, warmup=warmup)
    found = _count(path)
    if found != n + warmup:
        raise RuntimeError(f"expected {n + warmup} rows, found {found}")
    with sqlite3.connect(path) as connection:
        result["journal_mode"] = connection.execute("PRAGMA journal_mode").fetchone()[0]
    return result


async def add_direct(args: argparse.Namespace) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        path = Path(folder) / "b10.db"
        return await _adds(direct_app(path), path, args.n, args.in_flight, "/items/add", False)


async def add_direct_wal(args: argparse.Namespace) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        path = Path(folder) / "b10.db"
        app = direct_app(path, pragmas=("journal_mode = WAL", "synchronous = FULL"))
        return await _adds(app, path, args.n, args.in_flight, "/items/add", False)


async def add_wf78(args: argparse.Namespace) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        path = Path(folder) / "b10.db"
        return await _adds(
            wf78_app(path), path, args.n, args.in_flight, "/api/bench/items/mAdd", True
        )


CASES = {
    "get_direct": get_direct,
    "get_wf78": get_wf78,
    "add_direct": add_direct,
    "add_direct_wal": add_direct_wal,
    "add_wf78": add_wf78,
}

if __name__ == "__main__":
    case_main(CASES, description=__doc__ or "", default_n=5_000)
