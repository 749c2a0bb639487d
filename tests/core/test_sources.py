"""Sources that are down when the app starts: MySQL and Redis on a port nothing listens on.

The app starts anyway, logs one line per source that could not open (name, url without its
password, the driver's reason), answers 503 + ``Retry-After`` naming the source for its
tables, degrades to configured fallbacks, and takes the source back once its health check
passes: here a TCP forwarder to the real server starts listening on that port later.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import httpx
import msgspec
import pymysql
import pytest
import redis
from anyio.abc import SocketStream, TaskStatus
from asgi_lifespan import LifespanManager
from servers import free_port
from starlette.applications import Starlette

from wf78_core import DataSourceError, Engine, Operation, SourceUnavailable
from wf78_core.core.sources import redact_url
from wf78_core.http.middleware import Wf78Middleware

pytestmark = pytest.mark.anyio

TOKEN = "outage-admin"
PASSWORD = "s3cret-pw"
MYSQL_PORT = 3306
REDIS_PORT = 6379


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiomysql runs on asyncio only


class Forwarder:
    """A TCP forwarder from ``port`` to a real server: the server "comes back" on ``port``
    when the forwarder starts listening there."""

    def __init__(self, port: int, target: int) -> None:
        self.port = port
        self.target = target

    async def _pipe(self, source: SocketStream, sink: SocketStream, done: anyio.Event) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            done.set()

    async def _handle(self, client: SocketStream) -> None:
        async with client, await anyio.connect_tcp("127.0.0.1", self.target) as server:
            done = anyio.Event()
            async with anyio.create_task_group() as pipes:
                pipes.start_soon(self._pipe, client, server, done)
                pipes.start_soon(self._pipe, server, client, done)
                await done.wait()  # either side ended: so does the connection
                pipes.cancel_scope.cancel()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        async with listener:
            task_status.started()
            await listener.serve(self._handle)


@pytest.fixture
def key_prefix() -> Iterator[str]:
    """A Redis key prefix of this test alone; its keys are deleted afterwards."""
    name = f"wf78test-{uuid4().hex}"
    yield name
    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT)
    try:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def table_name() -> Iterator[str]:
    name = f"t_{uuid4().hex[:8]}_outage"
    yield name
    connection = pymysql.connect(host="127.0.0.1", port=MYSQL_PORT, user="root", database="test")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW TABLES LIKE %s", (f"{name}%",))
            for (table,) in cursor.fetchall():
                cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
    finally:
        connection.close()


def outage_config(
    tmp_path: Path, down: dict[str, Any], table: str, *, sharded: bool = False, **agents: Any
) -> dict[str, Any]:
    """``down`` (named ``db``) holds ``table`` (and ``<table>_log``, sharded by day, when
    ``sharded``); SQLite ``local`` holds ``notes``."""
    tables: dict[str, Any] = {
        table: {"columns": {"name": "text"}, "route": "api/shop", "data_source": "db"},
        "notes": {"columns": {"name": "text"}, "route": "api/shop", "data_source": "local"},
    }
    if sharded:
        tables[f"{table}_log"] = {
            "columns": {"name": "text"},
            "route": "api/shop",
            "data_source": "db",
            "sharding": {"type": "daily"},
        }
    return {
        "engine": {"journal": "memory", "retry_backoff": 0.001, "drain_timeout": 2.0},
        "agents": agents,
        "datasources": {
            "db": down,
            "local": {"type": "sqlite", "url": f"sqlite:///{tmp_path / 'local.db'}"},
        },
        "tables": tables,
        "auth": {"tokens": {TOKEN: {"uid": "u1", "uname": "root", "roles": ["admin"]}}},
    }


def mysql_down(port: int, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "type": "mysql",
        "url": f"mysql://root:{password}@127.0.0.1:{port}/test",
        "create_tables": True,
        "connect_timeout": 2.0,
    }


def redis_down(port: int, password: str = PASSWORD) -> dict[str, Any]:
    return {"type": "redis", "url": f"redis://:{password}@127.0.0.1:{port}/0"}


@asynccontextmanager
async def serving(config: dict[str, Any]) -> AsyncIterator[tuple[httpx.AsyncClient, Engine]]:
    engine = Engine(config)
    app = Wf78Middleware(Starlette(), engine=engine)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        headers = {"authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=headers
        ) as client:
            yield client, engine


async def eventually(condition: Callable[[], bool | Awaitable[bool]], within: float) -> None:
    """Wait until ``condition()`` holds (checked every 20 ms), at most ``within`` seconds."""
    with anyio.fail_after(within):
        for _ in itertools.count():
            held = condition()
            if await held if inspect.isawaitable(held) else held:
                return
            await anyio.sleep(0.02)


def source_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "wf78.sources" and f"data source {name!r}" in r.getMessage()
    ]


async def check_outage(
    caplog: pytest.LogCaptureFixture,
    config: dict[str, Any],
    *,
    port: int,
    target: int,
    table: str,
    shown_url: str,
    driver_reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger="wf78.sources")
    async with anyio.create_task_group() as forwarders:
        async with serving(config) as (client, engine):
            # Started anyway, with one clear line for the source that could not open.
            (line,) = source_lines(caplog, "db")
            assert "could not be opened at start" in line and shown_url in line, line
            assert driver_reason in line, line
            assert all(PASSWORD not in r.getMessage() for r in caplog.records)
            assert {s.name: s.healthy for s in engine.stats().sources} == {
                "db": False,
                "local": True,
            }

            # Its table answers 503 naming it, with Retry-After; the other source serves.
            down = await client.post(f"/api/shop/{table}/mAdd", json={"pars": ["pen"]})
            assert down.status_code == 503, down.text
            assert down.json()["res"] == -503 and down.json()["kind"] == "unavailable"
            assert "'db'" in down.json()["errmsg"] and down.json()["back"] is None
            assert int(down.headers["retry-after"]) >= 1
            assert (
                await client.post("/api/shop/notes/mAdd", json={"pars": ["a"]})
            ).status_code == 200
            # engine.submit raises the retryable error; a configured fallback serves instead.
            get = Operation(action="get", table="notes", data_source="db")
            with pytest.raises(SourceUnavailable, match="'db'") as raised:
                await engine.submit(get)
            assert raised.value.retryable and raised.value.data_source == "db"
            degraded = await engine.submit(msgspec.structs.replace(get, fallback=("local",)))
            assert degraded.data_source == "local" and degraded.fallback_from == ("db",)

            # Failed health checks (every 0.1 s) add no lines. Then the server comes back on
            # the port: the health loop opens the source, starts its loop, puts it in rotation.
            await anyio.sleep(0.5)
            assert len(source_lines(caplog, "db")) == 1
            await forwarders.start(Forwarder(port, target).serve)
            await eventually(lambda: engine.stats().sources[0].healthy, within=15)
            assert "back in rotation" in source_lines(caplog, "db")[-1]
            added = await client.post(f"/api/shop/{table}/mAdd", json={"pars": ["pen"]})
            assert added.status_code == 200, added.text
            row_id = added.json()["back"]
            got = await client.post(f"/api/shop/{table}/get", json={"getnumber": 5})
            assert [row["id"] for row in got.json()["back"]] == [row_id]
            if f"{table}_log" in config["tables"]:
                # The start skipped its shards; opening late made them.
                shards = Operation(action="list_shards", table=f"{table}_log", data_source="db")

                async def made() -> bool:
                    return bool((await engine.submit(shards)).value)

                await eventually(made, within=10)
                logged = await client.post(f"/api/shop/{table}_log/mAdd", json={"pars": ["in"]})
                assert logged.status_code == 200, logged.text
        # Stopped only once the engine has closed: a cancel around its shutdown would
        # cut its sources' close short.
        forwarders.cancel_scope.cancel()


async def test_mysql_down_at_start(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, table_name: str
) -> None:
    port = free_port()
    # The real server's root has no password (it would refuse one once it is back).
    await check_outage(
        caplog,
        outage_config(
            tmp_path, mysql_down(port, ""), table_name, sharded=True, health_interval=0.1
        ),
        port=port,
        target=MYSQL_PORT,
        table=table_name,
        shown_url=f"mysql://root@127.0.0.1:{port}/test",
        driver_reason="Connect call failed",
    )


async def test_redis_down_at_start(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, key_prefix: str
) -> None:
    port = free_port()
    down = {**redis_down(port, ""), "key_prefix": key_prefix}
    await check_outage(
        caplog,
        outage_config(tmp_path, down, "sessions", health_interval=0.1),
        port=port,
        target=REDIS_PORT,
        table="sessions",
        shown_url=f"redis://127.0.0.1:{port}/0",
        driver_reason="Error 111 connecting",
    )


@pytest.mark.parametrize("kind", ["mysql", "redis"])
async def test_a_required_source_down_at_start_stops_the_start(
    kind: str, tmp_path: Path, table_name: str
) -> None:
    port = free_port()
    down = mysql_down(port) if kind == "mysql" else redis_down(port)
    config = outage_config(tmp_path, {**down, "required": True}, table_name)
    with pytest.raises(DataSourceError) as raised:
        async with Engine(config):
            pass
    message = str(raised.value)
    assert message.startswith(f"required data source 'db' ({kind}, {kind}://"), message
    assert f"127.0.0.1:{port}" in message and "could not be opened" in message
    assert PASSWORD not in message


@pytest.mark.parametrize("kind", ["mysql", "redis"])
async def test_the_log_never_shows_the_password(
    kind: str, caplog: pytest.LogCaptureFixture, tmp_path: Path, table_name: str
) -> None:
    port = free_port()
    caplog.set_level(logging.INFO)
    down = mysql_down(port) if kind == "mysql" else redis_down(port)
    async with Engine(outage_config(tmp_path, down, table_name)) as engine:
        assert await engine.check_health() == {"db": False, "local": True}
    (line,) = source_lines(caplog, "db")
    shown = (
        f"mysql://root@127.0.0.1:{port}/test" if kind == "mysql" else f"redis://127.0.0.1:{port}/0"
    )
    assert shown in line
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql://root:pw@db:3306/shop", "mysql://root@db:3306/shop"),
        ("redis://:pw@cache:6379/0", "redis://cache:6379/0"),
        ("mysql://root@db/shop", "mysql://root@db/shop"),
        ("https://elastic:p%40ss@es:9200", "https://elastic@es:9200"),
        ("mysql://db/shop?user=a&password=pw&ssl=1", "mysql://db/shop?user=a&password=***&ssl=1"),
        ("http://es:9200/?api_key=pw", "http://es:9200/?api_key=***"),
        (None, "no url"),
    ],
)
def test_logged_urls_hold_no_password(url: str | None, shown: str) -> None:
    logged, secrets = redact_url(url)
    assert logged == shown
    for secret in secrets:
        assert secret not in logged
    if url is not None and "pw" in url:
        assert "pw" in secrets
    if url is not None and "p%40ss" in url:
        assert {"p%40ss", "p@ss"} <= set(secrets)  # as written and as the driver sees it
