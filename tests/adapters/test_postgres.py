"""The PostgreSQL adapter against the real server: actions, types, errors, group commit,
lost connections, native partitions and selection."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import asyncpg
import httpx
import pymysql
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from tests import pgutil
from wf78_core import Engine, Identity, Table, Wf78Middleware
from wf78_core.config import TableConfig
from wf78_core.data.sharding import maintain
from wf78_core.definitions import Operation
from wf78_core.errors import ConfigError, DataSourceError, InvalidOperation
from wf78_core.plugin import SourceInfo
from wf78_core.plugin.datasource import DataSource, SourceSpec, TableSchema, load_factory
from wf78_core.plugin.registry import Registry
from wf78_postgres import PostgresSource, wf78_register_datasources
from wf78_postgres.errors import is_connection_lost, map_error
from wf78_postgres.partitions import period
from wf78_selection import choose

URL = pgutil.PG_URL

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg runs on asyncio only


@dataclass(frozen=True)
class Names:
    """This test's own table names, dropped after it."""

    items: str
    things: str
    keys: str

    def tables(self) -> dict[str, TableConfig]:
        return {
            self.items: TableConfig(columns={"name": "text", "qty": "int"}, owner="cid"),
            self.things: TableConfig(
                columns={
                    "label": "text",
                    "count": "int",
                    "price": "float",
                    "flag": "bool",
                    "meta": "json",
                    "at": "datetime",
                }
            ),
        }


@pytest.fixture
def names() -> Iterator[Names]:
    prefix = f"t_{uuid4().hex[:8]}_"
    made = Names(items=f"{prefix}items", things=f"{prefix}things", keys=f"{prefix}keys")
    yield made
    pgutil.drop_like(prefix)


def make_source(names: Names, *, url: str = URL, **option_values: Any) -> PostgresSource:
    option_values.setdefault("maxsize", 4)
    source = PostgresSource(
        SourceSpec(
            name="pg",
            type="postgres",
            url=url,
            options=PostgresSource.Options(**option_values),
            tables={
                name: TableSchema.from_config(name, table) for name, table in names.tables().items()
            },
        )
    )
    source.idempotency_table = names.keys
    source.outbox_table = f"{names.keys}_outbox"
    return source


@asynccontextmanager
async def running(names: Names, **option_values: Any) -> AsyncIterator[PostgresSource]:
    """An open source with its tables and its group-commit writer running."""
    source = make_source(names, **option_values)
    await source.open()
    try:
        await source.ensure_tables()
        async with anyio.create_task_group() as tg:
            await tg.start(source.run)
            yield source
            tg.cancel_scope.cancel()
    finally:
        await source.close()


def op(action: str, table: str | None, **fields: Any) -> Operation:
    return Operation(action=action, table=table, **fields)


