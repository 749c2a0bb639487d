"""Security of the HTTP surface: who may use the admin routes, constant-time token checks,
what the logs never hold (tokens, row values), and the limits on page size, body size and
the length of ``pars``.

Everything goes through ``httpx.ASGITransport`` into ``Wf78Middleware`` started by
``asgi_lifespan.LifespanManager``; the data sources are a real SQLite file, the real
MariaDB and, for failures, a plugin source whose errors quote the values they were given.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import msgspec
import pymysql
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import wf78_core
import wf78_core.core.auth
from wf78_core import Engine, Identity, OperationError, Table, current, hookimpl
from wf78_core.config import AuthConfig
from wf78_core.core.auth import TokenAuth
from wf78_core.definitions import Operation
from wf78_core.errors import DataSourceError
from wf78_core.http.admin import AdminApp
from wf78_core.http.middleware import Wf78Middleware
from wf78_core.plugin.datasource import SourceSpec

MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "database": "test"}
PREFIX = "/_wf78"
# Distinctive tokens: the log test looks for them.
ADMIN = "tok-admin-" + secrets.token_hex(8)
USER = "tok-user-" + secrets.token_hex(8)
NEAR = "tok-near-" + secrets.token_hex(8)  # roles that only look like admin


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite and aiomysql run on asyncio only


def make_config(path: Path, **auth: Any) -> dict[str, Any]:
    return {
        "engine": {"drain_timeout": 2.0, "retry_backoff": 0.001},
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{path}"}},
        "tables": {
            "items": {
                "columns": {"name": "text", "qty": "int"},
                "owner": "cid",
                "route": "api/sec",
                "data_source": "db",
            }
        },
        "workflows": [
            {
                "id": "ingest",
                "tasks": [{"id": "write", "params": {"action": "add", "table": "items"}}],
            },
            {
                "id": "on_signup",
                "trigger": "event",
                "event": "signup",
                "tasks": [{"id": "write", "params": {"action": "add", "table": "items"}}],
            },
        ],
        "auth": {
            "tokens": {
                ADMIN: {"uid": "u-root", "cid": "ops", "uname": "root", "roles": ["admin"]},
                USER: {"uid": "u-ann", "cid": "acme", "uname": "ann", "roles": ["reader"]},
                NEAR: {
                    "uid": "u-near",
                    "cid": "acme",
                    "uname": "near",
                    "roles": ["Admin", "admins", "admin ", "wf78-admin"],
                },
            },
            **auth,
        },
    }


async def hello(request: Request) -> JSONResponse:
    client = current()
    return JSONResponse({"uname": client.identity.uname if client.identity else None})


APP = Starlette(routes=[Route("/hello", hello)])


@asynccontextmanager
async def serving(
    config: dict[str, Any], *, plugins: tuple[Any, ...] = (), **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Engine]]:
    engine = Engine(config, plugins=plugins)
    app: Any = Wf78Middleware(APP, engine=engine, **options)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, engine


def bearer(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


# -- admin routes ----------------------------------------------------------------------------


# The dashboard's page and files: static, no data, loaded without a token (the page's
# scripts send it to the JSON routes); every other admin route needs the admin role.
DASHBOARD_SHELL = (PREFIX, PREFIX + "/", PREFIX + "/static/x")


def admin_requests() -> list[tuple[str, str]]:
    """(method, path) of every admin route, read from AdminApp itself so a route added later
    is covered too: each declared method, HEAD for GET routes, a method no route serves,
    and a path no route matches; the dashboard's shell apart."""
    engine = Engine({"datasources": {"mem": {"type": "memory"}}})
    admin = AdminApp(engine, PREFIX)
    found: list[tuple[str, str]] = []
    for route in admin.routes:
        path = re.sub(r"\(\?P<\w+>[^)]*\)", "x", route.pattern.pattern).replace("/?", "/")
        for method in route.methods:
            found.append((method, PREFIX + path))
        if "GET" in route.methods:
            found.append(("HEAD", PREFIX + path))
        found.append(("DELETE", PREFIX + path))
    found += [("GET", PREFIX + "/no-such-route"), ("POST", PREFIX + "/x/y/z")]
    return [(method, path) for method, path in found if path not in DASHBOARD_SHELL]


ADMIN_REQUESTS = admin_requests()


def test_every_admin_route_is_listed() -> None:
    paths = {path for _, path in ADMIN_REQUESTS}
    for expected in ("/runs", "/runs/x", "/runs/x/cancel", "/events/x"):
        assert PREFIX + expected in paths
    assert {PREFIX + "/status", PREFIX + "/metrics"} <= paths
    assert len(ADMIN_REQUESTS) >= 20


