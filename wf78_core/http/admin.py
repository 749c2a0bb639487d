"""``AdminApp``: the routes under the middleware's prefix — runs, events, status, metrics and
the dashboard. Every JSON route needs an identity with the ``admin`` role.

The dashboard is a static page whose scripts call the JSON routes with a bearer token. A
browser cannot put that header on the page load itself, and a token in the URL's query
would land in every access log: so the page and its static files, which hold no data, load
without one, and the scripts take the token from the URL's fragment (``#token=``, never
sent to the server) or the page's form. ``?token=`` is refused on every admin route.
"""

from __future__ import annotations

import html
import logging
import math
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, NamedTuple

import msgspec

from wf78_core.config import Identity
from wf78_core.core.fairness import tenant, tenant_of
from wf78_core.engine import Engine
from wf78_core.errors import (
    BackendUnavailable,
    IdempotencyConflict,
    Overloaded,
    UnknownWorkflow,
    Wf78Error,
)
from wf78_core.http.admin_answers import ENCODER as _ENCODER
from wf78_core.http.admin_answers import JSON as _JSON
from wf78_core.http.admin_answers import error as _error
from wf78_core.http.admin_answers import send_json as _send_json
from wf78_core.http.admin_answers import shown as _shown
from wf78_core.http.admin_views import (
    send_history,
    send_run_graph,
    send_runs,
    send_workflows,
)
from wf78_core.http.asgi import (
    MAX_JSON_DEPTH,
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    header,
    nested_deeper_than,
    query_params,
    read_body,
    send_bytes,
)
from wf78_core.http.context import RequestClient
from wf78_core.http.identity import Callers
from wf78_core.http.keys import HEADER, BadKey, caller_key
from wf78_core.http.metrics import CONTENT_TYPE_LATEST, engine_registry, render
from wf78_core.http.openapi import openapi_document
from wf78_core.http.routes import DEFAULT_MAX_PARS

__all__ = ["ADMIN_ROLE", "AdminApp", "AdminRoute"]

logger = logging.getLogger("wf78.http")

#: The role every admin route requires.
ADMIN_ROLE = "admin"

_Handler = Callable[[Scope, Receive, Send, RequestClient, dict[str, str]], Awaitable[None]]


class AdminRoute(NamedTuple):
    """An admin path (after the prefix) and its handlers by HTTP method."""

    pattern: re.Pattern[str]
    methods: dict[str, _Handler]


class _RunRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST {prefix}/runs``."""

    workflow: str
    context: dict[str, Any] = {}


_RUN_REQUEST = msgspec.json.Decoder(_RunRequest)
_PAYLOAD = msgspec.json.Decoder(dict[str, Any])
# What a 503 from a stopping engine says: the client may try again shortly.
_RETRY_SOON = (b"retry-after", b"1")

_CONTENT_TYPES = {
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".txt": b"text/plain; charset=utf-8",
}
# Every dashboard response: never cached, never framed, and the token never leaks as a referrer.
_PAGE_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]
_PAGE_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _is_admin(identity: Identity | None) -> bool:
    return identity is not None and ADMIN_ROLE in identity.roles


def _json_problem(error: Exception) -> str:
    # msgspec raises RecursionError, not DecodeError, for arrays nested thousands deep.
    return "nested too deeply" if isinstance(error, RecursionError) else str(error)


def _field_of(error: msgspec.ValidationError) -> str | None:
    """The body field a msgspec validation error is about (``$.context`` -> ``context``)."""
    message = str(error)
    if " - at `$." in message:
        return message.rpartition(" - at `$.")[2].rstrip("`").split(".")[0].split("[")[0]
    if "field `" in message:
        return message.split("`")[1]
    return None


async def _unavailable(send: Send, error: BackendUnavailable) -> None:
    """503 for a run backend that could not be reached: ``Retry-After`` and the koa78
    envelope (``back`` names a run whose start may have been stored), with ``error``
    as every admin answer has it."""
    message = str(error)
    payload = {
        "res": -503,
        "errmsg": message,
        "kind": "unavailable",
        "back": {"run_id": error.run_id} if error.run_id else None,
        "error": message,
    }
    retry_after = str(max(1, math.ceil(error.retry_after))).encode()
    await _send_json(send, 503, payload, [(b"retry-after", retry_after)])


async def _key_refused(send: Send, error: BadKey | IdempotencyConflict) -> None:
    """400 for an ``Idempotency-Key`` that is no key, 422 for one first sent with another
    run request or event: the koa78 envelope, with ``error`` and ``field`` as every admin
    answer has them."""
    status, kind = (400, "invalid") if isinstance(error, BadKey) else (422, "idempotency_conflict")
    message = str(error) if status == 400 else f"{HEADER}: {error}"
    payload = {"res": -status, "errmsg": message, "kind": kind, "back": None}
    await _send_json(send, status, {**payload, "error": message, "field": HEADER})


async def _deny(send: Send, identity: Identity | None) -> None:
    if identity is None:
        status, message = 401, "authentication required: send 'Authorization: Bearer <token>'"
    else:
        status, message = 403, f"the admin routes need the {ADMIN_ROLE!r} role"
    headers = [(b"www-authenticate", b'Bearer realm="wf78"')] if status == 401 else []
    await _error(send, status, message, headers=headers)


def _without_body(send: Send) -> Send:
    """A ``send`` for HEAD: the GET answer's headers, an empty body."""

    async def head_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return head_send