async def all_rows(source: PostgresSource, table: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await source.execute(op("get", table, order=["id"]))
    return rows


# --- construction and registration ---------------------------------------------------------


def test_hook_registers_the_factory_and_it_builds_a_data_source(names: Names) -> None:
    registry: Registry[Any] = Registry("datasource")
    wf78_register_datasources(registry)
    factory = load_factory(registry.get("postgres"))
    assert factory is PostgresSource
    source = make_source(names)
    assert isinstance(source, DataSource)
    assert source.concurrency == 1024
    assert "add" in source.actions and "outbox_fetch" in source.outbox_actions


@pytest.mark.parametrize(
    "url",
    ["mysql://root@127.0.0.1/test", "postgresql://127.0.0.1:5432/", "postgresql:///test", ""],
)
def test_unsupported_urls_are_config_errors_naming_the_path(names: Names, url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_source(names, url=url)
    assert "datasources.pg.url" in str(caught.value)


def test_bad_options_are_refused() -> None:
    spec = SourceSpec(name="pg", type="postgres", url=URL, options={"max_batch": 0}, tables={})
    with pytest.raises(ConfigError) as caught:
        PostgresSource(spec)
    assert "datasources.pg" in str(caught.value) and "max_batch" in str(caught.value)


async def test_unreachable_server_fails_open_retryably(names: Names) -> None:
    source = make_source(
        names, url=f"postgresql://postgres@127.0.0.1:{pgutil.free_port()}/test", connect_timeout=2
    )
    with pytest.raises(DataSourceError) as caught:
        await source.open()
    assert caught.value.retryable is True


# --- actions -------------------------------------------------------------------------------


async def test_every_action_and_its_result_shape(names: Names) -> None:
    items = names.items
    async with running(names) as source:
        first = await source.execute(op("add", items, values={"name": "pen", "qty": 1, "cid": "a"}))
        assert isinstance(first, str) and first.isdigit()
        ids = await source.execute(
            op("add_many", items, rows=[{"name": "x", "cid": "a"}, {"name": "y", "cid": "b"}])
        )
        assert len(ids) == 2
        assert await source.execute(op("count", items)) == 3
        assert await source.execute(op("count", items, where={"cid": "a"})) == 2
        got = await source.execute(op("get", items, where={"id": first}))
        assert got == [
            {"id": first, "name": "pen", "qty": 1, "cid": "a", "upby": None, "uptime": None}
        ] or (got[0]["name"] == "pen" and got[0]["qty"] == 1)
        assert (
            await source.execute(op("update", items, values={"qty": 5}, where={"id": first})) == 1
        )
        assert await source.execute(op("update", items, values={"qty": 5}, where={"id": "no"})) == 0
        assert (
            await source.execute(
                op("update_many", items, rows=[{"id": ids[0], "qty": 7}, {"id": ids[1], "qty": 8}])
            )
            == 2
        )
        assert (
            await source.execute(
                op("upsert", items, values={"id": first, "cid": "a", "name": "ink"})
            )
            == first
        )
        assert (
            await source.execute(op("upsert", items, values={"id": "new", "name": "cap"})) == "new"
        )
        page = await source.execute(
            op("get", items, columns=["id"], order=["-id"], limit=2, offset=1)
        )
        assert len(page) == 2 and all(set(row) == {"id"} for row in page)
        assert (
            await source.execute(
                op(
                    "add_many",
                    items,
                    rows=[{"id": first, "cid": "a"}, {"id": "fresh"}],
                    conflict="ignore",
                )
            )
            == 1
        )
        assert await source.execute(op("delete", items, where={"id": "fresh"})) == 1
        assert await source.execute(op("delete_many", items, where={"id": ids})) == 2
        assert await source.execute(op("list_columns", items)) == [
            *TableSchema.from_config(items, names.tables()[items]).columns
        ]
        assert await source.execute(op("create_table", items)) is False
        assert await source.execute(op("noop", None)) is None
        rows = await all_rows(source, items)
        assert {row["id"]: row["name"] for row in rows} == {first: "ink", "new": "cap"}


async def test_type_round_trips(names: Names) -> None:
    things = names.things
    moment = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    values = {
        "label": "héllo 🌍 'quoted' \\ %s $1",
        "count": 2**62,
        "price": 1.25,
        "flag": True,
        "meta": {"a": [1, 2, {"b": None}], "c": "ü"},
        "at": moment,
    }
    async with running(names) as source:
        row_id = await source.execute(op("add", things, values=values))
        (row,) = await source.execute(op("get", things, where={"id": row_id}))
        assert {name: row[name] for name in values} == {
            **values,
            "at": moment.isoformat(),
        }
        # Filters bind by the column's declared type: "2" matches the int 2, 2 the text "2".
        await source.execute(op("add", things, values={"label": "2", "count": 2, "flag": 0}))
        assert await source.execute(op("count", things, where={"count": "2"})) == 1
        assert await source.execute(op("count", things, where={"label": 2})) == 1
        assert await source.execute(op("count", things, where={"flag": False})) == 1
        assert (
            await source.execute(
                op("count", things, where={"at": "2025-03-04T05:06:07.123456+00:00"})
            )
            == 1
        )


async def test_many_rows_go_out_as_one_copy_with_every_type(names: Names) -> None:
    things = names.things
    moment = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    rows = [
        {
            "label": f"l{i} 'é' \\ \t",
            "count": i,
            "price": i,  # an int for a float column
            "flag": i % 2 == 0,
            "meta": {"i": i, "list": [1, None]},
            "at": moment,
        }
        for i in range(40)
    ] + [{"label": None, "count": None, "price": None, "flag": None, "meta": None, "at": None}]
    async with running(names) as source:
        ids = await source.execute(op("add_many", things, rows=rows))
        assert source.copies == 1
        stored = {row["id"]: row for row in await all_rows(source, things)}
    assert len(stored) == 41
    for row_id, row in zip(ids, rows, strict=True):
        expected = {**row, "at": None if row["at"] is None else moment.isoformat()}
        assert {name: stored[row_id][name] for name in row} == expected


async def test_raw_sql_is_routed_by_what_it_does(names: Names) -> None:
    items = names.items
    async with running(names) as source:
        await source.execute(op("add_many", items, rows=[{"qty": n} for n in range(5)]))
        before = source.transactions
        assert await source.execute(
            op(
                "execute",
                None,
                sql=f"SELECT count(*) AS n FROM {items} WHERE qty >= $1",
                params=[2],
            )
        ) == [{"n": 3}]
        assert source.transactions == before  # a read: no write transaction
        assert (
            await source.execute(
                op(
                    "execute",
                    None,
                    sql=f"UPDATE {items} SET name = $1 WHERE qty < $2",
                    params=["s", 2],
                )
            )
            == 2
        )
        returned = await source.execute(
            op("execute", None, sql=f"DELETE FROM {items} WHERE qty = $1 RETURNING qty", params=[4])
        )
        assert returned == [{"qty": 4}]
        assert (
            await source.execute(
                op("execute", None, sql=f"CREATE INDEX IF NOT EXISTS {items}_qty ON {items} (qty)")
            )
            == 0
        )
        for sql in ("BEGIN", "COMMIT", "SET search_path = x", "savepoint a", "LOCK TABLE x"):
            with pytest.raises(InvalidOperation, match="execute cannot run"):
                await source.execute(op("execute", None, sql=sql))
        with pytest.raises(InvalidOperation, match="positional parameters"):
            await source.execute(op("execute", None, sql="SELECT $1", params={"a": 1}))
        # One statement per call: the extended protocol refuses a second one.
        with pytest.raises(DataSourceError):
            await source.execute(op("execute", None, sql=f"DELETE FROM {items}; SELECT 1"))
        assert await source.execute(op("count", items)) == 4


# --- errors ----------------------------------------------------------------------------------


async def test_error_classes(names: Names) -> None:
    items = names.items
    async with running(names) as source:
        await source.execute(op("add", items, values={"id": "dup", "cid": "a"}))
        with pytest.raises(DataSourceError) as duplicate:
            await source.execute(op("add", items, values={"id": "dup", "cid": "a"}))
        assert duplicate.value.conflict is True and duplicate.value.retryable is False
        assert "duplicate key" in str(duplicate.value)
        # Each owner has its own ids: the same id of another owner is no conflict.
        assert await source.execute(op("add", items, values={"id": "dup", "cid": "b"})) == "dup"
        with pytest.raises(InvalidOperation, match="unknown column"):
            await source.execute(op("execute", None, sql=f"SELECT nope FROM {items}"))
        with pytest.raises(InvalidOperation, match="unknown column 'nope'"):
            await source.execute(op("get", items, where={"nope": 1}))
        with pytest.raises(InvalidOperation, match="holds at most 255"):
            await source.execute(op("add", items, values={"id": "x" * 256}))
        with pytest.raises(InvalidOperation) as refused:
            await source.execute(
                op(
                    "execute",
                    None,
                    sql=f"UPDATE {items} SET qty = $1::text::bigint",
                    params=["secret-value"],
                )
            )
        assert "secret-value" not in str(refused.value)  # the value is never echoed


def test_lost_connections_map_to_retryable_errors() -> None:
    lost = map_error(ConnectionResetError("reset by peer"), "pg")
    assert isinstance(lost, DataSourceError) and lost.retryable and not lost.conflict
    assert "lost its connection" in str(lost)
    # A connection left mid-operation by a killed server refuses every later operation.
    stuck = asyncpg.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )
    assert is_connection_lost(stuck)
    assert map_error(stuck, "pg").retryable


async def test_http_status_of_each_error_class(names: Names) -> None:
    config = {
        "engine": {"drain_timeout": 2.0, "journal": "memory"},
        "datasources": {"db": {"type": "postgres", "url": URL, "maxsize": 4}},
        "tables": {
            names.items: {
                "columns": {"name": "text", "qty": "int"},
                "owner": "cid",
                "route": "api/pg",
                "data_source": "db",
            }
        },
        "auth": {"tokens": {"tok": {"uid": "u1", "cid": "c1", "uname": "u"}}},
    }
    app: Any = Wf78Middleware(Starlette(), engine=Engine(config))
    async with LifespanManager(app) as manager:
        app.engine.sources.get("db").adapter.idempotency_table = names.keys
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url=f"http://t/api/pg/{names.items}/"
        ) as client:
            headers = {"authorization": "Bearer tok"}
            made = await client.post("mAdd", json={"pars": ["pen", 1]}, headers=headers)
            assert made.status_code == 200, made.text
            row_id = made.json()["back"]
            with pytest.raises(DataSourceError) as conflict:
                await app.engine.submit(
                    Operation(
                        action="add",
                        table=names.items,
                        values={"id": row_id, "cid": "c1"},
                        data_source="db",
                    )
                )
            assert conflict.value.conflict and not conflict.value.retryable
            bad = await client.post("get", json={"cols": "name,nope"}, headers=headers)
            assert bad.status_code == 400, bad.text


