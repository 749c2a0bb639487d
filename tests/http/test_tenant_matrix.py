"""Tenant isolation matrix: one identity never reads, changes or deletes another's rows
through any of the 14 koa78 methods, bulk ones included.

The matrix is method (14) x owner column (``cid``, ``uid``) x source (a SQLite file, the
real MariaDB), run twice: over HTTP (``httpx.ASGITransport`` into ``Wf78Middleware`` under
``LifespanManager``, bearer tokens) and through ``Table`` as ``current().table()`` hands it
to a request handler. B's rows are seeded first; every attacker then names them by every
means the method allows (B's ids in ``pars``/``mid``, filters, bulk id lists mixing its own
ids with B's, ``bcid``). The test reads the database itself, not through wf78, to check
that no row of anyone but the attackers changed, appeared or disappeared, byte for byte,
and that no attacker's answer holds B's values. ``mUpdateElkByid`` is refused cleanly on a
table without a search source and runs against osmem-server on a search-mirrored one.

The attackers:

- A: another company and another user, with rows of its own.
- C: B's colleague (same ``cid``, another ``uid``): an attacker on ``uid`` tables.
- E, the look-alike: owner values MariaDB would confuse with B's. B's ``cid`` fills the 64
  characters the owner column holds, and E's is B's plus one more (``INSERT IGNORE``
  truncates it to B's); E's ``uid`` is B's plus a trailing space (MariaDB's PAD SPACE
  collations compare the two equal). Every request of E is refused.
- Nobody: no identity at all (401, or an identity error from ``Table``).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pymysql
import pytest
import redis.asyncio
from asgi_lifespan import LifespanManager
from elasticsearch import AsyncElasticsearch, NotFoundError
from osmem_server import OsmemServer
from starlette.applications import Starlette

from tests import pgutil
from tests.esutil import JsonNode
from wf78_core import Engine, IdempotencyConflict, Identity, InvalidOperation, Table
from wf78_core.http.context import RequestClient
from wf78_core.http.middleware import Wf78Middleware
from wf78_core.http.routes import METHODS
from wf78_core.ids import snowflake_id

MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "database": "test"}
NODE_CLASS = f"{JsonNode.__module__}.{JsonNode.__qualname__}"
ROUTE = "api/sec"
OWNERS = ("cid", "uid")
SOURCES = ("sqlite", "mysql", "postgres")

B_CID = "globex-" + "0" * 57  # 64 characters: all the MySQL owner column holds
B_UID = "u-bob"
# A row as the database holds it: (column, stored bytes) pairs.
Row = tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True)
class Person:
    name: str
    token: str | None
    identity: Identity | None

    def owner(self, column: str) -> str | None:
        return None if self.identity is None else str(getattr(self.identity, column))

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}


ALICE = Person("A", "tok-a-5f0c2e", Identity(uid="u-alice", cid="acme", uname="alice"))
BOB = Person("B", "tok-b-91d7aa", Identity(uid=B_UID, cid=B_CID, uname="bob-the-victim"))
CARL = Person("C", "tok-c-4e2b10", Identity(uid="u-carl", cid=B_CID, uname="carl"))
EVE = Person("E", "tok-e-c83f55", Identity(uid=B_UID + " ", cid=B_CID + "x", uname="eve"))
NOBODY = Person("nobody", None, None)


def attackers(owner: str) -> list[Person]:
    """The identities allowed their own rows: they attack B and must keep to theirs."""
    return [ALICE, CARL] if owner == "uid" else [ALICE]


# Identities refused outright, with the HTTP status of the refusal.
REFUSED = ((EVE, 403), (NOBODY, 401))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite, aiomysql and the search client run on asyncio only


@pytest.fixture(scope="module")
def osmem() -> Iterator[OsmemServer]:
    server = OsmemServer.start(japanese=False)
    yield server
    server.close()
    if server.process.stdout is not None:
        server.process.stdout.close()


# -- the world of one case -------------------------------------------------------------------


@dataclass
class World:
    """One case's backend, tables (unique names) and, for mUpdateElkByid, search cluster."""

    method: str
    owner: str
    source: str
    path: Path
    es_url: str | None = None
    prefix: str = field(default_factory=lambda: f"t{uuid4().hex[:8]}_")

    def tables(self) -> dict[str, str]:
        """Kind -> table name: ``private`` always, ``public`` for getbyBcid, ``docs``
        (search-mirrored) for mUpdateElkByid."""
        kinds = ["private"]
        if self.method == "getbyBcid":
            kinds.append("public")
        if self.es_url is not None:
            kinds.append("docs")
        return {kind: f"{self.prefix}{kind}" for kind in kinds}

    def config(self) -> dict[str, Any]:
        if self.source == "sqlite":
            db: dict[str, Any] = {"type": "sqlite", "url": f"sqlite:///{self.path}"}
        elif self.source == "postgres":
            db = {"type": "postgres", "url": pgutil.PG_URL, "maxsize": 4}
        else:
            db = {"type": "mysql", "url": MYSQL_URL, "create_tables": True, "maxsize": 4}
        datasources: dict[str, Any] = {"db": db}
        tables: dict[str, Any] = {}
        columns = {"name": "text", "qty": "int", "price": "float"}
        for kind, name in self.tables().items():
            table: dict[str, Any] = {
                "columns": columns,
                "owner": self.owner,
                "route": ROUTE,
                "data_source": "db",
            }
            if kind == "public":
                table["public_read"] = True
            if kind == "docs":
                table["search_mirror"] = "search"
            tables[name] = table
        if self.es_url is not None:
            db["outbox_table"] = f"{self.prefix}outbox"
            datasources["search"] = {
                "type": "elasticsearch",
                "url": self.es_url,
                "node_class": NODE_CLASS,
                "refresh": "true",
                "request_timeout": 5.0,
            }
        people = [ALICE, BOB, CARL, EVE]
        return {
            "engine": {"drain_timeout": 2.0, "retry_backoff": 0.001},
            "datasources": datasources,
            "tables": tables,
            "auth": {"tokens": {p.token: token_identity(p) for p in people}},
        }

    def rows(self, table: str) -> list[Row]:
        """Every row of ``table`` as (column, bytes) pairs, read by the database's own client
        with every column cast to bytes (no collation, no driver conversion), ordered by id."""
        if self.source == "sqlite":
            with sqlite3.connect(self.path) as connection:
                names = [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]
                listed = ", ".join(f'CAST("{name}" AS BLOB)' for name in names)
                found = connection.execute(f'SELECT {listed} FROM "{table}" ORDER BY 1').fetchall()
        elif self.source == "postgres":
            names, found = pgutil.rows_as_bytes(table)
        else:
            connection = pymysql.connect(**MYSQL)
            try:
                with connection.cursor() as cursor:
                    cursor.execute(f"SELECT * FROM `{table}` LIMIT 0")
                    names = [d[0] for d in cursor.description]
                    listed = ", ".join(f"CAST(`{name}` AS BINARY)" for name in names)
                    cursor.execute(f"SELECT {listed} FROM `{table}` ORDER BY 1")
                    found = list(cursor.fetchall())
            finally:
                connection.close()
        as_bytes = [[None if value is None else bytes(value) for value in row] for row in found]
        return [tuple(zip(names, row, strict=True)) for row in as_bytes]

    def drop(self) -> None:
        if self.source == "postgres":
            pgutil.drop_tables(*self.tables().values(), f"{self.prefix}outbox")
        if self.source != "mysql":
            return
        connection = pymysql.connect(**MYSQL)
        try:
            with connection.cursor() as cursor:
                for name in [*self.tables().values(), f"{self.prefix}outbox"]:
                    cursor.execute(f"DROP TABLE IF EXISTS `{name}`")
        finally:
            connection.close()


