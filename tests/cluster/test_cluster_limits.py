"""``[limits.<name>]`` with the redis backend: one rate and one concurrency cap per key
across engine processes on the real Redis, and a Redis that stops answering failing each
limit open or closed as its ``on_backend_error`` says (a private redis-server, stopped)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from servers import RedisServer

from wf78_core import Engine, RateLimited, Wf78Middleware
from wf78_core.config import Identity

pytestmark = pytest.mark.anyio

SHARED_REDIS = "redis://127.0.0.1:6379/0"
ACME = Identity(uid="u1", cid="acme")
ROOT = Path(__file__).resolve().parents[2]

# A second engine process: tries the limit ``tries`` times, prints how many passed.
_OTHER_PROCESS = """
import json, sys, anyio
from wf78_core import Engine, RateLimited
from wf78_core.config import Identity

async def main(config, tries):
    passed = 0
    async with Engine(config) as engine:
        for _ in range(tries):
            try:
                admitted = await engine.limits.enter(Identity(cid="acme"), "Items", "mAdd")
            except RateLimited:
                continue
            passed += 1
            await admitted.leave()
    print(json.dumps({"passed": passed}))

anyio.run(main, json.loads(sys.argv[1]), int(sys.argv[2]))
"""


def config(url: str, namespace: str, limits: dict[str, Any]) -> dict[str, Any]:
    return {
        "engine": {
            "backend": "redis",
            "backend_url": url,
            "backend_namespace": namespace,
            "journal": "memory",
            "drain_timeout": 1.0,
            "lease_ttl": 2.0,
        },
        "tables": {"Items": {"columns": ["name"], "route": "api/demo", "owner": "cid"}},
        "auth": {"tokens": {"acme": {"uid": "u1", "cid": "acme"}}},
        "limits": limits,
    }


async def attempts(engine: Engine, tries: int) -> int:
    passed = 0
    for _ in range(tries):
        try:
            admitted = await engine.limits.enter(ACME, "Items", "mAdd")
        except RateLimited:
            continue
        passed += 1
        await admitted.leave()
    return passed


async def test_a_rate_holds_across_two_engine_processes() -> None:
    # 10 at once and then one every 100 s: the test's few seconds add nothing.
    limits = {"writes": {"rate": 0.01, "burst": 10}}
    settings = config(SHARED_REDIS, f"limits-{uuid.uuid4().hex[:12]}", limits)
    async with Engine(settings) as engine:
        other = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-c", _OTHER_PROCESS, json.dumps(settings), "8"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
        )
        passed_there = json.loads(other.stdout.strip().splitlines()[-1])["passed"]
        passed_here = await attempts(engine, 8)
        assert passed_there == 8
        assert passed_here == 2  # the burst of 10 is shared: 8 went to the other process
        stats = engine.stats().limits[0]
        assert (stats.allowed, stats.limited, stats.keys) == (2, 6, 1)


async def test_concurrency_per_key_holds_across_engines() -> None:
    limits = {"slots": {"concurrent": 1, "wait": 0.2}}
    settings = config(SHARED_REDIS, f"limits-{uuid.uuid4().hex[:12]}", limits)
    async with Engine(settings) as first, Engine(settings) as second:
        held = await first.limits.enter(ACME, "Items", "mAdd")
        with pytest.raises(RateLimited, match="'slots'"):
            await second.limits.enter(ACME, "Items", "mAdd")
        other = await second.limits.enter(Identity(cid="zeta"), "Items", "mAdd")
        await other.leave()

        async def leave_soon() -> None:
            await anyio.sleep(0.05)
            await held.leave()

        async with anyio.create_task_group() as group:
            group.start_soon(leave_soon)
            taken = await second.limits.enter(ACME, "Items", "mAdd")  # after a look again
        await taken.leave()


async def test_a_stopped_redis_fails_limits_open_or_closed(tmp_path: Path) -> None:
    limits = {
        "soft": {"rate": 100.0, "methods": ["get"]},
        "hard": {"rate": 100.0, "methods": ["mAdd"], "on_backend_error": "closed"},
    }
    with RedisServer(tmp_path / "redis", appendonly=False) as server:
        settings = config(server.url, "outage", limits)
        settings["datasources"] = {"db": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/db"}}
        engine = Engine(settings)
        app = Wf78Middleware(_inner, engine=engine)
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        headers = {"Authorization": "Bearer acme"}
        async with (
            LifespanManager(app),
            httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as client,
        ):
            before = await client.post("/api/demo/Items/mAdd", json={"pars": ["x"]})
            assert before.status_code == 200, before.text
            assert before.headers["ratelimit"] == '"hard";r=99;t=1'
            await anyio.to_thread.run_sync(server.stop)
            # soft fails open: the request goes on (and answers whatever the route does).
            admitted = await engine.limits.enter(ACME, "Items", "get")
            assert admitted.headers == []  # nothing known of the rate without Redis
            refused = await client.post("/api/demo/Items/mAdd", json={"pars": ["y"]})
            assert refused.status_code == 429
            assert "'hard' cannot be checked" in refused.json()["errmsg"]
            assert refused.headers["retry-after"] == "1"
            soft, hard = engine.stats().limits
            assert (soft.backend_errors, soft.limited, soft.allowed) == (1, 0, 1)
            assert (hard.backend_errors, hard.limited, hard.allowed) == (1, 1, 1)


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
