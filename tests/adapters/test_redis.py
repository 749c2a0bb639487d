"""The Redis adapter against the real server at 127.0.0.1:6379: actions, key layout,
auto-pipelining, shutdown, and a restart of Redis under load through the engine."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import anyio
import anyio.lowlevel
import httpx
import pytest
import redis
import redis.asyncio
from anyio.abc import TaskStatus
from asgi_lifespan import LifespanManager
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.applications import Starlette

from wf78_core import Engine, Identity
from wf78_core.config import TableConfig
from wf78_core.definitions import Operation
from wf78_core.errors import ConfigError, DataSourceError, InvalidOperation
from wf78_core.http.middleware import Wf78Middleware
from wf78_core.plugin.datasource import DataSource, SourceSpec, TableSchema, load_factory
from wf78_core.plugin.registry import Registry
from wf78_redis import RedisSource, wf78_register_datasources
from wf78_redis.errors import map_error

pytestmark = pytest.mark.anyio

URL = "redis://127.0.0.1:6379/0"
TABLES = {
    "items": TableConfig(columns={"name": "text", "qty": "int"}, owner="cid"),
    "things": TableConfig(
        columns={
            "label": "text",
            "price": "float",
            "flag": "bool",
            "meta": "json",
            "at": "datetime",
        }
    ),
}
# Exactly how .ci/run starts Redis; other engineers' tests use this server too.
REDIS_SERVER = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    name = f"wf78test-{uuid4().hex}"
    yield name
    client = redis.Redis.from_url(URL)
    try:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture
async def raw() -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client to look at what the adapter stored."""
    client = redis.asyncio.Redis.from_url(URL)
    yield client
    await client.aclose()


def make_source(prefix: str, **option_values: Any) -> RedisSource:
    return RedisSource(
        SourceSpec(
            name="r",
            type="redis",
            url=URL,
            options=RedisSource.Options(key_prefix=prefix, **option_values),
            tables={name: TableSchema.from_config(name, table) for name, table in TABLES.items()},
        )
    )


@asynccontextmanager
async def running(prefix: str, **option_values: Any) -> AsyncIterator[RedisSource]:
    source = make_source(prefix, **option_values)
    await source.open()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(source.run)
            yield source
            tg.cancel_scope.cancel()
    finally:
        await source.close()


@pytest.fixture
async def source(prefix: str) -> AsyncIterator[RedisSource]:
    async with running(prefix) as opened:
        yield opened


async def test_registers_redis_type() -> None:
    registry: Registry[Any] = Registry("data-source type")
    wf78_register_datasources(registry=registry)
    assert load_factory(registry["redis"]) is RedisSource
    assert isinstance(make_source("p"), DataSource)
    assert make_source("p").concurrency == 2048
    assert make_source("p", queue_size=10).concurrency == 10


async def test_bad_configuration_names_its_path() -> None:
    spec = SourceSpec(name="c", type="redis", url="http://x", options=None, tables={})
    with pytest.raises(ConfigError, match=r"datasources\.c\.url"):
        RedisSource(spec)
    spec = SourceSpec(name="c", type="redis", url=None, options={"bogus": 1}, tables={})
    with pytest.raises(ConfigError, match=r"datasources\.c\.bogus: unknown key"):
        RedisSource(spec)
    with pytest.raises(ValueError, match="brace-free"):
        RedisSource.Options(key_prefix="a{b}")
    default = RedisSource(SourceSpec(name="c", type="redis", url=None, options={}, tables={}))
    assert default.url == "redis://127.0.0.1:6379/0"


async def test_cache_actions(source: RedisSource) -> None:
    async def do(action: str, **fields: Any) -> Any:
        return await source.execute(Operation(action=action, **fields))

    assert await do("noop") is None
    assert await do("cache_get", key="missing") is None
    value = {"a": [1, 2.5, "x", None, True]}
    assert await do("cache_set", key="k", value=value) is True
    assert await do("cache_get", key="k") == value
    assert await do("cache_set", key="s", value="text") is True
    assert await do("cache_get", key="s") == "text"
    assert await do("cache_delete", key="k") is True
    assert await do("cache_delete", key="k") is False
    assert await do("cache_get", key="k") is None
    assert await do("incr", key="n") == 1
    assert await do("incr", key="n", value=5) == 6
    assert await do("incr", key="n", value=-2) == 4
    assert await do("cache_get", key="n") == 4
    with pytest.raises(InvalidOperation, match="must be an int"):
        await do("incr", key="n", value="3")
    with pytest.raises(InvalidOperation, match="non-empty string key"):
        await do("cache_get")
    with pytest.raises(InvalidOperation, match="not JSON-encodable"):
        await do("cache_set", key="k", value=object())
    with pytest.raises(InvalidOperation, match="ttl must be positive"):
        await do("cache_set", key="k", value=1, ttl=0)
    with pytest.raises(InvalidOperation, match="not supported by redis source 'r'"):
        await do("execute", sql="SELECT 1")


async def test_cache_key_layout(source: RedisSource, raw: redis.asyncio.Redis, prefix: str) -> None:
    await source.execute(Operation(action="cache_set", key="k", value=[1, "a"]))
    assert await raw.get(f"{prefix}:cache:k") == b'[1,"a"]'


async def test_ttl_expires(source: RedisSource, raw: redis.asyncio.Redis, prefix: str) -> None:
    await source.execute(Operation(action="cache_set", key="t", value="v", ttl=0.2))
    assert 0 < await raw.pttl(f"{prefix}:cache:t") <= 200
    assert await source.execute(Operation(action="cache_get", key="t")) == "v"
    # A counter with a ttl expires as a whole: later increments do not extend it.
    assert await source.execute(Operation(action="incr", key="c", ttl=0.2)) == 1
    await anyio.sleep(0.1)
    assert await source.execute(Operation(action="incr", key="c", value=2, ttl=5)) == 3
    assert await raw.pttl(f"{prefix}:cache:c") <= 100
    await anyio.sleep(0.3)
    assert await source.execute(Operation(action="cache_get", key="t")) is None
    assert await source.execute(Operation(action="cache_get", key="c")) is None


