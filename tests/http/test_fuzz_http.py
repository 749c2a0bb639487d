"""Hypothesis against every HTTP route the middleware serves: malformed JSON, wrong JSON
types for every parameter, huge and deeply nested bodies, odd unicode (lone surrogates,
NUL, right-to-left marks, emoji) and SQL metacharacters in every field, column name,
``order``, path segment and header.

What must hold for every request: never a 5xx; a refusal of a data route is the koa78
envelope with ``res = -status`` and a message naming the field, parameter or header; a
refusal of an admin route is a JSON ``{"error", "field"?}`` naming it too; the rows in the
database are exactly as before any refused request; and valid requests still succeed.

Everything goes through ``httpx.ASGITransport`` into ``Wf78Middleware`` under
``asgi_lifespan.LifespanManager``, on a SQLite file read directly for the row checks.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from wf78_core import Engine
from wf78_core.http.asgi import MAX_JSON_DEPTH
from wf78_core.http.middleware import Wf78Middleware
from wf78_core.http.routes import DEFAULT_MAX_PARS, METHODS

ALICE = "tok-alice"  # company acme
BOB = "tok-bob"  # company globex
ADMIN = "tok-admin"  # the admin role (company ops)
TOKENS = (ALICE, BOB, ADMIN)
PREFIX = "/_wf78"
MAX_BODY = 64 << 10  # small, so bodies over it are cheap to make
MAX_PARS = 40
TABLES = {
    "Items": {"name": "text", "qty": "int", "price": "float"},
    "Notes": {"title": "text", "done": "bool", "at": "datetime", "doc": "json"},
}
PARAMS = (
    "pars",
    "values",
    "rows",
    "cols",
    "mid",
    "where",
    "order",
    "getstart",
    "getnumber",
    "total",
    "since",
    "until",
    "bcid",
    "ids",
    "sid",
)
KINDS = {
    "invalid",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "conflict",
    "too_large",
    "unsupported_media",
    "overloaded",
    "unavailable",
}
# What a 400/413/415 message of a data route names: a parameter (``values.qty``,
# ``cols[2]``, ``rows[0].id`` start with one), the body, or a header.
DATA_FIELD = re.compile(
    r"\b(" + "|".join(PARAMS) + r"|body|X-WF78-Priority|Idempotency-Key|id|ids)\b"
)
FIELD_PREFIX = re.compile(r"[^\s:]+: ")
ADMIN_FIELD = re.compile(r"\b(body|context|workflow|limit|X-Wf78-Priority)\b")


def fuzz(examples: int) -> settings:
    """Hypothesis settings of the tests here: the app is the test's fixture, shared by its
    examples (that is the point: the rows must survive all of them)."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite runs on asyncio only


def make_config(path: Path) -> dict[str, Any]:
    count = {"action": "count", "table": "Items"}
    return {
        "engine": {"drain_timeout": 2.0, "retry_backoff": 0.001, "journal": "memory"},
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{path}"}},
        "tables": {
            "Items": {
                "columns": TABLES["Items"],
                "owner": "cid",
                "route": "api/demo",
                "data_source": "db",
            },
            "Notes": {
                "columns": TABLES["Notes"],
                "owner": "uid",
                "public_read": True,
                "route": "api/demo",
                "data_source": "db",
            },
        },
        "workflows": [
            {"id": "manual", "tasks": [{"id": "count", "params": count}]},
            {
                "id": "on_tick",
                "trigger": "event",
                "event": "tick",
                "tasks": [{"id": "count", "params": count}],
            },
        ],
        "auth": {
            "tokens": {
                ALICE: {"uid": "u-alice", "cid": "acme", "uname": "alice"},
                BOB: {"uid": "u-bob", "cid": "globex", "uname": "bob"},
                ADMIN: {"uid": "u-root", "cid": "ops", "uname": "root", "roles": ["admin"]},
            }
        },
    }


async def homepage(request: Any) -> PlainTextResponse:
    return PlainTextResponse("the app")


APP = Starlette(routes=[Route("/", homepage)])


