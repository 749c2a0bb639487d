"""Tables with text ids (``[tables.<name>] id = "text"``): the caller's ids of 1 to 64
characters ``[A-Za-z0-9._:-]``, required on insert and accepted by every by-id method, on
SQLite, the real MariaDB (a VARCHAR(64) column, compared exactly), Redis (row keys) and
Elasticsearch (document ids); snowflake tables keep refusing anything but digits."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import pymysql
import pytest
import redis
from osmem_server import OsmemServer

from tests.esutil import JsonNode
from wf78_core import (
    ConfigError,
    Engine,
    Identity,
    InvalidOperation,
    Operation,
    OperationError,
    Table,
)
from wf78_core.config import TableConfig, parse_config

MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "database": "test"}
REDIS_URL = "redis://127.0.0.1:6379/0"
NODE_CLASS = f"{JsonNode.__module__}.{JsonNode.__qualname__}"
ALICE = Identity(uid="u-alice", cid="acme", uname="alice")
BOB = Identity(uid="u-bob", cid="globex", uname="bob")
BAD_IDS = ["sku 77", "sku/77", "ü-1", "x" * 65, ""]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite and aiomysql run on asyncio only


# -- configuration ---------------------------------------------------------------------------


def test_the_id_kind_is_snowflake_by_default_or_text() -> None:
    assert TableConfig(columns=["name"]).id == "snowflake"
    config = parse_config({"tables": {"skus": {"columns": ["name"], "id": "text"}}})
    assert config.tables["skus"].id == "text"
    with pytest.raises(ConfigError) as raised:
        parse_config({"tables": {"skus": {"columns": ["name"], "id": "uuid"}}})
    (problem,) = raised.value.problems
    assert problem.path == "tables.skus.id"
    assert "'uuid'" in problem.message


# -- SQLite and MariaDB ----------------------------------------------------------------------


class Setup:
    def __init__(self, backend: str, path: Path) -> None:
        self.backend = backend
        self.path = path
        self.prefix = f"t{uuid4().hex[:8]}_"
        self.skus = self.prefix + "skus"
        self.items = self.prefix + "items"

    def config(self) -> dict[str, Any]:
        if self.backend == "sqlite":
            source: dict[str, Any] = {"type": "sqlite", "url": f"sqlite:///{self.path}"}
        else:
            source = {"type": "mysql", "url": MYSQL_URL, "create_tables": True, "maxsize": 4}
        columns = {"name": "text", "qty": "int"}
        return {
            "engine": {"drain_timeout": 2.0},
            "datasources": {"db": source},
            "tables": {
                self.skus: {"columns": columns, "owner": "cid", "id": "text", "data_source": "db"},
                self.items: {"columns": columns, "owner": "cid", "data_source": "db"},
            },
        }

    def drop(self) -> None:
        connection = pymysql.connect(**MYSQL)
        try:
            with connection.cursor() as cursor:
                for name in (self.skus, self.items):
                    cursor.execute(f"DROP TABLE IF EXISTS `{name}`")
        finally:
            connection.close()


@pytest.fixture(params=["sqlite", "mysql"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    made = Setup(request.param, tmp_path / "ids.db")
    yield made
    if made.backend == "mysql":
        made.drop()


async def stored(engine: Engine, name: str) -> dict[str, dict[str, Any]]:
    """Every row of a table by id, whoever owns it, straight from the source."""
    op = Operation(action="get", table=name, order=["id"])
    return {row["id"]: row for row in (await engine.submit(op)).value}


async def exercise(skus: Table, bobs: Table, *, every: bool = True) -> None:
    """Every write and by-id method of a text-id table, as alice (``skus``) and bob
    (``every=False``: without those Redis lacks today, issue 12 item 8)."""
    assert await skus.add({"id": "sku-77", "name": "ink", "qty": 1}) == "sku-77"
    assert await skus.add_many([{"id": "a.1", "name": "a"}, {"id": "b:2", "name": "b"}]) == [
        "a.1",
        "b:2",
    ]
    if every:
        assert await skus.add_many_by_id([{"id": "c_3", "name": "c"}, {"id": "a.1"}]) == 1
    else:
        assert await skus.add({"id": "c_3", "name": "c"}) == "c_3"
    assert await skus.update("sku-77", {"qty": 2}) == 1
    assert await skus.update_by_id({"id": "a.1", "qty": 5}) == 1
    if every:
        assert await skus.update_many([{"id": "b:2", "qty": 6}, {"id": "c_3", "qty": 7}]) == 2
    assert await skus.upsert({"id": "sku-78", "name": "nib"}) == "sku-78"
    assert await skus.upsert({"id": "sku-78", "qty": 9}) == "sku-78"
    assert await skus.upsert_by_first_field({"name": "pen", "id": "PEN-1", "qty": 1}) == "PEN-1"
    assert await skus.upsert_by_first_field({"name": "pen", "qty": 3}) == "PEN-1"
    assert await skus.get(where={"id": "sku-77"}, cols="id,qty") == [{"id": "sku-77", "qty": 2}]
    # Ids compare exactly: another case is another id (MariaDB's column is binary-collated).
    assert await skus.get(where={"id": "SKU-77"}) == []
    assert await skus.add({"id": "SKU-77", "name": "loud"}) == "SKU-77"
    # Another tenant neither sees nor changes alice's ids.
    assert await bobs.update("sku-77", {"qty": 100}) == 0
    assert await bobs.delete("sku-77") == 0
    assert await skus.delete("SKU-77") == 1
    assert await skus.delete_many(["c_3", "b:2", "nope"]) == 2


@pytest.mark.anyio
async def test_every_method_takes_text_ids(setup: Setup) -> None:
    async with Engine(setup.config()) as engine:
        skus = Table(engine, setup.skus, identity=ALICE)
        await exercise(skus, Table(engine, setup.skus, identity=BOB))
        rows = await stored(engine, setup.skus)
    assert sorted(rows) == ["PEN-1", "a.1", "sku-77", "sku-78"]
    assert (rows["sku-77"]["qty"], rows["a.1"]["qty"], rows["PEN-1"]["qty"]) == (2, 5, 3)
    assert {row["cid"] for row in rows.values()} == {"acme"}
    if setup.backend == "mysql":
        connection = pymysql.connect(**MYSQL)
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT column_type FROM information_schema.columns WHERE "
                    "table_schema = DATABASE() AND table_name = %s AND column_name = 'id'",
                    [setup.skus],
                )
                assert cursor.fetchall() == (("varchar(64)",),)
        finally:
            connection.close()
    else:
        with sqlite3.connect(setup.path) as connection:
            assert connection.execute(f'SELECT count(*) FROM "{setup.skus}"').fetchone() == (4,)


@pytest.mark.anyio
async def test_inserts_need_a_text_id_and_bad_ones_are_named(setup: Setup) -> None:
    async with Engine(setup.config()) as engine:
        skus = Table(engine, setup.skus, identity=ALICE)
        with pytest.raises(InvalidOperation, match=r"values\.id is required: the table's ids"):
            await skus.add({"name": "no id"})
        with pytest.raises(InvalidOperation, match=r"rows\[1\]\.id is required"):
            await skus.add_many([{"id": "x1", "name": "a"}, {"name": "b"}])
        with pytest.raises(InvalidOperation, match=r"values\.id is required"):
            await skus.upsert_by_first_field({"name": "new"})
        for bad in BAD_IDS:
            with pytest.raises(
                InvalidOperation, match=r"must be an id of 1 to 64 characters, each"
            ):
                await skus.add({"id": bad, "name": "x"})
            with pytest.raises(InvalidOperation, match=r"id must be an id of 1 to 64 characters"):
                await skus.update(bad, {"qty": 1})
        with pytest.raises(InvalidOperation, match=r"ids\[1\] must be an id of 1 to 64 char"):
            await skus.delete_many(["ok", "not ok"])
        # A snowflake table mints its ids: an insert cannot name one. Python callers may
        # give it ids of 1 to 64 characters elsewhere (the data routes take digits there).
        items = Table(engine, setup.items, identity=ALICE)
        with pytest.raises(InvalidOperation, match=r"values\.id must have 1 to 64 char"):
            await items.upsert({"id": "x" * 65, "name": "x"})
        assert await items.upsert({"id": "sku-1", "name": "x"}) == "sku-1"
        with pytest.raises(InvalidOperation, match="column 'id' is set by the table"):
            await items.add({"id": "123", "name": "x"})
        assert (await items.add({"name": "minted"})).isdigit()
        assert await stored(engine, setup.skus) == {}


@pytest.mark.anyio
async def test_a_duplicate_text_id_is_a_conflict_not_a_replay(setup: Setup) -> None:
    async with Engine(setup.config()) as engine:
        skus = Table(engine, setup.skus, identity=ALICE)
        assert await skus.add({"id": "dup", "name": "first"}) == "dup"
        with pytest.raises(OperationError) as raised:
            await skus.add({"id": "dup", "name": "again"})
        assert raised.value.conflict, raised.value
        # Each owner has its own ids: Alice's is one nobody has, to Bob.
        bobs = Table(engine, setup.skus, identity=BOB)
        assert await bobs.add({"id": "dup", "name": "bob's"}) == "dup"
        assert [row["name"] for row in await bobs.get(where={"id": "dup"})] == ["bob's"]
        assert [row["name"] for row in await skus.get(where={"id": "dup"})] == ["first"]
        # With a caller's key the insert is replayed, not refused.
        first = await skus.add({"id": "keyed", "name": "k"}, idempotency_key=setup.prefix + "k-1")
        assert (
            await skus.add({"id": "keyed", "name": "k"}, idempotency_key=setup.prefix + "k-1")
            == first
        )
        op = Operation(action="get", table=setup.skus, where={"id": "dup"}, order=["cid"])
        rows = (await engine.submit(op)).value
    assert [(row["cid"], row["name"]) for row in rows] == [("acme", "first"), ("globex", "bob's")]


# -- Redis and Elasticsearch ---------------------------------------------------------------------


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    name = f"wf78test-{uuid4().hex}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@asynccontextmanager
async def on_source(source: dict[str, Any], owner: str | None = "cid") -> AsyncIterator[Engine]:
    columns = {"name": "text", "qty": "int"}
    table = {"columns": columns, "owner": owner, "id": "text", "data_source": "store"}
    config = {"datasources": {"store": source}, "tables": {"skus": table}}
    async with Engine(config) as engine:
        yield engine


@pytest.mark.anyio
async def test_redis_keeps_text_ids_as_row_keys(redis_prefix: str) -> None:
    source = {"type": "redis", "url": REDIS_URL, "key_prefix": redis_prefix}
    async with on_source(source) as engine:
        skus, bobs = Table(engine, "skus", identity=ALICE), Table(engine, "skus", identity=BOB)
        await exercise(skus, bobs, every=False)
        rows = await stored(engine, "skus")
    assert sorted(rows) == ["PEN-1", "a.1", "sku-77", "sku-78"]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        # An owned table's row key names its id (length first) and its owner.
        assert client.hget(f"{redis_prefix}:{{skus}}:row:6:sku-77:acme", "qty") == b"2"
    finally:
        client.close()


@pytest.fixture(scope="module")
def es_url() -> Iterator[str]:
    server = OsmemServer.start(japanese=False)
    try:
        with server.clone() as clone:
            yield clone.url
    finally:
        server.close()
        if server.process.stdout is not None:
            server.process.stdout.close()


@pytest.mark.anyio
async def test_elasticsearch_keeps_text_ids_as_document_ids(es_url: str) -> None:
    source = {"type": "elasticsearch", "url": es_url, "node_class": NODE_CLASS}
    async with on_source(source, owner=None) as engine:  # owner-scoped updates: item 7
        skus = Table(engine, "skus")
        assert await skus.add({"id": "sku-77", "name": "ink", "qty": 1}) == "sku-77"
        assert await skus.add_many([{"id": "a.1", "name": "a"}, {"id": "b:2"}]) == ["a.1", "b:2"]
        assert await skus.upsert({"id": "sku-78", "name": "nib"}) == "sku-78"
        assert await skus.update("sku-78", {"qty": 4}) == 1
        assert await skus.delete("b:2") == 1
        # A get by id reads the document of that _id (in real time).
        for doc_id, name in [("sku-77", "ink"), ("a.1", "a"), ("sku-78", "nib")]:
            got = await skus.get(where={"id": doc_id}, cols="id,name")
            assert got == [{"id": doc_id, "name": name}]
        assert await skus.get(where={"id": "b:2"}) == []
