"""The koa78 data routes over HTTP: the 14 methods, parameters from JSON, forms and query
strings, the envelope and status of every refusal, identity, priority and tenant isolation.

Everything goes through ``httpx.ASGITransport`` into ``Wf78Middleware`` started by
``asgi_lifespan.LifespanManager``, on a real SQLite file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.conftest import Faults
from wf78_core import DataSourceError, Engine, Operation, hookimpl
from wf78_core.http.middleware import Wf78Middleware
from wf78_core.http.routes import METHODS
from wf78_core.plugin.datasource import SourceSpec
from wf78_memory import MemorySource

ALICE = "tok-alice"  # company acme
CAROL = "tok-carol"  # company acme, priority capped at 2
BOB = "tok-bob"  # company globex
ADMIN = "tok-admin"
NOCID = "tok-nocid"  # an identity with a uid and no company


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite runs on asyncio only


def make_config(path: Path, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "engine": {"drain_timeout": 2.0, "retry_backoff": 0.001},
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{path}"}},
        "tables": {
            "Items": {
                "columns": {"name": "text", "qty": "int", "price": "float"},
                "owner": "cid",
                "route": "api/demo",
                "data_source": "db",
            },
            "Notes": {
                "columns": {"title": "text", "n": "int"},
                "owner": "uid",
                "public_read": True,
                "route": "api/demo",
                "data_source": "db",
            },
        },
        "auth": {
            "tokens": {
                ALICE: {"uid": "u-alice", "cid": "acme", "uname": "alice"},
                CAROL: {"uid": "u-carol", "cid": "acme", "uname": "carol", "max_priority": 2},
                BOB: {"uid": "u-bob", "cid": "globex", "uname": "bob"},
                ADMIN: {"uid": "u-root", "cid": "ops", "uname": "root", "roles": ["admin"]},
                NOCID: {"uid": "u-solo", "uname": "solo"},
            }
        },
    }
    config.update(changes)
    return config


async def homepage(request: Request) -> PlainTextResponse:
    return PlainTextResponse("the app")


APP = Starlette(routes=[Route("/", homepage)])


@asynccontextmanager
async def serving(
    config: dict[str, Any], *, plugins: Iterable[Any] = (), **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Engine]]:
    engine = Engine(config, plugins=plugins)
    app = Wf78Middleware(APP, engine=engine, **options)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, engine


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Engine]]:
    async with serving(make_config(tmp_path / "routes.db")) as pair:
        yield pair


@pytest.fixture
def client(served: tuple[httpx.AsyncClient, Engine]) -> httpx.AsyncClient:
    return served[0]


def auth(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


async def call(
    client: httpx.AsyncClient,
    method: str,
    token: str | None = ALICE,
    *,
    table: str = "Items",
    headers: dict[str, str] | None = None,
    **params: Any,
) -> httpx.Response:
    """POST a JSON body to ``/api/demo/{table}/{method}``."""
    return await client.post(
        f"/api/demo/{table}/{method}", json=params, headers={**auth(token), **(headers or {})}
    )


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["res"] == 0 and body["errmsg"] == "" and body["kind"] == ""
    assert response.headers["content-type"] == "application/json"
    return body["back"]


def refused(response: httpx.Response, status: int, kind: str, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"res", "errmsg", "kind", "back"}
    assert (body["res"], body["kind"], body["back"]) == (-status, kind, None)
    message: str = body["errmsg"]
    for word in words:
        assert word in message, message
    assert "Traceback" not in message
    return message


async def rows(client: httpx.AsyncClient, token: str = ALICE, **params: Any) -> list[Any]:
    found: list[Any] = ok(await call(client, "get", token, order="name", **params))
    return found


# -- the 14 methods --------------------------------------------------------------------


@pytest.mark.anyio
async def test_madd_positional_named_and_cols(client: httpx.AsyncClient) -> None:
    first = ok(await call(client, "mAdd", pars=["apple", 3, 1.5]))
    assert isinstance(first, str) and first.isdigit()
    # Named values; an int column takes digits in a string (form habits of koa78 clients).
    second = ok(await call(client, "mAdd", values={"name": "pear", "qty": "2"}))
    # cols: the columns pars refers to, in that order.
    third = ok(await call(client, "mAdd", cols=["qty", "name"], pars=[7, "fig"]))
    # Fewer pars than columns: the leading ones (koa78 wrote what it was given).
    fourth = ok(await call(client, "mAdd", pars=["kiwi"]))
    assert len({first, second, third, fourth}) == 4
    found = await rows(client, cols="id,name,qty,price,cid,upby")
    assert found == [
        {"id": first, "name": "apple", "qty": 3, "price": 1.5, "cid": "acme", "upby": "alice"},
        {"id": third, "name": "fig", "qty": 7, "price": None, "cid": "acme", "upby": "alice"},
        {"id": fourth, "name": "kiwi", "qty": None, "price": None, "cid": "acme", "upby": "alice"},
        {"id": second, "name": "pear", "qty": 2, "price": None, "cid": "acme", "upby": "alice"},
    ]


@pytest.mark.anyio
async def test_madd_many_flat_nested_and_rows(client: httpx.AsyncClient) -> None:
    flat = ok(await call(client, "mAddMany", pars=["a", 1, 1.0, "b", 2, 2.0]))
    nested = ok(await call(client, "mAddMany", pars=[["c", 3, 3.0], ["d", 4, 4.0]]))
    named = ok(await call(client, "mAddMany", rows=[{"name": "e"}, {"name": "f", "qty": 6}]))
    narrow = ok(await call(client, "mAddMany", cols="name", pars=["g", "h"]))
    assert [len(ids) for ids in (flat, nested, named, narrow)] == [2, 2, 2, 2]
    found = await rows(client, cols=["name", "qty"], getnumber=20)
    assert [row["name"] for row in found] == list("abcdefgh")
    assert found[5] == {"name": "f", "qty": 6}


@pytest.mark.anyio
async def test_madd_many_by_id_keeps_ids_and_skips_existing(client: httpx.AsyncClient) -> None:
    pars = ["a", 1, 1.0, "101", "b", 2, 2.0, 102]  # koa78: the id after the columns
    assert ok(await call(client, "mAddManyByid", pars=pars)) == 2
    # Existing ids are ignored, new ones inserted.
    again = [["x", 9, 9.0, "101"], ["c", 3, 3.0, "103"]]
    assert ok(await call(client, "mAddManyByid", pars=again)) == 1
    assert ok(await call(client, "mAddManyByid", rows=[{"id": "104", "name": "d"}])) == 1
    found = await rows(client, cols="id,name")
    assert found == [
        {"id": "101", "name": "a"},
        {"id": "102", "name": "b"},
        {"id": "103", "name": "c"},
        {"id": "104", "name": "d"},
    ]


@pytest.mark.anyio
async def test_mupdate_and_mupdatebyid(client: httpx.AsyncClient) -> None:
    row_id = ok(await call(client, "mAdd", pars=["apple", 1, 1.0]))
    assert ok(await call(client, "mUpdate", mid=row_id, pars=["apple", 2, 2.5])) == 1
    assert ok(await call(client, "mUpdate", mid=row_id, cols=["qty"], pars=[3])) == 1
    assert ok(await call(client, "mUpdate", mid=row_id, values={"price": "4.5"})) == 1
    assert ok(await call(client, "mUpdateByid", mid=row_id, pars=["apricot"])) == 1
    assert ok(await call(client, "mUpdateByid", values={"id": row_id, "qty": 9})) == 1
    assert await rows(client, cols="name,qty,price") == [
        {"name": "apricot", "qty": 9, "price": 4.5}
    ]
    refused(await call(client, "mUpdate", mid="999", pars=["x"]), 404, "not_found", "'999'")
    refused(await call(client, "mUpdateByid", values={"id": "999", "qty": 1}), 404, "not_found")
    refused(await call(client, "mUpdate", pars=["x"]), 400, "invalid", "mid")


@pytest.mark.anyio
async def test_mupdatemany_rows_with_ids_first(client: httpx.AsyncClient) -> None:
    a, b = ok(await call(client, "mAddMany", pars=["a", 1, 1.0, "b", 2, 2.0]))
    assert ok(await call(client, "mUpdateMany", pars=[["A", 10, 1.0, a], ["B", 20, 2.0, b]])) == 2
    assert ok(await call(client, "mUpdateMany", cols=["qty"], pars=[11, a, 21, b])) == 2
    assert ok(await call(client, "mUpdateMany", rows=[{"id": a, "price": 0.5}])) == 1
    assert await rows(client, cols="name,qty,price") == [
        {"name": "A", "qty": 11, "price": 0.5},
        {"name": "B", "qty": 21, "price": 2.0},
    ]


@pytest.mark.anyio
async def test_m_updates_by_mid_or_inserts(client: httpx.AsyncClient) -> None:
    new = ok(await call(client, "m", pars=["apple", 1, 1.0]))  # no mid: insert
    assert ok(await call(client, "m", mid=new, pars=["apple", 5, 1.0])) == new
    other = ok(await call(client, "m", mid="12345", pars=["pear", 1, 1.0]))
    assert other not in (new, "12345")  # not found: a new row with a new id, as koa78 did
    assert await rows(client, cols="id,qty") == [{"id": new, "qty": 5}, {"id": other, "qty": 1}]


@pytest.mark.anyio
async def test_mbyid_upserts_keeping_the_id(client: httpx.AsyncClient) -> None:
    assert ok(await call(client, "mByid", mid="777", pars=["apple", 1, 1.0])) == "777"
    assert ok(await call(client, "mByid", mid="777", cols="qty", pars=[2])) == "777"
    assert ok(await call(client, "mByid", values={"id": "778", "name": "fig"})) == "778"
    assert await rows(client, cols="id,name,qty") == [
        {"id": "777", "name": "apple", "qty": 2},
        {"id": "778", "name": "fig", "qty": None},
    ]


@pytest.mark.anyio
async def test_mbyfirstfield_upserts_by_the_first_column(client: httpx.AsyncClient) -> None:
    first = ok(await call(client, "mByFirstField", pars=["apple", 1, 1.0]))
    assert ok(await call(client, "mByFirstField", pars=["apple", 2, 2.0])) == first
    pear = ok(await call(client, "mByFirstField", values={"name": "pear", "qty": 3}))
    assert pear != first
    assert await rows(client, cols="name,qty") == [
        {"name": "apple", "qty": 2},
        {"name": "pear", "qty": 3},
    ]
    refused(
        await call(client, "mByFirstField", values={"qty": 1}), 400, "invalid", "values", "name"
    )


@pytest.mark.anyio
async def test_get_filters_columns_order_paging_and_total(client: httpx.AsyncClient) -> None:
    pars = [value for n in range(1, 6) for value in (f"n{n}", n % 2, float(n))]
    ok(await call(client, "mAddMany", pars=pars))
    page = ok(await call(client, "get", cols="name", order="price desc", getstart=1, getnumber=2))
    assert page == [{"name": "n4"}, {"name": "n3"}]
    # koa78's form: pars are equality filters on cols (all columns are returned).
    odd = ok(await call(client, "get", cols=["qty"], pars=[1], order="name"))
    assert [row["name"] for row in odd] == ["n1", "n3", "n5"]
    assert set(odd[0]) == {"id", "name", "qty", "price", "cid", "upby", "uptime"}
    # The modern form: where, with total.
    counted = ok(await call(client, "get", where={"qty": 0}, cols="name", total=1, getnumber=1))
    assert counted == {"rows": [{"name": "n2"}], "total": 2}
    everything = ok(await call(client, "get"))
    assert len(everything) == 5


@pytest.mark.anyio
async def test_getbybcid_reads_public_rows_of_another_owner(client: httpx.AsyncClient) -> None:
    ok(await call(client, "mAdd", table="Notes", pars=["hello", 1]))
    ok(await call(client, "mAdd", BOB, table="Notes", pars=["bob's", 2]))
    public = ok(await call(client, "getbyBcid", BOB, table="Notes", bcid="u-alice", cols="title"))
    assert public == [{"title": "hello"}]
    # A public read needs no identity.
    anonymous = ok(await call(client, "getbyBcid", None, table="Notes", bcid="u-bob", cols="n"))
    assert anonymous == [{"n": 2}]
    refused(await call(client, "getbyBcid", BOB, table="Notes"), 400, "invalid", "bcid")
    refused(await call(client, "getbyBcid", BOB, bcid="acme"), 403, "forbidden", "public", "Items")


@pytest.mark.anyio
async def test_mdel_and_mdelmany(client: httpx.AsyncClient) -> None:
    ids = ok(
        await call(client, "mAddMany", pars=["a", 1, 1.0, "b", 2, 2.0, "c", 3, 3.0, "d", 4, 4.0])
    )
    assert ok(await call(client, "mdel", mid=ids[0])) == 1
    refused(await call(client, "mdel", mid=ids[0]), 404, "not_found")
    assert ok(await call(client, "mdelmany", ids=[ids[1], ids[2], "999"])) == 2
    # Comma-separated ids, and koa78's pars form.
    assert ok(await call(client, "mdelmany", ids=f"{ids[3]},998")) == 1
    assert ok(await call(client, "mdelmany", pars=["997"])) == 0
    assert await rows(client) == []
    refused(await call(client, "mdelmany"), 400, "invalid", "ids")


@pytest.mark.anyio
async def test_mupdateelkbyid_needs_a_search_source(client: httpx.AsyncClient) -> None:
    row_id = ok(await call(client, "mAdd", pars=["apple", 1, 1.0]))
    refused(
        await call(client, "mUpdateElkByid", mid=row_id, values={"name": "x"}),
        400,
        "invalid",
        "search source",
    )


class FakeSearch:
    """The memory source under the ``elasticsearch`` type name (the real adapter is blocked)."""

    def __call__(self, spec: SourceSpec) -> MemorySource:
        return MemorySource(spec)

    @hookimpl
    def wf78_register_datasources(self, registry: Any) -> None:
        registry.add("elasticsearch", self)


@pytest.mark.anyio
async def test_mupdateelkbyid_updates_the_callers_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WF78_DISABLE_PLUGINS", "elasticsearch")
    config = make_config(tmp_path / "es.db")
    config["datasources"]["es"] = {"type": "elasticsearch"}
    config["tables"]["Docs"] = {
        "columns": ["title", "body"],
        "owner": "cid",
        "route": "api/demo",
        "data_source": "es",
    }
    async with serving(config, plugins=[FakeSearch()]) as (client, _):
        doc = ok(await call(client, "mAdd", table="Docs", pars=["draft", "text"]))
        # koa78's form: pars = [id, document as JSON text].
        elk = await call(client, "mUpdateElkByid", table="Docs", pars=[doc, '{"title": "final"}'])
        assert ok(elk) == 1
        assert ok(await call(client, "mUpdateElkByid", table="Docs", mid=doc, pars=["again"])) == 1
        refused(
            await call(client, "mUpdateElkByid", BOB, table="Docs", mid=doc, values={"title": "x"}),
            404,
            "not_found",
        )
        found = ok(await call(client, "get", table="Docs", cols="title,body"))
        assert found == [{"title": "again", "body": "text"}]


def test_the_fourteen_methods_are_served() -> None:
    assert len(METHODS) == 14


# -- where parameters come from ---------------------------------------------------------------


@pytest.mark.anyio
async def test_query_string_parameters(client: httpx.AsyncClient) -> None:
    url = "/api/demo/Items/mAdd"
    repeated = await client.get(url, params=[("pars", "apple"), ("pars", "3")], headers=auth(ALICE))
    as_json = await client.get(url, params={"pars": '["pear", 4, 2.5]'}, headers=auth(ALICE))
    brackets = await client.get(
        url, params=[("pars[]", "fig"), ("pars[]", "5")], headers=auth(ALICE)
    )
    ids = [ok(response) for response in (repeated, as_json, brackets)]
    assert len(set(ids)) == 3
    found = await client.get(
        "/api/demo/Items/get",
        params={"cols": "name,qty", "order": "qty desc", "getnumber": "2", "getstart": "0"},
        headers=auth(ALICE),
    )
    assert ok(found) == [{"name": "fig", "qty": 5}, {"name": "pear", "qty": 4}]


@pytest.mark.anyio
async def test_form_body_parameters(client: httpx.AsyncClient) -> None:
    url = "/api/demo/Items/"
    added = await client.post(
        url + "mAdd", data={"pars": ["apple", "3", "1.25"]}, headers=auth(ALICE)
    )
    row_id = ok(added)
    updated = await client.post(
        url + "mUpdate", data={"mid": row_id, "cols": "qty", "pars": "8"}, headers=auth(ALICE)
    )
    assert ok(updated) == 1
    named = await client.post(
        url + "mAdd", data={"values": '{"name": "pear", "qty": 2}'}, headers=auth(ALICE)
    )
    ok(named)
    assert await rows(client, cols="name,qty,price") == [
        {"name": "apple", "qty": 8, "price": 1.25},
        {"name": "pear", "qty": 2, "price": None},
    ]


@pytest.mark.anyio
async def test_body_parameters_override_the_query(client: httpx.AsyncClient) -> None:
    ok(await call(client, "mAddMany", pars=["a", 1, 1.0, "b", 2, 2.0]))
    response = await client.post(
        "/api/demo/Items/get?getnumber=1&cols=name",
        json={"getnumber": 2, "order": "name"},
        headers=auth(ALICE),
    )
    assert ok(response) == [{"name": "a"}, {"name": "b"}]


# -- refusals -----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("get", {"getnumber": "abc"}, "getnumber"),
        ("get", {"getnumber": -1}, "getnumber"),
        ("get", {"getnumber": "1.5"}, "getnumber"),
        ("get", {"getnumber": True}, "getnumber"),
        ("get", {"getstart": "x1"}, "getstart"),
        ("get", {"getstart": "9" * 30}, "getstart"),
        ("get", {"getstart": "\uff11"}, "getstart"),  # a fullwidth digit is not a digit
        ("get", {"getnumber": 1001}, "getnumber"),
        ("get", {"cols": ["name", "secret"]}, "cols[1]"),
        ("get", {"cols": [1]}, "cols[0]"),
        ("get", {"order": "id; DROP TABLE x"}, "order"),
        ("get", {"order": "name desc, (select 1)"}, "order"),
        ("get", {"order": {"name": 1}}, "order"),
        ("get", {"where": {"cid": "globex"}}, "where.cid"),
        ("get", {"where": {"nope": 1}}, "where.nope"),
        ("get", {"where": "[1]"}, "where"),
        ("get", {"total": "maybe"}, "total"),
        ("get", {"pars": [1, 2, 3, 4]}, "pars"),
        ("mAdd", {"pars": ["a", 1, 1.0, "extra"]}, "pars"),
        ("mAdd", {"pars": ["a", "three"]}, "pars[1]"),
        ("mAdd", {"pars": ["a", 1, "cheap"]}, "pars[2]"),
        ("mAdd", {"pars": ["a", 1, "nan"]}, "pars[2]"),
        ("mAdd", {"pars": ["a", 1, "1e400"]}, "pars[2]"),
        ("mAdd", {"pars": ["a", 10**30]}, "pars[1]"),
        ("mAdd", {"pars": ["a", True]}, "pars[1]"),
        ("mAdd", {"pars": [["nested"]]}, "pars[0]"),
        ("mAdd", {"pars": [{"a": 1}]}, "pars[0]"),
        ("mAdd", {"pars": "[1,"}, "pars"),
        ("mAdd", {"pars": {"name": "x"}}, "pars"),
        ("mAdd", {}, "pars"),
        ("mAdd", {"cols": ["id"], "pars": ["5"]}, "cols[0]"),
        ("mAdd", {"cols": ["cid"], "pars": ["globex"]}, "cols[0]"),
        ("mAdd", {"values": {"cid": "globex"}}, "values.cid"),
        ("mAdd", {"values": {"nope": 1}}, "values.nope"),
        ("mAdd", {"values": ["x"]}, "values"),
        ("mAddMany", {"pars": ["a", 1, 1.0, "b"]}, "pars"),
        ("mAddMany", {"pars": [["a", 1]]}, "pars[0]"),
        ("mAddMany", {"rows": [{"name": "a"}, "b"]}, "rows[1]"),
        ("mAddManyByid", {"pars": ["a", 1, 1.0, "x1"]}, "pars[3]"),
        ("mAddManyByid", {"rows": [{"name": "a"}]}, "rows[0].id"),
        ("mUpdateMany", {"pars": [["a", "many", 1.0, "12"]]}, "pars[0][1]"),
        ("mUpdate", {"mid": "12a", "pars": ["x"]}, "mid"),
        ("mUpdate", {"mid": "1" * 65, "pars": ["x"]}, "mid"),
        ("mdel", {"mid": "1 OR 1=1"}, "mid"),
        ("mdel", {}, "mid"),
        ("mdelmany", {"ids": ["1", "2; --"]}, "ids[1]"),
        ("getbyBcid", {"bcid": ""}, "bcid"),
    ],
)
async def test_bad_input_is_400_naming_the_field(
    client: httpx.AsyncClient, method: str, params: dict[str, Any], field: str
) -> None:
    table = "Notes" if method == "getbyBcid" else "Items"
    message = refused(await call(client, method, table=table, **params), 400, "invalid")
    assert field in message


@pytest.mark.anyio
async def test_order_injection_leaves_the_table_alone(
    served: tuple[httpx.AsyncClient, Engine], tmp_path: Path
) -> None:
    client, _ = served
    ok(await call(client, "mAdd", pars=["apple", 1, 1.0]))
    for order in ("id; DROP TABLE Items", "name; DELETE FROM Items", "-(name)"):
        refused(await call(client, "get", order=order), 400, "invalid", "order")
    assert len(await rows(client)) == 1
    with sqlite3.connect(tmp_path / "routes.db") as connection:
        (count,) = connection.execute("SELECT count(*) FROM Items").fetchone()
    assert count == 1


@pytest.mark.anyio
async def test_bad_bodies_are_400(client: httpx.AsyncClient) -> None:
    url = "/api/demo/Items/mAdd"
    broken = await client.post(
        url, content=b'{"pars": [', headers={**auth(ALICE), "content-type": "application/json"}
    )
    refused(broken, 400, "invalid", "body", "JSON")
    array = await client.post(url, json=["a"], headers=auth(ALICE))
    refused(array, 400, "invalid", "body", "object")
    latin = await client.post(
        url,
        content=b"pars=\xff",
        headers={**auth(ALICE), "content-type": "application/x-www-form-urlencoded"},
    )
    refused(latin, 400, "invalid", "body")
    other = await client.post(
        url, content=b"<xml/>", headers={**auth(ALICE), "content-type": "application/xml"}
    )
    refused(other, 415, "unsupported_media", "application/xml")


@pytest.mark.anyio
async def test_no_identity_is_401_on_an_owned_table(client: httpx.AsyncClient) -> None:
    for method in METHODS:
        if method == "getbyBcid":
            continue
        response = await call(client, method, None, pars=["x"], mid="1")
        refused(response, 401, "unauthorized", "Bearer")
        assert response.headers["www-authenticate"] == "Bearer"
    refused(await call(client, "get", "not-a-token"), 401, "unauthorized")
    # An identity without the owner column cannot use a cid-scoped table.
    refused(await call(client, "get", NOCID), 403, "forbidden", "cid")


@pytest.mark.anyio
async def test_route_refusals_405_and_the_apps_paths(client: httpx.AsyncClient) -> None:
    # Under a configured route, only a configured table's 14 methods are wf78's: anything
    # else is the app's (here Starlette's plain 404), so an app serves its own methods.
    for response in (
        await call(client, "_private"),
        await call(client, "_private", table="Nope"),
        await call(client, "get", table="Nope"),
        await call(client, "drop"),
        await client.get("/api/demo/Items", headers=auth(ALICE)),
        await client.get("/api/demo/Items/get/extra"),
        await client.get("/api/demo/"),
    ):
        assert (response.status_code, response.text) == (404, "Not Found")
    for verb in ("PUT", "DELETE", "PATCH"):
        response = await client.request(verb, "/api/demo/Items/get", headers=auth(ALICE))
        refused(response, 405, "method_not_allowed", verb)
        assert response.headers["allow"] == "GET, POST"
    # Not a configured route: the app answers.
    assert (await client.get("/")).text == "the app"
    assert (await client.get("/api/other/Items/get")).status_code == 404
    assert "res" not in (await client.get("/api/other/Items/get")).text


@pytest.mark.anyio
async def test_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    big = b'{"pars": ["' + b"x" * (2 << 20) + b'"]}'
    declared = await client.post(
        "/api/demo/Items/mAdd",
        content=big,
        headers={**auth(ALICE), "content-type": "application/json"},
    )
    refused(declared, 413, "too_large", str(1 << 20))

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted while read
        for start in range(0, len(big), 64 << 10):
            yield big[start : start + (64 << 10)]

    streamed = await client.post(
        "/api/demo/Items/mAdd",
        content=chunks(),
        headers={**auth(ALICE), "content-type": "application/json"},
    )
    refused(streamed, 413, "too_large")
    assert await rows(client) == []


@pytest.mark.anyio
async def test_page_limit_is_configurable(tmp_path: Path) -> None:
    async with serving(make_config(tmp_path / "page.db"), max_page=10) as (client, _):
        ok(await call(client, "get", getnumber=10))
        refused(await call(client, "get", getnumber=11), 400, "invalid", "getnumber", "10")


class Refusing:
    """A data-source type ``refusing``: every operation fails with ``message``."""

    class Options(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
        message: str = "duplicate key"
        retryable: bool = False
        conflict: bool = False  # what an adapter says of a duplicate key or constraint

    actions = frozenset({"add", "add_many", "get", "count", "update", "delete", "delete_many"})
    concurrency = 10

    def __init__(self, spec: SourceSpec) -> None:
        self.name = spec.name
        self.options: Refusing.Options = spec.options

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def health(self) -> None:
        pass

    async def execute(self, op: Operation) -> Any:
        raise DataSourceError(
            self.options.message,
            data_source=self.name,
            retryable=self.options.retryable,
            conflict=self.options.conflict,
        )


class RefusingPlugin:
    @hookimpl
    def wf78_register_datasources(self, registry: Any) -> None:
        registry.add("refusing", Refusing)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("message", "retryable", "conflict", "status", "kind"),
    [
        ("duplicate key on x: UNIQUE failed for 'secret-value'", False, True, 409, "conflict"),
        ("constraint violated: 'secret-value'", False, True, 409, "conflict"),
        ("bad SQL near 'secret-value'", False, False, 502, "source_error"),
        ("connection lost while sending 'secret-value'", True, False, 503, "unavailable"),
    ],
)
async def test_data_source_errors_map_to_statuses_without_details(
    tmp_path: Path, message: str, retryable: bool, conflict: bool, status: int, kind: str
) -> None:
    config = make_config(tmp_path / "x.db")
    config["datasources"]["bad"] = {
        "type": "refusing",
        "message": message,
        "retryable": retryable,
        "conflict": conflict,
    }
    config["tables"]["Items"]["data_source"] = "bad"
    async with serving(config, plugins=[RefusingPlugin()]) as (client, _):
        response = await call(client, "mAdd", pars=["apple", 1, 1.0])
        errmsg = refused(response, status, kind, "'bad'")
        assert "secret-value" not in errmsg
        if status == 503:
            assert response.headers["retry-after"] == "1"


@pytest.mark.anyio
async def test_overloaded_engine_is_503_with_retry_after(tmp_path: Path, faults: Faults) -> None:
    config = make_config(
        tmp_path / "busy.db",
        engine={"queue_size": 1, "overload_timeout": 0.05, "drain_timeout": 2.0},
    )
    config["datasources"]["slow"] = {"type": "faulty", "block": True}
    config["tables"]["Items"]["data_source"] = "slow"
    async with serving(config, plugins=[faults]) as (client, _):
        first: list[httpx.Response] = []

        async def blocked() -> None:
            first.append(await call(client, "mAdd", pars=["apple"]))

        async with anyio.create_task_group() as group:
            group.start_soon(blocked)
            await faults.until(lambda: len(faults.entered) == 1)
            response = await call(client, "mAdd", pars=["pear"])
            refused(response, 503, "overloaded", "queue full")
            assert response.headers["retry-after"] == "1"
            faults.gate.set()
        assert first[0].status_code == 200


# -- identity and priority ----------------------------------------------------------------


@pytest.mark.anyio
async def test_priority_header_is_capped_by_the_identity(
    served: tuple[httpx.AsyncClient, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, engine = served
    submitted: list[int | None] = []
    submit = engine.submit

    async def recording(op: Operation, **kwargs: Any) -> Any:
        submitted.append(kwargs.get("priority"))
        return await submit(op, **kwargs)

    monkeypatch.setattr(engine, "submit", recording)
    urgent = {"x-wf78-priority": "0"}
    ok(await call(client, "get", ALICE, headers=urgent))
    ok(await call(client, "get", CAROL, headers=urgent))  # max_priority 2: not above it
    ok(await call(client, "get", CAROL, headers={"x-wf78-priority": "5"}))
    ok(await call(client, "get", CAROL))  # no header: the engine's default, capped
    ok(await call(client, "get", ALICE))
    assert submitted == [0, 2, 5, 2, None]
    refused(
        await call(client, "get", ALICE, headers={"x-wf78-priority": "high"}),
        400,
        "invalid",
        "X-WF78-Priority",
    )


@pytest.mark.anyio
async def test_sid_header_and_parameter_name_the_caller(client: httpx.AsyncClient) -> None:
    by_header = await call(client, "mAdd", None, headers={"sid": ALICE}, pars=["apple"])
    ok(by_header)
    by_param = await call(client, "mAdd", None, sid=BOB, pars=["pear"])
    ok(by_param)
    assert await rows(client, cols="name,upby") == [{"name": "apple", "upby": "alice"}]
    assert await rows(client, BOB, cols="name,upby") == [{"name": "pear", "upby": "bob"}]
    # The Authorization header wins over a sid parameter.
    mixed = await call(client, "get", ALICE, sid=BOB, cols="name")
    assert ok(mixed) == [{"name": "apple"}]


@pytest.mark.anyio
async def test_tenant_isolation_through_every_method(client: httpx.AsyncClient) -> None:
    """Bob (globex) names Alice's (acme) rows in every method: none is read or changed."""
    mine = ok(await call(client, "mAddMany", pars=["a", 1, 1.0, "b", 2, 2.0]))
    before = await rows(client, cols="id,name,qty,price,upby")
    a, b = mine

    async def bob(method: str, **params: Any) -> httpx.Response:
        return await call(client, method, BOB, **params)

    assert ok(await bob("get")) == []
    assert ok(await bob("get", where={"id": a})) == []
    assert ok(await bob("get", cols=["id"], pars=[a])) == []
    refused(await bob("getbyBcid", bcid="acme"), 403, "forbidden")
    refused(await bob("mUpdate", mid=a, pars=["stolen"]), 404, "not_found")
    refused(await bob("mUpdateByid", mid=a, pars=["stolen"]), 404, "not_found")
    refused(await bob("mUpdateByid", values={"id": a, "name": "stolen"}), 404, "not_found")
    assert ok(await bob("mUpdateMany", pars=["stolen", 0, 0.0, a, "stolen", 0, 0.0, b])) == 0
    assert ok(await bob("mUpdateMany", rows=[{"id": a, "qty": 0}])) == 0
    own = ok(await bob("m", mid=a, pars=["a", 9, 9.0]))  # not Bob's: inserts his own row
    assert own != a
    # Alice's id is one nobody has, to Bob (each owner has its own ids): mByid inserts a
    # row of his own under it, and his later calls with that id reach that row only.
    assert ok(await bob("mByid", mid=a, pars=["bob's"])) == a
    firsts = ok(await bob("mByFirstField", pars=["a", 9, 9.0]))  # Bob's own "a"
    assert firsts == own
    assert ok(await bob("mAddManyByid", pars=["again", 0, 0.0, a])) == 0  # his own now
    assert ok(await bob("mdel", mid=a)) == 1
    refused(await bob("mdel", mid=a), 404, "not_found")
    assert ok(await bob("mdelmany", ids=[a, b])) == 0
    refused(await bob("mUpdateElkByid", mid=a, values={"name": "x"}), 400, "invalid")
    assert await rows(client, cols="id,name,qty,price,upby") == before
    assert await rows(client, BOB, cols="name,qty") == [{"name": "a", "qty": 9}]
    # And the other way round, with Alice's bulk delete naming everything.
    assert ok(await call(client, "mdelmany", ids=[a, b, own])) == 2
    assert await rows(client, BOB, cols="name") == [{"name": "a"}]


@pytest.mark.anyio
async def test_user_scoped_table_separates_colleagues(client: httpx.AsyncClient) -> None:
    note = ok(await call(client, "mAdd", table="Notes", pars=["alice's", 1]))
    # Carol shares Alice's company, not her uid.
    assert ok(await call(client, "get", CAROL, table="Notes")) == []
    refused(await call(client, "mdel", CAROL, table="Notes", mid=note), 404, "not_found")
    assert ok(await call(client, "mdel", table="Notes", mid=note)) == 1


@pytest.mark.anyio
async def test_weird_inputs_never_answer_500(client: httpx.AsyncClient) -> None:
    weird: list[Any] = [None, True, 1.5, -1, 10**30, "", "x" * 300, [], {}, [[]], [{}], "[", "{"]
    for method in METHODS:
        for value in weird:
            for name in ("pars", "cols", "mid", "values", "rows", "ids", "order", "where"):
                response = await call(client, method, table="Notes", **{name: value})
                assert response.status_code < 500, (method, name, value, response.text)
