"""The ``wf78 demo`` app: a small Starlette app wrapped in :class:`Wf78Middleware`.

Its own routes (``/``, ``/hello``, ``/stream``) sit beside what the middleware serves: the
koa78 data routes of two tables (``/api/demo/items/...`` scoped to the caller's company,
``/api/demo/notes/...`` scoped to the caller) and the admin routes under ``/_wf78/``.

    uvicorn examples.app:app             # ./wf78-demo.db; tokens from the environment
    wf78 demo                            # the same, with traffic and the URLs printed

``build_app(db_path, admin_token=..., user_token=...)`` makes a fresh one (tests, the demo).
"""

from __future__ import annotations

import html
import ipaddress
import os
import secrets
import tomllib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from wf78_core import Wf78Middleware, current
from wf78_core.config import DEFAULT_CONFIG_TOML

__all__ = [
    "ADMIN_TOKEN_ENV",
    "USER_TOKEN_ENV",
    "bare_app",
    "build_app",
    "demo_config",
    "raw_app",
]

# Module-level tokens come from these variables; otherwise each process makes its own.
ADMIN_TOKEN_ENV = "WF78_DEMO_ADMIN_TOKEN"
USER_TOKEN_ENV = "WF78_DEMO_USER_TOKEN"
DEFAULT_DB = "./wf78-demo.db"
# Ticks of /stream: bounded, so a forgotten client does not hold a connection forever.
STREAM_TICKS = 5
STREAM_INTERVAL = 0.2

# Added to the embedded default (its SQLite source, the `items` and `logs` tables and the
# note's two workflows): a second served table, and who may call.
_DEMO_TOML = """\
[tables.notes]
columns = { title = "text", body = "text" }
owner = "uid"
route = "api/demo"
"""


def demo_config(db_path: str | Path, *, admin_token: str, user_token: str) -> dict[str, Any]:
    """The demo's configuration: the embedded default on ``db_path`` plus the ``notes``
    table and two identities (``admin`` with the admin role, ``ada`` a plain user)."""
    raw: dict[str, Any] = tomllib.loads(DEFAULT_CONFIG_TOML)
    raw["datasources"]["default"]["url"] = f"sqlite:///{Path(db_path).resolve()}"
    raw["tables"].update(tomllib.loads(_DEMO_TOML)["tables"])
    raw["auth"] = {
        "tokens": {
            admin_token: {"uid": "u-admin", "cid": "demo", "uname": "admin", "roles": ["admin"]},
            # A plain user may not raise its requests above priority 1.
            user_token: {"uid": "u-ada", "cid": "demo", "uname": "ada", "max_priority": 1},
        }
    }
    return raw


# -- the app's own routes ------------------------------------------------------------------


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def index(request: Request) -> HTMLResponse:
    token: str | None = request.app.state.admin_token
    dashboard = "/_wf78/"
    # The admin token goes into the link only for callers on this machine, in the fragment:
    # a browser never sends that to the server, so no access log keeps it.
    if token and _is_loopback(request):
        dashboard += "#token=" + html.escape(token, quote=True)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>wf78 demo</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto">
<h1>wf78 demo</h1>
<p>A Starlette app wrapped in <code>Wf78Middleware</code>. Its own routes:</p>
<ul>
  <li><a href="/hello">/hello</a> greets the caller, as <code>wf78_core.current()</code> sees it</li>
  <li><a href="/stream">/stream</a> streams a few engine snapshots</li>
</ul>
<p>Served by wf78:</p>
<ul>
  <li><a href="{dashboard}">the dashboard</a> (<code>/_wf78/</code>, admin token)</li>
  <li><code>POST /api/demo/items/mAdd</code>, <code>/api/demo/items/get</code>, &hellip;
      and the same for <code>notes</code> (bearer token)</li>
</ul>
</body></html>
"""
    return HTMLResponse(page)


async def hello(request: Request) -> JSONResponse:
    client = current()
    identity = client.identity
    body: dict[str, Any] = {
        "hello": (identity.uname or identity.uid) if identity else "guest",
        "uid": identity.uid if identity else None,
        "cid": identity.cid if identity else None,
        "roles": list(identity.roles) if identity else [],
        "priority": client.priority,
    }
    if identity is not None and identity.cid:
        # The caller's own rows, counted through the engine.
        _rows, body["items"] = await client.table("items").get(cols="id", number=1, total=True)
    return JSONResponse(body)


async def stream(request: Request) -> StreamingResponse:
    engine = current().engine

    async def snapshots() -> AsyncIterator[bytes]:
        for tick in range(STREAM_TICKS):
            stats = engine.stats()
            line = {
                "tick": tick,
                "submitted": stats.submitted,
                "completed": stats.completed,
                "failed": stats.failed,
            }
            yield msgspec.json.encode(line) + b"\n"
            if tick + 1 < STREAM_TICKS:
                await anyio.sleep(STREAM_INTERVAL)

    return StreamingResponse(snapshots(), media_type="application/x-ndjson")


def _routes_app(admin_token: str | None = None) -> Starlette:
    starlette = Starlette(
        routes=[
            Route("/", index),
            Route("/hello", hello),
            Route("/stream", stream),
        ]
    )
    starlette.state.admin_token = admin_token
    return starlette


def build_app(
    db_path: str | Path = DEFAULT_DB,
    *,
    admin_token: str | None = None,
    user_token: str | None = None,
    plugins: Sequence[str] = (),
) -> Wf78Middleware:
    """The demo app on the SQLite file ``db_path``; tokens default to fresh random ones
    (read them back from ``app.engine.config.auth.tokens``); ``plugins`` are plugin
    modules its engine registers too (``[engine] plugins``)."""
    admin_token = admin_token or secrets.token_urlsafe(16)
    user_token = user_token or secrets.token_urlsafe(16)
    config = demo_config(db_path, admin_token=admin_token, user_token=user_token)
    config.setdefault("engine", {})["plugins"] = list(plugins)
    return Wf78Middleware(_routes_app(admin_token), config=config)


# -- raw ASGI --------------------------------------------------------------------------------


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A plain ASGI callable (no framework) for ``wf78 serve examples.app:raw_app``."""
    if scope["type"] != "http":
        return  # no lifespan of its own: the middleware runs wf78's
    client = scope.get("state", {}).get("wf78")
    identity = client.identity if client is not None else None
    body = msgspec.json.encode(
        {
            "app": "raw",
            "path": scope["path"],
            "hello": identity.uname if identity is not None else "guest",
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


# Unwrapped, for ``wf78 serve examples.app:bare_app --config FILE``.
bare_app = _routes_app()

_app: Wf78Middleware | None = None


def __getattr__(name: str) -> Any:
    """``app``, built on first use (``uvicorn examples.app:app``): importing this module
    for ``build_app`` or ``raw_app`` builds no engine."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = build_app(
            os.environ.get("WF78_DEMO_DB", DEFAULT_DB),
            admin_token=os.environ.get(ADMIN_TOKEN_ENV),
            user_token=os.environ.get(USER_TOKEN_ENV),
        )
    return _app
