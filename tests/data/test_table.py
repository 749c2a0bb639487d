"""``Table`` (the Base78 port) on real SQLite files and the real MariaDB: every method,
the koa78 columns, tenant isolation, public reads and refused identifiers."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pymysql
import pytest

from wf78_core import (
    Engine,
    Identity,
    InvalidOperation,
    Operation,
    Table,
    hookimpl,
)
from wf78_core.config import TableConfig
from wf78_core.plugin.datasource import TableSchema
from wf78_memory import MemorySource
from wf78_sql import TableSql
from wf78_sqlite.statements import SQLITE

MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "database": "test"}
NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
ALICE = Identity(uid="u-alice", cid="acme", uname="alice")
AMY = Identity(uid="u-amy", cid="acme", uname="amy")  # alice's colleague: same cid
BOB = Identity(uid="u-bob", cid="globex", uname="bob")
INJECTIONS = ["name; DROP TABLE x", "id desc; --", "1=1"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite and aiomysql run on asyncio only


@dataclass(frozen=True)
class Setup:
    """One backend with this test's own table names."""

    backend: str
    prefix: str
    path: Path

    def name(self, table: str) -> str:
        return f"{self.prefix}{table}"

    @property
    def items(self) -> str:
        return self.name("items")

    @property
    def shared(self) -> str:
        return self.name("shared")

    @property
    def notes(self) -> str:
        return self.name("notes")

    @property
    def plain(self) -> str:
        return self.name("plain")

    def config(self) -> dict[str, Any]:
        if self.backend == "sqlite":
            source: dict[str, Any] = {"type": "sqlite", "url": f"sqlite:///{self.path}"}
        else:
            source = {"type": "mysql", "url": MYSQL_URL, "create_tables": True, "maxsize": 4}
        return {
            "engine": {"drain_timeout": 2.0},
            "datasources": {"db": source},
            "tables": {
                self.items: {
                    "columns": {"name": "text", "qty": "int", "price": "float"},
                    "owner": "cid",
                    "data_source": "db",
                },
                self.shared: {
                    "columns": {"title": "text", "n": "int"},
                    "owner": "cid",
                    "public_read": True,
                    "data_source": "db",
                },
                self.notes: {"columns": ["body"], "owner": "uid", "data_source": "db"},
                self.plain: {
                    "columns": {"label": "text", "n": "int"},
                    "public_read": True,
                    "data_source": "db",
                },
            },
        }

    def tables(self) -> list[str]:
        """The physical tables of this test, from the database itself."""
        if self.backend == "sqlite":
            with sqlite3.connect(self.path) as connection:
                rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                return sorted(row[0] for row in rows if row[0].startswith(self.prefix))
        connection = pymysql.connect(**MYSQL)
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = DATABASE() AND table_name LIKE %s",
                    [self.prefix.replace("_", "\\_") + "%"],
                )
                return sorted(row[0] for row in cursor.fetchall())
        finally:
            connection.close()


def drop_mysql_tables(setup: Setup) -> None:
    tables = setup.tables()
    connection = pymysql.connect(**MYSQL)
    try:
        with connection.cursor() as cursor:
            for table in tables:
                cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
    finally:
        connection.close()


