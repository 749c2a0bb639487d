"""The Elasticsearch adapter against osmem-server: actions, grouped bulk writes, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from elasticsearch import AsyncElasticsearch
from osmem_server import OsmemServer

from tests.esutil import JsonNode, plain_media_type
from wf78_core import Engine, Identity
from wf78_core.definitions import Operation
from wf78_core.errors import ConfigError, DataSourceError, InvalidOperation
from wf78_core.plugin.datasource import SourceSpec, TableSchema, load_factory
from wf78_core.plugin.registry import Registry
from wf78_elasticsearch import ElasticsearchSource, PartialWrite, wf78_register_datasources
from wf78_elasticsearch.guards import ATTEMPTS

NODE_CLASS = f"{JsonNode.__module__}.{JsonNode.__qualname__}"


def _stop(server: OsmemServer) -> None:
    server.close()
    # OsmemServer.close leaves the stdout pipe open (a ResourceWarning at collection).
    if server.process.stdout is not None:
        server.process.stdout.close()


@pytest.fixture(scope="module")
def server() -> Iterator[OsmemServer]:
    server = OsmemServer.start(japanese=False)
    yield server
    _stop(server)


@pytest.fixture
def url(server: OsmemServer) -> Iterator[str]:
    """A fresh clone of the (empty) base cluster for each test: no index is shared."""
    with server.clone() as clone:
        yield clone.url


def make_source(
    url: str, tables: dict[str, TableSchema] | None = None, **options: Any
) -> ElasticsearchSource:
    options.setdefault("node_class", NODE_CLASS)
    return ElasticsearchSource(
        SourceSpec(
            name="search", type="elasticsearch", url=url, options=options, tables=tables or {}
        )
    )


# A declared table: its text columns filter and sort on their .keyword sub-fields.
OWNED = {"docs": TableSchema(name="docs", columns={"id": "text", "cid": "text", "n": "int"})}
# A declared table with an owner column: each owner has its own ids.
KEYED = {
    "items": TableSchema(
        name="items",
        columns={"id": "text", "cid": "text", "tag": "text", "n": "int"},
        owner="cid",
    )
}


@asynccontextmanager
async def opened(
    url: str, tables: dict[str, TableSchema] | None = None, **options: Any
) -> AsyncIterator[ElasticsearchSource]:
    """An open source without its bulk loop: every write is its own bulk request."""
    source = make_source(url, tables, **options)
    await source.open()
    try:
        yield source
    finally:
        await source.close()


@asynccontextmanager
async def running(
    url: str, tables: dict[str, TableSchema] | None = None, **options: Any
) -> AsyncIterator[ElasticsearchSource]:
    """An open source with its bulk loop running, as the engine starts it."""
    async with opened(url, tables, **options) as source, anyio.create_task_group() as tg:
        await tg.start(source.run)
        yield source
        tg.cancel_scope.cancel()


def op(action: str, table: str | None = "docs", **fields: Any) -> Operation:
    return Operation(action=action, table=table, **fields)


async def refresh(source: ElasticsearchSource, index: str = "docs") -> None:
    await source.client.indices.refresh(index=index)


# -- registration and options ----------------------------------------------------------


def test_registers_the_elasticsearch_type() -> None:
    registry: Registry[Any] = Registry("data-source type")
    wf78_register_datasources(registry=registry)
    assert load_factory(registry["elasticsearch"]) is ElasticsearchSource


def test_node_class_helper_rewrites_only_compatibility_media_types() -> None:
    compatible = "application/vnd.elasticsearch+json; compatible-with=9"
    assert plain_media_type(compatible) == "application/json"
    assert plain_media_type("application/vnd.elasticsearch+x-ndjson; compatible-with=9") == (
        "application/x-ndjson"
    )
    assert plain_media_type("text/plain") == "text/plain"


@pytest.mark.parametrize(
    ("url", "options", "expected"),
    [
        (None, {}, "datasources.search.url: expected 'http://host:9200'"),
        ("localhost:9200", {}, "datasources.search.url: expected an http:// or https:// URL"),
        ("http://h:9200", {"max_bulk": 0}, "max_bulk must be >= 1"),
        ("http://h:9200", {"shards": 2}, "datasources.search.shards: unknown key"),
        ("http://h:9200", {"refresh": "sometimes"}, "datasources.search.refresh"),
        ("http://h:9200", {"basic_auth": ["user"]}, "basic_auth must be [user, password]"),
        ("http://h:9200", {"node_class": "tests.esutil.Nope"}, "cannot import node class"),
        ("http://h:9200", {"node_class": "tests.esutil.plain_media_type"}, "not an elastic"),
    ],
)
def test_bad_configuration_is_a_config_error(
    url: str | None, options: dict[str, Any], expected: str
) -> None:
    spec = SourceSpec(name="search", type="elasticsearch", url=url, options=options, tables={})
    with pytest.raises(ConfigError, match=r"^datasources\.search") as caught:
        ElasticsearchSource(spec)
    assert expected in str(caught.value)


def test_concurrency_and_hosts() -> None:
    source = make_source("http://a:9200, https://b:9200", queue_size=100)
    assert source.hosts == ["http://a:9200", "https://b:9200"]
    assert source.concurrency == 100
    assert make_source("http://a:9200").concurrency == 2048


# -- actions -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_add_returns_the_id_and_get_reads_the_document(url: str) -> None:
    async with opened(url) as source:
        new_id = await source.execute(op("add", values={"title": "first", "n": 1}))
        assert isinstance(new_id, str) and new_id.isdigit()
        assert await source.execute(op("add", values={"id": "x1", "title": "second"})) == "x1"

        assert await source.execute(op("get", where={"id": new_id})) == [
            {"id": new_id, "title": "first", "n": 1}
        ]
        assert await source.execute(op("get", where={"id": "x1"}, columns=["id", "n"])) == [
            {"id": "x1", "n": None}
        ]
        assert await source.execute(op("get", where={"id": "nope"})) == []
        # An index never written holds no document either.
        assert await source.execute(op("get", "never", where={"id": "x1"})) == []
        rows = await source.execute(op("get", where={"id": ["x1", "nope", new_id]}))
        assert [row["id"] for row in rows] == ["x1", new_id]


@pytest.mark.anyio
async def test_add_refuses_an_existing_id_and_index_replaces(url: str) -> None:
    async with opened(url) as source:
        await source.execute(op("add", values={"id": "a", "v": 1, "extra": True}))
        with pytest.raises(DataSourceError, match="already exists") as caught:
            await source.execute(op("add", values={"id": "a", "v": 2}))
        assert caught.value.retryable is False
        assert caught.value.data_source == "search"

        assert await source.execute(op("index", values={"id": "a", "v": 3})) == "a"
        assert await source.execute(op("get", where={"id": "a"})) == [{"id": "a", "v": 3}]


@pytest.mark.anyio
async def test_add_many_returns_ids_in_order(url: str) -> None:
    async with opened(url) as source:
        ids = await source.execute(op("add_many", rows=[{"n": 1}, {"id": "two", "n": 2}, {"n": 3}]))
        assert len(ids) == 3 and ids[1] == "two"
        rows = await source.execute(op("get", where={"id": ids}))
        assert [row["n"] for row in rows] == [1, 2, 3]
        assert await source.execute(op("add_many", rows=[])) == []
        assert source.bulks == 1  # one bulk request for the three rows, none for no rows


@pytest.mark.anyio
async def test_add_many_reports_a_partial_write(url: str) -> None:
    async with opened(url) as source:
        await source.execute(op("add", values={"id": "taken"}))
        with pytest.raises(PartialWrite) as caught:
            await source.execute(
                op("add_many", rows=[{"id": "new1"}, {"id": "taken"}, {"id": "new2"}])
            )
        error = caught.value
        assert error.written == ["new1", "new2"]
        assert list(error.failed) == [1]
        # Written rows would be stored twice by sending them again.
        assert error.retryable is False


@pytest.mark.anyio
async def test_update_merges_values_and_adds_a_timestamp(url: str) -> None:
    async with opened(url) as source:
        await source.execute(op("add", values={"id": "u", "title": "old", "n": 1}))
        before = datetime.now(UTC) - timedelta(seconds=1)
        assert await source.execute(op("update", where={"id": "u"}, values={"n": 2})) == 1
        (row,) = await source.execute(op("get", where={"id": "u"}))
        assert row["title"] == "old" and row["n"] == 2
        stamp = datetime.fromisoformat(row["@timestamp"])
        assert stamp.tzinfo is not None
        assert before <= stamp <= datetime.now(UTC) + timedelta(seconds=1)

        assert await source.execute(op("update", where={"id": "ghost"}, values={"n": 1})) == 0
        assert await source.execute(op("update", "never", where={"id": "u"}, values={"n": 1})) == 0
        with pytest.raises(InvalidOperation, match="cannot change the id"):
            await source.execute(op("update", where={"id": "u"}, values={"id": "v"}))


@pytest.mark.anyio
async def test_upsert_creates_then_updates(url: str) -> None:
    async with opened(url) as source:
        assert await source.execute(op("upsert", values={"id": "p", "n": 1, "keep": "yes"})) == "p"
        assert await source.execute(op("upsert", where={"id": "p"}, values={"n": 2})) == "p"
        (row,) = await source.execute(op("get", where={"id": "p"}))
        assert row["n"] == 2 and row["keep"] == "yes" and "@timestamp" in row
        with pytest.raises(InvalidOperation, match="upsert needs"):
            await source.execute(op("upsert", values={"n": 1}))


@pytest.mark.anyio
async def test_delete_and_delete_many_count(url: str) -> None:
    async with opened(url) as source:
        await source.execute(op("add_many", rows=[{"id": str(i)} for i in range(5)]))
        assert await source.execute(op("delete", where={"id": "0"})) == 1
        assert await source.execute(op("delete", where={"id": "0"})) == 0
        assert await source.execute(op("delete_many", where={"id": ["1", "2", "zz"]})) == 2
        assert await source.execute(op("delete_many", where={"id": []})) == 0
        assert await source.execute(op("delete", "never", where={"id": "1"})) == 0
        await refresh(source)
        result = await source.execute(op("search"))
        assert sorted(hit["id"] for hit in result["hits"]) == ["3", "4"]


@pytest.mark.anyio
async def test_get_with_equality_filters(url: str) -> None:
    async with opened(url) as source:
        rows = [{"id": f"r{i}", "n": i, "tag": "even" if i % 2 == 0 else "odd"} for i in range(6)]
        rows[5]["gone"] = True
        await source.execute(op("add_many", rows=rows))
        await refresh(source)

        found = await source.execute(op("get", where={"tag": "even"}, order=["-n"]))
        assert [row["id"] for row in found] == ["r4", "r2", "r0"]
        found = await source.execute(op("get", where={"n": [1, 3, 5]}, order=["n"], limit=2))
        assert [row["id"] for row in found] == ["r1", "r3"]
        found = await source.execute(op("get", where={"n": [1, 3, 5]}, order=["n"], offset=2))
        assert [row["id"] for row in found] == ["r5"]
        found = await source.execute(op("get", where={"tag": "odd", "gone": None}, order=["n"]))
        assert [row["id"] for row in found] == ["r1", "r3"]
        found = await source.execute(op("get", where={"id": "r2", "tag": "even"}))
        assert [row["id"] for row in found] == ["r2"]
        assert len(await source.execute(op("get"))) == 6


@pytest.mark.anyio
async def test_search_with_queries_and_paging(url: str) -> None:
    async with opened(url) as source:
        await source.execute(
            op(
                "add_many",
                rows=[
                    {"id": f"d{i:02}", "n": i, "body": "red fox" if i < 12 else "blue whale"}
                    for i in range(30)
                ],
            )
        )
        await refresh(source)

        page = await source.execute(
            op(
                "search",
                params={"query": {"match": {"body": "fox"}}, "sort": [{"n": "asc"}]},
                offset=5,
                limit=4,
            )
        )
        assert page["total"] == 12
        assert [hit["id"] for hit in page["hits"]] == ["d05", "d06", "d07", "d08"]
        assert page["hits"][0] == {"id": "d05", "n": 5, "body": "red fox"}

        page = await source.execute(op("search", params={"query": {"term": {"n": 20}}}))
        assert page["total"] == 1 and page["hits"][0]["id"] == "d20"

        page = await source.execute(
            op("search", where={"n": [1, 2, 3]}, order=["-n"], columns=["n"])
        )
        assert page["total"] == 3
        assert page["hits"] == [{"id": "d03", "n": 3}, {"id": "d02", "n": 2}, {"id": "d01", "n": 1}]

        # The body's own paging applies when the operation sets none.
        page = await source.execute(op("search", params={"size": 7}))
        assert page["total"] == 30 and len(page["hits"]) == 7


@pytest.mark.anyio
async def test_search_of_a_missing_index_is_not_retryable(url: str) -> None:
    async with opened(url) as source:
        with pytest.raises(DataSourceError, match="index_not_found") as caught:
            await source.execute(op("search", "never"))
        assert caught.value.retryable is False
        with pytest.raises(DataSourceError, match="index_not_found"):
            await source.execute(op("get", "never", where={"n": 1}))


@pytest.mark.anyio
async def test_invalid_operations(url: str) -> None:
    async with opened(url) as source:
        assert await source.execute(op("noop", None)) is None
        bad = [
            op("execute", sql="SELECT 1"),
            op("add", None, values={"n": 1}),
            op("add", values=None),
            op("add", values={"n": object()}),
            op("add_many", rows=None),
            op("update", where={"n": 1}, values={"n": 2}),
            op("update", where={"id": ["a"]}, values={"n": 2}),
            op("delete", where=None),
            op("delete_many", where={"tag": "x"}),
            op("search", params=[1, 2]),
            op("search", order=["n sideways"]),
        ]
        for operation in bad:
            with pytest.raises(InvalidOperation) as caught:
                await source.execute(operation)
            assert caught.value.retryable is False
            assert caught.value.data_source == "search"
        assert source.bulks == 0


@pytest.mark.anyio
async def test_a_mapping_error_fails_only_that_document(url: str) -> None:
    async with running(url) as source:
        await source.execute(op("add", values={"id": "typed", "n": 1}))
        results: dict[str, Any] = {}

        async def add(doc_id: str, n: Any) -> None:
            try:
                results[doc_id] = await source.execute(op("add", values={"id": doc_id, "n": n}))
            except DataSourceError as error:
                results[doc_id] = error

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(add, f"ok{i}", i)
            tg.start_soon(add, "bad", "not a number")
        error = results.pop("bad")
        assert isinstance(error, DataSourceError) and not error.retryable
        assert "mapper_parsing_exception" in str(error)
        assert results == {f"ok{i}": f"ok{i}" for i in range(10)}


# -- grouping ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_writes_share_bulk_requests(url: str) -> None:
    async with running(url) as source:
        ids: list[str] = []

        async def add(n: int) -> None:
            ids.append(await source.execute(op("add", values={"n": n, "body": "grouped"})))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(500):
                    tg.start_soon(add, n)
        assert len(set(ids)) == 500
        assert source.documents == 500
        assert 1 <= source.bulks <= 50, source.bulks

        await refresh(source)
        result = await source.execute(
            op("search", params={"query": {"match": {"body": "grouped"}}})
        )
        assert result["total"] == 500


@pytest.mark.anyio
async def test_a_duplicate_id_fails_only_its_caller_within_a_bulk(url: str) -> None:
    async with running(url) as source:
        await source.execute(op("add", values={"id": "dup", "n": 0}))
        bulks_before = source.bulks
        outcomes: dict[str, Any] = {}

        async def add(doc_id: str) -> None:
            try:
                outcomes[doc_id] = await source.execute(op("add", values={"id": doc_id}))
            except DataSourceError as error:
                outcomes[doc_id] = error

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(add, "dup" if i == 25 else f"fresh{i}")
        error = outcomes.pop("dup")
        assert isinstance(error, DataSourceError) and error.retryable is False
        assert "already exists" in str(error)
        assert all(value == key for key, value in outcomes.items()) and len(outcomes) == 49
        assert source.bulks - bulks_before < 50
        assert (await source.execute(op("get", where={"id": "dup"})))[0]["n"] == 0


@pytest.mark.anyio
async def test_max_bulk_caps_items_per_request(url: str) -> None:
    async with running(url, max_bulk=10) as source:
        async with anyio.create_task_group() as tg:
            for n in range(30):
                tg.start_soon(source.execute, op("add", values={"n": n}))
            # A caller's rows beyond max_bulk go out in several requests.
            tg.start_soon(source.execute, op("add_many", rows=[{"n": n} for n in range(25)]))
        assert source.documents == 55
        assert source.bulks >= 6
        await refresh(source)
        assert (await source.execute(op("search", limit=0)))["total"] == 55


@pytest.mark.anyio
async def test_writes_go_directly_without_the_bulk_loop(url: str) -> None:
    async with opened(url) as source:
        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(source.execute, op("add", values={"n": n}))
        assert source.bulks == 5 and source.documents == 5


@pytest.mark.anyio
async def test_index_prefix_applies_to_every_action(url: str) -> None:
    async with opened(url, index_prefix="app-") as source:
        await source.execute(op("add", values={"id": "k", "n": 1}))
        assert (await source.client.exists(index="app-docs", id="k")).body is True
        assert await source.execute(op("get", where={"id": "k"})) == [{"id": "k", "n": 1}]
        await refresh(source, "app-docs")
        assert (await source.execute(op("search")))["total"] == 1


@pytest.mark.anyio
async def test_shutdown_finishes_the_bulk_in_flight_and_fails_queued_writes(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(url, max_bulk=1) as source:
        client = source.client
        send_bulk = client.bulk
        in_flight, release = anyio.Event(), anyio.Event()

        async def held_bulk(**request: Any) -> Any:
            in_flight.set()
            await release.wait()
            return await send_bulk(**request)

        monkeypatch.setattr(client, "bulk", held_bulk)
        outcomes: list[Any] = []

        async def add(n: int) -> None:
            try:
                outcomes.append(await source.execute(op("add", values={"id": f"s{n}"})))
            except DataSourceError as error:
                outcomes.append(error)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as callers:
                async with anyio.create_task_group() as loop:
                    await loop.start(source.run)
                    for n in range(20):
                        callers.start_soon(add, n)
                    await in_flight.wait()
                    loop.cancel_scope.cancel()
                    release.set()
        assert len(outcomes) == 20  # no caller is left waiting
        written = [outcome for outcome in outcomes if isinstance(outcome, str)]
        failed = [outcome for outcome in outcomes if isinstance(outcome, DataSourceError)]
        assert len(written) == 1 and len(failed) == 19
        assert all(error.retryable and "closing" in str(error) for error in failed)
        stored = await source.execute(op("get", where={"id": [f"s{n}" for n in range(20)]}))
        assert [row["id"] for row in stored] == written
        # With the loop gone, writes go out directly again.
        assert await source.execute(op("add", values={"id": "after"})) == "after"


@pytest.mark.anyio
async def test_shutdown_fails_a_write_carried_over_to_the_next_bulk(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(url, max_bulk=2) as source:
        client = source.client
        send_bulk = client.bulk
        in_flight, release = anyio.Event(), anyio.Event()

        async def held_bulk(**request: Any) -> Any:
            in_flight.set()
            await release.wait()
            return await send_bulk(**request)

        monkeypatch.setattr(client, "bulk", held_bulk)
        outcomes: dict[str, Any] = {}

        async def write(name: str, operation: Operation) -> None:
            try:
                outcomes[name] = await source.execute(operation)
            except DataSourceError as error:
                outcomes[name] = error

        with anyio.fail_after(10):
            async with anyio.create_task_group() as callers:
                async with anyio.create_task_group() as loop:
                    await loop.start(source.run)
                    callers.start_soon(write, "one", op("add", values={"id": "one"}))
                    # Two items do not fit beside the first write: they wait for the next bulk.
                    rows = [{"id": "two"}, {"id": "three"}]
                    callers.start_soon(write, "pair", op("add_many", rows=rows))
                    await in_flight.wait()
                    loop.cancel_scope.cancel()
                    release.set()
        assert outcomes["one"] == "one"
        assert isinstance(outcomes["pair"], DataSourceError) and outcomes["pair"].retryable
        assert source.bulks == 1


# -- availability --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_stopped_server_gives_retryable_errors() -> None:
    stopped = OsmemServer.start(japanese=False)
    _stop(stopped)
    async with opened(stopped.url, request_timeout=2.0) as source:
        for operation in (
            op("add", values={"n": 1}),
            op("get", where={"id": "x"}),
            op("search"),
            op("delete", where={"id": "x"}),
        ):
            with pytest.raises(DataSourceError, match="unreachable") as caught:
                await source.execute(operation)
            assert caught.value.retryable is True
            assert caught.value.data_source == "search"
        with pytest.raises(DataSourceError, match="unhealthy") as caught:
            await source.health()
        assert caught.value.retryable is True


@pytest.mark.anyio
async def test_health_and_idempotent_close(url: str) -> None:
    source = make_source(url)
    with pytest.raises(DataSourceError, match="not open"):
        await source.health()
    await source.open()
    await source.health()
    await source.execute(op("add", values={"n": 1}))
    await source.close()
    await source.close()
    assert source.bulks == 1 and source.documents == 1
    with pytest.raises(DataSourceError, match="not open") as caught:
        await source.execute(op("add", values={"n": 1}))
    assert caught.value.retryable is True


# -- through the engine ----------------------------------------------------------------


@pytest.mark.anyio
async def test_through_the_engine(url: str) -> None:
    config = {
        "datasources": {
            "search": {
                "type": "elasticsearch",
                "url": url,
                "node_class": NODE_CLASS,
                "refresh": "wait_for",
            }
        }
    }
    async with Engine(config) as engine:
        added = await engine.submit(
            Operation(
                action="add", table="docs", values={"title": "via engine"}, data_source="search"
            )
        )
        assert added.data_source == "search" and added.source_type == "elasticsearch"
        found = await engine.submit(
            Operation(
                action="search",
                table="docs",
                params={"query": {"match": {"title": "engine"}}},
                data_source="search",
            )
        )
        assert found.value == {"total": 1, "hits": [{"id": added.value, "title": "via engine"}]}


# -- owner-scoped tables -----------------------------------------------------------------


@pytest.mark.anyio
async def test_filtered_actions_by_id_keep_to_matching_documents(url: str) -> None:
    """Filters beside the id (the owner) are checked on the document read in real time:
    one that does not match them is treated exactly as a missing one."""
    async with running(url, OWNED) as source:  # refresh = "false": nothing is searchable yet
        await source.execute(
            op("add_many", rows=[{"id": f"a{i}", "cid": "A", "n": i} for i in range(4)])
        )
        await source.execute(op("add", values={"id": "b0", "cid": "B", "n": 0}))

        assert await source.execute(op("get", where={"id": "a1", "cid": "A"})) == [
            {"id": "a1", "cid": "A", "n": 1}
        ]
        assert await source.execute(op("get", where={"id": "b0", "cid": "A"})) == []
        found = await source.execute(
            op("get", where={"id": ["a3", "b0", "a2", "zz"], "cid": "A"}, order=["-n"], limit=1)
        )
        assert found == [{"id": "a3", "cid": "A", "n": 3}]
        found = await source.execute(op("get", where={"id": ["a0", "b0"], "gone": None}))
        assert [row["id"] for row in found] == ["a0", "b0"]

        for doc_id, changed in (("a0", 1), ("b0", 0), ("zz", 0)):
            update = op("update", where={"id": doc_id, "cid": "A"}, values={"n": 9})
            assert await source.execute(update) == changed
        assert (await source.execute(op("get", where={"id": "a0"})))[0]["n"] == 9
        assert await source.execute(op("get", where={"id": "b0"})) == [
            {"id": "b0", "cid": "B", "n": 0}
        ]
        rows = [{"id": "a1", "n": 11}, {"id": "b0", "n": 10}, {"id": "zz", "n": 0}]
        assert await source.execute(op("update_many", rows=rows, where={"cid": "A"})) == 1
        assert await source.execute(op("update_many", rows=[{"id": "b0", "n": 1}])) == 1

        assert await source.execute(op("delete", where={"id": "b0", "cid": "A"})) == 0
        assert await source.execute(op("delete", where={"id": "a0", "cid": "A"})) == 1
        deleted = await source.execute(
            op("delete_many", where={"id": ["a1", "a2", "b0", "zz"], "cid": "A"})
        )
        assert deleted == 2
        found = await source.execute(op("get", where={"id": ["a3", "b0"]}, columns=["cid", "n"]))
        assert found == [{"cid": "A", "n": 3}, {"cid": "B", "n": 1}]
        # Nothing of another index, nor of one never written.
        assert (
            await source.execute(
                op("update", "never", where={"id": "a3", "cid": "A"}, values={"n": 1})
            )
            == 0
        )


@pytest.mark.anyio
async def test_count_and_insert_ignoring_existing_ids(url: str) -> None:
    async with opened(url, OWNED, refresh="wait_for") as source:
        # A declared table nothing was written to yet reads as empty; another index is an error.
        assert await source.execute(op("count", where={"cid": "A"})) == 0
        assert await source.execute(op("get", where={"cid": "A"})) == []
        with pytest.raises(DataSourceError, match="index_not_found"):
            await source.execute(op("count", "never"))

        rows = [{"id": "x", "cid": "A"}, {"id": "y", "cid": "A"}, {"id": "x", "cid": "B"}]
        assert await source.execute(op("add_many", rows=rows, conflict="ignore")) == 2
        again = [{"id": "y", "cid": "B"}, {"id": "z", "cid": "B"}]
        assert await source.execute(op("add_many", rows=again, conflict="ignore")) == 1
        assert await source.execute(op("add_many", rows=[], conflict="ignore")) == 0
        found = await source.execute(op("get", where={"id": ["x", "y"]}, columns=["cid"]))
        assert found == [{"cid": "A"}, {"cid": "A"}]

        # A declared text column compares whole values: owner "B" is not "B C"'s.
        await source.execute(op("add", values={"id": "w", "cid": "B C"}))
        assert await source.execute(op("count")) == 4
        assert await source.execute(op("count", where={"cid": "B"})) == 1
        assert await source.execute(op("count", where={"cid": ["A", "B"], "id": ["x", "z"]})) == 2
        found = await source.execute(op("get", where={"cid": "B"}, order=["-id"]))
        assert found == [{"id": "z", "cid": "B"}]
        found = await source.execute(op("get", where={"cid": ["A", "B C"]}, order=["-id"]))
        assert [row["id"] for row in found] == ["y", "x", "w"]


@pytest.mark.anyio
async def test_a_filtered_write_is_guarded_against_a_concurrent_change(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the read of the document and the write, another writer moves it to another
    owner: the write is refused by its version and the document read again."""
    async with opened(url) as source:
        await source.execute(op("add", values={"id": "d", "cid": "A", "n": 1}))
        client = source.client
        read = client.mget
        moves: list[str] = []  # the owner the next read hands the document to

        async def read_then_move(**request: Any) -> Any:
            response = await read(**request)
            if moves:
                owner = moves.pop(0)
                await client.index(index="docs", id="d", document={"id": "d", "cid": owner})
            return response

        monkeypatch.setattr(client, "mget", read_then_move)
        moves.append("B")
        update = op("update", where={"id": "d", "cid": "A"}, values={"n": 7})
        assert await source.execute(update) == 0
        assert await source.execute(op("get", where={"id": "d"})) == [{"id": "d", "cid": "B"}]

        moves.append("C")
        assert await source.execute(op("delete", where={"id": "d", "cid": "B"})) == 0
        assert await source.execute(op("get", where={"id": "d"})) == [{"id": "d", "cid": "C"}]
        assert moves == []

        # A document rewritten under the same owner is read again and written.
        moves.append("C")
        update = op("update", where={"id": "d", "cid": "C"}, values={"n": 8})
        assert await source.execute(update) == 1
        assert await source.execute(op("get", where={"id": "d"}, columns=["cid", "n"])) == [
            {"cid": "C", "n": 8}
        ]
        # One that keeps changing is given up on, retryably: the engine may try again.
        moves.extend(["C"] * ATTEMPTS)
        with pytest.raises(DataSourceError, match="kept changing") as caught:
            await source.execute(op("delete", where={"id": "d", "cid": "C"}))
        assert caught.value.retryable is True
        assert moves == []
        assert await source.execute(op("get", where={"id": "d"})) == [{"id": "d", "cid": "C"}]