@pytest.mark.anyio
async def test_the_dashboard_shell_holds_no_data(
    admin_client: tuple[httpx.AsyncClient, Engine],
) -> None:
    client, _ = admin_client
    for path in (PREFIX, PREFIX + "/", PREFIX + "/static/dashboard.js"):
        response = await client.get(path)  # no identity
        assert response.status_code == 200, path
        assert "ingest" not in response.text, path  # nothing of the configuration
    assert (await client.get(f"{PREFIX}/static/x")).status_code == 404


async def denied(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    *,
    params: dict[str, str] | None = None,
) -> dict[tuple[str, str], int]:
    """The status of every admin request sent with ``headers``."""
    statuses = {}
    for method, path in ADMIN_REQUESTS:
        response = await client.request(
            method,
            path,
            headers=headers,
            params=params,
            content=b'{"workflow": "ingest", "context": {}}',
        )
        statuses[(method, path)] = response.status_code
    return statuses


@pytest.fixture
async def admin_client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Engine]]:
    async with serving(make_config(tmp_path / "admin.db")) as pair:
        yield pair


@pytest.mark.anyio
async def test_admin_routes_without_an_identity_are_401(
    admin_client: tuple[httpx.AsyncClient, Engine],
) -> None:
    client, engine = admin_client
    for headers in ({}, bearer("tok-unknown"), {"authorization": "Basic eDp5"}, {"sid": "nope"}):
        statuses = await denied(client, headers)
        assert set(statuses.values()) == {401}, (headers, statuses)
    response = await client.get(f"{PREFIX}/status")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert engine.recent_runs(10) == []  # nothing ran


@pytest.mark.anyio
@pytest.mark.parametrize("token", [USER, NEAR], ids=["reader", "admin-lookalike-roles"])
async def test_admin_routes_for_a_non_admin_are_403(
    admin_client: tuple[httpx.AsyncClient, Engine], token: str
) -> None:
    client, engine = admin_client
    for headers in (bearer(token), {"sid": token}):
        statuses = await denied(client, headers)
        assert set(statuses.values()) == {403}, (headers, statuses)
    # A token in the URL is refused everywhere (access logs keep URLs), never used.
    for query_token in (token, ADMIN):
        statuses = await denied(client, {}, params={"token": query_token})
        assert set(statuses.values()) == {400}, statuses
    assert engine.recent_runs(10) == []  # refused POSTs started nothing


@pytest.mark.anyio
async def test_the_admin_role_opens_them(admin_client: tuple[httpx.AsyncClient, Engine]) -> None:
    client, _ = admin_client
    statuses = await denied(client, bearer(ADMIN))
    assert 401 not in statuses.values() and 403 not in statuses.values()
    assert statuses[("GET", PREFIX + "/status")] == 200


@pytest.mark.anyio
async def test_a_guest_is_never_admin_unless_configured(tmp_path: Path) -> None:
    guest = {"uid": "guest", "cid": "public", "uname": "guest"}
    async with serving(make_config(tmp_path / "g.db", guest=guest)) as (client, engine):
        for headers in ({}, bearer("tok-unknown")):
            statuses = await denied(client, headers)
            assert set(statuses.values()) == {403}, statuses  # an identity, without the role
        assert (await client.get("/hello")).json() == {"uname": "guest"}
        assert engine.recent_runs(10) == []
    admin_guest = {**guest, "roles": ["admin"]}
    async with serving(make_config(tmp_path / "g2.db", guest=admin_guest)) as (client, _):
        assert (await client.get(f"{PREFIX}/status")).status_code == 200  # configured so


# -- token comparison -------------------------------------------------------------------------


class CountingCompare:
    """``hmac.compare_digest`` with a count of its calls and the types it was given."""

    def __init__(self) -> None:
        self.calls = 0
        self.kinds: set[type] = set()
        self._real = hmac.compare_digest

    def __call__(self, a: Any, b: Any) -> bool:
        self.calls += 1
        self.kinds |= {type(a), type(b)}
        return self._real(a, b)


@pytest.fixture
def compare(monkeypatch: pytest.MonkeyPatch) -> CountingCompare:
    counting = CountingCompare()
    assert vars(wf78_core.core.auth)["hmac"] is hmac  # what the authenticator compares with
    monkeypatch.setattr(hmac, "compare_digest", counting)
    return counting


TOKENS = {f"tok-{index}-{secrets.token_hex(6)}": f"u{index}" for index in range(7)}
TOKENS["tök-ünïcode-ключ"] = "u-unicode"