def token_identity(person: Person) -> dict[str, Any]:
    identity = person.identity
    assert identity is not None
    return {"uid": identity.uid, "cid": identity.cid, "uname": identity.uname}


def text_of(row: Row, column: str) -> str | None:
    value = dict(row)[column]
    return None if value is None else value.decode()


def owner_of(row: Row, column: str) -> str | None:
    return text_of(row, column)


def id_of(row: Row) -> str:
    return str(text_of(row, "id"))


@dataclass
class Scene:
    """What the attacks need: ids of B's rows and of each attacker's, B's secret values."""

    world: World
    victim: dict[str, list[str]]  # table kind -> B's ids
    own: dict[str, dict[str, list[str]]]  # person -> table kind -> own ids
    secrets: list[str]  # values of B's that no attacker answer may hold
    public_names: list[str]

    @property
    def owner(self) -> str:
        return self.world.owner

    def ids(self, person: Person, kind: str = "private") -> list[str]:
        """The person's own ids, or ids nobody has for a refused person."""
        return self.own.get(person.name, {}).get(kind) or [snowflake_id(), snowflake_id()]

    def name(self, kind: str) -> str:
        return self.world.tables()[kind]


async def seed(engine: Engine, world: World) -> Scene:
    """B's rows first, then each attacker's own, all through wf78 as their owners."""
    mark = secrets.token_hex(4)
    victim: dict[str, list[str]] = {}
    own: dict[str, dict[str, list[str]]] = {}
    secret: list[str] = [BOB.identity.uname] if BOB.identity else []
    public_names: list[str] = []
    for kind, name in world.tables().items():
        bob = RequestClient(engine, BOB.identity).table(name)
        names = [f"b-{kind}-secret-{mark}-{i}" for i in range(3)]
        victim[kind] = await bob.add_many(
            [{"name": n, "qty": 700 + i, "price": 7.25 + i} for i, n in enumerate(names)]
        )
        (public_names if kind == "public" else secret).extend(names)
        for person in attackers(world.owner):
            table = RequestClient(engine, person.identity).table(name)
            rows = [{"name": f"{person.name}-{kind}-{i}", "qty": i, "price": 0.5} for i in range(2)]
            own.setdefault(person.name, {})[kind] = await table.add_many(rows)
    if world.es_url is not None:
        assert engine.mirrors is not None
        await engine.mirrors.flush()
    return Scene(world, victim, own, secret, public_names)


@asynccontextmanager
async def making(
    request: pytest.FixtureRequest, tmp_path: Path, method: str, owner: str, source: str
) -> AsyncIterator[World]:
    if method == "mUpdateElkByid":
        server: OsmemServer = request.getfixturevalue("osmem")
        with server.clone() as clone:
            world = World(method, owner, source, tmp_path / "tenants.db", clone.url)
            try:
                yield world
            finally:
                world.drop()
        return
    world = World(method, owner, source, tmp_path / "tenants.db")
    try:
        yield world
    finally:
        world.drop()


@dataclass(frozen=True)
class Snapshot:
    """The rows of every table, and B's search documents, as the stores hold them."""

    rows: dict[str, list[Row]]
    docs: dict[str, Any]


