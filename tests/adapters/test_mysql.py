"""The MySQL adapter against the real MariaDB: actions, types, group commit, lost connections."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import aiomysql
import anyio
import anyio.lowlevel
import httpx
import pymysql
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from wf78_core import Engine, Wf78Middleware
from wf78_core.config import TableConfig
from wf78_core.definitions import Operation
from wf78_core.errors import ConfigError, DataSourceError, InvalidOperation
from wf78_core.plugin.datasource import DataSource, SourceSpec, TableSchema, load_factory
from wf78_core.plugin.registry import Registry
from wf78_mysql import MySQLSource, wf78_register_datasources
from wf78_mysql.errors import map_error

URL = "mysql://root@127.0.0.1:3306/test"
SERVER = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": "", "db": "test"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiomysql runs on asyncio only


@dataclass(frozen=True)
class Names:
    """This test's own table names, dropped after it."""

    items: str
    things: str

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
    suffix = uuid4().hex[:8]
    made = Names(items=f"t_{suffix}_items", things=f"t_{suffix}_things")
    yield made
    connection = pymysql.connect(
        host=SERVER["host"], port=SERVER["port"], user=SERVER["user"], database=SERVER["db"]
    )
    try:
        with connection.cursor() as cursor:
            for table in (made.items, made.things):
                cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
    finally:
        connection.close()


def make_source(
    names: Names, *, url: str = URL, options: Any = None, **option_values: Any
) -> MySQLSource:
    option_values.setdefault("create_tables", True)
    return MySQLSource(
        SourceSpec(
            name="my",
            type="mysql",
            url=url,
            options=options if options is not None else MySQLSource.Options(**option_values),
            tables={
                name: TableSchema.from_config(name, table) for name, table in names.tables().items()
            },
        )
    )


@asynccontextmanager
async def running(names: Names, **option_values: Any) -> AsyncIterator[MySQLSource]:
    """An open source with its group-commit writer running, as the engine starts it."""
    source = make_source(names, **option_values)
    await source.open()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(source.run)
            yield source
            tg.cancel_scope.cancel()
    finally:
        await source.close()


def op(action: str, table: str | None, **fields: Any) -> Operation:
    return Operation(action=action, table=table, **fields)


