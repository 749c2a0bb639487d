"""``Wf78Middleware`` under every ASGI host: anyio's trio backend (refused at start, naming
the asyncio requirement, never a hang), a lifespan run twice on the same app object (the
engine restarts), an app that crashes on the lifespan scope (logged at WARNING with its
traceback; fatal with ``[http] lifespan = "on"``; ``"off"`` keeps the app out of it) and
ASGI2 apps (accepted as asgiref's ``guarantee_single_callable`` does).

Whatever could hang runs under :func:`within`: in a thread of its own, failed after a
deadline, so a hang fails the test instead of blocking the suite."""

from __future__ import annotations

import logging
import threading
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.exceptions import StarletteDeprecationWarning
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from wf78_core import ConfigError, Engine, Identity, Wf78Error
from wf78_core.http.middleware import Wf78Middleware

with warnings.catch_warnings():
    # Without httpx2 (the lock has it, for Starlette's suite) Starlette warns and uses httpx.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

TOKEN = "tok-alice"
REDIS_URL = "redis://127.0.0.1:6379/0"
Message = dict[str, Any]
T = TypeVar("T")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_config(path: Path, **sections: Any) -> dict[str, Any]:
    return {
        "engine": {"drain_timeout": 2.0, "journal": f"sqlite:///{path.with_suffix('.journal')}"},
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{path}"}},
        "tables": {
            "Items": {
                "columns": {"name": "text", "qty": "int"},
                "owner": "cid",
                "route": "api/demo",
                "data_source": "db",
            }
        },
        "workflows": [
            {
                "id": "count",
                "tasks": [
                    {
                        "id": "read",
                        "action": "datasource.execute",
                        "params": {"action": "get", "table": "Items"},
                    }
                ],
            }
        ],
        "auth": {"tokens": {TOKEN: {"uid": "u-alice", "cid": "acme", "uname": "alice"}}},
        **sections,
    }


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return make_config(tmp_path / "conformance.db")


def within(seconds: float, function: Callable[[], T]) -> T:
    """``function()`` in a daemon thread: what it returns or raises, or a test failure if
    it is still running after ``seconds`` (a hang; the thread is left behind)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds}s: it hangs")
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


async def drive_lifespan(app: Any, *events: str) -> tuple[list[Message], BaseException | None]:
    """Run the ASGI lifespan protocol by hand: send ``events``; what came back and what
    the app raised (None: it returned)."""
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
        except Exception as error:
            return replies, error
    return replies, None


def add_and_count(client: TestClient, name: str) -> int:
    """Add a row through a data route, run a workflow; the rows the table now has."""
    headers = {"sid": TOKEN}
    added = client.post("/api/demo/Items/mAdd", json={"pars": [name, 1]}, headers=headers)
    assert added.status_code == 200, added.text
    assert added.json()["res"] == 0, added.text
    found = client.get("/api/demo/Items/get", params={"cols": "name"}, headers=headers)
    assert found.status_code == 200, found.text
    return len(found.json()["back"])


# -- 5. trio ------------------------------------------------------------------------------


async def ignores_lifespan(scope: Message, receive: Any, send: Any) -> None:
    """An app that returns at once from anything but http."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})


@pytest.mark.parametrize(
    ("inner", "mode"),
    [(Starlette(), "auto"), (ignores_lifespan, "auto"), (Starlette(), "off")],
    ids=["starlette", "no-lifespan", "lifespan-off"],
)
def test_trio_testclient_is_refused_at_start_naming_asyncio(
    tmp_path: Path, inner: Any, mode: str
) -> None:
    config = make_config(tmp_path / "trio.db", http={"lifespan": mode})
    app = Wf78Middleware(inner, config=config)

    def start() -> BaseException:
        with pytest.raises(Exception) as caught, TestClient(app, backend="trio"):
            pass  # never reached: the start-up is refused
        return caught.value

    error = within(30, start)
    assert "asyncio" in str(error), repr(error)
    assert not app.engine.running


def test_trio_lifespan_answers_startup_failed_naming_asyncio(config: dict[str, Any]) -> None:
    app = Wf78Middleware(Starlette(), config=config)

    def run() -> tuple[list[Message], BaseException | None]:
        return anyio.run(drive_lifespan, app, "startup", "shutdown", backend="trio")

    replies, error = within(30, run)
    assert [reply["type"] for reply in replies] == ["lifespan.startup.failed"]
    message = replies[0]["message"]
    assert message.startswith("wf78: ") and "asyncio" in message and "trio" in message
    assert error is not None  # raised after the failure, as Starlette's router does


def test_engine_under_trio_is_a_clear_error(config: dict[str, Any]) -> None:
    engine = Engine(config)

    async def enter() -> None:
        async with engine:
            pass

    with pytest.raises(Wf78Error, match="asyncio"):
        within(30, lambda: anyio.run(enter, backend="trio"))
    assert not engine.running


# -- 6. the same app started twice --------------------------------------------------------