class Served:
    """The app under test, the database file it writes, and the ids seeded in it."""

    def __init__(self, client: httpx.AsyncClient, db: Path) -> None:
        self.client = client
        self.db = db
        self.ids: list[str] = []

    def rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, read from the file itself (not through wf78)."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as connection:
            for table in TABLES:
                try:
                    found = connection.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
                except sqlite3.OperationalError:  # not created yet
                    found = []
                out[table] = found
        connection.close()
        return out

    async def still_works(self) -> None:
        """A valid write, read and delete of the data routes, and a valid admin call."""
        added = ok(await post(self.client, "mAdd", {"pars": ["probe", 1, 0.5]}))
        found = ok(await post(self.client, "get", {"where": {"id": added}, "cols": "name,qty"}))
        assert found == [{"name": "probe", "qty": 1}]
        assert ok(await post(self.client, "mdel", {"mid": added})) == 1
        status = await self.client.get(f"{PREFIX}/status", headers=auth(ADMIN))
        assert status.status_code == 200, status.text


@asynccontextmanager
async def serving(tmp_path: Path, **options: Any) -> AsyncIterator[Served]:
    db = tmp_path / "fuzz.db"
    options = {"max_body": MAX_BODY, "max_pars": MAX_PARS, **options}
    app = Wf78Middleware(APP, engine=Engine(make_config(db)), **options)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            served = Served(client, db)
            served.ids = ok(
                await post(client, "mAddMany", {"pars": ["apple", 1, 1.5, "pear", 2, 2.5]})
            )
            served.ids.append(
                ok(
                    await post(
                        client, "mAdd", {"values": {"title": "n", "doc": {"a": [1]}}}, "Notes"
                    )
                )
            )
            yield served


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path) as served:
        yield served


def auth(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


async def post(
    client: httpx.AsyncClient, method: str, params: dict[str, Any], table: str = "Items"
) -> httpx.Response:
    return await client.post(f"/api/demo/{table}/{method}", json=params, headers=auth(ALICE))


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["res"] == 0, body
    return body["back"]


# -- strategies ------------------------------------------------------------------------------

SQL = ["'", '"', ";", "--", "/*", "*/", "`", "' OR '1'='1", "1; DROP TABLE Items; --", "%", "\\"]
ODD = [
    "\x00",  # NUL
    "\u202e",  # right-to-left override
    "\u200f",  # right-to-left mark
    "\u200b",  # zero-width space
    "\ufeff",  # byte-order mark
    "\ud800",  # a lone high surrogate
    "\udfff",  # a lone low surrogate
    "\uffff",
    "😀",
    "👩‍💻",
    "\U0001d518",  # mathematical fraktur U
    "名前",
    "İ",
    "e\u0301",
    "\n",
    "\t",
    " ",
]
COLUMNS = ["id", "cid", "uid", "upby", "uptime", "all", *TABLES["Items"], *TABLES["Notes"]]

odd_text = st.lists(
    st.sampled_from(SQL + ODD) | st.text(max_size=4) | st.sampled_from(COLUMNS), max_size=5
).map("".join)
names = st.sampled_from(COLUMNS) | odd_text
digits = st.integers(min_value=0, max_value=10**70).map(str)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    odd_text,
    digits,
)
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=12,
)
column_list = st.lists(names, max_size=4) | st.lists(names, max_size=4).map(",".join)
order = column_list | st.lists(names, max_size=3).map(lambda parts: " ".join(parts))


# Stand-ins for the ids of the seeded rows (known only once the app runs): see seeded().
SEEDED = ("@seeded-0", "@seeded-1", "@seeded-2")


def seeded(value: Any, ids: list[str]) -> Any:
    """``value`` with the SEEDED stand-ins replaced by the seeded rows' ids."""
    if isinstance(value, str):
        return ids[SEEDED.index(value)] if value in SEEDED else value
    if isinstance(value, list):
        return [seeded(item, ids) for item in value]
    if isinstance(value, dict):
        return {key: seeded(item, ids) for key, item in value.items()}
    return value


