"""The data routes of a table with text ids (``id = "text"``): ``mByid`` with ``"sku-77"``,
inserts that need the caller's id (``mid`` or ``values.id``, a 400 naming it otherwise),
every by-id method, and the OpenAPI document's id pattern. A snowflake table still takes
digits only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from wf78_core import Engine
from wf78_core.config import parse_config
from wf78_core.http.middleware import Wf78Middleware
from wf78_core.http.openapi import openapi_document

ALICE = "tok-alice"
BOB = "tok-bob"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite runs on asyncio only


def make_config(path: Path) -> dict[str, Any]:
    columns = {"name": "text", "qty": "int"}
    return {
        "engine": {"drain_timeout": 2.0},
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{path}"}},
        "tables": {
            "Skus": {
                "columns": columns,
                "owner": "cid",
                "id": "text",
                "route": "api/demo",
                "data_source": "db",
            },
            "Items": {"columns": columns, "owner": "cid", "route": "api/demo", "data_source": "db"},
        },
        "auth": {
            "tokens": {
                ALICE: {"uid": "u-alice", "cid": "acme", "uname": "alice"},
                BOB: {"uid": "u-bob", "cid": "globex", "uname": "bob"},
            }
        },
    }


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = Wf78Middleware(Starlette(), engine=Engine(make_config(tmp_path / "ids.db")))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def call(
    client: httpx.AsyncClient, method: str, token: str = ALICE, table: str = "Skus", **params: Any
) -> httpx.Response:
    return await client.post(
        f"/api/demo/{table}/{method}", json=params, headers={"authorization": f"Bearer {token}"}
    )


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["back"]


def refused(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["res"], body["kind"], body["back"]) == (-400, "invalid", None)
    for word in words:
        assert word in body["errmsg"], body["errmsg"]


async def names(client: httpx.AsyncClient, token: str = ALICE) -> dict[str, Any]:
    rows = ok(await call(client, "get", token, order="id", getnumber=100))
    return {row["id"]: (row["name"], row["qty"]) for row in rows}


@pytest.mark.anyio
async def test_mbyid_takes_a_text_id(client: httpx.AsyncClient) -> None:
    assert ok(await call(client, "mByid", mid="sku-77", pars=["ink", 1])) == "sku-77"
    assert ok(await call(client, "mByid", values={"id": "sku-77", "qty": 2})) == "sku-77"
    assert await names(client) == {"sku-77": ("ink", 2)}


@pytest.mark.anyio
async def test_every_method_takes_text_ids(client: httpx.AsyncClient) -> None:
    assert ok(await call(client, "mAdd", mid="a.1", pars=["a", 1])) == "a.1"
    assert ok(await call(client, "mAdd", values={"id": "b:2", "name": "b"})) == "b:2"
    assert ok(await call(client, "mAddMany", pars=["c", 3, "c_3", "d", 4, "D-4"])) == [
        "c_3",
        "D-4",
    ]
    assert ok(await call(client, "mAddMany", rows=[{"id": "e", "name": "e"}])) == ["e"]
    assert ok(await call(client, "mAddManyByid", rows=[["f", 6, "f"], ["dup", 0, "a.1"]])) == 1
    assert ok(await call(client, "m", mid="g", pars=["g"])) == "g"  # inserted with mid
    assert ok(await call(client, "m", mid="g", pars=["g2", 7])) == "g"  # then updated
    assert ok(await call(client, "mByFirstField", mid="h", pars=["h", 8])) == "h"
    assert ok(await call(client, "mByFirstField", pars=["h", 9])) == "h"
    assert ok(await call(client, "mUpdate", mid="a.1", pars=["a1"])) == 1
    assert ok(await call(client, "mUpdateByid", values={"id": "b:2", "qty": 2})) == 1
    assert ok(await call(client, "mUpdateMany", pars=["c3", 30, "c_3", "d4", 40, "D-4"])) == 2
    assert ok(await call(client, "get", where={"id": "D-4"}, cols="id,qty")) == [
        {"id": "D-4", "qty": 40}
    ]
    # Bob sees none of alice's ids and changes none.
    assert await names(client, BOB) == {}
    refused_update = await call(client, "mUpdate", BOB, mid="a.1", pars=["x"])
    assert refused_update.status_code == 404
    assert ok(await call(client, "mdel", mid="e")) == 1
    assert ok(await call(client, "mdelmany", ids="f,g")) == 2
    assert await names(client) == {
        "D-4": ("d4", 40),
        "a.1": ("a1", 1),
        "b:2": ("b", 2),
        "c_3": ("c3", 30),
        "h": ("h", 9),
    }


@pytest.mark.anyio
async def test_inserts_need_the_callers_id_and_bad_ids_are_named(
    client: httpx.AsyncClient,
) -> None:
    refused(await call(client, "mAdd", pars=["no id"]), "mid", "text ids", "'Skus'")
    refused(await call(client, "m", pars=["no id"]), "mid", "required")
    refused(await call(client, "mByFirstField", pars=["new"]), "values.id is required")
    refused(await call(client, "mAddMany", rows=[{"name": "x"}]), "rows[0].id", "required")
    refused(await call(client, "mAddMany", pars=["only", 1]), "pars", "rows of 3")
    for bad in ["sku 77", "sku/77", "ü", "x" * 65]:
        refused(
            await call(client, "mByid", mid=bad, pars=["x"]),
            "mid: must be an id of 1 to 64 characters",
        )
        refused(
            await call(client, "mAdd", values={"id": bad}),
            "values.id: must be an id of 1 to 64 characters",
        )
    refused(
        await call(client, "mdelmany", ids=["ok", "not ok"]),
        "ids[1]: must be an id of 1 to 64 characters",
    )
    refused(
        await call(client, "get", where={"id": "a b"}),
        "where.id: must be an id of 1 to 64 characters",
    )
    assert await names(client) == {}


@pytest.mark.anyio
async def test_a_snowflake_table_takes_digits_only(client: httpx.AsyncClient) -> None:
    response = await call(client, "mByid", table="Items", mid="sku-77", pars=["ink"])
    refused(response, "mid: must be an id of 1 to 64 digits", "'sku-77'")
    refused(await call(client, "mAdd", table="Items", values={"id": "1", "name": "x"}), "values.id")
    assert ok(await call(client, "mByid", table="Items", mid="77", pars=["ink"])) == "77"


def test_the_openapi_document_states_each_tables_id_pattern() -> None:
    document = openapi_document(parse_config(make_config(Path("unused.db"))), "/_wf78")
    schemas = document["components"]["schemas"]
    parameters = document["components"]["parameters"]
    text, digits = "^[A-Za-z0-9._:-]{1,64}$", "^[0-9]{1,64}$"
    assert schemas["Skus.valuesWithId"]["properties"]["id"]["pattern"] == text
    assert schemas["Skus.where"]["properties"]["id"]["pattern"] == text
    assert parameters["Skus.query.mid"]["schema"]["pattern"] == text
    assert schemas["Items.valuesWithId"]["properties"]["id"]["pattern"] == digits
    assert parameters["Items.query.mid"]["schema"]["pattern"] == digits
    add = document["paths"]["/api/demo/Skus/mAdd"]
    assert {"$ref": "#/components/parameters/Skus.query.mid"} in add["get"]["parameters"]
    body = add["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["values"] == {"$ref": "#/components/schemas/Skus.param.valuesWithId"}
    schemathesis.openapi.from_dict(document).validate()
