"""B16 noisy neighbour and B18 the cost of fair shares (``[engine] fair_by``).

Both drive ``Wf78Middleware`` in process with ``middleware_passthrough.AsgiDriver`` (as B10
does): an ``http`` scope and ``receive``/``send`` per request, every request with its
tenant's ``Authorization: Bearer`` token. The app is B10's: one ``sqlite`` source, the
owner-scoped table ``items`` (route ``api/bench``).

B16 ``noisy_fair`` / ``noisy_fifo`` (``fair_by = "cid"`` / ``""``): the source takes
:data:`POOL` operations at once (``pool_size``), so a flood queues in the scheduler, where
fair shares act. Tenant B first sends one ``mAdd`` every 5 ms for :data:`IDLE_SECONDS`
alone (its p99 idle); then tenant A floods ``--n`` ``mAdd`` from ``--in-flight`` (64)
workers while B keeps sending one every 5 ms (its p99 during the flood). Reports both
p99s and p50s, their ratios and A's throughput (``fairness_stages`` runs the same case with
probes and tells where B's request waits). The database file is on tmpfs (``/dev/shm``): the
disk's fsyncs, shared with whatever else the machine runs, would swamp the queueing.

B18 ``routes_fair`` / ``routes_fifo``: B10b (``mAdd``, 64 in flight, one tenant, the
source's own capacity) with ``fair_by = "cid"`` / ``""`` and no limit; ``dispatch_fair`` /
``dispatch_fifo``: B1 (no-op ``engine.submit``) with ``fair_by = "cid"`` / ``""``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import msgspec
from starlette.applications import Starlette

from benchmarks._harness import Measurement, case_main, measure
from benchmarks.middleware_passthrough import AsgiDriver, time_requests, wf78_config
from wf78_core import Engine, Operation, Wf78Middleware

POOL = 8
IDLE_SECONDS = 3.0
EVERY = 0.005
TOKENS = {"a-token": "tenant-a", "b-token": "tenant-b"}
ROUTE = "/api/bench/items/mAdd"
# B16's database lives in memory (tmpfs), so fsyncs cost nothing: the figures are the
# engine's queueing, not the disk's (which, shared with other work, swamped them).
MEMORY_DIR = "/dev/shm" if Path("/dev/shm").is_dir() else None

_encode = msgspec.json.Encoder().encode

#: In tenant B's pacer task: ``"idle"`` or ``"flood"`` (what ``fairness_stages`` probes key on).
B_PHASE: ContextVar[str] = ContextVar("b16_phase", default="")


def _headers(token: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"authorization", f"Bearer {token}".encode()),
        (b"content-type", b"application/json"),
    ]


def _app(path: Path, fair_by: str, pool_size: int | None) -> Any:
    config = wf78_config(path)
    config["engine"] = {"fair_by": fair_by, "journal": "memory"}
    if pool_size is not None:
        config["datasources"]["db"]["pool_size"] = pool_size
    for token, cid in TOKENS.items():
        config["auth"]["tokens"][token] = {"uid": f"u-{cid}", "cid": cid}
    return Wf78Middleware(Starlette(), config=config)


async def _add(driver: AsgiDriver, token: str, i: int) -> None:
    body = _encode({"pars": [f"row {i}", i]})
    status, answer = await driver.request("POST", ROUTE, b"", _headers(token), body)
    if status != 200:
        raise RuntimeError(f"add {i}: {status} {answer[:200]!r}")


async def _paced(
    driver: AsgiDriver, stop: asyncio.Event, latencies: list[float], phase: str
) -> None:
    """Tenant B: one request every 5 ms (on a fixed schedule) until ``stop``."""
    B_PHASE.set(phase)  # this task's context only: B's requests of this phase
    loop = asyncio.get_running_loop()
    due = loop.time()
    i = 0
    while not stop.is_set():
        began = time.perf_counter()
        await _add(driver, "b-token", 10_000_000 + i)
        latencies.append(time.perf_counter() - began)
        i += 1
        due += EVERY
        await asyncio.sleep(max(0.0, due - loop.time()))


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values)


async def _noisy(args: argparse.Namespace, fair_by: str) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="wf78-bench-", dir=MEMORY_DIR) as folder:
        path = Path(folder) / "b16.db"
        async with AsgiDriver(_app(path, fair_by, POOL)) as driver:
            for i in range(200):  # warm up both tenants
                await _add(driver, "a-token" if i % 2 else "b-token", -1 - i)
            idle: list[float] = []
            stop = asyncio.Event()
            pacer = asyncio.create_task(_paced(driver, stop, idle, "idle"))
            await asyncio.sleep(IDLE_SECONDS)
            stop.set()
            await pacer
            flood: list[float] = []
            stop = asyncio.Event()
            pacer = asyncio.create_task(_paced(driver, stop, flood, "flood"))
            began = time.perf_counter()
            result = await time_requests(
                lambda i: _add(driver, "a-token", i), args.n, args.in_flight, warmup=0
            )
            elapsed = time.perf_counter() - began
            stop.set()
            await pacer
    idle_p99, flood_p99 = _p99(idle), _p99(flood)
    return {
        "fair_by": fair_by,
        "b_idle_p99_ms": idle_p99 * 1e3,
        "b_flood_p99_ms": flood_p99 * 1e3,
        "b_idle_p50_ms": statistics.median(idle) * 1e3,
        "b_flood_p50_ms": statistics.median(flood) * 1e3,
        "b_ratio": flood_p99 / idle_p99,
        "b_p50_ratio": statistics.median(flood) / statistics.median(idle),
        "b_requests_in_flood": len(flood),
        "a_requests_per_s": result["requests_per_s"],
        "total_requests_per_s": (args.n + len(flood)) / elapsed,
    }


async def noisy_fair(args: argparse.Namespace) -> Measurement:
    return await _noisy(args, "cid")


async def noisy_fifo(args: argparse.Namespace) -> Measurement:
    return await _noisy(args, "")


async def _routes(args: argparse.Namespace, fair_by: str) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="wf78-bench-") as folder:
        path = Path(folder) / "b18.db"
        async with AsgiDriver(_app(path, fair_by, None)) as driver:
            return await time_requests(
                lambda i: _add(driver, "a-token", i), args.n, args.in_flight, warmup=200
            )


async def routes_fair(args: argparse.Namespace) -> Measurement:
    return await _routes(args, "cid")


async def routes_fifo(args: argparse.Namespace) -> Measurement:
    return await _routes(args, "")


async def _dispatch(args: argparse.Namespace, fair_by: str) -> Measurement:
    config = {"datasources": {"mem": {"type": "memory"}}, "engine": {"fair_by": fair_by}}
    op = Operation(action="noop", data_source="mem")
    async with Engine(config) as engine:

        async def start(_: int) -> object:
            return await engine.submit(op)

        return await measure(args, start)


async def dispatch_fair(args: argparse.Namespace) -> Measurement:
    return await _dispatch(args, "cid")


async def dispatch_fifo(args: argparse.Namespace) -> Measurement:
    return await _dispatch(args, "")


CASES = {
    "noisy_fair": noisy_fair,
    "noisy_fifo": noisy_fifo,
    "routes_fair": routes_fair,
    "routes_fifo": routes_fifo,
    "dispatch_fair": dispatch_fair,
    "dispatch_fifo": dispatch_fifo,
}

if __name__ == "__main__":
    case_main(CASES, description=__doc__ or "", default_n=20_000)