@pytest.fixture(params=["sqlite", "mysql"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    made = Setup(request.param, f"t{uuid4().hex[:8]}_", tmp_path / "tables.db")
    yield made
    if made.backend == "mysql":
        drop_mysql_tables(made)


@asynccontextmanager
async def started(setup: Setup, **changes: Any) -> AsyncIterator[Engine]:
    config = setup.config()
    config.update(changes)
    async with Engine(config) as engine:
        yield engine


def table(engine: Engine, name: str, identity: Identity | None = ALICE) -> Table:
    return Table(engine, name, identity=identity, clock=lambda: NOW)


async def raw_rows(engine: Engine, name: str) -> list[dict[str, Any]]:
    """Every row of a table, whoever owns it, straight from the source."""
    op = Operation(action="get", table=name, order=["id"], data_source="db")
    rows: list[dict[str, Any]] = (await engine.submit(op)).value
    return rows


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows}


# -- writes fill the koa78 columns -------------------------------------------------------------


@pytest.mark.anyio
async def test_add_fills_the_koa78_columns(setup: Setup) -> None:
    async with started(setup) as engine:
        new_id = await table(engine, setup.items).add({"name": "pen", "qty": 3, "price": 1.5})
        assert new_id.isdigit()
        (row,) = await raw_rows(engine, setup.items)
    assert row == {
        "id": new_id,
        "name": "pen",
        "qty": 3,
        "price": 1.5,
        "cid": "acme",
        "upby": "alice",
        "uptime": NOW.isoformat(),
    }


@pytest.mark.anyio
async def test_add_many_takes_mappings_and_value_lists(setup: Setup) -> None:
    async with started(setup) as engine:
        items = table(engine, setup.items)
        ids = await items.add_many([{"name": "a", "qty": 1}, ["b", 2, 2.5]])
        assert len(set(ids)) == 2
        assert await items.add_many([]) == []
        with pytest.raises(InvalidOperation, match=r"rows\[0\] has 2 values for 3 columns"):
            await items.add_many([["too", "short"]])
        rows = by_id(await raw_rows(engine, setup.items))
    assert set(rows) == set(ids)
    assert rows[ids[1]]["name"] == "b" and rows[ids[1]]["price"] == 2.5
    assert {row["cid"] for row in rows.values()} == {"acme"}
    assert {row["upby"] for row in rows.values()} == {"alice"}


@pytest.mark.anyio
@pytest.mark.parametrize("column", ["id", "upby", "uptime", "cid"])
async def test_callers_cannot_write_the_tables_own_columns(setup: Setup, column: str) -> None:
    async with started(setup) as engine:
        items = table(engine, setup.items)
        with pytest.raises(InvalidOperation, match=f"column '{column}' is set by the table"):
            await items.add({"name": "x", column: "forged"})
        row_id = await items.add({"name": "x"})
        with pytest.raises(InvalidOperation, match=f"column '{column}' is set by the table"):
            await items.update(row_id, {column: "forged"})
        with pytest.raises(InvalidOperation, match="unknown column 'colour'"):
            await items.add({"colour": "red"})
        (row,) = await raw_rows(engine, setup.items)
    assert row["cid"] == "acme" and row["upby"] == "alice" and row["id"] == row_id


@pytest.mark.anyio
async def test_an_owned_table_needs_an_identity_with_its_owner(setup: Setup) -> None:
    async with started(setup) as engine:
        with pytest.raises(InvalidOperation, match="an identity is required"):
            await table(engine, setup.items, identity=None).add({"name": "x"})
        with pytest.raises(InvalidOperation, match="the identity has no cid"):
            await table(engine, setup.items, identity=Identity(uid="u1")).get()
        assert await raw_rows(engine, setup.items) == []


# -- reads -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_get_filters_orders_pages_and_counts(setup: Setup) -> None:
    async with started(setup) as engine:
        items = table(engine, setup.items)
        await items.add_many([{"name": f"n{qty}", "qty": qty} for qty in (5, 1, 4, 2, 3)])
        await items.add({"name": "other", "qty": 9})
        rows = await items.get(where={"name": ["n1", "n2", "n3", "n4", "n5"]}, order="-qty")
        assert [row["qty"] for row in rows] == [5, 4, 3, 2, 1]
        page, total = await items.get(
            where={"name": ["n1", "n2", "n3", "n4", "n5"]},
            cols=["name", "qty"],
            order=["qty asc"],
            start=1,
            number=2,
            total=True,
        )
        assert page == [{"name": "n2", "qty": 2}, {"name": "n3", "qty": 3}]
        assert total == 5
        assert [r["qty"] for r in await items.get(order="qty desc", start="0", number="1")] == [9]
        assert len(await items.get()) == 6
        items.max_number = 2  # the cap on one page
        assert len(await items.get(number=500)) == 2
        for bad in ({"start": -1}, {"number": True}, {"start": "1.5"}):
            with pytest.raises(InvalidOperation, match="must be a non-negative integer"):
                await items.get(**bad)


@pytest.mark.anyio
@pytest.mark.parametrize("attempt", INJECTIONS)
@pytest.mark.parametrize("field", ["cols", "order", "where"])
async def test_injection_attempts_are_refused_naming_the_field(
    setup: Setup, field: str, attempt: str
) -> None:
    async with started(setup) as engine:
        items = table(engine, setup.items)
        row_id = await items.add({"name": "kept", "qty": 1})
        argument: Any = {attempt: 1} if field == "where" else [attempt]
        with pytest.raises(InvalidOperation) as caught:
            await items.get(**{field: argument})
        message = str(caught.value)
        assert message.startswith(f"table {setup.items!r}: {field}:"), message
        assert repr(attempt) in message or repr(attempt.split()[0]) in message, message
        public = table(engine, setup.shared, identity=BOB)
        with pytest.raises(InvalidOperation, match=f"{field}:"):
            await public.get_public("acme", **{field: argument})
        assert setup.items in setup.tables()
        assert [row["id"] for row in await items.get()] == [row_id]


@pytest.mark.anyio
async def test_reads_see_only_the_identitys_rows(setup: Setup) -> None:
    async with started(setup) as engine:
        mine = await table(engine, setup.items).add({"name": "alice's", "qty": 1})
        theirs = await table(engine, setup.items, BOB).add({"name": "bob's", "qty": 2})
        bob = table(engine, setup.items, BOB)
        assert [row["id"] for row in await bob.get()] == [theirs]
        assert await bob.get(where={"id": mine}) == []
        assert await bob.get(where={"id": [mine, theirs]}, cols="id") == [{"id": theirs}]
        assert (await bob.get(total=True))[1] == 1
        with pytest.raises(InvalidOperation, match="owner column 'cid' comes from the identity"):
            await bob.get(where={"cid": "acme"})


@pytest.mark.anyio
async def test_get_public_reads_another_owner_only_where_allowed(setup: Setup) -> None:
    async with started(setup) as engine:
        await table(engine, setup.shared).add_many([{"title": "a", "n": 1}, {"title": "b", "n": 2}])
        await table(engine, setup.items).add({"name": "secret"})
        bob_shared = table(engine, setup.shared, BOB)
        assert await bob_shared.get() == []
        rows, total = await bob_shared.get_public("acme", cols="title", order="-n", total=True)
        assert rows == [{"title": "b"}, {"title": "a"}] and total == 2
        # No identity is needed to read what is public.
        assert len(await table(engine, setup.shared, None).get_public("acme")) == 2
        with pytest.raises(InvalidOperation, match="does not allow public reads"):
            await table(engine, setup.items, BOB).get_public("acme")
        with pytest.raises(InvalidOperation, match="bcid must be a non-empty string"):
            await bob_shared.get_public("")


# -- updates -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_update_and_update_by_id_touch_only_the_owners_row(setup: Setup) -> None:
    later = datetime(2025, 3, 15, tzinfo=UTC)
    async with started(setup) as engine:
        row_id = await table(engine, setup.items).add({"name": "pen", "qty": 1})
        bob = table(engine, setup.items, BOB)
        assert await bob.update(row_id, {"qty": 666}) == 0
        assert await bob.update_by_id({"id": row_id, "name": "stolen"}) == 0
        amy = Table(engine, setup.items, identity=AMY, clock=lambda: later)
        assert await amy.update(row_id, {"qty": 2}) == 1
        assert await amy.update_by_id({"id": row_id, "name": "pencil"}) == 1
        with pytest.raises(InvalidOperation, match="needs at least one column"):
            await amy.update(row_id, {})
        with pytest.raises(InvalidOperation, match="values needs an id"):
            await amy.update_by_id({"name": "x"})
        (row,) = await raw_rows(engine, setup.items)
    assert (row["name"], row["qty"], row["cid"]) == ("pencil", 2, "acme")
    assert row["upby"] == "amy" and row["uptime"] == later.isoformat()


@pytest.mark.anyio
async def test_update_many_is_one_statement_scoped_to_the_owner(setup: Setup) -> None:
    async with started(setup) as engine:
        alice = table(engine, setup.items)
        bob = table(engine, setup.items, BOB)
        a1, a2 = await alice.add_many([{"name": "a1", "qty": 1}, {"name": "a2", "qty": 2}])
        b1 = await bob.add({"name": "b1", "qty": 3})
        # Bob names alice's rows and his own: only his own changes.
        changed = await bob.update_many(
            [{"id": a1, "name": "stolen"}, {"id": a2, "qty": 0}, {"id": b1, "qty": 30}]
        )
        assert changed == 1
        assert await alice.update_many([{"id": a1, "qty": 10}, {"id": a2, "name": "A2"}]) == 2
        assert await alice.update_many([]) == 0
        with pytest.raises(InvalidOperation, match="needs a column to set besides id"):
            await alice.update_many([{"id": a1}])
        rows = by_id(await raw_rows(engine, setup.items))
    assert (rows[a1]["name"], rows[a1]["qty"]) == ("a1", 10)
    assert (rows[a2]["name"], rows[a2]["qty"]) == ("A2", 2)
    assert (rows[b1]["name"], rows[b1]["qty"]) == ("b1", 30)


def test_update_many_builds_one_case_statement() -> None:
    schema = TableSchema.from_config("items", TableConfig(columns=["name", "qty"], owner="cid"))
    sql, params = TableSql(schema, "db", SQLITE).update_many(
        [{"id": "1", "name": "a"}, {"id": "2", "name": "b", "qty": "3"}], {"cid": "acme"}
    )
    assert sql == (
        'UPDATE "items" SET "name" = CASE "id" WHEN ? THEN ? WHEN ? THEN ? ELSE "name" END, '
        '"qty" = CASE "id" WHEN ? THEN ? ELSE "qty" END '
        'WHERE "id" IN (?, ?) AND "cid" = ?'
    )
    assert params == ["1", "a", "2", "b", "2", "3", "1", "2", "acme"]


def test_a_select_by_one_key_shape_seen_before_checks_only_its_value() -> None:
    schema = TableSchema.from_config("items", TableConfig(columns={"name": "text", "qty": "int"}))
    builder = TableSql(schema, "db", SQLITE)

    def select(where: dict[str, Any], **kwargs: Any) -> Any:
        options: dict[str, Any] = {"columns": None, "order": None, "limit": None, "offset": 0}
        return builder.select(where=where, **{**options, **kwargs})

    first = select({"id": "a"})
    again = select({"id": "b"})  # the same shape: from the builder's cache
    expected = 'SELECT "id", "name", "qty", "upby", "uptime" FROM "items" WHERE "id" = ?'
    assert again[0].sql == first[0].sql == expected
    assert (first[0].params, again[0].params) == (["a"], ["b"])
    assert again[1] == ["id", "name", "qty", "upby", "uptime"]
    again[1].append("mutated")  # callers get their own list of names
    assert select({"id": "c"})[1] == ["id", "name", "qty", "upby", "uptime"]
    # Other shapes are not taken for it.
    assert select({"id": "a"}, limit=2)[0].params == ["a", 2, 0]
    assert select({"id": "a"}, offset=3)[0].params == ["a", -1, 3]
    assert select({"id": ["a", "b"]})[0].sql.endswith('WHERE "id" IN (?, ?)')
    assert select({"id": None})[0].sql.endswith('WHERE "id" IS NULL')
    assert select({"id": "a"}, columns=["name"])[0].sql.startswith('SELECT "name" FROM')
    # A bad value of a known shape is reported as always, naming the field.
    with pytest.raises(InvalidOperation, match=r"where\.id of table 'items' has unsupported type"):
        select({"id": object()})
    with pytest.raises(InvalidOperation, match="unknown column 'nope' in where"):
        select({"nope": "a"})


# -- inserts by id and upserts ------------------------------------------------------------------


@pytest.mark.anyio
async def test_add_many_by_id_skips_the_owners_existing_ids_only(setup: Setup) -> None:
    """Each owner has its own ids: an id Alice holds is skipped for Alice, and is Bob's to
    take for a row of his own, which leaves Alice's as it was."""
    async with started(setup) as engine:
        alice = table(engine, setup.items)
        assert await alice.add_many_by_id([{"id": "k1", "name": "one"}, {"id": 2, "name": "two"}])
        assert await alice.add_many_by_id([{"id": "k1", "name": "again"}]) == 0
        bob = table(engine, setup.items, BOB)
        inserted = await bob.add_many_by_id(
            [{"id": "k1", "name": "bob's k1"}, {"id": "k3", "name": "bob's k3"}]
        )
        assert inserted == 2
        assert await bob.add_many_by_id([{"id": "k1", "name": "bob's again"}]) == 0
        with pytest.raises(InvalidOperation, match=r"rows\[0\] needs an id"):
            await bob.add_many_by_id([{"name": "no id"}])
        rows = await raw_rows(engine, setup.items)
        assert {row["name"] for row in await alice.get()} == {"one", "two"}
        assert {row["name"] for row in await bob.get()} == {"bob's k1", "bob's k3"}
    held = sorted((row["id"], row["cid"], row["name"], row["upby"]) for row in rows)
    assert held == [
        ("2", "acme", "two", "alice"),
        ("k1", "acme", "one", "alice"),
        ("k1", "globex", "bob's k1", "bob"),
        ("k3", "globex", "bob's k3", "bob"),
    ]


@pytest.mark.anyio
async def test_upsert_updates_or_inserts_the_owners_row_and_never_another_owners(
    setup: Setup,
) -> None:
    async with started(setup) as engine:
        alice = table(engine, setup.items)
        assert await alice.upsert({"id": "u1", "name": "first", "qty": 1}) == "u1"
        assert await alice.upsert({"id": "u1", "qty": 2}) == "u1"
        bob = table(engine, setup.items, BOB)
        # Alice's id is one nobody has, to Bob: his upsert inserts a row of his own.
        assert await bob.upsert({"id": "u1", "name": "bob's u1"}) == "u1"
        assert await bob.upsert({"id": "u1", "qty": 9}) == "u1"
        assert await bob.upsert({"id": "u2", "name": "bob's"}) == "u2"
        rows = await raw_rows(engine, setup.items)
    held = sorted((row["id"], row["cid"], row["name"], row["qty"]) for row in rows)
    assert held == [
        ("u1", "acme", "first", 2),
        ("u1", "globex", "bob's u1", 9),
        ("u2", "globex", "bob's", None),
    ]


@pytest.mark.anyio
async def test_upsert_by_first_field_finds_the_owners_row_by_the_first_column(
    setup: Setup,
) -> None:
    async with started(setup) as engine:
        alice = table(engine, setup.items)
        first = await alice.upsert_by_first_field({"name": "pen", "qty": 1})
        assert await alice.upsert_by_first_field({"name": "pen", "qty": 5}) == first
        bob = table(engine, setup.items, BOB)
        bobs = await bob.upsert_by_first_field({"name": "pen", "qty": 100})
        assert bobs != first
        with pytest.raises(InvalidOperation, match="needs the first column 'name'"):
            await alice.upsert_by_first_field({"qty": 1})
        rows = by_id(await raw_rows(engine, setup.items))
    assert len(rows) == 2
    assert (rows[first]["qty"], rows[first]["cid"]) == (5, "acme")
    assert (rows[bobs]["qty"], rows[bobs]["cid"]) == (100, "globex")


# -- deletes -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_delete_and_delete_many_remove_only_the_owners_rows(setup: Setup) -> None:
    async with started(setup) as engine:
        alice = table(engine, setup.items)
        a1, a2, a3 = await alice.add_many([{"name": "1"}, {"name": "2"}, {"name": "3"}])
        bob = table(engine, setup.items, BOB)
        b1 = await bob.add({"name": "b"})
        assert await bob.delete(a1) == 0
        assert await bob.delete_many([a1, a2, a3, b1]) == 1
        assert await alice.delete(a1) == 1
        assert await alice.delete_many([a2, a3, a3, "missing"]) == 2
        assert await alice.delete_many([]) == 0
        with pytest.raises(InvalidOperation, match="ids must be a list"):
            await alice.delete_many("a1")  # type: ignore[arg-type]
        assert await raw_rows(engine, setup.items) == []


# -- other owners and tables without one ----------------------------------------------------------


@pytest.mark.anyio
async def test_a_uid_table_separates_users_of_one_company(setup: Setup) -> None:
    async with started(setup) as engine:
        note = await table(engine, setup.notes).add({"body": "alice's note"})
        amy = table(engine, setup.notes, AMY)
        assert await amy.get() == []
        assert await amy.update(note, {"body": "edited"}) == 0
        assert await amy.delete(note) == 0
        (row,) = await raw_rows(engine, setup.notes)
    assert (row["uid"], row["body"]) == ("u-alice", "alice's note")
    assert "cid" not in row


@pytest.mark.anyio
async def test_a_table_without_owner_needs_no_identity(setup: Setup) -> None:
    async with started(setup) as engine:
        plain = table(engine, setup.plain, identity=None)
        row_id = await plain.add({"label": "x", "n": 1})
        assert await plain.upsert({"id": row_id, "n": 2}) == row_id
        assert await plain.upsert({"id": "fresh", "label": "y"}) == "fresh"
        rows = by_id(await plain.get())
        with pytest.raises(InvalidOperation, match="no owner column"):
            await plain.get_public("acme")
    assert (rows[row_id]["label"], rows[row_id]["n"], rows[row_id]["upby"]) == ("x", 2, None)
    assert rows["fresh"]["label"] == "y"


# -- the search document -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_update_search_doc_needs_a_search_source(setup: Setup) -> None:
    async with started(setup) as engine:
        items = table(engine, setup.items)
        row_id = await items.add({"name": "x"})
        with pytest.raises(InvalidOperation, match=r"has no search source.*'db' is of type"):
            await items.update_search_doc(row_id, {"name": "y"})
        assert (await items.get())[0]["name"] == "x"


class FakeSearch:
    """A stand-in for the Elasticsearch adapter: the memory source under its type name."""

    def __init__(self) -> None:
        self.sources: list[MemorySource] = []

    def __call__(self, spec: Any) -> MemorySource:
        source = MemorySource(spec)
        self.sources.append(source)
        return source

    @hookimpl
    def wf78_register_datasources(self, registry: Any) -> None:
        registry.add("elasticsearch", self)


@pytest.mark.anyio
async def test_update_search_doc_goes_to_the_search_source_for_the_owner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WF78_DISABLE_PLUGINS", "elasticsearch")
    search = FakeSearch()
    config = {
        "datasources": {"es": {"type": "elasticsearch"}},
        "tables": {"docs": {"columns": ["title"], "owner": "cid", "data_source": "es"}},
    }
    async with Engine(config, plugins=[search]) as engine:
        doc_id = await table(engine, "docs").add({"title": "draft"})
        assert await table(engine, "docs", BOB).update_search_doc(doc_id, {"title": "x"}) == 0
        assert await table(engine, "docs", AMY).update_search_doc(doc_id, {"title": "final"}) == 1
        assert await table(engine, "docs").update_search_doc("missing", {"title": "x"}) == 0
        (source,) = search.sources
        (doc,) = source.tables["docs"].values()
    assert (doc["title"], doc["upby"], doc["cid"]) == ("final", "amy", "acme")


# -- construction ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_engine_table_and_priority_limits(setup: Setup) -> None:
    async with started(setup) as engine:
        with pytest.raises(InvalidOperation, match="unknown table 'nope'"):
            engine.table("nope")
        capped = Identity(cid="acme", max_priority=2)
        assert engine.table(setup.items, identity=capped, priority=0).priority == 2
        assert engine.table(setup.items, identity=capped, priority=5).priority == 5
        assert engine.table(setup.items, identity=ALICE, priority=0).priority == 0
        items = engine.table(setup.items, identity=ALICE)
        assert isinstance(items, Table) and items.columns == ("name", "qty", "price")
        await items.add({"name": "through the engine"})
        assert engine.stats().completed >= 1
