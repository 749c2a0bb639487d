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

``paired_seq``               B9a: both apps started in this one process, then ``--n``
                             requests to each, one after another, in alternating chunks of
                             ``CHUNK`` (bare, wrapped, bare, ...); the figure is the median
                             of the per-chunk-pair ratios, so drifting CPU speed and process
                             layout (hash seeds, allocator state) affect both sides alike.
``paired_conc``              B9b: the same with ``--in-flight`` workers (default 64) per
                             chunk, each sending its next request when the last answered.
``bare_seq``, ``wf78_seq``,  one app per process, for profiling one side alone
``bare_conc``, ``wf78_conc`` (``--profile``).
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
import statistics
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


CHUNK = 500


class _Connection(asyncio.Transport):
    """One keep-alive HTTP/1.1 connection into uvicorn's protocol, in memory.

    uvicorn's own ``H11Protocol`` (what ``uvicorn app`` runs when httptools is not
    installed) parses the request bytes, builds the scope, runs the app in a task and
    writes the response here; :meth:`get` sends one request and waits for the whole
    response (its ``Content-Length``).
    """

    _EXTRA = {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.buffer = bytearray()
        self.closed = False
        self._done: asyncio.Future[bytes] | None = None
        protocol.connection_made(self)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._EXTRA.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connection_lost(None)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self._done is None:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self.buffer) >= end + 4 + length:
            response = bytes(self.buffer[: end + 4 + length])
            del self.buffer[: end + 4 + length]
            self._done.set_result(response)

    async def get(self, request: bytes) -> bytes:
        self._done = asyncio.get_running_loop().create_future()
        self.protocol.data_received(request)
        return await self._done


class UvicornDriver:
    """An ASGI app served by uvicorn's HTTP/1.1 protocol and lifespan in this process,
    over ``connections`` in-memory keep-alive connections: the server's whole request
    cost (HTTP parsing, scope, task per request, response writing) without sockets."""

    def __init__(self, app: Any, connections: int) -> None:
        from uvicorn.config import Config

        self.config = Config(app, log_config=None, access_log=False, lifespan="on")
        self.config.load()
        self.connections_wanted = connections
        self.connections: list[_Connection] = []

    async def __aenter__(self) -> UvicornDriver:
        from uvicorn.lifespan.on import LifespanOn
        from uvicorn.protocols.http.h11_impl import H11Protocol
        from uvicorn.server import ServerState

        self.lifespan = LifespanOn(self.config)
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            raise RuntimeError("lifespan startup failed")
        state = ServerState()
        self.connections = [
            _Connection(H11Protocol(self.config, state, self.lifespan.state))
            for _ in range(self.connections_wanted)
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for connection in self.connections:
            connection.close()
        await self.lifespan.shutdown()


_PING = (
    b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAuthorization: Bearer "
    + TOKEN.encode()
    + b"\r\n\r\n"
)


Chunk = Callable[[int], Awaitable[float]]


async def _alternate(bare: Chunk, wrapped: Chunk, n: int, workers: int) -> Measurement:
    """``n`` requests to each side in alternating chunks of ``CHUNK`` after a warm-up;
    ``bare(count)``/``wrapped(count)`` send ``count`` requests and return the seconds taken.
    The figure is the median of the per-chunk-pair ratios."""
    await bare(WARMUP)
    await wrapped(WARMUP)
    ratios: list[float] = []
    bare_time = wrapped_time = 0.0
    for _ in range(max(1, n // CHUNK)):
        base = await bare(CHUNK)
        cand = await wrapped(CHUNK)
        bare_time += base
        wrapped_time += cand
        ratios.append(base / cand)
    ratios.sort()
    count = len(ratios) * CHUNK
    return {
        "ratio": statistics.median(ratios),
        "ratio_low": ratios[0],
        "ratio_high": ratios[-1],
        "chunks": len(ratios),
        "chunk": CHUNK,
        "bare_requests_per_s": count / bare_time,
        "wf78_requests_per_s": count / wrapped_time,
        "bare_per_request_us": bare_time / count * 1e6,
        "wf78_per_request_us": wrapped_time / count * 1e6,
        "workers": workers,
    }


async def _paired(n: int, workers: int) -> Measurement:
    """Bare and wrapped in one process, the ASGI apps called directly (no server)."""
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        async with (
            AsgiDriver(bare_app()) as bare,
            AsgiDriver(wf78_app(Path(folder) / "b9.db")) as wrapped,
        ):

            def chunk_of(driver: AsgiDriver) -> Chunk:
                async def one(i: int) -> None:
                    status, body = await driver.request("GET", "/ping", headers=AUTH_HEADERS)
                    if status != 200 or body != b'{"ok":true}':
                        raise RuntimeError(f"request {i}: {status} {body[:200]!r}")

                async def chunk(count: int) -> float:
                    measured = await time_requests(one, count, workers, warmup=0)
                    return float(measured["elapsed"])

                return chunk

            return await _alternate(chunk_of(bare), chunk_of(wrapped), n, workers)


async def _paired_uvicorn(n: int, connections: int) -> Measurement:
    """Bare and wrapped under in-process uvicorn (as :func:`_paired`)."""
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        async with (
            UvicornDriver(bare_app(), connections) as bare,
            UvicornDriver(wf78_app(Path(folder) / "b9.db"), connections) as wrapped,
        ):

            def chunk_of(driver: UvicornDriver) -> Chunk:
                async def chunk(count: int) -> float:
                    left = count

                    async def worker(connection: _Connection) -> None:
                        nonlocal left
                        while left > 0:
                            left -= 1
                            response = await connection.get(_PING)
                            if not response.startswith(b"HTTP/1.1 200") or not response.endswith(
                                b'{"ok":true}'
                            ):
                                raise RuntimeError(f"unexpected answer {response[:200]!r}")

                    began = time.perf_counter()
                    await asyncio.gather(*(worker(c) for c in driver.connections))
                    return time.perf_counter() - began

                return chunk

            return await _alternate(chunk_of(bare), chunk_of(wrapped), n, connections)


async def uvicorn_seq(args: argparse.Namespace) -> Measurement:
    return await _paired_uvicorn(args.n, 1)


async def uvicorn_conc(args: argparse.Namespace) -> Measurement:
    return await _paired_uvicorn(args.n, args.in_flight)


async def paired_seq(args: argparse.Namespace) -> Measurement:
    return await _paired(args.n, 1)


async def paired_conc(args: argparse.Namespace) -> Measurement:
    return await _paired(args.n, args.in_flight)


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
    "uvicorn_seq": uvicorn_seq,
    "uvicorn_conc": uvicorn_conc,
    "paired_seq": paired_seq,
    "paired_conc": paired_conc,
    "bare_seq": bare_seq,
    "wf78_seq": wf78_seq,
    "bare_conc": bare_conc,
    "wf78_conc": wf78_conc,
    "bare_tcp": bare_tcp,
    "wf78_tcp": wf78_tcp,
}

if __name__ == "__main__":
    case_main(CASES, description=__doc__ or "", default_n=20_000)