async def all_rows(source: MySQLSource, table: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await source.execute(op("get", table, order=["id"]))
    return rows


@asynccontextmanager
async def side_connection() -> AsyncIterator[Any]:
    """A connection of the test's own, outside the adapter's pool."""
    connection = await aiomysql.connect(autocommit=True, **SERVER)
    try:
        yield connection
    finally:
        connection.close()


async def query(connection: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with connection.cursor() as cursor:
        await cursor.execute(sql, params or None)
        return list(await cursor.fetchall())


async def kill_when_running(
    connection: Any, marker: str, *, skip: Collection[int] = (), within: float = 10.0
) -> int:
    """KILL the connection running a statement containing ``marker``, once one is; its id.

    ``skip`` holds connections already killed: the processlist may list them a while longer.
    """
    with anyio.fail_after(within):
        while True:
            found = await query(
                connection,
                "SELECT id FROM information_schema.processlist "
                "WHERE info LIKE %s AND id <> CONNECTION_ID()",
                f"%{marker}%",
            )
            for (thread_id,) in found:
                if int(thread_id) in skip:
                    continue
                try:
                    await query(connection, f"KILL {int(thread_id)}")
                except aiomysql.InternalError as error:
                    if error.args[0] != 1094:  # unknown thread: it finished in between
                        raise
                    continue
                return int(thread_id)
            await anyio.sleep(0.01)


# --- construction and registration ---------------------------------------------------------


def test_hook_registers_the_factory(names: Names) -> None:
    registry: Registry[Any] = Registry("data source")
    wf78_register_datasources(registry)
    assert load_factory(registry["mysql"]) is MySQLSource
    assert isinstance(make_source(names), DataSource)


def test_options_defaults_and_concurrency(names: Names) -> None:
    source = make_source(names, options={})
    assert source.options == MySQLSource.Options(
        minsize=1,
        maxsize=10,
        charset="utf8mb4",
        connect_timeout=5.0,
        max_batch=1000,
        queue_size=10_000,
        create_tables=True,
        pool_recycle=3600,
    )
    assert source.concurrency == 1024
    assert make_source(names, queue_size=8).concurrency == 8
    assert source.actions == frozenset(
        {"add", "add_many", "get", "update", "upsert", "delete", "delete_many", "execute", "noop"}
        | {"count", "update_many", "create_table", "drop_table", "list_shards"}
        | {"list_columns", "add_columns", "purge_idempotency"}
    )
    assert source.settings == {
        "host": "127.0.0.1",
        "port": 3306,
        "user": "root",
        "password": "",
        "db": "test",
    }


def test_url_parts_are_unquoted(names: Names) -> None:
    source = make_source(names, url="mysql://app%40x:p%3Ass@db.example:3307/shop")
    assert source.settings == {
        "host": "db.example",
        "port": 3307,
        "user": "app@x",
        "password": "p:ss",
        "db": "shop",
    }
    assert make_source(names, url="mysql://h/db").settings["port"] == 3306


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"maxsize": "ten"}, "datasources.my.maxsize"),
        ({"maxsize": 1}, "datasources.my"),
        ({"minsize": 5, "maxsize": 4}, "datasources.my"),
        ({"nope": 1}, "datasources.my.nope"),
        ({"pool_recycle": 0}, "datasources.my"),
        ({"pool_recycle": "soon"}, "datasources.my.pool_recycle"),
    ],
)
def test_bad_options_name_their_path(names: Names, options: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_source(names, options=options)
    assert caught.value.problems[0].path == path
    assert next(iter(options)) in str(caught.value)  # the key, in the path or the message


@pytest.mark.parametrize(
    "url",
    ["", "mysql://127.0.0.1:3306", "mysql:///test", "postgres://h/db", "mysql://h/db?ssl=1"],
)
def test_unsupported_urls_are_config_errors(names: Names, url: str) -> None:
    with pytest.raises(ConfigError, match=r"datasources\.my\.url"):
        make_source(names, url=url)


@pytest.mark.anyio
async def test_unreachable_server_fails_open_retryably(names: Names) -> None:
    source = make_source(names, url="mysql://root@127.0.0.1:1/test", connect_timeout=1.0)
    with pytest.raises(DataSourceError) as caught:
        await source.open()
    assert caught.value.retryable is True and caught.value.data_source == "my"


@pytest.mark.anyio
async def test_ensure_tables_creates_only_missing_tables(names: Names) -> None:
    source = make_source(names, create_tables=False)
    await source.open()
    try:
        assert sorted(await source.ensure_tables()) == sorted([names.items, names.things])
        assert await source.ensure_tables() == []
        columns = await source.execute(
            op(
                "execute",
                None,
                sql="SELECT column_name AS name, column_type AS type, column_key AS `key` "
                "FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND table_name = %s ORDER BY ordinal_position",
                params=[names.things],
            )
        )
        types = {row["name"]: (row["type"], row["key"]) for row in columns}
        assert types == {
            "id": ("varchar(64)", "PRI"),
            "label": ("longtext", ""),  # a text that fits a packet fits the column
            "count": ("bigint(20)", ""),
            "price": ("double", ""),
            "flag": ("tinyint(1)", ""),
            "meta": ("longtext", ""),  # MariaDB's JSON is LONGTEXT checked by json_valid
            "at": ("datetime(6)", ""),
            "upby": ("longtext", ""),
            "uptime": ("datetime(6)", ""),
        }
        owner = await source.execute(
            op(
                "execute",
                None,
                sql="SELECT column_type AS type, column_key AS `key`, collation_name AS collation "
                "FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND table_name = %s AND column_name = 'cid'",
                params=[names.items],
            )
        )
        # The owner leads the key: each owner has its own ids.
        assert owner == [{"type": "varchar(64)", "key": "PRI", "collation": "utf8mb4_bin"}]
        key = await source.execute(
            op(
                "execute",
                None,
                sql="SELECT column_name AS name FROM information_schema.key_column_usage "
                "WHERE table_schema = DATABASE() AND table_name = %s "
                "AND constraint_name = 'PRIMARY' ORDER BY ordinal_position",
                params=[names.items],
            )
        )
        assert [row["name"] for row in key] == ["cid", "id"]
        await source.open()  # a second open is a no-op
    finally:
        await source.close()
        await source.close()  # idempotent


# --- actions -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_action_and_its_result_shape(names: Names) -> None:
    items = names.items
    async with running(names) as source:
        first = await source.execute(op("add", items, values={"name": "a", "qty": 1, "cid": "c1"}))
        assert isinstance(first, str) and first.isdigit()
        assert (
            await source.execute(op("add", items, values={"id": "x2", "name": "b", "qty": 2}))
            == "x2"
        )
        many = await source.execute(
            op("add_many", items, rows=[{"id": "x3", "name": "c", "qty": 3}, {"name": "d"}])
        )
        assert many[0] == "x3" and isinstance(many[1], str) and len(many) == 2
        assert await source.execute(op("add_many", items, rows=[])) == []

        got = await source.execute(op("get", items, where={"id": first}))
        assert got == [
            {"id": first, "name": "a", "qty": 1, "cid": "c1", "upby": None, "uptime": None}
        ]
        selected = await source.execute(
            op("get", items, columns=["name"], where={"qty": [2, 3]}, order=["-qty"])
        )
        assert selected == [{"name": "c"}, {"name": "b"}]
        assert await source.execute(op("get", items, columns=["name"], where={"qty": None})) == [
            {"name": "d"}
        ]
        assert await source.execute(op("get", items, where={"qty": []})) == []
        page = await source.execute(
            op(
                "get",
                items,
                columns=["qty"],
                where={"qty": [1, 2, 3]},
                order=["qty asc"],
                limit=1,
                offset=1,
            )
        )
        assert page == [{"qty": 2}]
        skipped = await source.execute(
            op(
                "get",
                items,
                columns=["qty"],
                where={"qty": [1, 2, 3]},
                order=["qty DESC"],
                offset=1,
            )
        )
        assert skipped == [{"qty": 2}, {"qty": 1}]

        assert (
            await source.execute(op("update", items, values={"qty": 20}, where={"id": "x2"})) == 1
        )
        # Matched rows, as SQLite counts them, even when nothing changes.
        assert (
            await source.execute(op("update", items, values={"qty": 20}, where={"id": "x2"})) == 1
        )
        assert await source.execute(op("update", items, values={"qty": 0}, where={"id": "no"})) == 0
        assert await source.execute(op("upsert", items, values={"id": "x2", "name": "B"})) == "x2"
        assert await source.execute(op("upsert", items, values={"id": "x9", "qty": 9})) == "x9"
        assert await source.execute(op("upsert", items, values={"id": "x9"})) == "x9"
        assert await source.execute(
            op("get", items, columns=["name", "qty"], where={"id": "x2"})
        ) == [{"name": "B", "qty": 20}]
        assert await source.execute(op("get", items, columns=["qty"], where={"id": "x9"})) == [
            {"qty": 9}
        ]

        assert await source.execute(op("delete", items, where={"id": "x9"})) == 1
        assert await source.execute(op("delete_many", items, where={"id": ["x2", "x3", "z"]})) == 2
        assert len(await all_rows(source, items)) == 2

        raw = await source.execute(
            op("execute", None, sql=f"SELECT name FROM {items} WHERE qty = %s", params=[1])
        )
        assert raw == [{"name": "a"}]
        named = await source.execute(
            op(
                "execute",
                None,
                sql=f"SELECT count(*) AS n FROM {items} WHERE name = %(n)s",
                params={"n": "a"},
            )
        )
        assert named == [{"n": 1}]
        changed = await source.execute(
            op("execute", None, sql=f"UPDATE {items} SET qty = qty + 1 WHERE qty IS NOT NULL")
        )
        assert changed == 1
        assert await source.execute(op("noop", None)) is None


@pytest.mark.anyio
async def test_raw_sql_is_routed_by_what_it_does(names: Names) -> None:
    items = names.items
    async with running(names) as source:
        # DDL commits implicitly, so it runs alone, outside any group-commit batch.
        before = source.transactions
        created = await source.execute(
            op("execute", None, sql=f"CREATE TABLE {items}_x (id INT PRIMARY KEY)")
        )
        assert created == 0 and source.transactions == before
        assert await source.execute(op("execute", None, sql=f"DROP TABLE {items}_x")) == 0
        # DML joins the writer's batches; a literal % needs no doubling without params.
        inserted = await source.execute(
            op("execute", None, sql=f"INSERT INTO {items} (id, name) VALUES ('p1', '100%')")
        )
        assert inserted == 1 and source.transactions == before + 1
        like = await source.execute(
            op("execute", None, sql=f"SELECT id FROM {items} WHERE name LIKE '%\\%'")
        )
        assert like == [{"id": "p1"}]
        read = await source.execute(
            op(
                "execute",
                None,
                sql=f"/* hi */ WITH v AS (SELECT name FROM {items}) SELECT * FROM v",
            )
        )
        assert read == [{"name": "100%"}]
        shown = await source.execute(op("execute", None, sql=f"SHOW COLUMNS FROM {items}"))
        assert [row["Field"] for row in shown] == ["id", "name", "qty", "cid", "upby", "uptime"]
        assert await source.execute(op("execute", None, sql="DO 1")) == 0


@pytest.mark.anyio
async def test_type_round_trips_and_utf8mb4(names: Names) -> None:
    things = names.things
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    meta = {"tags": ["a", "😀"], "nested": {"n": 1.5, "none": None}, "ok": True, "汉字": "ü"}
    async with running(names) as source:
        await source.execute(
            op(
                "add",
                things,
                values={
                    "id": "t1",
                    "label": "emoji 😀🎉 and 汉字",
                    "count": 2**62,
                    "price": 2.5,
                    "flag": True,
                    "meta": meta,
                    "at": moment,
                },
            )
        )
        plus_two = datetime(2024, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
        await source.execute(op("add", things, values={"id": "t2", "flag": False, "at": plus_two}))
        await source.execute(op("add", things, values={"id": "t3", "price": 3, "meta": [1, 2]}))
        await source.execute(op("add", things, values={"id": "t4", "at": "2024-01-02T03:04:05Z"}))
        await source.execute(op("add", things, values={"id": "t5", "at": datetime(2024, 3, 4)}))
        rows = {row["id"]: row for row in await all_rows(source, things)}
        assert rows["t1"]["label"] == "emoji 😀🎉 and 汉字"
        assert rows["t1"]["count"] == 2**62 and type(rows["t1"]["count"]) is int
        assert rows["t1"]["price"] == 2.5
        assert rows["t1"]["flag"] is True and rows["t2"]["flag"] is False
        assert rows["t3"]["flag"] is None
        assert rows["t1"]["meta"] == meta and rows["t3"]["meta"] == [1, 2]
        assert rows["t1"]["at"] == moment.isoformat()
        assert datetime.fromisoformat(rows["t1"]["at"]) == moment
        # DATETIME holds no zone: values are kept in UTC, naive ones taken as UTC.
        assert rows["t2"]["at"] == "2024-01-02T03:04:05+00:00"
        assert rows["t4"]["at"] == "2024-01-02T03:04:05+00:00"
        assert rows["t5"]["at"] == "2024-03-04T00:00:00+00:00"
        assert type(rows["t3"]["price"]) is float and rows["t3"]["price"] == 3.0
        # Filters encode values the same way the columns store them.
        flagged = await source.execute(op("get", things, columns=["id"], where={"flag": True}))
        assert flagged == [{"id": "t1"}]
        by_time = await source.execute(op("get", things, columns=["id"], where={"at": moment}))
        assert by_time == [{"id": "t1"}]
        by_zone = await source.execute(op("get", things, columns=["id"], where={"at": plus_two}))
        assert by_zone == [{"id": "t2"}, {"id": "t4"}]
        by_emoji = await source.execute(
            op("get", things, columns=["id"], where={"label": "emoji 😀🎉 and 汉字"})
        )
        assert by_emoji == [{"id": "t1"}]
        # Binary collation: ids compare like SQLite's, case-sensitively.
        await source.execute(op("add", things, values={"id": "T1"}))
        assert len(await source.execute(op("get", things, where={"id": ["t1", "T1"]}))) == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"flag": "yes"}, "values.flag of table '{t}' must be a bool"),
        ({"at": "yesterday"}, "values.at of table '{t}' is not an ISO 8601 datetime"),
        ({"at": 12}, "values.at of table '{t}' must be a datetime"),
        ({"label": {"a": 1}}, "values.label of table '{t}' has unsupported type dict"),
        ({"meta": object()}, "values.meta of table '{t}' is not JSON-encodable"),
    ],
)
@pytest.mark.anyio
async def test_bad_values_are_refused(names: Names, values: dict[str, Any], message: str) -> None:
    async with running(names) as source:
        with pytest.raises(InvalidOperation, match=re.escape(message.format(t=names.things))):
            await source.execute(op("add", names.things, values=values))
        assert await all_rows(source, names.things) == []