# Values a column takes (text, int, float, bool, datetime, json), mixed in so that some
# requests get past the checks and write.
SAMPLE = {
    "text": "pen",
    "int": 3,
    "float": 1.5,
    "bool": True,
    "datetime": "2024-02-29T12:00:00",
    "json": {"k": [1]},
}
plausible = st.sampled_from([*SAMPLE.values(), "", 0, -7, None, False, "ink"])
value = plausible | scalars


def valid_params(table: str, method: str) -> dict[str, Any]:
    """Parameters that ``method`` of ``table`` accepts (SEEDED stand-ins for ids)."""
    columns = TABLES[table]
    row = [SAMPLE[kind] for kind in columns.values()]
    first = next(iter(columns))
    valid: dict[str, dict[str, Any]] = {
        "mAdd": {"pars": row},
        "mAddMany": {"pars": row * 2},
        "mAddManyByid": {"pars": [*row, SEEDED[0]]},
        "mUpdate": {"mid": SEEDED[0], "pars": row[:1]},
        "mUpdateByid": {"values": {"id": SEEDED[1], first: "x"}},
        "mUpdateMany": {"rows": [{"id": SEEDED[0], first: "y"}]},
        "m": {"mid": SEEDED[1], "pars": row},
        "mByid": {"mid": SEEDED[0], "values": {first: "z"}},
        "mByFirstField": {"pars": row},
        "get": {"cols": f"id,{first}", "order": f"-{first}", "getnumber": 5, "total": 1},
        "getbyBcid": {"bcid": "u-alice", "where": {first: "pen"}},
        "mdel": {"mid": SEEDED[2]},
        "mdelmany": {"ids": [SEEDED[2], "1"]},
        "mUpdateElkByid": {"mid": SEEDED[0], "values": {first: "doc"}},
    }
    return valid[method]


def data_params() -> st.SearchStrategy[dict[str, Any]]:
    """Parameters in the shapes the routes read them, with wrong types and odd text."""
    some_id = st.sampled_from(SEEDED) | digits | scalars
    return st.fixed_dictionaries(
        {},
        optional={
            "pars": st.lists(value | st.lists(value, max_size=5), max_size=8) | json_like,
            "values": st.dictionaries(names, value, max_size=4) | json_like,
            "rows": st.lists(st.dictionaries(names, value, max_size=4), max_size=3) | json_like,
            "cols": column_list | json_like,
            "mid": some_id,
            "where": st.dictionaries(names, value | st.lists(value, max_size=3), max_size=3)
            | json_like,
            "order": order | json_like,
            "getstart": scalars,
            "getnumber": scalars,
            "total": scalars,
            "since": scalars,
            "until": scalars,
            "bcid": st.sampled_from(["acme", "u-alice", "globex"]) | scalars,
            "ids": st.lists(some_id, max_size=5) | json_like,
            "sid": st.sampled_from(TOKENS) | odd_text,
        },
    ) | st.dictionaries(odd_text | st.sampled_from(PARAMS), json_like, max_size=4)


@st.composite
def data_requests(draw: Any) -> tuple[str, str, dict[str, Any]]:
    """A table, a method and its parameters: valid ones with up to two of them replaced
    by anything, or anything at all."""
    table = draw(st.sampled_from(sorted(TABLES)))
    method = draw(st.sampled_from(METHODS))
    if draw(st.booleans()):
        params = dict(valid_params(table, method))
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            params[draw(st.sampled_from(PARAMS) | odd_text)] = draw(value | json_like)
    else:
        params = draw(data_params())
    return table, method, params


def raw(headers: dict[str, bytes]) -> list[tuple[bytes, bytes]]:
    """Headers as the bytes a server would hand the app (latin-1 decoded there)."""
    return [(name.encode("latin-1"), value) for name, value in headers.items()]


def header_value(text: str) -> bytes:
    # A server never hands an app CR, LF or NUL in a header: h11 and httptools refuse them.
    cleaned = text.replace("\r", "").replace("\n", "").replace("\x00", "")
    return cleaned.encode("utf-8", "surrogatepass")


