"""Mirrors and the transactional outbox, on real SQLite files and the real MariaDB as primaries,
the real Redis as cache mirror and osmem-server as search mirror."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pymysql
import pytest
import redis
from anyio.streams.buffered import BufferedByteReceiveStream
from elasticsearch import AsyncElasticsearch
from osmem_server import OsmemServer

from tests.conftest import Faults
from tests.esutil import JsonNode
from wf78_core import ConfigError, DataSourceError, Engine, Identity, Operation, Table
from wf78_core.data.mirrors import Relay, cache_key

NODE_CLASS = f"{JsonNode.__module__}.{JsonNode.__qualname__}"
MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "database": "test"}
REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[2]
ALICE = Identity(uid="u-alice", cid="acme", uname="alice")
# Owner "acme corp" holds the word "acme": an analysed match would leak it to alice.
BOB = Identity(uid="u-bob", cid="acme corp", uname="bob")

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite, aiomysql and the search client run on asyncio only


@pytest.fixture(scope="module")
def osmem() -> Iterator[OsmemServer]:
    server = OsmemServer.start(japanese=False)
    yield server
    server.close()
    if server.process.stdout is not None:
        server.process.stdout.close()


@pytest.fixture
def es_url(osmem: OsmemServer) -> Iterator[str]:
    """A fresh clone of the empty cluster per test: no index is shared."""
    with osmem.clone() as clone:
        yield clone.url


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Setup:
    """One primary backend with this test's own names (tables, outbox, keys)."""

    backend: str
    path: Path
    suffix: str

    @property
    def items(self) -> str:
        return f"m{self.suffix}_items"  # lower-case: it is also the search index name

    @property
    def outbox(self) -> str:
        return f"m{self.suffix}_outbox"

    @property
    def prefix(self) -> str:
        return f"wf78test{self.suffix}"

    def primary(self) -> dict[str, Any]:
        if self.backend == "sqlite":
            return {
                "type": "sqlite",
                "url": f"sqlite:///{self.path / 'primary.db'}",
                "outbox_table": self.outbox,
            }
        return {
            "type": "mysql",
            "url": MYSQL_URL,
            "create_tables": True,
            "maxsize": 4,
            "outbox_table": self.outbox,
        }

    def config(
        self,
        es_url: str | None,
        *,
        redis_url: str | None = REDIS_URL,
        **engine: Any,
    ) -> dict[str, Any]:
        datasources: dict[str, Any] = {"db": self.primary()}
        table: dict[str, Any] = {
            "columns": {"name": "text", "qty": "int"},
            "owner": "cid",
            "data_source": "db",
        }
        if es_url is not None:
            datasources["search"] = {
                "type": "elasticsearch",
                "url": es_url,
                "node_class": NODE_CLASS,
                "refresh": "true",
                "request_timeout": 2.0,
            }
            table["search_mirror"] = "search"
        if redis_url is not None:
            datasources["cache"] = {
                "type": "redis",
                "url": redis_url,
                "key_prefix": self.prefix,
                "socket_timeout": 1.0,
                "connect_timeout": 1.0,
            }
            table["cache_mirror"] = "cache"
        settings = {"drain_timeout": 2.0, "retry_backoff": 0.01, "retry_backoff_max": 0.2}
        settings.update(engine)
        return {"engine": settings, "datasources": datasources, "tables": {self.items: table}}

    def redis_key(self, owner: str, row_id: str) -> str:
        return f"{self.prefix}:cache:{cache_key(self.items, owner, row_id)}"

    def cleanup(self) -> None:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}:*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
        if self.backend != "mysql":
            return
        connection = pymysql.connect(**MYSQL)
        try:
            with connection.cursor() as cursor:
                for table in (self.items, self.outbox):
                    cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
        finally:
            connection.close()