async def test_table_rows_and_result_shapes(source: RedisSource) -> None:
    async def do(action: str, **fields: Any) -> Any:
        return await source.execute(Operation(action=action, table="items", **fields))

    first = await do("add", values={"name": "pen", "qty": 3, "cid": "A"})
    assert isinstance(first, str) and first.isdigit()
    assert await do("add", values={"id": "x1", "name": "ink", "qty": 1, "cid": "A"}) == "x1"
    many = await do(
        "add_many", rows=[{"name": "cup", "qty": 7, "cid": "A"}, {"qty": 2, "cid": "B"}]
    )
    assert len(many) == 2 and all(isinstance(row_id, str) for row_id in many)
    assert await do("add_many", rows=[]) == []

    assert await do("get", where={"id": first}) == [
        {"id": first, "name": "pen", "qty": 3, "cid": "A", "upby": None, "uptime": None}
    ]
    assert await do("get", where={"id": "nope"}) == []
    owned = await do("get", where={"cid": "A"}, columns=["name", "qty"])
    # Without an order, rows come back in id order: snowflake ids follow insertion.
    assert owned == [
        {"name": "ink", "qty": 1},
        {"name": "pen", "qty": 3},
        {"name": "cup", "qty": 7},
    ]
    assert [r["name"] for r in await do("get", where={"cid": "A"}, order=["-qty"])] == [
        "cup",
        "pen",
        "ink",
    ]
    assert [r["qty"] for r in await do("get", order=["qty desc"], limit=2, offset=1)] == [3, 2]
    # NULLs sort first, as in SQL.
    assert [r["name"] for r in await do("get", order=["name asc"])] == [None, "cup", "ink", "pen"]
    assert await do("get", where={"cid": "A", "qty": [1, 7]}, order=["qty"], columns=["qty"]) == [
        {"qty": 1},
        {"qty": 7},
    ]
    assert await do("get", where={"name": None}, columns=["cid"]) == [{"cid": "B"}]
    assert await do(
        "get", where={"id": [many[0], first, "nope"]}, columns=["id"], order=["id"]
    ) == [{"id": row_id} for row_id in sorted([first, many[0]])]
    assert await do("get", where={"qty": []}) == []

    assert await do("update", values={"qty": 4}, where={"id": first, "cid": "A"}) == 1
    assert await do("update", values={"qty": 9}, where={"cid": "A", "qty": [1, 7]}) == 2
    assert [r["qty"] for r in await do("get", where={"cid": "A"}, order=["qty"])] == [4, 9, 9]
    assert await do("update", values={"qty": 1}, where={"id": "nope"}) == 0

    assert await do("upsert", values={"id": "u1", "name": "new", "cid": "B"}) == "u1"
    assert await do("upsert", values={"id": "u1", "qty": 5, "name": None, "cid": "B"}) == "u1"
    assert await do("get", where={"id": "u1"}, columns=["name", "qty", "cid"]) == [
        {"name": None, "qty": 5, "cid": "B"}
    ]

    assert await do("delete", where={"id": "x1"}) == 1
    assert await do("delete", where={"id": "x1"}) == 0
    assert await do("delete_many", where={"id": [first, "u1", "nope"]}) == 2
    assert len(await do("get")) == 2
    assert await do("delete_many", where={"cid": ["A", "B"]}) == 2
    assert await do("get") == []


async def test_typed_columns_round_trip(source: RedisSource) -> None:
    at = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    values = {"label": "x", "price": 2, "flag": True, "meta": {"k": [1, None]}, "at": at}
    row_id = await source.execute(Operation(action="add", table="things", values=values))
    [row] = await source.execute(Operation(action="get", table="things", where={"id": row_id}))
    assert row == {
        "id": row_id,
        "label": "x",
        "price": 2.0,
        "flag": True,
        "meta": {"k": [1, None]},
        "at": at.isoformat(),
        "upby": None,
        "uptime": None,
    }
    # Filters encode like the stored values: 2 finds 2.0, an ISO string finds the datetime.
    found = await source.execute(
        Operation(
            action="get",
            table="things",
            where={"price": 2, "flag": True, "at": at.isoformat(), "meta": {"k": [1, None]}},
        )
    )
    assert [r["id"] for r in found] == [row_id]


async def test_key_layout_and_index_upkeep(
    source: RedisSource, raw: redis.asyncio.Redis, prefix: str
) -> None:
    row_id = await source.execute(
        Operation(action="add", table="items", values={"name": "pen", "qty": 3, "cid": "A"})
    )
    # An owned table's row is (owner, id): its key and member name both, the id's length first.
    member = f"{len(row_id)}:{row_id}:A"
    assert await raw.hgetall(f"{prefix}:{{items}}:row:{member}") == {
        b"id": row_id.encode(),
        b"name": b"pen",
        b"qty": b"3",
        b"cid": b"A",
    }
    assert await raw.zrange(f"{prefix}:{{items}}:rows", 0, -1) == [member.encode()]
    assert await raw.smembers(f"{prefix}:{{items}}:owner:A") == {row_id.encode()}
    assert await raw.exists(f"{prefix}:{{items}}:all") == 0
    # Changing the owner moves the row to its new owner's key and owner index.
    await source.execute(
        Operation(action="update", table="items", values={"cid": "B"}, where={"id": row_id})
    )
    moved = f"{len(row_id)}:{row_id}:B"
    assert await raw.exists(f"{prefix}:{{items}}:row:{member}") == 0
    assert await raw.hget(f"{prefix}:{{items}}:row:{moved}", "name") == b"pen"
    assert await raw.zrange(f"{prefix}:{{items}}:rows", 0, -1) == [moved.encode()]
    assert await raw.exists(f"{prefix}:{{items}}:owner:A") == 0
    assert await raw.smembers(f"{prefix}:{{items}}:owner:B") == {row_id.encode()}
    await source.execute(Operation(action="delete", table="items", where={"cid": "B"}))
    assert await raw.keys(f"{prefix}:*") == []
    # A table without an owner column keeps one id space: the row key is its id.
    thing = await source.execute(Operation(action="add", table="things", values={"label": "x"}))
    assert await raw.hgetall(f"{prefix}:{{things}}:row:{thing}") == {
        b"id": thing.encode(),
        b"label": b"x",
    }
    assert await raw.smembers(f"{prefix}:{{things}}:all") == {thing.encode()}
    await source.execute(Operation(action="delete", table="things", where={"id": thing}))
    assert await raw.keys(f"{prefix}:*") == []