headers = st.fixed_dictionaries(
    {},
    optional={
        "authorization": st.sampled_from([f"Bearer {t}" for t in TOKENS])
        | odd_text.map(lambda text: "Bearer " + text)
        | odd_text,
        "sid": st.sampled_from(TOKENS) | odd_text,
        "x-wf78-priority": st.integers(min_value=-(10**12), max_value=10**12).map(str)
        | st.sampled_from(["", "1_0", " 3 ", "+1", "-0", "9" * 400, "1e3"])
        | odd_text,
        "idempotency-key": odd_text,
    },
).map(lambda found: {name: header_value(value) for name, value in found.items()})


def as_text(value: Any) -> str:
    """A query or form value: strings as they are, anything else as its JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def form_encoded(params: dict[str, Any]) -> bytes:
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        if isinstance(value, list) and name in ("pars", "rows", "ids", "cols"):
            pairs += [(name, as_text(item)) for item in value]  # repeated keys
        else:
            pairs.append((name, as_text(value)))
    # surrogatepass: a lone surrogate goes as its (invalid) UTF-8 bytes.
    return urlencode(pairs, encoding="utf-8", errors="surrogatepass").encode("ascii")


def json_encoded(params: Any) -> bytes:
    # ensure_ascii: lone surrogates go as \\udxxx escapes; NaN and Infinity as JSON never has.
    return json.dumps(params, ensure_ascii=True).encode("ascii")


# -- checks ----------------------------------------------------------------------------------


def check_envelope(response: httpx.Response) -> dict[str, Any]:
    """Never a 5xx; the envelope with the status; a refusal's message names its field."""
    status = response.status_code
    assert status < 500, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"res", "errmsg", "kind", "back"}, body
    if status == 200:
        assert (body["res"], body["errmsg"], body["kind"]) == (0, "", ""), body
        return body
    assert body["res"] == -status and body["back"] is None, body
    assert body["kind"] in KINDS, body
    message = body["errmsg"]
    assert message and "Traceback" not in message and "internal" not in message, body
    if status in (400, 413, 415):
        # A known parameter or header, or "<what>: ..." (an unknown key nesting too deep).
        assert DATA_FIELD.search(message) or FIELD_PREFIX.match(message), message
    return body


def check_admin_answer(response: httpx.Response) -> None:
    status = response.status_code
    assert status < 500 or status == 503, response.text
    if status < 400:
        return
    assert response.headers["content-type"] == "application/json", response.text
    body = response.json()
    # The admin's own keys, and the koa78 envelope where an answer carries it too.
    assert set(body) <= {"error", "field", "res", "errmsg", "kind", "back"}, body
    assert body["error"], body
    assert "Traceback" not in body["error"]
    if status == 400:
        assert "field" in body or ADMIN_FIELD.search(body["error"]), body


# -- data routes -----------------------------------------------------------------------------


@pytest.mark.anyio
@fuzz(900)
@given(
    request=data_requests(),
    encoding=st.sampled_from(["json", "form", "query"]),
    sent=st.one_of(st.just({}), st.just({}), headers),  # mostly past the header checks
    token=st.sampled_from([ALICE, ALICE, BOB, ADMIN, None]),
)
async def test_data_routes_never_fail_and_name_the_field(
    served: Served,
    request: tuple[str, str, dict[str, Any]],
    encoding: str,
    sent: dict[str, bytes],
    token: str | None,
) -> None:
    """Every method, every encoding, with parameters of wrong types and odd text; rows
    change only when the answer is a success."""
    # (No st.data(): a draw that overruns raises a BaseException inside anyio's runner.)
    table, method, params = request
    params = seeded(params, served.ids)
    if "authorization" not in sent and token is not None:
        sent = {**sent, "authorization": f"Bearer {token}".encode()}
    url = httpx.URL(f"http://test/api/demo/{table}/{method}")
    before = served.rows()
    if encoding == "query":
        response = await served.client.get(
            url.copy_with(query=form_encoded(params)), headers=raw(sent)
        )
    else:
        content_type = b"application/json" if encoding == "json" else None
        body = json_encoded(params) if encoding == "json" else form_encoded(params)
        kind = content_type or b"application/x-www-form-urlencoded"
        response = await served.client.post(
            url, content=body, headers=raw({**sent, "content-type": kind})
        )
    check_envelope(response)
    if response.status_code != 200:
        assert served.rows() == before, response.text


