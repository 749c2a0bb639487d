"""B14: wf78's koa78 data routes against what users pick instead, FastAPI + SQLAlchemy 2.0.

The same two tables, ``items`` (``name text``, ``qty int``, ``price float``) and ``logs``
(``level text``, ``message text``), each row owned by a tenant (``cid``), served over HTTP by

``fastapi``  ``benchmarks/_fastapi_app.py``: FastAPI with SQLAlchemy 2.0 async, written the
             way the two projects' docs teach (its docstring says how); ``POST
             /api/bench/items/`` with ``{"name", "qty", "price"}`` answers 201 and the row,
             ``GET /api/bench/items/{id}`` the row (404 if missing or another tenant's).
``wf78``     ``Wf78Middleware`` around an empty Starlette app (:func:`wf78_app`), the two
             tables declared with ``owner = "cid"`` and ``route = "api/bench"`` on a ``sqlite``
             or ``mysql`` source with the adapters' defaults: ``POST
             /api/bench/items/mAdd`` with ``{"pars": [name, qty, price]}``, ``GET
             /api/bench/items/get?cols=id&pars=<id>``.

Both under uvicorn in a subprocess on a free loopback port: one worker, ``--loop asyncio
--http h11`` for both (uvloop and httptools are not in the lock), access log off. Both know
the same bearer token, whose tenant is ``cid = "bench"``; every request carries it. The
database is the same for both: a fresh SQLite file in WAL mode with ``synchronous = FULL``
(the sqlite adapter's default; the FastAPI app sets the two PRAGMAs in a ``connect`` event),
or MariaDB at 127.0.0.1:3306 (database ``test``) with at most 10 connections each side.

A case is ``<side>_<store>_<workload>``, e.g. ``wf78_mysql_mix``; ``--n`` is the measured
seconds and ``--in-flight`` the connections (64). It starts the server, fills each table
with :data:`ROWS` rows of the tenant (plain SQL from this process, after the app made its
tables), warms up with the workload for :func:`warmup_seconds`, then drives it with ``wrk``
(``-t1 -c64``; a generated Lua script picks each request: :func:`lua_script`) for ``--n``
seconds. Workloads: ``insert`` (every request an insert, into either table at random),
``read`` (every request a read by id of a filled row of either table, at random), ``mix``
(each request a write with probability 0.2, else a read). Afterwards it stops the server
and checks the work: every answer the expected status and shape (a read found its row),
no socket error, and the rows added between the fill and the end equal to the inserts
answered (within the inserts still in flight when wrk stopped). An answer of 5xx is not a
served request: it is counted (``server_errors``, with the last exception of the server's
log in ``server_error``; uvicorn closes the connection after it, which wrk counts as a read
error) and left out of requests/s; any other unexpected answer fails the case. Tables of
MariaDB are dropped at the end. The result has requests/s, the latency p50/p99 (wrk's),
and the CPU seconds the server and wrk spent, per request and as a share of the run (a
server near 1.0 of a core is what limits; a wrk far below it is not).

``wrk`` comes from the distribution (``apt-get install -y wrk``); without it the cases fall
back to an httpx ``AsyncClient`` with 64 workers, which itself needs a large part of a core
(the result's ``client`` says which).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from starlette.applications import Starlette

from benchmarks._harness import Measurement, case_main
from benchmarks._services import MYSQL_SERVER, MYSQL_URL, unique_name
from benchmarks.run import case_environment

ROWS = 1000
TOKEN = "bench-token-b14"
CID = "bench"
SEED = 14
TABLES: dict[str, dict[str, str]] = {
    "items": {"name": "text", "qty": "int", "price": "float"},
    "logs": {"level": "text", "message": "text"},
}
# Each request is a write with this probability.
WORKLOADS = {"insert": 1.0, "read": 0.0, "mix": 0.2}
STORES = ("sqlite", "mysql", "postgres")
# PostgreSQL (issue 16): the same server for both sides, user postgres, database test.
PG_SERVER = "postgres@127.0.0.1:5432/test"
SIDES = ("fastapi", "wf78")
CONFIG_ENV = "B14_WF78_CONFIG"
START_SECONDS = 30.0
STOP_SECONDS = 30.0
WRK_THREADS = 1


def warmup_seconds(seconds: int) -> int:
    """Warm-up before the clock: 2 s for a 10 s run, 1 s for a short one."""
    return max(1, min(3, seconds // 4))


# -- the wf78 side ------------------------------------------------------------------------------


def wf78_config(url: str, prefix: str, journal: str) -> dict[str, Any]:
    """``Wf78Middleware``'s configuration: the two tables, the token, one SQL source."""
    kind = url.split(":", 1)[0].replace("postgresql", "postgres")
    source: dict[str, Any] = {"type": kind, "url": url}
    return {
        "engine": {"journal": journal},
        "datasources": {"db": source},
        "tables": {
            f"{prefix}{name}": {
                "columns": dict(columns),
                "owner": "cid",
                "route": "api/bench",
                "data_source": "db",
            }
            for name, columns in TABLES.items()
        },
        "auth": {"tokens": {TOKEN: {"uid": "u-bench", "cid": CID, "uname": "bench"}}},
    }


