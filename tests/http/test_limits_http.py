"""``[limits.<name>]`` through the data routes: 429 with the envelope, ``Retry-After`` and
the IETF ``RateLimit-Policy`` / ``RateLimit`` headers; concurrency per key; the counters
in ``/_wf78/status`` and ``/_wf78/metrics``; fair shares through the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client.parser import text_string_to_metric_families

from wf78_core import Engine
from wf78_core.http.middleware import Wf78Middleware

ACME, ZETA, ADMIN = "acme-token", "zeta-token", "admin-token"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def make_config(path: Path, limits: dict[str, Any], **engine: Any) -> dict[str, Any]:
    return {
        "engine": {"journal": "memory", "drain_timeout": 2.0, **engine},
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{path}"}},
        "tables": {
            "Items": {
                "columns": {"name": "text"},
                "route": "api/demo",
                "owner": "cid",
                "data_source": "db",
            },
            "Notes": {"columns": {"text": "text"}, "route": "api/demo", "data_source": "db"},
        },
        "auth": {
            "tokens": {
                ACME: {"uid": "u1", "cid": "acme"},
                ZETA: {"uid": "u2", "cid": "zeta"},
                ADMIN: {"uid": "root", "cid": "ops", "roles": ["admin"]},
            }
        },
        "limits": limits,
    }


@asynccontextmanager
async def serving(config: dict[str, Any]) -> AsyncIterator[tuple[httpx.AsyncClient, Engine]]:
    engine = Engine(config)
    app = Wf78Middleware(_app, engine=engine)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, engine


def add(client: httpx.AsyncClient, token: str, table: str = "Items") -> Any:
    return client.post(
        f"/api/demo/{table}/mAdd",
        json={"pars": ["x"]},
        headers={"Authorization": f"Bearer {token}"},
    )


@pytest.mark.anyio
async def test_over_the_rate_answers_429_with_headers(tmp_path: Path) -> None:
    limits = {"writes": {"rate": 0.5, "burst": 2, "methods": ["mAdd"]}}
    async with serving(make_config(tmp_path / "db.sqlite", limits)) as (client, engine):
        first = await add(client, ACME)
        assert first.status_code == 200, first.text
        assert first.json()["res"] == 0
        assert first.headers["ratelimit-policy"] == '"writes";q=2;w=4'
        assert first.headers["ratelimit"] == '"writes";r=1;t=2'
        assert (await add(client, ACME)).status_code == 200
        refused = await add(client, ACME)
        assert refused.status_code == 429
        body = refused.json()
        assert body["res"] == -429
        assert body["kind"] == "rate_limited"
        assert "'writes'" in body["errmsg"]
        assert body["back"] is None
        assert 1 <= int(refused.headers["retry-after"]) <= 2
        assert refused.headers["ratelimit-policy"] == '"writes";q=2;w=4'
        assert refused.headers["ratelimit"].startswith('"writes";r=0;t=')
        # Another tenant has its own key; a method the limit does not name is not limited.
        assert (await add(client, ZETA)).status_code == 200
        listed = await client.get(
            "/api/demo/Items/get", headers={"Authorization": f"Bearer {ACME}"}
        )
        assert listed.status_code == 200
        assert "ratelimit" not in listed.headers
        stats = engine.stats().limits
        assert [(s.name, s.allowed, s.limited, s.keys) for s in stats] == [("writes", 3, 1, 2)]
        status = await client.get("/_wf78/status", headers={"Authorization": f"Bearer {ADMIN}"})
        assert status.json()["limits"][0]["limited"] == 1
        metrics = await client.get("/_wf78/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
        samples = {
            (sample.name, sample.labels.get("limit")): sample.value
            for family in text_string_to_metric_families(metrics.text)
            for sample in family.samples
        }
        assert samples[("wf78_limit_allowed_total", "writes")] == 3
        assert samples[("wf78_limit_limited_total", "writes")] == 1
        assert samples[("wf78_limit_keys", "writes")] == 2


@pytest.mark.anyio
async def test_a_limit_keeps_to_its_tables(tmp_path: Path) -> None:
    limits = {"items_only": {"rate": 0.1, "burst": 1, "tables": ["Items"], "key": "cid,table"}}
    async with serving(make_config(tmp_path / "db.sqlite", limits)) as (client, _):
        assert (await add(client, ACME)).status_code == 200
        assert (await add(client, ACME)).status_code == 429
        for _ in range(3):
            assert (await add(client, ACME, table="Notes")).status_code == 200


@pytest.mark.anyio
async def test_over_concurrent_waits_then_answers_429(tmp_path: Path) -> None:
    limits = {"one_at_a_time": {"concurrent": 1, "wait": 0.2}}
    async with serving(make_config(tmp_path / "db.sqlite", limits)) as (client, engine):
        rule = engine.limits.rules[0]
        # acme has a request in flight (held here, as a slow request would hold it).
        held = await engine.limits.enter(engine.config.auth.tokens[ACME], "Items", "mAdd")
        refused = await add(client, ACME)
        assert refused.status_code == 429
        assert "'one_at_a_time'" in refused.json()["errmsg"]
        assert refused.headers["retry-after"] == "1"
        assert "ratelimit" not in refused.headers  # no rate: no RateLimit headers
        assert (await add(client, ZETA)).status_code == 200  # zeta's own slot

        async def release_soon() -> None:
            await anyio.sleep(0.05)
            await held.leave()

        async with anyio.create_task_group() as group:
            group.start_soon(release_soon)
            passed = await add(client, ACME)  # waits for acme's slot, then runs
        assert passed.status_code == 200
        assert rule.stats().in_flight == 0


@pytest.mark.anyio
async def test_the_routes_set_the_tenant_of_queued_work(tmp_path: Path) -> None:
    config = make_config(tmp_path / "db.sqlite", {}, max_running=1)
    async with serving(config) as (client, engine):
        running = engine.admission.running
        running.in_use = running.capacity  # every slot busy: the requests queue
        async with anyio.create_task_group() as group:
            for token in (ACME, ACME, ZETA):
                group.start_soon(add, client, token)
            await anyio.wait_all_tasks_blocked()
            assert engine.stats().queued_by_tenant == {"acme": 2, "zeta": 1}
            engine.scheduler.release(running.alone)  # the stand-in leaves: the queue drains
        assert engine.stats().queued_by_tenant == {}
        assert running.in_use == 0