@pytest.mark.anyio
async def test_values_the_column_cannot_hold_are_refused_naming_it(names: Names) -> None:
    async with running(names) as source:
        # Refused before any SQL: INSERT IGNORE would cut the id to another one.
        for action, fields in (
            ("add", {"values": {"id": "x" * 65}}),
            ("add_many", {"rows": [{"id": "x" * 65}], "conflict": "ignore"}),
        ):
            with pytest.raises(InvalidOperation, match="the column holds at most 64") as caught:
                await source.execute(op(action, names.items, **fields))
            assert f"id of table {names.items!r} has 65 characters" in str(caught.value)
        with pytest.raises(InvalidOperation, match=r"values\.qty of table .* must be an integer"):
            await source.execute(op("add", names.items, values={"qty": "many"}))
        # Strict mode's refusal of a value is the caller's error too, naming the column.
        with pytest.raises(InvalidOperation, match="a value for column 'qty' is out of the"):
            await source.execute(op("add", names.items, values={"qty": 1 << 64}))
        assert await all_rows(source, names.items) == []


@pytest.mark.anyio
async def test_long_texts_are_kept_whole_or_refused_naming_the_column(names: Names) -> None:
    long = "x" * 70_000
    async with running(names) as source:
        # Text columns are LONGTEXT: what INSERT IGNORE cut at 65,535 bytes is kept whole.
        rows = [{"id": "t1", "label": long}]
        assert await source.execute(op("add_many", names.things, rows=rows, conflict="ignore"))
        (row,) = await source.execute(op("get", names.things, where={"id": "t1"}))
        assert row["label"] == long
        # A TEXT column (an older wf78's, or made by hand) holds 65,535 bytes.
        async with side_connection() as side:
            await query(side, f"ALTER TABLE `{names.items}` MODIFY `name` TEXT")
        # Strict mode refuses a longer value, and the error names the column...
        with pytest.raises(InvalidOperation, match="a value for column 'name' is too long"):
            await source.execute(op("add", names.items, values={"id": "a", "name": long}))
        # ...and once the source has read the table's columns (the engine does at start),
        # it refuses it before INSERT IGNORE (which strict mode does not stop) could cut it.
        assert "name" in await source.execute(op("list_columns", names.items))
        refusals = [
            ("add_many", {"rows": [{"id": "a", "name": long}], "conflict": "ignore"}),
            ("add", {"values": {"id": "a", "name": long}}),
            ("update", {"values": {"name": long}, "where": {"id": "a"}}),
        ]
        for action, fields in refusals:
            with pytest.raises(InvalidOperation) as caught:
                await source.execute(op(action, names.items, **fields))
            assert f".name of table {names.items!r} has 70000 characters; the column holds " in (
                str(caught.value)
            )
        # Bytes count: 20,000 four-byte characters do not fit, 30,000 two-byte ones do.
        emoji = [{"id": "b", "name": "\N{GRINNING FACE}" * 20_000}]
        with pytest.raises(InvalidOperation, match="is 80000 bytes in UTF-8; the column holds"):
            await source.execute(op("add_many", names.items, rows=emoji, conflict="ignore"))
        fits = [{"id": "c", "name": "é" * 30_000}]
        assert await source.execute(op("add_many", names.items, rows=fits, conflict="ignore"))
        assert [row["name"] for row in await all_rows(source, names.items)] == ["é" * 30_000]


