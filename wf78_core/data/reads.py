"""The read methods of a table: pages of rows, one row through the cache, search.

A read of a sharded table covers today's shard, or every shard of a ``since``..``until``
range, read at once and merged in the requested order (each shard's first ``offset +
limit`` rows hold every row of the page). A read of one row by id on a table with a
``cache_mirror`` goes through the relay's cache; ``kind="search"`` and :meth:`search` read
the search mirror.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any, Literal, overload

import anyio

from wf78_core.data import sharding
from wf78_core.data.arguments import DEFAULT_NUMBER, TableView
from wf78_core.data.outbox import cache_key, is_missing_index, search_body
from wf78_core.data.tenancy import as_caller
from wf78_core.errors import OperationError

__all__ = ["TableReads"]


class TableReads(TableView):
    """koa78's reads (``get``, ``getbyBcid``) and the search mirror's, owner-scoped."""

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

    @as_caller
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

    @as_caller
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

    @as_caller
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


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first error of a task group's failures (callers expect the error itself)."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _sort_key(value: Any) -> tuple[bool, Any]:
    return (value is not None, value)  # NULLs first ascending, last descending, as in SQL
