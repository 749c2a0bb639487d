"""``Wf78Middleware``: pure ASGI. Opens the engine with the app's lifespan, serves the koa78
data routes and the admin routes, and hands every other request to the app untouched
(with ``current()`` and ``scope["state"]["wf78"]`` published for its handlers)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asgiref.compatibility import guarantee_single_callable

from wf78_core.config import Config, Identity
from wf78_core.core.tracing import detect, joined
from wf78_core.engine import Engine
from wf78_core.http.admin import AdminApp
from wf78_core.http.asgi import Receive, Scope, Send, send_json
from wf78_core.http.context import CURRENT_CLIENT, RequestClient
from wf78_core.http.identity import Callers, allowed_priority
from wf78_core.http.routes import DEFAULT_MAX_PARS, DataRoutes
from wf78_core.http.routes.matching import fold_path

__all__ = ["Wf78Middleware"]

log = logging.getLogger("wf78.http")

_NOT_STARTED = (
    "the wf78 engine is not running: the ASGI server did not run the lifespan protocol "
    "(with uvicorn, do not pass --lifespan off), so Wf78Middleware could not open it"
)


class _LazyClient(RequestClient):
    """The client of a request the app serves: the identity is looked up on first use,
    from the headers the request had when it reached wf78 (only when every authenticator
    allows it: :attr:`Callers.lazy`).

    It keeps a tuple of those headers: not the scope (the scope's state holds the client, a
    reference back would make every request a cycle for the garbage collector), and not the
    scope's list. The client outlives its request: uvicorn's keep-alive timer keeps a copy of
    the request's context, and so the client, until the event loop drops the cancelled timer,
    dozens of requests later. Under 64 keep-alive connections, a list kept that way by every
    request made the garbage collector run 50 times as often as for the bare app; a tuple,
    13 times (benchmarks/README.md, B9).
    """

    __slots__ = ("_callers", "_headers")

    def __init__(self, engine: Engine, callers: Callers, headers: Any) -> None:
        self.engine = engine
        self._identity = None
        self._priority = None
        self._resolve = _later
        self._callers = callers
        self._headers = tuple(headers)

    def _resolved(self) -> None:
        self._resolve = None
        scope = {"type": "http", "headers": self._headers}
        self._headers = ()
        identity = self._callers.identify_now(scope)
        self._identity, self._priority = identity, allowed_priority(scope, identity)


def _later() -> tuple[Identity | None, int | None]:
    """The placeholder ``_resolve`` of a :class:`_LazyClient` (its ``_resolved`` decides)."""
    return None, None


class _StartupFailed(Exception):
    """Raised into the app's lifespan after wf78 itself reported the failure."""


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class _AppLifespan:
    """One lifespan run through the wrapped app: the engine opens when the server's
    ``lifespan.startup`` reaches the app and closes once the app has shut down."""

    def __init__(self, engine: Engine, receive: Receive, send: Send) -> None:
        self.engine = engine
        self._receive = receive
        self._send = send
        self.received = False  # the app read a lifespan message
        self.answered = False  # the server got its answer to the startup
        self.reported = False  # a ``*.failed`` message went to the server
        self.error: Exception | None = None  # why the engine did not start

    async def receive(self) -> dict[str, Any]:
        message: dict[str, Any] = await self._receive()
        self.received = True
        if message["type"] == "lifespan.startup":
            try:
                await self.engine.__aenter__()
            except Exception as error:
                self.error = error
                await self.fail(f"wf78: {_reason(error)}")
                raise _StartupFailed(str(error)) from error
        return message

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind.startswith("lifespan.startup"):
            if self.answered:
                return  # wf78 already answered the startup
            self.answered = True
        if kind.endswith(".failed"):
            self.reported = True
        if kind in _CLOSING and self.engine.running:
            await self.engine.__aexit__(None, None, None)
        await self._send(message)

    async def fail(self, message: str) -> None:
        """Answer the startup with ``lifespan.startup.failed`` (a server may raise here:
        hypercorn does)."""
        self.answered = self.reported = True
        await self._send({"type": "lifespan.startup.failed", "message": message})

    async def close(self) -> None:
        if self.engine.running:
            await self.engine.__aexit__(None, None, None)