@pytest.mark.anyio
async def test_a_text_too_long_for_its_column_is_a_400_naming_it(names: Names) -> None:
    # The table as a wf78 of old made it (TEXT); the engine reads its columns at start.
    async with side_connection() as side:
        await query(
            side,
            f"CREATE TABLE `{names.items}` (`id` VARCHAR(64) PRIMARY KEY, `name` TEXT, "
            "`qty` BIGINT, `cid` VARCHAR(64), `upby` TEXT, `uptime` DATETIME(6))",
        )
    config = {
        "datasources": {"my": {"type": "mysql", "url": URL}},
        "tables": {
            names.items: {
                "columns": {"name": "text", "qty": "int"},
                "owner": "cid",
                "route": "api/shop",
            }
        },
        "auth": {"tokens": {"t-acme": {"uid": "u1", "cid": "acme", "uname": "alice"}}},
    }
    app = Wf78Middleware(Starlette(), engine=Engine(config))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app),
            base_url="http://test",
            headers={"Authorization": "Bearer t-acme"},
        ) as client,
    ):
        url = f"/api/shop/{names.items}/mAddManyByid"
        rows = [{"id": "1", "name": "x" * 70_000, "qty": 1}]
        answer = await client.post(url, json={"rows": rows})
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["res"] == -400 and body["kind"] == "invalid"
        assert "name of table" in body["errmsg"] and "holds at most 65535" in body["errmsg"]
        rows = [{"id": "1", "name": "x" * 65_535, "qty": 1}]
        assert (await client.post(url, json={"rows": rows})).json()["back"] == 1


