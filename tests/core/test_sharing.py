"""Shared reads: identical reads in flight run once, each caller gets its own copy, owners
never share, and no read joins one begun before a write was acknowledged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import uuid4

import anyio
import httpx
import pymysql
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from wf78_core import Engine, Identity, Operation, Table
from wf78_core.core.admission import Counters
from wf78_core.core.sharing import SharedReads
from wf78_core.definitions import Result
from wf78_core.http.middleware import Wf78Middleware

ALICE = Identity(uid="u-a", cid="acme", uname="alice")
BOB = Identity(uid="u-b", cid="globex", uname="bob")
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "database": "test"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def memory_config(*, latency: float = 0.05, shared: bool = True) -> dict[str, Any]:
    return {
        "engine": {"drain_timeout": 2.0, "shared_reads": shared},
        "datasources": {"mem": {"type": "memory", "latency": latency}},
        "tables": {
            "items": {
                "columns": {"name": "text", "meta": "json"},
                "owner": "cid",
                "data_source": "mem",
                "route": "api/t",
            }
        },
        "auth": {
            "tokens": {
                "tok-alice": {"uid": "u-a", "cid": "acme", "uname": "alice"},
                "tok-bob": {"uid": "u-b", "cid": "globex", "uname": "bob"},
                "tok-admin": {"uid": "u-r", "cid": "ops", "uname": "root", "roles": ["admin"]},
            }
        },
    }


def source_ops(engine: Engine, name: str) -> int:
    (source,) = [s for s in engine.stats().sources if s.name == name]
    return source.ops


async def together(count: int, call: Callable[[], Awaitable[Any]]) -> list[Any]:
    """``count`` calls started at the same moment, each its own task; their results."""
    results: list[Any] = [None] * count

    async def one(index: int) -> None:
        results[index] = await call()

    async with anyio.create_task_group() as tg:
        for index in range(count):
            tg.start_soon(one, index)
    return results


@pytest.mark.anyio
async def test_identical_reads_in_flight_run_once_and_each_caller_gets_a_copy() -> None:
    async with Engine(memory_config()) as engine:
        alice = Table(engine, "items", identity=ALICE)
        await alice.add({"name": "pen", "meta": {"tags": ["a"]}})
        before = source_ops(engine, "mem")
        found = await together(50, lambda: alice.get(where={"name": "pen"}))
        assert source_ops(engine, "mem") == before + 1
        assert engine.stats().reads_shared == 49
        assert all(rows == found[0] for rows in found)
        # Every caller's rows are its own, nested JSON included.
        found[0][0]["name"] = "changed"
        found[1][0]["meta"]["tags"].append("mutated")
        assert {rows[0]["name"] for rows in found[2:]} == {"pen"}
        assert {tuple(rows[0]["meta"]["tags"]) for rows in found[2:]} == {("a",)}
        # Another read after they finished queries again.
        assert await alice.get(where={"name": "pen"}) == [
            {**found[2][0], "name": "pen", "meta": {"tags": ["a"]}}
        ]
        assert source_ops(engine, "mem") == before + 2


@pytest.mark.anyio
async def test_owners_never_share_a_read() -> None:
    async with Engine(memory_config()) as engine:
        alice = Table(engine, "items", identity=ALICE)
        bob = Table(engine, "items", identity=BOB)
        await alice.add({"name": "pen"})
        await bob.add({"name": "pen"})
        before = source_ops(engine, "mem")

        async def both() -> tuple[Any, Any]:
            found: dict[str, Any] = {}

            async def read(who: str, table: Table) -> None:
                found[who] = await table.get(where={"name": "pen"})

            async with anyio.create_task_group() as tg:
                tg.start_soon(read, "alice", alice)
                tg.start_soon(read, "bob", bob)
            return found["alice"], found["bob"]

        mine, his = await both()
        assert source_ops(engine, "mem") == before + 2
        assert engine.stats().reads_shared == 0
        assert [row["cid"] for row in mine] == ["acme"]
        assert [row["cid"] for row in his] == ["globex"]


@pytest.mark.anyio
async def test_different_reads_do_not_share_and_sharing_can_be_turned_off() -> None:
    async with Engine(memory_config()) as engine:
        alice = Table(engine, "items", identity=ALICE)
        await alice.add({"name": "pen"})
        before = source_ops(engine, "mem")
        pages = [0, 1, 0, 1]
        await together(4, lambda: alice.get(where={"name": "pen"}, start=pages.pop()))
        assert source_ops(engine, "mem") == before + 2  # two pages, each read once
        assert engine.stats().reads_shared == 2
    async with Engine(memory_config(shared=False)) as engine:
        alice = Table(engine, "items", identity=ALICE)
        await alice.add({"name": "pen"})
        before = source_ops(engine, "mem")
        await together(10, lambda: alice.get(where={"name": "pen"}))
        assert source_ops(engine, "mem") == before + 10
        assert engine.stats().reads_shared == 0


def _get(table: str = "t", where: dict[str, Any] | None = None) -> Operation:
    return Operation(action="get", table=table, where=where or {"cid": "acme"})


class Gate:
    """A read that runs until released: how many times it ran, and what it answers."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.runs = 0
        self.release = anyio.Event()

    async def __call__(self) -> Result:
        self.runs += 1
        await self.release.wait()
        if isinstance(self.value, Exception):
            raise self.value
        return Result(value=self.value, data_source="db", source_type="sqlite", reason="test")


