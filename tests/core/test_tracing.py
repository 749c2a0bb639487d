"""OpenTelemetry spans of data operations and workflow runs (CONTRACT.md, "Tracing"), read
from the SDK's in-memory exporter; and the log fields bound while a task runs."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

from tests.conftest import Faults, make_config
from tests.tracing_util import by_name, children, reset_tracing, traced
from wf78_core import DataSourceError, Engine, Operation, TaskContext, hookimpl
from wf78_core.core import tracing
from wf78_core.core.logcontext import ContextFilter, JsonFormatter

__all__ = ["traced"]  # the fixture, used by name

pytestmark = pytest.mark.anyio


def one(spans: Any, name: str) -> Any:
    found = by_name(spans, name)
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_without_a_provider_nothing_is_replaced() -> None:
    async with Engine(make_config()) as engine:
        assert engine.dispatcher.tracer is None
        assert tracing.TRACER is None
        # The class's own methods: no wrapper on the data path.
        assert "execute" not in vars(engine.dispatcher)
        assert "enqueue" not in vars(engine.dispatcher)
        result = await engine.submit(Operation(action="cache_set", key="k", value=1))
        assert result.data_source == "mem"


async def test_a_no_op_provider_is_off_too() -> None:
    reset_tracing()
    trace.set_tracer_provider(NoOpTracerProvider())
    try:
        async with Engine(make_config()) as engine:
            assert engine.dispatcher.tracer is None
            assert "execute" not in vars(engine.dispatcher)
    finally:
        reset_tracing()


WITHOUT_OTEL = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if the [otel] extra were not installed
from wf78_core import Engine, Operation, Wf78Middleware
from wf78_core.core import tracing

async def main():
    config = {
        "datasources": {"m": {"type": "memory"}},
        "workflows": [{"id": "w", "tasks": [{"id": "a", "params": {"action": "noop"}}]}],
    }
    engine = Engine(config)
    assert tracing.otel_trace is None and engine.dispatcher.tracer is None
    assert Wf78Middleware(lambda scope, receive, send: None, engine=engine)._traced is False
    async with engine:
        assert (await engine.submit(Operation(action="noop"))).data_source == "m"
        print((await engine.run("w", wait=True)).status)

asyncio.run(main())
"""


def test_without_opentelemetry_installed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "succeeded"