class _Watched:
    """A ``send`` that notes whether the answer has begun."""

    __slots__ = ("send", "started")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: dict[str, Any]) -> None:
        self.started = True
        await self.send(message)


class AdminApp:
    """The admin routes, as a pure ASGI handler the middleware calls for paths under
    ``prefix``: ``await admin(scope, receive, send, client)``."""

    def __init__(
        self,
        engine: Engine,
        prefix: str,
        *,
        max_body: int = 1 << 20,
        max_page: int = 1000,
        max_pars: int = DEFAULT_MAX_PARS,
        callers: Callers | None = None,
    ) -> None:
        self.engine = engine
        self.prefix = prefix.rstrip("/")
        self.max_body = max_body
        # For the OpenAPI document: the limits the data routes apply.
        self.max_page = max_page
        self.max_pars = max_pars
        self._openapi: bytes | None = None
        self.registry = engine_registry(engine)
        self.callers = callers if callers is not None else Callers(engine.pm)
        dashboard = resources.files("wf78_core.http").joinpath("dashboard")
        self._index = dashboard.joinpath("index.html").read_text("utf-8")
        self._assets: dict[str, tuple[bytes, bytes]] = {}
        for entry in dashboard.iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in _CONTENT_TYPES:
                self._assets[entry.name] = (entry.read_bytes(), _CONTENT_TYPES[suffix])
        self._routes = [
            AdminRoute(re.compile(r"/?"), {"GET": self._page}),
            AdminRoute(re.compile(r"/static/(?P<name>[^/]+)"), {"GET": self._static}),
            AdminRoute(re.compile(r"/runs"), {"GET": self._list_runs, "POST": self._start_run}),
            AdminRoute(re.compile(r"/runs/(?P<run_id>[^/]+)"), {"GET": self._get_run}),
            AdminRoute(re.compile(r"/runs/(?P<run_id>[^/]+)/cancel"), {"POST": self._cancel_run}),
            AdminRoute(re.compile(r"/runs/(?P<run_id>[^/]+)/graph"), {"GET": self._run_graph}),
            AdminRoute(re.compile(r"/history"), {"GET": self._history}),
            AdminRoute(re.compile(r"/workflows"), {"GET": self._workflows}),
            AdminRoute(re.compile(r"/events/(?P<event>[^/]+)"), {"POST": self._emit}),
            AdminRoute(re.compile(r"/status"), {"GET": self._status}),
            AdminRoute(re.compile(r"/dead-letters"), {"GET": self._dead_letters}),
            AdminRoute(
                re.compile(r"/dead-letters/(?P<letter_id>[^/]+)/retry"), {"POST": self._redrive}
            ),
            AdminRoute(re.compile(r"/metrics"), {"GET": self._metrics}),
            AdminRoute(re.compile(r"/openapi\.json"), {"GET": self._openapi_document}),
        ]

    @property
    def routes(self) -> tuple[AdminRoute, ...]:
        """Every admin route, in the order paths are matched."""
        return tuple(self._routes)

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, client: RequestClient
    ) -> None:
        path: str = scope["path"][len(self.prefix) :]
        if "token" in query_params(scope):
            await _error(
                send,
                400,
                "a token does not belong in the URL, where access logs keep it: open "
                f"{self.prefix}/#token=<token> (a fragment never reaches the server) or send "
                "'Authorization: Bearer <token>'",
                field="token",
            )
            return
        # The dashboard's page and files are static: no data, so no token needed.
        shell = path in ("", "/") or path.startswith("/static/")
        if not shell and not _is_admin(client.identity):
            await _deny(send, client.identity)
            return
        for route in self._routes:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            method: str = scope["method"]
            handler = route.methods.get(method)
            if handler is None and method == "HEAD" and "GET" in route.methods:
                handler, send = route.methods["GET"], _without_body(send)
            if handler is None:
                allowed = sorted({*route.methods, *(["HEAD"] if "GET" in route.methods else [])})
                await _error(
                    send,
                    405,
                    f"{method} is not allowed on {scope['path']} (allowed: {', '.join(allowed)})",
                    headers=[(b"allow", ", ".join(allowed).encode())],
                )
                return
            params = match.groupdict()
            watched = _Watched(send)
            try:
                await handler(scope, receive, watched, client, params)
            except BackendUnavailable as error:
                await _unavailable(send, error)
            except BadKey as error:
                await _key_refused(send, error)
            except Exception:
                # A fault of wf78's own: logged, and answered with the envelope (no bare 500).
                logger.exception("admin route %s %s failed", method, scope["path"])
                if watched.started:
                    raise
                await _error(send, 500, f"{method} {scope['path']} failed: see the server's log")
            return
        await _error(send, 404, f"no admin route {scope['path']!r}")

    async def _body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The request body, or None after answering 413."""
        try:
            return await read_body(receive, self.max_body, scope)
        except BodyTooLarge as error:
            await _error(send, 413, str(error))
            return None

    # -- dashboard -------------------------------------------------------------------------

    async def _page(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        client: RequestClient,
        params: dict[str, str],
    ) -> None:
        body = self._index.replace("{{prefix}}", html.escape(self.prefix)).encode()
        headers = [*_PAGE_HEADERS, (b"content-security-policy", _PAGE_POLICY)]
        await send_bytes(send, 200, body, b"text/html; charset=utf-8", headers)

    async def _static(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        client: RequestClient,
        params: dict[str, str],
    ) -> None:
        asset = self._assets.get(params["name"])
        if asset is None:
            await _error(send, 404, f"no dashboard file {params['name']!r}")
            return
        body, content_type = asset
        await send_bytes(send, 200, body, content_type, _PAGE_HEADERS)

    # -- runs and events -------------------------------------------------------------------

    async def _start_run(
        self, scope: Scope, receive: Receive, send: Send, client: RequestClient, _: dict[str, str]
    ) -> None:
        requested = header(scope, b"x-wf78-priority")
        if requested is not None and client.priority is None:
            await _error(
                send,
                400,
                f"X-Wf78-Priority must be an integer of at most 9 digits, got {_shown(requested)}",
                field="priority",
            )
            return
        key = caller_key(scope, client.identity)  # BadKey: 400
        body = await self._body(scope, receive, send)
        if body is None:
            return
        try:
            request = _RUN_REQUEST.decode(body)
        except msgspec.ValidationError as error:
            field = _field_of(error)
            # No field: the body as a whole is wrong (an array, say), and the message says so.
            what = "bad run request" if field else "bad run request body"
            await _error(send, 400, f"{what}: {error}", field=field)
            return
        except (msgspec.DecodeError, RecursionError) as error:
            await _error(
                send,
                400,
                'body: must be JSON like {"workflow": id, "context": {...}}: '
                + _json_problem(error),
            )
            return
        if nested_deeper_than(request.context, MAX_JSON_DEPTH - 1, text=body):
            message = f"context: JSON nested more than {MAX_JSON_DEPTH} levels deep"
            await _error(send, 400, message, field="context")
            return
        # The run is the caller's: its tasks wait in the caller's turn and log its tenant.
        caller = tenant_of(client.identity, self.engine.admission.fair_by)
        try:
            with tenant(caller):
                run = await self.engine.run(
                    request.workflow,
                    request.context,
                    wait=False,
                    priority=client.priority,
                    idempotency_key=key,
                )
        except UnknownWorkflow as error:
            await _error(send, 404, str(error), field="workflow")
            return
        except IdempotencyConflict as error:
            await _key_refused(send, error)
            return
        except Overloaded as error:
            await self._overloaded(send, error)
            return
        except BackendUnavailable as error:
            await _unavailable(send, error)
            return
        except Wf78Error as error:  # shutting down: another process may take it soon
            await _error(send, 503, str(error), headers=[_RETRY_SOON])
            return
        await self._accepted(send, run.id)

    async def _accepted(self, send: Send, run_id: str) -> None:
        """202 for a run that was accepted (journaled), with where to follow it."""
        location = f"{self.prefix}/runs/{run_id}".encode()
        await _send_json(send, 202, {"run_id": run_id}, [(b"location", location)])

    async def _list_runs(
        self, scope: Scope, receive: Receive, send: Send, client: RequestClient, _: dict[str, str]
    ) -> None:
        await send_runs(self.engine, scope, send)

    async def _run_graph(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        client: RequestClient,
        params: dict[str, str],
    ) -> None:
        await send_run_graph(self.engine, send, params["run_id"])

    async def _history(
        self, scope: Scope, receive: Receive, send: Send, client: RequestClient, _: dict[str, str]
    ) -> None:
        await send_history(self.engine, scope, send)

    async def _workflows(
        self, scope: Scope, receive: Receive, send: Send, client: RequestClient, _: dict[str, str]
    ) -> None:
        await send_workflows(self.engine, send)

    async def _get_run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        client: RequestClient,
        params: dict[str, str],
    ) -> None:
        try:
            run = await self.engine.fetch_run(params["run_id"])
        except UnknownWorkflow as error:
            await _error(send, 404, str(error), field="run_id")
            return
        await _send_json(send, 200, run)

    async def _cancel_run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        client: RequestClient,
        params: dict[str, str],
    ) -> None:
        try:
            run = await self.engine.cancel(params["run_id"])
        except UnknownWorkflow as error:
            await _error(send, 404, str(error), field="run_id")
            return
        await _send_json(send, 200, run)

    async def _emit(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        client: RequestClient,
        params: dict[str, str],
    ) -> None:
        key = caller_key(scope, client.identity)  # BadKey: 400
        body = await self._body(scope, receive, send)
        if body is None:
            return
        payload: dict[str, Any] | None = None
        if body.strip():
            try:
                payload = _PAYLOAD.decode(body)
            except (msgspec.DecodeError, RecursionError) as error:
                await _error(
                    send,
                    400,
                    f"body: the event payload must be a JSON object: {_json_problem(error)}",
                )
                return
            if nested_deeper_than(payload, text=body):
                message = f"body: JSON nested more than {MAX_JSON_DEPTH} levels deep"
                await _error(send, 400, message)
                return
        try:
            run_ids = await self.engine.emit(params["event"], payload, idempotency_key=key)
        except IdempotencyConflict as error:
            await _key_refused(send, error)
            return
        except Overloaded as error:
            await self._overloaded(send, error)
            return
        except BackendUnavailable as error:
            await _unavailable(send, error)
            return
        except Wf78Error as error:  # shutting down: another process may take it soon
            await _error(send, 503, str(error), headers=[_RETRY_SOON])
            return
        await _send_json(send, 202, {"run_ids": run_ids})

    async def _overloaded(self, send: Send, error: Overloaded) -> None:
        retry_after = str(max(1, math.ceil(error.retry_after))).encode()
        await _error(send, 503, str(error), headers=[(b"retry-after", retry_after)])

    # -- dead letters ----------------------------------------------------------------------

    async def _dead_letters(
        self, scope: Scope, receive: Receive, send: Send, client: RequestClient, _: dict[str, str]
    ) -> None:
        await _send_json(send, 200, {"dead_letters": await self.engine.fetch_dead_letters()})

    async def _redrive(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        client: RequestClient,
        params: dict[str, str],
    ) -> None:
        try:
            run = await self.engine.retry_dead_letter(params["letter_id"])
        except UnknownWorkflow as error:
            await _error(send, 404, str(error), field="letter_id")
            return
        except Overloaded as error:
            await self._overloaded(send, error)
            return
        except BackendUnavailable as error:
            await _unavailable(send, error)
            return
        except Wf78Error as error:
            # Its run is still going (409), or the engine is shutting down (503).
            if self.engine.running:
                await _error(send, 409, str(error))
            else:
                await _error(send, 503, str(error), headers=[_RETRY_SOON])
            return
        await self._accepted(send, run.id)

    # -- introspection ---------------------------------------------------------------------

    async def _status(
        self, scope: Scope, receive: Receive, send: Send, client: RequestClient, _: dict[str, str]
    ) -> None:
        await _send_json(send, 200, self.engine.stats())

    async def _metrics(
        self, scope: Scope, receive: Receive, send: Send, client: RequestClient, _: dict[str, str]
    ) -> None:
        await send_bytes(send, 200, render(self.registry), CONTENT_TYPE_LATEST.encode())

    async def _openapi_document(
        self, scope: Scope, receive: Receive, send: Send, client: RequestClient, _: dict[str, str]
    ) -> None:
        if self._openapi is None:  # built on first use: the configuration does not change
            document = openapi_document(
                self.engine.config,
                self.prefix,
                max_body=self.max_body,
                max_page=self.max_page,
                max_pars=self.max_pars,
                admin_role=ADMIN_ROLE,
            )
            self._openapi = _ENCODER.encode(document)
        await send_bytes(send, 200, self._openapi, _JSON)
