"""The SQLite adapter against real database files: actions, types, group commit, shutdown."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import anyio.lowlevel
import pytest

from wf78_core.config import TableConfig
from wf78_core.definitions import Operation
from wf78_core.errors import ConfigError, DataSourceError, InvalidOperation
from wf78_core.plugin.datasource import DataSource, SourceSpec, TableSchema, load_factory
from wf78_core.plugin.registry import Registry
from wf78_sqlite import SQLiteSource, wf78_register_datasources
from wf78_sqlite.writer import GroupCommitWriter, Write

TABLES = {
    "items": TableConfig(columns={"name": "text", "qty": "int"}, owner="cid"),
    "things": TableConfig(
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
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite runs on asyncio only


def make_source(
    tmp_path: Path, *, url: str | None = None, options: Any = None, **option_values: Any
) -> SQLiteSource:
    return SQLiteSource(
        SourceSpec(
            name="db",
            type="sqlite",
            url=url or f"sqlite:///{tmp_path}/t.db",
            options=options if options is not None else SQLiteSource.Options(**option_values),
            tables={name: TableSchema.from_config(name, table) for name, table in TABLES.items()},
            base_dir=str(tmp_path),
        )
    )


@asynccontextmanager
async def running(tmp_path: Path, **option_values: Any) -> AsyncIterator[SQLiteSource]:
    """An open source with its group-commit writer running, as the engine starts it."""
    source = make_source(tmp_path, **option_values)
    await source.open()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(source.run)
            yield source
            tg.cancel_scope.cancel()
    finally:
        await source.close()


def op(action: str, table: str | None = "items", **fields: Any) -> Operation:
    return Operation(action=action, table=table, **fields)


async def all_rows(source: SQLiteSource, table: str = "items") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await source.execute(op("get", table, order=["id"]))
    return rows


# --- construction and registration ---------------------------------------------------------


def test_hook_registers_the_factory(tmp_path: Path) -> None:
    registry: Registry[Any] = Registry("data source")
    wf78_register_datasources(registry)
    assert load_factory(registry["sqlite"]) is SQLiteSource
    assert isinstance(make_source(tmp_path), DataSource)


def test_options_defaults_and_concurrency(tmp_path: Path) -> None:
    source = make_source(tmp_path)
    assert source.options == SQLiteSource.Options(
        readers=4,
        synchronous="FULL",
        busy_timeout=5.0,
        max_batch=1000,
        queue_size=10_000,
        create_tables=True,
        inline_read_steps=2000,
    )
    assert source.concurrency == 1024
    assert make_source(tmp_path, queue_size=8).concurrency == 8
    assert "noop" in source.actions and "delete_many" in source.actions


def test_options_given_as_a_dict_are_converted(tmp_path: Path) -> None:
    source = make_source(tmp_path, options={"readers": 2, "synchronous": "NORMAL"})
    assert source.options.readers == 2
    assert source.options.synchronous == "NORMAL"


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"readers": "two"}, "datasources.db.readers"),
        ({"readers": 0}, "datasources.db"),
        ({"synchronous": "SOMETIMES"}, "datasources.db.synchronous"),
        ({"nope": 1}, "datasources.db.nope"),
        ({"inline_read_steps": -1}, "datasources.db"),
    ],
)
def test_bad_options_name_their_path(tmp_path: Path, options: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_source(tmp_path, options=options)
    assert caught.value.problems[0].path == path


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite:///", "postgres://x/y", ""])
def test_unsupported_urls_are_config_errors(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match=r"datasources\.db\.url"):
        make_source(tmp_path, url=url or "sqlite:/nope")


def test_url_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    assert make_source(tmp_path, url="sqlite:///./sub/x.db").path == tmp_path / "sub" / "x.db"
    assert make_source(tmp_path, url="sqlite:///rel.db").path == tmp_path / "rel.db"
    assert make_source(tmp_path, url="sqlite:////abs/x.db").path == Path("/abs/x.db")


@pytest.mark.anyio
async def test_open_creates_directory_wal_and_tables(tmp_path: Path) -> None:
    source = make_source(tmp_path, url="sqlite:///./sub/dir/x.db")
    await source.open()
    try:
        assert (tmp_path / "sub" / "dir" / "x.db").exists()
        mode = await source.execute(op("execute", None, sql="PRAGMA journal_mode"))
        assert mode == [{"journal_mode": "wal"}]
        tables = await source.execute(
            op(
                "execute",
                None,
                sql="SELECT name FROM sqlite_master WHERE type = ?",
                params=["table"],
            )
        )
        assert {row["name"] for row in tables} == {"items", "things"}
        info = await source.execute(op("execute", None, sql="PRAGMA table_info(items)"))
        types = {row["name"]: (row["type"], row["pk"]) for row in info}
        # The key is (owner, id): each owner has its own ids.
        assert types == {
            "id": ("TEXT", 2),
            "name": ("TEXT", 0),
            "qty": ("INTEGER", 0),
            "cid": ("TEXT", 1),
            "upby": ("TEXT", 0),
            "uptime": ("TEXT", 0),
        }
        await source.open()  # a second open is a no-op
    finally:
        await source.close()
        await source.close()  # idempotent


# --- actions -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_action_and_its_result_shape(tmp_path: Path) -> None:
    async with running(tmp_path) as source:
        first = await source.execute(op("add", values={"name": "a", "qty": 1, "cid": "c1"}))
        assert isinstance(first, str) and first.isdigit()
        assert await source.execute(op("add", values={"id": "x2", "name": "b", "qty": 2})) == "x2"
        many = await source.execute(
            op("add_many", rows=[{"id": "x3", "name": "c", "qty": 3}, {"name": "d"}])
        )
        assert many[0] == "x3" and isinstance(many[1], str) and len(many) == 2
        assert await source.execute(op("add_many", rows=[])) == []

        got = await source.execute(op("get", where={"id": first}))
        assert got == [
            {"id": first, "name": "a", "qty": 1, "cid": "c1", "upby": None, "uptime": None}
        ]
        names = await source.execute(
            op("get", columns=["name"], where={"qty": [2, 3]}, order=["-qty"])
        )
        assert names == [{"name": "c"}, {"name": "b"}]
        assert await source.execute(op("get", columns=["name"], where={"qty": None})) == [
            {"name": "d"}
        ]
        page = await source.execute(
            op(
                "get",
                columns=["qty"],
                where={"qty": [1, 2, 3]},
                order=["qty asc"],
                limit=1,
                offset=1,
            )
        )
        assert page == [{"qty": 2}]
        skipped = await source.execute(
            op("get", columns=["qty"], where={"qty": [1, 2, 3]}, order=["qty DESC"], offset=1)
        )
        assert skipped == [{"qty": 2}, {"qty": 1}]

        assert await source.execute(op("update", values={"qty": 20}, where={"id": "x2"})) == 1
        assert await source.execute(op("update", values={"qty": 0}, where={"id": "none"})) == 0
        assert await source.execute(op("upsert", values={"id": "x2", "name": "B"})) == "x2"
        assert await source.execute(op("upsert", values={"id": "x9", "qty": 9})) == "x9"
        assert await source.execute(op("get", columns=["name", "qty"], where={"id": "x2"})) == [
            {"name": "B", "qty": 20}
        ]
        assert await source.execute(op("get", columns=["qty"], where={"id": "x9"})) == [{"qty": 9}]

        assert await source.execute(op("delete", where={"id": "x9"})) == 1
        assert await source.execute(op("delete_many", where={"id": ["x2", "x3", "zz"]})) == 2
        assert len(await all_rows(source)) == 2

        selected = await source.execute(
            op("execute", None, sql="SELECT name FROM items WHERE qty = ?", params=[1])
        )
        assert selected == [{"name": "a"}]
        named = await source.execute(
            op(
                "execute",
                None,
                sql="SELECT count(*) AS n FROM items WHERE name = :n",
                params={"n": "a"},
            )
        )
        assert named == [{"n": 1}]
        changed = await source.execute(
            op("execute", None, sql="UPDATE items SET qty = qty + 1 WHERE qty IS NOT NULL")
        )
        assert changed == 1
        assert await source.execute(op("noop", None)) is None


@pytest.mark.anyio
async def test_raw_sql_is_routed_by_what_it_does(tmp_path: Path) -> None:
    async with running(tmp_path) as source:
        # A CTE that writes must reach the writer; readers are query-only.
        sql = "WITH v(n) AS (SELECT 'cte') INSERT INTO items (id, name) SELECT 'c1', n FROM v"
        assert await source.execute(op("execute", None, sql=sql)) == 1
        read = await source.execute(
            op("execute", None, sql="/* hi */ WITH v AS (SELECT name FROM items) SELECT * FROM v")
        )
        assert read == [{"name": "cte"}]
        returned = await source.execute(
            op("execute", None, sql="DELETE FROM items WHERE id = ? RETURNING name", params=["c1"])
        )
        assert returned == [{"name": "cte"}]
        assert await all_rows(source) == []


@pytest.mark.anyio
async def test_type_round_trips(tmp_path: Path) -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    meta = {"tags": ["a", "b"], "nested": {"n": 1.5, "none": None}, "ok": True}
    async with running(tmp_path) as source:
        await source.execute(
            op(
                "add",
                "things",
                values={
                    "id": "t1",
                    "label": "x",
                    "count": 7,
                    "price": 2.5,
                    "flag": True,
                    "meta": meta,
                    "at": moment,
                },
            )
        )
        await source.execute(
            op("add", "things", values={"id": "t2", "flag": False, "at": "2024-01-02T03:04:05Z"})
        )
        await source.execute(op("add", "things", values={"id": "t3", "price": 3, "meta": [1, 2]}))
        rows = {row["id"]: row for row in await all_rows(source, "things")}
        assert rows["t1"]["count"] == 7 and type(rows["t1"]["count"]) is int
        assert rows["t1"]["price"] == 2.5
        assert rows["t1"]["flag"] is True and rows["t2"]["flag"] is False
        assert rows["t3"]["flag"] is None
        assert rows["t1"]["meta"] == meta and rows["t3"]["meta"] == [1, 2]
        assert rows["t1"]["at"] == moment.isoformat()
        assert datetime.fromisoformat(rows["t1"]["at"]) == moment
        assert rows["t2"]["at"] == "2024-01-02T03:04:05+00:00"
        assert type(rows["t3"]["price"]) is float and rows["t3"]["price"] == 3.0
        # Filters encode values the same way the columns store them.
        assert [
            r["id"] for r in await source.execute(op("get", "things", where={"flag": True}))
        ] == ["t1"]
        by_time = await source.execute(op("get", "things", columns=["id"], where={"at": moment}))
        assert by_time == [{"id": "t1"}]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"flag": "yes"}, "values.flag of table 'things' must be a bool"),
        ({"at": "yesterday"}, "values.at of table 'things' is not an ISO 8601 datetime"),
        ({"at": 12}, "values.at of table 'things' must be a datetime"),
        ({"label": {"a": 1}}, "values.label of table 'things' has unsupported type dict"),
        ({"meta": object()}, "values.meta of table 'things' is not JSON-encodable"),
        # An INTEGER column would keep text that is no number as text, silently.
        ({"count": "many"}, "values.count of table 'things' must be an integer, got 'many'"),
        ({"price": "cheap"}, "values.price of table 'things' must be a finite number"),
    ],
)
@pytest.mark.anyio
async def test_bad_values_are_refused(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    async with running(tmp_path) as source:
        with pytest.raises(InvalidOperation, match=message):
            await source.execute(op("add", "things", values=values))
        assert await all_rows(source, "things") == []


@pytest.mark.anyio
async def test_values_are_bound_by_the_columns_declared_type(tmp_path: Path) -> None:
    async with running(tmp_path) as source:
        rows = [{"id": "t1", "label": 123, "count": "7", "price": "2.5"}]
        await source.execute(op("add_many", "things", rows=rows))
        (row,) = await source.execute(op("get", "things", columns=["label", "count", "price"]))
        assert row == {"label": "123", "count": 7, "price": 2.5}
        for where in ({"label": 123}, {"count": "7"}, {"count": 7}, {"label": "123"}):
            assert await source.execute(op("count", "things", where=where)) == 1, where
        assert await source.execute(op("count", "things", where={"label": "0123"})) == 0
        with pytest.raises(InvalidOperation, match=r"where\.count of table 'things' must be an"):
            await source.execute(op("count", "things", where={"count": "7 or so"}))


# --- group commit --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_adds_share_few_transactions(tmp_path: Path) -> None:
    ids: list[str] = []

    async with running(tmp_path) as source:

        async def add(index: int) -> None:
            ids.append(await source.execute(op("add", values={"name": f"n{index}", "qty": index})))

        before = source.transactions
        async with anyio.create_task_group() as tg:
            for index in range(500):
                tg.start_soon(add, index)
        transactions = source.transactions - before
        rows = await all_rows(source)

    assert source.writes == 500
    assert 1 <= transactions < 50, transactions
    assert len(set(ids)) == 500
    assert {row["id"] for row in rows} == set(ids)
    assert sorted(row["qty"] for row in rows) == list(range(500))


@pytest.mark.anyio
async def test_identical_inserts_share_one_executemany(tmp_path: Path) -> None:
    statements: list[str] = []
    async with aiosqlite.connect(tmp_path / "w.db", isolation_level=None) as connection:
        await connection.execute_fetchall("CREATE TABLE t (id TEXT PRIMARY KEY)")
        await connection.set_trace_callback(statements.append)
        writer = GroupCommitWriter(connection, source="db", max_batch=1000, queue_size=1000)
        async with anyio.create_task_group() as tg:
            await tg.start(writer.run)
            async with anyio.create_task_group() as callers:
                for index in range(100):
                    write = Write(
                        [("INSERT INTO t (id) VALUES (?)", [[f"{index}"]])], groupable=True
                    )
                    callers.start_soon(writer.submit, write)
            tg.cancel_scope.cancel()
        await connection.set_trace_callback(None)  # type: ignore[arg-type]  # None removes it
        count = await connection.execute_fetchall("SELECT count(*) FROM t")
    assert list(count) == [(100,)]
    assert writer.writes == 100
    # One savepoint per group of identical INSERTs, not one per write.
    assert statements.count("SAVEPOINT write") <= writer.transactions < 10


@pytest.mark.anyio
async def test_a_batch_of_identical_inserts_is_one_statement_that_commits_itself(
    tmp_path: Path,
) -> None:
    """The connection autocommits, and one INSERT of many rows is atomic on its own: a batch
    of identical INSERTs is one statement, without BEGIN or COMMIT (one trip to the thread)."""
    statements: list[str] = []
    async with aiosqlite.connect(tmp_path / "w.db", isolation_level=None) as connection:
        await connection.execute_fetchall("CREATE TABLE t (id TEXT PRIMARY KEY, n INT)")
        await connection.set_trace_callback(statements.append)
        writer = GroupCommitWriter(connection, source="db", max_batch=1000, queue_size=1000)
        results: list[Any] = []

        async def add(index: int) -> None:
            sql = "INSERT INTO t (id, n) VALUES (?, ?)"
            results.append(
                await writer.submit(
                    Write([(sql, [[f"r{index}", index]])], value=index, groupable=True)
                )
            )

        async with anyio.create_task_group() as tg:
            await tg.start(writer.run)
            async with anyio.create_task_group() as callers:
                for index in range(50):
                    callers.start_soon(add, index)
            tg.cancel_scope.cancel()
        await connection.set_trace_callback(None)  # type: ignore[arg-type]  # None removes it
        rows = await connection.execute_fetchall("SELECT id, n FROM t ORDER BY n")
    assert sorted(results) == list(range(50))  # each caller gets its own write's value
    assert [tuple(row) for row in rows] == [(f"r{index}", index) for index in range(50)]
    inserts = [sql for sql in statements if sql.startswith("INSERT")]
    assert not [sql for sql in statements if sql.startswith(("BEGIN", "COMMIT", "SAVEPOINT"))]
    assert len(inserts) == writer.transactions < 50  # several rows per statement
    assert sum(sql.count("),(") + 1 for sql in inserts) == 50


@pytest.mark.anyio
async def test_max_batch_bounds_each_transaction(tmp_path: Path) -> None:
    async with running(tmp_path, max_batch=10) as source:
        async with anyio.create_task_group() as tg:
            for index in range(100):
                tg.start_soon(source.execute, op("add", values={"qty": index}))
        assert source.transactions >= 10
        assert len(await all_rows(source)) == 100


@pytest.mark.anyio
async def test_one_bad_row_fails_only_its_caller(tmp_path: Path) -> None:
    outcomes: dict[int, Any] = {}

    async with running(tmp_path) as source:
        await source.execute(op("add", values={"id": "dup", "name": "original"}))

        async def add(index: int) -> None:
            row_id = "dup" if index == 137 else f"r{index}"
            try:
                outcomes[index] = await source.execute(
                    op("add", values={"id": row_id, "name": f"n{index}"})
                )
            except DataSourceError as error:
                outcomes[index] = error

        before = source.transactions
        async with anyio.create_task_group() as tg:
            for index in range(200):
                tg.start_soon(add, index)
        transactions = source.transactions - before
        rows = {row["id"]: row["name"] for row in await all_rows(source)}

    failed = {
        index: value for index, value in outcomes.items() if isinstance(value, DataSourceError)
    }
    assert list(failed) == [137]
    error = failed[137]
    assert error.retryable is False
    assert error.conflict is True  # the middleware answers 409 for it
    assert error.data_source == "db"
    assert "duplicate key" in str(error)
    assert transactions < 200  # the rows really were grouped, then retried one by one
    assert len(rows) == 200 and rows["dup"] == "original"
    assert all(rows[f"r{index}"] == f"n{index}" for index in range(200) if index != 137)


@pytest.mark.anyio
async def test_a_failing_update_is_isolated_in_its_batch(tmp_path: Path) -> None:
    results: dict[int, Any] = {}
    async with running(tmp_path) as source:
        await source.execute(op("add_many", rows=[{"id": f"u{i}", "qty": 0} for i in range(50)]))

        async def update(index: int) -> None:
            values = {"id": "u0"} if index == 7 else {"qty": index}
            try:
                results[index] = await source.execute(
                    op("update", values=values, where={"id": f"u{index}"})
                )
            except DataSourceError as error:
                results[index] = error

        async with anyio.create_task_group() as tg:
            for index in range(1, 50):
                tg.start_soon(update, index)
        rows = {row["id"]: row["qty"] for row in await all_rows(source)}

    assert isinstance(results.pop(7), DataSourceError)
    assert set(results.values()) == {1}
    assert rows["u7"] == 0 and all(rows[f"u{i}"] == i for i in range(1, 50) if i != 7)


@pytest.mark.anyio
async def test_add_many_is_all_or_nothing_for_its_caller(tmp_path: Path) -> None:
    async with running(tmp_path) as source:
        await source.execute(op("add", values={"id": "taken"}))
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.execute, op("add", values={"id": "other"}))
            with pytest.raises(DataSourceError, match="duplicate key"):
                await source.execute(
                    op("add_many", rows=[{"id": "new1"}, {"id": "taken"}, {"id": "new2"}])
                )
        assert [row["id"] for row in await all_rows(source)] == ["other", "taken"]


@pytest.mark.anyio
async def test_writes_work_without_the_writer_loop(tmp_path: Path) -> None:
    source = make_source(tmp_path)
    await source.open()
    try:
        async with anyio.create_task_group() as tg:
            for index in range(5):
                tg.start_soon(source.execute, op("add", values={"qty": index}))
        assert source.transactions == 5  # each write commits alone
        assert await source.execute(op("update", values={"qty": 9}, where={"qty": [0, 1]})) == 2
        with pytest.raises(DataSourceError, match="duplicate key"):
            rows = await all_rows(source)
            await source.execute(op("add", values={"id": rows[0]["id"]}))
        assert len(await all_rows(source)) == 5
    finally:
        await source.close()
    assert source.transactions == 6  # the failed add, alone, committed no transaction


@pytest.mark.anyio
async def test_shutdown_with_queued_writes_answers_every_caller(tmp_path: Path) -> None:
    outcomes: dict[int, Any] = {}
    source = make_source(tmp_path, max_batch=5, queue_size=20)
    await source.open()

    async def add(index: int) -> None:
        try:
            outcomes[index] = await source.execute(op("add", values={"id": f"w{index}"}))
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
        stored = {row["id"] for row in await all_rows(source)}
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


@pytest.mark.anyio
async def test_a_locked_database_fails_the_batch_retryably(tmp_path: Path) -> None:
    async with running(tmp_path, busy_timeout=0.05) as source:
        blocker = sqlite3.connect(source.path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(DataSourceError, match="locked") as caught:
                await source.execute(op("add", values={"id": "late"}))
            assert caught.value.retryable is True
            assert caught.value.data_source == "db"
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        assert await source.execute(op("add", values={"id": "late"})) == "late"


# --- identifiers, values and refusals ------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "message"),
    [
        (op("get", "nope"), "unknown table 'nope'"),
        (op("get", None), "get needs a table"),
        (op("add", values={"nmae": "x"}), "unknown column 'nmae' in values of table 'items'"),
        (
            op("update", values={"nmae": "x"}, where={"id": "1"}),
            "unknown column 'nmae' in values",
        ),
        (op("get", where={"nmae": "x"}), "unknown column 'nmae' in where of table 'items'"),
        (op("delete", where={"nmae": "x"}), "unknown column 'nmae' in where"),
        (op("get", columns=["nmae"]), "unknown column 'nmae' in columns"),
        (op("get", order=["nmae"]), "unknown column 'nmae' in order"),
        (op("get", order=["-nmae"]), "unknown column 'nmae' in order"),
        (op("get", order=["name sideways"]), "bad order direction 'sideways' in order"),
        (op("get", order=["name; DROP TABLE items"]), "bad order entry 'name; DROP TABLE items'"),
        (
            op("get", columns=["name; DROP TABLE items"]),
            "unknown column 'name; DROP TABLE items' in columns",
        ),
        (
            op("add", values={'name" TEXT); DROP TABLE items; --': 1}),
            "unknown column 'name\" TEXT); DROP TABLE items; --' in values",
        ),
        (op("get", where={"1=1 OR name": "x"}), "unknown column '1=1 OR name' in where"),
        (op("add_many", rows=[{"name": "ok"}, {"bad": 1}]), "unknown column 'bad' in rows[1]"),
        (op("update", values={"qty": 1}), "update needs a non-empty where"),
        (op("update", values={"qty": 1}, where={}), "update needs a non-empty where"),
        (op("update", values={}, where={"id": "1"}), "update needs non-empty values"),
        (op("delete"), "delete needs a non-empty where"),
        (op("delete_many", where={"id": "1"}), "delete_many needs a list value in where"),
        (op("upsert", values={"name": "x"}), "upsert needs values.id"),
        (op("add"), "add needs values"),
        (op("add_many"), "add_many needs rows"),
        (op("drop"), "action 'drop' is not supported"),
        (op("execute", None), "execute needs sql"),
        (op("execute", None, sql="COMMIT"), "execute cannot run 'COMMIT'"),
        (op("execute", None, sql=" -- x\n begin immediate"), "execute cannot run 'BEGIN'"),
        (op("execute", None, sql="SAVEPOINT write"), "execute cannot run 'SAVEPOINT'"),
    ],
)
@pytest.mark.anyio
async def test_bad_operations_raise_invalid_operation(
    tmp_path: Path, operation: Operation, message: str
) -> None:
    async with running(tmp_path) as source:
        await source.execute(op("add", values={"id": "1", "name": "keep"}))
        with pytest.raises(InvalidOperation, match=re.escape(message)) as caught:
            await source.execute(operation)
        assert caught.value.data_source == "db"
        assert caught.value.retryable is False
        assert await all_rows(source) == [
            # Written without an owner: the empty owner's (the owner is part of the key).
            {"id": "1", "name": "keep", "qty": None, "cid": "", "upby": None, "uptime": None}
        ]


@pytest.mark.anyio
async def test_sql_metacharacters_in_values_are_stored_verbatim(tmp_path: Path) -> None:
    nasty = [
        "x'); DROP TABLE items; --",
        'Robert"; DELETE FROM items; --',
        "%s ? :name $1 \\ \x00 \u2603",
        "' OR '1'='1",
    ]
    async with running(tmp_path) as source:
        ids = [await source.execute(op("add", values={"name": value})) for value in nasty]
        for row_id, value in zip(ids, nasty, strict=True):
            assert await source.execute(op("get", columns=["name"], where={"id": row_id})) == [
                {"name": value}
            ]
        assert await source.execute(op("get", columns=["id"], where={"name": "' OR '1'='1"})) == [
            {"id": ids[3]}
        ]
        assert len(await all_rows(source)) == 4


@pytest.mark.anyio
async def test_driver_errors_are_mapped(tmp_path: Path) -> None:
    async with running(tmp_path) as source:
        with pytest.raises(DataSourceError, match="syntax error") as syntax:
            await source.execute(op("execute", None, sql="UPDATE items SETT qty = 1"))
        assert syntax.value.retryable is False and syntax.value.data_source == "db"
        assert syntax.value.conflict is False
        with pytest.raises(DataSourceError, match="no such table") as missing:
            await source.execute(op("execute", None, sql="SELECT * FROM missing"))
        assert missing.value.retryable is False
        with pytest.raises(DataSourceError, match="one statement") as two:
            await source.execute(op("execute", None, sql="SELECT 1; DELETE FROM items"))
        assert two.value.retryable is False
        # The writer keeps working after failed statements.
        assert await source.execute(op("add", values={"id": "after"})) == "after"


@pytest.mark.anyio
async def test_health_and_use_after_close(tmp_path: Path) -> None:
    source = make_source(tmp_path)
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
        await source.execute(op("add", values={}))
    assert write.value.retryable is True


@pytest.mark.anyio
async def test_short_reads_run_inline_and_long_ones_on_a_reader_thread(tmp_path: Path) -> None:
    async with running(tmp_path, inline_read_steps=2000) as source:
        ids = await source.execute(
            op("add_many", rows=[{"name": f"n{i}", "qty": i, "cid": "c"} for i in range(3000)])
        )
        before = (source.inline_reads, source.threaded_reads)
        # By its key (owner and id), as Table reads a row: an index lookup.
        rows = await source.execute(op("get", where={"cid": "c", "id": ids[7]}))
        assert rows[0]["qty"] == 7
        assert (source.inline_reads, source.threaded_reads) == (before[0] + 1, before[1])
        # A scan of 3,000 rows takes far more than 2,000 VM steps: interrupted inline, then
        # answered in full by a reader thread.
        everything = await source.execute(op("get", order=["qty"]))
        assert [row["qty"] for row in everything] == list(range(3000))
        assert (source.inline_reads, source.threaded_reads) == (before[0] + 1, before[1] + 1)
        # The inline connection sees every commit at once (no stale snapshot held open).
        await source.execute(op("update", values={"qty": -1}, where={"cid": "c", "id": ids[7]}))
        assert (await source.execute(op("get", where={"cid": "c", "id": ids[7]})))[0]["qty"] == -1
        # It cannot write, whatever SQL reaches it.
        assert source.inline_connection is not None
        with pytest.raises(sqlite3.OperationalError):
            source.inline_connection.execute("DELETE FROM items")
        assert await source.execute(op("count")) == 3000


@pytest.mark.anyio
async def test_inline_reads_can_be_turned_off(tmp_path: Path) -> None:
    async with running(tmp_path, inline_read_steps=0) as source:
        row_id = await source.execute(op("add", values={"name": "a", "qty": 1}))
        assert (await source.execute(op("get", where={"id": row_id})))[0]["name"] == "a"
        assert source.inline_reads == 0 and source.threaded_reads >= 1
        assert source.inline_connection is None


@pytest.mark.anyio
async def test_a_failing_inline_read_reports_the_readers_error(tmp_path: Path) -> None:
    async with running(tmp_path) as source:
        threaded = source.threaded_reads
        with pytest.raises(DataSourceError, match="no such column") as caught:
            await source.execute(op("execute", None, sql="SELECT nope FROM items"))
        assert caught.value.retryable is False
        assert source.threaded_reads == threaded + 1
