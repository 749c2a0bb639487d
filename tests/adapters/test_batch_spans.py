"""Batched writes of the Redis and Elasticsearch adapters as spans (CONTRACT.md, "Tracing"):
a Redis pipeline round trip (``PIPELINE {source}``) and an Elasticsearch ``_bulk``
(``BULK {source}``) are root spans linked to the span of each operation they carried, as
the SQL group commit's ``COMMIT {source}`` (tests/core/test_tracing.py). Against the real
Redis at 127.0.0.1:6379 and osmem-server; the SDK's in-memory exporter reads the spans."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from osmem_server import OsmemServer

from tests.esutil import JsonNode
from tests.tracing_util import by_name, children, reset_tracing, traced
from wf78_core import Engine, Operation
from wf78_core.plugin import operation_span

__all__ = ["traced"]  # the fixture, used by name

pytestmark = pytest.mark.anyio

REDIS_URL = "redis://127.0.0.1:6379/0"
NODE_CLASS = f"{JsonNode.__module__}.{JsonNode.__qualname__}"
# Writes issued at once: enough that most of them wait for a round trip in flight.
WRITES = 40


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    name = f"wf78test-{uuid4().hex}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="module")
def es_server() -> Iterator[OsmemServer]:
    server = OsmemServer.start(japanese=False)
    yield server
    server.close()
    # OsmemServer.close leaves the stdout pipe open (a ResourceWarning at collection).
    if server.process.stdout is not None:
        server.process.stdout.close()


@pytest.fixture
def es_url(es_server: OsmemServer) -> Iterator[str]:
    """A fresh clone of the (empty) base cluster for each test."""
    with es_server.clone() as clone:
        yield clone.url


def redis_config(prefix: str) -> dict[str, Any]:
    return {"datasources": {"cache": {"type": "redis", "url": REDIS_URL, "key_prefix": prefix}}}


def es_config(url: str) -> dict[str, Any]:
    return {
        "datasources": {"search": {"type": "elasticsearch", "url": url, "node_class": NODE_CLASS}}
    }


def cache_set(index: int) -> Operation:
    return Operation(action="cache_set", key=f"k{index}", value={"n": index}, data_source="cache")


def add_doc(index: int) -> Operation:
    return Operation(
        action="add", table="docs", values={"id": f"d{index}", "n": index}, data_source="search"
    )


async def submit_together(engine: Engine, operations: list[Operation]) -> list[Any]:
    """Submit ``operations`` concurrently, each in a task of its own; their values."""
    values: list[Any] = [None] * len(operations)

    async def submit(index: int) -> None:
        values[index] = (await engine.submit(operations[index])).value

    async with anyio.create_task_group() as group:
        for index in range(len(operations)):
            group.start_soon(submit, index)
    return values


def links_of(batches: list[ReadableSpan]) -> list[int]:
    return [link.context.span_id for batch in batches for link in batch.links]


def assert_batch_spans(batches: list[ReadableSpan], operations: dict[int, ReadableSpan]) -> None:
    """Each batch span is a root CLIENT span whose links are operations it carried."""
    assert batches
    for batch in batches:
        assert batch.parent is None  # a batch has no one parent: a root of its own trace
        assert batch.kind is trace.SpanKind.CLIENT
        assert batch.attributes is not None
        assert batch.attributes["wf78.batch.size"] == len(batch.links)
        for link in batch.links:
            assert link.context.span_id in operations
            assert link.context.trace_id == operations[link.context.span_id].context.trace_id


async def test_a_redis_pipeline_is_a_span_linked_to_each_command(
    traced: InMemorySpanExporter, prefix: str
) -> None:
    tracer = trace.get_tracer("test")
    async with Engine(redis_config(prefix)) as engine:
        source: Any = engine.sources.get("cache").adapter
        round_trips = source.pipelines
        with tracer.start_as_current_span("caller"):
            values = await submit_together(engine, [cache_set(i) for i in range(WRITES)])
        round_trips = source.pipelines - round_trips
    assert values == [True] * WRITES
    spans = traced.get_finished_spans()
    (caller,) = by_name(spans, "caller")
    sets = {span.context.span_id: span for span in spans if span.name.startswith("cache_set ")}
    assert len(sets) == WRITES
    assert sorted(span.context.span_id for span in children(spans, caller)) == sorted(sets)
    pipelines = by_name(spans, "PIPELINE cache")
    assert_batch_spans(pipelines, sets)
    linked = links_of(pipelines)
    assert len(linked) == len(set(linked))  # each command's operation, linked once
    # A command that found no round trip in flight went alone, under its own span: every
    # other round trip was a batch with its span, and every command is one or the other.
    alone = round_trips - len(pipelines)
    assert len(linked) + alone == WRITES
    assert max(len(pipeline.links) for pipeline in pipelines) > 1  # the commands were batched


async def test_an_elasticsearch_bulk_is_a_span_linked_to_each_write(
    traced: InMemorySpanExporter, es_url: str
) -> None:
    tracer = trace.get_tracer("test")
    async with Engine(es_config(es_url)) as engine:
        with tracer.start_as_current_span("caller"):
            values = await submit_together(engine, [add_doc(i) for i in range(WRITES)])
    assert sorted(values) == sorted(f"d{i}" for i in range(WRITES))
    spans = traced.get_finished_spans()
    (caller,) = by_name(spans, "caller")
    adds = {span.context.span_id: span for span in by_name(spans, "add docs")}
    assert len(adds) == WRITES
    assert sorted(span.context.span_id for span in children(spans, caller)) == sorted(adds)
    bulks = by_name(spans, "BULK search")
    assert_batch_spans(bulks, adds)
    assert 1 <= len(bulks) < WRITES  # the writes were grouped
    assert sorted(links_of(bulks)) == sorted(adds)  # each write's span, linked once


async def test_untraced_writes_make_no_batch_span(prefix: str, es_url: str) -> None:
    """An engine built without a tracer provider traces nothing: with a provider set
    afterwards (its spans recorded), its batched writes still make no span."""
    reset_tracing()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = {"datasources": redis_config(prefix)["datasources"] | es_config(es_url)["datasources"]}
    try:
        async with Engine(config) as engine:
            assert engine.dispatcher.tracer is None
            trace.set_tracer_provider(provider)
            sets = await submit_together(engine, [cache_set(i) for i in range(WRITES)])
            adds = await submit_together(engine, [add_doc(i) for i in range(WRITES)])
            assert engine.sources.get("cache").adapter.pipelines < WRITES  # batched
            got = await engine.submit(Operation(action="cache_get", key="k7", data_source="cache"))
    finally:
        reset_tracing()
        provider.shutdown()
    assert sets == [True] * WRITES
    assert sorted(adds) == sorted(f"d{i}" for i in range(WRITES))
    assert got.value == {"n": 7}
    assert exporter.get_finished_spans() == ()


def test_without_a_global_provider_no_write_notes_a_span() -> None:
    """Spans of a provider the app did not set globally (which no engine traces with) are
    not operations' spans: a write notes none, so its batch makes no span."""
    reset_tracing()
    local = TracerProvider()
    try:
        with local.get_tracer("test").start_as_current_span("local") as span:
            assert span.is_recording()
            assert operation_span() is None
            trace.set_tracer_provider(local)
            assert operation_span() == span.get_span_context()
    finally:
        reset_tracing()
        local.shutdown()


WITHOUT_OTEL = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if the [otel] extra were not installed
from wf78_core import Engine, Operation

async def main():
    redis_url, prefix, es_url, node_class, writes = sys.argv[1:]
    config = {
        "datasources": {
            "cache": {"type": "redis", "url": redis_url, "key_prefix": prefix},
            "search": {"type": "elasticsearch", "url": es_url, "node_class": node_class},
        }
    }
    async with Engine(config) as engine:
        async def one(op):
            return (await engine.submit(op)).value
        sets = await asyncio.gather(*(
            one(Operation(action="cache_set", key=f"k{i}", value=i, data_source="cache"))
            for i in range(int(writes))
        ))
        adds = await asyncio.gather(*(
            one(Operation(action="add", table="docs", values={"id": f"d{i}"}, data_source="search"))
            for i in range(int(writes))
        ))
        batched = engine.sources.get("cache").adapter.pipelines < int(writes)
        print(all(sets), len(set(adds)), batched, "opentelemetry.trace" in sys.modules)

asyncio.run(main())
"""


def test_batches_without_opentelemetry_installed(prefix: str, es_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL, REDIS_URL, prefix, es_url, NODE_CLASS, str(WRITES)],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", str(WRITES), "True", "False"]