async def snapshot(scene: Scene) -> Snapshot:
    world = scene.world
    rows = {kind: world.rows(name) for kind, name in world.tables().items()}
    docs: dict[str, Any] = {}
    if world.es_url is not None:
        client = AsyncElasticsearch(world.es_url, node_class=JsonNode)
        try:
            owner = BOB.owner(scene.owner) or ""
            for row_id in scene.victim["docs"]:
                try:
                    # B's documents are named by owner and id (each owner has its own ids).
                    doc_id = f"{len(owner)}:{owner}:{row_id}"
                    found = await client.get(index=scene.name("docs"), id=doc_id)
                except NotFoundError:
                    docs[row_id] = None
                else:
                    docs[row_id] = dict(found["_source"])
        finally:
            await client.close()
    return Snapshot(rows, docs)


def assert_untouched(scene: Scene, before: Snapshot, after: Snapshot) -> None:
    """No row of anyone but the attackers changed, appeared or disappeared; B's documents
    in the search mirror are as they were."""
    column = scene.owner
    allowed = {person.owner(column) for person in attackers(column)}
    for kind in before.rows:
        kept = [row for row in before.rows[kind] if owner_of(row, column) not in allowed]
        now = [row for row in after.rows[kind] if owner_of(row, column) not in allowed]
        assert now == kept, f"{kind}: rows of others changed"
        victims = [row for row in after.rows[kind] if owner_of(row, column) == BOB.owner(column)]
        assert sorted(id_of(row) for row in victims) == sorted(scene.victim[kind])
    assert after.docs == before.docs
    assert all(doc is not None for doc in after.docs.values())


def assert_no_secret_in(scene: Scene, answers: list[str]) -> None:
    for answer in answers:
        for secret in scene.secrets:
            assert secret not in answer, f"B's value {secret!r} in an answer: {answer[:300]}"


# -- the HTTP side ---------------------------------------------------------------------------


Check = Callable[[Any], object]


@dataclass(frozen=True)
class Probe:
    """One request: its parameters, the status an attacker gets, a check of ``back``.

    ``anyone``: the answer does not depend on who asks (public reads, refusals before any
    identity is looked at), so refused identities get it too. ``via``: ``json`` body,
    ``query`` string or ``form`` body.
    """

    params: dict[str, Any]
    status: int = 200
    check: Check | None = None
    kind: str = "private"
    anyone: bool = False
    via: str = "json"


def equals(expected: Any) -> Check:
    def check(back: Any) -> bool:
        assert back == expected, back
        return True

    return check


def not_in(ids: list[str]) -> Check:
    def check(back: Any) -> bool:
        assert isinstance(back, str) and back.isdigit() and back not in ids, back
        return True

    return check


def count_of(expected: int) -> Check:
    def check(back: Any) -> bool:
        assert isinstance(back, list) and len(back) == expected, back
        return True

    return check


def rows_of(person: Person, column: str, forbidden: list[str], count: int | None = None) -> Check:
    """``back`` is rows (or ``{"rows", "total"}``) of ``person`` only, none of ``forbidden``."""

    def check(back: Any) -> bool:
        rows = back["rows"] if isinstance(back, dict) else back
        assert isinstance(rows, list)
        for row in rows:
            assert row.get("id") not in forbidden, row
            if column in row:
                assert row[column] == person.owner(column), row
        if count is not None:
            assert len(rows) == count, rows
        if isinstance(back, dict):
            assert back["total"] == len(rows), back
        return True

    return check


