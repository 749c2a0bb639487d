"""koa78's own clients work unchanged (issue 17 items 1-4).

Requests are shaped exactly as koa78-base78's clients send them: the form posts of its
``dist/static/api_test.html`` page (``URLSearchParams`` with ``sid``, ``mid: '0'``, ``v: 24``,
``json: 1`` and JSON text ``pars``/``cols``), the base64 form posts of its older restler test
(``v: 17.2``, ``pars`` = base64 of JSON with the first ``+ / =`` written ``* - .``), axios
GETs (``params: {pars: [...]}`` -> ``pars[]=``) and JSON posts as in its CURL guide, on its
mixed-case paths (``/ApiTest/TestMenu/testtb/get``). The wrapped app serves its own methods
beside wf78's (``/apitest/testmenu/Test78/test``, ``testtb/customMethod``), and
``[http] answers = "koa78"`` answers as koa78 did, on SQLite and on the real MariaDB.

Everything goes through ``httpx.ASGITransport`` into ``Wf78Middleware`` started by
``asgi_lifespan.LifespanManager``; what is stored is read back with the database's own client.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from uuid import uuid4

import httpx
import pymysql
import pytest
import schemathesis
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from wf78_core import ConfigError, Engine, Identity, current
from wf78_core.config import parse_config
from wf78_core.http.middleware import Wf78Middleware
from wf78_core.http.openapi import openapi_document

MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "database": "test"}
GUEST_SID = "GUEST888-8888-8888-8888-GUEST88GUEST"  # koa78's guest session
ALICE, BOB = "tok-alice", "tok-bob"
FORM = {"content-type": "application/x-www-form-urlencoded"}
LOCAL = timezone(timedelta(hours=8))  # the server's zone in these tests: TZ=CST-8


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite and aiomysql run on asyncio only


@pytest.fixture
def east_of_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server's local time is UTC+8, so a local ``uptime`` differs from the stored one."""
    monkeypatch.setenv("TZ", "CST-8")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# -- the wrapped app: koa78 controllers' own methods -----------------------------------------


async def heartbeat_test78(request: Request) -> JSONResponse:
    """koa78's heartbeat ``Test78.test``, answered by the app itself."""
    pars = request.query_params.getlist("pars[]")
    back = "看到我说明路由ok,中文ok,无权限调用OK" + (pars[0] if pars else "")
    return JSONResponse({"res": 0, "errmsg": "", "kind": "json", "back": back})


async def own_method(request: Request) -> JSONResponse:
    """Any other method of a table, as a koa78 controller's own method."""
    identity = current().identity
    caller = identity.uname if identity is not None else None
    path = f"{request.path_params['table']}/{request.path_params['method']}"
    return JSONResponse({"res": 0, "errmsg": "", "kind": "json", "back": f"app:{path}:{caller}"})


APP = Starlette(
    routes=[
        Route("/apitest/testmenu/Test78/test", heartbeat_test78, methods=["GET", "POST"]),
        Route("/{apisys}/{apimicro}/{table}/{method}", own_method, methods=["GET", "POST"]),
    ]
)


# -- a served site -----------------------------------------------------------------------------


@dataclass
class Site:
    client: httpx.AsyncClient
    engine: Engine
    source: str
    path: Path
    names: dict[str, str]  # the test's name of a table -> its configured name

    async def send(
        self,
        path: str,
        *,
        token: str | None = ALICE,
        form: dict[str, Any] | None = None,
        **body: Any,
    ) -> httpx.Response:
        """POST ``path``: a form (urlencoded as koa78's clients did) or a JSON body."""
        headers = {"authorization": f"Bearer {token}"} if token else {}
        if form is not None:
            content = urlencode(form, doseq=True)
            return await self.client.post(path, content=content, headers={**headers, **FORM})
        return await self.client.post(path, json=body, headers=headers)

    def stored(self, table: str) -> list[dict[str, Any]]:
        """Every row of a table as the database holds it, by its own client."""
        name = self.names[table]
        if self.source == "sqlite":
            with sqlite3.connect(self.path) as connection:
                connection.row_factory = sqlite3.Row
                return [dict(row) for row in connection.execute(f'SELECT * FROM "{name}"')]
        connection = pymysql.connect(**MYSQL, cursorclass=pymysql.cursors.DictCursor)
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT * FROM `{name}`")
                return list(cursor.fetchall())
        finally:
            connection.close()


