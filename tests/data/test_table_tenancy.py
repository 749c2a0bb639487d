"""A ``Table`` with an identity calls as its tenant: fair shares between tenants, the
``[limits.<name>]`` of its table and koa78 method, the ``tenant`` of its log records; and a
data route calling ``Table`` is limited and fair-shared once, not once per method it calls.
Real SQLite files; the clock is never read by an assertion."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.tracing_util import by_name, traced
from wf78_core import Engine, Identity, RateLimited, Table, hookimpl
from wf78_core.config.rules import KOA78_METHODS
from wf78_core.core.fairness import TENANT
from wf78_core.core.logcontext import ContextFilter, JsonFormatter
from wf78_core.data.tenancy import KOA78_METHOD
from wf78_core.http.middleware import Wf78Middleware
from wf78_core.http.routes import METHODS

__all__ = ["traced"]  # the fixture, used by name

ALICE = Identity(uid="u-alice", cid="acme", uname="alice")
AMY = Identity(uid="u-amy", cid="acme", uname="amy")  # alice's colleague: the same tenant
BOB = Identity(uid="u-bob", cid="globex", uname="bob")
TOKENS = {"alice-token": ALICE, "bob-token": BOB}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite runs on asyncio only


def make_config(path: Path, limits: dict[str, Any] | None = None, **engine: Any) -> dict[str, Any]:
    return {
        "engine": {"journal": "memory", "drain_timeout": 2.0, **engine},
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{path}"}},
        "tables": {
            "items": {
                "columns": {"name": "text", "qty": "int"},
                "owner": "cid",
                "route": "api/demo",
                "data_source": "db",
            },
            "notes": {"columns": {"body": "text"}, "owner": "cid", "data_source": "db"},
            "plain": {"columns": {"label": "text"}, "data_source": "db"},
        },
        "auth": {"tokens": {token: identity for token, identity in TOKENS.items()}},
        "limits": limits or {},
    }


@asynccontextmanager
async def started(config: dict[str, Any], **options: Any) -> AsyncIterator[Engine]:
    async with Engine(config, **options) as engine:
        yield engine


def test_each_table_method_has_its_koa78_method() -> None:
    public = {
        name
        for cls in Table.__mro__
        for name, value in vars(cls).items()
        if not name.startswith("_") and callable(value) and name != "call_as"
    }
    assert public == set(KOA78_METHOD)
    assert set(KOA78_METHOD.values()) <= set(KOA78_METHODS)
    assert set(KOA78_METHODS) == set(METHODS)  # the names a limit may use are the routes'


@pytest.mark.anyio
async def test_table_calls_wait_in_their_tenants_turn(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with started(make_config(path, fair_by="cid", max_running=1)) as engine:
        running = engine.admission.running
        running.in_use = running.capacity  # every slot busy: the calls queue

        async def add(identity: Identity, name: str) -> None:
            await engine.table("items", identity=identity).add({"name": name})

        async with anyio.create_task_group() as group:
            for identity, name in [(ALICE, "a1"), (AMY, "a2"), (ALICE, "a3"), (BOB, "b1")]:
                group.start_soon(add, identity, name)
                await anyio.wait_all_tasks_blocked()  # queued in this order
            assert engine.stats().queued_by_tenant == {"acme": 3, "globex": 1}
            assert TENANT.get() == ""  # set inside each call only
            engine.scheduler.release(running.alone)  # the stand-in leaves: the queue drains
        assert engine.stats().queued_by_tenant == {}
        assert running.in_use == 0
    with sqlite3.connect(path) as connection:
        written = [row[0] for row in connection.execute("SELECT name FROM items ORDER BY rowid")]
    # One slot, granted in turns: globex's one call does not wait behind acme's three.
    assert written == ["a1", "b1", "a2", "a3"]


@pytest.mark.anyio
async def test_over_the_rate_a_table_call_is_refused(tmp_path: Path) -> None:
    limits = {"api": {"rate": 0.01, "burst": 3}}  # one call per 100 s after the burst
    async with started(make_config(tmp_path / "db.sqlite", limits)) as engine:
        items = engine.table("items", identity=ALICE)
        ids = [await items.add({"name": f"n{index}"}) for index in range(3)]
        with pytest.raises(RateLimited) as refused:
            await items.add({"name": "one too many"})
        assert refused.value.limit == "api"
        assert refused.value.retry_after > 0
        assert refused.value.retryable is True
        assert refused.value.policy == '"api";q=3;w=300'
        # amy is another key of "api" (key = "cid" is acme's): acme has spent its burst.
        with pytest.raises(RateLimited):
            await engine.table("items", identity=AMY).get()
        # globex has its own key; a table without identity (the app's own work) no limit.
        for _ in range(3):
            await engine.table("notes", identity=BOB).add({"body": "b"})
            await engine.table("plain").add({"label": "the app's own"})
        (stats,) = engine.stats().limits
        assert (stats.allowed, stats.limited, stats.keys) == (6, 2, 2)
    with sqlite3.connect(tmp_path / "db.sqlite") as connection:
        stored = {row[0] for row in connection.execute("SELECT id FROM items")}
    assert stored == set(ids)


@pytest.mark.anyio
async def test_a_call_counts_once_whatever_it_calls(tmp_path: Path) -> None:
    limits = {"api": {"rate": 0.01, "burst": 3}}
    async with started(make_config(tmp_path / "db.sqlite", limits)) as engine:
        items = engine.table("items", identity=ALICE)
        first = await items.add({"name": "first", "qty": 1})  # 1
        # update_by_id calls update; upsert_by_first_field reads, then adds: one each.
        assert await items.update_by_id({"id": first, "qty": 2}) == 1  # 2
        await items.upsert_by_first_field({"name": "second", "qty": 3})  # 3
        with pytest.raises(RateLimited):
            await items.get()
        (stats,) = engine.stats().limits
        assert (stats.allowed, stats.limited) == (3, 1)


@pytest.mark.anyio
async def test_a_limit_keeps_to_its_tables_and_methods(tmp_path: Path) -> None:
    limits = {"adds": {"rate": 0.01, "burst": 1, "tables": ["items"], "methods": ["mAdd", "mByid"]}}
    async with started(make_config(tmp_path / "db.sqlite", limits)) as engine:
        items = engine.table("items", identity=ALICE)
        row = await items.add({"name": "x"})
        with pytest.raises(RateLimited, match="'adds'"):
            await items.add({"name": "y"})
        with pytest.raises(RateLimited, match="'adds'"):
            await items.upsert({"id": row, "name": "z"})  # mByid
        # Other methods of items, and add on another table, are not the limit's.
        notes = engine.table("notes", identity=ALICE)
        for index in range(3):
            await items.get()
            await items.add_many([{"name": f"m{index}"}])  # mAddMany
            await items.update(row, {"qty": index})
            await notes.add({"body": "free"})
        (stats,) = engine.stats().limits
        assert (stats.allowed, stats.limited) == (1, 2)


@pytest.mark.anyio
async def test_a_limit_of_a_method_leaves_the_methods_calling_it(tmp_path: Path) -> None:
    limits = {"reads": {"rate": 0.01, "burst": 1, "methods": ["get", "mAdd"]}}
    async with started(make_config(tmp_path / "db.sqlite", limits, fair_by="")) as engine:
        items = engine.table("items", identity=ALICE)
        # upsert_by_first_field reads (get) and adds, as mByFirstField: not the limit's.
        for index in range(3):
            await items.upsert_by_first_field({"name": f"n{index}"})
        assert len(await items.get()) == 3
        with pytest.raises(RateLimited, match="'reads'"):
            await items.search("n1")  # get(kind="search") spelt otherwise
        (stats,) = engine.stats().limits
        assert (stats.allowed, stats.limited) == (1, 1)


@pytest.mark.anyio
async def test_over_concurrent_a_call_waits_then_is_refused(tmp_path: Path) -> None:
    limits = {"one_at_a_time": {"concurrent": 1, "wait": 0.2}}
    async with started(make_config(tmp_path / "db.sqlite", limits)) as engine:
        rule = engine.limits.rules[0]
        # acme has a call in flight (held here, as a slow call would hold it).
        held = await engine.limits.enter(AMY, "items", "mAdd")
        items = engine.table("items", identity=ALICE)
        with pytest.raises(RateLimited, match="concurrency limit 'one_at_a_time'") as refused:
            await items.add({"name": "x"})
        assert refused.value.retry_after == 1.0
        await engine.table("items", identity=BOB).add({"name": "bob's own slot"})
        passed: list[str] = []

        async def add() -> None:
            passed.append(await items.add({"name": "waited"}))

        async with anyio.create_task_group() as group:
            group.start_soon(add)
            await anyio.wait_all_tasks_blocked()
            assert passed == []  # waiting for acme's slot
            await held.leave()  # the slot passes straight to the waiting call
        assert len(passed) == 1
        stats = rule.stats()
        assert (stats.allowed, stats.limited, stats.in_flight) == (3, 1, 0)


class _Logging:
    """Logs from inside each operation that picks its source (a table without one)."""

    @hookimpl
    def wf78_select_datasource(self, operation: Any, candidates: Any) -> None:
        logging.getLogger("wf78.test.tenancy").info("choosing for %s", operation.action)


@pytest.mark.anyio
async def test_log_records_inside_a_table_call_carry_its_tenant(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path / "db.sqlite")
    for name in ("notes", "plain"):
        config["tables"][name].pop("data_source")  # chosen per operation: the hook logs
    caplog.set_level(logging.INFO, logger="wf78.test.tenancy")
    caplog.handler.addFilter(ContextFilter())
    try:
        async with started(config, plugins=[_Logging()]) as engine:
            await engine.table("notes", identity=BOB).add({"body": "b"})
            await engine.table("plain").get()
    finally:
        caplog.handler.removeFilter(caplog.handler.filters[-1])
    bobs, nobodys = [r for r in caplog.records if r.name == "wf78.test.tenancy"]
    assert bobs.tenant == "globex"  # type: ignore[attr-defined]
    assert '"tenant": "globex"' in JsonFormatter().format(bobs)
    assert not hasattr(nobodys, "tenant")


@pytest.mark.anyio
async def test_the_span_of_a_table_call_names_its_tenant(
    traced: InMemorySpanExporter, tmp_path: Path
) -> None:
    async with started(make_config(tmp_path / "db.sqlite", fair_by="cid")) as engine:
        await engine.table("items", identity=BOB).add({"name": "b"})
        await engine.table("plain").add({"label": "nobody's"})
    (bobs,) = by_name(traced.get_finished_spans(), "add items")
    (nobodys,) = by_name(traced.get_finished_spans(), "add plain")
    assert bobs.attributes is not None and bobs.attributes["wf78.tenant"] == "globex"
    assert nobodys.attributes is not None and "wf78.tenant" not in nobodys.attributes


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


@pytest.mark.anyio
async def test_a_data_route_is_limited_once(tmp_path: Path) -> None:
    limits = {"api": {"rate": 0.01, "burst": 3}}
    engine = Engine(make_config(tmp_path / "db.sqlite", limits))
    app = Wf78Middleware(_app, engine=engine)
    headers = {"Authorization": "Bearer alice-token"}
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def upsert(name: str) -> httpx.Response:
                # koa78's m: an update of mid (no such row), then an add: two Table calls.
                body = {"mid": "12345", "pars": [name]}
                return await client.post("/api/demo/items/m", json=body, headers=headers)

            answers = [await upsert(f"n{index}") for index in range(3)]
            assert [answer.status_code for answer in answers] == [200, 200, 200]
            assert answers[0].headers["ratelimit-policy"] == '"api";q=3;w=300'
            assert answers[0].headers["ratelimit"] == '"api";r=2;t=100'
            refused = await upsert("one too many")
            assert refused.status_code == 429
            assert refused.json()["kind"] == "rate_limited"
            assert int(refused.headers["retry-after"]) > 0
            assert refused.headers["ratelimit-policy"] == '"api";q=3;w=300'
            assert refused.headers["ratelimit"].startswith('"api";r=0;t=')
            # The same caller from Python shares the key, and the count.
            with pytest.raises(RateLimited):
                await engine.table("items", identity=ALICE).get()
    (stats,) = engine.stats().limits
    assert (stats.allowed, stats.limited) == (3, 2)


@pytest.mark.anyio
async def test_a_route_is_limited_by_its_own_method_only(tmp_path: Path) -> None:
    limits = {"adds": {"rate": 0.01, "burst": 1, "methods": ["mAdd", "mUpdate"]}}
    engine = Engine(make_config(tmp_path / "db.sqlite", limits, fair_by=""))  # no tenants
    app = Wf78Middleware(_app, engine=engine)
    headers = {"Authorization": "Bearer alice-token"}
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for index in range(3):  # m calls update and add: it is neither mUpdate nor mAdd
                body = {"mid": "12345", "pars": [f"n{index}"]}
                answer = await client.post("/api/demo/items/m", json=body, headers=headers)
                assert answer.status_code == 200, answer.text
                assert "ratelimit" not in answer.headers
            added = await client.post("/api/demo/items/mAdd", json={"pars": ["a"]}, headers=headers)
            assert added.status_code == 200
            again = await client.post("/api/demo/items/mAdd", json={"pars": ["b"]}, headers=headers)
            assert again.status_code == 429
    (stats,) = engine.stats().limits
    assert (stats.allowed, stats.limited) == (1, 1)