def wf78_app() -> Any:
    """uvicorn's factory for the wf78 side: the configuration comes in ``B14_WF78_CONFIG``."""
    from wf78_core import Wf78Middleware

    return Wf78Middleware(Starlette(), config=json.loads(os.environ[CONFIG_ENV]))


# -- what each side answers and is asked ----------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """A POST: ``prefix + <counter> + suffix`` is its body."""

    path: str
    prefix: str
    suffix: str


@dataclass(frozen=True)
class Shape:
    """How a side's routes look to the load generator."""

    read_paths: list[str]
    writes: list[Write]
    write_status: int
    write_mark: str  # in every write's answer
    read_status: int
    read_mark: str  # in every read's answer that found its row


def wf78_shape(prefix: str, ids: dict[str, list[str]]) -> Shape:
    base = "/api/bench/"
    return Shape(
        read_paths=[
            f"{base}{prefix}{name}/get?cols=id&pars={row_id}"
            for name in TABLES
            for row_id in ids[name]
        ],
        writes=[
            Write(f"{base}{prefix}items/mAdd", '{"pars":["item ', '",3,9.5]}'),
            Write(f"{base}{prefix}logs/mAdd", '{"pars":["info","log line ', '"]}'),
        ],
        write_status=200,
        write_mark='"back":"',
        read_status=200,
        read_mark='"back":[{"id":',
    )


def fastapi_shape(ids: dict[str, list[str]]) -> Shape:
    return Shape(
        read_paths=[f"/api/bench/{name}/{row_id}" for name in TABLES for row_id in ids[name]],
        writes=[
            Write("/api/bench/items/", '{"name":"item ', '","qty":3,"price":9.5}'),
            Write("/api/bench/logs/", '{"level":"info","message":"log line ', '"}'),
        ],
        write_status=201,
        write_mark='"id":',
        read_status=200,
        read_mark='"id":',
    )


def _lua(text: str) -> str:
    if not text.isascii():
        raise ValueError(f"not ASCII: {text!r}")
    return json.dumps(text)  # a JSON string of ASCII is a valid Lua string literal