def tables_of(names: dict[str, str]) -> dict[str, Any]:
    """``testtb`` as koa78's test controller (kind, item, data), ``downcenter`` as the table
    of its api_test.html page, ``stock`` as the ``StockMine`` of its CURL guide."""
    shapes: dict[str, Any] = {
        "testtb": ("apitest/testmenu", {"kind": "text", "item": "text", "data": "text"}),
        "downcenter": (
            "apiexhibitor/simple",
            {
                "filename": "text",
                "fileformat": "text",
                "filesize": "int",
                "fileurl": "text",
                "uploadtime": "text",
                "state": "int",
            },
        ),
        "stock": (
            "apisys1/stock",
            {"ts_code": "text", "name": "text", "price": "float", "date": "text"},
        ),
    }
    return {
        names[key]: {"columns": columns, "owner": "cid", "route": route, "data_source": "db"}
        for key, (route, columns) in shapes.items()
    }


@asynccontextmanager
async def site(tmp_path: Path, source: str = "sqlite", **http: Any) -> AsyncIterator[Site]:
    """The wrapped app over a fresh SQLite file, or the shared MariaDB (tables of a name of
    their own, dropped after)."""
    # koa78's names; its controller class Testtb is "testtb" in its paths.
    tag = "" if source == "sqlite" else "_" + uuid4().hex[:6]
    names = {
        "testtb": f"Testtb{tag}",
        "downcenter": f"simple_downcenter{tag}",
        "stock": f"StockMine{tag}",
    }
    path = tmp_path / f"koa78-{uuid4().hex[:6]}.db"
    db: dict[str, Any] = (
        {"type": "sqlite", "url": f"sqlite:///{path}"}
        if source == "sqlite"
        else {"type": "mysql", "url": MYSQL_URL, "maxsize": 4}
    )
    config = {
        "engine": {"drain_timeout": 2.0, "retry_backoff": 0.001},
        "datasources": {"db": db},
        "tables": tables_of(names),
        "auth": {
            "tokens": {
                ALICE: {"uid": "u-alice", "cid": "acme", "uname": "alice"},
                BOB: {"uid": "u-bob", "cid": "globex", "uname": "bob"},
                GUEST_SID: {"uid": "GUEST", "cid": "guest-co", "uname": "guest"},
            }
        },
        "http": http,
    }
    app = Wf78Middleware(APP, engine=Engine(config))
    try:
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://koa78") as client:
                yield Site(client, app.engine, source, path, names)
    finally:
        if source == "mysql":
            connection = pymysql.connect(**MYSQL)
            try:
                with connection.cursor() as cursor:
                    for name in names.values():
                        cursor.execute(f"DROP TABLE IF EXISTS `{name}`")
            finally:
                connection.close()


def koa78_base64(values: Any) -> str:
    """As koa78's restler test encoded ``pars``: JSON, base64, then JavaScript's
    ``replace('+', '*').replace('/', '-').replace('=', '.')`` (first occurrence only)."""
    text = base64.b64encode(json.dumps(values, ensure_ascii=False).encode()).decode()
    return text.replace("+", "*", 1).replace("/", "-", 1).replace("=", ".", 1)


def done(response: httpx.Response, kind: str = "") -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["res"], body["errmsg"], body["kind"]) == (0, "", kind), body
    return body["back"]


def missed(response: httpx.Response, res: int) -> Any:
    """koa78 mode's answer of a write that matched nothing: what UpinfoPy's
    ``raise_for_status()`` lets through."""
    response.raise_for_status()
    body = response.json()
    assert (body["res"], body["kind"]) == (res, "string"), body
    assert body["errmsg"]
    return body["back"]