def http_probes(method: str, scene: Scene, me: Person) -> list[Probe]:
    """Every way ``method`` lets ``me`` name B's rows, and one use of ``me``'s own."""
    o = scene.owner
    b = scene.victim.get("private", [])
    x = scene.ids(me)
    fresh = [snowflake_id() for _ in range(3)]
    b_names = scene.secrets[1:4]  # B's private names (the uname comes first)
    b_name = b_names[0]
    bob_owner = BOB.owner(o)
    row = {"name": "stolen", "qty": 0, "price": 0.0}
    if method == "mAdd":
        return [
            Probe({"values": {"name": "stolen", o: bob_owner}}, 400),
            Probe({"values": {"name": "stolen", "id": b[0]}}, 400),
            Probe({"values": {"name": "stolen", "upby": "bob-the-victim"}}, 400),
            Probe({"pars": ["stolen", bob_owner], "cols": ["name", o]}, 400),
            # Owner-looking parameters beside the values are not columns: the row is mine.
            Probe({"pars": ["mine", 1, 1.0], o: bob_owner, "bcid": bob_owner}, 200, not_in(b)),
            Probe({"pars": ["mine-q", "2"]}, 200, not_in(b), via="query"),
        ]
    if method == "mAddMany":
        return [
            Probe({"rows": [{"name": "stolen", o: bob_owner}]}, 400),
            Probe({"rows": [{"id": b[0], "name": "stolen"}]}, 400),
            Probe({"pars": ["stolen", bob_owner], "cols": ["name", o]}, 400),
            Probe({"pars": [["stolen", 1, 1.0, bob_owner]]}, 400),
            Probe({"pars": ["m1", 1, 1.0, "m2", 2, 2.0], o: bob_owner}, 200),
        ]
    if method == "mAddManyByid":
        return [
            # Each owner has its own ids: B's are new to me, so rows of mine take them.
            Probe({"rows": [{**row, "id": b[0]}, {**row, "id": fresh[0]}]}, 200, equals(2)),
            Probe({"pars": ["mine", 0, 0.0, b[1], "mine", 1, 1.0, fresh[1]]}, 200, equals(2)),
            # b[0] is mine since the first probe: skipped as an id of mine is.
            Probe({"pars": [["mine", 0, 0.0, b[2]], ["mine", 0, 0.0, b[0]]]}, 200, equals(1)),
            Probe({"rows": [{**row, "id": fresh[2], o: bob_owner}]}, 400),
            Probe({"pars": f'["mine", 0, 0.0, "{b[2]}"]'}, 200, equals(0), via="form"),
        ]
    if method == "mUpdate":
        return [
            Probe({"mid": b[0], "pars": ["stolen"]}, 404),
            Probe({"mid": b[1], "values": {"name": "stolen", "qty": 0}}, 404),
            Probe({"mid": b[2], "values": {o: me.owner(o) or "x"}}, 400),
            Probe({"mid": b[0], "pars": ["stolen"]}, 404, via="query"),
            Probe({"mid": x[0], "pars": ["mine"]}, 200, equals(1)),
        ]
    if method == "mUpdateByid":
        return [
            Probe({"values": {"id": b[0], "name": "stolen"}}, 404),
            Probe({"mid": b[1], "pars": ["stolen", 0]}, 404),
            Probe({"values": {"id": b[2], "name": "stolen", o: me.owner(o) or "x"}}, 400),
            Probe({"values": {"id": x[0], "name": "mine"}}, 200, equals(1)),
        ]
    if method == "mUpdateMany":
        return [
            Probe(
                {"rows": [{"id": x[0], "qty": 5}, {"id": b[0], "qty": 5}, {"id": b[1], **row}]},
                200,
                equals(1),
            ),
            Probe({"pars": ["stolen", 0, 0.0, b[2], "mine", 1, 1.0, x[1]]}, 200, equals(1)),
            Probe({"pars": [["stolen", 0, 0.0, b[0]], ["stolen", 0, 0.0, b[1]]]}, 200, equals(0)),
            Probe({"rows": [{"id": b[2], o: me.owner(o) or "x"}]}, 400),
            Probe({"pars": ["stolen", b[0]], "cols": "name"}, 200, equals(0), via="form"),
        ]
    if method == "m":
        return [
            # B's id is not mine: m inserts a row of mine with a new id.
            Probe({"mid": b[0], "pars": ["stolen", 9, 9.0]}, 200, not_in(b)),
            Probe({"mid": b[1], "values": {"name": "stolen"}}, 200, not_in(b)),
            Probe({"mid": b[2], "values": {o: bob_owner}}, 400),
            Probe({"mid": x[0], "pars": ["mine"]}, 200, equals(x[0])),
        ]
    if method == "mByid":
        return [
            # B's id is an id nobody has, to me: a row of mine takes it; B's stays as it is.
            Probe({"mid": b[0], "pars": ["mine", 9, 9.0]}, 200, equals(b[0])),
            Probe({"values": {"id": b[1], "name": "mine"}}, 200, equals(b[1])),
            Probe({"mid": b[2], "values": {"name": "mine"}}, 200, equals(b[2])),
            Probe({"mid": b[0], "pars": ["mine again"]}, 200, equals(b[0]), via="query"),
            Probe({"mid": fresh[0], "pars": ["mine"]}, 200, equals(fresh[0])),
            Probe({"mid": x[0], "pars": ["mine"]}, 200, equals(x[0])),
        ]
    if method == "mByFirstField":
        return [
            # B's first column value: not found among mine, so a row of mine is added.
            Probe({"pars": [b_name, 9, 9.0]}, 200, not_in(b)),
            Probe({"values": {"name": b_name, "qty": 1}}, 200, not_in(b)),
            Probe({"values": {"name": b_name, o: bob_owner}}, 400),
        ]
    if method == "get":
        mine, one = rows_of(me, o, b), rows_of(me, o, b, count=1)
        count = len(scene.own.get(me.name, {}).get("private", []))
        return [
            Probe({}, 200, rows_of(me, o, b, count=count)),
            Probe({"where": {"id": b[0]}}, 200, equals([])),
            # Routes take one id per filter; lists go IN on the other columns.
            Probe(
                {"where": {"name": [b_name, f"{me.name}-private-0"]}, "cols": ["id", o]}, 200, one
            ),
            Probe({"where": {"name": b_names}, "total": 1}, 200, equals({"rows": [], "total": 0})),
            Probe({"cols": "id", "pars": [b[2]]}, 200, equals([])),
            Probe({"where": {"name": b_name}}, 200, equals([])),
            Probe({"where": {"upby": "bob-the-victim"}}, 200, equals([])),
            Probe({"where": {o: bob_owner}}, 400),
            Probe({"cols": [o], "pars": [bob_owner]}, 400),
            Probe({"bcid": bob_owner, o: bob_owner, "getnumber": 1000, "order": "-qty"}, 200, mine),
            Probe({"where": {"id": b[0]}}, 200, equals([]), via="query"),
            Probe({"pars": [b_name], "cols": "name"}, 200, equals([]), via="form"),
        ]
    if method == "getbyBcid":
        public = scene.victim["public"]
        exactly_bobs = rows_of(BOB, o, [], count=len(public))

        def only_bobs_public(back: Any) -> bool:
            exactly_bobs(back)
            assert sorted(r["id"] for r in back) == sorted(public)
            return True

        both = [*scene.public_names, *b_names]
        return [
            Probe({"bcid": bob_owner}, 403, anyone=True),
            Probe({"bcid": bob_owner, "where": {"id": b[0]}}, 403, anyone=True),
            Probe({"bcid": bob_owner}, 200, only_bobs_public, kind="public", anyone=True),
            Probe(
                {"bcid": bob_owner, "where": {"name": both}, "total": 1},
                200,
                rows_of(BOB, o, b, count=len(public)),
                kind="public",
                anyone=True,
            ),
            Probe({"bcid": bob_owner, "where": {o: "acme"}}, 400, kind="public", anyone=True),
            Probe({"bcid": "' OR '1'='1"}, 200, equals([]), kind="public", anyone=True),
            Probe({"bcid": [bob_owner, "acme"]}, 400, kind="public", anyone=True),
        ]
    if method == "mdel":
        return [
            Probe({"mid": b[0]}, 404),
            Probe({"pars": [b[1]]}, 404),
            Probe({"mid": b[2]}, 404, via="query"),
            Probe({"mid": x[0]}, 200, equals(1)),
        ]
    if method == "mdelmany":
        return [
            Probe({"ids": [x[0], b[0], b[1]]}, 200, equals(1)),
            Probe({"ids": ",".join(b)}, 200, equals(0)),
            Probe({"pars": [b[2], fresh[0]]}, 200, equals(0)),
            Probe({"ids": ",".join([*b, x[1]])}, 200, equals(1), via="form"),
        ]
    if method == "mUpdateElkByid":
        d = scene.victim["docs"]
        y = scene.ids(me, "docs")
        doc = {"name": "stolen"}
        return [
            # A table without a search source refuses cleanly, mine or not.
            Probe({"mid": b[0], "values": doc}, 400),
            Probe({"mid": x[0], "values": doc}, 400),
            Probe({"mid": d[0], "values": doc}, 404, kind="docs"),
            Probe({"pars": [d[1], json.dumps(doc)]}, 404, kind="docs"),
            Probe({"pars": [d[2], doc]}, 404, kind="docs"),
            Probe({"mid": d[0], "values": {o: me.owner(o) or "x"}}, 400, kind="docs"),
            Probe({"mid": y[0], "values": {"name": "mine v2"}}, 200, equals(1), kind="docs"),
        ]
    raise AssertionError(f"no probes for {method}")