async def test_owner_scoping(source: RedisSource) -> None:
    async def do(action: str, **fields: Any) -> Any:
        return await source.execute(Operation(action=action, table="items", **fields))

    a_ids = await do("add_many", rows=[{"name": f"a{i}", "cid": "A"} for i in range(3)])
    b_id = await do("add", values={"name": "b", "cid": "B"})
    assert [r["id"] for r in await do("get", where={"cid": "B"})] == [b_id]
    assert [r["id"] for r in await do("get", where={"cid": "A"})] == a_ids
    assert await do("get", where={"cid": "C"}) == []
    # Another owner's row is out of reach even by its id.
    assert await do("get", where={"id": a_ids[0], "cid": "B"}) == []
    assert await do("update", values={"name": "stolen"}, where={"id": a_ids[0], "cid": "B"}) == 0
    assert await do("delete", where={"id": a_ids[0], "cid": "B"}) == 0
    assert await do("update", values={"name": "mine"}, where={"cid": "B"}) == 1
    assert {r["name"] for r in await do("get", where={"cid": "A"})} == {"a0", "a1", "a2"}


async def test_each_owner_has_its_own_ids(source: RedisSource) -> None:
    """On an owned table a row is (owner, id): two owners' rows with one id are two rows, and
    every write by id with the owner touches that owner's row alone."""

    async def do(action: str, **fields: Any) -> Any:
        return await source.execute(Operation(action=action, table="items", **fields))

    async def rows_of(owner: str) -> list[dict[str, Any]]:
        return list(await do("get", where={"cid": owner}, columns=["id", "name", "qty"]))

    assert await do("add", values={"id": "x", "name": "a-x", "qty": 1, "cid": "A"}) == "x"
    assert await do("add", values={"id": "x", "name": "b-x", "qty": 2, "cid": "B"}) == "x"
    assert await do("add_many", rows=[{"id": "y", "cid": "A"}, {"id": "y", "cid": "B"}]) == [
        "y",
        "y",
    ]
    assert await do("count") == 4
    # Rows come back with the plain id, whoever reads them.
    assert await do("get", where={"id": "x", "cid": "B"}) == [
        {"id": "x", "name": "b-x", "qty": 2, "cid": "B", "upby": None, "uptime": None}
    ]
    assert await do("get", where={"id": ["x", "y"], "cid": ["A"]}, columns=["id", "cid"]) == [
        {"id": "x", "cid": "A"},
        {"id": "y", "cid": "A"},
    ]

    assert await do("update", values={"qty": 10}, where={"id": "x", "cid": "A"}) == 1
    assert await do("update_many", rows=[{"id": "y", "name": "a-y"}], where={"cid": "A"}) == 1
    assert await rows_of("A") == [
        {"id": "x", "name": "a-x", "qty": 10},
        {"id": "y", "name": "a-y", "qty": None},
    ]
    assert await rows_of("B") == [
        {"id": "x", "name": "b-x", "qty": 2},
        {"id": "y", "name": None, "qty": None},
    ]

    # An upsert is keyed by (owner, id): B's row is updated, C gets a row of its own.
    assert await do("upsert", values={"id": "x", "qty": 20, "name": None, "cid": "B"}) == "x"
    assert await do("upsert", values={"id": "x", "name": "c-x", "cid": "C"}) == "x"
    assert await rows_of("B") == [
        {"id": "x", "name": None, "qty": 20},
        {"id": "y", "name": None, "qty": None},
    ]
    assert await rows_of("C") == [{"id": "x", "name": "c-x", "qty": None}]
    assert (await rows_of("A"))[0] == {"id": "x", "name": "a-x", "qty": 10}

    # conflict = "ignore" skips only the rows the same owner has.
    fresh = [{"id": "y", "name": "dup", "cid": "C"}, {"id": "y", "name": "skip", "cid": "A"}]
    assert await do("add_many", rows=fresh, conflict="ignore") == 1
    assert await rows_of("C") == [
        {"id": "x", "name": "c-x", "qty": None},
        {"id": "y", "name": "dup", "qty": None},
    ]
    assert (await rows_of("A"))[1] == {"id": "y", "name": "a-y", "qty": None}

    # Deletes by id with the owner take that owner's rows only.
    assert await do("delete", where={"id": "x", "cid": "B"}) == 1
    assert await do("delete", where={"id": "x", "cid": "B"}) == 0
    assert await do("delete_many", where={"id": ["x", "y", "nope"], "cid": "C"}) == 2
    assert await rows_of("C") == []
    assert [row["id"] for row in await rows_of("A")] == ["x", "y"]
    assert [row["id"] for row in await rows_of("B")] == ["y"]

    # A row written without an owner is the empty owner's: one more row of that id.
    assert await do("add", values={"id": "y", "name": "nobody's"}) == "y"
    assert await do("get", where={"id": "y", "cid": None}, columns=["name", "cid"]) == [
        {"name": "nobody's", "cid": None}
    ]
    with pytest.raises(DataSourceError, match="duplicate id 'y'"):
        await do("add", values={"id": "y", "name": "again"})
    assert await do("count", where={"id": "y"}) == 3


async def test_an_id_without_its_owner_matches_every_owners_row(
    source: RedisSource, raw: redis.asyncio.Redis, prefix: str
) -> None:
    """A ``where`` with ids but no owner matches each owner's row of those ids (as SQL's
    ``WHERE id = ...`` on a table keyed by (owner, id)) and no row of another id."""

    async def do(action: str, **fields: Any) -> Any:
        return await source.execute(Operation(action=action, table="items", **fields))

    await do(
        "add_many",
        rows=[
            {"id": "2", "name": "b2", "qty": 1, "cid": "B"},
            {"id": "10", "name": "a10", "cid": "A"},
            {"id": "2", "name": "a2", "qty": 2, "cid": "A"},
            {"id": "1", "name": "c1", "cid": "C"},
            {"id": "2", "name": "c2", "cid": "C"},
            {"id": "20", "name": "a20", "cid": "A"},
        ],
    )
    # Ordered by the plain id (shorter snowflakes are older), then by owner for one id.
    assert [(r["id"], r["cid"]) for r in await do("get")] == [
        ("1", "C"),
        ("2", "A"),
        ("2", "B"),
        ("2", "C"),
        ("10", "A"),
        ("20", "A"),
    ]
    assert [r["name"] for r in await do("get", where={"id": "2"}, order=["-qty"])] == [
        "a2",
        "b2",
        "c2",
    ]
    assert await do("count", where={"id": ["2", "1"]}) == 4
    assert await do("count", where={"id": "2", "qty": [1, 2]}) == 2
    assert await do("update", values={"qty": 7}, where={"id": "2"}) == 3
    assert await do("update_many", rows=[{"id": "2", "name": "two"}, {"id": "9", "qty": 1}]) == 3
    assert {r["cid"] for r in await do("get", where={"name": "two", "qty": 7})} == {"A", "B", "C"}
    assert await do("delete", where={"id": "2", "qty": 7, "cid": ["A", "C"]}) == 2
    assert await do("delete_many", where={"id": ["2", "10"]}) == 2
    assert [(r["id"], r["cid"]) for r in await do("get")] == [("1", "C"), ("20", "A")]
    assert await raw.zrange(f"{prefix}:{{items}}:rows", 0, -1) == [b"1:1:C", b"2:20:A"]
    assert await raw.smembers(f"{prefix}:{{items}}:owner:A") == {b"20"}
    assert await raw.exists(f"{prefix}:{{items}}:owner:B") == 0