@pytest.mark.anyio
async def test_no_read_joins_one_begun_before_a_write_was_acknowledged() -> None:
    counters = Counters()
    shared = SharedReads(counters)
    first, second, third = Gate([{"v": 1}]), Gate([{"v": 2}]), Gate([{"v": 3}])
    results: dict[str, Result] = {}

    async def read(name: str, gate: Gate, op: Operation | None = None) -> None:
        results[name] = await shared.read(None, op or _get(), gate)

    async with anyio.create_task_group() as tg:
        tg.start_soon(read, "first", first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(read, "joins", Gate("never run"))
        await anyio.wait_all_tasks_blocked()
        # A write of another table changes nothing here; one of this table does.
        shared.wrote(Operation(action="add", table="other", values={}))
        tg.start_soon(read, "joins too", Gate("never run"))
        await anyio.wait_all_tasks_blocked()
        shared.wrote(Operation(action="update", table="t", where={"id": "1"}, values={}))
        tg.start_soon(read, "after the write", second)
        await anyio.wait_all_tasks_blocked()
        # A write without a table (raw SQL) starts a new generation of every table.
        shared.wrote(Operation(action="execute", sql="UPDATE t SET v = 3"))
        tg.start_soon(read, "after raw sql", third)
        await anyio.wait_all_tasks_blocked()
        # Reads do not: a get of the table, a cache read.
        shared.wrote(_get())
        shared.wrote(Operation(action="cache_get", key="k"))
        tg.start_soon(read, "joins the third", Gate("never run"))
        await anyio.wait_all_tasks_blocked()
        for gate in (first, second, third):
            gate.release.set()
    assert (first.runs, second.runs, third.runs) == (1, 1, 1)
    assert results["joins"].value == results["joins too"].value == [{"v": 1}]
    assert results["after the write"].value == [{"v": 2}]
    assert results["after raw sql"].value == results["joins the third"].value == [{"v": 3}]
    assert counters.reads_shared == 3
    assert shared.in_flight == 0


@pytest.mark.anyio
async def test_when_the_first_read_fails_the_joined_ones_run_on_their_own() -> None:
    counters = Counters()
    shared = SharedReads(counters)
    failing = Gate(RuntimeError("the source went away"))
    own = Gate([{"v": "own"}])
    outcome: dict[str, Any] = {}

    async def first() -> None:
        try:
            await shared.read(None, _get(), failing)
        except RuntimeError as error:
            outcome["first"] = error

    async def joined() -> None:
        outcome["joined"] = (await shared.read(None, _get(), own)).value

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(joined)
        await anyio.wait_all_tasks_blocked()
        assert own.runs == 0  # waiting on the first read
        own.release.set()
        failing.release.set()
    assert str(outcome["first"]) == "the source went away"
    assert outcome["joined"] == [{"v": "own"}] and own.runs == 1
    assert counters.reads_shared == 0


@pytest.mark.anyio
async def test_a_cancelled_first_read_leaves_no_one_waiting() -> None:
    shared = SharedReads(Counters())
    stuck = Gate([{"v": "never"}])  # never released
    own = Gate([{"v": "own"}])
    own.release.set()
    outcome: dict[str, Any] = {}
    first_scope = anyio.CancelScope()

    async def first() -> None:
        with first_scope:
            await shared.read(None, _get(), stuck)

    async def joined() -> None:
        outcome["joined"] = (await shared.read(None, _get(), own)).value

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(joined)
        await anyio.wait_all_tasks_blocked()
        assert own.runs == 0  # waiting on the first read
        first_scope.cancel()
    assert outcome["joined"] == [{"v": "own"}] and own.runs == 1
    assert shared.in_flight == 0


@pytest.mark.anyio
async def test_http_data_routes_share_reads_and_count_them() -> None:
    app: Any = Wf78Middleware(Starlette(), engine=Engine(memory_config()))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            headers = {"authorization": "Bearer tok-alice"}
            added = await client.post("/api/t/items/mAdd", json={"pars": ["pen"]}, headers=headers)
            assert added.status_code == 200, added.text
            before = source_ops(app.engine, "mem")

            async def get() -> Any:
                response = await client.post(
                    "/api/t/items/get", json={"pars": ["pen"]}, headers=headers
                )
                assert response.status_code == 200, response.text
                return response.json()["back"]

            answers = await together(20, get)
            assert all(answer == answers[0] for answer in answers)
            assert answers[0][0]["name"] == "pen"
            assert source_ops(app.engine, "mem") == before + 1
            assert app.engine.stats().reads_shared == 19
            admin = {"authorization": "Bearer tok-admin"}
            status = await client.get("/_wf78/status", headers=admin)
            assert status.json()["reads_shared"] == 19
            metrics = await client.get("/_wf78/metrics", headers=admin)
            assert "wf78_reads_shared_total 19.0" in metrics.text


@pytest.mark.anyio
async def test_mysql_reads_share_and_read_your_writes_holds() -> None:
    """On the real MariaDB: 40 identical reads cost fewer queries than reads; a write
    acknowledged, then read, is always seen."""
    table = f"t_{uuid4().hex[:8]}_shared"
    config = {
        "engine": {"drain_timeout": 2.0},
        "datasources": {
            "db": {"type": "mysql", "url": "mysql://root@127.0.0.1:3306/test", "maxsize": 4}
        },
        "tables": {table: {"columns": {"name": "text", "qty": "int"}, "owner": "cid"}},
    }
    try:
        async with Engine(config) as engine:
            alice = Table(engine, table, identity=ALICE)
            row_id = await alice.add({"name": "pen", "qty": 0})
            before = source_ops(engine, "db")
            found = await together(40, lambda: alice.get(where={"id": row_id}))
            assert all(rows == found[0] for rows in found)
            assert source_ops(engine, "db") - before < 40
            assert engine.stats().reads_shared == 40 - (source_ops(engine, "db") - before)

            # A write acknowledged, then read: always seen, whatever reads are in flight.
            seen: list[int] = []

            async def step(qty: int) -> None:
                await alice.update(row_id, {"qty": qty})
                (row,) = await alice.get(where={"id": row_id, "qty": qty})
                seen.append(row["qty"])

            for qty in range(1, 6):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(step, qty)
                    for _ in range(10):
                        tg.start_soon(lambda: alice.get(where={"id": row_id}))
            assert seen == [1, 2, 3, 4, 5]
    finally:
        connection = pymysql.connect(**MYSQL)
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
        finally:
            connection.close()
