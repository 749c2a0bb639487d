"""A request's trace through wf78: the server instrumentation's span, or the incoming
``traceparent`` when there is none, is the parent of the data operations (and runs) the
request causes; wf78 makes no HTTP span of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.tracing_util import by_name, children, traced
from wf78_core import Engine, Wf78Middleware, current

__all__ = ["traced"]  # the fixture, used by name

pytestmark = pytest.mark.anyio

USER = "trace-user-token"
ADMIN = "trace-admin-token"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite runs on asyncio only


def make_config(path: Path) -> dict[str, Any]:
    return {
        "engine": {"drain_timeout": 2.0},
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{path}"}},
        "tables": {
            "items": {
                "columns": {"name": "text"},
                "owner": "cid",
                "route": "api/shop",
                "data_source": "db",
            }
        },
        "workflows": [
            {
                "id": "ingest",
                "tasks": [
                    {"id": "count", "params": {"action": "count", "table": "items"}},
                    {"id": "later", "action": "noop", "depends_on": ["count"]},
                ],
            }
        ],
        "auth": {
            "tokens": {
                USER: {"uid": "u-ann", "cid": "acme", "uname": "ann"},
                ADMIN: {"uid": "u-root", "cid": "ops", "uname": "root", "roles": ["admin"]},
            }
        },
    }


async def add_in_handler(request: Request) -> JSONResponse:
    new_id = await current().table("items").add({"name": "from the app"})
    return JSONResponse({"id": new_id})


APP = Starlette(routes=[Route("/add", add_in_handler, methods=["POST"])])


class Instrumented:
    """What a server instrumentation (opentelemetry-instrumentation-asgi) does: a SERVER
    span current while the app serves the request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.tracer = trace.get_tracer("server-instrumentation")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = f"{scope['method']} {scope['path']}"
        with self.tracer.start_as_current_span(name, kind=SpanKind.SERVER):
            await self.app(scope, receive, send)


@asynccontextmanager
async def serving(path: Path, *, instrumented: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    app: Any = Wf78Middleware(APP, engine=Engine(make_config(path)))
    async with LifespanManager(app) as manager:
        outer = Instrumented(manager.app) if instrumented else manager.app
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def headers(token: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", **extra}


async def test_a_data_route_joins_the_incoming_traceparent(
    traced: InMemorySpanExporter, tmp_path: Path
) -> None:
    async with serving(tmp_path / "t.db") as client:
        answer = await client.post(
            "/api/shop/items/mAdd",
            json={"pars": ["ann's"]},
            headers=headers(USER, traceparent=TRACEPARENT),
        )
        assert answer.status_code == 200, answer.text
        untraced = await client.post(
            "/api/shop/items/mAdd", json={"pars": ["x"]}, headers=headers(USER)
        )
        assert untraced.status_code == 200
    joined, alone = by_name(traced.get_finished_spans(), "add items")
    assert format(joined.context.trace_id, "032x") == TRACE_ID
    assert joined.parent is not None and format(joined.parent.span_id, "016x") == PARENT_ID
    assert joined.parent.is_remote
    assert joined.attributes["db.system.name"] == "sqlite"
    assert joined.attributes["wf78.data_source"] == "db"
    assert joined.attributes["wf78.tenant"] == "acme"
    # Without a traceparent (and no instrumentation) the operation starts its own trace.
    assert alone.parent is None
    assert alone.context.trace_id != joined.context.trace_id


async def test_under_server_instrumentation_its_span_is_the_parent(
    traced: InMemorySpanExporter, tmp_path: Path
) -> None:
    async with serving(tmp_path / "t.db", instrumented=True) as client:
        # The instrumentation's span wins over a header it did not take (here it ignores
        # headers; a real one would have made the header's trace its own).
        answer = await client.post(
            "/api/shop/items/mAdd",
            json={"pars": ["n"]},
            headers=headers(USER, traceparent=TRACEPARENT),
        )
        assert answer.status_code == 200
        read = await client.get("/api/shop/items/get", headers=headers(USER))
        assert read.status_code == 200
        in_app = await client.post("/add", headers=headers(USER))
        assert in_app.status_code == 200, in_app.text
    spans = traced.get_finished_spans()
    for server, operation in (
        ("POST /api/shop/items/mAdd", "add items"),
        ("GET /api/shop/items/get", "get items"),
        ("POST /add", "add items"),
    ):
        (request,) = by_name(spans, server)
        assert request.kind is SpanKind.SERVER
        (child,) = children(spans, request)
        assert child.name == operation
        assert child.kind is SpanKind.CLIENT
        assert child.context.trace_id == request.context.trace_id
    # wf78 made no HTTP span of its own: every span is the server's, an operation's or a
    # group commit's (a root linked to the writes it committed).
    adds = {span.context.span_id for span in by_name(spans, "add items")}
    commits = by_name(spans, "COMMIT db")
    assert commits and all(commit.parent is None for commit in commits)
    assert {link.context.span_id for commit in commits for link in commit.links} == adds
    assert {s.name for s in spans} - {"COMMIT db"} == {
        "POST /api/shop/items/mAdd",
        "GET /api/shop/items/get",
        "POST /add",
        "add items",
        "get items",
    }


async def test_an_app_handler_and_a_run_join_the_traceparent(
    traced: InMemorySpanExporter, tmp_path: Path
) -> None:
    async with serving(tmp_path / "t.db") as client:
        in_app = await client.post("/add", headers=headers(USER, traceparent=TRACEPARENT))
        assert in_app.status_code == 200, in_app.text
        started = await client.post(
            "/_wf78/runs",
            json={"workflow": "ingest"},
            headers=headers(ADMIN, traceparent=TRACEPARENT),
        )
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        for _ in range(200):
            run = (await client.get(f"/_wf78/runs/{run_id}", headers=headers(ADMIN))).json()
            if run["status"] == "succeeded":
                break
            await _pause()
        assert run["status"] == "succeeded"
    spans = traced.get_finished_spans()
    # Every span is in the caller's trace but the group commit's, which links to the add.
    (add,) = by_name(spans, "add items")
    commits = by_name(spans, "COMMIT db")
    assert [link.context.span_id for commit in commits for link in commit.links] == [
        add.context.span_id
    ]
    traced_ids = {format(s.context.trace_id, "032x") for s in spans if s not in commits}
    assert traced_ids == {TRACE_ID}
    (run_span,) = by_name(spans, "wf78.run ingest")
    for span in (add, run_span):
        assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID
    tasks = {span.name: span for span in children(spans, run_span)}
    assert set(tasks) == {"wf78.task count", "wf78.task later"}
    (count,) = children(spans, tasks["wf78.task count"])
    assert count.name == "count items"


async def _pause() -> None:
    import anyio

    await anyio.sleep(0.01)
