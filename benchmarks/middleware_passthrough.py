"""B9 pass-through: what ``Wf78Middleware`` costs a request it does not serve.

The same Starlette app with one JSON endpoint (``GET /ping`` -> ``{"ok": true}``), bare
and wrapped in ``Wf78Middleware`` (a routed, owner-scoped table on a SQLite file and one
bearer token in its configuration; every request carries that token, so the middleware
authenticates it and publishes ``current()`` before handing it on).

The cost is a few microseconds per request, less than the noise of a server and client
sharing two cores, so the measured cases drive the ASGI app **in process**
(:class:`AsgiDriver`: the app started through its lifespan, then an ``http`` scope and
``receive``/``send`` callables per request, what uvicorn hands the app, minus the sockets
and the HTTP parsing):

``bare_seq``, ``wf78_seq``   ``--n`` requests one after another (B9a).
``bare_conc``, ``wf78_conc`` ``--n`` requests from ``--in-flight`` workers (default 64),
                             each sending its next request when the last one answered (B9b).
``bare_tcp``, ``wf78_tcp``   informational: the app under ``uvicorn`` (one worker, a
                             subprocess on a free loopback port), loaded for ``TCP_SECONDS``
                             by ``wrk`` (64 connections, 2 threads) when it is installed,
                             otherwise by an httpx ``AsyncClient`` with 64 workers. Client,
                             server and kernel share the same cores: noisy, no target.

``data_routes.py`` (B10) drives its apps with the same :class:`AsgiDriver`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from benchmarks._harness import Measurement, case_main

TOKEN = "bench-token-b9"
CID = "bench"
AUTH_HEADERS = [(b"authorization", b"Bearer " + TOKEN.encode())]
WARMUP = 500
TCP_SECONDS = 5.0
DB_ENV = "WF78_BENCH_DB"

Message = dict[str, Any]


# -- an in-process ASGI driver ---------------------------------------------------------------


class AsgiDriver:
    """Run an ASGI app's lifespan and send it requests, in this process and event loop.

    ``async with AsgiDriver(app) as driver: status, body = await driver.request(...)``.
    The scope is what uvicorn builds for HTTP/1.1 (``state`` a shallow copy of the
    lifespan state, as uvicorn does); ``receive`` gives the body once and then
    ``http.disconnect``; ``send`` keeps the status and the body.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsgiDriver:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.3"}}
        scope["state"] = self.state
        self._task = asyncio.create_task(
            self.app(scope, self._to_app.get, self._from_app.put), name="lifespan"
        )
        await self._to_app.put({"type": "lifespan.startup"})
        answer = await self._from_app.get()
        if answer["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"lifespan startup failed: {answer}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._to_app.put({"type": "lifespan.shutdown"})
        answer = await self._from_app.get()
        assert self._task is not None
        await self._task
        if answer["type"] != "lifespan.shutdown.complete":
            raise RuntimeError(f"lifespan shutdown failed: {answer}")

    async def request(
        self,
        method: str,
        path: str,
        query: bytes = b"",
        headers: Iterable[tuple[bytes, bytes]] = (),
        body: bytes = b"",
    ) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": method,
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "headers": [(b"host", b"127.0.0.1:8000"), *headers],
            "state": self.state.copy(),
        }
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        status = 0
        chunks: list[bytes] = []

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


Request_ = Callable[[int], Awaitable[None]]


async def time_requests(one: Request_, n: int, workers: int, warmup: int = WARMUP) -> Measurement:
    """``one(i)`` for ``0 <= i < n``: one after another (``workers`` 1) or from ``workers``
    coroutines, each taking the next index when its last request answered."""

    async def run(first: int, count: int) -> None:
        if workers <= 1:
            for i in range(first, first + count):
                await one(i)
            return
        next_index = first
        end = first + count

        async def worker() -> None:
            nonlocal next_index
            while next_index < end:
                i = next_index
                next_index += 1
                await one(i)

        await asyncio.gather(*(worker() for _ in range(workers)))

    await run(-warmup, warmup)
    began, cpu_began = time.perf_counter(), time.process_time()
    await run(0, n)
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    return {
        "elapsed": elapsed,
        "requests_per_s": n / elapsed,
        "per_request_us": elapsed / n * 1e6,
        "cpu_per_request_us": cpu / n * 1e6,
        "workers": workers,
    }


# -- the apps ----------------------------------------------------------------------------------