def refused(response: httpx.Response, status: int, field: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["res"] == -status and body["back"] is None
    message: str = body["errmsg"]
    assert message.startswith(field), message
    return message


# -- 1. base64 pars are decoded, never stored --------------------------------------------------

# Values whose base64 holds "+", "/" and "=" several times: every koa78 stand-in is used.
TRICKY = ["?>>?~~ü", "data ünïcödé ✓", "~~~>>>???"]


@pytest.mark.anyio
async def test_restler_form_posts_with_v17_base64_pars_store_the_values(tmp_path: Path) -> None:
    """koa78's restler test: ``v: 17.2`` form posts whose ``pars`` is base64 of JSON."""
    encoded = koa78_base64(TRICKY)
    assert {"*", "-", "."} <= set(encoded) and {"+", "/"} <= set(encoded)
    async with site(tmp_path) as s:
        guest = {"sid": GUEST_SID, "cid": "x", "uname": "guest", "bcid": "x", "v": 17.2}
        add = "/ApiTest/TestMenu/testtb/mAdd"
        new_id = done(await s.send(add, token=None, form={**guest, "pars": encoded}))
        [row] = s.stored("testtb")
        assert [row["kind"], row["item"], row["data"]] == TRICKY
        assert row["id"] == new_id and row["cid"] == "guest-co"
        # The restler "m" case: the row exists, so it is updated and back is its mid.
        form = {**guest, "mid": new_id, "pars": koa78_base64(["newdata", "itemval"])}
        assert done(await s.send("/ApiTest/TestMenu/testtb/m", token=None, form=form)) == new_id
        [row] = s.stored("testtb")
        assert [row["kind"], row["item"], row["data"]] == ["newdata", "itemval", TRICKY[2]]


@pytest.mark.anyio
async def test_jsonbase64_joins_values_with_comma_tilde_from_v22(tmp_path: Path) -> None:
    joined = base64.b64encode("a,b,~c d,~ü".encode()).decode().rstrip("=")  # padding dropped
    async with site(tmp_path) as s:
        add = "/apitest/testmenu/Testtb/mAdd"
        done(await s.send(add, form={"pars": joined, "jsonbase64": "true"}))  # v 24 default
        done(await s.send(add, form={"pars": joined, "v": "22"}))  # jsonbase64 by default
        # The v header wins over the parameter (22 splits; 21 would read JSON and refuse).
        response = await s.client.post(
            add,
            content=urlencode({"pars": joined, "v": "21"}),
            headers={"authorization": f"Bearer {ALICE}", "v": "22", **FORM},
        )
        done(response)
        stored = [[row["kind"], row["item"], row["data"]] for row in s.stored("testtb")]
        assert stored == [["a,b", "c d", "ü"]] * 3


@pytest.mark.anyio
async def test_base64_decodes_each_value_in_forms_json_and_axios_gets(tmp_path: Path) -> None:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    async with site(tmp_path) as s:
        add = "/apitest/testmenu/Testtb/mAdd"
        done(await s.send(add, form={"pars": [b64("k1"), b64("i1")], "base64": 1}))
        done(await s.send(add, pars=[b64("k2"), b64("i/2")], base64=True))  # axios JSON
        done(await s.send(add, form={"pars": b64("one value"), "base64": "true"}))
        stored = sorted((row["kind"], row["item"]) for row in s.stored("testtb"))
        assert stored == [("k1", "i1"), ("k2", "i/2"), ("one value", None)]
        # An axios GET: params {pars: [...], base64: 1} -> pars[]=...&base64=1, a filter.
        query = urlencode({"pars[]": [b64("k2")], "base64": 1}, doseq=True)
        found = done(
            await s.client.get(
                f"/apitest/testmenu/Testtb/get?{query}",
                headers={"authorization": f"Bearer {ALICE}"},
            )
        )
        assert [row["item"] for row in found] == ["i/2"]


UNDECODABLE = [
    ({"pars": "!!not base64!!", "base64": "1"}, "pars:"),
    ({"pars": "QUJDR", "base64": "1"}, "pars:"),  # a length no base64 text has
    ({"pars": "QU=JD", "jsonbase64": "1"}, "pars:"),  # padding inside
    ({"pars": base64.b64encode(b"\xff\xfe").decode(), "base64": "1"}, "pars:"),  # not UTF-8
    ({"pars": base64.b64encode(b"not json").decode(), "v": "17.2"}, "pars:"),  # v < 22: JSON
    ({"pars": base64.b64encode(b'{"a": 1}').decode(), "v": "17.2"}, "pars:"),  # not an array
    ({"pars": ["a", "b"], "v": "23"}, "pars:"),  # jsonbase64 (v 23) wants one text
    ({"pars": base64.b64encode(b"x").decode(), "v": "new"}, "v:"),
    ({"pars": base64.b64encode(b"x").decode(), "jsonbase64": "maybe"}, "jsonbase64:"),
    ({"pars": base64.b64encode(b"x").decode(), "base64": "2"}, "base64:"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("form", "field"), UNDECODABLE)
async def test_what_does_not_decode_is_400_naming_the_field_and_nothing_is_stored(
    tmp_path: Path, form: dict[str, Any], field: str
) -> None:
    async with site(tmp_path) as s:
        refused(await s.send("/apitest/testmenu/Testtb/mAdd", form=form), 400, field)
        refused(await s.send("/apitest/testmenu/Testtb/mAdd", **form), 400, field)  # JSON
        assert s.stored("testtb") == []


# -- 2. routing in any case, 3. the app's own methods -----------------------------------------


@pytest.mark.anyio
async def test_mixed_case_paths_reach_the_table(tmp_path: Path) -> None:
    async with site(tmp_path) as s:  # table Testtb on route apitest/testmenu
        new_id = done(await s.send("/ApiTest/TestMenu/testtb/MADD", pars=["k", "i", "d"]))
        for path in (
            "/ApiTest/TestMenu/testtb/get",
            "/APITEST/testmenu/TESTTB/Get",
            "/apitest/testmenu/Testtb/get",
        ):
            assert [row["id"] for row in done(await s.send(path))] == [new_id]
        # Only ASCII letters fold: the Kelvin sign is no "k" (the app answers).
        kelvin = await s.send("/apisys1/stoc\u212a/StockMine/get")
        assert done(kelvin, "json") == "app:StockMine/get:alice"
        done(await s.send("/apiTest/testMenu/TestTB/mdel", mid=new_id))
        assert s.stored("testtb") == []


@pytest.mark.anyio
async def test_the_apps_own_methods_are_served_beside_wf78s(tmp_path: Path) -> None:
    async with site(tmp_path) as s:
        # koa78's api.test.ts: axios.get(".../Test78/test", {params: {pars: ["test"]}}).
        heartbeat = await s.client.get("/apitest/testmenu/Test78/test", params={"pars[]": "test"})
        assert done(heartbeat, "json") == "看到我说明路由ok,中文ok,无权限调用OKtest"
        # A configured table's own method, any method not of the 14, a table not configured:
        # all the app's, with current() bound to the caller.
        for path, back in (
            ("/apitest/testmenu/testtb/customMethod", "app:testtb/customMethod:alice"),
            ("/ApiTest/TestMenu/Testtb/_private", "app:Testtb/_private:alice"),
            ("/apitest/testmenu/Nope/get", "app:Nope/get:alice"),
        ):
            assert done(await s.send(path, pars=["x"]), "json") == back
        assert s.stored("testtb") == []


def test_paths_that_differ_only_in_case_are_a_configuration_error() -> None:
    table = {"columns": ["name"], "route": "api/shop"}
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "tables": {"Items": table, "items": {**table, "route": "api/Shop"}},
                "http": {"answers_by_route": {"api/nowhere": "koa78", "Api/Shop": "koa78"}},
            }
        )
    paths = sorted(problem.path for problem in caught.value.problems)
    assert paths == ["http.answers_by_route.api/nowhere", "tables.items.route"]
    assert "any case" in str(caught.value)