@pytest.mark.anyio
async def test_every_write_of_an_owner_scoped_table_keeps_the_owner(url: str) -> None:
    config = {
        "engine": {"journal": "memory"},
        "datasources": {"search": {"type": "elasticsearch", "url": url, "node_class": NODE_CLASS}},
        "tables": {
            "items": {
                "columns": {"name": "text", "qty": "int"},
                "owner": "cid",
                "data_source": "search",
            }
        },
    }
    alice = Identity(uid="u-alice", cid="acme", uname="alice")
    bob = Identity(uid="u-bob", cid="globex", uname="bob")
    async with Engine(config) as engine:
        mine, theirs = engine.table("items", identity=alice), engine.table("items", identity=bob)
        bob_row = await theirs.add({"name": "bob's", "qty": 1})
        pen = await mine.add({"name": "pen", "qty": 3})
        cup, ink = await mine.add_many([{"name": "cup", "qty": 7}, {"name": "ink", "qty": 2}])

        # By id, and at once: no refresh is needed to change what was just written.
        assert await mine.update(pen, {"qty": 4}) == 1
        assert await mine.update_by_id({"id": pen, "qty": 5}) == 1
        assert await mine.update_many([{"id": pen, "qty": 6}, {"id": cup, "qty": 8}]) == 2
        assert await mine.upsert({"id": ink, "name": "ink", "qty": 9}) == ink
        assert await mine.upsert({"id": "sku-1", "name": "nib"}) == "sku-1"
        assert await mine.upsert_by_first_field({"name": "pen", "qty": 10}) == pen
        assert await mine.add_many_by_id([{"id": "sku-2", "name": "fig"}]) == 1
        assert await mine.get(where={"id": pen}, cols="name,qty,cid,upby") == [
            {"name": "pen", "qty": 10, "cid": "acme", "upby": "alice"}
        ]

        # Another tenant's id behaves as a missing one; its document is never touched.
        for row_id in (bob_row, "424242"):
            assert await mine.update(row_id, {"qty": 0}) == 0
            assert await mine.update_by_id({"id": row_id, "qty": 0}) == 0
            assert await mine.update_many([{"id": row_id, "qty": 0}]) == 0
            assert await mine.get(where={"id": row_id}) == []
            assert await mine.get(where={"id": [row_id, pen]}, cols="id") == [{"id": pen}]
            assert await mine.delete(row_id) == 0
            assert await mine.delete_many([row_id]) == 0
        # Each tenant has its own ids: bob's id names a row of alice's own, beside his.
        assert await mine.add_many_by_id([{"id": bob_row, "name": "mine too"}]) == 1
        assert await mine.add_many_by_id([{"id": bob_row, "name": "again"}]) == 0
        assert await mine.upsert({"id": bob_row, "name": "mine", "qty": 1}) == bob_row
        assert await mine.get(where={"id": bob_row}, cols="name,qty,cid") == [
            {"name": "mine", "qty": 1, "cid": "acme"}
        ]
        assert await mine.update_many([{"id": cup, "qty": 1}, {"id": bob_row, "qty": 2}]) == 2
        assert await mine.delete_many([cup, bob_row, "sku-2"]) == 3
        assert await mine.delete(ink) == 1

        client = AsyncElasticsearch(url, node_class=JsonNode)
        try:
            await client.indices.refresh(index="items")
        finally:
            await client.close()
        rows, total = await mine.get(cols="name,qty", order="-qty", total=True)
        assert (rows, total) == ([{"name": "pen", "qty": 10}, {"name": "nib", "qty": None}], 2)
        assert await theirs.get(where={"id": bob_row}, cols="id,name,qty,cid,upby") == [
            {"id": bob_row, "name": "bob's", "qty": 1, "cid": "globex", "upby": "bob"}
        ]