# What the app sends once it is done with the engine.
_CLOSING = frozenset(
    {"lifespan.startup.failed", "lifespan.shutdown.complete", "lifespan.shutdown.failed"}
)


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
        # An ASGI2 app (``app(scope)`` returns the coroutine callable) as asgiref adapts it
        # (asgiref leaves this function unannotated). asgiref takes every class for ASGI2;
        # one with ``__await__`` (Starlette's endpoints) is ASGI3, as uvicorn and
        # Starlette's TestClient judge it.
        if inspect.isclass(app) and hasattr(app, "__await__"):
            self.app: Any = app
        else:
            self.app = guarantee_single_callable(app)  # type: ignore[no-untyped-call]
        self.engine = engine if engine is not None else Engine(config)
        self.prefix = "/" + prefix.strip("/")
        self.max_body = max_body
        # One ``wf78_authenticate`` chain for the app's requests, the data and admin routes.
        self.callers = Callers(self.engine.pm)
        self.routes = DataRoutes(
            self.engine,
            max_body=max_body,
            max_page=max_page,
            max_pars=max_pars,
            callers=self.callers,
        )
        self.admin = AdminApp(
            self.engine,
            self.prefix,
            max_body=max_body,
            max_page=max_page,
            max_pars=max_pars,
            callers=self.callers,
        )
        # Paths wf78 may serve; any other request goes straight to the app. Data routes
        # match in any case (as koa78's did), so their prefixes are looked for folded.
        self._claimed = self.prefix
        self._data_claims = self.routes.claims
        self._lazy = self.callers.lazy
        # With a tracer provider, requests join the incoming traceparent (tracing.joined).
        self._traced = detect() is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith(self._claimed) or (
                self._data_claims and fold_path(path).startswith(self._data_claims)
            ):
                serving = self._serve(scope, receive, send)
                if await (joined(scope, serving) if self._traced else serving):
                    return
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        elif kind != "websocket":
            await self.app(scope, receive, send)
            return
        # The app's own request: the identity is worked out only if a handler asks, unless
        # an authenticator must see the whole request now (it may be async, or read more
        # than the headers).
        if self._lazy:
            client: RequestClient = _LazyClient(self.engine, self.callers, scope["headers"])
        else:
            client = await self.client(scope)
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["wf78"] = client
        token = CURRENT_CLIENT.set(client)
        try:
            if self._traced:
                await joined(scope, self.app(scope, receive, send))
            else:
                await self.app(scope, receive, send)
        finally:
            CURRENT_CLIENT.reset(token)

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
        await self.routes.handle(scope, receive, send, route)  # it asks who calls
        return True

    async def client(self, scope: Scope) -> RequestClient:
        """The caller's identity (the ``wf78_authenticate`` chain) and allowed priority."""
        identity = await self.callers.identify(scope)
        return RequestClient(self.engine, identity, allowed_priority(scope, identity))

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Open the engine at startup (before the app's handlers) and close it after the
        app's shutdown; report ``lifespan.startup.failed`` with wf78's reason, then raise
        it (as Starlette's router does: a server or TestClient never waits on a lifespan
        that has ended). ``[http] lifespan`` says what an app's own crash does."""
        mode = self.engine.config.http.lifespan
        if mode == "off":
            await self._own_lifespan(receive, send)
            return
        life = _AppLifespan(self.engine, receive, send)
        try:
            await self.app(scope, life.receive, life.send)
        except _StartupFailed:
            pass  # wf78 answered lifespan.startup.failed: its error is raised below
        except Exception as error:
            if life.error is not None:
                raise  # wf78 reported the failure; the app raised something else since
            if not life.reported:
                _log_crash(error, received=life.received, mode=mode)
            if life.received:
                await life.close()
                if mode == "on" and not life.answered:
                    await life.fail(_fatal(error))
                raise
            if mode == "on":
                await receive()  # the server's lifespan.startup
                await send({"type": "lifespan.startup.failed", "message": _fatal(error)})
                raise
            # ASGI's rule for an app without lifespan support: wf78 runs it for the engine.
            await self._own_lifespan(receive, send)
            return
        if life.error is not None:
            raise life.error
        if not life.received:
            # The app returned without reading a lifespan message: it ignores lifespan.
            await self._own_lifespan(receive, send)
            return
        await life.close()  # the app returned without finishing shutdown

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        engine = self.engine
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await engine.__aenter__()
                except Exception as error:
                    await send(
                        {"type": "lifespan.startup.failed", "message": f"wf78: {_reason(error)}"}
                    )
                    raise
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if engine.running:
                    await engine.__aexit__(None, None, None)
                await send({"type": "lifespan.shutdown.complete"})
                return


def _fatal(error: BaseException) -> str:
    return f'the app raised on the lifespan scope ([http] lifespan = "on"): {_reason(error)}'


def _log_crash(error: BaseException, *, received: bool, mode: str) -> None:
    """An app's crash on the lifespan scope, with its traceback: never silent."""
    if mode == "on":
        then = 'the start-up fails ([http] lifespan = "on")'
    elif received:
        then = "the server decides what follows"
    else:
        then = (
            "wf78 runs the lifespan for the engine alone, as for an app without lifespan "
            'support ([http] lifespan = "on" makes this fatal, "off" keeps the app out of it)'
        )
    log.warning("the wrapped app raised on the lifespan scope: %s", then, exc_info=error)