@pytest.mark.anyio
async def test_filters_bind_by_the_columns_declared_type(names: Names) -> None:
    async with running(names) as source:
        rows = [{"id": "1", "name": "0123", "qty": 7}, {"id": "01", "name": "123", "qty": 8}]
        await source.execute(op("add_many", names.items, rows=rows))

        async def ids(**where: Any) -> list[str]:
            found = await source.execute(op("get", names.items, where=where, order=["id"]))
            return [row["id"] for row in found]

        # A number compared with a text column is its text, never the column as a number.
        assert await ids(name=123) == ["01"]
        assert await ids(id=1) == ["1"]
        assert await ids(name=[123, 456]) == ["01"]
        assert await source.execute(op("count", names.items, where={"name": 123})) == 1
        assert await source.execute(op("delete", names.items, where={"name": 123})) == 1
        # Numeric text for an int column is the number; other text is refused, naming it.
        assert await ids(qty="7") == ["1"]
        with pytest.raises(InvalidOperation, match=r"where\.qty of table .* must be an integer"):
            await ids(qty="7abc")


# --- group commit --------------------------------------------------------------------------


@pytest.mark.anyio
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
        multi_row_inserts = source.multi_row_inserts

    assert source.writes == 500
    assert 1 <= transactions < 50, transactions
    # Identical single-row INSERTs travelled as multi-row INSERTs, one per batch.
    assert 1 <= multi_row_inserts <= transactions
    assert len(set(ids)) == 500
    assert {row["id"] for row in rows} == set(ids)
    assert sorted(row["qty"] for row in rows) == list(range(500))


@pytest.mark.anyio
async def test_max_batch_bounds_each_transaction(names: Names) -> None:
    async with running(names, max_batch=10) as source:
        async with anyio.create_task_group() as tg:
            for index in range(100):
                tg.start_soon(source.execute, op("add", names.items, values={"qty": index}))
        assert source.transactions >= 10
        assert len(await all_rows(source, names.items)) == 100


@pytest.mark.anyio
async def test_one_bad_row_fails_only_its_caller(names: Names) -> None:
    outcomes: dict[int, Any] = {}
    items = names.items

    async with running(names) as source:
        await source.execute(op("add", items, values={"id": "dup", "name": "original"}))

        async def add(index: int) -> None:
            row_id = "dup" if index == 137 else f"r{index}"
            try:
                outcomes[index] = await source.execute(
                    op("add", items, values={"id": row_id, "name": f"n{index}"})
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

    failed = {
        index: value for index, value in outcomes.items() if isinstance(value, DataSourceError)
    }
    assert list(failed) == [137]
    error = failed[137]
    assert error.retryable is False
    assert error.data_source == "my"
    assert "duplicate key" in str(error) and "(1062)" in str(error)
    assert transactions < 200  # the rows really were grouped, then retried one by one
    assert fallbacks >= 1
    assert len(rows) == 200 and rows["dup"] == "original"
    assert all(rows[f"r{index}"] == f"n{index}" for index in range(200) if index != 137)


@pytest.mark.anyio
async def test_a_failing_update_is_isolated_in_its_batch(names: Names) -> None:
    results: dict[int, Any] = {}
    items = names.items
    async with running(names) as source:
        await source.execute(
            op("add_many", items, rows=[{"id": f"u{i}", "qty": 0} for i in range(50)])
        )

        async def update(index: int) -> None:
            values = {"id": "u0"} if index == 7 else {"qty": index}
            try:
                results[index] = await source.execute(
                    op("update", items, values=values, where={"id": f"u{index}"})
                )
            except DataSourceError as error:
                results[index] = error

        async with anyio.create_task_group() as tg:
            for index in range(1, 50):
                tg.start_soon(update, index)
        rows = {row["id"]: row["qty"] for row in await all_rows(source, items)}

    assert isinstance(results.pop(7), DataSourceError)
    assert set(results.values()) == {1}
    assert rows["u7"] == 0 and all(rows[f"u{i}"] == i for i in range(1, 50) if i != 7)


@pytest.mark.anyio
async def test_add_many_is_all_or_nothing_for_its_caller(names: Names) -> None:
    items = names.items
    async with running(names) as source:
        await source.execute(op("add", items, values={"id": "taken"}))
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.execute, op("add", items, values={"id": "other"}))
            with pytest.raises(DataSourceError, match="duplicate key"):
                await source.execute(
                    op("add_many", items, rows=[{"id": "new1"}, {"id": "taken"}, {"id": "new2"}])
                )
        assert [row["id"] for row in await all_rows(source, items)] == ["other", "taken"]


@pytest.mark.anyio
async def test_writes_work_without_the_writer_loop(names: Names) -> None:
    items = names.items
    source = make_source(names)
    await source.open()
    try:
        async with anyio.create_task_group() as tg:
            for index in range(5):
                tg.start_soon(source.execute, op("add", items, values={"qty": index}))
        assert source.transactions == 5  # each write commits alone
        updated = await source.execute(
            op("update", items, values={"qty": 9}, where={"qty": [0, 1]})
        )
        assert updated == 2
        rows = await all_rows(source, items)
        with pytest.raises(DataSourceError, match="duplicate key"):
            await source.execute(op("add", items, values={"id": rows[0]["id"]}))
        assert len(await all_rows(source, items)) == 5
    finally:
        await source.close()
    assert source.transactions == 6  # the failed add, alone, was rolled back


