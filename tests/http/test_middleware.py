"""``Wf78Middleware`` as pure ASGI: what it leaves to the wrapped app (paths, streaming,
websockets), what it publishes to it (``current()``, ``scope["state"]["wf78"]``), and how
it rides the lifespan protocol (engine open before the app's startup, closed after its
shutdown, failures reported as ``lifespan.startup.failed``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from wf78_core import Engine, Identity, Wf78Error, current, hookimpl
from wf78_core.http.context import RequestClient
from wf78_core.http.middleware import Wf78Middleware
from wf78_core.plugin.datasource import SourceSpec

TOKEN = "tok-alice"
CAPPED = "tok-carol"
Message = dict[str, Any]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_config(path: Path) -> dict[str, Any]:
    return {
        "engine": {"drain_timeout": 2.0},
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{path}"}},
        "tables": {
            "Items": {
                "columns": {"name": "text", "qty": "int"},
                "owner": "cid",
                "route": "api/demo",
                "data_source": "db",
            }
        },
        "auth": {
            "tokens": {
                TOKEN: {"uid": "u-alice", "cid": "acme", "uname": "alice"},
                CAPPED: {"uid": "u-carol", "cid": "acme", "uname": "carol", "max_priority": 2},
            }
        },
    }


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return make_config(tmp_path / "middleware.db")


@asynccontextmanager
async def client_of(app: Any, *, lifespan: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    if not lifespan:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
        return
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


class Recorder:
    """A raw ASGI app: records what reaches it and answers with what it was told to."""

    def __init__(self) -> None:
        self.scopes: list[Message] = []
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"  # no lifespan support
        self.scopes.append(scope)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send(
            {
                "type": "http.response.start",
                "status": 218,
                "headers": [(b"x-app", b"yes"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")],
            }
        )
        await send({"type": "http.response.body", "body": b"app:" + body})


# -- what the app gets --------------------------------------------------------------------


@pytest.mark.anyio
async def test_paths_not_served_reach_the_app_untouched(config: dict[str, Any]) -> None:
    app = Recorder()
    async with client_of(Wf78Middleware(app, config=config)) as client:
        for path in ("/", "/api/other/Items/get", "/api/demo", "/_wf78x", "/apidemo/Items/get"):
            response = await client.post(
                path + "?q=1&q=2",
                content=b"raw \x00 bytes",
                headers={"x-custom": "kept", "authorization": f"Bearer {TOKEN}"},
            )
            assert response.status_code == 218
            assert response.content == b"app:raw \x00 bytes"
            assert response.headers["x-app"] == "yes"
            assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
            scope = app.scopes[-1]
            assert (scope["path"], scope["query_string"], scope["method"]) == (
                path,
                b"q=1&q=2",
                "POST",
            )
            assert (b"x-custom", b"kept") in scope["headers"]
            assert (b"authorization", f"Bearer {TOKEN}".encode()) in scope["headers"]
    assert len(app.scopes) == 5


@pytest.mark.anyio
async def test_streaming_responses_pass_through_message_by_message(
    config: dict[str, Any],
) -> None:
    """ASGI level: every message the app sends reaches the server, the same and in order."""
    sent_by_app: list[Message] = [
        {"type": "http.response.start", "status": 200, "headers": [(b"x-stream", b"1")]},
        {"type": "http.response.body", "body": b"one,", "more_body": True},
        {"type": "http.response.body", "body": b"two,", "more_body": True},
        {"type": "http.response.body", "body": b"", "more_body": True},
        {"type": "http.response.body", "body": b"three", "more_body": False},
    ]
    gate = anyio.Event()

    async def streaming(scope: Message, receive: Any, send: Any) -> None:
        for index, message in enumerate(sent_by_app):
            await send(message)
            if index == 1:
                await gate.wait()  # the first chunk leaves before the app finishes

    middleware = Wf78Middleware(streaming, config=config)
    received: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    two_sent = anyio.Event()

    async def send(message: Message) -> None:
        received.append(message)
        if len(received) == 2:
            two_sent.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/stream",
        "raw_path": b"/stream",
        "query_string": b"",
        "headers": [],
        "server": ("test", 80),
        "client": ("test", 1234),
    }
    async with anyio.create_task_group() as group:
        group.start_soon(middleware, scope, receive, send)
        with anyio.fail_after(5):
            await two_sent.wait()
        assert received == sent_by_app[:2]
        gate.set()
    assert received == sent_by_app
    assert all(a is b for a, b in zip(received, sent_by_app, strict=True))


@pytest.mark.anyio
async def test_starlette_streaming_response_through_httpx(config: dict[str, Any]) -> None:
    async def numbers() -> AsyncIterator[bytes]:
        for n in range(5):
            yield f"{n}\n".encode()
            await anyio.lowlevel.checkpoint()

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(numbers(), media_type="text/plain")

    app = Wf78Middleware(Starlette(routes=[Route("/numbers", stream)]), config=config)
    async with client_of(app) as client, client.stream("GET", "/numbers") as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers
        text = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert text == b"0\n1\n2\n3\n4\n"


@pytest.mark.anyio
async def test_websockets_pass_through(config: dict[str, Any]) -> None:
    """ASGI level: a Starlette websocket endpoint behind the middleware, message by message."""

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        client = websocket.scope["state"]["wf78"]
        who = client.identity.uname if client.identity else None
        await websocket.send_json({"who": who, "current": current() is client})
        while True:
            text = await websocket.receive_text()
            if text == "bye":
                await websocket.close(code=4000)
                return
            await websocket.send_text(text.upper())

    app = Wf78Middleware(Starlette(routes=[WebSocketRoute("/ws", echo)]), config=config)
    to_app, app_inbox = anyio.create_memory_object_stream[Message](10)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](10)
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {TOKEN}".encode())],
        "server": ("test", 80),
        "client": ("test", 1234),
        "subprotocols": [],
    }
    async with to_app, app_inbox, app_outbox, from_app, anyio.create_task_group() as group:
        group.start_soon(app, scope, app_inbox.receive, app_outbox.send)
        with anyio.fail_after(5):
            await to_app.send({"type": "websocket.connect"})
            assert (await from_app.receive())["type"] == "websocket.accept"
            greeting = await from_app.receive()
            assert greeting["type"] == "websocket.send"
            assert greeting["text"] == '{"who":"alice","current":true}'
            await to_app.send({"type": "websocket.receive", "text": "hello"})
            assert await from_app.receive() == {"type": "websocket.send", "text": "HELLO"}
            await to_app.send({"type": "websocket.receive", "text": "bye"})
            assert await from_app.receive() == {
                "type": "websocket.close",
                "code": 4000,
                "reason": "",
            }


@pytest.mark.anyio
async def test_current_and_scope_state_inside_a_handler(config: dict[str, Any]) -> None:
    async def whoami(request: Request) -> JSONResponse:
        client = current()
        assert request.scope["state"]["wf78"] is client
        identity = client.identity
        rows = await client.table("Items").get(cols=["name"]) if identity else None
        return JSONResponse(
            {
                "uname": identity.uname if identity else None,
                "priority": client.priority,
                "rows": rows,
                "running": client.engine.running,
            }
        )

    app = Wf78Middleware(Starlette(routes=[Route("/me", whoami)]), config=config)
    async with client_of(app) as client:
        added = await client.post(
            "/api/demo/Items/mAdd", json={"pars": ["apple", 1]}, headers={"sid": TOKEN}
        )
        assert added.json()["res"] == 0
        anonymous = (await client.get("/me")).json()
        assert anonymous == {"uname": None, "priority": None, "rows": None, "running": True}
        alice = await client.get(
            "/me", headers={"authorization": f"Bearer {TOKEN}", "x-wf78-priority": "0"}
        )
        assert alice.json() == {
            "uname": "alice",
            "priority": 0,
            "rows": [{"name": "apple"}],
            "running": True,
        }
        carol = await client.get(
            "/me", headers={"authorization": f"Bearer {CAPPED}", "x-wf78-priority": "0"}
        )
        assert carol.json()["priority"] == 2  # capped by max_priority
        # The app's own routes ignore a malformed priority header.
        odd = await client.get("/me", headers={"sid": TOKEN, "x-wf78-priority": "soon"})
        assert odd.json()["priority"] is None
    with pytest.raises(Wf78Error, match="only available inside a request"):
        current()


@pytest.mark.anyio
async def test_a_client_kept_after_its_request_still_knows_the_caller(
    config: dict[str, Any],
) -> None:
    """The identity is looked up on first use, even after the response, from the headers
    the request had when it reached wf78 (not from whatever the scope holds later)."""
    kept: list[RequestClient] = []

    async def remember(request: Request) -> JSONResponse:
        kept.append(current())
        request.scope["headers"].clear()  # what an app may do to its own scope
        return JSONResponse({})

    app = Wf78Middleware(Starlette(routes=[Route("/remember", remember)]), config=config)
    async with client_of(app) as client:
        await client.get("/remember", headers={"authorization": f"Bearer {TOKEN}"})
        await client.get("/remember", headers={"sid": CAPPED, "x-wf78-priority": "0"})
        await client.get("/remember")
    assert [(c.identity.uname if c.identity else None, c.priority) for c in kept] == [
        ("alice", None),
        ("carol", 2),
        (None, None),
    ]


def test_current_outside_a_request_is_a_clear_error() -> None:
    with pytest.raises(Wf78Error, match=r"wf78\.current\(\).*Wf78Middleware"):
        current()


@pytest.mark.anyio
async def test_an_authenticate_hook_comes_before_tokens(config: dict[str, Any]) -> None:
    class HeaderAuth:
        @hookimpl
        def wf78_authenticate(self, scope: Message) -> Identity | None:
            for key, value in scope["headers"]:
                if key == b"x-user":
                    return Identity(uid=value.decode(), cid="plugged", uname=value.decode())
            return None

    async def whoami(request: Request) -> JSONResponse:
        identity = current().identity
        return JSONResponse(identity.uname if identity else None)

    engine = Engine(config, plugins=[HeaderAuth()])
    app = Wf78Middleware(Starlette(routes=[Route("/me", whoami)]), engine=engine)
    async with client_of(app) as client:
        assert (await client.get("/me", headers={"x-user": "zed"})).json() == "zed"
        assert (await client.get("/me", headers={"sid": TOKEN})).json() == "alice"


# -- lifespan -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_engine_opens_before_app_startup_and_closes_after_its_shutdown(
    config: dict[str, Any],
) -> None:
    engine = Engine(config)
    seen: list[tuple[str, bool]] = []
    alice = Identity(uid="u-alice", cid="acme", uname="alice")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        seen.append(("startup", engine.running))
        # The engine is usable from the app's startup code.
        await engine.table("Items", identity=alice).add({"name": "from startup"})
        yield
        seen.append(("shutdown", engine.running))

    async def listing(request: Request) -> JSONResponse:
        return JSONResponse(await current().table("Items").get(cols=["name"]))

    app = Starlette(routes=[Route("/list", listing)], lifespan=lifespan)
    wrapped = Wf78Middleware(app, engine=engine)
    async with client_of(wrapped) as client:
        response = await client.get("/list", headers={"sid": TOKEN})
        assert response.json() == [{"name": "from startup"}]
        assert engine.running
    assert seen == [("startup", True), ("shutdown", True)]
    assert not engine.running


class Broken:
    """A data-source type whose ``open()`` fails."""

    actions = frozenset({"get"})
    concurrency = 1

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec

    async def open(self) -> None:
        raise OSError("the disk is on fire")

    async def close(self) -> None:
        pass

    async def health(self) -> None:
        pass

    async def execute(self, op: Any) -> Any:
        return None


class BrokenPlugin:
    @hookimpl
    def wf78_register_datasources(self, registry: Any) -> None:
        registry.add("broken", Broken)


async def drive_lifespan(app: Any, *events: str) -> list[Message]:
    """Run the ASGI lifespan protocol by hand: send ``events``, return what came back."""
    incoming = [{"type": f"lifespan.{event}"} for event in events]
    replies: list[Message] = []
    more = anyio.Event()

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        await more.wait()  # nothing more to say: the app waits, like under a server
        return {"type": "lifespan.shutdown"}

    async def send(message: Message) -> None:
        replies.append(message)

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    with anyio.fail_after(10):
        try:
            await app(scope, receive, send)
        except BaseException:
            pass  # a server logs what the app raises; the replies are what matter here
    return replies


def broken_config(config: dict[str, Any]) -> dict[str, Any]:
    """A source that cannot open and is ``required``: the engine does not start without it
    (a source that is not required is kept out of rotation instead)."""
    broken = {"type": "broken", "required": True}
    return {**config, "datasources": {**config["datasources"], "db": broken}}


@pytest.mark.anyio
async def test_failing_engine_start_is_reported_as_startup_failed(
    config: dict[str, Any],
) -> None:
    started: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append("app")  # never reached: wf78 failed first
        yield

    engine = Engine(broken_config(config), plugins=[BrokenPlugin()])
    app = Wf78Middleware(Starlette(lifespan=lifespan), engine=engine)
    replies = await drive_lifespan(app, "startup")
    assert len(replies) == 1, replies
    (failed,) = replies
    assert failed["type"] == "lifespan.startup.failed"
    assert failed["message"].startswith("wf78: ")
    assert "the disk is on fire" in failed["message"]
    assert "Traceback" not in failed["message"]
    assert started == []
    assert not engine.running


@pytest.mark.anyio
async def test_unwritable_sqlite_path_is_reported_as_startup_failed(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = make_config(blocker / "sub" / "x.db")  # a path under a regular file
    config["datasources"]["db"]["required"] = True
    app = Wf78Middleware(Recorder(), config=config)
    replies = await drive_lifespan(app, "startup")
    assert [reply["type"] for reply in replies] == ["lifespan.startup.failed"]
    assert replies[0]["message"].startswith("wf78: ")
    assert "db" in replies[0]["message"]


@pytest.mark.anyio
async def test_failing_start_under_an_app_without_lifespan(config: dict[str, Any]) -> None:
    engine = Engine(broken_config(config), plugins=[BrokenPlugin()])
    replies = await drive_lifespan(Wf78Middleware(Recorder(), engine=engine), "startup")
    assert [reply["type"] for reply in replies] == ["lifespan.startup.failed"]
    assert "the disk is on fire" in replies[0]["message"]


@pytest.mark.anyio
async def test_app_startup_failure_closes_the_engine(config: dict[str, Any]) -> None:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("app cannot start")
        yield

    engine = Engine(config)
    replies = await drive_lifespan(
        Wf78Middleware(Starlette(lifespan=lifespan), engine=engine), "startup"
    )
    assert [reply["type"] for reply in replies] == ["lifespan.startup.failed"]
    assert "app cannot start" in replies[0]["message"]
    assert not engine.running


@pytest.mark.anyio
async def test_full_lifespan_by_hand(config: dict[str, Any]) -> None:
    engine = Engine(config)
    replies = await drive_lifespan(
        Wf78Middleware(Starlette(), engine=engine), "startup", "shutdown"
    )
    assert [reply["type"] for reply in replies] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert not engine.running


async def ignores_lifespan(scope: Message, receive: Any, send: Any) -> None:
    """An app that returns at once on anything but http."""
    if scope["type"] != "http":
        return
    await Recorder()(scope, receive, send)


@pytest.mark.anyio
@pytest.mark.parametrize("inner", [Recorder(), ignores_lifespan], ids=["raises", "returns"])
async def test_app_without_lifespan_support_still_gets_the_engine(
    config: dict[str, Any], inner: Any
) -> None:
    engine = Engine(config)
    async with client_of(Wf78Middleware(inner, engine=engine)) as client:
        assert engine.running
        added = await client.post(
            "/api/demo/Items/mAdd", json={"pars": ["apple"]}, headers={"sid": TOKEN}
        )
        assert added.status_code == 200 and added.json()["res"] == 0
        assert (await client.get("/elsewhere")).status_code == 218
    assert not engine.running


@pytest.mark.anyio
async def test_without_lifespan_a_data_route_answers_503_saying_so(
    config: dict[str, Any],
) -> None:
    engine = Engine(config)
    app = Wf78Middleware(Recorder(), engine=engine)
    async with client_of(app, lifespan=False) as client:
        response = await client.post(
            "/api/demo/Items/get", json={}, headers={"authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 503
        body = response.json()
        assert (body["res"], body["kind"], body["back"]) == (-503, "unavailable", None)
        assert "lifespan" in body["errmsg"]
        # The app's own paths still work.
        assert (await client.get("/")).status_code == 218
    assert not engine.running