# -- 4. the koa78 answer mode ------------------------------------------------------------------

LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


@pytest.mark.anyio
@pytest.mark.parametrize("source", ["sqlite", "mysql"])
async def test_koa78_answers_of_every_write(tmp_path: Path, source: str) -> None:
    async with site(tmp_path, source, answers="koa78") as s:
        base = f"/apitest/testmenu/{s.names['testtb']}"
        first = done(await s.send(f"{base}/mAdd", pars=["k1", "i1", "d1"]), "json")
        assert isinstance(first, str) and first.isdigit()
        assert (
            done(await s.send(f"{base}/mAddMany", pars=["k2", "i", "d", "k3", "i", "d"]), "json")
            == 2
        )
        ids = [str(10**17 + n) for n in range(2)]
        by_id = ["k4", "i", "d", ids[0], "k5", "i", "d", ids[1]]
        assert done(await s.send(f"{base}/mAddManyByid", pars=by_id), "json") == 2
        assert missed(await s.send(f"{base}/mAddManyByid", pars=by_id), -1003) == 0
        # mUpdate, mUpdateByid, mdel answer the row's id (a string); counts are text.
        assert done(await s.send(f"{base}/mUpdate", mid=first, pars=["K1"]), "json") == first
        assert done(await s.send(f"{base}/mUpdateByid", mid=first, pars=["K"]), "json") == first
        pairs = ["x", ids[0], "y", ids[1]]
        assert done(await s.send(f"{base}/mUpdateMany", pars=pairs, cols=["item"]), "json") == "2"
        assert done(await s.send(f"{base}/m", mid=first, pars=["m"]), "json") == first
        assert done(await s.send(f"{base}/mByid", mid=ids[0], pars=["b"]), "json") == ids[0]
        assert done(await s.send(f"{base}/mdel", mid=ids[1]), "json") == ids[1]
        assert done(await s.send(f"{base}/mdelmany", pars=[ids[0]]), "json") == "1"
        # Nothing matched: HTTP 200 (raise_for_status passes), koa78's codes.
        nobody = str(10**17 + 99)
        assert nobody in missed(await s.send(f"{base}/mUpdateByid", mid=nobody, pars=["z"]), -2001)
        assert nobody in missed(await s.send(f"{base}/mUpdate", mid=nobody, pars=["z"]), -2002)
        nothing = await s.send(f"{base}/mUpdateMany", pars=["z", nobody], cols=["item"])
        assert missed(nothing, -2003) == "0"
        assert nobody in missed(await s.send(f"{base}/mdel", mid=nobody), -3001)
        assert missed(await s.send(f"{base}/mdelmany", pars=[nobody]), -3002) == "0"
        # Another company's row is a row nobody has: the same codes, its row untouched.
        before = s.stored("testtb")
        missed(await s.send(f"{base}/mUpdateByid", token=BOB, mid=first, pars=["z"]), -2001)
        missed(await s.send(f"{base}/mdel", token=BOB, mid=first), -3001)
        missed(await s.send(f"{base}/mdelmany", token=BOB, pars=[first]), -3002)
        assert s.stored("testtb") == before
        # Other failures keep their status and envelope.
        refused(await s.send(f"{base}/mUpdate", token=None, mid=first, pars=["z"]), 401, "table")
        refused(await s.send(f"{base}/mUpdate", mid="x", pars=["z"]), 400, "mid")


