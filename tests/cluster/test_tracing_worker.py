"""A run queued through Redis and executed by ``wf78 worker`` in another process: the
worker's task and operation spans join the submitter's trace (the run's ``traceparent``
travels with it in Redis). The worker exports its spans to a file
(tests/cluster/tracing_worker_plugin.py); the submitter's come from the in-memory exporter."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from distributed_util import TESTS, Process
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.tracing_util import by_name, traced
from wf78_core import Engine

__all__ = ["traced"]  # the fixture, used by name

pytestmark = pytest.mark.anyio

URL = "redis://127.0.0.1:6379/0"
START_TIMEOUT = 30.0
FLOW = {
    "id": "traced_flow",
    "tasks": [
        {"id": "write", "params": {"action": "cache_set", "key": "greeting", "value": "hi"}},
        {"id": "after", "action": "noop", "depends_on": ["write"]},
    ],
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def config(namespace: str, *, consume: bool) -> dict[str, Any]:
    return {
        "engine": {
            "backend": "redis",
            "backend_url": URL,
            "backend_namespace": namespace,
            "consume": consume,
            "lease_ttl": 2.0,
            "drain_timeout": 5.0,
        },
        "datasources": {"mem": {"type": "memory"}},
        "workflows": [FLOW],
    }


def worker(folder: Path, namespace: str, spans: Path) -> Process:
    path = folder / "worker.json"
    path.write_text(json.dumps(config(namespace, consume=True)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WF78_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env["TRACING_TEST_SPANS"] = str(spans)
    command = [sys.executable, "-m", "wf78_core.cli", "worker", "--config", str(path)]
    command += ["--plugin", "tracing_worker_plugin"]
    process = Process("worker", command, folder, env)
    if not process.ready.wait(START_TIMEOUT):
        process.stop()
        raise AssertionError(f"the worker did not get ready:\n{process.stderr}")
    return process


async def test_the_workers_spans_join_the_submitters_trace(
    traced: InMemorySpanExporter, tmp_path: Path, namespace: str
) -> None:
    spans_file = tmp_path / "worker-spans.jsonl"
    process = worker(tmp_path, namespace, spans_file)
    try:
        async with Engine(config(namespace, consume=False)) as engine:
            with trace.get_tracer("test").start_as_current_span("submit request"):
                run = await engine.run("traced_flow", {"note": "n"}, wait=True)
            assert run.status == "succeeded", run
            # What readers of the run see: the traceparent is not part of its context.
            assert run.context == {"note": "n"}
            assert (await engine.fetch_run(run.id)).context == {"note": "n"}
    finally:
        assert process.stop() == 0, process.stderr

    submitted = traced.get_finished_spans()
    (request,) = by_name(submitted, "submit request")
    (queued,) = by_name(submitted, "wf78.run traced_flow")
    assert queued.kind is SpanKind.PRODUCER
    assert queued.parent is not None and queued.parent.span_id == request.context.span_id
    assert queued.attributes["wf78.run_id"] == run.id
    trace_id = format(request.context.trace_id, "032x")

    lines = [json.loads(line) for line in spans_file.read_text(encoding="utf-8").splitlines()]
    worked = {line["name"]: line for line in lines}
    assert set(worked) == {"wf78.task write", "wf78.task after", "cache_set greeting"}, lines
    assert {line["trace_id"] for line in lines} == {trace_id}
    for task in ("wf78.task write", "wf78.task after"):
        assert worked[task]["parent_id"] == format(queued.context.span_id, "016x")
        assert worked[task]["kind"] == "CONSUMER"
        assert worked[task]["attributes"]["wf78.run_id"] == run.id
    operation = worked["cache_set greeting"]
    assert operation["parent_id"] == worked["wf78.task write"]["span_id"]
    assert operation["attributes"]["wf78.data_source"] == "mem"
    assert operation["attributes"]["db.system.name"] == "memory"