async def send(
    client: httpx.AsyncClient, scene: Scene, method: str, me: Person, probe: Probe
) -> httpx.Response:
    url = f"/{ROUTE}/{scene.name(probe.kind)}/{method}"
    if probe.via == "json":
        return await client.post(url, json=probe.params, headers=me.headers())
    flat = {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in probe.params.items()
    }
    if probe.via == "query":
        return await client.get(url, params=flat, headers=me.headers())
    return await client.post(url, data=flat, headers=me.headers())


@pytest.mark.anyio
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("owner", OWNERS)
@pytest.mark.parametrize("method", METHODS)
async def test_http(
    request: pytest.FixtureRequest, tmp_path: Path, method: str, owner: str, source: str
) -> None:
    async with making(request, tmp_path, method, owner, source) as world:
        engine = Engine(world.config())
        app: Any = Wf78Middleware(Starlette(), engine=engine)
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                scene = await seed(engine, world)
                before = await snapshot(scene)
                answers: list[str] = []
                for me in attackers(owner):
                    for probe in http_probes(method, scene, me):
                        response = await send(client, scene, method, me, probe)
                        if probe.kind != "public":  # public rows are anyone's to read
                            answers.append(response.text)
                        assert response.status_code == probe.status, (me.name, probe, response.text)
                        body = response.json()
                        assert body["res"] == (0 if probe.status == 200 else -probe.status)
                        if probe.check is not None and probe.status == 200:
                            probe.check(body["back"])
                for me, status in REFUSED:
                    for probe in http_probes(method, scene, me):
                        response = await send(client, scene, method, me, probe)
                        if probe.kind != "public":
                            answers.append(response.text)
                        expected = probe.status if probe.anyone else status
                        assert response.status_code == expected, (me.name, probe, response.text)
                        if probe.anyone and probe.check is not None and expected == 200:
                            probe.check(response.json()["back"])
                if world.es_url is not None:
                    assert engine.mirrors is not None
                    await engine.mirrors.flush()
                after = await snapshot(scene)
        assert_untouched(scene, before, after)
        assert_no_secret_in(scene, answers)


# -- the Table side --------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One ``Table`` call and what an attacker gets: a check of the value, or an error."""

    run: Callable[[], Awaitable[Any]]
    expect: Check | type[Exception]
    anyone: bool = False
    public: bool = False  # reads public rows: anyone's to see