async def ping(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def bare_app() -> Starlette:
    return Starlette(routes=[Route("/ping", ping)])


def wf78_config(db_path: str | Path) -> dict[str, Any]:
    """A small but real configuration: one SQLite source, a routed owner-scoped table, a token."""
    return {
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{Path(db_path).resolve()}"}},
        "tables": {
            "items": {
                "columns": {"name": "text", "qty": "int"},
                "owner": "cid",
                "route": "api/bench",
                "data_source": "db",
            }
        },
        "auth": {"tokens": {TOKEN: {"uid": "u-bench", "cid": CID, "uname": "bench"}}},
    }


def wf78_app(db_path: str | Path | None = None) -> Any:
    from wf78_core import Wf78Middleware

    path = db_path if db_path is not None else os.environ[DB_ENV]
    return Wf78Middleware(bare_app(), config=wf78_config(path))


# -- in-process cases ---------------------------------------------------------------------------


async def _in_process(app: Any, n: int, workers: int) -> Measurement:
    async with AsgiDriver(app) as driver:

        async def one(i: int) -> None:
            status, body = await driver.request("GET", "/ping", headers=AUTH_HEADERS)
            if status != 200 or body != b'{"ok":true}':
                raise RuntimeError(f"request {i}: {status} {body[:200]!r}")

        return await time_requests(one, n, workers)


async def bare_seq(args: argparse.Namespace) -> Measurement:
    return await _in_process(bare_app(), args.n, 1)


async def bare_conc(args: argparse.Namespace) -> Measurement:
    return await _in_process(bare_app(), args.n, args.in_flight)


async def wf78_seq(args: argparse.Namespace) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        return await _in_process(wf78_app(Path(folder) / "b9.db"), args.n, 1)


async def wf78_conc(args: argparse.Namespace) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        return await _in_process(wf78_app(Path(folder) / "b9.db"), args.n, args.in_flight)


# -- over TCP (informational) -------------------------------------------------------------------


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


START_SECONDS = 20.0


async def _wait_listening(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {server.returncode}")
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"uvicorn did not listen on {port} within {START_SECONDS:g}s")


_WRK_RATE = re.compile(r"Requests/sec:\s+([0-9.]+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+([0-9]+)")


def _start_uvicorn(factory: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """uvicorn, one worker, serving ``factory()`` of this module on ``port``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            f"benchmarks.middleware_passthrough:{factory}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _tcp(factory: str, connections: int) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        port = _free_port()
        env = {**os.environ, DB_ENV: str(Path(folder) / "b9.db")}
        server = _start_uvicorn(factory, port, env)
        try:
            await _wait_listening(port, server)
            url = f"http://127.0.0.1:{port}/ping"
            wrk = shutil.which("wrk")
            if wrk is not None:
                return await _wrk(wrk, url, connections)
            return await _httpx(url, connections)
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


async def _wrk(wrk: str, url: str, connections: int) -> Measurement:
    command = [wrk, "-t2", f"-c{connections}", "-H", f"Authorization: Bearer {TOKEN}", url]
    warm = await asyncio.create_subprocess_exec(*command, "-d1s", stdout=subprocess.PIPE)
    await warm.communicate()
    done = await asyncio.create_subprocess_exec(
        *command, f"-d{TCP_SECONDS:g}s", stdout=subprocess.PIPE
    )
    out = (await done.communicate())[0].decode()
    rate = _WRK_RATE.search(out)
    if done.returncode != 0 or rate is None:
        raise RuntimeError(f"wrk failed: {out}")
    bad = _WRK_NON2XX.search(out)
    if bad is not None:
        raise RuntimeError(f"wrk saw {bad.group(1)} non-2xx answers")
    return {
        "requests_per_s": float(rate.group(1)),
        "client": "wrk -t2 -c64",
        "seconds": TCP_SECONDS,
    }


async def _httpx(url: str, connections: int) -> Measurement:
    import httpx

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(limits=limits, headers=headers) as client:
        count = 0
        stop_at = 0.0

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < stop_at:
                answer = await client.get(url)
                if answer.status_code != 200:
                    raise RuntimeError(f"{answer.status_code} {answer.text[:200]}")
                count += 1

        stop_at = time.perf_counter() + 1.0
        await asyncio.gather(*(worker() for _ in range(connections)))
        count = 0
        began = time.perf_counter()
        stop_at = began + TCP_SECONDS
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    return {
        "requests_per_s": count / elapsed,
        "client": f"httpx AsyncClient, {connections} workers",
        "seconds": elapsed,
    }


async def bare_tcp(args: argparse.Namespace) -> Measurement:
    return await _tcp("bare_app", args.in_flight)


async def wf78_tcp(args: argparse.Namespace) -> Measurement:
    return await _tcp("wf78_app", args.in_flight)


CASES = {
    "bare_seq": bare_seq,
    "wf78_seq": wf78_seq,
    "bare_conc": bare_conc,
    "wf78_conc": wf78_conc,
    "bare_tcp": bare_tcp,
    "wf78_tcp": wf78_tcp,
}

if __name__ == "__main__":
    case_main(CASES, description=__doc__ or "", default_n=20_000)