async def test_row_keys_are_unambiguous(
    source: RedisSource, raw: redis.asyncio.Redis, prefix: str
) -> None:
    """Owners and ids with ``:`` (or several bytes a character) never name another's row."""

    async def do(action: str, **fields: Any) -> Any:
        return await source.execute(Operation(action=action, table="items", **fields))

    # Pairs a plain `owner:id` or `id:owner` would confuse, and multi-byte characters.
    pairs = [
        ("a:b", "c"),
        ("a", "b:c"),
        ("1:o", "x"),
        ("o", "x:1"),
        ("o", "x"),
        ("é", "ü:1"),
        ("é:1", "ü"),
        ("o", "3:x:1"),
    ]
    for owner, row_id in pairs:
        assert await do("add", values={"id": row_id, "name": f"{owner}|{row_id}", "cid": owner})
    for owner, row_id in pairs:
        found = await do("get", where={"id": row_id, "cid": owner}, columns=["id", "name", "cid"])
        assert found == [{"id": row_id, "name": f"{owner}|{row_id}", "cid": owner}]
        by_id = await do("get", where={"id": row_id}, columns=["name"])
        assert sorted(row["name"] for row in by_id) == sorted(
            f"{o}|{i}" for o, i in pairs if i == row_id
        )
    assert await do("get", where={"id": ["ü", "x"]}, columns=["cid"], order=["cid"]) == [
        {"cid": "1:o"},
        {"cid": "o"},
        {"cid": "é:1"},
    ]
    key = f"{prefix}:{{items}}:row:{len('ü:1'.encode())}:ü:1:é"
    assert await raw.hget(key, "name") == "é|ü:1".encode()
    # Each owner's rows leave with their owner, their index entries with them.
    for owner in {owner for owner, _ in pairs}:
        assert await do("delete", where={"cid": owner}) == sum(o == owner for o, _ in pairs)
    assert await raw.keys(f"{prefix}:*") == []


async def test_an_owner_change_onto_an_existing_row_is_a_conflict(source: RedisSource) -> None:
    """Moving a row to an owner that has a row with its id would merge two rows: refused,
    atomically; to an owner without one, the row moves."""

    async def do(action: str, **fields: Any) -> Any:
        return await source.execute(Operation(action=action, table="items", **fields))

    rows = [
        {"id": "x", "name": "a-x", "cid": "A"},
        {"id": "x", "name": "b-x", "cid": "B"},
        {"id": "y", "name": "a-y", "cid": "A"},
        {"id": "z", "name": "a-z", "cid": "A"},
        {"id": "z", "name": "c-z", "cid": "C"},
    ]
    await do("add_many", rows=rows)
    before = await do("get")
    attempts: list[dict[str, Any]] = [
        {"action": "update", "values": {"cid": "B"}, "where": {"id": "x", "cid": "A"}},
        # Two rows of one id moving to one owner.
        {"action": "update", "values": {"cid": "D"}, "where": {"id": "z"}},
        # update_many writes no row when one of them collides.
        {
            "action": "update_many",
            "rows": [{"id": "y", "name": "moved", "cid": "B"}, {"id": "x", "cid": "B"}],
            "where": {"cid": "A"},
        },
        {"action": "update_many", "rows": [{"id": "z", "cid": "E"}]},
    ]
    for fields in attempts:
        with pytest.raises(DataSourceError, match="that owner has a row with this id") as caught:
            await do(**fields)
        assert (caught.value.conflict, caught.value.retryable) == (True, False)
        assert await do("get") == before, fields
    # With a caller's key too, and the refused write leaves no marker behind.
    keyed = Operation(
        action="update",
        table="items",
        values={"cid": "A"},
        where={"id": "x", "cid": "B"},
        idempotency_key="move",
    )
    with pytest.raises(DataSourceError, match="that owner has a row"):
        await source.execute(keyed)
    await do("delete", where={"id": "x", "cid": "A"})
    assert await source.execute(keyed) == 1
    assert await do("get", where={"id": "x"}, columns=["name", "cid"]) == [
        {"name": "b-x", "cid": "A"}
    ]
    moved = [{"id": "y", "cid": "B"}, {"id": "z", "name": "b-z"}]
    assert await do("update_many", rows=moved, where={"cid": "A"}) == 2
    assert await do("get", where={"cid": "B"}, columns=["id", "name"]) == [
        {"id": "y", "name": "a-y"}
    ]


async def test_duplicate_id_is_refused_atomically(source: RedisSource) -> None:
    async def do(action: str, **fields: Any) -> Any:
        return await source.execute(Operation(action=action, table="items", **fields))

    await do("add", values={"id": "d1", "name": "first", "cid": "A"})
    with pytest.raises(DataSourceError, match="duplicate id 'd1'") as caught:
        await do("add", values={"id": "d1", "name": "second", "cid": "A"})
    assert (caught.value.retryable, caught.value.conflict) == (False, True)
    assert caught.value.data_source == "r"
    # add_many writes every row or none.
    with pytest.raises(DataSourceError, match="duplicate id 'd1'"):
        await do("add_many", rows=[{"id": "d2", "cid": "A"}, {"id": "d1", "cid": "A"}])
    with pytest.raises(DataSourceError, match="duplicate id 'd3'"):
        await do("add_many", rows=[{"id": "d3", "cid": "A"}, {"id": "d3", "cid": "A"}])
    with pytest.raises(DataSourceError, match="duplicate id 'd1'"):
        await do("add_many", rows=[{"id": "d1", "cid": "B"}, {"id": "d1", "cid": "A"}])
    assert [r["name"] for r in await do("get")] == ["first"]
    assert await do("get", where={"cid": "B"}) == []

    # Concurrent adds of one id: exactly one wins.
    outcomes: list[str] = []

    async def add(index: int) -> None:
        try:
            await do("add", values={"id": "race", "name": str(index)})
            outcomes.append("added")
        except DataSourceError:
            outcomes.append("refused")

    async with anyio.create_task_group() as tg:
        for index in range(20):
            tg.start_soon(add, index)
    assert sorted(outcomes) == ["added"] + ["refused"] * 19


