"""``GET {prefix}/openapi.json``: a valid OpenAPI 3.1 document of every data route of the
configured tables and every admin route, served to admins only; and a schemathesis run of
the live app against it (no 5xx, responses as documented)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import schemathesis
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import response_schema_conformance
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from wf78_core import Engine
from wf78_core.config import parse_config
from wf78_core.http.middleware import Wf78Middleware
from wf78_core.http.openapi import openapi_document
from wf78_core.http.routes import METHODS

ADMIN = "tok-admin"
ALICE = "tok-alice"  # no admin role
PREFIX = "/_wf78"
VERBS = ("get", "post", "put", "patch", "delete", "head", "options")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite runs on asyncio only


def make_config(path: Path) -> dict[str, Any]:
    return {
        "engine": {"drain_timeout": 2.0, "retry_backoff": 0.001, "journal": "memory"},
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{path}"}},
        "tables": {
            "Items": {
                "columns": {"name": "text", "qty": "int", "price": "float"},
                "owner": "cid",
                "route": "api/demo",
                "data_source": "db",
            },
            "Notes": {
                "columns": {"title": "text", "done": "bool", "at": "datetime", "doc": "json"},
                "owner": "uid",
                "public_read": True,
                "route": "api/notes",
                "data_source": "db",
            },
            "Hidden": {"columns": ["x"], "data_source": "db"},  # no route: not served
        },
        "workflows": [
            {
                "id": "count_items",
                "trigger": "event",
                "event": "tick",
                "tasks": [{"id": "count", "params": {"action": "count", "table": "Items"}}],
            },
            {"id": "manual", "tasks": [{"id": "count", "params": {"action": "count"}}]},
        ],
        "auth": {
            "tokens": {
                ADMIN: {"uid": "u-root", "cid": "ops", "uname": "root", "roles": ["admin"]},
                ALICE: {"uid": "u-alice", "cid": "acme", "uname": "alice"},
            }
        },
    }


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


APP = Starlette(routes=[Route("/", lambda request: PlainTextResponse("the app"))])


@asynccontextmanager
async def serving(path: Path, **options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = Wf78Middleware(APP, engine=Engine(make_config(path)), **options)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, app


async def fetch(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get(f"{PREFIX}/openapi.json", headers=auth(ADMIN))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def template_of(pattern: str) -> str:
    """An admin route's regex as an OpenAPI path template (``(?P<run_id>[^/]+)`` -> ``{run_id}``)."""
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern).replace("\\.", ".")
    return "/" if path == "/?" else path