def lua_script(shape: Shape, write_share: float) -> str:
    """wrk's script: each request a write with probability ``write_share`` (to either table),
    else a read by id of a filled row; every answer checked and counted per kind."""
    reads = ",\n".join(f"  {_lua(path)}" for path in shape.read_paths)
    writes = ",\n".join(
        f"  {{{_lua(w.path)}, {_lua(w.prefix)}, {_lua(w.suffix)}}}" for w in shape.writes
    )
    return f"""-- B14 (benchmarks/fastapi_peer.py), generated
local write_share = {write_share!r}
local reads = {{
{reads}
}}
local writes = {{
{writes}
}}
local auth = {_lua("Bearer " + TOKEN)}
local write_status, write_mark = {shape.write_status}, {_lua(shape.write_mark)}
local read_status, read_mark = {shape.read_status}, {_lua(shape.read_mark)}
local find, random = string.find, math.random
local n_reads, n_writes = #reads, #writes
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
  thread:set("number", #threads)
end

function init(args)
  math.randomseed({SEED} * 1000 + number)
  reads_sent, writes_sent, reads_ok, writes_ok, server_errors, bad = 0, 0, 0, 0, 0, 0
  first_bad = ""
  read_headers = {{["Authorization"] = auth}}
  write_headers = {{["Authorization"] = auth, ["Content-Type"] = "application/json"}}
end

function request()
  if random() < write_share then
    writes_sent = writes_sent + 1
    local w = writes[random(n_writes)]
    return wrk.format("POST", w[1], write_headers, w[2] .. number .. "-" .. writes_sent .. w[3])
  end
  reads_sent = reads_sent + 1
  return wrk.format("GET", reads[random(n_reads)], read_headers)
end

function response(status, headers, body)
  if status == write_status and find(body, write_mark, 1, true) then
    writes_ok = writes_ok + 1
  elseif status == read_status and find(body, read_mark, 1, true) then
    reads_ok = reads_ok + 1
  elseif status >= 500 then
    server_errors = server_errors + 1
  else
    bad = bad + 1
    if first_bad == "" then first_bad = status .. " " .. string.sub(body, 1, 200) end
  end
end

function done(summary, latency, requests)
  local totals = {{
    reads_sent = 0, writes_sent = 0, reads_ok = 0, writes_ok = 0, server_errors = 0, bad = 0
  }}
  local first = ""
  for _, thread in ipairs(threads) do
    for key, value in pairs(totals) do totals[key] = value + thread:get(key) end
    if first == "" then first = thread:get("first_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    "b14-wrk: {{\\"requests\\": %d, \\"duration_us\\": %d, \\"reads_sent\\": %d, "
    .. "\\"writes_sent\\": %d, \\"reads_ok\\": %d, \\"writes_ok\\": %d, "
    .. "\\"server_errors\\": %d, \\"bad\\": %d, "
    .. "\\"connect_errors\\": %d, \\"read_errors\\": %d, \\"write_errors\\": %d, "
    .. "\\"status_errors\\": %d, \\"timeouts\\": %d, \\"p50_us\\": %d, \\"p90_us\\": %d, "
    .. "\\"p99_us\\": %d, \\"max_us\\": %d}}\\n",
    summary.requests, summary.duration, totals.reads_sent, totals.writes_sent,
    totals.reads_ok, totals.writes_ok, totals.server_errors, totals.bad, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
  io.write("b14-first-bad: " .. first .. "\\n")
end
"""


_WRK_LINE = re.compile(r"^b14-wrk: (\{.*\})$", re.MULTILINE)
_WRK_BAD = re.compile(r"^b14-first-bad: (.*)$", re.MULTILINE)