async def test_invalid_operations_name_what_is_wrong(source: RedisSource) -> None:
    async def do(action: str, **fields: Any) -> Any:
        return await source.execute(Operation(action=action, table="items", **fields))

    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"action": "add", "values": {"name": "x", "colour": "red"}},
            "unknown column 'colour' in values of table 'items'",
        ),
        (
            {"action": "add_many", "rows": [{"name": "x"}, {"bogus": 1}]},
            r"unknown column 'bogus' in rows\[1\]",
        ),
        ({"action": "get", "where": {"bogus": 1}}, "unknown column 'bogus' in where"),
        ({"action": "get", "columns": ["name", "bogus"]}, "unknown column 'bogus' in columns"),
        ({"action": "get", "order": ["-bogus"]}, "unknown column 'bogus' in order"),
        ({"action": "get", "order": ["name sideways"]}, "bad order entry 'name sideways'"),
        ({"action": "add", "values": {"qty": "many"}}, "values.qty of table 'items' is not"),
        ({"action": "add", "values": {"qty": 1.5}}, "must be int"),
        ({"action": "add"}, "add needs values"),
        ({"action": "upsert", "values": {"name": "x"}}, "upsert needs values.id"),
        ({"action": "update", "values": {"name": "x"}, "where": {"name": "y"}}, "id or cid"),
        ({"action": "update", "values": {"id": "new"}, "where": {"id": "a"}}, "cannot change"),
        ({"action": "update", "values": {}, "where": {"id": "a"}}, "non-empty values"),
        ({"action": "delete", "where": {}}, "needs id or cid in where"),
        ({"action": "delete_many", "where": {"id": "a"}}, "needs a list value"),
    ]
    for fields, message in cases:
        with pytest.raises(InvalidOperation, match=message) as caught:
            await do(**fields)
        assert caught.value.data_source == "r"
        assert caught.value.retryable is False
    with pytest.raises(InvalidOperation, match=r"unknown table 'nope' \(redis source 'r' has"):
        await source.execute(Operation(action="get", table="nope"))
    with pytest.raises(InvalidOperation, match="get needs a table"):
        await source.execute(Operation(action="get"))


async def test_concurrent_commands_share_pipelines(source: RedisSource) -> None:
    pipelines, commands = source.pipelines, source.commands

    async def put(index: int) -> None:
        assert await source.execute(
            Operation(action="cache_set", key=f"p{index}", value={"n": index})
        )

    async with anyio.create_task_group() as tg:
        for index in range(1000):
            tg.start_soon(put, index)
    assert source.commands - commands == 1000
    sent = source.pipelines - pipelines
    assert 1 <= sent <= 50, f"1000 concurrent commands went out in {sent} pipelines"

    values: dict[int, Any] = {}

    async def read(index: int) -> None:
        values[index] = await source.execute(Operation(action="cache_get", key=f"p{index}"))

    async with anyio.create_task_group() as tg:
        for index in range(1000):
            tg.start_soon(read, index)
    assert values == {index: {"n": index} for index in range(1000)}


async def test_failing_command_fails_only_its_caller(source: RedisSource) -> None:
    await source.execute(Operation(action="cache_set", key="word", value="not a number"))
    pipelines = source.pipelines
    results: dict[int, Any] = {}
    failures: list[DataSourceError] = []

    async def put(index: int) -> None:
        results[index] = await source.execute(
            Operation(action="cache_set", key=f"f{index}", value=index)
        )

    async def bad_incr() -> None:
        try:
            await source.execute(Operation(action="incr", key="word"))
        except DataSourceError as error:
            failures.append(error)

    async with anyio.create_task_group() as tg:
        for index in range(200):
            tg.start_soon(put, index)
            if index == 100:
                tg.start_soon(bad_incr)
    assert source.pipelines - pipelines <= 20  # the incr shared a pipeline with others
    [failure] = failures
    assert failure.retryable is False
    assert failure.data_source == "r"
    assert "not an integer" in str(failure)
    assert results == dict.fromkeys(range(200), True)
    assert await source.execute(Operation(action="cache_get", key="f150")) == 150


async def test_direct_execution_without_run(prefix: str) -> None:
    source = make_source(prefix)
    await source.open()
    try:
        assert await source.execute(Operation(action="cache_set", key="d", value=1)) is True
        assert await source.execute(Operation(action="incr", key="d")) == 2
        assert source.pipelines == 2  # one round trip each
        await source.health()
    finally:
        await source.close()
        await source.close()  # idempotent
    assert source.pipelines == 2
    with pytest.raises(DataSourceError, match="not open") as caught:
        await source.execute(Operation(action="cache_get", key="d"))
    assert caught.value.retryable is True
    with pytest.raises(DataSourceError, match="not open"):
        await source.health()


async def test_scripts_reload_after_script_flush(
    source: RedisSource, raw: redis.asyncio.Redis
) -> None:
    await raw.script_flush()  # as after a restart of Redis
    pipelines = source.pipelines
    assert await source.execute(Operation(action="add", table="items", values={"id": "s"})) == "s"
    assert source.pipelines - pipelines == 2  # NOSCRIPT, then loaded and sent again


async def test_shutdown_finishes_in_flight_and_fails_queued(prefix: str) -> None:
    source = make_source(prefix, max_pipeline=10)
    await source.open()
    outcomes: dict[int, str] = {}

    async def put(index: int) -> None:
        try:
            await source.execute(Operation(action="cache_set", key=f"q{index}", value=index))
            outcomes[index] = "done"
        except DataSourceError as error:
            assert error.retryable, error
            outcomes[index] = "refused"

    try:
        with anyio.fail_after(10):  # nobody may be left hanging
            async with anyio.create_task_group() as tg:
                loop = anyio.CancelScope()

                async def pipelining(*, task_status: TaskStatus[None]) -> None:
                    with loop:
                        await source.run(task_status=task_status)

                await tg.start(pipelining)
                for index in range(2000):
                    tg.start_soon(put, index)
                # Cancel as soon as the first pipeline is in flight: the rest is queued.
                while True:
                    await anyio.lowlevel.checkpoint()
                    if source.pipelines:
                        break
                loop.cancel()
        assert len(outcomes) == 2000
        refused = [index for index, outcome in outcomes.items() if outcome == "refused"]
        assert refused, "the queued calls should have been refused"
        for index, outcome in outcomes.items():
            stored = await source.execute(Operation(action="cache_get", key=f"q{index}"))
            assert stored == (index if outcome == "done" else None)
    finally:
        await source.close()