@pytest.mark.anyio
async def test_shutdown_with_queued_writes_answers_every_caller(names: Names) -> None:
    outcomes: dict[int, Any] = {}
    source = make_source(names, max_batch=5, queue_size=20)
    await source.open()

    async def add(index: int) -> None:
        try:
            outcomes[index] = await source.execute(
                op("add", names.items, values={"id": f"w{index}"})
            )
        except DataSourceError as error:
            outcomes[index] = error

    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as callers:
                async with anyio.create_task_group() as engine:
                    await engine.start(source.run)
                    for index in range(200):
                        callers.start_soon(add, index)
                    while source.writes == 0:  # cancel while the first batch is in progress
                        await anyio.lowlevel.checkpoint()
                    engine.cancel_scope.cancel()
        stored = {row["id"] for row in await all_rows(source, names.items)}
    finally:
        await source.close()

    assert len(outcomes) == 200  # nobody was left waiting
    errors = [value for value in outcomes.values() if isinstance(value, DataSourceError)]
    assert errors, "the cancelled writer should have refused queued writes"
    assert all(error.retryable and "closing" in str(error) for error in errors)
    succeeded = {value for value in outcomes.values() if isinstance(value, str)}
    assert succeeded, "the batch in progress at cancellation should have committed"
    assert stored == succeeded
    assert len(succeeded) + len(errors) == 200


# --- lost connections ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_connection_killed_mid_batch_fails_the_batch_retryably(names: Names) -> None:
    items = names.items
    marker = f"kill_{uuid4().hex[:8]}"
    outcomes: dict[str, Any] = {}

    async def submit(key: str, operation: Operation) -> None:
        try:
            outcomes[key] = await source.execute(operation)
        except DataSourceError as error:
            outcomes[key] = error

    async with running(names) as source, side_connection() as killer:
        await source.execute(op("add", items, values={"id": "before"}))
        writer_thread = source.writer_thread_id
        assert writer_thread is not None
        async with anyio.create_task_group() as tg:
            # The INSERTs run first in the batch, then the slow statement the kill interrupts.
            for index in range(50):
                tg.start_soon(submit, f"a{index}", op("add", items, values={"id": f"a{index}"}))
            tg.start_soon(submit, "slow", op("execute", None, sql=f"DO SLEEP(5), '{marker}'"))
            assert await kill_when_running(killer, marker) == writer_thread
        assert source.discarded == 1
        stored = {row["id"] for row in await all_rows(source, items)}
        # The next batch runs on a fresh connection.
        assert await source.execute(op("add", items, values={"id": "after"})) == "after"
        assert source.writer_thread_id not in (None, writer_thread)

    slow = outcomes.pop("slow")
    assert isinstance(slow, DataSourceError) and slow.retryable is True
    assert "lost its connection" in str(slow)
    lost = {key for key, value in outcomes.items() if isinstance(value, DataSourceError)}
    assert lost, "the killed batch should have held some of the adds"
    assert all(
        outcomes[key].retryable and "lost its connection" in str(outcomes[key]) for key in lost
    )
    # Nothing of the killed batch was committed; whatever was reported added is there.
    assert stored == {"before"} | {value for value in outcomes.values() if isinstance(value, str)}


@pytest.mark.anyio
async def test_an_idle_writer_connection_killed_is_replaced_transparently(names: Names) -> None:
    async with running(names) as source, side_connection() as killer:
        await source.execute(op("add", names.items, values={"id": "first"}))
        writer_thread = source.writer_thread_id
        await query(killer, f"KILL {writer_thread}")
        await anyio.sleep(0.05)
        assert await source.execute(op("add", names.items, values={"id": "second"})) == "second"
        assert source.discarded == 1
        assert source.writer_thread_id not in (None, writer_thread)
        assert [row["id"] for row in await all_rows(source, names.items)] == ["first", "second"]


@pytest.mark.anyio
async def test_writes_survive_killed_connections_through_the_engine(names: Names) -> None:
    """Kill the writer's connection while batches are in flight; retries land every row once."""
    items = names.items
    marker = f"kill_{uuid4().hex[:8]}"
    config = {
        "engine": {"retry_backoff": 0.01, "drain_timeout": 5.0},
        "datasources": {"my": {"type": "mysql", "url": URL, "create_tables": True}},
        "tables": {items: {"columns": {"name": "text", "qty": "int"}, "owner": "cid"}},
    }
    expected = {f"k{index}" for index in range(300)}
    results: list[str] = []
    kills: list[int] = []

    async with Engine(config) as engine:

        async def add(index: int) -> None:
            operation = Operation(
                action="add",
                table=items,
                values={"id": f"k{index}", "qty": index},
                data_source="my",
                retry=5,
            )
            results.append((await engine.submit(operation)).value)

        async def slow_down() -> None:
            # Slow batches give the killer a statement to catch the writer in.
            sql = f"DO SLEEP(0.2), '{marker}'"
            await engine.submit(Operation(action="execute", sql=sql, data_source="my", retry=5))

        async with side_connection() as killer, anyio.create_task_group() as tg:
            for index in range(300):
                tg.start_soon(add, index)
                if index % 50 == 0:
                    tg.start_soon(slow_down)
            for _ in range(2):
                kills.append(await kill_when_running(killer, marker, skip=kills))
        stats = engine.stats()
        count = await engine.submit(
            Operation(
                action="execute",
                sql=f"SELECT id, count(*) AS n FROM {items} GROUP BY id",
                data_source="my",
            )
        )

    assert len(kills) == 2
    assert stats.retries > 0
    assert sorted(results) == sorted(expected)
    by_id = {row["id"]: row["n"] for row in count.value}
    assert set(by_id) == expected  # none missing
    assert set(by_id.values()) == {1}  # none twice