def table_calls(method: str, scene: Scene, me: Person, tables: dict[str, Table]) -> list[Call]:
    """The ``Table`` counterpart of :func:`http_probes`, with what only Python can send: ids
    as integers, ids with a trailing space (MariaDB compares them equal to B's)."""
    o = scene.owner
    t = tables["private"]
    b = scene.victim.get("private", [])
    x = scene.ids(me)
    fresh = [snowflake_id() for _ in range(3)]
    b_name = scene.secrets[1]
    bob_owner = BOB.owner(o)
    # B's ids with trailing spaces (MariaDB's PAD SPACE compares them equal to B's), a
    # different number per attacker.
    spaces = " " * (1 + (attackers(o).index(me) if me in attackers(o) else 0))
    padded = [row_id + spaces for row_id in b]
    row = {"name": "stolen", "qty": 0, "price": 0.0}
    bad = InvalidOperation
    if method == "mAdd":
        return [
            Call(lambda: t.add({"name": "stolen", o: bob_owner}), bad),
            Call(lambda: t.add({"name": "stolen", "id": b[0]}), bad),
            Call(lambda: t.add({"name": "stolen", "upby": "bob"}), bad),
            Call(lambda: t.add({"name": "mine"}), not_in(b)),
        ]
    if method == "mAddMany":
        return [
            Call(lambda: t.add_many([{"name": "stolen", o: bob_owner}]), bad),
            Call(lambda: t.add_many([{"name": "stolen", "id": b[0]}]), bad),
            Call(lambda: t.add_many([["stolen", 1, 1.0, bob_owner]]), bad),
            Call(lambda: t.add_many([["m1", 1, 1.0], {"name": "m2"}]), count_of(2)),
        ]
    if method == "mAddManyByid":
        return [
            # Each owner has its own ids: B's are new to me, so rows of mine take them.
            Call(
                lambda: t.add_many_by_id([{**row, "id": b[0]}, {**row, "id": fresh[0]}]), equals(2)
            ),
            Call(lambda: t.add_many_by_id([{**row, "id": int(b[1])}]), equals(1)),
            Call(lambda: t.add_many_by_id([{**row, "id": b[1]}]), equals(0)),  # mine now
            Call(lambda: t.add_many_by_id([{**row, "id": padded[2]}]), equals(1)),
            Call(lambda: t.add_many_by_id([{**row, "id": fresh[1], o: bob_owner}]), bad),
        ]
    if method == "mUpdate":
        return [
            Call(lambda: t.update(b[0], {"name": "stolen"}), equals(0)),
            Call(lambda: t.update(int(b[1]), {"name": "stolen"}), equals(0)),
            Call(lambda: t.update(padded[2], {"name": "stolen"}), equals(0)),
            Call(lambda: t.update(b[0], {o: me.owner(o) or "x"}), bad),
            Call(lambda: t.update(x[0], {"name": "mine"}), equals(1)),
        ]
    if method == "mUpdateByid":
        return [
            Call(lambda: t.update_by_id({"id": b[0], "name": "stolen"}), equals(0)),
            Call(lambda: t.update_by_id({"id": padded[1], "qty": 0}), equals(0)),
            Call(lambda: t.update_by_id({"id": b[2], o: bob_owner}), bad),
            Call(lambda: t.update_by_id({"id": x[0], "name": "mine"}), equals(1)),
        ]
    if method == "mUpdateMany":
        mixed = [{"id": x[0], "qty": 5}, {"id": b[0], **row}, {"id": padded[1], "qty": 1}]
        return [
            Call(lambda: t.update_many(mixed), equals(1)),
            Call(lambda: t.update_many([{"id": int(b[2]), "qty": 1}]), equals(0)),
            Call(lambda: t.update_many([{"id": b[2], o: me.owner(o) or "x"}]), bad),
        ]
    if method == "m":
        # The koa78 m: update when the caller has the row, else insert a new one.
        async def m(row_id: str) -> str:
            if await t.update(row_id, {"name": "stolen"}):
                return row_id
            return await t.add({"name": "stolen"})

        return [Call(lambda: m(b[0]), not_in(b)), Call(lambda: m(x[0]), equals(x[0]))]
    if method == "mByid":
        # B's ids are ids nobody has, to me: rows of mine take them; B's stay as they are.
        return [
            Call(lambda: t.upsert({"id": b[0], "name": "mine"}), equals(b[0])),
            Call(lambda: t.upsert({"id": int(b[1]), "name": "mine"}), equals(b[1])),
            Call(lambda: t.upsert({"id": b[1], "name": "mine again"}), equals(b[1])),
            Call(lambda: t.upsert({"id": fresh[0], "name": "mine"}), equals(fresh[0])),
            Call(lambda: t.upsert({"id": x[0], "name": "mine"}), equals(x[0])),
            Call(lambda: t.upsert({"id": padded[2], "name": "mine"}), equals(padded[2])),
        ]
    if method == "mByFirstField":
        return [
            Call(lambda: t.upsert_by_first_field({"name": b_name, "qty": 9}), not_in(b)),
            Call(lambda: t.upsert_by_first_field({"name": b_name, o: bob_owner}), bad),
        ]
    if method == "get":
        mine = rows_of(me, o, b)
        count = len(scene.own.get(me.name, {}).get("private", []))
        return [
            Call(lambda: t.get(), rows_of(me, o, b, count)),
            Call(lambda: t.get(where={"id": b[0]}), equals([])),
            Call(lambda: t.get(where={"id": [*b, x[0]]}), rows_of(me, o, b, 1)),
            Call(lambda: t.get(where={"id": padded[0]}), equals([])),
            Call(lambda: t.get(where={"name": b_name}), equals([])),
            Call(lambda: t.get(where={"upby": "bob-the-victim"}), equals([])),
            Call(lambda: t.get(where={o: bob_owner}), bad),
            Call(
                lambda: t.get(total=True, number=1000),
                lambda r: mine({"rows": r[0], "total": r[1]}),
            ),
            Call(lambda: t.get(order=f"{o} desc", cols=["id", o]), mine),
        ]
    if method == "getbyBcid":
        private, public = tables["private"], tables["public"]
        ids = scene.victim["public"]
        return [
            Call(lambda: private.get_public(str(bob_owner)), bad, anyone=True),
            Call(
                lambda: public.get_public(str(bob_owner)),
                rows_of(BOB, o, [], count=len(ids)),
                anyone=True,
                public=True,
            ),
            Call(
                lambda: public.get_public(str(bob_owner), where={"id": [*ids, *b]}),
                rows_of(BOB, o, b, count=len(ids)),
                anyone=True,
                public=True,
            ),
            Call(lambda: public.get_public(str(bob_owner), where={o: "acme"}), bad, anyone=True),
            Call(lambda: public.get_public("' OR '1'='1"), equals([]), anyone=True),
        ]
    if method == "mdel":
        return [
            Call(lambda: t.delete(b[0]), equals(0)),
            Call(lambda: t.delete(int(b[1])), equals(0)),
            Call(lambda: t.delete(padded[2]), equals(0)),
            Call(lambda: t.delete(x[0]), equals(1)),
        ]
    if method == "mdelmany":
        return [
            Call(lambda: t.delete_many([x[0], b[0], int(b[1])]), equals(1)),
            Call(lambda: t.delete_many(padded), equals(0)),
            Call(lambda: t.delete_many([*b, x[1]]), equals(1)),
        ]
    if method == "mUpdateElkByid":
        docs = tables["docs"]
        d = scene.victim["docs"]
        y = scene.ids(me, "docs")
        return [
            Call(lambda: t.update_search_doc(b[0], {"name": "stolen"}), bad),
            Call(lambda: docs.update_search_doc(d[0], {"name": "stolen"}), equals(0)),
            Call(lambda: docs.update_search_doc(int(d[1]), {"qty": 0}), equals(0)),
            Call(lambda: docs.update_search_doc(d[2] + " ", {"qty": 0}), equals(0)),
            Call(lambda: docs.update_search_doc(d[0], {o: bob_owner}), bad),
            Call(lambda: docs.update_search_doc(y[0], {"name": "mine v2"}), equals(1)),
        ]
    raise AssertionError(f"no calls for {method}")