@pytest.mark.anyio
@pytest.mark.parametrize("source", ["sqlite", "mysql"])
async def test_koa78_reads_local_uptime_every_column_newest_first(
    tmp_path: Path, source: str, east_of_utc: None
) -> None:
    async with site(tmp_path, source, answers="koa78") as s:
        base = f"/apitest/testmenu/{s.names['testtb']}"
        ids = [
            done(await s.send(f"{base}/mAdd", pars=[f"k{n}", "i", "d"]), "json") for n in range(3)
        ]
        rows = done(await s.send(f"{base}/get", cols=["kind"]), "json")
        assert [row["id"] for row in rows] == sorted(ids, reverse=True)  # order: id desc
        assert all(set(row) >= {"kind", "item", "data", "upby", "uptime"} for row in rows)
        alice = Identity(uid="u-alice", cid="acme", uname="alice")
        table = s.engine.table(s.names["testtb"], identity=alice)
        stored = {row["id"]: row["uptime"] for row in await table.get()}
        for row in rows:
            assert LOCAL_TIME.fullmatch(row["uptime"]), row
            utc = stored[row["id"]]
            moment = utc if isinstance(utc, datetime) else datetime.fromisoformat(utc)
            assert row["uptime"] == moment.astimezone(LOCAL).strftime("%Y-%m-%d %H:%M:%S")
        # Filters on cols (id among koa78's system fields), {rows, total} too.
        found = done(await s.send(f"{base}/get", pars=[ids[1]], cols=["id"], total=1), "json")
        assert found["total"] == 1 and LOCAL_TIME.fullmatch(found["rows"][0]["uptime"])