# --- group commit ----------------------------------------------------------------------------


async def test_concurrent_adds_share_few_transactions(names: Names) -> None:
    ids: list[str] = []
    async with running(names) as source:

        async def add(index: int) -> None:
            ids.append(
                await source.execute(
                    op("add", names.items, values={"name": f"n{index}", "qty": index})
                )
            )

        before = source.transactions
        async with anyio.create_task_group() as tg:
            for index in range(500):
                tg.start_soon(add, index)
        transactions = source.transactions - before
        rows = await all_rows(source, names.items)
        grouped = source.pipelines + source.copies
        copies = source.copies
    assert 1 <= transactions < 50, transactions
    # Each batch's identical INSERTs went out together: COPY for the large ones.
    assert 1 <= grouped <= transactions and copies >= 1
    assert len(set(ids)) == 500
    assert {row["id"] for row in rows} == set(ids)
    assert sorted(row["qty"] for row in rows) == list(range(500))


async def test_one_bad_row_fails_only_its_caller(names: Names) -> None:
    outcomes: dict[int, Any] = {}
    items = names.items
    async with running(names) as source:
        await source.execute(op("add", items, values={"id": "dup", "name": "original"}))

        async def add(index: int) -> None:
            row_id = "dup" if index == 137 else f"r{index}"
            try:
                outcomes[index] = await source.execute(
                    op(
                        "add",
                        items,
                        values={"id": row_id, "name": f"n{index}"},
                        outbox=[{"mirror": "m", "i": index}],
                    )
                )
            except DataSourceError as error:
                outcomes[index] = error

        before = source.transactions
        async with anyio.create_task_group() as tg:
            for index in range(200):
                tg.start_soon(add, index)
        transactions = source.transactions - before
        fallbacks = source.fallbacks
        rows = {row["id"]: row["name"] for row in await all_rows(source, items)}
        entries = await source.execute(op("outbox_fetch", None, limit=1000))
    failed = {i: value for i, value in outcomes.items() if isinstance(value, DataSourceError)}
    assert list(failed) == [137]
    assert failed[137].conflict and not failed[137].retryable
    assert transactions < 200 and fallbacks >= 1
    assert len(rows) == 200 and rows["dup"] == "original"
    assert all(rows[f"r{i}"] == f"n{i}" for i in range(200) if i != 137)
    # The outbox entries committed with their rows: none of the failed write.
    assert sorted(entry["payload"]["i"] for entry in entries) == [i for i in range(200) if i != 137]


