"""``Wf78Middleware``: pure ASGI. Opens the engine with the app's lifespan, serves the koa78
data routes and the admin routes, and hands every other request to the app untouched
(with ``current()`` and ``scope["state"]["wf78"]`` published for its handlers)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wf78_core.config import Config, Identity
from wf78_core.engine import Engine
from wf78_core.http.admin import AdminApp
from wf78_core.http.asgi import Receive, Scope, Send, header, parse_priority, send_json
from wf78_core.http.context import RequestClient, _current
from wf78_core.http.identity import TokenAuthenticator, effective_priority
from wf78_core.http.routes import DEFAULT_MAX_PARS, DataRoutes
from wf78_core.plugin.manager import HookChain

__all__ = ["Wf78Middleware"]

_NOT_STARTED = (
    "the wf78 engine is not running: the ASGI server did not run the lifespan protocol "
    "(with uvicorn, do not pass --lifespan off), so Wf78Middleware could not open it"
)


class _LazyClient(RequestClient):
    """The client of a request the app serves: the identity is looked up on first use,
    from the headers the request had when it reached wf78.

    It keeps a tuple of those headers: not the scope (the scope's state holds the client, a
    reference back would make every request a cycle for the garbage collector), and not the
    scope's list. The client outlives its request: uvicorn's keep-alive timer keeps a copy of
    the request's context, and so the client, until the event loop drops the cancelled timer,
    dozens of requests later. Under 64 keep-alive connections, a list kept that way by every
    request made the garbage collector run 50 times as often as for the bare app; a tuple,
    13 times (benchmarks/README.md, B9).
    """

    __slots__ = ("_headers", "_middleware")

    def __init__(self, middleware: Wf78Middleware, headers: Any) -> None:
        self.engine = middleware.engine
        self._identity = None
        self._priority = None
        self._resolve = _later
        self._middleware = middleware
        self._headers = tuple(headers)

    def _resolved(self) -> None:
        self._resolve = None
        scope = {"type": "http", "headers": self._headers}
        self._headers = ()
        self._identity, self._priority = self._middleware._from_tokens(scope)


def _later() -> tuple[Identity | None, int | None]:
    """The placeholder ``_resolve`` of a :class:`_LazyClient` (its ``_resolved`` decides)."""
    return None, None


class _StartupFailed(Exception):
    """Raised into the app's lifespan after wf78 itself reported the failure."""