@pytest.mark.anyio
@fuzz(300)
@given(
    text=odd_text,
    where=st.sampled_from(["table", "method", "cols", "values", "where", "order"]),
    extra=headers,
)
async def test_odd_path_segments_headers_and_names(
    served: Served, text: str, where: str, extra: dict[str, bytes]
) -> None:
    """SQL metacharacters and odd unicode as the table and method of the path, as column
    names in ``cols``/``values``/``where``/``order``, and in every header."""
    table, method = "Items", "get"
    params: dict[str, Any] = {}
    if where == "table":
        table = text
    elif where == "method":
        method = text
    elif where == "cols":
        params = {"cols": [text]}
    elif where == "values":
        params = {"values": {text: 1}}
        method = "mAdd"
    elif where == "where":
        params = {"where": {text: "x"}}
    else:
        params = {"order": text}
    raw_path = "/api/demo/{}/{}".format(
        *(quote(part.encode("utf-8", "surrogatepass"), safe="") for part in (table, method))
    )
    sent = {"authorization": f"Bearer {ALICE}".encode(), **extra}
    before = served.rows()
    response = await served.client.post(
        httpx.URL("http://test" + raw_path),
        content=json_encoded(params),
        headers=raw({**sent, "content-type": b"application/json"}),
    )
    if response.status_code == 404 and "res" not in response.text:
        # A path no configured route claims (a "/" or ".." decoded into it): the app's 404.
        assert response.text == "Not Found"
        return
    body = check_envelope(response)
    if response.status_code != 200:
        assert served.rows() == before
        if where in ("table", "method") and response.status_code == 404:
            assert "table" in body["errmsg"] or "route" in body["errmsg"]


@pytest.mark.anyio
@fuzz(300)
@given(
    body=st.binary(max_size=300)
    | st.sampled_from([b"", b"{", b"[", b"null", b"[]", b'"x"', b"1", b"{}", b'{"pars": [}'])
    | st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
    content_type=st.sampled_from(
        [
            None,
            "application/json",
            "application/json; charset=latin-1",
            "application/ld+json",
            "application/x-www-form-urlencoded",
            "text/plain",
            "multipart/form-data; boundary=x",
            "",
            "\u202eapplication/json",
        ]
    ),
    method=st.sampled_from(METHODS),
)
async def test_malformed_bodies_are_refused_by_name(
    served: Served, body: bytes, content_type: str | None, method: str
) -> None:
    sent = {"authorization": f"Bearer {ALICE}".encode()}
    if content_type is not None:
        sent["content-type"] = header_value(content_type)
    before = served.rows()
    response = await served.client.post(
        f"/api/demo/Items/{method}", content=body, headers=raw(sent)
    )
    check_envelope(response)
    if response.status_code != 200:
        assert served.rows() == before