async def test_add_many_is_all_or_nothing_for_its_caller(names: Names) -> None:
    async with running(names) as source:
        await source.execute(op("add", names.items, values={"id": "taken"}))
        with pytest.raises(DataSourceError):
            await source.execute(op("add_many", names.items, rows=[{"id": "a1"}, {"id": "taken"}]))
        assert [row["id"] for row in await all_rows(source, names.items)] == ["taken"]


async def test_writes_work_without_the_writer_loop(names: Names) -> None:
    source = make_source(names)
    await source.open()
    try:
        await source.ensure_tables()
        row_id = await source.execute(op("add", names.items, values={"name": "alone"}))
        assert (await source.execute(op("get", names.items, where={"id": row_id})))[0][
            "name"
        ] == "alone"
    finally:
        await source.close()
    with pytest.raises(DataSourceError) as closed:
        await source.execute(op("count", names.items))
    assert closed.value.retryable


async def test_a_writer_connection_killed_mid_batch_fails_the_batch_retryably(names: Names) -> None:
    items = names.items
    outcomes: dict[str, Any] = {}
    async with running(names) as source:
        await source.execute(op("add", items, values={"id": "before"}))
        pid = source.writer_pid
        assert pid is not None

        async def submit(key: str, operation: Operation) -> None:
            try:
                outcomes[key] = await source.execute(operation)
            except DataSourceError as error:
                outcomes[key] = error

        async def kill() -> None:
            await anyio.sleep(0.3)
            await anyio.to_thread.run_sync(pgutil.fetch, "SELECT pg_terminate_backend($1)", pid)

        async with anyio.create_task_group() as tg:
            for index in range(50):
                tg.start_soon(submit, f"a{index}", op("add", items, values={"id": f"a{index}"}))
            tg.start_soon(
                submit,
                "slow",
                op(
                    "execute",
                    None,
                    sql="WITH s AS (SELECT pg_sleep(3)) DELETE FROM "
                    f"{items} WHERE id = (SELECT 'x' FROM s)",
                ),
            )
            tg.start_soon(kill)
        stored = {row["id"] for row in await all_rows(source, items)}
        assert await source.execute(op("add", items, values={"id": "after"})) == "after"
        assert source.writer_pid not in (None, pid)
        assert source.discarded >= 1
    slow = outcomes.pop("slow")
    assert isinstance(slow, DataSourceError) and slow.retryable
    assert "lost its connection" in str(slow)
    # Nothing of the killed batch was committed; whatever was reported added is there.
    assert stored == {"before"} | {value for value in outcomes.values() if isinstance(value, str)}