@pytest.fixture(params=["sqlite", "mysql"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    made = Setup(request.param, tmp_path, uuid4().hex[:8])
    yield made
    made.cleanup()


@pytest.fixture
def sqlite_setup(tmp_path: Path) -> Iterator[Setup]:
    made = Setup("sqlite", tmp_path, uuid4().hex[:8])
    yield made
    made.cleanup()


@asynccontextmanager
async def search_client(url: str) -> AsyncIterator[AsyncElasticsearch]:
    client = AsyncElasticsearch(url, node_class=JsonNode)
    try:
        yield client
    finally:
        await client.close()


def relay_of(engine: Engine) -> Relay:
    assert engine.mirrors is not None
    return engine.mirrors


async def flushed(engine: Engine, within: float = 15.0) -> None:
    """Wait, without polling, until the relay applied everything committed so far."""
    with anyio.fail_after(within):
        await relay_of(engine).flush()


async def outbox_count(engine: Engine) -> int:
    result = await engine.submit(Operation(action="outbox_count", data_source="db"))
    count: int = result.value
    return count


async def mirror_doc(engine: Engine, table: str, row_id: str) -> dict[str, Any] | None:
    """The search mirror's document ``row_id`` (a real-time get), or None."""
    found = await engine.submit(
        Operation(action="get", table=table, data_source="search", where={"id": row_id})
    )
    return found.value[0] if found.value else None


# -- configuration ------------------------------------------------------------------------


async def test_mirror_keys_are_validated_with_their_paths() -> None:
    config = {
        "datasources": {
            "db": {"type": "sqlite", "url": "sqlite:///x.db"},
            "search": {"type": "elasticsearch", "url": "http://127.0.0.1:9"},
            "cache": {"type": "redis"},
        },
        "tables": {
            "wrong_types": {
                "columns": ["a"],
                "data_source": "db",
                "search_mirror": "cache",
                "cache_mirror": "search",
            },
            "unknown": {"columns": ["a"], "data_source": "db", "search_mirror": "nowhere"},
            "no_primary": {"columns": ["a"], "cache_mirror": "cache"},
            "Upper": {"columns": ["a"], "data_source": "db", "search_mirror": "search"},
            "self_mirror": {"columns": ["a"], "data_source": "cache", "cache_mirror": "cache"},
            "bad_ttl": {"columns": ["a"], "data_source": "db", "cache_ttl": 0},
        },
    }
    problems = {problem.path: problem.message for problem in await Engine.check(config)}
    assert (
        "type 'redis'; a search_mirror must be of type 'elasticsearch'"
        in (problems["tables.wrong_types.search_mirror"])
    )
    assert "must be of type 'redis'" in problems["tables.wrong_types.cache_mirror"]
    assert "unknown data source 'nowhere'" in problems["tables.unknown.search_mirror"]
    assert "needs data_source naming its primary" in problems["tables.no_primary.data_source"]
    assert "must be lower-case" in problems["tables.Upper.search_mirror"]
    assert "cannot be the table's own data_source" in problems["tables.self_mirror.cache_mirror"]
    assert "cache_ttl must be positive" in problems["tables.bad_ttl"]


async def test_a_primary_without_an_outbox_is_refused_at_start(
    faults: Faults, sqlite_setup: Setup
) -> None:
    config = sqlite_setup.config(None)
    config["datasources"]["db"] = {"type": "faulty"}
    with pytest.raises(ConfigError, match=r"tables\.m\w+_items\.data_source: .* keeps no outbox"):
        async with Engine(config, plugins=[faults]):
            pass


async def test_no_relay_without_mirrors(tmp_path: Path) -> None:
    config = {
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{tmp_path / 'x.db'}"}},
        "tables": {"plain": {"columns": ["a"], "data_source": "db"}},
    }
    async with Engine(config) as engine:
        assert engine.mirrors is None
        assert await engine.mirror_stats() is None
        await engine.table("plain").add({"a": "x"})
    with sqlite3_connect(tmp_path / "x.db") as connection:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert "wf78_outbox" not in names  # no mirror, no outbox table


def sqlite3_connect(path: Path) -> Any:
    import sqlite3

    return sqlite3.connect(path)


# -- writes reach the mirrors ---------------------------------------------------------------


async def test_writes_reach_the_search_mirror_and_invalidate_the_cache(
    setup: Setup, es_url: str
) -> None:
    async with Engine(setup.config(es_url)) as engine:
        alice = engine.table(setup.items, identity=ALICE)
        pen = await alice.add({"name": "pen", "qty": 1})
        ink, cap = await alice.add_many([{"name": "ink", "qty": 2}, ["cap", 3]])
        await flushed(engine)
        doc = await mirror_doc(engine, setup.items, pen)
        assert doc is not None
        assert {k: doc[k] for k in ("name", "qty", "cid", "upby")} == {
            "name": "pen",
            "qty": 1,
            "cid": "acme",
            "upby": "alice",
        }
        assert (await mirror_doc(engine, setup.items, cap) or {}).get("qty") == 3

        # A read by id fills the cache; the next one is served from it.
        cache = redis.Redis.from_url(REDIS_URL)
        try:
            assert await alice.get(where={"id": pen}) == await alice.get(where={"id": pen})
            stats = await engine.mirror_stats()
            assert stats is not None and (stats.cache_misses, stats.cache_hits) == (1, 1)
            assert cache.exists(setup.redis_key("acme", pen))

            # An update reaches the mirror as a partial update with @timestamp and
            # invalidates the cached row; the writer reads its own write at once.
            assert await alice.update(pen, {"qty": 10}) == 1
            assert (await alice.get(where={"id": pen}, cols="qty")) == [{"qty": 10}]
            await flushed(engine)
            assert not cache.exists(setup.redis_key("acme", pen))
            doc = await mirror_doc(engine, setup.items, pen)
            assert doc is not None and doc["qty"] == 10 and "@timestamp" in doc
            assert doc["name"] == "pen"  # partial: the other fields stay

            # Writes of uncertain reach send "sync": the relay reads the row back.
            await alice.update_many([{"id": ink, "qty": 20}])
            await alice.upsert({"id": "sku-1", "name": "nib", "qty": 7})
            assert await alice.add_many_by_id([{"id": "sku-2", "name": "tip"}]) == 1
            await flushed(engine)
            assert (await mirror_doc(engine, setup.items, ink) or {}).get("qty") == 20
            assert (await mirror_doc(engine, setup.items, "sku-1") or {}).get("name") == "nib"
            assert (await mirror_doc(engine, setup.items, "sku-2") or {}).get("name") == "tip"

            # Deletes remove the documents and the cached rows.
            await alice.get(where={"id": cap})
            assert cache.exists(setup.redis_key("acme", cap))
            assert await alice.delete(pen) == 1
            assert await alice.delete_many([ink, cap, "sku-2"]) == 3
            await flushed(engine)
            for gone in (pen, ink, cap, "sku-2"):
                assert await mirror_doc(engine, setup.items, gone) is None
            assert not cache.exists(setup.redis_key("acme", cap))
        finally:
            cache.close()
        assert await alice.get(kind="search", cols="id") == [{"id": "sku-1"}]
        stats = await engine.mirror_stats()
        assert stats is not None
        assert stats.pending == 0 and stats.skipped == 0 and stats.last_error is None
        assert stats.applied == stats.acknowledged > 0


async def test_another_owners_row_changes_no_mirror(setup: Setup, es_url: str) -> None:
    async with Engine(setup.config(es_url)) as engine:
        alice = engine.table(setup.items, identity=ALICE)
        bob = engine.table(setup.items, identity=BOB)
        pen = await alice.add({"name": "pen", "qty": 1})
        await flushed(engine)
        before = await outbox_count(engine)
        # Bob's update and delete of alice's row change nothing: no entry is stored.
        assert await bob.update(pen, {"qty": 99}) == 0
        assert await bob.delete(pen) == 0
        assert await outbox_count(engine) == before == 0
        # A bulk delete naming it sends "sync", which leaves the document as the row is.
        assert await bob.delete_many([pen]) == 0
        await flushed(engine)
        doc = await mirror_doc(engine, setup.items, pen)
        assert doc is not None and doc["qty"] == 1 and doc["cid"] == "acme"


# -- the outbox is part of the primary's transaction --------------------------------------


async def test_a_failed_write_leaves_no_outbox_entry(setup: Setup, es_url: str) -> None:
    config = setup.config(es_url, redis_url=None)
    async with Engine(config) as engine:
        relay = relay_of(engine)
        await flushed(engine)

        def add(row_id: str) -> Operation:
            values = {"id": row_id, "name": row_id, "cid": "acme"}
            entries = relay.tables[setup.items].entries("index", [values], owner="acme")
            return Operation(
                action="add", table=setup.items, data_source="db", values=values, outbox=entries
            )

        # Stop the relay taking entries, so the outbox shows what the writes stored.
        async with hold_relay(relay):
            await engine.submit(add("dup"))
            results: dict[str, Any] = {}

            async def write(row_id: str) -> None:
                try:
                    results[row_id] = (await engine.submit(add(row_id))).value
                except DataSourceError as error:
                    results[row_id] = error

            # One group-commit batch: the duplicate rolls back alone, entries included.
            async with anyio.create_task_group() as group:
                for row_id in ("a1", "dup", "a2", "a3"):
                    group.start_soon(write, row_id)
            assert isinstance(results["dup"], DataSourceError)
            assert "duplicate" in str(results["dup"])
            assert [results[k] for k in ("a1", "a2", "a3")] == ["a1", "a2", "a3"]
            fetched = await engine.submit(
                Operation(action="outbox_fetch", data_source="db", limit=100)
            )
            assert sorted(item["payload"]["id"] for item in fetched.value) == [
                "a1",
                "a2",
                "a3",
                "dup",
            ]
        await flushed(engine)
        assert await outbox_count(engine) == 0
        for row_id in ("a1", "a2", "a3", "dup"):
            assert await mirror_doc(engine, setup.items, row_id) is not None


@asynccontextmanager
async def hold_relay(relay: Relay) -> AsyncIterator[None]:
    """Keep the relay from applying anything inside the block (its submit waits)."""
    gate = anyio.Event()
    original = relay.submit

    async def held(op: Operation, priority: int | None = 2) -> Any:
        await gate.wait()
        return await original(op, priority)

    relay.submit = held  # type: ignore[method-assign]
    try:
        yield
    finally:
        relay.submit = original  # type: ignore[method-assign]
        gate.set()


async def test_grouped_inserts_store_every_entry(setup: Setup, es_url: str) -> None:
    async with Engine(setup.config(es_url)) as engine:
        alice = engine.table(setup.items, identity=ALICE)
        async with hold_relay(relay_of(engine)):
            ids: list[str] = []

            async def add(number: int) -> None:
                ids.append(await alice.add({"name": f"n{number}", "qty": number}))

            async with anyio.create_task_group() as group:
                for number in range(40):
                    group.start_soon(add, number)
            assert await outbox_count(engine) == 80  # one search and one cache entry each
        await flushed(engine)
        total = await alice.get(kind="search", total=True, number=0)
        assert total == ([], 40)
        assert await outbox_count(engine) == 0


# -- crash recovery ------------------------------------------------------------------------

CRASHING_WRITER = textwrap.dedent(
    """
    import json, sys
    import anyio
    from wf78_core import Engine, Identity

    async def main():
        config, table = json.loads(sys.argv[1]), sys.argv[2]
        async with Engine(config) as engine:
            items = engine.table(table, identity=Identity(cid="acme", uname="alice"))
            ids = [await items.add({"name": f"row{n}", "qty": n}) for n in range(20)]
            await items.update(ids[0], {"qty": 100})
            await items.delete(ids[1])
            relay = engine.mirrors
            # The search mirror is down and retried; the cache lane has applied all 22.
            await relay.until(lambda: relay.retries >= 3 and relay.acknowledged == 22)
            print(json.dumps(ids), flush=True)
            await anyio.sleep_forever()

    anyio.run(main)
    """
)


async def test_an_interrupted_mirror_update_completes_after_a_crash(
    sqlite_setup: Setup, es_url: str, tmp_path: Path
) -> None:
    setup = sqlite_setup
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the mirror is down
    script = tmp_path / "writer.py"
    script.write_text(CRASHING_WRITER, encoding="utf-8")
    async with await anyio.open_process(
        [sys.executable, str(script), json.dumps(setup.config(dead)), setup.items],
        cwd=tmp_path,  # its journal and files stay in the test's folder
        stderr=subprocess.DEVNULL,
    ) as child:
        try:
            assert child.stdout is not None
            with anyio.fail_after(60):
                line = await BufferedByteReceiveStream(child.stdout).receive_until(b"\n", 1 << 16)
            ids = json.loads(line)
        finally:
            child.kill()  # SIGKILL, a crash: no shutdown, no drain
            await child.wait()
    assert child.returncode == -signal.SIGKILL

    async with Engine(setup.config(es_url)) as engine:
        await flushed(engine)  # the start-up pass applied what the crash left
        stats = await engine.mirror_stats()
        assert stats is not None and stats.pending == 0 and stats.skipped == 0
        # 20 index entries, one update and one delete; the cache lane had kept up.
        assert stats.applied == 22
    async with search_client(es_url) as client:
        await client.indices.refresh(index=setup.items)
        found = await client.search(index=setup.items, body={"size": 100})
        docs = {hit["_source"]["id"]: hit["_source"] for hit in found["hits"]["hits"]}
        assert set(docs) == set(ids) - {ids[1]}
        assert docs[ids[0]]["qty"] == 100
        for row_id in ids[2:]:
            # The documents of an owned table are named by owner and id.
            document = await client.get(
                index=setup.items, id=f"{len(ALICE.cid)}:{ALICE.cid}:{row_id}"
            )
            assert document["_version"] == 1  # none applied twice


async def test_a_mirror_down_at_shutdown_is_caught_up_by_the_next_start(
    setup: Setup, es_url: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with Engine(setup.config(dead)) as engine:
        alice = engine.table(setup.items, identity=ALICE)
        ids = [await alice.add({"name": f"r{n}", "qty": n}) for n in range(5)]
        relay = relay_of(engine)
        await failed_on(relay)
        with anyio.fail_after(15):  # the cache lane goes on while the search one waits
            await relay.until(lambda: relay.acknowledged == 5)
        stats = await engine.mirror_stats()
        assert stats is not None
        assert stats.pending_by_mirror == {"search": 5, "cache": 0}
        assert stats.last_error is not None
    async with Engine(setup.config(es_url)) as engine:
        await flushed(engine)
        alice = engine.table(setup.items, identity=ALICE)
        rows, total = await alice.get(kind="search", cols="id", order="qty", total=True)
        assert total == 5 and [row["id"] for row in rows] == ids


async def failed_on(relay: Relay, within: float = 15.0) -> None:
    """Wait, without polling, until the relay has retried a mirror that is down."""
    with anyio.fail_after(within):
        await relay.until(lambda: relay.retries >= 1)


# -- reads -------------------------------------------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis(free_port())
    server.start()
    yield server
    server.stop()


class PrivateRedis:
    """A redis-server of this test's own, so it can be stopped (the shared one never is)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


async def test_cache_reads_fall_back_to_the_primary_when_redis_is_down(
    setup: Setup, private_redis: PrivateRedis
) -> None:
    config = setup.config(None, redis_url=private_redis.url)
    async with Engine(config) as engine:
        alice = engine.table(setup.items, identity=ALICE)
        pen = await alice.add({"name": "pen", "qty": 1})
        await flushed(engine)
        first = await alice.get(where={"id": pen})
        assert await alice.get(where={"id": pen}) == first  # a cache hit
        relay = relay_of(engine)
        assert (relay.cache_misses, relay.cache_hits, relay.cache_fallbacks) == (1, 1, 0)

        private_redis.stop()
        # Reads by id still succeed, from the primary; writes still commit.
        assert await alice.get(where={"id": pen}) == first
        assert relay.cache_fallbacks == 1
        assert await alice.update(pen, {"qty": 2}) == 1
        assert await alice.get(where={"id": pen}, cols=["qty"]) == [{"qty": 2}]
        await failed_on(relay)
        stats = await engine.mirror_stats()
        assert stats is not None and stats.pending_by_mirror == {"cache": 1}

        # The invalidation waited for Redis, and is applied once it is back.
        await anyio.to_thread.run_sync(private_redis.start)
        await flushed(engine)
        assert await outbox_count(engine) == 0
        assert await alice.get(where={"id": pen}, cols="qty") == [{"qty": 2}]
        assert await alice.get(where={"id": pen}, cols="qty") == [{"qty": 2}]
        assert relay.cache_hits >= 2


async def test_read_through_keys_include_the_owner(setup: Setup) -> None:
    async with Engine(setup.config(None)) as engine:
        alice = engine.table(setup.items, identity=ALICE)
        bob = engine.table(setup.items, identity=BOB)
        pen = await alice.add({"name": "pen", "qty": 1})
        await flushed(engine)
        assert len(await alice.get(where={"id": pen})) == 1  # cached for alice
        assert await bob.get(where={"id": pen}) == []  # bob's key: a miss, and no row
        assert await bob.get(where={"id": pen}) == []
        client = redis.Redis.from_url(REDIS_URL)
        try:
            assert client.exists(setup.redis_key("acme", pen))
            assert not client.exists(setup.redis_key("acme corp", pen))
        finally:
            client.close()


async def test_search_reads_hit_the_mirror_with_the_owner_filter(setup: Setup, es_url: str) -> None:
    async with Engine(setup.config(es_url, redis_url=None)) as engine:
        alice = engine.table(setup.items, identity=ALICE)
        bob = engine.table(setup.items, identity=BOB)
        assert await alice.get(kind="search") == []  # no index yet: nothing, not an error
        pen = await alice.add({"name": "blue pen", "qty": 1})
        await alice.add({"name": "red ink", "qty": 2})
        bobs = await bob.add({"name": "green pen", "qty": 3})
        await flushed(engine)

        rows = await alice.get(kind="search", order="-qty", cols="name,cid")
        assert rows == [{"name": "red ink", "cid": "acme"}, {"name": "blue pen", "cid": "acme"}]
        assert await bob.get(kind="search", cols="name") == [{"name": "green pen"}]
        # Even by id, and through a query naming the other owner, the filter holds.
        assert await alice.get(kind="search", where={"id": bobs}) == []
        assert await alice.search({"term": {"cid.keyword": "acme corp"}}) == []
        hits, total = await alice.search("pen", cols="id", total=True)
        assert (hits, total) == ([{"id": pen}], 1)
        assert await alice.search("pen", where={"qty": 2}) == []

        # The row is only in the primary: the mirror answered these reads.
        primary = await engine.submit(
            Operation(action="get", table=setup.items, data_source="db", where={"id": pen})
        )
        assert primary.data_source == "db" and len(primary.value) == 1
        assert engine.stats().sources[1].name == "search"
        assert engine.stats().sources[1].ops > 0

        # update_search_doc goes to the mirror, still owner-checked.
        assert await bob.update_search_doc(pen, {"name": "stolen"}) == 0
        assert await alice.update_search_doc(pen, {"name": "blue pen v2"}) == 1
        assert (await mirror_doc(engine, setup.items, pen) or {}).get("name") == "blue pen v2"


async def test_memory_primary_keeps_an_outbox(es_url: str) -> None:
    config = {
        "engine": {"drain_timeout": 2.0},
        "datasources": {
            "mem": {"type": "memory"},
            "search": {"type": "elasticsearch", "url": es_url, "node_class": NODE_CLASS},
        },
        "tables": {"notes": {"columns": ["body"], "data_source": "mem", "search_mirror": "search"}},
    }
    async with Engine(config) as engine:
        notes: Table = engine.table("notes")
        note = await notes.add({"body": "hello"})
        await flushed(engine)
        assert (await mirror_doc(engine, "notes", note) or {}).get("body") == "hello"
        assert await notes.delete(note) == 1
        await flushed(engine)
        assert await mirror_doc(engine, "notes", note) is None