def test_testclient_twice_as_a_context_manager(config: dict[str, Any]) -> None:
    app = Wf78Middleware(Starlette(), config=config)

    def twice() -> list[int]:
        counts = []
        for name in ("first", "second", "third"):
            with TestClient(app) as client:
                counts.append(add_and_count(client, name))
            assert not app.engine.running
        return counts

    assert within(60, twice) == [1, 2, 3]


def test_engine_restarts_on_a_new_event_loop_with_its_journal(config: dict[str, Any]) -> None:
    engine = Engine(config)
    statuses: list[str] = []

    async def life() -> None:
        async with engine:
            run = await engine.run("count")
            statuses.append(run.status)

    def three_lives() -> None:
        for _ in range(3):
            anyio.run(life)

    within(60, three_lives)
    assert statuses == ["succeeded"] * 3
    assert engine.journal is not None and engine.journal.durable


def test_engine_restarts_with_the_redis_backend_and_a_cache_mirror(tmp_path: Path) -> None:
    namespace = f"conformance-{uuid.uuid4().hex[:12]}"
    config = make_config(tmp_path / "redis.db")
    config["engine"] = {
        "backend": "redis",
        "backend_url": REDIS_URL,
        "backend_namespace": namespace,
        "drain_timeout": 2.0,
    }
    config["datasources"]["cache"] = {"type": "redis", "url": REDIS_URL, "key_prefix": namespace}
    config["tables"]["Items"]["cache_mirror"] = "cache"
    engine = Engine(config)
    alice = Identity(uid="u-alice", cid="acme", uname="alice")
    seen: list[tuple[str, int]] = []

    async def life(name: str) -> None:
        async with engine:
            await engine.table("Items", identity=alice).add({"name": name, "qty": 1})
            assert engine.mirrors is not None
            with anyio.fail_after(10):
                await engine.mirrors.flush()
            run = await engine.run("count")
            seen.append((run.status, len(run.results["read"].value)))

    try:
        within(60, lambda: [anyio.run(life, name) for name in ("first", "second")])
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"*{namespace}*"))
        if keys:
            client.delete(*keys)
        client.close()
    assert seen == [("succeeded", 1), ("succeeded", 2)]


@pytest.mark.anyio
async def test_engine_restarts_in_the_same_event_loop(config: dict[str, Any]) -> None:
    engine = Engine({**config, "engine": {"drain_timeout": 2.0, "journal": "memory"}})
    with anyio.fail_after(30):
        for _ in range(3):
            async with engine:
                assert (await engine.run("count")).status == "succeeded"
            assert not engine.running


@pytest.mark.anyio
async def test_a_running_engine_refuses_a_second_start(config: dict[str, Any]) -> None:
    engine = Engine(config)
    async with engine:
        with pytest.raises(Wf78Error, match="already running"):
            await engine.__aenter__()
        assert engine.running


# -- 7. a crash in the app's own lifespan -------------------------------------------------


class CrashesOnLifespan:
    """An app whose lifespan handling raises before it reads any message."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        self.scopes.append(scope["type"])
        if scope["type"] == "lifespan":
            raise RuntimeError("the app's start-up exploded")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})


async def crashes_after_startup(scope: Message, receive: Any, send: Any) -> None:
    """An app that reads ``lifespan.startup`` and then raises (a raw app's failed start-up)."""
    assert scope["type"] == "lifespan"
    await receive()
    raise RuntimeError("the app's connection pool is gone")


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "wf78.http"]


