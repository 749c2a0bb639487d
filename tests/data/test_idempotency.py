"""Idempotent writes: a write run again (a retry, a re-execution after a crash, a replayed
request) never doubles a row, on SQLite, MariaDB, Redis, Elasticsearch (osmem) and over HTTP.

Everything runs against the real services; the one stand-in is a TCP proxy in front of
MariaDB that loses the server's answer to a COMMIT (the server did commit), which is how
a real network makes a commit's outcome unknown.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiomysql
import anyio
import httpx
import msgspec
import pymysql
import pytest
import redis.asyncio
from asgi_lifespan import LifespanManager
from osmem_server import OsmemServer
from starlette.applications import Starlette

from tests import pgutil
from tests.esutil import JsonNode
from wf78_core import Engine, Identity, Operation, Table
from wf78_core.config import TableConfig
from wf78_core.errors import DataSourceError, IdempotencyConflict, InvalidOperation
from wf78_core.http.middleware import Wf78Middleware
from wf78_core.idempotency import (
    AUTO_PREFIX,
    MAX_KEY,
    WRITE_ACTIONS,
    check_replay,
    derive_key,
    explicit_key,
    fingerprint,
    generated_ids,
    is_auto,
    is_write,
    key_id,
    prepare,
    prepare_task,
    recall,
    record,
    task_key,
)
from wf78_core.ids import snowflake_id
from wf78_core.plugin.datasource import SourceSpec, TableSchema
from wf78_elasticsearch import ElasticsearchSource
from wf78_mysql import MySQLSource
from wf78_postgres import PostgresSource
from wf78_redis import RedisSource
from wf78_sql import SqlSource
from wf78_sqlite import SQLiteSource

MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
MYSQL: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 3306,
    "user": "root",
    "password": "",
    "db": "test",
}
REDIS_URL = "redis://127.0.0.1:6379/0"
ITEMS = TableConfig(columns={"name": "text", "qty": "int"}, owner="cid")
NODE_CLASS = f"{JsonNode.__module__}.{JsonNode.__qualname__}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite and aiomysql run on asyncio only


def add(
    table: str, *, key: str | None = None, retry: int | None = None, **values: Any
) -> Operation:
    """An ``add`` of one row of company acme."""
    return Operation(
        action="add",
        table=table,
        values={"cid": "acme", **values},
        idempotency_key=key,
        retry=retry,
    )


# -- prepare and the keys, without a service ----------------------------------------------


def test_prepare_gives_an_insert_its_id_and_a_key_naming_it() -> None:
    op = add("items", name="pen")
    ready = prepare(op)
    assert op.values == {"cid": "acme", "name": "pen"}  # the caller's operation is untouched
    assert ready.values is not None
    row_id = ready.values["id"]
    assert row_id.isdigit() and ready.idempotency_key == AUTO_PREFIX + row_id
    assert prepare(ready) is ready  # once prepared, every attempt reuses it as it is
    assert generated_ids(ready) == [row_id]
    assert is_auto(AUTO_PREFIX + row_id) and explicit_key(ready) is None


def test_prepare_add_many_and_upsert_and_incr() -> None:
    many = prepare(Operation(action="add_many", table="t", rows=[{"name": "a"}, {"name": "b"}]))
    assert many.rows is not None
    ids = [row["id"] for row in many.rows]
    assert len(set(ids)) == 2 and many.idempotency_key == AUTO_PREFIX + ids[0]
    assert generated_ids(many) == ids
    # A caller's id stays, and then not every id is ours: a duplicate stays an error.
    mixed = prepare(Operation(action="add_many", table="t", rows=[{"id": "x"}, {"name": "b"}]))
    assert mixed.rows is not None and mixed.rows[0] == {"id": "x"}
    assert generated_ids(mixed) == []
    upsert = prepare(Operation(action="upsert", table="t", values={"name": "n"}))
    assert upsert.values is not None and upsert.values["id"]
    by_where = Operation(action="upsert", table="t", values={"n": 1}, where={"id": "p"})
    assert prepare(by_where) is by_where  # Elasticsearch takes that upsert's id from where
    incr = prepare(Operation(action="incr", key="hits"))
    assert incr.idempotency_key is not None
    assert is_auto(incr.idempotency_key)


def test_prepare_leaves_other_operations_alone() -> None:
    for op in (
        Operation(action="add", table="t", values={"id": "mine"}),
        Operation(action="add_many", table="t", rows=[{"id": "a"}], conflict="ignore"),
        Operation(action="update", table="t", values={"n": 1}, where={"id": "a"}),
        Operation(action="delete", table="t", where={"id": "a"}),
        Operation(action="cache_set", key="k", value=1),
        Operation(action="get", table="t"),
        Operation(action="incr", key="k", idempotency_key="mine"),
    ):
        assert prepare(op) is op
        assert not generated_ids(op)
    assert is_write(Operation(action="update_many", table="t")) and "incr" in WRITE_ACTIONS
    assert not is_write(Operation(action="get", table="t"))


def test_a_callers_key_derives_the_ids() -> None:
    op = Operation(action="add", table="t", values={"n": 1}, idempotency_key="order-7")
    first, again = prepare(op), prepare(Operation(**{**msgspec.structs.asdict(op)}))
    assert first.values == again.values and first.values is not None
    assert first.values["id"] == key_id("order-7") and first.idempotency_key == "order-7"
    assert explicit_key(first) == "order-7" and generated_ids(first) == [key_id("order-7")]
    rows = prepare(
        Operation(action="add_many", table="t", rows=[{"n": 1}, {"n": 2}], idempotency_key="b")
    )
    assert rows.rows is not None
    assert [row["id"] for row in rows.rows] == [key_id("b", 0), key_id("b", 1)]
    assert len({key_id("b"), key_id("b", 0), key_id("c")}) == 3


def test_a_workflow_tasks_writes_get_the_same_key_in_every_run_of_it() -> None:
    add_op = Operation(action="add", table="t", values={"n": 1})
    first, resumed = prepare_task(add_op, "run-1", "save"), prepare_task(add_op, "run-1", "save")
    assert first == resumed and first.idempotency_key == task_key("run-1", "save")
    assert first.values is not None and first.values["id"] == key_id(task_key("run-1", "save"))
    assert prepare_task(add_op, "run-2", "save") != first
    incr = prepare_task(Operation(action="incr", key="k"), "run-1", "count")
    assert incr.idempotency_key == task_key("run-1", "count")
    for natural in (
        Operation(action="update", table="t", values={"n": 1}, where={"id": "a"}),
        Operation(action="add", table="t", values={"id": "a"}),
        Operation(action="add", table="t", values={"n": 1}, idempotency_key="mine"),
    ):
        assert prepare_task(natural, "run-1", "x") == prepare(natural)


@pytest.mark.parametrize("key", ["", "x" * (MAX_KEY + 1)])
def test_a_bad_key_is_refused_naming_it(key: str) -> None:
    with pytest.raises(ValueError, match="idempotency_key must have 1 to 200 characters"):
        Operation(action="add", idempotency_key=key)
    with pytest.raises(msgspec.ValidationError, match="idempotency_key"):
        msgspec.convert({"action": "add", "idempotency_key": key}, Operation)
    Operation(action="add", idempotency_key="x" * MAX_KEY)


def test_derive_key_scopes_and_hashes() -> None:
    assert derive_key("acme", "abc") == "acme:abc"
    long = derive_key("acme", "x" * MAX_KEY)
    assert long.startswith("#") and len(long) <= MAX_KEY
    assert derive_key("acme", "x" * MAX_KEY) == long != derive_key("globex", "x" * MAX_KEY)
    assert not is_auto(derive_key("~acme", "abc"))  # a caller's key never looks generated


# -- SQL: SQLite and MariaDB --------------------------------------------------------------


@dataclass
class Sql:
    source: SqlSource
    table: str

    async def count(self, **where: Any) -> int:
        op = Operation(action="count", table=self.table, where=where or None)
        found: int = await self.source.execute(op)
        return found

    async def row(self, row_id: str) -> dict[str, Any]:
        rows = await self.source.execute(
            Operation(action="get", table=self.table, where={"id": row_id})
        )
        assert len(rows) == 1, rows
        found: dict[str, Any] = rows[0]
        return found


def _drop_mysql_tables(*tables: str) -> None:
    connection = pymysql.connect(
        host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"], database=MYSQL["db"]
    )
    try:
        with connection.cursor() as cursor:
            for table in tables:
                cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
    finally:
        connection.close()


@asynccontextmanager
async def sql_source(kind: str, tmp_path: Path) -> AsyncIterator[Sql]:
    """A running source of ``kind`` with a table (and an idempotency table) of its own."""
    suffix = uuid4().hex[:8]
    table = f"t_{suffix}_items"
    tables = {table: TableSchema.from_config(table, ITEMS)}
    source: SQLiteSource | MySQLSource | PostgresSource
    if kind == "postgres":
        spec = SourceSpec(
            name="db",
            type="postgres",
            url=pgutil.PG_URL,
            options=PostgresSource.Options(maxsize=4),
            tables=tables,
        )
        source = PostgresSource(spec)
    elif kind == "sqlite":
        options: Any = SQLiteSource.Options()
        spec = SourceSpec(
            name="db",
            type="sqlite",
            url=f"sqlite:///{tmp_path}/i.db",
            options=options,
            tables=tables,
        )
        source = SQLiteSource(spec)
    else:
        options = MySQLSource.Options(create_tables=True)
        spec = SourceSpec(name="db", type="mysql", url=MYSQL_URL, options=options, tables=tables)
        source = MySQLSource(spec)
    source.idempotency_table = f"t_{suffix}_keys"
    await source.open()
    try:
        if isinstance(source, PostgresSource):
            await source.ensure_tables()
        async with anyio.create_task_group() as tg:
            await tg.start(source.run)
            yield Sql(source, table)
            tg.cancel_scope.cancel()
    finally:
        await source.close()
        if kind == "mysql":
            _drop_mysql_tables(table, source.idempotency_table)
        if kind == "postgres":
            pgutil.drop_tables(table, source.idempotency_table)


@pytest.fixture(params=["sqlite", "mysql", "postgres"])
async def sql(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sql]:
    async with sql_source(request.param, tmp_path) as made:
        yield made


@pytest.mark.anyio
async def test_a_prepared_add_run_again_writes_one_row(sql: Sql) -> None:
    op = prepare(add(sql.table, name="pen", qty=1))
    first = await sql.source.execute(op)
    assert await sql.source.execute(op) == first  # across batches: the second finds it stored
    many = prepare(Operation(action="add_many", table=sql.table, rows=[{"name": "a"}] * 3))
    ids = await sql.source.execute(many)
    assert await sql.source.execute(many) == ids and len(set(ids)) == 3
    upsert = prepare(Operation(action="upsert", table=sql.table, values={"name": "u"}))
    assert await sql.source.execute(upsert) == await sql.source.execute(upsert)
    assert await sql.count() == 5
    # Generated keys cost no statement: the idempotency table was never even needed.
    assert not sql.source.keeps_key_table


@pytest.mark.anyio
async def test_the_same_add_run_concurrently_in_one_batch_writes_one_row(sql: Sql) -> None:
    op = prepare(add(sql.table, name="pen"))
    other = prepare(add(sql.table, name="ink"))
    results: list[Any] = []
    before = sql.source.transactions

    async def run(operation: Operation) -> None:
        results.append(await sql.source.execute(operation))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(run, op)
        tg.start_soon(run, other)
    assert sql.source.transactions - before < 21  # they shared group-commit batches
    assert op.values is not None and other.values is not None
    assert sorted(results) == sorted([op.values["id"]] * 20 + [other.values["id"]])
    assert await sql.count() == 2


@pytest.mark.anyio
async def test_a_callers_duplicate_id_still_fails_clearly(sql: Sql) -> None:
    await sql.source.execute(prepare(add(sql.table, id="mine")))
    for op in (add(sql.table, id="mine"), prepare(add(sql.table, id="mine"))):
        with pytest.raises(DataSourceError, match="duplicate key") as caught:
            await sql.source.execute(op)
        assert caught.value.conflict and not caught.value.retryable
    rows = [{"name": "x", "cid": "acme"}, {"id": "mine", "cid": "acme"}]
    with pytest.raises(DataSourceError, match="duplicate key"):
        await sql.source.execute(prepare(Operation(action="add_many", table=sql.table, rows=rows)))
    assert await sql.count() == 1


@pytest.mark.anyio
async def test_a_callers_key_replayed_returns_the_first_result(sql: Sql) -> None:
    source, table = sql.source, sql.table

    async def twice(op: Operation) -> Any:
        """Run ``op``, then a replay built from scratch with the same key; the result."""
        first = await source.execute(prepare(op))
        again = await source.execute(prepare(Operation(**msgspec.structs.asdict(op))))
        assert again == first
        return first

    row_id = await twice(add(table, name="pen", qty=1, key="k-add"))
    ids = await twice(
        Operation(
            action="add_many",
            table=table,
            rows=[{"name": "a"}, {"name": "b"}],
            idempotency_key="k-many",
        )
    )
    assert await sql.count() == 3
    # A replayed update changes nothing, even after another write changed the row.
    update = Operation(
        action="update",
        table=table,
        values={"qty": 2},
        where={"id": row_id},
        idempotency_key="k-update",
    )
    assert await source.execute(update) == 1
    await source.execute(
        Operation(action="update", table=table, values={"qty": 9}, where={"id": row_id})
    )
    assert await source.execute(update) == 1 and (await sql.row(row_id))["qty"] == 9
    # A replayed delete answers what the delete did, though nothing is left to delete.
    delete = Operation(action="delete", table=table, where={"id": ids[0]}, idempotency_key="k-del")
    assert await source.execute(delete) == 1
    assert await source.execute(delete) == 1 and await sql.count() == 2
    upsert = Operation(
        action="upsert", table=table, values={"id": "u1", "qty": 5}, idempotency_key="k-upsert"
    )
    assert await source.execute(upsert) == "u1"
    await source.execute(
        Operation(action="update", table=table, values={"qty": 6}, where={"id": "u1"})
    )
    assert await source.execute(upsert) == "u1" and (await sql.row("u1"))["qty"] == 6
    # A key is a key: another write with it answers the first write's result.
    reused = add(table, id="x", name="other", key="k-add")
    assert await source.execute(reused) == row_id
    assert await sql.count() == 3


@pytest.mark.anyio
async def test_a_task_run_again_after_a_crash_writes_once(sql: Sql) -> None:
    # What a resumed run does: the task's operation is built again from its parameters.
    def task() -> Operation:
        return prepare_task(add(sql.table, name="log"), "run-7", "write-log")

    first = await sql.source.execute(task())
    assert await sql.source.execute(task()) == first
    assert await sql.count() == 1


@pytest.mark.anyio
async def test_a_callers_key_sent_concurrently_writes_once(sql: Sql) -> None:
    results: list[Any] = []

    async def run(index: int) -> None:
        # Each caller builds its own operation, as separate requests would.
        op = Operation(
            action="add",
            table=sql.table,
            values={"name": f"n{index}", "cid": "a"},
            idempotency_key="same",
        )
        results.append(await sql.source.execute(prepare(op)))

    async with anyio.create_task_group() as tg:
        for index in range(10):
            tg.start_soon(run, index)
    assert len(set(results)) == 1 and await sql.count() == 1


@pytest.mark.anyio
async def test_raw_sql_with_a_key_runs_once_and_keys_can_be_purged(sql: Sql) -> None:
    await sql.source.execute(add(sql.table, id="c", qty=0))
    sql_text = f"UPDATE {sql.table} SET qty = qty + 1 WHERE id = 'c'"
    bump = Operation(action="execute", sql=sql_text, idempotency_key="bump-1")
    assert await sql.source.execute(bump) == 1
    assert await sql.source.execute(bump) == 1
    assert (await sql.row("c"))["qty"] == 1
    assert await sql.source.purge_idempotency_keys(0.0) == 0
    assert await sql.source.purge_idempotency_keys(4e9) == 1
    assert await sql.source.execute(bump) == 1  # forgotten: it runs as a new write
    assert (await sql.row("c"))["qty"] == 2


# -- MariaDB: a commit whose answer is lost, a connection killed mid-batch ----------------


class CommitDropper:
    """A TCP proxy to MariaDB that, once a statement holding ``trigger`` went through it,
    forwards the next COMMIT and then cuts that client off before the server's answer
    reaches it: the server committed, the client cannot know. Only once."""

    def __init__(self, trigger: str) -> None:
        self.trigger = trigger.encode()
        self.armed = False
        self.triggered = False
        self.dropped = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._done: set[asyncio.Event] = set()

    async def __aenter__(self) -> CommitDropper:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for transport in list(self._transports):
            transport.abort()  # every pump then ends on its own
        for done in list(self._done):
            await done.wait()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done = asyncio.Event()
        self._done.add(done)
        self._transports.add(writer.transport)
        cut = asyncio.Event()
        try:
            up_reader, up_writer = await asyncio.open_connection(MYSQL["host"], MYSQL["port"])
        except OSError:
            writer.transport.abort()
            done.set()
            return
        self._transports.add(up_writer.transport)

        async def upstream() -> None:
            while data := await reader.read(65536):
                if not self.triggered and self.trigger in data:
                    self.triggered = self.armed = True
                if self.armed and b"\x03COMMIT" in data:
                    self.armed = False
                    cut.set()  # before the server can answer
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if cut.is_set():
                    self.dropped += 1
                    return
                writer.write(data)
                await writer.drain()

        async def pump(direction: Any) -> None:
            with suppress(OSError):
                await direction()
            # Either side ending ends the connection, as a lost network link would.
            writer.transport.abort()
            up_writer.transport.abort()

        try:
            await asyncio.gather(pump(upstream), pump(downstream))
        finally:
            self._transports.discard(writer.transport)
            self._transports.discard(up_writer.transport)
            done.set()


def _engine_config(url: str, table: str) -> dict[str, Any]:
    return {
        "engine": {"retry_backoff": 0.01, "drain_timeout": 5.0},
        "datasources": {"my": {"type": "mysql", "url": url, "create_tables": True}},
        "tables": {table: {"columns": {"name": "text", "qty": "int"}, "owner": "cid"}},
    }


@pytest.fixture
def mysql_table() -> Iterator[str]:
    table = f"t_{uuid4().hex[:8]}_items"
    yield table
    _drop_mysql_tables(table)


@pytest.mark.anyio
async def test_a_commit_whose_answer_is_lost_is_never_doubled(mysql_table: str) -> None:
    table = mysql_table
    suffix = uuid4().hex  # the database's idempotency table outlives this test
    async with CommitDropper(trigger=f"lose-{suffix}") as proxy:
        url = f"mysql://root@127.0.0.1:{proxy.port}/test"
        async with Engine(_engine_config(url, table)) as engine:
            await engine.submit(
                add(table, id="r", qty=0, key=f"warm-{suffix}")  # creates the keys' table
            )
            ops = [prepare(add(table, name=f"n{index}", retry=3)) for index in range(20)]
            rows = [{"name": "m1", "cid": "a"}, {"name": "m2", "cid": "a"}]
            ops.append(prepare(Operation(action="add_many", table=table, retry=3, rows=rows)))
            # Not prepared: every attempt makes a new id; the recorded key answers the first.
            ops.append(add(table, name="keyed", retry=3, key=f"lost-commit-{suffix}"))
            bump = f"UPDATE {table} SET qty = qty + 1 WHERE id = 'r'"
            ops.append(
                Operation(
                    action="execute", retry=3, idempotency_key=f"lost-bump-{suffix}", sql=bump
                )
            )
            # In the same batch: the statement that tells the proxy to lose this COMMIT.
            lose = f"DO 'lose-{suffix}'"
            ops.append(Operation(action="execute", data_source="my", retry=3, sql=lose))
            outcomes: dict[int, Any] = {}

            async def submit(index: int, op: Operation) -> None:
                outcomes[index] = await engine.submit(op)

            async with anyio.create_task_group() as tg:
                # Hold the writer so that every operation queues for the next batch.
                tg.start_soon(
                    engine.submit,
                    Operation(action="execute", sql="DO SLEEP(0.5)", data_source="my"),
                )
                await anyio.sleep(0.1)
                for index, op in enumerate(ops):
                    tg.start_soon(submit, index, op)
            assert proxy.dropped == 1
            stored = await engine.submit(Operation(action="get", table=table, limit=1000))
    # Every operation of the batch saw its commit fail and ran again.
    assert [outcomes[index].attempts for index in range(len(ops))] == [2] * len(ops)
    names = sorted(row["name"] or "" for row in stored.value)
    assert names == sorted(["", "keyed", "m1", "m2"] + [f"n{index}" for index in range(20)])
    by_id = {row["id"]: row for row in stored.value}
    assert by_id["r"]["qty"] == 1  # the raw UPDATE ran once
    for index, op in enumerate(ops[:20]):
        assert op.values is not None and outcomes[index].value == op.values["id"]
    assert outcomes[20].value == [row["id"] for row in ops[20].rows or []]
    assert by_id[outcomes[21].value]["name"] == "keyed" and outcomes[22].value == 1
    _forget_keys(f"warm-{suffix}", f"lost-commit-{suffix}", f"lost-bump-{suffix}")


def _forget_keys(*keys: str) -> None:
    """Remove this test's rows from the database's shared idempotency table."""
    connection = pymysql.connect(
        host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"], database=MYSQL["db"]
    )
    try:
        with connection.cursor() as cursor:
            for key in keys:
                cursor.execute("DELETE FROM wf78_idempotency WHERE `key` = %s", (key,))
        connection.commit()
    finally:
        connection.close()


@pytest.mark.anyio
async def test_a_batch_killed_before_commit_runs_again_once(mysql_table: str) -> None:
    table = mysql_table
    marker = f"kill_{uuid4().hex[:8]}"
    async with Engine(_engine_config(MYSQL_URL, table)) as engine:
        await engine.submit(Operation(action="add", table=table, values={"id": "w", "cid": "a"}))
        source = engine.sources.named["my"].adapter
        assert isinstance(source, MySQLSource)
        ops = [prepare(add(table, name=f"n{index}", retry=5)) for index in range(30)]
        results: list[Any] = []

        async def run(op: Operation) -> None:
            results.append((await engine.submit(op)).value)

        async def slow() -> None:
            with suppress(DataSourceError):
                await engine.submit(
                    Operation(action="execute", data_source="my", sql=f"DO SLEEP(5), '{marker}'")
                )

        killer = await aiomysql.connect(autocommit=True, **MYSQL)
        try:
            async with anyio.create_task_group() as tg:
                for op in ops:
                    tg.start_soon(run, op)
                tg.start_soon(slow)
                await _kill_when_running(killer, marker)
        finally:
            killer.close()
        assert source.discarded >= 1
        rows = await engine.submit(Operation(action="get", table=table, limit=1000))
    assert sorted(results) == sorted(op.values["id"] for op in ops if op.values)
    assert len(rows.value) == 31


async def _kill_when_running(connection: Any, marker: str) -> None:
    with anyio.fail_after(10):
        while True:
            async with connection.cursor() as cursor:
                await cursor.execute(
                    "SELECT id FROM information_schema.processlist "
                    "WHERE info LIKE %s AND id <> CONNECTION_ID()",
                    (f"%{marker}%",),
                )
                found = await cursor.fetchall()
                if found:
                    await cursor.execute(f"KILL {int(found[0][0])}")
                    return
            await anyio.sleep(0.01)


# -- Redis -----------------------------------------------------------------------------------


@pytest.fixture
async def redis_source() -> AsyncIterator[RedisSource]:
    prefix = f"wf78test-{uuid4().hex}"
    source = RedisSource(
        SourceSpec(
            name="r",
            type="redis",
            url=REDIS_URL,
            options=RedisSource.Options(key_prefix=prefix),
            tables={"items": TableSchema.from_config("items", ITEMS)},
        )
    )
    await source.open()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(source.run)
            yield source
            tg.cancel_scope.cancel()
    finally:
        await source.close()
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@pytest.mark.anyio
async def test_redis_incr_replayed_counts_once(redis_source: RedisSource) -> None:
    source = redis_source
    incr = prepare(Operation(action="incr", key="hits", value=5))
    assert await source.execute(incr) == 5
    assert await source.execute(incr) == 5  # the first result, and nothing counted
    assert await source.execute(prepare(Operation(action="incr", key="hits"))) == 6
    keyed = Operation(action="incr", key="hits", value=10, ttl=60, idempotency_key="pay-1")
    assert await source.execute(keyed) == 16
    assert await source.execute(keyed) == 16
    assert await source.execute(Operation(action="cache_get", key="hits")) == 16
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        marker_ttl = await client.pttl(f"{source.prefix}:idem:pay-1")
        auto_ttl = await client.pttl(f"{source.prefix}:idem:{incr.idempotency_key}")
        assert 86_000_000 < marker_ttl <= 86_400_000 and 3_500_000 < auto_ttl <= 3_600_000
        assert 0 < await client.pttl(source.cache_key("hits")) <= 60_000
    finally:
        await client.aclose()
    # Without a key (a source used directly) incr counts every time, as before.
    assert await source.execute(Operation(action="incr", key="hits")) == 17


@pytest.mark.anyio
async def test_redis_row_writes_replayed_write_once(redis_source: RedisSource) -> None:
    source = redis_source
    op = prepare(Operation(action="add", table="items", values={"name": "pen", "cid": "a"}))
    row_id = await source.execute(op)
    assert await source.execute(op) == row_id
    many = prepare(Operation(action="add_many", table="items", rows=[{"cid": "a"}] * 2))
    ids = await source.execute(many)
    assert await source.execute(many) == ids
    with pytest.raises(DataSourceError, match="duplicate id") as caught:
        await source.execute(
            Operation(action="add", table="items", values={"id": row_id, "cid": "a"})
        )
    assert caught.value.conflict
    keyed = Operation(
        action="add", table="items", values={"name": "k", "cid": "a"}, idempotency_key="r-add"
    )
    first = await source.execute(prepare(keyed))
    # A replay with its own new id still answers the first id and writes nothing.
    replay = Operation(
        action="add", table="items", values={"id": "other", "cid": "a"}, idempotency_key="r-add"
    )
    assert await source.execute(replay) == first
    update = Operation(
        action="update",
        table="items",
        values={"name": "u"},
        where={"id": row_id},
        idempotency_key="r-update",
    )
    assert await source.execute(update) == 1
    await source.execute(
        Operation(action="update", table="items", values={"name": "v"}, where={"id": row_id})
    )
    assert await source.execute(update) == 1
    delete = Operation(
        action="delete", table="items", where={"id": ids[0]}, idempotency_key="r-delete"
    )
    assert await source.execute(delete) == 1 and await source.execute(delete) == 1
    rows = await source.execute(Operation(action="get", table="items"))
    assert sorted(row["name"] or "" for row in rows) == ["", "k", "v"]


# -- Elasticsearch (osmem) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def es_server() -> Iterator[OsmemServer]:
    server = OsmemServer.start(japanese=False)
    yield server
    server.close()
    if server.process.stdout is not None:
        server.process.stdout.close()


@pytest.fixture(params=[False, True], ids=["alone", "bulk-loop"])
async def es_source(
    request: pytest.FixtureRequest, es_server: OsmemServer
) -> AsyncIterator[ElasticsearchSource]:
    with es_server.clone() as clone:
        source = ElasticsearchSource(
            SourceSpec(
                name="search",
                type="elasticsearch",
                url=clone.url,
                options={"node_class": NODE_CLASS, "refresh": "true"},
                tables={},
            )
        )
        await source.open()
        try:
            async with anyio.create_task_group() as tg:
                if request.param:
                    await tg.start(source.run)
                yield source
                tg.cancel_scope.cancel()
        finally:
            await source.close()


async def _documents(source: ElasticsearchSource) -> list[dict[str, Any]]:
    found = await source.execute(Operation(action="search", table="docs", params={}, limit=100))
    hits: list[dict[str, Any]] = found["hits"]
    return hits


@pytest.mark.anyio
async def test_elasticsearch_writes_replayed_store_one_document(
    es_source: ElasticsearchSource,
) -> None:
    source = es_source
    op = prepare(Operation(action="add", table="docs", values={"n": 1}))
    doc_id = await source.execute(op)
    assert await source.execute(op) == doc_id
    index = prepare(Operation(action="index", table="docs", values={"n": 2}))
    assert await source.execute(index) == await source.execute(index)
    many = prepare(Operation(action="add_many", table="docs", rows=[{"n": 3}, {"n": 4}]))
    ids = await source.execute(many)
    assert await source.execute(many) == ids
    keyed = Operation(action="add", table="docs", values={"n": 5}, idempotency_key="e-1")
    first = await source.execute(prepare(keyed))
    assert await source.execute(prepare(Operation(**msgspec.structs.asdict(keyed)))) == first
    assert sorted(doc["n"] for doc in await _documents(source)) == [1, 2, 3, 4, 5]
    # A caller's own id that exists is still refused.
    with pytest.raises(DataSourceError, match="already exists") as caught:
        await source.execute(Operation(action="add", table="docs", values={"id": doc_id}))
    assert caught.value.conflict


# -- HTTP: the Idempotency-Key header -------------------------------------------------------

ALICE, BOB, CAROL = "tok-alice", "tok-bob", "tok-carol"


@asynccontextmanager
async def serving(path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    config = {
        "engine": {"drain_timeout": 2.0},
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{path}"}},
        "tables": {
            "Items": {
                "columns": {"name": "text", "qty": "int"},
                "owner": "cid",
                "route": "api/demo",
                "data_source": "db",
            }
        },
        "auth": {
            "tokens": {
                ALICE: {"uid": "u-alice", "cid": "acme", "uname": "alice"},
                CAROL: {"uid": "u-carol", "cid": "acme", "uname": "carol"},
                BOB: {"uid": "u-bob", "cid": "globex", "uname": "bob"},
            }
        },
    }
    app = Wf78Middleware(Starlette(), engine=Engine(config))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, path


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    async with serving(tmp_path / "http.db") as pair:
        yield pair


async def call(
    client: httpx.AsyncClient, method: str, token: str, key: str | None = None, **params: Any
) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"}
    if key is not None:
        headers["idempotency-key"] = key
    return await client.post(f"/api/demo/Items/{method}", json=params, headers=headers)


def back(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["back"]


def stored(path: Path) -> list[tuple[str, str, int | None]]:
    with sqlite3.connect(path) as connection:
        return sorted(connection.execute('SELECT cid, name, qty FROM "Items"').fetchall())


@pytest.mark.anyio
async def test_http_replays_answer_the_same_back_and_write_once(
    http: tuple[httpx.AsyncClient, Path],
) -> None:
    client, path = http
    first = back(await call(client, "mAdd", ALICE, "a-1", pars=["pen", 1]))
    assert back(await call(client, "mAdd", ALICE, "a-1", pars=["pen", 1])) == first
    ids = back(await call(client, "mAddMany", ALICE, "a-2", pars=[["x", 1], ["y", 2]]))
    assert back(await call(client, "mAddMany", ALICE, "a-2", pars=[["x", 1], ["y", 2]])) == ids
    assert back(await call(client, "mUpdate", ALICE, "a-3", mid=first, pars=["pen", 2])) == 1
    back(await call(client, "mUpdate", ALICE, None, mid=first, pars=["pen", 7]))
    assert back(await call(client, "mUpdate", ALICE, "a-3", mid=first, pars=["pen", 2])) == 1
    # m: update else insert, replayed after its insert: the same id, no second row.
    made = back(await call(client, "m", ALICE, "a-4", pars=["cap", 3]))
    assert back(await call(client, "m", ALICE, "a-4", pars=["cap", 3])) == made
    assert back(await call(client, "mdel", ALICE, "a-5", mid=ids[0])) == 1
    # A replayed delete answers as the first one did, not 404.
    assert back(await call(client, "mdel", ALICE, "a-5", mid=ids[0])) == 1
    assert stored(path) == [("acme", "cap", 3), ("acme", "pen", 7), ("acme", "y", 2)]
    # Without the header every request is a new write.
    back(await call(client, "mAdd", ALICE, None, pars=["pen", 1]))
    back(await call(client, "mAdd", ALICE, None, pars=["pen", 1]))
    assert len(stored(path)) == 5


@pytest.mark.anyio
async def test_http_keys_are_scoped_by_the_callers_owner(
    http: tuple[httpx.AsyncClient, Path],
) -> None:
    client, path = http
    mine = back(await call(client, "mAdd", ALICE, "shared", pars=["alice's", 1]))
    theirs = back(await call(client, "mAdd", BOB, "shared", pars=["bob's", 2]))
    assert mine != theirs
    # A colleague of the same company replaying the request gets the company's first answer;
    # with another body, the company's key is refused (422).
    assert back(await call(client, "mAdd", CAROL, "shared", pars=["alice's", 1])) == mine
    refused = await call(client, "mAdd", CAROL, "shared", pars=["carol's", 3])
    assert refused.status_code == 422, refused.text
    assert stored(path) == [("acme", "alice's", 1), ("globex", "bob's", 2)]
    rows = back(
        await client.post(
            "/api/demo/Items/get", json={}, headers={"authorization": f"Bearer {BOB}"}
        )
    )
    assert [row["name"] for row in rows] == ["bob's"]


@pytest.mark.anyio
@pytest.mark.parametrize("key", ["", "   ", "x" * 256, "caf\u00e9", "a\x7fb"])
async def test_http_bad_key_is_400_naming_the_header(
    http: tuple[httpx.AsyncClient, Path], key: str
) -> None:
    client, path = http
    headers = {"authorization": f"Bearer {ALICE}"}
    raw = [(name.encode(), value.encode()) for name, value in headers.items()]
    raw.append((b"idempotency-key", key.encode("utf-8")))
    response = await client.post(
        "/api/demo/Items/mAdd", json={"pars": ["pen", 1]}, headers=httpx.Headers(raw)
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["kind"] == "invalid" and body["errmsg"].startswith("Idempotency-Key:")
    assert stored(path) == []


@pytest.mark.anyio
async def test_table_methods_take_a_key(tmp_path: Path) -> None:
    config = {
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/t.db"}},
        "tables": {"items": {"columns": {"name": "text", "qty": "int"}, "owner": "cid"}},
    }
    alice = Identity(uid="u1", cid="acme", uname="alice")
    async with Engine(config) as engine:
        items = engine.table("items", identity=alice)
        row_id = await items.upsert({"id": "s1", "qty": 1}, idempotency_key="t-1")
        await items.update("s1", {"qty": 5})
        assert await items.upsert({"id": "s1", "qty": 1}, idempotency_key="t-1") == row_id
        assert (await items.get(where={"id": "s1"}))[0]["qty"] == 5
        found = await items.upsert_by_first_field({"name": "a", "qty": 1}, idempotency_key="t-2")
        again = await items.upsert_by_first_field({"name": "a", "qty": 1}, idempotency_key="t-2")
        assert found == again and len(await items.get(where={"name": "a"})) == 1
        assert await items.delete_many([row_id], idempotency_key="t-3") == 1
        assert await items.delete_many([row_id], idempotency_key="t-3") == 1
        with pytest.raises(InvalidOperation, match="idempotency_key must not start with '~'"):
            await items.add({"name": "x"}, idempotency_key="~mine")
        with pytest.raises(InvalidOperation, match="idempotency_key must be a string of 1 to"):
            await items.add({"name": "x"}, idempotency_key="")
        with pytest.raises(InvalidOperation, match="idempotency_key"):
            Table(engine, "items", identity=alice, idempotency_key="x" * 201)


# -- the same key with another body: 422, on every data write route and source ------------


@asynccontextmanager
async def serving_on(source: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The ``Items`` routes of company acme on ``source``: a SQLite file, MariaDB (a table
    and a key table of this test's own) or Redis (a key prefix of its own)."""
    suffix = uuid4().hex[:8]
    db: dict[str, Any]
    if source == "sqlite":
        db = {"type": "sqlite", "url": f"sqlite:///{tmp_path}/routes.db"}
    elif source == "mysql":
        db = {"type": "mysql", "url": MYSQL_URL, "create_tables": True}
    elif source == "postgres":
        db = {"type": "postgres", "url": pgutil.PG_URL, "maxsize": 4}
    else:
        db = {"type": "redis", "url": REDIS_URL, "key_prefix": f"wf78test-{suffix}"}
    table = f"t_{suffix}_items"
    config = {
        "engine": {"drain_timeout": 2.0, "journal": "memory"},
        "datasources": {"db": db},
        "tables": {
            table: {
                "columns": {"name": "text", "qty": "int"},
                "owner": "cid",
                "route": "api/demo",
                "data_source": "db",
            }
        },
        "auth": {"tokens": {ALICE: {"uid": "u-alice", "cid": "acme", "uname": "alice"}}},
    }
    app = Wf78Middleware(Starlette(), engine=Engine(config))
    try:
        async with LifespanManager(app) as manager:
            if source in ("mysql", "postgres"):  # a key table of its own: the database lives on
                found = app.engine.sources.get("db")
                assert found is not None
                found.adapter.idempotency_table = f"t_{suffix}_keys"
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(
                transport=transport, base_url=f"http://test/api/demo/{table}/"
            ) as client:
                yield client
    finally:
        if source == "mysql":
            _drop_mysql_tables(table, f"t_{suffix}_keys")
        if source == "postgres":
            pgutil.drop_tables(table, f"t_{suffix}_keys")
        if source == "redis":
            client = redis.asyncio.Redis.from_url(REDIS_URL)
            try:
                keys = [k async for k in client.scan_iter(match=f"wf78test-{suffix}:*")]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()


