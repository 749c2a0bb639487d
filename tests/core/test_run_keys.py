"""Idempotency keys of runs and events: ``engine.run``/``engine.emit`` with
``idempotency_key=``, ``POST {prefix}/runs`` and ``POST {prefix}/events/{name}`` with the
``Idempotency-Key`` header, in process (journal on SQLite, in memory, or off) and on the
Redis backend; keys expire after ``[engine] idempotency_ttl`` and maintenance purges them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import httpx
import msgspec
import pytest
import redis.asyncio
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from wf78_core import Engine, IdempotencyConflict, Identity, Wf78Middleware
from wf78_core.core.runkeys import KeyedRun, run_key
from wf78_core.data.sharding import maintain

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN = "tok-admin-run-keys"
WORKFLOWS = [
    {"id": "w", "tasks": [{"id": "t", "action": "noop"}]},
    {"id": "e1", "trigger": "event", "event": "ping", "tasks": [{"id": "t", "action": "noop"}]},
    {"id": "e2", "trigger": "event", "event": "ping", "tasks": [{"id": "t", "action": "noop"}]},
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def configured(journal: str, tmp_path: Path, **engine: Any) -> dict[str, Any]:
    if journal == "sqlite":
        journal = f"sqlite:///{tmp_path}/journal.db"
    return {
        "engine": {"journal": journal, "drain_timeout": 2.0, **engine},
        "workflows": WORKFLOWS,
        "auth": {"tokens": {ADMIN: {"uid": "ops", "cid": "acme", "roles": ["admin"]}}},
    }


@pytest.mark.anyio
@pytest.mark.parametrize("journal", ["sqlite", "memory", "off"])
async def test_a_key_starts_one_run_and_refuses_another_request(
    journal: str, tmp_path: Path
) -> None:
    async with Engine(configured(journal, tmp_path)) as engine:
        first = await engine.run("w", {"n": 1}, wait=False, idempotency_key="order-1")
        again = await engine.run("w", {"n": 1}, wait=False, idempotency_key="order-1")
        assert again.id == first.id
        waited = await engine.run("w", {"n": 1}, idempotency_key="order-1")
        assert (waited.id, waited.status) == (first.id, "succeeded")
        for other in (
            engine.run("w", {"n": 2}, idempotency_key="order-1"),
            engine.run("w", {"n": 1}, priority=3, idempotency_key="order-1"),
            engine.run("e1", {"n": 1}, idempotency_key="order-1"),
        ):
            with pytest.raises(IdempotencyConflict, match="another request"):
                await other
        # Sent together: still one run.
        ids: list[str] = []

        async def start() -> None:
            ids.append((await engine.run("w", {}, wait=False, idempotency_key="burst")).id)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(start)
        assert len(set(ids)) == 1
        # Events: one run per subscribed workflow, the same ids when sent again.
        runs = await engine.emit("ping", {"x": 1}, idempotency_key="evt-1")
        assert len(set(runs)) == 2
        assert await engine.emit("ping", {"x": 1}, idempotency_key="evt-1") == runs
        with pytest.raises(IdempotencyConflict):
            await engine.emit("ping", {"x": 2}, idempotency_key="evt-1")
        assert await engine.emit("ping", {"x": 1}) != runs  # without a key: new runs
        with pytest.raises(ValueError, match="idempotency_key must be a string of 1 to 200"):
            await engine.run("w", idempotency_key="")
        with pytest.raises(ValueError, match="idempotency_key"):
            await engine.emit("ping", idempotency_key="x" * 201)
        await anyio.sleep(0.05)
        started = [run for run in engine.recent_runs(100) if run.workflow == "w"]
        assert len(started) == 2  # order-1 and burst


@pytest.mark.anyio
async def test_a_key_outlives_a_restart_with_the_journal(tmp_path: Path) -> None:
    config = configured("sqlite", tmp_path)
    async with Engine(config) as engine:
        first = await engine.run("w", {"n": 1}, idempotency_key="durable")
        events = await engine.emit("ping", None, idempotency_key="durable-evt")
    async with Engine(config) as engine:
        assert (await engine.run("w", {"n": 1}, idempotency_key="durable")).id == first.id
        assert await engine.emit("ping", None, idempotency_key="durable-evt") == events
        with pytest.raises(IdempotencyConflict):
            await engine.run("w", {"n": 2}, idempotency_key="durable")
        assert [run.id for run in engine.recent_runs(10) if run.workflow == "w"] == [first.id]


@pytest.mark.anyio
@pytest.mark.parametrize("journal", ["sqlite", "off"])
async def test_keys_expire_and_maintenance_purges_them(journal: str, tmp_path: Path) -> None:
    config = configured(journal, tmp_path, idempotency_ttl=0.3)
    config["datasources"] = {"db": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/d.db"}}
    config["tables"] = {"items": {"columns": {"name": "text"}, "owner": "cid"}}
    acme = Identity(uid="u1", cid="acme", uname="ann")
    async with Engine(config) as engine:
        assert "wf78.maintenance" in engine.workflows  # every engine keeps its keys purged
        first = await engine.run("w", {}, idempotency_key="short")
        await engine.run("w", {}, idempotency_key="old")
        items = engine.table("items", identity=acme)
        row = await items.add({"name": "a"})
        assert await items.update(row, {"name": "b"}, idempotency_key="upd-1") == 1
        with pytest.raises(IdempotencyConflict):
            await items.update(row, {"name": "c"}, idempotency_key="upd-1")
        await anyio.sleep(0.4)
        # Expired: the key is free again, for a new request.
        assert (await engine.run("w", {"n": 2}, idempotency_key="short")).id != first.id
        report = await maintain(engine)
        assert report.keys_purged == 1  # the SQL source's upd-1
        assert report.run_keys_purged == 1  # "old"; "short" was claimed again since
        # Forgotten: the key names a new request now.
        assert await items.update(row, {"name": "c"}, idempotency_key="upd-1") == 1
        assert [found["name"] for found in await items.get()] == ["c"]
        assert (await maintain(engine)).keys_purged == 0


# -- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = Wf78Middleware(Starlette(), config=configured("memory", tmp_path), prefix="/_wf78")
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t/_wf78") as client:
            yield client


async def post(client: httpx.AsyncClient, path: str, body: Any, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {ADMIN}"}
    if key is not None:
        headers["idempotency-key"] = key
    return await client.post(path, json=body, headers=headers)


@pytest.mark.anyio
async def test_post_runs_and_events_take_the_header(admin: httpx.AsyncClient) -> None:
    run = {"workflow": "w", "context": {"n": 1}}
    first = await post(admin, "/runs", run, "http-1")
    assert first.status_code == 202, first.text
    again = await post(admin, "/runs", run, "http-1")
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert (await post(admin, "/runs", run, None)).json() != first.json()  # no key: a new run
    refused = await post(admin, "/runs", {"workflow": "w", "context": {"n": 2}}, "http-1")
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert (body["res"], body["kind"], body["back"]) == (-422, "idempotency_conflict", None)
    assert body["errmsg"].startswith("Idempotency-Key: ") and "another request" in body["errmsg"]
    events = await post(admin, "/events/ping", {"x": 1}, "http-2")
    assert events.status_code == 202 and len(events.json()["run_ids"]) == 2
    assert (await post(admin, "/events/ping", {"x": 1}, "http-2")).json() == events.json()
    assert (await post(admin, "/events/ping", {"x": 9}, "http-2")).status_code == 422
    for bad in ("", "x" * 256, "caf\u00e9"):
        raw = [
            (b"authorization", f"Bearer {ADMIN}".encode()),
            (b"idempotency-key", bad.encode()),
        ]
        for path, body in (("/runs", run), ("/events/ping", {})):
            response = await admin.post(path, json=body, headers=httpx.Headers(raw))
            assert response.status_code == 400, response.text
            body = response.json()
            assert (body["res"], body["kind"]) == (-400, "invalid")
            assert body["errmsg"].startswith("Idempotency-Key: must be 1 to 255")


# -- the Redis backend ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_redis_backend_keeps_keys_in_redis(namespace: str, tmp_path: Path) -> None:
    config = configured(
        "off", tmp_path, backend="redis", backend_url=REDIS_URL, backend_namespace=namespace
    )
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        async with Engine(config) as engine, Engine(config) as other:
            first = await engine.run("w", {"n": 1}, wait=False, idempotency_key="r-1")
            # Another process sharing the namespace finds the same key.
            assert (await other.run("w", {"n": 1}, idempotency_key="r-1")).id == first.id
            with pytest.raises(IdempotencyConflict):
                await other.run("w", {"n": 2}, idempotency_key="r-1")
            name = f"wf78:{{{namespace}}}:runkey:r-1"
            assert 86_000_000 < await client.pttl(name) <= 86_400_000
            runs = await engine.emit("ping", {}, idempotency_key="r-evt")
            assert await other.emit("ping", {}, idempotency_key="r-evt") == runs
            # A claim whose run never reached Redis (its start was lost): the replay sends
            # that start again, under the claimed id.
            key = run_key("lost", "w", {"n": 3}, None)
            lost = KeyedRun(key.fingerprint, uuid4().hex, time.time())
            claim = f"wf78:{{{namespace}}}:runkey:lost"
            await client.set(claim, msgspec.json.encode(lost), px=60_000)
            again = await other.run("w", {"n": 3}, idempotency_key="lost")
            assert (again.id, again.status) == (lost.run_id, "succeeded")
            recent = [run.id for run in await engine.fetch_recent_runs(20)]
            assert recent.count(first.id) == 1 and recent.count(lost.run_id) == 1
            assert len(recent) == 4  # r-1, r-evt's two, lost
    finally:
        await client.aclose()