@pytest.mark.anyio
async def test_an_app_crash_on_lifespan_is_logged_with_its_traceback(
    config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    inner = CrashesOnLifespan()
    app = Wf78Middleware(inner, config=config)
    with caplog.at_level(logging.WARNING, logger="wf78.http"):
        replies, error = await drive_lifespan(app, "startup", "shutdown")
    # The ASGI spec's behaviour for an app without lifespan: wf78 runs its own.
    assert [reply["type"] for reply in replies] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert error is None
    (record,) = warnings_of(caplog)
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert "lifespan" in record.getMessage()
    assert "the app's start-up exploded" in caplog.text and "Traceback" in caplog.text


@pytest.mark.anyio
async def test_an_app_crash_after_reading_startup_is_logged_and_raised(
    config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    app = Wf78Middleware(crashes_after_startup, config=config)
    with caplog.at_level(logging.WARNING, logger="wf78.http"):
        replies, error = await drive_lifespan(app, "startup")
    assert replies == []  # the server decides, as for any app that raises
    assert isinstance(error, RuntimeError)
    (record,) = warnings_of(caplog)
    assert record.exc_info is not None and record.exc_info[1] is error
    assert not app.engine.running


@pytest.mark.anyio
@pytest.mark.parametrize("inner", [CrashesOnLifespan(), crashes_after_startup])
async def test_lifespan_on_makes_an_app_crash_fatal(tmp_path: Path, inner: Any) -> None:
    config = make_config(tmp_path / "on.db", http={"lifespan": "on"})
    app = Wf78Middleware(inner, config=config)
    replies, error = await drive_lifespan(app, "startup", "shutdown")
    assert [reply["type"] for reply in replies] == ["lifespan.startup.failed"]
    message = replies[0]["message"]
    assert "RuntimeError" in message and "[http] lifespan" in message
    assert isinstance(error, RuntimeError)
    assert not app.engine.running


def test_lifespan_on_fails_a_testclient_start(tmp_path: Path) -> None:
    config = make_config(tmp_path / "on.db", http={"lifespan": "on"})
    app = Wf78Middleware(CrashesOnLifespan(), config=config)

    def start() -> None:
        with TestClient(app):
            pass

    with pytest.raises(RuntimeError, match="start-up exploded"):
        within(30, start)
    assert not app.engine.running


@pytest.mark.anyio
async def test_lifespan_off_keeps_the_app_out_of_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inner = CrashesOnLifespan()
    app = Wf78Middleware(inner, config=make_config(tmp_path / "off.db", http={"lifespan": "off"}))
    with caplog.at_level(logging.WARNING, logger="wf78.http"):
        replies, error = await drive_lifespan(app, "startup", "shutdown")
    assert [reply["type"] for reply in replies] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert error is None
    assert inner.scopes == []  # never called with the lifespan scope
    assert warnings_of(caplog) == []


@pytest.mark.anyio
async def test_lifespan_on_with_an_app_that_speaks_lifespan(tmp_path: Path) -> None:
    app = Wf78Middleware(
        Starlette(), config=make_config(tmp_path / "on.db", http={"lifespan": "on"})
    )
    replies, error = await drive_lifespan(app, "startup", "shutdown")
    assert [reply["type"] for reply in replies] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert error is None


@pytest.mark.parametrize(
    ("http", "where"),
    [
        ({"lifespan": "sometimes"}, "http.lifespan"),
        ({"lifespan": True}, "http.lifespan"),
        ({"lifespans": "on"}, "http.lifespans"),
        ("on", "http"),
    ],
)
def test_the_http_section_is_checked(config: dict[str, Any], http: Any, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Engine({**config, "http": http})
    assert where in [problem.path for problem in caught.value.problems], caught.value


def test_the_http_lifespan_default_is_auto(config: dict[str, Any]) -> None:
    assert Engine(config).config.http.lifespan == "auto"


# -- 8. ASGI2 apps ------------------------------------------------------------------------


class Asgi2App:
    """An ASGI2 application: the class is called with the scope, the instance with
    ``receive`` and ``send``."""

    def __init__(self, scope: Message) -> None:
        assert scope["type"] == "http"  # no lifespan support
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi2:" + self.scope["path"].encode()})


def asgi2_function(scope: Message) -> Callable[[Any, Any], Any]:
    """An ASGI2 application as a plain function returning the coroutine callable."""
    if scope["type"] != "http":
        raise ValueError(f"no {scope['type']} support")  # an app without lifespan support

    async def instance(receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi2:" + scope["path"].encode()})

    return instance


@pytest.mark.parametrize("inner", [Asgi2App, asgi2_function], ids=["class", "function"])
def test_an_asgi2_app_is_served_wrapped(config: dict[str, Any], inner: Any) -> None:
    app = Wf78Middleware(inner, config=config)

    def serve() -> tuple[httpx.Response, int]:
        with TestClient(app) as client:
            return client.get("/elsewhere"), add_and_count(client, "apple")

    answer, rows = within(60, serve)
    assert answer.status_code == 200
    assert answer.text == "asgi2:/elsewhere"
    assert rows == 1


class Asgi3Class:
    """An ASGI3 application that is a class: constructed with ``(scope, receive, send)``
    and awaited, as Starlette's ``HTTPEndpoint`` and ``WebSocketEndpoint`` are. It is not
    ASGI2 (Starlette's suite, wrapped, found this; uvicorn and ``TestClient`` tell the two
    apart by ``__await__``)."""

    def __init__(self, scope: Message, receive: Any, send: Any) -> None:
        self.scope, self.send = scope, send

    def __await__(self) -> Any:
        return self.respond().__await__()

    async def respond(self) -> None:
        await self.send({"type": "http.response.start", "status": 200, "headers": []})
        body = b"asgi3:" + self.scope["path"].encode()
        await self.send({"type": "http.response.body", "body": body})


class Endpoint(HTTPEndpoint):
    async def get(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("asgi3:" + request.url.path)


@pytest.mark.parametrize("inner", [Asgi3Class, Endpoint], ids=["class", "HTTPEndpoint"])
def test_an_asgi3_class_is_served_wrapped(config: dict[str, Any], inner: Any) -> None:
    app = Wf78Middleware(inner, config=config)
    answer = within(60, lambda: TestClient(app).get("/elsewhere"))
    assert answer.status_code == 200
    assert answer.text == "asgi3:/elsewhere"