# --- identifiers, values and refusals ------------------------------------------------------

BadOperation = Callable[[str], Operation]

# Each builds a bad operation on the items table (its name given) and names the error.
BAD_OPERATIONS: list[tuple[BadOperation, str]] = [
    (lambda t: op("get", "nope"), "unknown table 'nope'"),
    (lambda t: op("get", None), "get needs a table"),
    (
        lambda t: op("add", t, values={"nmae": "x"}),
        "unknown column 'nmae' in values of table '{t}'",
    ),
    (
        lambda t: op("update", t, values={"nmae": "x"}, where={"id": "1"}),
        "unknown column 'nmae' in values",
    ),
    (lambda t: op("get", t, where={"nmae": "x"}), "unknown column 'nmae' in where of table"),
    (lambda t: op("delete", t, where={"nmae": "x"}), "unknown column 'nmae' in where"),
    (lambda t: op("get", t, columns=["nmae"]), "unknown column 'nmae' in columns"),
    (lambda t: op("get", t, order=["nmae"]), "unknown column 'nmae' in order"),
    (lambda t: op("get", t, order=["-nmae"]), "unknown column 'nmae' in order"),
    (lambda t: op("get", t, order=["name sideways"]), "bad order direction 'sideways'"),
    (
        lambda t: op("get", t, order=["name; DROP TABLE x"]),
        "bad order entry 'name; DROP TABLE x'",
    ),
    (
        lambda t: op("get", t, columns=["name`; DROP TABLE x; --"]),
        "unknown column 'name`; DROP TABLE x; --' in columns",
    ),
    (
        lambda t: op("add", t, values={"name` TEXT); DROP TABLE x; --": 1}),
        "unknown column 'name` TEXT); DROP TABLE x; --' in values",
    ),
    (
        lambda t: op("get", t, where={"1=1 OR name": "x"}),
        "unknown column '1=1 OR name' in where",
    ),
    (
        lambda t: op("add_many", t, rows=[{"name": "ok"}, {"bad": 1}]),
        "unknown column 'bad' in rows[1]",
    ),
    (lambda t: op("update", t, values={"qty": 1}), "update needs a non-empty where"),
    (lambda t: op("update", t, values={}, where={"id": "1"}), "update needs non-empty values"),
    (lambda t: op("delete", t), "delete needs a non-empty where"),
    (
        lambda t: op("delete_many", t, where={"id": "1"}),
        "delete_many needs a list value in where",
    ),
    (lambda t: op("upsert", t, values={"name": "x"}), "upsert needs values.id"),
    (lambda t: op("add", t), "add needs values"),
    (lambda t: op("add_many", t), "add_many needs rows"),
    (lambda t: op("drop", t), "action 'drop' is not supported"),
    (lambda t: op("execute", None), "execute needs sql"),
    (lambda t: op("execute", None, sql="COMMIT"), "execute cannot run 'COMMIT'"),
    (lambda t: op("execute", None, sql=" -- x\n start transaction"), "cannot run 'START'"),
    (lambda t: op("execute", None, sql="SAVEPOINT wf78_write"), "cannot run 'SAVEPOINT'"),
    (lambda t: op("execute", None, sql="set autocommit = 1"), "execute cannot run 'SET'"),
    (lambda t: op("execute", None, sql="LOCK TABLES x WRITE"), "execute cannot run 'LOCK'"),
]


@pytest.mark.parametrize(
    ("operation", "message"), BAD_OPERATIONS, ids=[m for _, m in BAD_OPERATIONS]
)
@pytest.mark.anyio
async def test_bad_operations_raise_invalid_operation(
    names: Names, operation: BadOperation, message: str
) -> None:
    items = names.items
    async with running(names) as source:
        await source.execute(op("add", items, values={"id": "1", "name": "keep"}))
        with pytest.raises(InvalidOperation, match=re.escape(message.format(t=items))) as caught:
            await source.execute(operation(items))
        assert caught.value.data_source == "my"
        assert caught.value.retryable is False
        assert await all_rows(source, items) == [
            # Written without an owner: the empty owner's (the owner is part of the key).
            {"id": "1", "name": "keep", "qty": None, "cid": "", "upby": None, "uptime": None}
        ]


@pytest.mark.anyio
async def test_sql_metacharacters_in_values_are_stored_verbatim(names: Names) -> None:
    items = names.items
    nasty = [
        "x'); DROP TABLE items; --",
        'Robert"; DELETE FROM items; --',
        "`; DROP TABLE items; -- `",
        "%s %% %(name)s ? :name $1 \\ \\' \x00 \u2603 😀",
        "' OR '1'='1",
    ]
    async with running(names) as source:
        ids = [await source.execute(op("add", items, values={"name": value})) for value in nasty]
        grouped = await source.execute(op("add_many", items, rows=[{"name": v} for v in nasty]))
        for row_id, value in zip(ids + grouped, nasty + nasty, strict=True):
            assert await source.execute(
                op("get", items, columns=["name"], where={"id": row_id})
            ) == [{"name": value}]
        matched = await source.execute(
            op("get", items, columns=["id"], where={"name": "' OR '1'='1"})
        )
        assert sorted(row["id"] for row in matched) == sorted([ids[4], grouped[4]])
        assert len(await all_rows(source, items)) == 10