async def test_one_span_per_operation_child_of_the_callers_span(
    traced: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer("test")
    async with Engine(make_config()) as engine:
        assert engine.dispatcher.tracer is not None
        with tracer.start_as_current_span("caller"):
            await engine.submit(Operation(action="add", table="items", values={"id": "1"}))
            await engine.submit(Operation(action="cache_set", key="greeting", value="hi"))
            await engine.submit(Operation(action="noop"))
    spans = traced.get_finished_spans()
    caller = one(spans, "caller")
    add, cache, noop = one(spans, "add items"), one(spans, "cache_set greeting"), one(spans, "noop")
    assert children(spans, caller) == [add, cache, noop]
    assert add.kind is SpanKind.CLIENT
    assert add.context.trace_id == caller.context.trace_id
    assert dict(add.attributes or {}) == {
        "db.operation.name": "add",
        "db.collection.name": "items",
        "db.system.name": "memory",
        "wf78.data_source": "mem",
        "wf78.agent": add.attributes["wf78.agent"],
        "wf78.attempts": 1,
        "wf78.fallback_from": (),
        "wf78.reason": add.attributes["wf78.reason"],
    }
    assert add.attributes["wf78.agent"]
    assert "db.collection.name" not in (cache.attributes or {})
    assert add.status.status_code is StatusCode.UNSET


async def test_retries_are_events_and_failures_are_errors(
    traced: InMemorySpanExporter, faults: Faults
) -> None:
    config = make_config(
        datasources={
            "flaky": {"type": "faulty", "fail": 2},
            "broken": {"type": "faulty", "fail": 10, "retryable": False},
            "mem": {"type": "memory"},
        }
    )
    async with Engine(config, plugins=[faults]) as engine:
        result = await engine.submit(Operation(action="get", data_source="flaky", retry=3))
        assert result.attempts == 3
        with pytest.raises(DataSourceError):
            await engine.submit(Operation(action="add", table="t", data_source="broken"))
        faults.sources["flaky"].fail = 5
        degraded = await engine.submit(
            Operation(action="cache_get", key="k", data_source="flaky", fallback=("mem",))
        )
        assert degraded.fallback_from == ("flaky",)
    spans = traced.get_finished_spans()
    retried = one(spans, "get")
    assert [e.name for e in retried.events] == ["wf78.retry", "wf78.retry"]
    assert [e.attributes["wf78.attempt"] for e in retried.events] == [2, 3]
    assert retried.events[0].attributes["error.type"] == "DataSourceError"
    assert retried.attributes["wf78.attempts"] == 3
    assert retried.status.status_code is StatusCode.UNSET

    failed = one(spans, "add t")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "DataSourceError"
    assert failed.attributes["wf78.data_source"] == "broken"
    assert failed.attributes["db.system.name"] == "faulty"
    assert failed.attributes["wf78.attempts"] == 1
    assert [e.name for e in failed.events] == ["exception"]

    fallback = one(spans, "cache_get k")
    assert [e.name for e in fallback.events] == ["wf78.fallback"]
    assert fallback.events[0].attributes["wf78.data_source"] == "mem"
    assert fallback.attributes["wf78.fallback_from"] == ("flaky",)
    assert fallback.attributes["wf78.data_source"] == "mem"


async def test_a_queued_ticket_keeps_the_context_it_was_enqueued_in(
    traced: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer("test")
    async with Engine(make_config()) as engine:
        with tracer.start_as_current_span("enqueuer"):
            tickets = [
                await engine.enqueue(Operation(action="cache_set", key=f"k{i}", value=i))
                for i in range(5)
            ]
        for ticket in tickets:
            await ticket.result()
    spans = traced.get_finished_spans()
    enqueuer = one(spans, "enqueuer")
    ops = [one(spans, f"cache_set k{i}") for i in range(5)]
    assert all(op.parent is not None for op in ops)
    assert {op.parent.span_id for op in ops} == {enqueuer.context.span_id}


DAG = {
    "id": "dag",
    "tasks": [
        {"id": "first", "params": {"action": "cache_set", "key": "a", "value": 1}},
        {
            "id": "left",
            "depends_on": ["first"],
            "params": {"action": "add", "table": "rows", "values": {"id": "x"}},
        },
        {
            "id": "right",
            "depends_on": ["first"],
            "params": {"action": "cache_get", "key": "a"},
        },
        {"id": "join", "action": "noop", "depends_on": ["left", "right"]},
    ],
}


async def test_a_dag_run_is_a_span_with_a_child_per_task(traced: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    async with Engine(make_config(DAG)) as engine:
        with tracer.start_as_current_span("caller"):
            run = await engine.run("dag", wait=True)
        assert run.status == "succeeded"
    spans = traced.get_finished_spans()
    caller = one(spans, "caller")
    run_span = one(spans, "wf78.run dag")
    assert children(spans, caller) == [run_span]
    assert run_span.attributes["wf78.run_id"] == run.id
    assert run_span.attributes["wf78.status"] == "succeeded"
    tasks = {span.name: span for span in children(spans, run_span)}
    assert set(tasks) == {"wf78.task first", "wf78.task left", "wf78.task right", "wf78.task join"}
    for name, op in (("first", "cache_set a"), ("left", "add rows"), ("right", "cache_get a")):
        assert children(spans, tasks[f"wf78.task {name}"]) == [one(spans, op)]
        assert tasks[f"wf78.task {name}"].attributes["wf78.attempts"] == 1
    assert children(spans, tasks["wf78.task join"]) == []
    assert {span.context.trace_id for span in spans} == {caller.context.trace_id}
    # The run ends after its last task.
    assert run_span.end_time >= max(t.end_time for t in tasks.values())


async def test_a_failed_task_and_run_are_errors(traced: InMemorySpanExporter) -> None:
    workflow = {
        "id": "failing",
        "tasks": [{"id": "bad", "retry": 1, "params": {"action": "get", "data_source": "broken"}}],
    }
    faults = Faults()
    config = make_config(
        workflow,
        datasources={"broken": {"type": "faulty", "fail": 10}},
    )
    async with Engine(config, plugins=[faults]) as engine:
        run = await engine.run("failing", wait=True)
        assert run.status == "failed"
    spans = traced.get_finished_spans()
    run_span = one(spans, "wf78.run failing")
    assert run_span.status.status_code is StatusCode.ERROR
    (task,) = children(spans, run_span)
    assert task.status.status_code is StatusCode.ERROR
    assert task.attributes["error.type"] == "DataSourceError"
    (op,) = children(spans, task)
    assert op.name == "get"
    assert [e.name for e in op.events] == ["wf78.retry", "exception"]


class _Logging:
    """An action that logs through the standard logging module."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("wf78.test.tracing")

    def log(self, ctx: TaskContext) -> None:
        self.logger.warning("task ran")

    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        registry.add("test.log", self.log)


async def test_log_records_carry_the_run_task_and_trace(
    traced: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    workflow = {
        "id": "logged",
        "tasks": [{"id": "speak", "action": "test.log", "data_source": "mem"}],
    }
    plugin = _Logging()
    handler = caplog.handler
    handler.addFilter(ContextFilter())
    try:
        async with Engine(make_config(workflow), plugins=[plugin]) as engine:
            run = await engine.run("logged", wait=True)
    finally:
        handler.removeFilter(handler.filters[-1])
    (record,) = [r for r in caplog.records if r.name == "wf78.test.tracing"]
    task = one(traced.get_finished_spans(), "wf78.task speak")
    assert record.run_id == run.id  # type: ignore[attr-defined]
    assert record.task_id == "speak"  # type: ignore[attr-defined]
    assert record.workflow == "logged"  # type: ignore[attr-defined]
    assert record.data_source == "mem"  # type: ignore[attr-defined]
    assert record.trace_id == format(task.context.trace_id, "032x")  # type: ignore[attr-defined]
    assert record.span_id == format(task.context.span_id, "016x")  # type: ignore[attr-defined]
    line = JsonFormatter().format(record)
    assert f'"run_id": "{run.id}"' in line and '"span_id"' in line


async def test_log_fields_without_tracing(caplog: pytest.LogCaptureFixture) -> None:
    workflow = {"id": "logged", "tasks": [{"id": "speak", "action": "test.log"}]}
    caplog.handler.addFilter(ContextFilter())
    try:
        async with Engine(make_config(workflow), plugins=[_Logging()]) as engine:
            run = await engine.run("logged", wait=True)
    finally:
        caplog.handler.removeFilter(caplog.handler.filters[-1])
    (record,) = [r for r in caplog.records if r.name == "wf78.test.tracing"]
    assert (record.run_id, record.task_id) == (run.id, "speak")  # type: ignore[attr-defined]
    assert not hasattr(record, "trace_id")


async def test_a_group_commit_is_a_span_linked_to_each_write(
    traced: InMemorySpanExporter, tmp_path: Path
) -> None:
    """Batched writes: the batch's span links to every operation it committed."""
    config = make_config(
        datasources={"db": {"type": "sqlite", "url": f"sqlite:///{tmp_path}/t.db"}},
        tables={"items": {"columns": {"qty": "int"}, "data_source": "db"}},
    )
    async with Engine(config) as engine:

        async def add(qty: int) -> None:
            await engine.submit(Operation(action="add", table="items", values={"qty": qty}))

        async with anyio.create_task_group() as group:
            for qty in range(40):
                group.start_soon(add, qty)
    spans = traced.get_finished_spans()
    adds = {span.context.span_id: span for span in by_name(spans, "add items")}
    commits = by_name(spans, "COMMIT db")
    assert len(adds) == 40 and 1 <= len(commits) < 40  # the writes were batched
    linked = [link.context.span_id for commit in commits for link in commit.links]
    assert sorted(linked) == sorted(adds)  # each write's span, linked once
    assert all(commit.parent is None for commit in commits)  # a batch has no one parent
    assert sum(commit.attributes["wf78.batch.size"] for commit in commits) >= 40