# -- the document ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_document_is_valid_openapi(tmp_path: Path) -> None:
    async with serving(tmp_path / "doc.db") as (client, _):
        document = await fetch(client)
    assert document["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    assert all(cast(Any, result).ok() for result in schema.get_all_operations())
    # Every reference resolves inside the document.
    text = str(document)
    for kind, name in re.findall(r"'#/components/(\w+)/([^']+)'", text):
        assert name in document["components"][kind], (kind, name)


@pytest.mark.anyio
async def test_every_data_route_of_a_routed_table_is_listed(tmp_path: Path) -> None:
    async with serving(tmp_path / "doc.db") as (client, _):
        document = await fetch(client)
    paths = document["paths"]
    served = {path for path in paths if not path.startswith(PREFIX)}
    expected = {f"/api/demo/Items/{m}" for m in METHODS} | {
        f"/api/notes/Notes/{m}" for m in METHODS
    }
    assert served == expected  # Hidden has no route
    for path in expected:
        assert set(paths[path]) == {"get", "post"}
        for verb, operation in paths[path].items():
            assert {"200", "400", "401", "403", "404", "413", "429", "503"} <= set(
                operation["responses"]
            )
            names = {p.get("$ref", "").rpartition("/")[2] for p in operation["parameters"]}
            assert {"Priority", "IdempotencyKey"} <= names
            if verb == "post":
                content = operation["requestBody"]["content"]
                assert set(content) == {"application/json", "application/x-www-form-urlencoded"}
    add = paths["/api/demo/Items/mAdd"]["post"]["requestBody"]["content"]["application/json"]
    assert set(add["schema"]["properties"]) == {
        *("pars", "values", "cols", "sid"),
        *("v", "json", "jsonbase64", "base64"),  # older koa78 clients' encoded pars
    }
    get = paths["/api/demo/Items/get"]["get"]["parameters"]
    names = {p["$ref"].rpartition(".")[2] for p in get}
    for param in ("pars", "cols", "order", "getstart", "getnumber", "where", "total"):
        assert param in names
    bcid = paths["/api/notes/Notes/getbyBcid"]["get"]["parameters"]
    assert any(p["$ref"].endswith(".bcid") for p in bcid)
    # Security: bearer or sid; anonymous only where no identity is needed.
    assert paths["/api/demo/Items/get"]["get"]["security"] == [{"bearer": []}, {"sid": []}]
    assert {} in paths["/api/notes/Notes/getbyBcid"]["get"]["security"]
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert (schemes["sid"]["in"], schemes["sid"]["name"]) == ("header", "sid")


@pytest.mark.anyio
async def test_every_admin_route_is_listed_and_needs_the_admin_role(tmp_path: Path) -> None:
    async with serving(tmp_path / "doc.db") as (client, app):
        document = await fetch(client)
    paths = document["paths"]
    # Derived from the live routing table: a route added to AdminApp must be documented.
    for route in app.admin.routes:
        template = PREFIX + template_of(route.pattern.pattern)
        assert template in paths, template
        assert {verb.upper() for verb in paths[template]} == set(route.methods), template
    admin_paths = [path for path in paths if path.startswith(PREFIX)]
    assert f"{PREFIX}/openapi.json" in admin_paths
    assert len(admin_paths) == len(app.admin.routes)
    # The dashboard's page and files are static and load without a token; nothing else.
    shell = {f"{PREFIX}/", f"{PREFIX}/static/{{name}}"}
    for path in admin_paths:
        for operation in paths[path].values():
            if path in shell:
                assert operation["security"] == [{}] and "no data" in operation["description"]
                continue
            assert "'admin' role" in operation["description"]
            assert {} not in operation["security"]
            assert {"401", "403"} <= set(operation["responses"])


@pytest.mark.anyio
async def test_the_document_needs_the_admin_role(tmp_path: Path) -> None:
    async with serving(tmp_path / "doc.db") as (client, _):
        url = f"{PREFIX}/openapi.json"
        anonymous = await client.get(url)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert "Bearer" in anonymous.json()["error"]
        user = await client.get(url, headers=auth(ALICE))
        assert user.status_code == 403
        assert "admin" in user.json()["error"]
        by_sid = await client.get(url, headers={"sid": ADMIN})
        assert by_sid.status_code == 200
        head = await client.head(url, headers=auth(ADMIN))
        assert head.status_code == 200 and head.content == b""
        wrong = await client.post(url, headers=auth(ADMIN))
        assert wrong.status_code == 405 and "GET" in wrong.headers["allow"]


@pytest.mark.anyio
async def test_the_document_states_the_configured_limits(tmp_path: Path) -> None:
    async with serving(tmp_path / "doc.db", max_pars=7, max_page=9, max_body=4096) as (
        client,
        _,
    ):
        document = await fetch(client)
    schemas = document["components"]["schemas"]
    assert schemas["Items.param.pars"]["maxItems"] == 7
    assert schemas["Items.param.rows"]["maxItems"] == 7
    getnumber = schemas["Items.param.getnumber"]["anyOf"][0]
    assert getnumber["maximum"] == 9
    runs = document["paths"][f"{PREFIX}/runs"]["post"]["responses"]["413"]
    assert "4096" in runs["description"]


def test_a_custom_prefix_and_the_plain_function() -> None:
    config = parse_config(make_config(Path("unused.db")))
    document = openapi_document(config, "/ops/wf/")
    assert "/ops/wf/status" in document["paths"]
    assert "/ops/wf/openapi.json" in document["paths"]
    assert not any(path.startswith("/_wf78") for path in document["paths"])
    schemathesis.openapi.from_dict(document).validate()


# -- schemathesis against the live app --------------------------------------------------------


EXAMPLES = 6


def test_schemathesis_finds_no_server_error_and_responses_match(tmp_path: Path) -> None:
    """Every documented operation, schema-conforming cases, as the admin (who is also a
    tenant, company ``ops``): never a 5xx, and every response as the document says."""
    app = Wf78Middleware(APP, engine=Engine(make_config(tmp_path / "fuzz.db")))
    headers = auth(ADMIN)
    try:
        schema = schemathesis.openapi.from_asgi(f"{PREFIX}/openapi.json", app, headers=headers)
        operations = [cast(Any, result).ok() for result in schema.get_all_operations()]
        admin_operations = sum(len(route.methods) for route in app.admin.routes)
        # schemathesis leaves out the document's own route.
        assert len(operations) == 2 * 2 * len(METHODS) + admin_operations - 1
        checks = [not_a_server_error, response_schema_conformance]
        for operation in operations:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy())
            def check(case: Any) -> None:
                case.call_and_validate(headers=headers, checks=checks)

            check()
    finally:
        schemathesis_asgi.shutdown_lifespans()  # closes the engine schemathesis opened
    assert not app.engine.running