@pytest.mark.anyio
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("owner", OWNERS)
@pytest.mark.parametrize("method", METHODS)
async def test_table(
    request: pytest.FixtureRequest, tmp_path: Path, method: str, owner: str, source: str
) -> None:
    async with making(request, tmp_path, method, owner, source) as world:
        async with Engine(world.config()) as engine:
            scene = await seed(engine, world)
            before = await snapshot(scene)
            answers: list[str] = []
            people = [(me, None) for me in attackers(owner)] + [(me, bad) for me, bad in REFUSED]
            for me, refused in people:
                # What current().table(name) gives a handler called with me's token.
                client = RequestClient(engine, me.identity)
                tables = {kind: client.table(name) for kind, name in world.tables().items()}
                for call in table_calls(method, scene, me, tables):
                    expect = call.expect if refused is None or call.anyone else InvalidOperation
                    if isinstance(expect, type):
                        with pytest.raises(expect) as caught:
                            await call.run()
                        answers.append(str(caught.value))
                        continue
                    value = await call.run()
                    if not call.public:
                        answers.append(repr(value))
                    expect(value)
            if engine.mirrors is not None:
                await engine.mirrors.flush()
            after = await snapshot(scene)
        assert_untouched(scene, before, after)
        assert_no_secret_in(scene, answers)


# -- beyond the matrix ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("source", SOURCES)
async def test_idempotency_keys_never_cross_tenants(
    request: pytest.FixtureRequest, tmp_path: Path, source: str
) -> None:
    """The same caller's key from two tenants is two keys: neither replays the other's
    answer (which would hand over its row id) nor skips its own write. Over HTTP the owners
    differ by a ':' that a plain 'owner:key' join would lose."""
    async with making(request, tmp_path, "get", "cid", source) as world:
        config = world.config()
        colon = Person("K", "tok-k-8e1f", Identity(uid="u-k", cid="acme:x", uname="kay"))
        assert colon.token is not None
        config["auth"]["tokens"][colon.token] = token_identity(colon)
        name = world.tables()["private"]
        key = f"order-{uuid4().hex[:8]}"  # MariaDB's key table outlives the test
        async with Engine(config) as engine:
            alice = RequestClient(engine, ALICE.identity).table(name)
            bob = RequestClient(engine, BOB.identity).table(name)
            mine = await alice.add({"name": "alice's"}, idempotency_key=key)
            theirs = await bob.add({"name": "bob's"}, idempotency_key=key)
            assert theirs != mine
            assert [row["name"] for row in await bob.get()] == ["bob's"]
            assert await alice.add({"name": "alice's"}, idempotency_key=key) == mine  # a replay
            with pytest.raises(IdempotencyConflict):  # the key of another request
                await alice.add({"name": "again"}, idempotency_key=key)
            assert await alice.update(mine, {"qty": 1}, idempotency_key=f"{key}-u") == 1
            assert await bob.update(mine, {"qty": 2}, idempotency_key=f"{key}-u") == 0
            assert await bob.delete(mine, idempotency_key=f"{key}-d") == 0
            assert [row["qty"] for row in await alice.get()] == [1]

        app: Any = Wf78Middleware(Starlette(), engine=Engine(config))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                url = f"/{ROUTE}/{name}/mAdd"
                # "acme" + "x:k" and "acme:x" + "k" both read "acme:x:k" once joined.
                first = await client.post(
                    url,
                    json={"pars": ["acme's"]},
                    headers={**ALICE.headers(), "idempotency-key": f"x:{key}"},
                )
                second = await client.post(
                    url,
                    json={"pars": ["kay's"]},
                    headers={**colon.headers(), "idempotency-key": key},
                )
                assert first.status_code == second.status_code == 200, second.text
                assert first.json()["back"] != second.json()["back"]
        names = {owner_of(row, "cid"): text_of(row, "name") for row in world.rows(name)}
        assert names["acme:x"] == "kay's"