class Wf78Middleware:
    """Wrap any ASGI app: ``Wf78Middleware(app, engine=None, config=None, prefix="/_wf78")``.

    ``engine`` is an :class:`Engine` (not yet entered: the middleware opens and closes it
    with the lifespan); otherwise one is built from ``config`` (None = embedded default).
    ``max_body`` (bytes, checked while reading) bounds request bodies of wf78's routes;
    ``max_page`` is the largest ``getnumber`` a data route accepts; ``max_pars`` the most
    values a data route's ``pars`` (and ``rows``, ``ids``, a ``where`` list) may carry.
    """

    def __init__(
        self,
        app: Any,
        *,
        engine: Engine | None = None,
        config: Config | Mapping[str, Any] | str | Path | None = None,
        prefix: str = "/_wf78",
        max_body: int = 1 << 20,
        max_page: int = 1000,
        max_pars: int = DEFAULT_MAX_PARS,
    ) -> None:
        if engine is not None and config is not None:
            raise ValueError("pass engine or config, not both")
        self.app = app
        self.engine = engine if engine is not None else Engine(config)
        self.prefix = "/" + prefix.strip("/")
        self.max_body = max_body
        self._tokens = TokenAuthenticator(self.engine.config.auth)
        # Third-party authenticators first, then the built-in token lookup.
        self._authenticate = HookChain(self.engine.pm, "wf78_authenticate")
        self.routes = DataRoutes(
            self.engine, max_body=max_body, max_page=max_page, max_pars=max_pars
        )
        self.admin = AdminApp(
            self.engine, self.prefix, max_body=max_body, max_page=max_page, max_pars=max_pars
        )
        # Paths wf78 may serve; any other request goes straight to the app.
        self._claimed = (self.prefix, *self.routes.claims)
        self._plugins_authenticate = bool(self._authenticate)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"].startswith(self._claimed):
                if await self._serve(scope, receive, send):
                    return
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        elif kind != "websocket":
            await self.app(scope, receive, send)
            return
        # The app's own request: the identity is worked out only if a handler asks, unless
        # plugins authenticate (they may be async, so they are asked now).
        if self._plugins_authenticate:
            client = await self.client(scope)
        else:
            client = _LazyClient(self, scope["headers"])
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["wf78"] = client
        token = _current.set(client)
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer an admin or data route; False when ``path`` is the app's after all."""
        path: str = scope["path"]
        prefix = self.prefix
        if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
            if not self.engine.running:
                await send_json(send, 503, {"error": _NOT_STARTED})
                return True
            await self.admin(scope, receive, send, await self.client(scope))
            return True
        route = self.routes.match(path)
        if route is None:
            return False
        if not self.engine.running:
            await send_json(
                send,
                503,
                {"res": -503, "errmsg": _NOT_STARTED, "kind": "unavailable", "back": None},
            )
            return True
        await self.routes.handle(scope, receive, send, await self.client(scope), route)
        return True

    async def client(self, scope: Scope) -> RequestClient:
        """The caller's identity (plugins first, then tokens) and allowed priority."""
        identity = None
        if self._authenticate:
            identity = await self._authenticate.first(scope=scope)
        if identity is None:
            identity = self._tokens.wf78_authenticate(scope)
        return RequestClient(self.engine, identity, self._priority(scope, identity))

    def _from_tokens(self, scope: Scope) -> tuple[Identity | None, int | None]:
        identity = self._tokens.wf78_authenticate(scope)
        return identity, self._priority(scope, identity)

    def _priority(self, scope: Scope, identity: Identity | None) -> int | None:
        requested = header(scope, b"x-wf78-priority")
        # A bad header is None here: routes report it, the app's own routes ignore it.
        priority = None if requested is None else parse_priority(requested)
        return effective_priority(priority, identity)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Open the engine at startup (before the app's handlers) and close it after the
        app's shutdown; report ``lifespan.startup.failed`` with wf78's reason."""
        engine = self.engine
        received = False
        failed = False

        async def wrapped_receive() -> dict[str, Any]:
            nonlocal received, failed
            message: dict[str, Any] = await receive()
            received = True
            if message["type"] == "lifespan.startup":
                try:
                    await engine.__aenter__()
                except Exception as error:
                    failed = True
                    await send(
                        {
                            "type": "lifespan.startup.failed",
                            "message": f"wf78: {type(error).__name__}: {error}",
                        }
                    )
                    raise _StartupFailed(str(error)) from error
            return message

        async def wrapped_send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if failed and kind.startswith("lifespan.startup"):
                return  # wf78 already answered the startup
            if kind == "lifespan.shutdown.complete" and engine.running:
                await engine.__aexit__(None, None, None)
            elif kind == "lifespan.startup.failed" and engine.running:
                await engine.__aexit__(None, None, None)
            await send(message)

        try:
            await self.app(scope, wrapped_receive, wrapped_send)
        except _StartupFailed:
            return
        except Exception:
            if received:
                if engine.running:
                    await engine.__aexit__(None, None, None)
                raise
            # The app does not speak lifespan: run it for the engine alone.
            await self._own_lifespan(receive, send)
            return
        if not received:
            # The app returned without reading a lifespan message: it ignores lifespan.
            await self._own_lifespan(receive, send)
            return
        if engine.running:  # the app returned without finishing shutdown
            await engine.__aexit__(None, None, None)

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        engine = self.engine
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await engine.__aenter__()
                except Exception as error:
                    await send(
                        {
                            "type": "lifespan.startup.failed",
                            "message": f"wf78: {type(error).__name__}: {error}",
                        }
                    )
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if engine.running:
                    await engine.__aexit__(None, None, None)
                await send({"type": "lifespan.shutdown.complete"})
                return