def _run_wrk(wrk: str, script: Path, url: str, seconds: int, connections: int) -> Measurement:
    """``wrk`` for ``seconds``; its counts, latency and its own CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [
            wrk,
            f"-t{WRK_THREADS}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 120,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = _WRK_LINE.search(done.stdout)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stdout}\n{done.stderr}")
    result: Measurement = json.loads(line.group(1))
    bad = _WRK_BAD.search(done.stdout)
    result["first_bad"] = bad.group(1) if bad else ""
    result["client_cpu_seconds"] = (after.ru_utime - before.ru_utime) + (
        after.ru_stime - before.ru_stime
    )
    result["client"] = f"wrk -t{WRK_THREADS} -c{connections}"
    return result


async def _run_httpx(
    shape: Shape, write_share: float, url: str, seconds: int, connections: int
) -> Measurement:
    """The fallback without wrk: ``connections`` httpx workers, the same choices and checks."""
    import httpx

    rng = random.Random(SEED)
    counts = dict.fromkeys(
        ("reads_sent", "writes_sent", "reads_ok", "writes_ok", "server_errors", "bad"), 0
    )
    latencies: list[float] = []
    first_bad = ""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"authorization": f"Bearer {TOKEN}"}
    cpu_began = time.process_time()
    async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers) as client:
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal first_bad
            while time.perf_counter() < stop_at:
                began = time.perf_counter()
                if rng.random() < write_share:
                    counts["writes_sent"] += 1
                    write = rng.choice(shape.writes)
                    body = f"{write.prefix}{counts['writes_sent']}{write.suffix}"
                    answer = await client.post(
                        write.path, content=body, headers={"content-type": "application/json"}
                    )
                    ok = (answer.status_code, shape.write_mark in answer.text) == (
                        shape.write_status,
                        True,
                    )
                    kind = "writes_ok"
                else:
                    counts["reads_sent"] += 1
                    answer = await client.get(rng.choice(shape.read_paths))
                    ok = (answer.status_code, shape.read_mark in answer.text) == (
                        shape.read_status,
                        True,
                    )
                    kind = "reads_ok"
                latencies.append(time.perf_counter() - began)
                if ok:
                    counts[kind] += 1
                elif answer.status_code >= 500:
                    counts["server_errors"] += 1
                else:
                    counts["bad"] += 1
                    first_bad = first_bad or f"{answer.status_code} {answer.text[:200]}"

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def percentile(fraction: float) -> float:
        return latencies[max(int(fraction * len(latencies)) - 1, 0)] * 1e6

    return {
        "requests": len(latencies),
        "duration_us": elapsed * 1e6,
        **counts,
        "connect_errors": 0,
        "read_errors": 0,
        "write_errors": 0,
        "status_errors": 0,
        "timeouts": 0,
        "p50_us": percentile(0.5),
        "p90_us": percentile(0.9),
        "p99_us": percentile(0.99),
        "max_us": latencies[-1] * 1e6,
        "first_bad": first_bad,
        "client_cpu_seconds": time.process_time() - cpu_began,
        "client": f"httpx AsyncClient, {connections} workers",
    }


async def drive(
    shape: Shape, write_share: float, server: Server, seconds: int, connections: int
) -> Measurement:
    """The workload for ``seconds`` with ``wrk`` (httpx without it). An answer of 5xx is
    counted (``server_errors``, with the server log's last exception) and not served; any
    other unexpected answer or a socket error fails the case."""
    wrk = shutil.which("wrk")
    if wrk is None:
        result = await _run_httpx(shape, write_share, server.url, seconds, connections)
    else:
        script = server.log.parent / "b14.lua"
        script.write_text(lua_script(shape, write_share), encoding="utf-8")
        result = await asyncio.to_thread(_run_wrk, wrk, script, server.url, seconds, connections)
    server_errors = result["server_errors"]
    errors = {
        key: result[key]
        for key in ("bad", "connect_errors", "write_errors", "timeouts")
        if result[key]
    }
    # uvicorn closes the connection after an app's exception: a read error per 5xx at most.
    if result["read_errors"] > server_errors:
        errors["read_errors"] = result["read_errors"]
    if result["status_errors"] != server_errors:
        errors["status_errors"] = result["status_errors"]
    if errors:
        raise RuntimeError(
            f"{errors}; first bad answer: {result['first_bad']}\n{server.log_tail()}"
        )
    if result["reads_ok"] + result["writes_ok"] + server_errors != result["requests"]:
        raise RuntimeError(f"answers counted do not add up: {result}")
    result["server_error"] = server.last_exception() if server_errors else ""
    return result


# -- the server ---------------------------------------------------------------------------------


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_EXCEPTION_LINE = re.compile(r"^[\w.]*(?:Error|Exception)\b.*$", re.MULTILINE)


@dataclass
class Server:
    """uvicorn serving ``target`` (``module:attr``) on a free port, one worker."""

    target: str
    env: dict[str, str]
    factory: bool
    log: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            *(["--factory"] if self.factory else []),
            self.target,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--loop",
            "asyncio",
            "--http",
            "h11",
            "--log-level",
            "warning",
            "--no-access-log",
        ]

    async def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
                self.command(),
                cwd=self.log.parent,
                env={**case_environment(), **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited {self.process.returncode}: {self.log_tail()}")
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise RuntimeError(f"uvicorn did not listen within {START_SECONDS:g}s: {self.log_tail()}")

    def cpu_seconds(self) -> float:
        assert self.process is not None
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        """SIGTERM (uvicorn finishes the requests it has and runs the lifespan's shutdown)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def last_exception(self) -> str:
        """The last ``SomeError: message`` line of the server's log ("" if none)."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        found = _EXCEPTION_LINE.findall(text)
        return found[-1][:300] if found else ""

    def log_tail(self) -> str:
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-15:])


# -- the stores ---------------------------------------------------------------------------------


def _row_values(name: str, i: int) -> tuple[Any, ...]:
    return (f"item {i}", i, 1.5) if name == "items" else ("info", f"log line {i}")


@dataclass
class Store:
    """Where a case's two tables live: their names, filling, counting and dropping them."""

    kind: str
    folder: Path
    prefix: str

    @property
    def sqlite_path(self) -> Path:
        return self.folder / "b14.db"

    def table(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def url(self, side: str) -> str:
        if self.kind == "sqlite":
            scheme = "sqlite+aiosqlite" if side == "fastapi" else "sqlite"
            return f"{scheme}:///{self.sqlite_path}"
        if self.kind == "postgres":
            scheme = "postgresql+asyncpg" if side == "fastapi" else "postgresql"
            return f"{scheme}://{PG_SERVER}"
        if side == "fastapi":
            server = MYSQL_SERVER
            return (
                f"mysql+aiomysql://{server['user']}@{server['host']}:{server['port']}/"
                f"{server['db']}?charset=utf8mb4"
            )
        return MYSQL_URL

    async def execute(self, sql: str, rows: list[tuple[Any, ...]] | None = None) -> list[Any]:
        """Run one statement (``?`` placeholders; with ``rows``, for each row)."""
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.sqlite_path, timeout=30)) as connection:
                with connection:
                    cursor = (
                        connection.executemany(sql, rows)
                        if rows is not None
                        else connection.execute(sql)
                    )
                    return cursor.fetchall()
        if self.kind == "postgres":
            return await self._execute_postgres(sql, rows)
        import aiomysql

        sql = sql.replace("?", "%s").replace('"', "`")
        connection = await aiomysql.connect(**MYSQL_SERVER, autocommit=True)
        try:
            async with connection.cursor() as cursor:
                if rows is not None:
                    await cursor.executemany(sql, rows)
                    return []
                await cursor.execute(sql)
                return list(await cursor.fetchall())
        finally:
            connection.close()

    async def _execute_postgres(self, sql: str, rows: list[tuple[Any, ...]] | None) -> list[Any]:
        import asyncpg

        parts = sql.split("?")
        sql = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))
        connection = await asyncpg.connect(f"postgresql://{PG_SERVER}")
        try:
            if rows is not None:
                await connection.executemany(sql, rows)
                return []
            return [tuple(row) for row in await connection.fetch(sql)]
        finally:
            await connection.close()

    async def fill(self, side: str) -> dict[str, list[str]]:
        """:data:`ROWS` rows of the tenant in each table; their ids by table."""
        ids: dict[str, list[str]] = {}
        for name, columns in TABLES.items():
            table = self.table(name)
            names = [*columns, "cid", "upby"]
            values = [(*_row_values(name, i), CID, "bench") for i in range(ROWS)]
            if side == "wf78":
                # wf78's own id (digits) and update time; FastAPI's are the database's.
                now: Any = datetime.now(UTC)
                now = now.isoformat() if self.kind == "sqlite" else now.replace(tzinfo=None)
                names = ["id", *names, "uptime"]
                values = [(str(10**17 + i), *row, now) for i, row in enumerate(values)]
            marks = ", ".join("?" for _ in names)
            quoted = ", ".join(f'"{column}"' for column in names)
            await self.execute(f'INSERT INTO "{table}" ({quoted}) VALUES ({marks})', values)
            found = await self.execute(f'SELECT "id" FROM "{table}" WHERE "cid" = \'{CID}\'')
            ids[name] = sorted(str(row[0]) for row in found)
            if len(ids[name]) != ROWS:
                raise RuntimeError(f"{table}: {len(ids[name])} rows after the fill")
        return ids

    async def count(self) -> int:
        total = 0
        for name in TABLES:
            ((found,),) = await self.execute(f'SELECT count(*) FROM "{self.table(name)}"')
            total += int(found)
        return total

    async def drop(self) -> None:
        if self.kind != "sqlite":
            for name in TABLES:
                await self.execute(f'DROP TABLE IF EXISTS "{self.table(name)}"')