async def test_through_the_engine(prefix: str) -> None:
    config = {
        "datasources": {"cache": {"type": "redis", "url": URL, "key_prefix": prefix}},
        "tables": {"items": {"columns": {"name": "text", "qty": "int"}, "owner": "cid"}},
    }
    async with Engine(config) as engine:
        result = await engine.submit(
            Operation(action="cache_set", key="e", value={"ok": 1}, data_source="cache")
        )
        assert (result.value, result.data_source, result.source_type) == (True, "cache", "redis")
        got = await engine.submit(Operation(action="cache_get", key="e", data_source="cache"))
        assert got.value == {"ok": 1}
        added = await engine.submit(
            Operation(action="add", table="items", values={"name": "pen", "cid": "A"})
        )
        rows = await engine.submit(Operation(action="get", table="items", where={"cid": "A"}))
        assert [row["id"] for row in rows.value] == [added.value]
        assert (await engine.check_health()) == {"cache": True}


async def _redis_answers() -> bool:
    client = redis.asyncio.Redis.from_url(
        URL, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        return bool(await client.ping())
    except redis.RedisError:
        return False
    finally:
        await client.aclose()


async def _ensure_redis(deadline: float = 30.0) -> None:
    """Start Redis the way .ci/run does unless it answers; wait until it does."""
    with anyio.fail_after(deadline):
        while not await _redis_answers():
            await anyio.run_process(REDIS_SERVER, check=False)
            for _ in range(20):
                if await _redis_answers():
                    return
                await anyio.sleep(0.05)


async def test_redis_restart_is_retried(prefix: str) -> None:
    config = {
        # Backoff long enough to outlast a restart; no health check flips the source mid-test.
        "engine": {"retry_backoff": 0.5, "retry_backoff_max": 5.0},
        "agents": {"health_interval": 60.0},
        "datasources": {"cache": {"type": "redis", "url": URL, "key_prefix": prefix}},
    }
    started: dict[int, float] = {}
    attempts: dict[int, int] = {}
    down_at = float("inf")

    async def put(index: int) -> None:
        started[index] = time.monotonic()
        result = await engine.submit(
            Operation(
                action="cache_set", key=f"r{index}", value=index, data_source="cache", retry=5
            )
        )
        assert result.value is True
        attempts[index] = result.attempts

    async def restart() -> None:
        nonlocal down_at
        await anyio.sleep(0.3)
        await anyio.run_process(["redis-cli", "-h", "127.0.0.1", "shutdown", "nosave"], check=False)
        with anyio.fail_after(10):
            while True:  # until the old server is gone
                if not await _redis_answers():
                    break
                await anyio.sleep(0.01)
        down_at = time.monotonic()
        await anyio.sleep(0.2)  # long enough that commands meet a server that is gone
        await _ensure_redis()

    try:
        async with Engine(config) as engine:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(restart)
                    for index in range(400):
                        tg.start_soon(put, index)
                        await anyio.sleep(0.003)
    finally:
        await _ensure_redis()
    assert len(attempts) == 400  # every operation succeeded
    assert max(attempts.values()) > 1, "no operation met the restart"
    # `shutdown nosave` drops what the old server held; everything sent after it must be there.
    after = [index for index in started if started[index] > down_at]
    assert after
    client = redis.asyncio.Redis.from_url(URL)
    try:
        stored = await client.mget([f"{prefix}:cache:r{index}" for index in after])
    finally:
        await client.aclose()
    assert stored == [str(index).encode() for index in after]


async def test_server_errors_are_not_retryable(
    source: RedisSource, raw: redis.asyncio.Redis, prefix: str
) -> None:
    await raw.hset(f"{prefix}:cache:h", "field", "value")
    with pytest.raises(DataSourceError, match="WRONGTYPE") as caught:
        await source.execute(Operation(action="cache_get", key="h"))
    assert (caught.value.retryable, caught.value.data_source) == (False, "r")


async def test_unreachable_server_is_retryable(prefix: str) -> None:
    source = RedisSource(
        SourceSpec(
            name="gone",
            type="redis",
            url="redis://127.0.0.1:1/0",  # nothing listens on port 1
            options=RedisSource.Options(key_prefix=prefix, connect_timeout=1.0),
            tables={},
        )
    )
    with pytest.raises(DataSourceError, match="redis source 'gone' is unavailable") as caught:
        await source.open()
    assert (caught.value.retryable, caught.value.data_source) == (True, "gone")
    await source.close()


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (redis.ConnectionError("reset"), True),
        (redis.TimeoutError("slow"), True),
        (redis.BusyLoadingError("LOADING"), True),
        (redis.ReadOnlyError("READONLY"), True),
        (redis.AuthenticationError("WRONGPASS"), False),
        (redis.ResponseError("WRONGTYPE"), False),
        (redis.DataError("bad"), False),
    ],
)
async def test_error_mapping(error: Exception, retryable: bool) -> None:
    mapped = map_error(error, "r")
    assert (mapped.retryable, mapped.data_source, mapped.__cause__) == (retryable, "r", error)


# -- every Table method on an owner-scoped table ---------------------------------------------

ALICE = "tok-redis-alice"  # company acme
BOB = "tok-redis-bob"  # company globex