async def test_an_idle_writer_connection_killed_is_replaced_transparently(names: Names) -> None:
    async with running(names) as source:
        await source.execute(op("add", names.items, values={"id": "first"}))
        pid = source.writer_pid
        pgutil.fetch("SELECT pg_terminate_backend($1)", pid)
        await anyio.sleep(0.05)
        assert await source.execute(op("add", names.items, values={"id": "second"})) == "second"
        assert source.discarded == 1
        assert [row["id"] for row in await all_rows(source, names.items)] == ["first", "second"]


# --- connections recycled by age -------------------------------------------------------------


class Clock:
    """A monotonic clock a test advances by hand; ``jump`` seconds are added just after the
    next reading (which sets ``jumped``)."""

    def __init__(self) -> None:
        self.now = time.monotonic()
        self.jump = 0.0
        self.jumped = anyio.Event()

    def __call__(self) -> float:
        now = self.now
        if self.jump:
            self.now, self.jump = now + self.jump, 0.0
            self.jumped.set()
        return now


async def backend_pid(source: PostgresSource) -> int:
    rows = await source.execute(op("execute", None, sql="SELECT pg_backend_pid() AS pid"))
    pid: int = rows[0]["pid"]
    return pid


async def test_a_reader_connection_older_than_pool_recycle_is_replaced_at_checkout(
    names: Names,
) -> None:
    async with running(names, maxsize=1, pool_recycle=60) as source:
        readers = source.readers
        assert readers is not None
        clock = readers.clock = Clock()
        await source.execute(op("add", names.items, values={"id": "a", "qty": 1}))
        get = op("get", names.items, where={"id": "a"}, columns=["id", "qty"])
        first = await backend_pid(source)
        assert await source.execute(get) == [{"id": "a", "qty": 1}]
        clock.now += 59
        assert await backend_pid(source) == first  # not old enough yet
        clock.now += 1
        second = await backend_pid(source)
        assert second != first and source.recycled == 1
        # The same query again on the new connection: its prepared statement is made anew.
        assert await source.execute(get) == [{"id": "a", "qty": 1}]
        assert await backend_pid(source) == second
        assert readers.discarded == 0