def test_tokens_are_compared_in_constant_time_every_one(compare: CountingCompare) -> None:
    auth = AuthConfig(tokens={token: Identity(uid=uid) for token, uid in TOKENS.items()})
    tokens = TokenAuth(auth)
    first, *_, last = TOKENS
    cases = [
        (first, "u0"),  # a hit on the first token still compares all of them
        (last, "u-unicode"),
        (list(TOKENS)[3], "u3"),
        ("tok-not-configured", None),
        (first[:-1], None),  # a prefix of a token
        (first + "x", None),
        ("", None),
    ]
    for token, uid in cases:
        compare.calls = 0
        found = tokens.lookup(token)
        assert (found.uid if found else None) == uid
        assert compare.calls == len(TOKENS), (token, compare.calls)
    assert compare.kinds == {bytes}  # bytes: any token, ASCII or not, compares
    compare.calls = 0
    assert tokens.lookup(None) is None and compare.calls == 0  # no token, nothing to time


@pytest.mark.anyio
async def test_every_request_compares_against_every_token(
    tmp_path: Path, compare: CountingCompare
) -> None:
    config = make_config(tmp_path / "ct.db")
    configured = len(config["auth"]["tokens"])
    async with serving(config) as (client, _):
        for headers in (bearer(ADMIN), bearer(USER), bearer("tok-miss"), {"sid": USER}):
            for method, path in (
                ("POST", "/api/sec/items/get"),
                ("GET", f"{PREFIX}/status"),
                ("GET", "/hello"),  # the app's own route: looked up when current() is asked
            ):
                compare.calls = 0
                await client.request(method, path, headers=headers)
                assert compare.calls and compare.calls % configured == 0, (path, compare.calls)


# -- logs -------------------------------------------------------------------------------------


class LeakySource:
    """A plugin source (type ``leaky``) whose failures quote the values they were given, as
    careless drivers do: ``add`` raises a plain exception (the engine maps it), ``update`` an
    OperationError, ``delete`` a retryable DataSourceError."""

    actions = frozenset({"add", "get", "count", "update", "delete", "delete_many"})

    def __init__(self, spec: SourceSpec) -> None:
        self.name = spec.name
        self.concurrency = 100

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def health(self) -> None:
        pass

    async def execute(self, op: Operation) -> Any:
        if op.action == "add":
            raise RuntimeError(f"cannot store {op.values!r}")
        if op.action == "update":
            raise OperationError(f"refused {op.values!r} where {op.where!r}")
        if op.action in ("delete", "delete_many"):
            raise DataSourceError(f"lost while deleting {op.where!r}", retryable=True)
        return []


class Leaky:
    def __call__(self, spec: SourceSpec) -> LeakySource:
        return LeakySource(spec)

    @hookimpl
    def wf78_register_datasources(self, registry: Any) -> None:
        registry.add("leaky", self)