# -- owned tables: each owner has its own ids ---------------------------------------------


def item(action: str, **fields: Any) -> Operation:
    return Operation(action=action, table="items", **fields)


async def documents(source: ElasticsearchSource) -> dict[str, dict[str, Any]]:
    """Every document of the index ``items`` as stored: ``_id`` -> ``_source``."""
    await refresh(source, "items")
    found = await source.client.search(index="items", body={"size": 100})
    return {hit["_id"]: hit["_source"] for hit in found["hits"]["hits"]}


@pytest.mark.anyio
async def test_two_owners_with_one_id_hold_two_documents(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write by id names the (owner, id) pair's own document: the other owner's
    document of the id is never touched, and no document is read first to check an owner."""
    async with running(url, KEYED) as source:  # refresh = "false": nothing is searchable yet
        reads: list[Any] = []
        mget = source.client.mget

        async def counted_mget(**request: Any) -> Any:
            reads.append(request["ids"])
            return await mget(**request)

        monkeypatch.setattr(source.client, "mget", counted_mget)
        assert await source.execute(item("add", values={"id": "7", "cid": "A", "n": 1})) == "7"
        assert await source.execute(item("add", values={"id": "7", "cid": "B", "n": 2})) == "7"
        with pytest.raises(DataSourceError, match="already exists") as caught:
            await source.execute(item("add", values={"id": "7", "cid": "A", "n": 3}))
        assert caught.value.retryable is False

        def mine(owner: str, row_id: str = "7") -> Operation:
            return item("get", where={"id": row_id, "cid": owner}, columns=["id", "cid", "n"])

        assert await source.execute(mine("A")) == [{"id": "7", "cid": "A", "n": 1}]
        assert await source.execute(mine("B")) == [{"id": "7", "cid": "B", "n": 2}]
        both = await source.execute(item("get", where={"id": ["7", "8"], "cid": ["B", "A"]}))
        assert [(row["id"], row["cid"]) for row in both] == [("7", "B"), ("7", "A")]

        update = item("update", where={"id": "7", "cid": "A"}, values={"n": 10})
        assert await source.execute(update) == 1
        rows = [{"id": "7", "n": 20}, {"id": "8", "n": 0}]
        assert await source.execute(item("update_many", rows=rows, where={"cid": "B"})) == 1
        assert await source.execute(mine("A")) == [{"id": "7", "cid": "A", "n": 10}]
        assert await source.execute(mine("B")) == [{"id": "7", "cid": "B", "n": 20}]

        upsert = item("upsert", values={"id": "7", "cid": "A", "n": 11})
        assert await source.execute(upsert) == "7"
        upsert = item("upsert", where={"id": "9", "cid": "B"}, values={"n": 3})
        assert await source.execute(upsert) == "9"
        assert await source.execute(mine("B", "9")) == [{"id": "9", "cid": "B", "n": 3}]
        assert await source.execute(mine("A", "9")) == []
        rows = [{"id": "7", "cid": "A", "n": 0}, {"id": "9", "cid": "A", "n": 4}]
        assert await source.execute(item("add_many", rows=rows, conflict="ignore")) == 1
        assert await source.execute(mine("A")) == [{"id": "7", "cid": "A", "n": 11}]
        assert await source.execute(mine("A", "9")) == [{"id": "9", "cid": "A", "n": 4}]
        assert await source.execute(mine("B", "9")) == [{"id": "9", "cid": "B", "n": 3}]

        assert await source.execute(item("delete", where={"id": "7", "cid": "A"})) == 1
        assert await source.execute(item("delete", where={"id": "7", "cid": "A"})) == 0
        assert await source.execute(mine("B")) == [{"id": "7", "cid": "B", "n": 20}]
        deleted = await source.execute(item("delete_many", where={"id": ["7", "9"], "cid": "B"}))
        assert deleted == 2
        assert await source.execute(mine("A", "9")) == [{"id": "9", "cid": "A", "n": 4}]
        # The owner is in every _id: no write read its document first (the one mget is
        # the get of two ids of two owners).
        assert reads == [["1:B:7", "1:A:7", "1:B:8", "1:A:8"]]

        stored = await documents(source)
        assert list(stored) == ["1:A:9"]
        assert stored["1:A:9"]["id"] == "9"  # the document keeps the plain id


@pytest.mark.anyio
async def test_document_ids_of_owners_never_collide(url: str) -> None:
    """The owner's length leads the _id: owners and ids holding ':' or digits, or any
    character, never make two pairs one document (nor does the empty owner, SQL's default
    for a row written without one)."""
    pairs = [("a:1", "2"), ("a", "1:2"), ("1", "a:2"), ("é", "x"), ("e", "x"), ("", "x")]
    async with opened(url, KEYED) as source:
        for owner, row_id in pairs:
            values = {"id": row_id, "cid": owner, "tag": f"{owner}|{row_id}"}
            assert await source.execute(item("add", values=values)) == row_id
        for owner, row_id in pairs:
            (row,) = await source.execute(item("get", where={"id": row_id, "cid": owner}))
            assert (row["id"], row["tag"]) == (row_id, f"{owner}|{row_id}")
        stored = await documents(source)
        assert len(stored) == len(pairs)
        assert {"3:a:1:2", "1:a:1:2", "1:é:x", "0::x"} <= set(stored)

        # Elasticsearch takes 512 bytes of _id: a longer pair is refused, nothing is sent.
        bulks = source.bulks
        with pytest.raises(InvalidOperation, match="512 bytes"):
            await source.execute(item("add", values={"id": "x" * 300, "cid": "é" * 120}))
        assert source.bulks == bulks


@pytest.mark.anyio
async def test_reads_of_an_owned_table_carry_the_plain_id(url: str) -> None:
    """Searches, counts and a get by id without the owner filter the ``id`` field: they
    find every owner's document of the id, each with its plain id, never the _id."""
    async with opened(url, KEYED, refresh="wait_for") as source:
        rows = [
            {"id": "7", "cid": "A", "n": 1},
            {"id": "7", "cid": "B", "n": 2},
            {"id": "8", "cid": "A", "n": 3},
        ]
        assert await source.execute(item("add_many", rows=rows)) == ["7", "7", "8"]

        found = await source.execute(item("get", where={"id": "7"}, order=["cid"]))
        assert found == [{"id": "7", "cid": "A", "n": 1}, {"id": "7", "cid": "B", "n": 2}]
        found = await source.execute(item("get", where={"id": ["7", "8"]}, order=["-n"]))
        assert [(row["id"], row["n"]) for row in found] == [("8", 3), ("7", 2), ("7", 1)]
        assert await source.execute(item("get", where={"id": "7", "cid": None})) == []
        assert await source.execute(item("count", where={"id": "7"})) == 2
        assert await source.execute(item("count", where={"id": "7", "cid": "B"})) == 1
        assert await source.execute(item("count", where={"id": ["7", "8"], "cid": "A"})) == 2

        page = await source.execute(item("search", where={"cid": "A"}, order=["n"], columns=["n"]))
        assert page == {"total": 2, "hits": [{"id": "7", "n": 1}, {"id": "8", "n": 3}]}
        # Without _source the id comes from the _id itself.
        body = {"query": {"term": {"cid.keyword": "B"}}, "_source": False}
        assert await source.execute(item("search", params=body)) == {
            "total": 1,
            "hits": [{"id": "7"}],
        }
        hits = (await source.execute(item("search", order=["id", "cid"])))["hits"]
        assert [hit["id"] for hit in hits] == ["7", "7", "8"]


@pytest.mark.anyio
async def test_writes_of_an_owned_table_without_the_owner_are_refused(url: str) -> None:
    """A write cannot name a document of an owned table without its owner, nor move a
    document to another owner: a clear InvalidOperation, and nothing is sent."""
    async with opened(url, KEYED) as source:
        await source.execute(item("add", values={"id": "7", "cid": "A", "n": 1}))
        bulks = source.bulks
        refused = {
            "in the document": [
                item("add", values={"id": "8", "n": 1}),
                item("index", values={"id": "8", "cid": None, "n": 1}),
                item("add_many", rows=[{"id": "8", "cid": "A"}, {"id": "9"}]),
                item("upsert", values={"id": "7", "n": 2}),
                item("upsert", where={"id": "7"}, values={"n": 2}),
            ],
            "beside the ids": [
                item("update", where={"id": "7"}, values={"n": 2}),
                item("update", where={"id": "7", "cid": ["A", "B"]}, values={"n": 2}),
                item("update_many", rows=[{"id": "7", "n": 2}]),
                item("delete", where={"id": "7"}),
                item("delete_many", where={"id": ["7"], "n": 1}),
            ],
            "cannot change its owner": [
                item("update", where={"id": "7", "cid": "A"}, values={"cid": "B"}),
                item("update_many", rows=[{"id": "7", "cid": "B"}], where={"cid": "A"}),
                item("upsert", where={"id": "7", "cid": "A"}, values={"cid": "B", "n": 2}),
            ],
        }
        for message, operations in refused.items():
            for operation in operations:
                with pytest.raises(InvalidOperation, match=message) as caught:
                    await source.execute(operation)
                assert caught.value.retryable is False
                assert caught.value.data_source == "search"
        assert source.bulks == bulks
        assert await source.execute(item("get", where={"id": "7", "cid": "A"})) == [
            {"id": "7", "cid": "A", "n": 1}
        ]
        # Naming the owner it has already is no change.
        update = item("update", where={"id": "7", "cid": "A"}, values={"cid": "A", "n": 5})
        assert await source.execute(update) == 1


@pytest.mark.anyio
async def test_filters_beside_the_owner_are_still_checked(url: str) -> None:
    """On an owned table's index a filter the _id does not hold (here ``tag``) is checked on
    the document read in real time, as on any index."""
    async with opened(url, KEYED) as source:
        rows = [{"id": "7", "cid": "A", "tag": "x"}, {"id": "7", "cid": "B", "tag": "y"}]
        await source.execute(item("add_many", rows=rows))
        for owner, tag, changed in (("A", "y", 0), ("B", "x", 0), ("B", "y", 1)):
            where = {"id": "7", "cid": owner, "tag": tag}
            assert await source.execute(item("update", where=where, values={"n": 1})) == changed
        assert await source.execute(item("delete", where={"id": "7", "cid": "A", "tag": "y"})) == 0
        found = await source.execute(item("get", where={"id": "7", "cid": ["A", "B"]}))
        assert [(row["cid"], row.get("n")) for row in found] == [("A", None), ("B", 1)]
        assert await source.execute(item("delete", where={"id": "7", "cid": "A", "tag": "x"})) == 1


@pytest.mark.anyio
async def test_indexes_without_an_owner_keep_the_id_as_document_id(url: str) -> None:
    tables = {
        **OWNED,  # declared, no owner
        # An owner that is not one of the columns keys nothing.
        "loose": TableSchema(name="loose", columns={"id": "text", "n": "int"}, owner="cid"),
    }
    async with opened(url, tables) as source:
        for index in ("docs", "loose", "plain"):
            await source.execute(op("add", index, values={"id": "k", "cid": "A"}))
            assert (await source.client.exists(index=index, id="k")).body is True
            assert await source.execute(op("update", index, where={"id": "k"}, values={"n": 1}))
            found = await source.execute(op("get", index, where={"id": "k"}, columns=["id", "n"]))
            assert found == [{"id": "k", "n": 1}]


@pytest.mark.anyio
async def test_a_search_mirror_keeps_owners_rows_of_one_id_apart(url: str, tmp_path: Path) -> None:
    """Alice and bob each hold a row ``sku-1`` in a SQLite primary (ids are per owner); the
    relay writes each to its own document and changes or deletes only that one."""
    config = {
        "engine": {"drain_timeout": 2.0, "retry_backoff": 0.01, "retry_backoff_max": 0.2},
        "datasources": {
            "db": {"type": "sqlite", "url": f"sqlite:///{tmp_path / 'primary.db'}"},
            "search": {
                "type": "elasticsearch",
                "url": url,
                "node_class": NODE_CLASS,
                "refresh": "true",
            },
        },
        "tables": {
            "skus": {
                "columns": {"name": "text", "qty": "int"},
                "id": "text",
                "owner": "cid",
                "data_source": "db",
                "search_mirror": "search",
            }
        },
    }
    alice = Identity(uid="u-alice", cid="acme", uname="alice")
    # "acme corp" holds the word "acme": an analysed match would mix the two up.
    bob = Identity(uid="u-bob", cid="acme corp", uname="bob")

    async def mirrored(owner: str | None = None) -> list[dict[str, Any]]:
        assert engine.mirrors is not None
        with anyio.fail_after(15):
            await engine.mirrors.flush()
        where = {"id": "sku-1"} if owner is None else {"id": "sku-1", "cid": owner}
        found = await engine.submit(
            Operation(action="get", table="skus", data_source="search", where=where, order=["cid"])
        )
        return [{k: doc.get(k) for k in ("id", "cid", "name", "qty")} for doc in found.value]

    async with Engine(config) as engine:
        mine, theirs = engine.table("skus", identity=alice), engine.table("skus", identity=bob)
        assert await mine.add({"id": "sku-1", "name": "pen", "qty": 1}) == "sku-1"
        assert await theirs.add({"id": "sku-1", "name": "ink", "qty": 2}) == "sku-1"
        assert await mirrored() == [
            {"id": "sku-1", "cid": "acme", "name": "pen", "qty": 1},
            {"id": "sku-1", "cid": "acme corp", "name": "ink", "qty": 2},
        ]

        assert await mine.update("sku-1", {"qty": 10}) == 1  # an "update" entry
        assert await theirs.upsert({"id": "sku-1", "name": "ink v2"}) == "sku-1"  # "sync"
        assert await mirrored() == [
            {"id": "sku-1", "cid": "acme", "name": "pen", "qty": 10},
            {"id": "sku-1", "cid": "acme corp", "name": "ink v2", "qty": 2},
        ]
        assert await mine.get(kind="search", cols="id,name") == [{"id": "sku-1", "name": "pen"}]

        assert await mine.delete("sku-1") == 1  # a "delete" entry
        assert await mirrored("acme") == []
        assert await mirrored("acme corp") == [
            {"id": "sku-1", "cid": "acme corp", "name": "ink v2", "qty": 2}
        ]
        assert await theirs.delete_many(["sku-1"]) == 1  # "sync": the row is gone
        assert await mirrored() == []
        stats = await engine.mirror_stats()
        assert stats is not None and stats.skipped == 0 and stats.last_error is None