@asynccontextmanager
async def serving_tables(prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    """The data routes of an owner-scoped table on Redis, behind bearer tokens."""
    config = {
        "engine": {"journal": "memory"},
        "datasources": {"r": {"type": "redis", "url": URL, "key_prefix": prefix}},
        "tables": {
            "items": {
                "columns": {"name": "text", "qty": "int"},
                "owner": "cid",
                "public_read": True,
                "route": "api/r",
                "data_source": "r",
            }
        },
        "auth": {
            "tokens": {
                ALICE: {"uid": "u-alice", "cid": "acme", "uname": "alice"},
                BOB: {"uid": "u-bob", "cid": "globex", "uname": "bob"},
            }
        },
    }
    app = Wf78Middleware(Starlette(), engine=Engine(config))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_every_koa78_method_on_an_owner_scoped_redis_table(prefix: str) -> None:
    async with serving_tables(prefix) as client:

        async def call(method: str, token: str | None = ALICE, **params: Any) -> httpx.Response:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            return await client.post(f"/api/r/items/{method}", json=params, headers=headers)

        async def ok(method: str, token: str | None = ALICE, **params: Any) -> Any:
            response = await call(method, token, **params)
            assert response.status_code == 200, (method, response.text)
            body = response.json()
            assert (body["res"], body["errmsg"]) == (0, ""), body
            return body["back"]

        async def refused(method: str, status: int, word: str, **params: Any) -> None:
            response = await call(method, **params)
            assert response.status_code == status, (method, response.text)
            body = response.json()
            assert set(body) == {"res", "errmsg", "kind", "back"} and body["res"] == -status
            assert word in body["errmsg"], body

        bob_row, bob_sku = await ok("mAddMany", BOB, pars=[["bob's", 1], ["bob's sku", 2]])
        bob_rows = await ok("get", BOB, cols="id,name,qty,cid,upby", order="id")
        pen = await ok("mAdd", pars=["pen", 3])
        cup, ink = await ok("mAddMany", pars=[["cup", 7], ["ink", 2]])
        # Existing ids are skipped; the count says how many rows were new.
        assert await ok("mAddManyByid", rows=[{"id": "9001", "name": "sku"}]) == 1
        assert await ok("mAddManyByid", pars=["again", 0, "9001", "x", 0, pen]) == 0
        # Each tenant has its own ids: Bob's id is one Alice does not have yet.
        assert await ok("mAddManyByid", rows=[{"id": bob_sku, "name": "mine"}]) == 1
        assert await ok("mAddManyByid", rows=[{"id": bob_sku, "name": "again"}]) == 0

        assert await ok("mUpdate", mid=pen, values={"qty": 4}) == 1
        assert await ok("mUpdateByid", values={"id": pen, "qty": 5}) == 1
        # An id only another tenant has answers as a missing one.
        await refused("mUpdate", 404, "no row", mid=bob_row, values={"qty": 0})
        await refused("mUpdate", 404, "no row", mid="12345", values={"qty": 0})
        changes = [{"id": pen, "qty": 6}, {"id": cup, "qty": 8}, {"id": bob_row, "qty": 0}]
        assert await ok("mUpdateMany", rows=changes) == 2
        assert await ok("mUpdateMany", pars=[["ink", 9, ink], ["nope", 0, "777"]]) == 1
        assert await ok("mUpdate", mid=bob_sku, values={"qty": 3}) == 1  # her own row

        fig = await ok("m", pars=["fig", 1])
        assert await ok("m", mid=fig, pars=["fig", 2]) == fig
        assert await ok("mByid", mid="9002", values={"name": "nib"}) == "9002"
        assert await ok("mByid", mid="9002", values={"name": "nib", "qty": 1}) == "9002"
        # mByid of Bob's id inserts Alice's own row under it, then updates that one.
        assert await ok("mByid", mid=bob_row, values={"name": "oak"}) == bob_row
        assert await ok("mByid", mid=bob_row, values={"name": "oak", "qty": 4}) == bob_row
        assert await ok("mByFirstField", pars=["pen", 10]) == pen

        found = await ok("get", cols="id,name,qty,cid", order="name")
        assert found == [
            {"id": cup, "name": "cup", "qty": 8, "cid": "acme"},
            {"id": fig, "name": "fig", "qty": 2, "cid": "acme"},
            {"id": ink, "name": "ink", "qty": 9, "cid": "acme"},
            {"id": bob_sku, "name": "mine", "qty": 3, "cid": "acme"},
            {"id": "9002", "name": "nib", "qty": 1, "cid": "acme"},
            {"id": bob_row, "name": "oak", "qty": 4, "cid": "acme"},
            {"id": pen, "name": "pen", "qty": 10, "cid": "acme"},
            {"id": "9001", "name": "sku", "qty": None, "cid": "acme"},
        ]
        page = await ok("get", total=1, order="-qty", getnumber=2, cols="name")
        assert page == {"rows": [{"name": "pen"}, {"name": "ink"}], "total": 8}
        assert await ok("get", where={"id": bob_row}, cols="name") == [{"name": "oak"}]
        public = await ok("getbyBcid", None, bcid="globex", total=1, cols="name", order="name")
        assert public == {"rows": [{"name": "bob's"}, {"name": "bob's sku"}], "total": 2}
        await refused("mUpdateElkByid", 400, "search source", mid=pen, values={"name": "x"})

        assert await ok("mdel", mid=fig) == 1
        assert await ok("mdel", mid=bob_row) == 1  # her own
        await refused("mdel", 404, "no row", mid=bob_row)
        assert await ok("mdelmany", ids=[cup, "9001", bob_row, bob_sku, "778"]) == 3
        assert [row["name"] for row in await ok("get", order="name")] == ["ink", "nib", "pen"]
        # Bob's rows went through every write of Alice's under their ids unchanged.
        assert await ok("get", BOB, cols="id,name,qty,cid,upby", order="id") == bob_rows
        assert [row["name"] for row in bob_rows] == ["bob's", "bob's sku"]


async def test_two_tenants_hold_one_text_id_through_table(prefix: str) -> None:
    """Through ``Table`` each tenant has its own ids: both insert ``sku-1``, and every by-id
    method of one reaches its own row only."""
    config = {
        "engine": {"journal": "memory"},
        "datasources": {"r": {"type": "redis", "url": URL, "key_prefix": prefix}},
        "tables": {
            "skus": {
                "columns": {"name": "text", "qty": "int"},
                "owner": "cid",
                "id": "text",
                "data_source": "r",
            }
        },
    }
    async with Engine(config) as engine:
        alice = engine.table("skus", identity=Identity(uid="u1", cid="acme", uname="alice"))
        bob = engine.table("skus", identity=Identity(uid="u2", cid="globex", uname="bob"))
        assert await alice.add({"id": "sku-1", "name": "ink", "qty": 1}) == "sku-1"
        assert await bob.add({"id": "sku-1", "name": "nib", "qty": 2}) == "sku-1"
        assert await alice.add_many_by_id([{"id": "sku-1"}, {"id": "sku-2", "qty": 3}]) == 1
        assert await bob.add_many_by_id([{"id": "sku-2", "name": "cap"}]) == 1
        assert await alice.update("sku-1", {"qty": 10}) == 1
        assert await bob.update_many([{"id": "sku-1", "qty": 20}, {"id": "sku-2", "qty": 4}]) == 2
        assert await alice.upsert({"id": "sku-2", "name": "pad"}) == "sku-2"
        assert await bob.upsert({"id": "sku-3", "name": "pen"}) == "sku-3"
        assert await alice.delete("sku-3") == 0
        assert await alice.get(cols="id,name,qty,cid", order="id") == [
            {"id": "sku-1", "name": "ink", "qty": 10, "cid": "acme"},
            {"id": "sku-2", "name": "pad", "qty": 3, "cid": "acme"},
        ]
        assert await bob.get(cols="id,name,qty,cid", order="id") == [
            {"id": "sku-1", "name": "nib", "qty": 20, "cid": "globex"},
            {"id": "sku-2", "name": "cap", "qty": 4, "cid": "globex"},
            {"id": "sku-3", "name": "pen", "qty": None, "cid": "globex"},
        ]
        assert await bob.delete_many(["sku-1", "sku-2"]) == 2
        assert await alice.delete("sku-1") == 1
        assert [row["id"] for row in await alice.get()] == ["sku-2"]
        assert [row["id"] for row in await bob.get()] == ["sku-3"]


async def test_update_many_insert_ignore_and_count(source: RedisSource) -> None:
    async def do(action: str, **fields: Any) -> Any:
        return await source.execute(Operation(action=action, table="items", **fields))

    rows = [
        {"id": "a1", "name": "one", "qty": 1, "cid": "A"},
        {"id": "a2", "name": "two", "qty": 2, "cid": "A"},
        {"id": "b1", "name": "bee", "qty": 3, "cid": "B"},
    ]
    await do("add_many", rows=rows)
    # Each row its own values; the filters keep other owners' rows (and missing ids) out.
    changes = [{"id": "a1", "qty": 10}, {"id": "b1", "qty": 30}, {"id": "zz", "qty": 0}]
    assert await do("update_many", rows=changes, where={"cid": "A"}) == 1
    assert await do("update_many", rows=[{"id": "a2", "name": None, "qty": 20}]) == 1
    assert await do("get", columns=["id", "name", "qty"], order=["id"]) == [
        {"id": "a1", "name": "one", "qty": 10},
        {"id": "a2", "name": None, "qty": 20},
        {"id": "b1", "name": "bee", "qty": 3},
    ]
    # Moving a row to another owner keeps the owner indexes right.
    assert await do("update_many", rows=[{"id": "a2", "cid": "B"}], where={"cid": "A"}) == 1
    assert [row["id"] for row in await do("get", where={"cid": "B"})] == ["a2", "b1"]
    assert await do("update_many", rows=[]) == 0

    assert await do("count") == 3
    assert await do("count", where={"cid": "B"}) == 2
    assert await do("count", where={"cid": "B", "qty": [3, 20]}) == 2
    assert await do("count", where={"qty": []}) == 0
    assert await do("count", where={"id": ["a1", "nope"]}) == 1

    # conflict = "ignore": existing rows (and repeats) are skipped; the count of new rows.
    again = [
        {"id": "a1", "name": "x", "cid": "A"},
        {"id": "c1", "cid": "C"},
        {"id": "c1", "name": "x", "cid": "C"},
    ]
    assert await do("add_many", rows=again, conflict="ignore") == 1
    assert await do("get", where={"id": ["a1", "c1"]}, columns=["name", "cid"]) == [
        {"name": "one", "cid": "A"},
        {"name": None, "cid": "C"},
    ]
    assert await do("add_many", rows=[{"id": "c1", "cid": "C"}], conflict="ignore") == 0
    assert await do("add_many", rows=[], conflict="ignore") == 0

    # With a caller's key, a replay answers the first run's count and writes nothing.
    fresh = [{"id": "k1", "cid": "C"}, {"id": "c1", "cid": "C"}]
    assert await do("add_many", rows=fresh, conflict="ignore", idempotency_key="ins") == 1
    await do("delete", where={"id": "k1"})
    assert await do("add_many", rows=fresh, conflict="ignore", idempotency_key="ins") == 1
    assert await do("get", where={"id": "k1"}) == []
    bump = [{"id": "a1", "qty": 11}]
    assert await do("update_many", rows=bump, where={"cid": "A"}, idempotency_key="up") == 1
    await do("update", values={"cid": "B"}, where={"id": "a1"})
    assert await do("update_many", rows=bump, where={"cid": "A"}, idempotency_key="up") == 1
    assert await do("get", where={"id": "a1"}, columns=["qty", "cid"]) == [{"qty": 11, "cid": "B"}]

    cases: list[tuple[dict[str, Any], str]] = [
        ({"rows": None}, "update_many needs rows"),
        ({"rows": [{"qty": 1}]}, r"rows\[0\] needs an id"),
        ({"rows": [{"id": "a1"}]}, r"rows\[0\] sets no column besides id"),
        ({"rows": [{"id": "a1", "qty": 1}, {"id": "a1", "qty": 2}]}, "appears twice"),
        ({"rows": [{"id": "a1", "bogus": 1}]}, r"unknown column 'bogus' in rows\[0\]"),
        ({"rows": [{"id": "a1", "qty": "x"}]}, r"rows\[0\].qty of table 'items' is not"),
        ({"rows": [{"id": "a1", "qty": 1}], "where": {"id": "a1"}}, "not from where"),
        ({"rows": ["a1"]}, r"rows\[0\] of table 'items' must be an object"),
    ]
    for fields, message in cases:
        with pytest.raises(InvalidOperation, match=message) as caught:
            await do("update_many", **fields)
        assert caught.value.data_source == "r"


async def test_a_sharded_table_on_redis_is_refused_at_start(prefix: str) -> None:
    config = {
        "datasources": {"r": {"type": "redis", "url": URL, "key_prefix": prefix}},
        "tables": {
            "logs": {
                "columns": {"msg": "text"},
                "data_source": "r",
                "sharding": {"type": "daily"},
            }
        },
    }
    with pytest.raises(ConfigError, match=r"tables\.logs\.sharding") as caught:
        async with Engine(config):
            pass
    assert "cannot hold the shards of table 'logs'" in str(caught.value)