async def test_a_reader_connection_is_never_recycled_during_its_query(names: Names) -> None:
    async with running(names, maxsize=1, pool_recycle=60) as source:
        readers = source.readers
        assert readers is not None
        clock = readers.clock = Clock()
        first = await backend_pid(source)
        slow = op("execute", None, sql="SELECT pg_backend_pid() AS pid, 7 AS n FROM pg_sleep(0.3)")
        found: list[Any] = []

        async def query() -> None:
            found.append(await source.execute(slow))

        async with anyio.create_task_group() as tg:
            # The connection ages past pool_recycle just after the first read checked it out.
            clock.jump = 3600
            tg.start_soon(query)
            await clock.jumped.wait()
            # A second read waits for the only connection, then replaces it before running.
            tg.start_soon(query)
        assert len(found) == 2 and all(rows[0]["n"] == 7 for rows in found)
        assert found[0] == [{"pid": first, "n": 7}]  # the first ran to its end, undisturbed
        assert found[1][0]["pid"] != first and source.recycled == 1
        assert readers.discarded == 0


async def test_the_writer_connection_is_recycled_between_batches(names: Names) -> None:
    async with running(names, pool_recycle=0.05) as source:
        assert await source.execute(op("add", names.items, values={"id": "a"})) == "a"
        first = source.writer_pid
        await anyio.sleep(0.1)  # older than pool_recycle by the next batch
        assert await source.execute(op("add", names.items, values={"id": "b"})) == "b"
        second = source.writer_pid
        assert first is not None and second is not None and second != first
        assert source.recycled >= 1 and source.discarded == 0
        # Every write of the batches is there; prepared INSERTs were made again.
        assert await source.execute(op("add", names.items, values={"id": "c"})) == "c"
        assert [row["id"] for row in await all_rows(source, names.items)] == ["a", "b", "c"]
    assert source.recycled >= 2  # kept once closed


@pytest.mark.parametrize("value", [0, -1, float("nan"), "soon"])
def test_a_bad_pool_recycle_is_a_config_error_naming_it(value: Any) -> None:
    spec = SourceSpec(
        name="pg", type="postgres", url=URL, options={"pool_recycle": value}, tables={}
    )
    with pytest.raises(ConfigError) as caught:
        PostgresSource(spec)
    assert "datasources.pg" in str(caught.value) and "pool_recycle" in str(caught.value)


# --- idempotency and the outbox ----------------------------------------------------------------


async def test_a_callers_key_is_recorded_in_the_writes_transaction(names: Names) -> None:
    async with running(names) as source:
        key = f"k-{uuid4().hex}"
        first = await source.execute(op("add", names.items, values={"qty": 1}, idempotency_key=key))
        assert (
            await source.execute(op("add", names.items, values={"qty": 1}, idempotency_key=key))
            == first
        )
        assert await source.execute(op("count", names.items)) == 1
        assert pgutil.fetch(f'SELECT count(*) FROM "{names.keys}" WHERE key = $1', key) == [(1,)]
        assert await source.purge_idempotency_keys(2**40) == 1


# --- native partitions --------------------------------------------------------------------------


def test_periods_of_shard_suffixes() -> None:
    assert period("20250131") == (date(2025, 1, 31), date(2025, 2, 1))
    assert period("202512") == (date(2025, 12, 1), date(2026, 1, 1))
    assert period("2025") is None and period("20251332") is None