# Every data write route with two bodies: ``A`` first, then ``B`` under the same key.
# ``{r1}``... are rows of acme made before; ``{new1}``... ids nobody has.
WRITES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "mAdd": ({"pars": ["pen", 1]}, {"pars": ["pen", 2]}),
    "mAddMany": ({"pars": [["x", 1], ["y", 2]]}, {"pars": [["x", 1], ["y", 3]]}),
    "mAddManyByid": (
        {"rows": [{"id": "{new1}", "name": "n", "qty": 1}]},
        {"rows": [{"id": "{new1}", "name": "n", "qty": 2}]},
    ),
    "mUpdate": ({"mid": "{r1}", "pars": ["a", 1]}, {"mid": "{r1}", "pars": ["b", 1]}),
    "mUpdateByid": (
        {"values": {"id": "{r1}", "name": "c"}},
        {"values": {"id": "{r1}", "name": "d"}},
    ),
    "mUpdateMany": ({"rows": [{"id": "{r1}", "qty": 5}]}, {"rows": [{"id": "{r1}", "qty": 6}]}),
    "m": ({"mid": "{r2}", "pars": ["e", 1]}, {"mid": "{r2}", "pars": ["f", 1]}),
    "mByid": ({"mid": "{new2}", "pars": ["g"]}, {"mid": "{new2}", "pars": ["h"]}),
    # The first inserts; the second would find that row by its first column and update it.
    "mByFirstField": ({"pars": ["first", 1]}, {"pars": ["first", 2]}),
    "mdel": ({"mid": "{r3}"}, {"mid": "{r4}"}),
    "mdelmany": ({"ids": ["{r5}"]}, {"ids": ["{r5}", "{r6}"]}),
}