@pytest.mark.anyio
@fuzz(80)
@given(
    depth=st.integers(min_value=MAX_JSON_DEPTH - 2, max_value=20_000),
    where=st.sampled_from(["body", "values", "doc", "pars", "pars-text", "where", "rows"]),
    opener=st.sampled_from(["[", '{"a":']),
)
async def test_deeply_nested_json_is_refused_by_name(
    served: Served, depth: int, where: str, opener: str
) -> None:
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "0" + closer * depth
    body = {
        "body": nested,
        "values": f'{{"values": {nested}}}',
        "doc": f'{{"values": {{"title": "t", "doc": {nested}}}}}',
        "pars": f'{{"pars": [{nested}]}}',
        "pars-text": json.dumps({"pars": nested}),
        "where": f'{{"where": {{"name": {nested}}}}}',
        "rows": f'{{"rows": [{nested}]}}',
    }[where]
    table = "Notes" if where == "doc" else "Items"
    method = {"where": "get"}.get(where, "mAddMany" if where == "rows" else "mAdd")
    before = served.rows()
    response = await served.client.post(
        f"/api/demo/{table}/{method}",
        content=body.encode(),
        headers={**auth(ALICE), "content-type": "application/json"},
    )
    answer = check_envelope(response)
    if len(body) > MAX_BODY:
        assert response.status_code == 413
    elif where == "pars-text" and opener != "[":
        assert response.status_code == 200  # not JSON text of an array: the name's value
    elif depth > MAX_JSON_DEPTH + 2:
        assert response.status_code == 400
        assert "nested" in answer["errmsg"] or "must be" in answer["errmsg"], answer
    if response.status_code != 200:
        assert served.rows() == before


@pytest.mark.anyio
async def test_a_json_document_at_the_depth_limit_round_trips(served: Served) -> None:
    depth = MAX_JSON_DEPTH - 2  # the body and values are the first two levels
    document: Any = "bottom"
    for _ in range(depth):
        document = [document]
    added = ok(
        await post(served.client, "mAdd", {"values": {"title": "t", "doc": document}}, "Notes")
    )
    found = ok(await post(served.client, "get", {"where": {"id": added}, "cols": "doc"}, "Notes"))
    assert found == [{"doc": document}]
    deeper = await post(served.client, "mAdd", {"values": {"doc": [document]}}, "Notes")
    assert "values: JSON nested more than" in check_envelope(deeper)["errmsg"]


# -- sizes -----------------------------------------------------------------------------------