async def test_sharded_tables_are_native_partitions(names: Names) -> None:
    logs = f"{names.keys}_logs"
    config = {
        "engine": {"drain_timeout": 2.0, "journal": "memory"},
        "datasources": {"db": {"type": "postgres", "url": URL, "maxsize": 4}},
        "tables": {
            logs: {
                "columns": {"message": "text"},
                "owner": "cid",
                "data_source": "db",
                "sharding": {"type": "daily", "retention_days": 1, "ahead": 1},
            },
        },
    }
    async with Engine(config) as engine:
        today = datetime.now(UTC).date()
        kinds = dict(
            pgutil.fetch(
                "SELECT relname, relkind::text FROM pg_class WHERE relname LIKE $1 AND relkind IN ('r', 'p')",
                logs.replace("_", "\\_") + "%",
            )
        )
        assert kinds[logs] == "p"  # the partitioned table
        today_shard = f"{logs}_{today:%Y%m%d}"
        assert kinds[today_shard] == "r" and len(kinds) == 3  # today's and one ahead
        bounds = pgutil.fetch(
            "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = $1", today_shard
        )
        assert f"FROM ('{today.isoformat()}')" in bounds[0][0]
        table = Table(engine, logs, identity=Identity(uid="u1", cid="c1", uname="u"))
        row_id = await table.add({"message": "hello"})
        # The row is in today's partition, seen through the partitioned table too.
        assert pgutil.fetch(f'SELECT id, cid FROM "{today_shard}"') == [(str(row_id), "c1")]
        assert pgutil.fetch(f'SELECT wf78_day FROM "{logs}"') == [(today,)]
        assert await table.update_by_id({"id": row_id, "message": "bye"}) == 1
        # An expired partition is detached and dropped by maintenance.
        old = f"{logs}_20200101"
        source = engine.sources.get("db")
        assert source is not None
        await source.adapter.execute(
            Operation(action="create_table", table=logs, shard="20200101", data_source="db")
        )
        assert pgutil.fetch(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE c.relname = $1",
            old,
        ) == [(1,)]
        report = await maintain(engine)
        assert [change.table for change in report.dropped] == [old]
        assert pgutil.fetch("SELECT count(*) FROM pg_class WHERE relname = $1", old) == [(0,)]


# --- selection -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "chosen"),
    [
        (["postgres", "mysql", "sqlite"], "postgres"),
        (["mysql", "postgres", "sqlite"], "mysql"),
        (["sqlite", "postgres"], "postgres"),
        (["sqlite", "mysql"], "mysql"),
        (["sqlite"], "sqlite"),
    ],
)
def test_kind_core_picks_the_first_declared_server_database(
    declared: list[str], chosen: str
) -> None:
    candidates = [
        SourceInfo(name=f"s_{kind}", type=kind, actions=frozenset({"add"})) for kind in declared
    ]
    picked = choose(Operation(action="add", table="t", kind="core"), candidates)
    assert picked is not None
    assert picked == (f"s_{chosen}", f"rule kind=core -> {chosen}")


@pytest.mark.parametrize("first", ["postgres", "mysql"])
async def test_kind_core_goes_to_the_first_declared_of_postgres_and_mysql(
    names: Names, first: str, tmp_path: Path
) -> None:
    servers = {
        "postgres": {"type": "postgres", "url": URL, "maxsize": 2},
        "mysql": {"type": "mysql", "url": "mysql://root@127.0.0.1:3306/test", "maxsize": 2},
    }
    second = "mysql" if first == "postgres" else "postgres"
    config = {
        "engine": {"drain_timeout": 2.0, "journal": "memory"},
        "datasources": {
            "lite": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/k.db"},
            first: servers[first],
            second: servers[second],
        },
        "tables": {names.items: {"columns": {"name": "text"}}},
    }
    try:
        async with Engine(config) as engine:
            add = Operation(action="add", table=names.items, values={"name": "x"}, kind="core")
            result = await engine.submit(add)
            assert (result.data_source, result.reason) == (first, f"rule kind=core -> {first}")
    finally:
        connection = pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test")
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS `{names.items}`")
        finally:
            connection.close()


async def test_a_partitioned_table_gets_its_missing_columns_on_migrate(names: Names) -> None:
    logs = f"{names.keys}_mlogs"
    config = {
        "engine": {"drain_timeout": 2.0, "journal": "memory"},
        "datasources": {"db": {"type": "postgres", "url": URL, "maxsize": 2}},
        "tables": {
            logs: {
                "columns": {"message": "text", "n": "int"},
                "data_source": "db",
                "sharding": {"type": "monthly", "retention_days": 40, "ahead": 1},
            },
        },
    }
    async with Engine(config):
        pass
    pgutil.fetch(f'ALTER TABLE "{logs}" DROP COLUMN "n"')  # as an older declaration made it
    with pytest.raises(ConfigError, match="has no column 'n'"):
        async with Engine(config):
            pass
    async with Engine(config, migrate=True) as engine:
        report = engine.startup_maintenance
        assert report is not None and [c.column for c in report.columns_added] == ["n"]
    partitions = [
        str(row[0])
        for row in pgutil.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1",
            logs,
        )
    ]
    assert len(partitions) == 2  # this month's and the next, each with the column again
    for name in partitions:
        columns = pgutil.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1", name
        )
        assert ("n",) in columns
