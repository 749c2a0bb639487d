"""Wf78Middleware over Starlette, FastAPI, Litestar and a raw ASGI callable, through
``httpx.ASGITransport`` inside ``asgi_lifespan.LifespanManager``; and the example app."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from litestar import Litestar, get
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from examples.app import build_app
from wf78_core import Wf78Middleware, current

pytestmark = pytest.mark.anyio

ADMIN = "admin-token-frameworks"
USER = "user-token-frameworks"
BOB = "bob-token-frameworks"  # another company


def config(db: Path) -> dict[str, Any]:
    return {
        "datasources": {"main": {"type": "sqlite", "url": f"sqlite:///{db}"}},
        "tables": {
            "items": {
                "columns": {"name": "text", "qty": "int"},
                "owner": "cid",
                "route": "api/shop",
            }
        },
        "workflows": [{"id": "touch", "tasks": [{"id": "only", "action": "noop"}]}],
        "auth": {
            "tokens": {
                ADMIN: {"uid": "u-root", "cid": "acme", "uname": "root", "roles": ["admin"]},
                USER: {"uid": "u-ada", "cid": "acme", "uname": "ada", "max_priority": 1},
                BOB: {"uid": "u-bob", "cid": "globex", "uname": "bob"},
            }
        },
    }


def who() -> dict[str, Any]:
    """What a handler sees through ``current()``."""
    client = current()
    identity = client.identity
    return {
        "hello": identity.uname if identity is not None else None,
        "cid": identity.cid if identity is not None else None,
        "priority": client.priority,
        "engine_running": client.engine.running,
    }


# -- one app per framework, each with its own /own route -----------------------------------


def starlette_app(started: list[bool]) -> Any:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append(current_engine_running(app))
        yield

    async def own(request: Request) -> JSONResponse:
        return JSONResponse({"framework": "starlette", **who()})

    app = Starlette(routes=[Route("/own", own)], lifespan=lifespan)
    return app


def fastapi_app(started: list[bool]) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started.append(current_engine_running(app))
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/own")
    async def own() -> dict[str, Any]:
        return {"framework": "fastapi", **who()}

    return app


def litestar_app(started: list[bool]) -> Any:
    @get("/own")
    async def own() -> dict[str, Any]:
        return {"framework": "litestar", **who()}

    def on_startup(app: Litestar) -> None:
        started.append(current_engine_running(app))

    return Litestar(route_handlers=[own], on_startup=[on_startup])


def raw_app(started: list[bool]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # speaks no lifespan: the middleware runs wf78's alone
        if scope["path"] != "/own":
            status, body = 404, {"detail": "not found"}
        else:
            status, body = 200, {"framework": "raw", **who()}
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    started.append(True)  # nothing of its own to start
    return app


# The wrapped app is set on each framework app before its lifespan runs.
_engines: dict[int, Wf78Middleware] = {}


def current_engine_running(app: Any) -> bool:
    return _engines[id(app)].engine.running


FRAMEWORKS: dict[str, Callable[[list[bool]], Any]] = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "litestar": litestar_app,
    "raw": raw_app,
}


def per_request_state(app: Any) -> Any:
    """What ASGI servers do and asgi-lifespan does not: give each request a shallow copy of
    the lifespan state (Litestar caches per-request state there)."""

    async def copying(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan" and "state" in scope:
            scope = {**scope, "state": dict(scope["state"])}
        await app(scope, receive, send)

    return copying


def client_of(app: Any, address: tuple[str, int] = ("127.0.0.1", 5078)) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=address)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(per_request_state(app)) as manager:
        async with client_of(manager.app) as client:
            yield client


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", **extra}


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
async def test_middleware_over_framework(framework: str, tmp_path: Path) -> None:
    started: list[bool] = []
    inner = FRAMEWORKS[framework](started)
    app = Wf78Middleware(inner, config=config(tmp_path / "shop.db"))
    _engines[id(inner)] = app
    try:
        async with serve(app) as client:
            # The engine opened before the framework's own start-up hooks ran.
            assert started == [True]

            # The app's own route, untouched; current() sees the caller.
            response = await client.get("/own")
            assert response.status_code == 200, response.text
            assert response.json() == {
                "framework": framework,
                "hello": None,
                "cid": None,
                "priority": None,
                "engine_running": True,
            }
            # A plain user asking for priority 0 is held to its cap.
            response = await client.get("/own", headers=bearer(USER, **{"x-wf78-priority": "0"}))
            assert response.json() == {
                "framework": framework,
                "hello": "ada",
                "cid": "acme",
                "priority": 1,
                "engine_running": True,
            }
            # Other paths still reach the framework (its 404, not wf78's).
            assert (await client.get("/nowhere")).status_code == 404

            # A koa78 data route: add, then read back, scoped to the caller's company.
            added = await client.post(
                "/api/shop/items/mAdd", json={"pars": ["pen", 3]}, headers=bearer(USER)
            )
            assert added.status_code == 200, added.text
            answer = added.json()
            assert answer["res"] == 0, answer
            new_id = answer["back"]
            got = await client.post("/api/shop/items/get", json={}, headers=bearer(USER))
            assert got.status_code == 200, got.text
            rows = got.json()["back"]
            assert [(row["id"], row["name"], row["qty"], row["upby"]) for row in rows] == [
                (new_id, "pen", 3, "ada")
            ]
            other = await client.post("/api/shop/items/get", json={}, headers=bearer(BOB))
            assert other.json()["res"] == 0 and other.json()["back"] == []

            # Admin routes: the admin role only.
            assert (await client.get("/_wf78/status")).status_code == 401
            assert (await client.get("/_wf78/status", headers=bearer(USER))).status_code == 403
            status = await client.get("/_wf78/status", headers=bearer(ADMIN))
            assert status.status_code == 200, status.text
            assert status.json()["submitted"] >= 2
            run = await client.post(
                "/_wf78/runs", json={"workflow": "touch"}, headers=bearer(ADMIN)
            )
            assert run.status_code == 202, run.text
            assert run.json()["run_id"]
        assert not app.engine.running  # closed with the lifespan
    finally:
        _engines.pop(id(inner), None)


async def test_example_app(tmp_path: Path) -> None:
    app = build_app(tmp_path / "demo.db", admin_token=ADMIN, user_token=USER)
    async with LifespanManager(per_request_state(app)) as manager, client_of(manager.app) as client:
        index = await client.get("/")
        assert index.status_code == 200
        # In the fragment: the browser never sends it, no access log keeps it.
        assert f'href="/_wf78/#token={ADMIN}"' in index.text
        assert "?token=" not in index.text
        # The admin token is shown only to callers on this machine.
        async with client_of(manager.app, ("203.0.113.7", 40000)) as remote:
            index = await remote.get("/")
            assert 'href="/_wf78/"' in index.text and ADMIN not in index.text

        hello = await client.get("/hello", headers=bearer(USER, **{"x-wf78-priority": "0"}))
        assert hello.json() == {
            "hello": "ada",
            "uid": "u-ada",
            "cid": "demo",
            "roles": [],
            "priority": 1,
            "items": 0,
        }
        assert (await client.get("/hello")).json()["hello"] == "guest"

        # Both configured tables are served; items belong to the company, notes to the user.
        for table, pars in (("items", ["pen", 3, 1.5]), ("notes", ["todo", "buy ink"])):
            added = await client.post(
                f"/api/demo/{table}/mAdd", json={"pars": pars}, headers=bearer(USER)
            )
            assert added.json()["res"] == 0, added.text
            got = await client.post(f"/api/demo/{table}/get", json={}, headers=bearer(ADMIN))
            owners = [(row.get("cid"), row.get("uid")) for row in got.json()["back"]]
            assert owners == ([("demo", None)] if table == "items" else [])
        assert (await client.get("/hello", headers=bearer(USER))).json()["items"] == 1

        lines = []
        async with client.stream("GET", "/stream") as stream:
            assert stream.headers["content-type"].startswith("application/x-ndjson")
            async for line in stream.aiter_lines():
                if line:
                    lines.append(json.loads(line))
        assert [line["tick"] for line in lines] == [0, 1, 2, 3, 4]
        assert lines[-1]["completed"] >= 4

        dashboard = await client.get("/_wf78/", headers=bearer(ADMIN))
        assert dashboard.status_code == 200
        assert "text/html" in dashboard.headers["content-type"]