@pytest.mark.anyio
async def test_driver_errors_are_mapped(names: Names) -> None:
    items = names.items
    async with running(names) as source:
        with pytest.raises(DataSourceError, match=r"\(1064\)") as syntax:
            await source.execute(op("execute", None, sql=f"UPDATE {items} SETT qty = 1"))
        assert syntax.value.retryable is False and syntax.value.data_source == "my"
        with pytest.raises(DataSourceError, match=r"\(1146\)") as missing:
            await source.execute(op("execute", None, sql="SELECT * FROM wf78_missing_table"))
        assert missing.value.retryable is False
        with pytest.raises(DataSourceError, match=r"\(1054\)") as column:
            await source.execute(op("execute", None, sql=f"UPDATE {items} SET nope = 1"))
        assert column.value.retryable is False
        # One statement per query: the DELETE must not run, on a reader or on the writer.
        await source.execute(op("add", items, values={"id": "kept"}))
        with pytest.raises(DataSourceError, match=r"\(1064\)") as two:
            await source.execute(op("execute", None, sql=f"SELECT 1; DELETE FROM {items}"))
        assert two.value.retryable is False
        with pytest.raises(DataSourceError, match=r"\(1064\)"):
            await source.execute(op("execute", None, sql=f"DELETE FROM {items}; COMMIT"))
        assert [row["id"] for row in await all_rows(source, items)] == ["kept"]
        # The writer keeps working after failed statements.
        assert await source.execute(op("add", items, values={"id": "after"})) == "after"


@pytest.mark.anyio
async def test_reads_give_their_connection_back_and_wake_waiting_readers(names: Names) -> None:
    items = names.items
    # Two connections in all, the writer's and one reader: 40 reads at once take turns.
    async with running(names, minsize=0, maxsize=2) as source:
        await source.execute(op("add", items, values={"id": "r1", "name": "one", "qty": 1}))
        pool = source.pool
        got: list[Any] = []

        async def read() -> None:
            got.append(await source.execute(op("get", items, where={"id": "r1"})))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(40):
                    tg.start_soon(read)
        assert len(got) == 40 and all(rows[0]["name"] == "one" for rows in got)
        # Failing reads give their connection back too.
        for _ in range(3):
            with pytest.raises(DataSourceError, match=r"\(1146\)"):
                await source.execute(op("execute", None, sql="SELECT * FROM wf78_missing_table"))
        await anyio.lowlevel.checkpoint()  # the release's wake-up task runs
        assert pool.size - pool.freesize == 1  # only the writer's connection is out
        assert await source.execute(op("count", items)) == 1


@pytest.mark.parametrize(
    ("error", "retryable", "text"),
    [
        (aiomysql.IntegrityError(1062, "Duplicate entry"), False, "duplicate key"),
        (aiomysql.ProgrammingError(1064, "syntax"), False, "failed: (1064) syntax"),
        (aiomysql.OperationalError(1054, "Unknown column"), False, "(1054)"),
        (aiomysql.ProgrammingError(1146, "no table"), False, "(1146)"),
        (aiomysql.OperationalError(1213, "Deadlock found"), True, "(1213)"),
        (aiomysql.OperationalError(1205, "Lock wait timeout"), True, "(1205)"),
        (aiomysql.OperationalError(1040, "Too many connections"), True, "(1040)"),
        (aiomysql.OperationalError(2006, "gone away"), True, "lost its connection"),
        (aiomysql.OperationalError(2013, "Lost connection"), True, "lost its connection"),
        (aiomysql.OperationalError(2003, "Can't connect"), True, "lost its connection"),
        (aiomysql.InterfaceError("Not connected"), True, "lost its connection"),
    ],
)
def test_error_codes_map_to_retryable_or_not(error: Exception, retryable: bool, text: str) -> None:
    mapped = map_error(error, "my")
    assert mapped.retryable is retryable
    assert text in str(mapped) and mapped.data_source == "my"
    assert mapped.__cause__ is error


@pytest.mark.anyio
async def test_health_and_use_after_close(names: Names) -> None:
    source = make_source(names)
    with pytest.raises(DataSourceError, match="not open") as before:
        await source.health()
    assert before.value.retryable is True
    await source.open()
    await source.health()
    await source.close()
    with pytest.raises(DataSourceError) as after:
        await source.health()
    assert after.value.retryable is True
    with pytest.raises(DataSourceError, match="not open") as write:
        await source.execute(op("add", names.items, values={}))
    assert write.value.retryable is True


@pytest.mark.anyio
async def test_through_the_engine(names: Names) -> None:
    items = names.items
    config = {
        "datasources": {"my": {"type": "mysql", "url": URL, "create_tables": True}},
        "tables": {items: {"columns": {"name": "text", "qty": "int"}, "owner": "cid"}},
    }
    async with Engine(config) as engine:
        added = await engine.submit(
            Operation(action="add", table=items, values={"name": "via engine", "qty": 3})
        )
        assert added.data_source == "my" and added.source_type == "mysql"
        got = await engine.submit(Operation(action="get", table=items, where={"id": added.value}))
        assert got.value == [
            {
                "id": added.value,
                "name": "via engine",
                "qty": 3,
                "cid": "",  # written without an owner: the empty owner's
                "upby": None,
                "uptime": None,
            }
        ]
        assert await engine.check_health() == {"my": True}