@pytest.mark.anyio
@fuzz(12)
@given(
    extra=st.integers(min_value=1, max_value=MAX_BODY),
    declared=st.booleans(),
    method=st.sampled_from(METHODS),
)
async def test_bodies_over_max_body_are_413(
    served: Served, extra: int, declared: bool, method: str
) -> None:
    body = b'{"pars": ["' + b"x" * (MAX_BODY + extra) + b'"]}'
    content: Any = body
    if not declared:  # no content-length: counted while read

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 16 << 10):
                yield body[start : start + (16 << 10)]

        content = chunks()
    before = served.rows()
    response = await served.client.post(
        f"/api/demo/Items/{method}",
        content=content,
        headers={**auth(ALICE), "content-type": "application/json"},
    )
    assert response.status_code == 413, response.text
    assert str(MAX_BODY) in check_envelope(response)["errmsg"]
    assert served.rows() == before
    admin = await served.client.post(
        f"{PREFIX}/runs", content=body, headers={**auth(ADMIN), "content-type": "application/json"}
    )
    assert admin.status_code == 413 and str(MAX_BODY) in admin.json()["error"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("mAdd", {"pars": ["a"] * (MAX_PARS + 1)}, "pars"),
        ("mAddMany", {"pars": ["a", 1, 1.0] * (MAX_PARS // 3 + 1)}, "pars"),
        ("mAddMany", {"pars": [["a", 1, 1.0]] * (MAX_PARS + 1)}, "pars"),
        ("mAddMany", {"rows": [{"name": "a"}] * (MAX_PARS + 1)}, "rows"),
        ("mAddManyByid", {"rows": [{"id": "1"}] * (MAX_PARS + 1)}, "rows"),
        ("mUpdateMany", {"pars": [["a", 1, 1.0, "1"]] * (MAX_PARS + 1)}, "pars"),
        ("mdelmany", {"ids": ["1"] * (MAX_PARS + 1)}, "ids"),
        ("mdelmany", {"ids": ",".join(["1"] * (MAX_PARS + 1))}, "ids"),
        ("mdelmany", {"pars": ["1"] * (MAX_PARS + 1)}, "pars"),
        ("get", {"pars": ["a"] * (MAX_PARS + 1)}, "pars"),
        ("get", {"where": {"qty": list(range(MAX_PARS + 1))}}, "where.qty"),
        ("mdel", {"pars": ["1"] * (MAX_PARS + 1)}, "pars"),
    ],
)
async def test_more_than_max_pars_values_are_413_naming_the_parameter(
    served: Served, method: str, params: dict[str, Any], field: str
) -> None:
    before = served.rows()
    for encoded in (params, {name: json.dumps(value) for name, value in params.items()}):
        response = await post(served.client, method, encoded)
        assert response.status_code == 413, response.text
        message = check_envelope(response)["errmsg"]
        count = len(next(iter(params.values())))
        if field == "where.qty":
            count = MAX_PARS + 1
        elif isinstance(params[field], str):
            count = MAX_PARS + 1
        assert message.startswith(f"{field}: {count} values"), message
        assert "max_pars" in message
    assert served.rows() == before
    await served.still_works()


@pytest.mark.anyio
async def test_max_pars_values_are_accepted(served: Served) -> None:
    ids = ok(await post(served.client, "mAddMany", {"pars": [["a", 1, 1.0]] * MAX_PARS}))
    assert len(ids) == MAX_PARS
    assert ok(await post(served.client, "get", {"where": {"id": ids[0]}, "cols": "qty"})) == [
        {"qty": 1}
    ]
    assert ok(await post(served.client, "mdelmany", {"ids": ids})) == MAX_PARS


@pytest.mark.anyio
async def test_the_default_max_pars(tmp_path: Path) -> None:
    async with serving(tmp_path, max_pars=DEFAULT_MAX_PARS, max_body=1 << 20) as served:
        response = await post(served.client, "mdelmany", {"ids": ["1"] * (DEFAULT_MAX_PARS + 1)})
        assert response.status_code == 413
        assert check_envelope(response)["errmsg"].startswith(f"ids: {DEFAULT_MAX_PARS + 1} values")
        assert ok(await post(served.client, "mdelmany", {"ids": ["1"] * DEFAULT_MAX_PARS})) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["9" * 10, "-" + "9" * 10, "9" * 400, "1e3", "1_0", "", "x"])
async def test_a_priority_past_nine_digits_is_refused_by_name(served: Served, value: str) -> None:
    response = await served.client.post(
        "/api/demo/Items/get", json={}, headers={**auth(ALICE), "x-wf78-priority": value}
    )
    assert response.status_code == 400
    assert "X-WF78-Priority" in check_envelope(response)["errmsg"]
    admin = await served.client.post(
        f"{PREFIX}/runs",
        json={"workflow": "manual"},
        headers={**auth(ADMIN), "x-wf78-priority": value},
    )
    assert admin.status_code == 400 and admin.json()["field"] == "priority"
    assert (
        ok(
            await served.client.post(
                "/api/demo/Items/get",
                json={},
                headers={**auth(ALICE), "x-wf78-priority": " -999999999 "},
            )
        )
        is not None
    )


@pytest.mark.anyio
@pytest.mark.parametrize("declared", ["\u00b2", "9" * 5000, "-1", " 2", "1e3", str(MAX_BODY + 1)])
async def test_an_odd_content_length_is_never_a_server_error(served: Served, declared: str) -> None:
    # (uvicorn's parsers refuse these before the app; other servers may not.)
    sent = [(b"content-length", declared.encode("latin-1")), (b"content-type", b"application/json")]
    before = served.rows()
    for url, token in (("/api/demo/Items/mAdd", ALICE), (f"{PREFIX}/runs", ADMIN)):
        response = await served.client.post(
            url, content=b"{}", headers=[*sent, (b"authorization", f"Bearer {token}".encode())]
        )
        assert response.status_code in (400, 413), response.text
        if url.startswith("/api"):
            check_envelope(response)
        else:
            check_admin_answer(response)
    assert served.rows() == before


# -- admin routes ----------------------------------------------------------------------------

ADMIN_ROUTES = [
    ("GET", "/"),
    ("GET", "/static/{}"),
    ("GET", "/runs"),
    ("POST", "/runs"),
    ("GET", "/runs/{}"),
    ("POST", "/runs/{}/cancel"),
    ("POST", "/events/{}"),
    ("GET", "/status"),
    ("GET", "/dead-letters"),
    ("POST", "/dead-letters/{}/retry"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("DELETE", "/runs"),
    ("PUT", "/status"),
    ("GET", "/{}"),
]

admin_bodies = st.one_of(
    st.none(),
    st.sampled_from([b'{"workflow": "manual", "context": {"n": 1}}', b"{}", b'{"x": [1]}']),
    st.binary(max_size=200),
    json_like.map(json_encoded),
    st.fixed_dictionaries(
        {},
        optional={
            "workflow": st.sampled_from(["manual", "on_tick"]) | odd_text | scalars,
            "context": st.dictionaries(names, json_like, max_size=3) | json_like,
            "colour": json_like,
        },
    ).map(json_encoded),
)


@pytest.mark.anyio
@fuzz(400)
@given(
    route=st.sampled_from(ADMIN_ROUTES),
    segment=odd_text | st.sampled_from(["manual", "tick", "app.js"]),
    query=st.none()
    | st.integers(min_value=-5, max_value=10**30).map(lambda n: {"limit": str(n)})
    | st.dictionaries(odd_text, odd_text, max_size=2),
    body=admin_bodies,
    extra=headers | st.just({}),
)
async def test_admin_routes_never_fail_and_name_the_field(
    served: Served,
    route: tuple[str, str],
    segment: str,
    query: dict[str, str] | None,
    body: bytes | None,
    extra: dict[str, bytes],
) -> None:
    verb, template = route
    path = PREFIX + template.format(quote(segment.encode("utf-8", "surrogatepass"), safe=""))
    sent = {"authorization": f"Bearer {ADMIN}".encode(), **extra}
    url = httpx.URL("http://test" + path)
    if query:
        pairs = urlencode(list(query.items()), encoding="utf-8", errors="surrogatepass")
        url = url.copy_with(query=pairs.encode("ascii"))
    before = served.rows()
    response = await served.client.request(
        verb,
        url,
        content=body,
        headers=raw({**sent, "content-type": b"application/json"} if body is not None else sent),
    )
    if response.status_code == 404 and "application/json" not in response.headers.get(
        "content-type", ""
    ):
        assert response.text == "Not Found"  # a "/" decoded out of the prefix: the app's
        return
    check_admin_answer(response)
    assert response.status_code != 503, response.text  # nothing is overloaded here
    assert served.rows() == before  # the workflows here only count rows


@pytest.mark.anyio
async def test_valid_requests_still_succeed_after_the_fuzzing(served: Served) -> None:
    """A sample of the refused inputs above, then valid calls of every kind."""
    client = served.client
    for body in (b"[" * 50_000, b'{"pars": "' + b"[" * 5000 + b'"}', b"\xff\xfe", b'{"a": NaN}'):
        response = await client.post(
            "/api/demo/Items/mAdd",
            content=body,
            headers={**auth(ALICE), "content-type": "application/json"},
        )
        assert response.status_code == 400
    response = await client.get(f"{PREFIX}/runs?limit=%C2%B2", headers=auth(ADMIN))
    assert response.status_code == 400 and response.json()["field"] == "limit"
    response = await client.get(f"{PREFIX}/runs?limit=" + "9" * 5000, headers=auth(ADMIN))
    assert response.status_code == 400 and len(response.json()["error"]) < 200
    await served.still_works()
    started = await client.post(f"{PREFIX}/runs", json={"workflow": "manual"}, headers=auth(ADMIN))
    assert started.status_code == 202, started.text
    run = await client.get(f"{PREFIX}/runs/{started.json()['run_id']}", headers=auth(ADMIN))
    assert run.status_code == 200
    emitted = await client.post(f"{PREFIX}/events/tick", json={}, headers=auth(ADMIN))
    assert emitted.status_code == 202 and len(emitted.json()["run_ids"]) == 1