def _filled(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return names[value[1:-1]]
    if isinstance(value, dict):
        return {key: _filled(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [_filled(item, names) for item in value]
    return value


@pytest.mark.anyio
@pytest.mark.parametrize("source", ["sqlite", "mysql", "postgres", "redis"])
@pytest.mark.parametrize("method", list(WRITES))
async def test_the_same_key_with_another_body_is_422_and_writes_nothing(
    source: str, method: str, tmp_path: Path
) -> None:
    async with serving_on(source, tmp_path) as client:
        headers = {"authorization": f"Bearer {ALICE}"}

        async def post(route: str, params: dict[str, Any], key: str | None) -> httpx.Response:
            sent = headers if key is None else {**headers, "idempotency-key": key}
            return await client.post(route, json=params, headers=sent)

        made = await post("mAddMany", {"pars": [[f"r{i}", i] for i in range(1, 7)]}, None)
        names = {f"r{i}": row_id for i, row_id in enumerate(back(made), 1)}
        names |= {"new1": snowflake_id(), "new2": snowflake_id()}
        first, other = (_filled(body, names) for body in WRITES[method])
        key = f"k-{uuid4().hex}"
        answer = back(await post(method, first, key))
        assert back(await post(method, first, key)) == answer  # a replay: the first answer
        rows = back(await post("get", {"getnumber": 100}, None))
        refused = await post(method, other, key)
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert (body["res"], body["kind"], body["back"]) == (-422, "idempotency_conflict", None)
        assert "Idempotency-Key" in body["errmsg"] and key not in body["errmsg"]
        assert back(await post("get", {"getnumber": 100}, None)) == rows  # nothing written
        assert back(await post(method, first, key)) == answer  # the first body still replays


def test_fingerprints_records_and_replays() -> None:
    assert fingerprint("add", {"a": 1, "b": [1, 2]}) == fingerprint("add", {"b": [1, 2], "a": 1})
    assert fingerprint("add", {"a": 1}) != fingerprint("add", {"a": "1"})
    assert len(fingerprint("x")) == 32
    assert recall(record([1, "2"], "f1")) == ([1, "2"], "f1")
    assert recall(record(3, None)) == (3, None)  # as recorded before fingerprints
    assert recall(b'{"f": "x", "v": 1, "more": 2}') == ({"f": "x", "v": 1, "more": 2}, None)
    op = Operation(action="update", idempotency_key="k", idempotency_fingerprint="a")
    check_replay("a", op)
    check_replay(None, op)  # recorded without one: not checked
    check_replay("b", Operation(action="update", idempotency_key="k"))  # nor without one
    with pytest.raises(IdempotencyConflict, match="first used for another request"):
        check_replay("b", op)


@pytest.mark.anyio
async def test_a_source_refuses_a_key_replayed_with_another_fingerprint(sql: Sql) -> None:
    await sql.source.execute(add(sql.table, id="f", qty=0))

    def update(qty: int, fingerprint: str | None) -> Operation:
        return Operation(
            action="update",
            table=sql.table,
            values={"qty": qty},
            where={"id": "f"},
            idempotency_key="fp-1",
            idempotency_fingerprint=fingerprint,
        )

    assert await sql.source.execute(update(1, "one")) == 1
    assert await sql.source.execute(update(1, "one")) == 1
    with pytest.raises(IdempotencyConflict):
        await sql.source.execute(update(2, "two"))
    assert await sql.source.execute(update(2, None)) == 1  # no fingerprint: a replay
    assert (await sql.row("f"))["qty"] == 1  # neither wrote