@pytest.mark.anyio
@pytest.mark.parametrize("source", ["sqlite", "mysql"])
async def test_koa78_write_cols_may_name_system_fields(tmp_path: Path, source: str) -> None:
    async with site(tmp_path, source, answers="koa78") as s:
        base = f"/apitest/testmenu/{s.names['testtb']}"
        cols = ["kind", "upby", "uptime"]
        new_id = done(
            await s.send(f"{base}/mAdd", pars=["k", "mallory", "1999-01-01"], cols=cols), "json"
        )
        [row] = s.stored("testtb")
        assert (row["kind"], row["upby"]) == ("k", "alice")  # the table sets upby and uptime
        assert not str(row["uptime"]).startswith("1999")
        # An id in cols names the row when mid does not.
        pars = [new_id, "renamed"]
        assert (
            done(await s.send(f"{base}/mUpdateByid", pars=pars, cols=["id", "item"]), "json")
            == new_id
        )
        assert s.stored("testtb")[0]["item"] == "renamed"
        assert (
            done(await s.send(f"{base}/m", pars=[new_id, "again"], cols=["id", "item"]), "json")
            == new_id
        )
        assert s.stored("testtb")[0]["item"] == "again"
    # The default answers keep refusing them.
    async with site(tmp_path) as s:
        base = f"/apitest/testmenu/{s.names['testtb']}"
        refused(
            await s.send(f"{base}/mAdd", pars=["k", "x"], cols=["kind", "upby"]), 400, "cols[1]"
        )


@pytest.mark.anyio
@pytest.mark.parametrize("source", ["sqlite", "mysql"])
async def test_the_api_test_html_page(tmp_path: Path, source: str) -> None:
    """Every request of koa78's dist/static/api_test.html, as the page sends it."""
    async with site(tmp_path, source, answers="koa78") as s:
        base = f"/apiexhibitor/simple/{s.names['downcenter']}"
        headers = {"sid": GUEST_SID, "uname": "guest", **FORM}

        async def post(action: str, **body: Any) -> Any:
            fields = {"sid": GUEST_SID, "mid": "0", "v": 24, "json": 1, "uname": "guest", **body}
            response = await s.client.post(
                f"{base}/{action}", content=urlencode(fields), headers=headers
            )
            response.raise_for_status()
            return response.json()

        cols = json.dumps(["filename", "fileformat", "filesize", "fileurl", "uploadtime", "state"])
        for name in ("测试文件.pdf", "数据报表.xlsx"):
            pars = json.dumps(
                [name, "pdf", 2048576, "https://cdn.example.com/x", "2026-07-01 10:00:00", 0]
            )
            added = await post("mAdd", pars=pars, cols=cols)
            assert (added["res"], added["kind"]) == (0, "json")
        got = await post("get", pars="[]", cols='["all"]', getstart="0", getnumber="10")
        assert got["res"] == 0 and [row["filename"] for row in got["back"]] == [
            "数据报表.xlsx",
            "测试文件.pdf",
        ]
        last_id = got["back"][0]["id"]
        # The page sends mid '0' with the id in pars and 'id' in cols: koa78 updated and
        # deleted the row '0', which nobody has.
        updated = await post(
            "mUpdateByid", pars=json.dumps([last_id, "改名.pdf"]), cols='["id","filename"]'
        )
        assert (updated["res"], updated["kind"]) == (-2001, "string")
        deleted = await post("mdel", pars=json.dumps([last_id]), cols='["id"]')
        assert (deleted["res"], deleted["kind"]) == (-3001, "string")
        assert len(s.stored("downcenter")) == 2