def test_owner_values_mariadb_would_confuse_are_refused() -> None:
    from wf78_core.data.table import owner_problem

    assert owner_problem("globex") is None
    assert owner_problem("x" * 64) is None
    assert owner_problem(" leading and inner spaces are fine") is None
    assert "64 characters" in (owner_problem("x" * 65) or "")
    assert "ends with a space" in (owner_problem("globex ") or "")


# -- no existence oracle: another tenant's id answers as an id nobody has ---------------------

BY_ID: dict[str, dict[str, Any]] = {
    "mUpdate": {"mid": "{id}", "pars": ["probe"]},
    "mUpdateByid": {"values": {"id": "{id}", "name": "probe"}},
    "mUpdateMany": {"rows": [{"id": "{id}", "qty": 1}]},
    "mdel": {"mid": "{id}"},
    "mdelmany": {"ids": ["{id}"]},
    "get": {"where": {"id": "{id}"}},
    "m": {"mid": "{id}", "pars": ["probe"]},
}


def _with_id(value: Any, row_id: str) -> Any:
    if value == "{id}":
        return row_id
    if isinstance(value, dict):
        return {key: _with_id(item, row_id) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_id(item, row_id) for item in value]
    return value


def _seen(response: httpx.Response, *ids: str) -> tuple[int, str]:
    """What a caller learns from an answer: its status and body, with the ids it sent (and
    a new id it was given) written as placeholders."""
    text = response.text
    for row_id in ids:
        text = text.replace(row_id, "<id>")
    back = response.json()["back"]
    if isinstance(back, str) and back.isdigit() and back not in ids:
        text = text.replace(back, "<new>")
    return response.status_code, text


@asynccontextmanager
async def tenants_on(source: str, tmp_path: Path) -> AsyncIterator[tuple[Engine, str, Any]]:
    """An engine serving one ``cid``-owned table on ``source``; yields it, the table's name
    and the HTTP client."""
    world = World("get", "cid", "sqlite" if source == "redis" else source, tmp_path / "o.db")
    config = world.config()
    prefix = f"wf78test-{uuid4().hex[:8]}"
    if source == "redis":
        config["datasources"]["db"] = {"type": "redis", "url": REDIS_URL, "key_prefix": prefix}
    app: Any = Wf78Middleware(Starlette(), engine=Engine(config))
    try:
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                yield app.engine, world.tables()["private"], client
    finally:
        world.drop()
        if source == "redis":
            redis_client = redis.asyncio.Redis.from_url(REDIS_URL)
            try:
                keys = [k async for k in redis_client.scan_iter(match=f"{prefix}:*")]
                if keys:
                    await redis_client.delete(*keys)
            finally:
                await redis_client.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("source", [*SOURCES, "redis"])
async def test_another_tenants_id_answers_as_an_id_nobody_has(tmp_path: Path, source: str) -> None:
    """Each tenant has its own ids: every by-id method answers another tenant's id exactly as
    an id nobody has, the same status, envelope, message and count. ``mByid`` and
    ``mAddManyByid``, which insert an id nobody has, insert the caller's own row with it;
    nothing of B's changes, and each then reads its own row under the one id."""
    async with tenants_on(source, tmp_path) as (engine, name, client):
        bob = RequestClient(engine, BOB.identity).table(name)
        alice = RequestClient(engine, ALICE.identity).table(name)
        theirs = await bob.add_many([{"name": f"b{i}", "qty": i} for i in range(4)])
        before = await bob.get(order="id")

        async def post(method: str, params: dict[str, Any]) -> httpx.Response:
            url = f"/{ROUTE}/{name}/{method}"
            return await client.post(url, json=params, headers=ALICE.headers())

        for method, params in BY_ID.items():
            missing = snowflake_id()
            foreign = await post(method, _with_id(params, theirs[0]))
            nobodys = await post(method, _with_id(params, missing))
            assert _seen(foreign, theirs[0]) == _seen(nobodys, missing), method
        # mByid inserts Alice's own row under B's id, answered as for an id nobody has.
        missing = snowflake_id()
        foreign = await post("mByid", {"mid": theirs[1], "pars": ["probe"]})
        nobodys = await post("mByid", {"mid": missing, "pars": ["probe"]})
        assert foreign.status_code == 200, foreign.text
        assert _seen(foreign, theirs[1]) == _seen(nobodys, missing)
        # mAddManyByid: B's id counts 1, as an id nobody has does.
        row = {"name": "many", "qty": 7}
        missing = snowflake_id()
        foreign = await post("mAddManyByid", {"rows": [{**row, "id": theirs[2]}]})
        nobodys = await post("mAddManyByid", {"rows": [{**row, "id": missing}]})
        assert _seen(foreign, theirs[2]) == _seen(nobodys, missing)
        assert foreign.json()["back"] == 1
        # Through Table too: upsert of B's id is Alice's insert.
        assert await alice.upsert({"id": theirs[3], "name": "table"}) == theirs[3]
        assert await bob.get(order="id") == before
        mine = {row["id"]: row["name"] for row in await alice.get(where={"id": theirs[1:]})}
        assert mine == {theirs[1]: "probe", theirs[2]: "many", theirs[3]: "table"}
        # Each tenant's row under one id is its own: changes and deletes stay with it.
        assert await alice.update(theirs[1], {"name": "alice's"}) == 1
        assert await alice.delete(theirs[2]) == 1
        assert await bob.get(order="id") == before
        assert await alice.add_many_by_id([{**row, "id": theirs[3]}]) == 0  # her own now
