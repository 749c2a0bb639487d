"""B7 Elasticsearch writes: ``index`` operations through the engine's ``elasticsearch``
source (bulk grouping) against the same documents sent by single ``index`` calls.

Each case starts its own osmem-server (an in-memory OpenSearch look-alike) from Python,
writes to index ``bench`` with the same client settings on both sides (the adapter's
defaults, no client retries, the client's 10 connections per node, and the benchmark's
:class:`~benchmarks._esnode.JsonNode`, which osmem needs, except ``request_timeout``: see
:data:`REQUEST_TIMEOUT`), and, after a warm-up of :data:`WARMUP` documents in the same shape,
submits the ``--n`` writes in the shape ``--shape`` names: ``burst``, all ``--n`` together
in one ``asyncio.gather`` (``run.py`` passes ``--in-flight`` = ``--n``: this shape always
sends everything at once), or ``steady``, a task per write, at most ``--in-flight`` at once
under a semaphore.

Cases: ``direct`` (the baseline: ``AsyncElasticsearch.index(index=..., id=..., document=...)``
per document) and ``engine`` (``engine.submit(Operation(action="index", table="bench", ...))``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from elasticsearch import AsyncElasticsearch
from osmem_server import OsmemServer

from benchmarks._esnode import NODE_CLASS, JsonNode
from benchmarks._harness import Measurement, case_main, drive, drive_in_batches
from wf78_core import Engine, Operation
from wf78_core.ids import snowflake_id

INDEX = "bench"
WARMUP = 500
# The client's request timeout (aiohttp's total timeout) also runs while a call waits for
# one of the node's 10 connections: with 5,000 single index calls in flight the last ones
# wait for nearly all the others, over 10 s (the adapter's default) at the 420 docs/s of a
# busy machine. Both sides get this generous timeout; no call is retried.
REQUEST_TIMEOUT = 120.0
# The adapter's client settings (ElasticsearchOptions defaults, but REQUEST_TIMEOUT), used by
# both sides.
CLIENT_SETTINGS: dict[str, Any] = {
    "request_timeout": REQUEST_TIMEOUT,
    "max_retries": 0,
    "retry_on_timeout": False,
    "verify_certs": True,
}


@contextmanager
def osmem() -> Iterator[str]:
    """A fresh osmem-server for this case; its URL."""
    server = OsmemServer.start(japanese=False)
    try:
        yield server.url
    finally:
        server.close()
        if server.process.stdout is not None:
            server.process.stdout.close()


def _document(i: int) -> dict[str, Any]:
    return {"name": f"row {i}", "qty": i, "tags": ["bench", f"t{i % 10}"]}


async def _timed(
    start: Callable[[int], Coroutine[Any, Any, object]], args: argparse.Namespace
) -> tuple[float, float]:
    if args.shape == "steady":
        await drive(args, start, WARMUP, first=-WARMUP)
        began, cpu_began = time.perf_counter(), time.process_time()
        await drive(args, start, args.n)
    else:
        await drive_in_batches(start, WARMUP, WARMUP, first=-WARMUP)
        began, cpu_began = time.perf_counter(), time.process_time()
        await drive_in_batches(start, args.n, args.n)  # all in flight at once
    return time.perf_counter() - began, time.process_time() - cpu_began


async def _check(url: str, expected: int) -> None:
    async with AsyncElasticsearch(url, node_class=JsonNode, **CLIENT_SETTINGS) as client:
        await client.indices.refresh(index=INDEX)
        found = (await client.count(index=INDEX)).body["count"]
    if found != expected:
        raise RuntimeError(f"expected {expected} documents in {INDEX!r}, found {found}")


async def direct(args: argparse.Namespace) -> Measurement:
    with osmem() as url:
        async with AsyncElasticsearch(url, node_class=JsonNode, **CLIENT_SETTINGS) as client:

            async def start(i: int) -> None:
                doc_id = snowflake_id()
                response = await client.index(
                    index=INDEX, id=doc_id, document={**_document(i), "id": doc_id}
                )
                if response.body.get("result") not in ("created", "updated"):
                    raise RuntimeError(f"index of {doc_id} answered {response.body}")

            elapsed, cpu = await _timed(start, args)
        await _check(url, args.n + WARMUP)
    return {"elapsed": elapsed, "ops_per_s": args.n / elapsed, "cpu_seconds": cpu}


async def engine(args: argparse.Namespace) -> Measurement:
    with osmem() as url:
        config: dict[str, Any] = {
            "datasources": {
                "search": {
                    "type": "elasticsearch",
                    "url": url,
                    "node_class": NODE_CLASS,
                    "request_timeout": REQUEST_TIMEOUT,
                }
            }
        }
        async with Engine(config) as wf78:

            async def start(i: int) -> object:
                op = Operation(
                    action="index", table=INDEX, values=_document(i), data_source="search"
                )
                return await wf78.submit(op)

            adapter = wf78.sources.named[
                "search"
            ].adapter  # informational: the adapter behind the source
            elapsed, cpu = await _timed(start, args)
            bulks = adapter.bulks
            if wf78.failed:
                raise RuntimeError(f"{wf78.failed} operations failed")
        await _check(url, args.n + WARMUP)
    return {
        "elapsed": elapsed,
        "ops_per_s": args.n / elapsed,
        "cpu_seconds": cpu,
        "bulks": bulks,
        "documents_per_bulk": (args.n + WARMUP) / bulks if bulks else None,
    }


if __name__ == "__main__":
    case_main(
        {"direct": direct, "engine": engine},
        description=__doc__ or "",
        default_n=5_000,
    )