@pytest.mark.anyio
async def test_answers_by_route_overrides_the_default(tmp_path: Path) -> None:
    """The CURL guide's JSON posts on a route answered as koa78, beside one answered as REST."""
    async with site(tmp_path, answers="rest", answers_by_route={"ApiSys1/Stock": "koa78"}) as s:
        base = "/apisys1/stock/StockMine"
        cols = ["ts_code", "name", "price", "date"]
        added = await s.send(
            f"{base}/mAdd", pars=["000001.SZ", "平安银行", 100.5, "2024-01-01"], cols=cols
        )
        new_id = done(added, "json")
        rows = [
            "000002.SZ",
            "万科A",
            50.3,
            "2024-01-02",
            "600000.SH",
            "浦发银行",
            80.2,
            "2024-01-03",
        ]
        assert done(await s.send(f"{base}/mAddMany", pars=rows, cols=cols), "json") == 2
        update = {"mid": new_id, "pars": [105.8, "2024-01-15"], "cols": ["price", "date"]}
        assert done(await s.send(f"{base}/mUpdate", **update), "json") == new_id
        found = done(await s.send(f"{base}/get", pars=["000001.SZ"], cols=["ts_code"]), "json")
        assert [(row["price"], row["date"]) for row in found] == [(105.8, "2024-01-15")]
        assert done(await s.send(f"{base}/mdel", mid=new_id), "json") == new_id
        nobody = str(10**17 + 7)
        missed(await s.send(f"{base}/mdel", mid=nobody), -3001)
        # The other route keeps the default: 404, kind "" on success, counts as numbers.
        rest = await s.send("/apitest/testmenu/Testtb/mdel", mid=nobody)
        assert rest.status_code == 404 and rest.json()["res"] == -404
        added_ids = done(await s.send("/apitest/testmenu/Testtb/mAddMany", pars=["k", "i", "d"]))
        assert isinstance(added_ids, list) and len(added_ids) == 1


@pytest.mark.anyio
async def test_the_openapi_document_states_the_koa78_answers(tmp_path: Path) -> None:
    async with site(tmp_path, answers_by_route={"apitest/testmenu": "koa78"}) as s:
        base = "/apitest/testmenu/Testtb"
        nobody = str(10**17 + 3)
        answers = {
            "mAddMany": await s.send(f"{base}/mAddMany", pars=["k", "i", "d"]),
            "mdel": await s.send(f"{base}/mdel", mid=nobody),
            "mdelmany": await s.send(f"{base}/mdelmany", pars=[nobody]),
            "mUpdateMany": await s.send(f"{base}/mUpdateMany", pars=["z", nobody], cols=["item"]),
            "mAddManyByid": await s.send(f"{base}/mAddManyByid", pars=["k", "i", "d", nobody]),
            "get": await s.send(f"{base}/get"),
        }
        koa78 = schemathesis.openapi.from_dict(openapi_document(s.engine.config))
        koa78.validate()
        for method, response in answers.items():
            assert koa78[f"{base}/{method}"]["POST"].is_valid_response(response), method
        # The same answers are not what a REST route documents.
        rest = schemathesis.openapi.from_dict(openapi_document(parse_config(default_http(s))))
        for method in ("mAddMany", "mdel", "mdelmany", "mUpdateMany"):
            assert not rest[f"{base}/{method}"]["POST"].is_valid_response(answers[method])


def default_http(s: Site) -> dict[str, Any]:
    """The site's configuration with the default answers."""
    return {"tables": tables_of(s.names), "datasources": {"db": {"type": "sqlite"}}}