@asynccontextmanager
async def store_for(kind: str) -> AsyncIterator[Store]:
    with tempfile.TemporaryDirectory(prefix="wf78-bench-b14-") as folder:
        prefix = unique_name("b14") + "_" if kind != "sqlite" else ""
        store = Store(kind, Path(folder), prefix)
        try:
            yield store
        finally:
            await store.drop()


# -- a case -------------------------------------------------------------------------------------


def _server(side: str, store: Store) -> Server:
    log = store.folder / f"{side}-uvicorn.log"
    if side == "fastapi":
        env = {"B14_DATABASE_URL": store.url(side), "B14_TABLE_PREFIX": store.prefix}
        return Server("benchmarks._fastapi_app:app", env, factory=False, log=log)
    journal = f"sqlite:///{store.folder / 'wf78-journal.db'}"
    config = wf78_config(store.url(side), store.prefix, journal)
    return Server(
        "benchmarks.fastapi_peer:wf78_app", {CONFIG_ENV: json.dumps(config)}, factory=True, log=log
    )


async def run_case(
    side: str, store_kind: str, workload: str, seconds: int, connections: int
) -> Measurement:
    write_share = WORKLOADS[workload]
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(store_for(store_kind))
        server = _server(side, store)
        stack.callback(server.stop)
        await server.start()
        ids = await store.fill(side)
        shape = wf78_shape(store.prefix, ids) if side == "wf78" else fastapi_shape(ids)
        warm = await drive(shape, write_share, server, warmup_seconds(seconds), connections)
        cpu_began = server.cpu_seconds()
        profiler = _profile(server, seconds)
        result = await drive(shape, write_share, server, seconds, connections)
        if profiler is not None:
            await asyncio.to_thread(profiler.wait, 60)
        server_cpu = server.cpu_seconds() - cpu_began
        server.stop()
        added = await store.count() - ROWS * len(TABLES)
        low = warm["writes_ok"] + result["writes_ok"]
        high = warm["writes_sent"] + result["writes_sent"]
        if not low <= added <= high:
            raise RuntimeError(
                f"{added} rows added, but {low} inserts answered and {high} sent "
                f"(warm-up and measured)"
            )
    elapsed = result["duration_us"] / 1e6
    requests = result["requests"]
    # Answers of 5xx are not served requests: requests/s counts the right answers only.
    served = result["reads_ok"] + result["writes_ok"]
    return {
        **result,
        "served": served,
        "warmup_server_errors": warm["server_errors"],
        "server_error": result["server_error"] or warm["server_error"],
        "side": side,
        "store": store_kind,
        "workload": workload,
        "write_share": write_share,
        "elapsed": elapsed,
        "requests_per_s": served / elapsed,
        "rows_added": added,
        "server_cpu_seconds": server_cpu,
        "server_cpu_share": server_cpu / elapsed,
        "server_cpu_per_request_us": server_cpu / requests * 1e6,
        "client_cpu_share": result["client_cpu_seconds"] / elapsed,
        "client_cpu_per_request_us": result["client_cpu_seconds"] / requests * 1e6,
        "warmup_seconds": warmup_seconds(seconds),
        "connections": connections,
        "server": "uvicorn, 1 worker, --loop asyncio --http h11",
        "load_average": os.getloadavg(),
    }


def _profile(server: Server, seconds: int) -> subprocess.Popen[bytes] | None:
    """With ``B14_PYSPY_OUT=<file.svg>``: ``py-spy record`` of the server during the measured
    run (``py-spy`` from ``PATH`` or ``B14_PYSPY``; sampling slows the server a little)."""
    out = os.environ.get("B14_PYSPY_OUT")
    if not out or server.process is None:
        return None
    py_spy = os.environ.get("B14_PYSPY") or shutil.which("py-spy") or "py-spy"
    command = [py_spy, "record", "--pid", str(server.process.pid), "--duration", str(seconds)]
    command += ["--rate", "200", "--output", out]
    command += ["--format", os.environ.get("B14_PYSPY_FORMAT", "flamegraph")]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _case(side: str, store: str, workload: str) -> Callable[[argparse.Namespace], Any]:
    async def case(args: argparse.Namespace) -> Measurement:
        return await run_case(side, store, workload, args.n, args.in_flight)

    return case


CASES = {
    f"{side}_{store}_{workload}": _case(side, store, workload)
    for side in SIDES
    for store in STORES
    for workload in WORKLOADS
}

if __name__ == "__main__":
    case_main(CASES, description=__doc__ or "", default_n=10)