@pytest.fixture
def unique_table() -> Iterator[str]:
    """A MariaDB table of this test with a UNIQUE name: a duplicate makes MariaDB quote it."""
    name = f"s{uuid4().hex[:8]}_uniq"
    connection = pymysql.connect(**MYSQL)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE TABLE `{name}` (`id` VARCHAR(64) PRIMARY KEY, `name` TEXT, "
                "`cid` VARCHAR(64), `upby` TEXT, `uptime` DATETIME(6), "
                "UNIQUE KEY `uniq_name` (`name`(191))) "
                "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            )
        yield name
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS `{name}`")
        connection.close()


def wf78_loggers() -> list[str]:
    """Every logger of wf78 and its plugins (their modules imported first)."""
    for module in ("wf78_sqlite", "wf78_mysql", "wf78_redis", "wf78_elasticsearch", "wf78_sql"):
        __import__(module)
    names = {"wf78", *(n for n in logging.root.manager.loggerDict if n.startswith("wf78"))}
    return sorted(names)


def log_text(record: logging.LogRecord) -> str:
    """All a record could write: its message, its arguments, exception and stack."""
    parts = [str(record.msg), repr(record.args), record.getMessage()]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


@pytest.mark.anyio
async def test_logs_hold_no_token_and_no_row_value(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    unique_table: str,
) -> None:
    for name in wf78_loggers():
        caplog.set_level(logging.DEBUG, logger=name)
    mark = secrets.token_hex(6)
    value = {kind: f"row-{kind}-secret-{mark}" for kind in ("ok", "dup", "leak", "bug", "bad")}
    config = make_config(tmp_path / "logs.db")
    config["datasources"]["my"] = {"type": "mysql", "url": MYSQL_URL, "create_tables": True}
    config["datasources"]["leaky"] = {"type": "leaky"}
    for name, source in ((unique_table, "my"), ("leaks", "leaky"), ("bugs", "db")):
        config["tables"][name] = {
            "columns": {"name": "text"},
            "owner": "cid",
            "route": "api/sec",
            "data_source": source,
        }
    config["workflows"].append(
        {
            "id": "leaking",
            "tasks": [
                {
                    "id": "write",
                    "params": {
                        "action": "add",
                        "table": "leaks",
                        "values": {"name": value["leak"]},
                    },
                }
            ],
        }
    )
    wrong_token = f"tok-wrong-{mark}"
    real_add = Table.add

    async def buggy_add(self: Table, values: Any, **options: Any) -> str:
        if self.name == "bugs":  # a bug whose message quotes the row
            raise ValueError(f"cannot handle {dict(values)!r}")
        return await real_add(self, values, **options)

    monkeypatch.setattr(Table, "add", buggy_add)

    async with serving(config, plugins=(Leaky(),)) as (client, engine):

        async def data(
            table: str, method: str, token: str | None = USER, **params: Any
        ) -> httpx.Response:
            return await client.post(
                f"/api/sec/{table}/{method}", json=params, headers=bearer(token)
            )

        answers = []
        # Successful traffic with a distinctive row value, by header and by the sid forms.
        row_id = (await data("items", "mAdd", values={"name": value["ok"], "qty": 1})).json()
        answers.append(row_id)
        row = row_id["back"]
        answers.append((await data("items", "get", where={"name": value["ok"]})).json())
        answers.append(
            (await client.post("/api/sec/items/get", json={"sid": USER}, headers={})).json()
        )
        await client.post("/api/sec/items/get", json={}, headers={"sid": USER})
        await data("items", "mUpdate", mid=row, values={"name": value["ok"] + "-v2"})
        # Failing requests: bad input quoting the value, unknown tokens, refusals, limits.
        await data("items", "mAdd", values={"name": value["bad"], "qty": value["bad"]})
        await data("items", "mAdd", wrong_token, values={"name": value["bad"]})
        await data("items", "getbyBcid", bcid=value["bad"])
        await data("items", "_secret", values={"name": value["bad"]})
        await client.put("/api/sec/items/mAdd", headers=bearer(USER))
        await client.post(
            "/api/sec/items/mAdd", content=value["bad"].encode(), headers=bearer(USER)
        )
        await client.get(f"{PREFIX}/", params={"token": wrong_token})
        await client.get(f"{PREFIX}/status", headers=bearer(wrong_token))
        await client.get(f"{PREFIX}/status", headers=bearer(USER))
        await client.get(f"{PREFIX}/status", headers=bearer(ADMIN))
        await client.post(
            f"{PREFIX}/runs",
            json={"workflow": "nope", "context": {"x": value["bad"]}},
            headers=bearer(ADMIN),
        )
        # A data source that quotes what it was given, and MariaDB quoting a duplicate.
        leaks = [
            await data("leaks", "mAdd", values={"name": value["leak"]}),
            await data("leaks", "mUpdate", mid="1", values={"name": value["leak"]}),
            await data("leaks", "mdel", mid="4242"),
        ]
        assert [r.status_code for r in leaks] == [502, 502, 503]
        first = await data(unique_table, "mAdd", values={"name": value["dup"]})
        assert first.status_code == 200, first.text
        duplicate = await data(unique_table, "mAdd", values={"name": value["dup"]})
        assert duplicate.status_code == 409, duplicate.text
        # An engine bug (an unexpected exception) and a failing workflow run.
        assert (await data("bugs", "mAdd", values={"name": value["bug"]})).status_code == 500
        run = await engine.run("leaking", {"note": value["leak"]})
        assert run.status == "failed"
        for response in (*leaks, duplicate):
            assert value["leak"] not in response.text and value["dup"] not in response.text

    records = [r for r in caplog.records if r.name.startswith("wf78")]
    # The failures were logged (so the check below has something to look at) ...
    logged = "\n".join(r.getMessage() for r in records)
    for where in ("leaks/mAdd", "leaks/mUpdate", "leaks/mdel", f"{unique_table}/mAdd", "bugs"):
        assert where in logged, logged
    # ... and no record holds a token or a row value, in any part.
    forbidden = [ADMIN, USER, NEAR, wrong_token, *value.values()]
    for record in records:
        text = log_text(record)
        for secret in forbidden:
            assert secret not in text, f"{secret!r} logged by {record.name}: {text[:400]}"
    assert msgspec.json.encode(answers)  # the successful answers were real JSON


# -- limits ------------------------------------------------------------------------------------


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    config = make_config(tmp_path / "limits.db")
    async with serving(config, max_page=50, max_body=4096, max_pars=20) as (client, _):
        yield client


async def post(client: httpx.AsyncClient, path: str, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", bearer(USER))
    return await client.post(path, **kwargs)


def refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    message = body.get("errmsg", body.get("error", ""))
    for word in words:
        assert word in message, message


@pytest.mark.anyio
async def test_page_size_is_capped(limited: httpx.AsyncClient) -> None:
    get = "/api/sec/items/get"
    assert (await post(limited, get, json={"getnumber": 50})).status_code == 200
    refused(await post(limited, get, json={"getnumber": 51}), 400, "getnumber", "50")
    refused(await limited.get(get, params={"getnumber": "51"}, headers=bearer(USER)), 400)
    refused(await post(limited, get, json={"getnumber": 10**30}), 400, "getnumber")
    refused(await post(limited, get, json={"getnumber": -1}), 400, "getnumber")
    refused(await post(limited, "/api/sec/items/getbyBcid", json={"bcid": "x"}), 403)


@pytest.mark.anyio
async def test_default_page_cap_is_the_table_cap(tmp_path: Path) -> None:
    async with serving(make_config(tmp_path / "d.db")) as (client, _):
        get = "/api/sec/items/get"
        assert (await post(client, get, json={"getnumber": 1000})).status_code == 200
        refused(await post(client, get, json={"getnumber": 1001}), 400, "getnumber", "1000")


@pytest.mark.anyio
async def test_body_size_is_capped(limited: httpx.AsyncClient) -> None:
    big = b'{"pars": ["' + b"x" * 5000 + b'"]}'
    add = "/api/sec/items/mAdd"
    json_type = {**bearer(USER), "content-type": "application/json"}
    refused(await post(limited, add, content=big, headers=json_type), 413, "4096")

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted while read
        for _ in range(10):
            yield b" " * 1000

    refused(await post(limited, add, content=chunks(), headers=json_type), 413)
    # A lying Content-Length is refused before the body is read.
    lying = {**json_type, "content-length": "999999"}
    refused(await post(limited, add, content=b"{}", headers=lying), 413)
    # The admin routes have the same cap (after the identity check).
    admin_big = {**bearer(ADMIN), "content-type": "application/json"}
    assert (
        await post(limited, f"{PREFIX}/runs", content=big, headers=admin_big)
    ).status_code == 413
    refused(await post(limited, f"{PREFIX}/runs", content=big, headers=json_type), 403)
    assert (await post(limited, add, json={"pars": ["x" * 3000]})).status_code == 200


@pytest.mark.anyio
async def test_pars_and_other_lists_are_capped(limited: httpx.AsyncClient) -> None:
    base = "/api/sec/items"
    twenty = [str(i) for i in range(20)]
    many = [str(i) for i in range(21)]
    assert (await post(limited, f"{base}/mdelmany", json={"pars": twenty})).status_code == 200
    refused(await post(limited, f"{base}/mdelmany", json={"pars": many}), 413, "pars", "20")
    refused(await post(limited, f"{base}/mdelmany", json={"ids": many}), 413, "ids")
    refused(await post(limited, f"{base}/mdelmany", json={"ids": ",".join(many)}), 413, "ids")
    refused(await post(limited, f"{base}/mAddMany", json={"pars": ["a", 1] * 11}), 413, "pars")
    rows = [{"name": "a"}] * 21
    refused(await post(limited, f"{base}/mAddMany", json={"rows": rows}), 413, "rows")
    refused(await post(limited, f"{base}/get", json={"pars": many}), 413, "pars")
    refused(await post(limited, f"{base}/get", json={"where": {"name": many}}), 413, "name")
    # In a query string, repeated or as a JSON array.
    query = httpx.QueryParams([("pars", value) for value in many])
    refused(await limited.get(f"{base}/mdelmany", params=query, headers=bearer(USER)), 413)
    refused(
        await limited.get(
            f"{base}/mdelmany",
            params={"pars": msgspec.json.encode(many).decode()},
            headers=bearer(USER),
        ),
        413,
        "pars",
    )


def test_the_limits_are_options_of_the_middleware() -> None:
    app = Wf78Middleware(APP, config={"datasources": {"m": {"type": "memory"}}})
    assert (app.routes.max_page, app.routes.max_body, app.routes.max_pars) == (
        1000,
        1 << 20,
        1000,
    )
    assert wf78_core.Wf78Middleware is Wf78Middleware
