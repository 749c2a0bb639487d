"""``Table``: koa78's Base78 controller methods, owner-scoped, every one through the engine.

Each method builds :class:`~wf78_core.definitions.Operation` values and hands them to
``engine.submit``, so priority, agents, selection, retry and statistics apply to table work
like to any other. The koa78 columns are filled on every write: a snowflake ``id``, ``upby``
(the identity's user name), ``uptime`` (now, UTC) and the owner column (``cid`` or ``uid``,
from the identity). The owner is also a filter of every read and write, bulk ones included,
so one tenant never reads, changes or deletes another's rows.

Every write method takes ``idempotency_key=``: a replay with the same key returns the first
call's result and writes nothing again (:mod:`wf78_core.idempotency`). On an owned table keys
are the owner's: two tenants' equal keys are two keys. An insert with a key
gets ids derived from it; one without gets snowflakes and a generated key naming them, so the
engine's retries of it never double a row either.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal, overload

import anyio
import msgspec

from wf78_core.config import Identity, TableConfig
from wf78_core.data import sharding
from wf78_core.data.mirrors import TableMirrors, cache_key, is_missing_index, search_body
from wf78_core.definitions import Operation
from wf78_core.errors import InvalidOperation, OperationError
from wf78_core.idempotency import AUTO_PREFIX, MAX_KEY, derive_key, key_id
from wf78_core.ids import snowflake_id

if TYPE_CHECKING:
    from wf78_core.engine import Engine

__all__ = ["DEFAULT_NUMBER", "MAX_NUMBER", "Table", "owner_problem"]

# koa78's getnumber default, and the most rows one read returns.
DEFAULT_NUMBER = 15
MAX_NUMBER = 1000
# The id column of MySQL tables holds at most this many characters.
_MAX_ID = 64
_BASE = ("id", "upby", "uptime")
_DIGITS = re.compile(r"[0-9]+")
_SCOPE_ENCODER = msgspec.json.Encoder()


def owner_problem(value: str) -> str | None:
    """Why an identity's owner value (``cid``/``uid``) cannot scope rows, else None.

    MySQL's owner column holds 64 characters, and ``INSERT IGNORE`` cuts a longer value to
    another owner's; its PAD SPACE collations find ``'x'`` rows for ``'x '``.
    """
    if len(value) > _MAX_ID:
        return f"is longer than the {_MAX_ID} characters the owner column holds"
    if value.endswith(" "):
        return "ends with a space (MySQL would match it to the owner without one)"
    return None


class Table:
    """One configured table as seen by one caller (``identity``) at one ``priority``.

    ``Table(engine, name, identity=..., priority=...)`` or ``engine.table(name, ...)``.
    ``priority`` defaults to the engine's ``submit_priority`` and is never more urgent
    than ``identity.max_priority`` allows. ``clock`` (returning an aware datetime) stands
    in for :func:`wf78_core.sharding.now`, the time that fills ``uptime`` and picks shards.
    ``idempotency_key`` is the key of the one request this view serves (the data routes pass
    the ``Idempotency-Key`` header, scoped by the caller): each write method called without
    its own key uses ``{key}:{table}:{method}``, so a replayed request writes nothing twice.
    """

    # The most rows one read returns; set it on a class or an instance to change the cap.
    max_number: int = MAX_NUMBER

    def __init__(
        self,
        engine: Engine,
        name: str,
        *,
        identity: Identity | None = None,
        priority: int | None = None,
        clock: Callable[[], datetime] | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        config = engine.config.tables.get(name)
        if config is None:
            raise InvalidOperation(
                f"unknown table {name!r} (configured: {sorted(engine.config.tables)})"
            )
        self.engine = engine
        self.name = name
        self.config: TableConfig = config
        self.identity = identity
        self.owner = config.owner
        # The writable columns, in declared order (koa78's colsImp).
        self.columns: tuple[str, ...] = tuple(config.columns)
        self.schema = config.schema()
        if identity is not None and identity.max_priority is not None:
            wanted = engine.settings.submit_priority if priority is None else priority
            priority = max(wanted, identity.max_priority)
        self.priority = priority
        self._clock = clock
        if idempotency_key is not None:
            self._check_key(idempotency_key)
        self.idempotency_key = idempotency_key
        relay = engine.mirrors
        self._mirrors: TableMirrors | None = relay.tables.get(name) if relay else None

    def __repr__(self) -> str:
        return f"Table({self.name!r}, owner={self.owner!r})"

    # -- writes ---------------------------------------------------------------------------

    async def add(self, values: Mapping[str, Any], *, idempotency_key: str | None = None) -> str:
        """Insert one row (koa78 ``mAdd``); returns its new id."""
        key = self._key(idempotency_key, "add")
        row = self._stamp(self._values(values, "values"), owner=True)
        row["id"] = snowflake_id() if key is None else key_id(key)
        result: str = await self._write(
            "add",
            "index",
            [row],
            values=row,
            shard=self._write_shard(),
            idempotency_key=AUTO_PREFIX + row["id"] if key is None else key,
        )
        return result

    async def add_many(
        self,
        rows: Sequence[Mapping[str, Any] | Sequence[Any]],
        *,
        idempotency_key: str | None = None,
    ) -> list[str]:
        """Insert many rows at once, all or none (koa78 ``mAddMany``); returns their ids.

        A row is a mapping of column to value, or a sequence of values in declared order.
        """
        key = self._key(idempotency_key, "add_many")
        prepared = []
        for index, row in enumerate(self._rows(rows)):
            values = self._stamp(self._values(row, f"rows[{index}]"), owner=True)
            values["id"] = snowflake_id() if key is None else key_id(key, index)
            prepared.append(values)
        if not prepared:
            return []
        ids: list[str] = await self._write(
            "add_many",
            "index",
            prepared,
            rows=prepared,
            shard=self._write_shard(),
            idempotency_key=AUTO_PREFIX + prepared[0]["id"] if key is None else key,
        )
        return ids

    async def add_many_by_id(
        self, rows: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> int:
        """Insert rows that carry their own ``id``, skipping ids that exist (koa78
        ``mAddManyByid``); returns how many were inserted. An existing row, whoever owns
        it, is left as it is."""
        key = self._key(idempotency_key, "add_many_by_id")
        prepared = []
        for index, row in enumerate(self._rows(rows)):
            field = f"rows[{index}]"
            row_id, values = self._split_id(row, field)
            stamped = self._stamp(self._values(values, field), owner=True)
            stamped["id"] = row_id
            prepared.append(stamped)
        if not prepared:
            return 0
        # Which rows were skipped is not known: the relay reads back what each id holds.
        inserted: int = await self._write(
            "add_many",
            "sync",
            prepared,
            rows=prepared,
            conflict="ignore",
            shard=self._write_shard(),
            idempotency_key=key,
        )
        return inserted

    async def update(
        self, id: str | int, values: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> int:
        """Update the row ``id`` of this owner (koa78 ``mUpdate``); returns rows changed."""
        key = self._key(idempotency_key, "update")
        changes = self._values(values, "values")
        if not changes:
            raise self._invalid("values: update needs at least one column to set")
        return await self._update(self._row_id(id, "id"), changes, key)

    async def update_by_id(
        self, values: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> int:
        """Update the row named by ``values["id"]`` (koa78 ``mUpdateByid``)."""
        key = self._key(idempotency_key, "update_by_id")
        row_id, rest = self._split_id(values, "values")
        return await self.update(row_id, rest, idempotency_key=key)

    async def update_many(
        self, rows: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> int:
        """Update many rows of this owner in one statement, each by its ``id`` (koa78
        ``mUpdateMany``); returns rows changed. Rows of other owners are not touched."""
        key = self._key(idempotency_key, "update_many")
        prepared = []
        for index, row in enumerate(self._rows(rows)):
            field = f"rows[{index}]"
            row_id, values = self._split_id(row, field)
            changes = self._values(values, field)
            if not changes:
                raise self._invalid(f"{field}: update_many needs a column to set besides id")
            stamped = self._stamp(changes, owner=False)
            stamped["id"] = row_id
            prepared.append(stamped)
        if not prepared:
            return 0
        changed: int = await self._write(
            "update_many",
            "sync",
            prepared,
            rows=prepared,
            where=self._scope(),
            shard=self._write_shard(),
            idempotency_key=key,
        )
        return changed

    async def upsert(self, values: Mapping[str, Any], *, idempotency_key: str | None = None) -> str:
        """Update the row ``values["id"]`` when this owner has it, else insert it with that
        id (koa78 ``mByid``); returns the id. Another owner's row with that id is never
        overwritten: that raises InvalidOperation."""
        key = self._key(idempotency_key, "upsert")
        row_id, rest = self._split_id(values, "values")
        changes = self._values(rest, "values")
        shard = self._write_shard()
        if self.owner is None:
            row = self._stamp(changes, owner=False)
            row["id"] = row_id
            result: str = await self._write(
                "upsert", "sync", [row], values=row, shard=shard, idempotency_key=key
            )
            return result
        # Each step has its own key: a replay takes the path the first call took.
        if await self._update(row_id, changes, _step(key, "update")):
            return row_id
        row = self._stamp(changes, owner=True)
        row["id"] = row_id
        if await self._write(
            "add_many",
            "index",
            [row],
            rows=[row],
            conflict="ignore",
            shard=shard,
            idempotency_key=_step(key, "insert"),
        ):
            return row_id
        # The id exists: ours if another caller inserted it just now, else someone else's.
        if await self._update(row_id, changes, _step(key, "update again")):
            return row_id
        raise self._invalid(
            f"upsert: id {row_id!r} exists and is not this {self.owner}'s row; "
            "it is not overwritten"
        )

    async def upsert_by_first_field(
        self, values: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> str:
        """Update this owner's row whose first declared column equals ``values``' one, else
        insert (koa78 ``mByFirstField``); returns the row's id."""
        key = self._key(idempotency_key, "upsert_by_first_field")
        if not self.columns:
            raise self._invalid("upsert_by_first_field needs a declared column")
        changes = self._values(values, "values")
        first = self.columns[0]
        if first not in changes:
            raise self._invalid(f"values: upsert_by_first_field needs the first column {first!r}")
        found = await self.get(where={first: changes[first]}, cols=["id"], number=1)
        if found:
            row_id = str(found[0]["id"])
            await self._update(row_id, changes, _step(key, "update"))
            return row_id
        return await self.add(changes, idempotency_key=_step(key, "add"))

    async def delete(self, id: str | int, *, idempotency_key: str | None = None) -> int:
        """Delete the row ``id`` of this owner (koa78 ``mdel``); returns rows deleted."""
        key = self._key(idempotency_key, "delete")
        where = {"id": self._row_id(id, "id"), **self._scope()}
        deleted: int = await self._write(
            "delete",
            "delete",
            [where],
            where=where,
            shard=self._write_shard(),
            idempotency_key=key,
        )
        return deleted

    async def delete_many(
        self, ids: Sequence[str | int], *, idempotency_key: str | None = None
    ) -> int:
        """Delete this owner's rows among ``ids`` (koa78 ``mdelmany``); returns rows deleted."""
        key = self._key(idempotency_key, "delete_many")
        if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
            raise self._invalid(f"ids must be a list of ids, got {type(ids).__name__}")
        wanted = list(dict.fromkeys(self._row_id(v, f"ids[{i}]") for i, v in enumerate(ids)))
        scope = self._scope()
        if not wanted:
            return 0
        # Some ids may be another owner's and stay: the relay reads back what each id holds.
        deleted: int = await self._write(
            "delete_many",
            "sync",
            [{"id": row_id} for row_id in wanted],
            where={"id": wanted, **scope},
            shard=self._write_shard(),
            idempotency_key=key,
        )
        return deleted

    async def update_search_doc(
        self, id: str | int, values: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> int:
        """Partially update the search document ``id`` (koa78 ``mUpdateElkByid``); the
        source adds ``@timestamp``. Returns 1, or 0 when this owner has no such document.

        Targets the table's ``search_mirror``, else its ``data_source`` when that is of type
        ``elasticsearch``. A later write of the row replaces a mirror's document again.
        """
        key = self._key(idempotency_key, "update_search_doc")
        source = self._search_source()
        row_id = self._row_id(id, "id")
        changes = self._values(values, "values")
        if not changes:
            raise self._invalid("values: update_search_doc needs at least one field to set")
        scope = self._scope()
        if scope:
            # Updates by id cannot filter: check the document's owner first.
            docs = await self._submit_to(source, "get", where={"id": row_id})
            owner = self.owner
            assert owner is not None
            if not docs or docs[0].get(owner) != scope[owner]:
                return 0
        stamped = self._stamp(changes, owner=False)
        stamped["uptime"] = stamped["uptime"].isoformat()
        changed: int = await self._submit_to(
            source, "update", where={"id": row_id}, values=stamped, idempotency_key=key
        )
        return changed

    # -- reads ----------------------------------------------------------------------------

    @overload
    async def get(
        self,
        *,
        where: Mapping[str, Any] | None = ...,
        cols: Sequence[str] | str | None = ...,
        order: Sequence[str] | str | None = ...,
        start: int | str = ...,
        number: int | str = ...,
        total: Literal[False] = ...,
        since: date | datetime | str | None = ...,
        until: date | datetime | str | None = ...,
        kind: Literal["search"] | None = ...,
    ) -> list[dict[str, Any]]: ...

    @overload
    async def get(
        self,
        *,
        where: Mapping[str, Any] | None = ...,
        cols: Sequence[str] | str | None = ...,
        order: Sequence[str] | str | None = ...,
        start: int | str = ...,
        number: int | str = ...,
        total: Literal[True],
        since: date | datetime | str | None = ...,
        until: date | datetime | str | None = ...,
        kind: Literal["search"] | None = ...,
    ) -> tuple[list[dict[str, Any]], int]: ...

    async def get(
        self,
        *,
        where: Mapping[str, Any] | None = None,
        cols: Sequence[str] | str | None = None,
        order: Sequence[str] | str | None = None,
        start: int | str = 0,
        number: int | str = DEFAULT_NUMBER,
        total: bool = False,
        since: date | datetime | str | None = None,
        until: date | datetime | str | None = None,
        kind: Literal["search"] | None = None,
    ) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], int]:
        """This owner's rows matching ``where`` (equality; a list means IN), koa78 ``get``.

        ``cols`` picks columns, ``order`` sorts (``"col"``, ``"col desc"``, ``"-col"``;
        a string may list several, comma-separated), ``start``/``number`` page
        (``number`` at most :attr:`max_number`). ``total=True`` returns ``(rows, total)``,
        total being every matching row. On a sharded table ``since``/``until`` (dates,
        inclusive) read every shard of that range, merged in ``order``; without them,
        today's shard.

        ``kind="search"`` reads the search mirror instead (see :meth:`search`). A table with
        a ``cache_mirror`` reads one row by id (``where={"id": x}``) through the cache.
        """
        if kind is not None:
            if kind != "search":
                raise self._invalid(f"kind must be 'search' or None, got {kind!r}")
            return await self._search_read(None, where, cols, order, start, number, total)
        key = self._cache_key(where, total, since, until)
        if key is not None and self._count(start, "start") == 0 and self._count(number, "number"):
            columns = self._cols(cols)
            self._order(order)  # checked as always, though one row needs no order

            async def read_row() -> list[dict[str, Any]]:
                rows = await self._read(self._scope(), where, None, None, 0, 1, False, None, None)
                assert isinstance(rows, list)
                return rows

            relay = self.engine.mirrors
            assert relay is not None
            found = await relay.read_through(self.name, key, read_row, self.priority)
            return [{c: row.get(c) for c in columns} for row in found] if columns else found
        return await self._read(
            self._scope(), where, cols, order, start, number, total, since, until
        )

    @overload
    async def search(
        self,
        query: str | Mapping[str, Any] | None = ...,
        *,
        where: Mapping[str, Any] | None = ...,
        cols: Sequence[str] | str | None = ...,
        order: Sequence[str] | str | None = ...,
        start: int | str = ...,
        number: int | str = ...,
        total: Literal[False] = ...,
    ) -> list[dict[str, Any]]: ...

    @overload
    async def search(
        self,
        query: str | Mapping[str, Any] | None = ...,
        *,
        where: Mapping[str, Any] | None = ...,
        cols: Sequence[str] | str | None = ...,
        order: Sequence[str] | str | None = ...,
        start: int | str = ...,
        number: int | str = ...,
        total: Literal[True],
    ) -> tuple[list[dict[str, Any]], int]: ...

    async def search(
        self,
        query: str | Mapping[str, Any] | None = None,
        *,
        where: Mapping[str, Any] | None = None,
        cols: Sequence[str] | str | None = None,
        order: Sequence[str] | str | None = None,
        start: int | str = 0,
        number: int | str = DEFAULT_NUMBER,
        total: bool = False,
    ) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], int]:
        """This owner's documents in the search mirror matching ``query`` (a string for
        ``simple_query_string``, or a query DSL clause) and the ``where`` filters, best first
        unless ``order`` says otherwise. Rows have the table's columns; paging as :meth:`get`.

        The owner filter is part of the query, whatever ``query`` says. The mirror follows
        the primary shortly after each write (it is eventually consistent).
        """
        if query is None or isinstance(query, str | Mapping):
            clause = {"simple_query_string": {"query": query}} if isinstance(query, str) else query
        else:
            raise self._invalid(f"query must be a string or a mapping, got {type(query).__name__}")
        return await self._search_read(clause, where, cols, order, start, number, total)

    async def _search_read(
        self,
        query: Mapping[str, Any] | None,
        where: Mapping[str, Any] | None,
        cols: Sequence[str] | str | None,
        order: Sequence[str] | str | None,
        start: int | str,
        number: int | str,
        total: bool,
    ) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], int]:
        source = self._search_source()
        filters = {**self._where(where), **self._scope()}
        columns = self._cols(cols)
        body = search_body(self.schema, filters, self._order(order), query)
        offset = self._count(start, "start")
        limit = min(self._count(number, "number"), self.max_number)
        try:
            found = await self._submit_to(
                source, "search", params=body, offset=offset, limit=limit, columns=columns
            )
        except OperationError as error:
            if not is_missing_index(error):
                raise
            found = {"total": 0, "hits": []}  # nothing was ever written to the mirror
        names = columns or list(self.schema)
        rows = [{name: hit.get(name) for name in names} for hit in found["hits"]]
        return (rows, int(found["total"] or 0)) if total else rows

    def _cache_key(
        self,
        where: Mapping[str, Any] | None,
        total: bool,
        since: date | datetime | str | None,
        until: date | datetime | str | None,
    ) -> str | None:
        """The cache key of a read of one row by id, when the cache mirror can serve it."""
        mirrors = self._mirrors
        if mirrors is None or mirrors.cache is None or self.config.sharding is not None:
            return None
        if total or since is not None or until is not None:
            return None
        if not isinstance(where, Mapping) or set(where) != {"id"}:
            return None
        value = where["id"]
        if isinstance(value, bool) or not isinstance(value, str | int):
            return None
        return cache_key(self.name, next(iter(self._scope().values()), ""), str(value))

    @overload
    async def get_public(
        self,
        bcid: str,
        *,
        where: Mapping[str, Any] | None = ...,
        cols: Sequence[str] | str | None = ...,
        order: Sequence[str] | str | None = ...,
        start: int | str = ...,
        number: int | str = ...,
        total: Literal[False] = ...,
        since: date | datetime | str | None = ...,
        until: date | datetime | str | None = ...,
    ) -> list[dict[str, Any]]: ...

    @overload
    async def get_public(
        self,
        bcid: str,
        *,
        where: Mapping[str, Any] | None = ...,
        cols: Sequence[str] | str | None = ...,
        order: Sequence[str] | str | None = ...,
        start: int | str = ...,
        number: int | str = ...,
        total: Literal[True],
        since: date | datetime | str | None = ...,
        until: date | datetime | str | None = ...,
    ) -> tuple[list[dict[str, Any]], int]: ...

    async def get_public(
        self,
        bcid: str,
        *,
        where: Mapping[str, Any] | None = None,
        cols: Sequence[str] | str | None = None,
        order: Sequence[str] | str | None = None,
        start: int | str = 0,
        number: int | str = DEFAULT_NUMBER,
        total: bool = False,
        since: date | datetime | str | None = None,
        until: date | datetime | str | None = None,
    ) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], int]:
        """The rows of owner ``bcid`` (koa78 ``getbyBcid``), when the table allows it with
        ``public_read = true``; otherwise as :meth:`get`."""
        if not self.config.public_read:
            raise self._invalid(
                "get_public: the table does not allow public reads (set public_read = true)"
            )
        if self.owner is None:
            raise self._invalid("get_public: the table has no owner column to read by")
        if not isinstance(bcid, str) or not bcid:
            raise self._invalid(f"bcid must be a non-empty string, got {bcid!r}")
        return await self._read(
            {self.owner: bcid}, where, cols, order, start, number, total, since, until
        )

    async def _read(
        self,
        scope: dict[str, Any],
        where: Mapping[str, Any] | None,
        cols: Sequence[str] | str | None,
        order: Sequence[str] | str | None,
        start: int | str,
        number: int | str,
        total: bool,
        since: date | datetime | str | None,
        until: date | datetime | str | None,
    ) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], int]:
        filters = {**self._where(where), **scope}
        columns = self._cols(cols)
        sort = self._order(order)
        offset = self._count(start, "start")
        limit = min(self._count(number, "number"), self.max_number)
        shards = await self._read_shards(since, until)
        order_sql = [f"{column} {'desc' if descending else 'asc'}" for column, descending in sort]
        if len(shards) == 1:
            shard = shards[0]
            get = {"where": filters, "columns": columns, "order": order_sql, "shard": shard}
            calls = {"rows": ("get", {**get, "limit": limit, "offset": offset})}
            if total:
                calls["total"] = ("count", {"where": filters, "shard": shard})
            found = await self._gather(calls)
            return (found["rows"], found["total"]) if total else found["rows"]
        # Several shards: each one's first offset + limit rows hold every row the page needs;
        # the order columns are fetched too, to merge by.
        fetched = columns
        if columns is not None:
            fetched = columns + [c for c, _ in sort if c not in columns]
        calls = {}
        for index, shard in enumerate(shards):
            get = {"where": filters, "columns": fetched, "order": order_sql, "shard": shard}
            calls[f"rows{index}"] = ("get", {**get, "limit": offset + limit})
            if total:
                calls[f"total{index}"] = ("count", {"where": filters, "shard": shard})
        found = await self._gather(calls)
        merged = [row for index in range(len(shards)) for row in found[f"rows{index}"]]
        for column, descending in reversed(sort):  # stable sorts, least significant first
            merged.sort(key=lambda row: _sort_key(row.get(column)), reverse=descending)
        page = merged[offset : offset + limit]
        if columns is not None and fetched != columns:
            page = [{c: row[c] for c in columns} for row in page]
        if not total:
            return page
        return page, sum(found[f"total{index}"] for index in range(len(shards)))

    async def _gather(self, calls: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """Submit every call at once; their results by key, or the first failure."""
        found: dict[str, Any] = {}

        async def call(key: str, action: str, fields: dict[str, Any]) -> None:
            found[key] = await self._submit(action, **fields)

        if len(calls) == 1:
            for key, (action, fields) in calls.items():
                await call(key, action, fields)
            return found
        try:
            async with anyio.create_task_group() as group:
                for key, (action, fields) in calls.items():
                    group.start_soon(call, key, action, fields)
        except BaseExceptionGroup as failures:
            raise _first(failures) from None
        return found

    async def _read_shards(
        self, since: date | datetime | str | None, until: date | datetime | str | None
    ) -> list[str | None]:
        """The shards a read covers: [None] unsharded, today's, or those of the range."""
        spec = self.config.sharding
        if spec is None:
            if since is not None or until is not None:
                raise self._invalid("since/until pick shards, and the table is not sharded")
            return [None]
        if since is None and until is None:
            return [sharding.shard_of(spec.type, sharding.to_date(self._now()))]
        first = None if since is None else sharding.to_date(since, "since")
        last = sharding.to_date(self._now() if until is None else until, "until")
        if first is not None and first > last:
            raise self._invalid(f"since ({first}) is after until ({last})")
        existing: list[str] = await self._submit("list_shards")
        return [s for s in existing if sharding.overlaps(spec.type, s, first, last)]

    # -- operations -----------------------------------------------------------------------

    async def _update(self, row_id: str, changes: dict[str, Any], key: str | None = None) -> int:
        where = {"id": row_id, **self._scope()}
        values = self._stamp(changes, owner=False)
        changed: int = await self._write(
            "update",
            "update",
            [{"id": row_id, **values}],
            values=values,
            where=where,
            shard=self._write_shard(),
            idempotency_key=key,
        )
        return changed

    async def _submit(self, action: str, **fields: Any) -> Any:
        config = self.config
        op = Operation(
            action=action,
            table=self.name,
            kind=config.kind,
            data_source=config.data_source,
            **fields,
        )
        return (await self.engine.submit(op, priority=self.priority)).value

    async def _submit_to(self, source: str, action: str, **fields: Any) -> Any:
        op = Operation(action=action, table=self.name, data_source=source, **fields)
        return (await self.engine.submit(op, priority=self.priority)).value

    async def _write(
        self,
        action: str,
        mirror_action: Literal["index", "update", "delete", "sync"],
        touched: Sequence[Mapping[str, Any]],
        /,
        **fields: Any,
    ) -> Any:
        """Submit a write of the rows ``touched`` (each with its id); a mirrored table's
        carries their outbox entries."""
        mirrors, relay = self._mirrors, self.engine.mirrors
        if mirrors is None or relay is None:
            return await self._submit(action, **fields)
        owner = next(iter(self._scope().values()), "")
        entries = mirrors.entries(mirror_action, touched, owner=owner, shard=fields.get("shard"))
        return await relay.write(
            self.name, entries, lambda: self._submit(action, outbox=entries, **fields)
        )

    def _search_source(self) -> str:
        if self.config.search_mirror is not None:
            return self.config.search_mirror
        name = self.config.data_source
        if name is None:
            raise self._invalid(
                "has no search source: it needs a search_mirror, or a data_source of type "
                "'elasticsearch', and it has neither"
            )
        configured = self.engine.config.datasources.get(name)
        kind = configured.type if configured is not None else name
        if kind != "elasticsearch":
            raise self._invalid(
                f"has no search source: no search_mirror, and its data_source {name!r} is of "
                f"type {kind!r}, not 'elasticsearch'"
            )
        return name

    # -- checks ---------------------------------------------------------------------------

    def _invalid(self, message: str) -> InvalidOperation:
        return InvalidOperation(f"table {self.name!r}: {message}")

    def _key(self, given: str | None, method: str) -> str | None:
        """The idempotency key of a call of ``method``: its own, else derived from the view's."""
        if given is None:
            view = self.idempotency_key
            key = None if view is None else derive_key(view, self.name, method)
        else:
            self._check_key(given)
            key = given
        if key is None or self.owner is None:
            return key
        # Owner first, JSON-quoted: one tenant's key (and the ids derived from it) never
        # meets another's, whatever either holds (a ":" in an owner or a key included).
        [(owner, value)] = self._scope().items()
        return derive_key(_SCOPE_ENCODER.encode([owner, value]).decode(), key)

    def _check_key(self, key: Any) -> None:
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY:
            shown = f"{len(key)} characters" if isinstance(key, str) else repr(key)
            raise self._invalid(
                f"idempotency_key must be a string of 1 to {MAX_KEY} characters, got {shown}"
            )
        if key.startswith(AUTO_PREFIX):
            raise self._invalid(
                f"idempotency_key must not start with {AUTO_PREFIX!r} (generated keys do)"
            )

    def _now(self) -> datetime:
        return self._clock() if self._clock is not None else sharding.now()

    def _write_shard(self) -> str | None:
        spec = self.config.sharding
        if spec is None:
            return None
        return sharding.shard_of(spec.type, sharding.to_date(self._now()))

    def _scope(self) -> dict[str, Any]:
        """The owner filter from the identity; {} for a table without an owner."""
        owner = self.owner
        if owner is None:
            return {}
        if self.identity is None:
            raise self._invalid(f"rows are scoped by {owner!r}: an identity is required")
        value = getattr(self.identity, owner)
        if not value:
            raise self._invalid(f"rows are scoped by {owner!r} and the identity has no {owner}")
        problem = owner_problem(value)
        if problem is not None:
            raise self._invalid(f"rows are scoped by {owner!r}: the identity's {owner} {problem}")
        return {owner: value}

    def _stamp(self, values: dict[str, Any], *, owner: bool) -> dict[str, Any]:
        """``values`` plus the koa78 columns: upby, uptime and (``owner``) the owner."""
        stamped = dict(values)
        stamped["upby"] = self.identity.uname if self.identity is not None else None
        stamped["uptime"] = self._now()
        if owner:
            stamped.update(self._scope())
        return stamped

    def _values(self, values: Any, field: str) -> dict[str, Any]:
        """Writable columns only: base and owner columns are the table's to set."""
        if not isinstance(values, Mapping):
            raise self._invalid(
                f"{field} must be a mapping of column to value, got {type(values).__name__}"
            )
        for column in values:
            if column in _BASE or (column == self.owner and column is not None):
                raise self._invalid(
                    f"{field}: column {column!r} is set by the table and cannot be written"
                )
            if column not in self.columns:
                raise self._invalid(
                    f"{field}: unknown column {column!r} (writable: {list(self.columns)})"
                )
        return dict(values)

    def _rows(self, rows: Any) -> list[Mapping[str, Any]]:
        """Rows as mappings; a sequence row gives values in declared column order."""
        if isinstance(rows, str | bytes | Mapping) or not isinstance(rows, Sequence):
            raise self._invalid(f"rows must be a list of rows, got {type(rows).__name__}")
        out: list[Mapping[str, Any]] = []
        for index, row in enumerate(rows):
            if isinstance(row, Mapping):
                out.append(row)
            elif isinstance(row, Sequence) and not isinstance(row, str | bytes):
                if len(row) != len(self.columns):
                    raise self._invalid(
                        f"rows[{index}] has {len(row)} values for {len(self.columns)} "
                        f"columns {list(self.columns)}"
                    )
                out.append(dict(zip(self.columns, row, strict=True)))
            else:
                raise self._invalid(f"rows[{index}] must be a mapping or a list of values")
        return out

    def _row_id(self, value: Any, field: str) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self._invalid(f"{field} must be a string or an integer, got {value!r}")
        text = str(value)
        if not text or len(text) > _MAX_ID:
            raise self._invalid(f"{field} must have 1 to {_MAX_ID} characters, got {text!r}")
        return text

    def _split_id(self, values: Any, field: str) -> tuple[str, dict[str, Any]]:
        if not isinstance(values, Mapping):
            raise self._invalid(f"{field} must be a mapping, got {type(values).__name__}")
        if values.get("id") is None:
            raise self._invalid(f"{field} needs an id")
        rest = {key: value for key, value in values.items() if key != "id"}
        return self._row_id(values["id"], f"{field}.id"), rest

    def _where(self, where: Any) -> dict[str, Any]:
        if where is None:
            return {}
        if not isinstance(where, Mapping):
            raise self._invalid(f"where must be a mapping, got {type(where).__name__}")
        for column in where:
            if column not in self.schema:
                raise self._invalid(f"where: unknown column {column!r}")
            if column == self.owner:
                raise self._invalid(f"where: the owner column {column!r} comes from the identity")
        return dict(where)

    def _cols(self, cols: Any) -> list[str] | None:
        if cols is None:
            return None
        names = _names(cols, "cols", self)
        for name in names:
            if name not in self.schema:
                raise self._invalid(f"cols: unknown column {name!r}")
        return names or None

    def _order(self, order: Any) -> list[tuple[str, bool]]:
        """``(column, descending)`` pairs from ``"col"``, ``"col asc|desc"`` or ``"-col"``."""
        if order is None:
            return []
        out = []
        for entry in _names(order, "order", self):
            parts = entry.removeprefix("-").split()
            descending = entry.startswith("-")
            if len(parts) == 2 and not descending and parts[1].lower() in ("asc", "desc"):
                descending = parts[1].lower() == "desc"
            elif len(parts) != 1:
                raise self._invalid(
                    f"order: bad entry {entry!r} (expected 'col', 'col asc', 'col desc' or '-col')"
                )
            if parts[0] not in self.schema:
                raise self._invalid(f"order: unknown column {parts[0]!r} in {entry!r}")
            out.append((parts[0], descending))
        return out

    def _count(self, value: Any, field: str) -> int:
        """A non-negative integer (koa78 paging came as digits)."""
        if isinstance(value, str) and _DIGITS.fullmatch(value):
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._invalid(f"{field} must be a non-negative integer, got {value!r}")
        return value


def _step(key: str | None, step: str) -> str | None:
    """The key of one step of a method that writes several times."""
    return None if key is None else derive_key(key, step)


def _names(value: Any, field: str, table: Table) -> list[str]:
    """A list of names from a list or a comma-separated string."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value]
    raise table._invalid(f"{field} must be a list of names or a comma-separated string")


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first error of a task group's failures (callers expect the error itself)."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _sort_key(value: Any) -> tuple[bool, Any]:
    return (value is not None, value)  # NULLs first ascending, last descending, as in SQL
