"""The read actions of the Elasticsearch source: ``get``, ``count`` and ``search``.

``get`` by id (``where.id``, one or a list) reads in real time (``GET`` / ``mget``), and any
filters beside the id, ``order`` and paging apply to the documents read, so a filtered read
by id sees a write at once, as the filtered writes by id do (:mod:`.guards`). On an owned
table's index (:mod:`.keys`) that needs the owner in ``where`` too; without it the read
searches the ``id`` field and finds every owner's document of the id. Other reads search,
and see writes after the next refresh. Filters and sorts on a declared table's text columns
use their ``.keyword`` sub-fields (:func:`~.queries.where_query`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from elasticsearch import AsyncElasticsearch, NotFoundError

from wf78_core.plugin import DataSourceError, InvalidOperation, Operation, TableSchema

from .errors import error_type, item_error, map_error
from .keys import Keys, owner_column
from .queries import matches, sort_clause, sort_rows, where_query

__all__ = ["RESULT_WINDOW", "Reader"]

# index.max_result_window's default: how many hits a search can page through.
RESULT_WINDOW = 10_000
# Error types of a 404 meaning "no such document" to an action by id ("" is no error).
_MISSING = frozenset({"", "document_missing_exception", "index_not_found_exception"})


class Reader:
    """The reads of one source (``source`` is its name) through an open client; ``tables``
    are the declared tables, whose indexes may not exist before their first write."""

    def __init__(
        self, client: AsyncElasticsearch, source: str, tables: Mapping[str, TableSchema]
    ) -> None:
        self.client = client
        self.source = source
        self.tables = tables

    def keys(self, op: Operation, index: str) -> Keys:
        """How the index ``index`` of ``op.table`` names its documents."""
        return Keys(owner_column(self.tables, op.table), source=self.source, index=index)

    async def get(self, index: str, op: Operation) -> list[dict[str, Any]]:
        where = op.where or {}
        keys = self.keys(op, index)
        doc_ids = keys.read_ids(where) if "id" in where else None
        if doc_ids is not None:
            rows = await self._get_by_id(index, op, keys, doc_ids)
        else:
            try:
                order = sort_clause(op.order, self._schema(op)) if op.order else None
            except ValueError as error:
                raise self._invalid(f"{error} in order of index {index!r}") from None
            window = RESULT_WINDOW - op.offset
            body: dict[str, Any] = {
                "query": where_query(where, self._schema(op), keyed=keys.keyed),
                "from": op.offset,
                "size": window if op.limit is None else min(op.limit, window),
            }
            if order:
                body["sort"] = order
            response = await self._read(op, self.client.search(index=index, body=body))
            rows = [] if response is None else [keys.row(h) for h in response["hits"]["hits"]]
        if op.columns:
            return [{name: row.get(name) for name in op.columns} for row in rows]
        return rows

    async def count(self, index: str, op: Operation) -> int:
        query = where_query(op.where, self._schema(op), keyed=self.keys(op, index).keyed)
        response = await self._read(op, self.client.count(index=index, body={"query": query}))
        return 0 if response is None else int(response["count"])

    async def search(self, index: str, op: Operation) -> dict[str, Any]:
        if op.params is not None and not isinstance(op.params, dict):
            raise self._invalid(
                f"search needs params as a query DSL object, got {type(op.params).__name__}"
            )
        keys = self.keys(op, index)
        body = dict(op.params or {})
        if "query" not in body and op.where:
            body["query"] = where_query(op.where, self._schema(op), keyed=keys.keyed)
        if op.offset:
            body["from"] = op.offset
        if op.limit is not None:
            body["size"] = op.limit
        if op.columns:
            body["_source"] = [name for name in op.columns if name != "id"] or False
        if op.order and "sort" not in body:
            try:
                body["sort"] = sort_clause(op.order, self._schema(op))
            except ValueError as error:
                raise self._invalid(f"{error} in order of index {index!r}") from None
        body.setdefault("track_total_hits", True)
        response = await self.call(self.client.search(index=index, body=body))
        hits = response["hits"]
        total = hits.get("total")
        result: dict[str, Any] = {
            "total": total.get("value") if isinstance(total, Mapping) else total,
            "hits": [keys.row(hit) for hit in hits["hits"]],
        }
        if "aggregations" in response:
            result["aggregations"] = response["aggregations"]
        return result

    async def mget(self, index: str, doc_ids: list[str]) -> list[dict[str, Any]]:
        """The ``docs`` of an ``mget``: each found one or not, with its version."""
        docs: list[dict[str, Any]] = (await self.call(self.client.mget(index=index, ids=doc_ids)))[
            "docs"
        ]
        return docs

    async def call(self, request: Any) -> Any:
        """Await a client request; its body, or its error mapped to a DataSourceError."""
        try:
            response = await request
        except Exception as error:
            raise map_error(error, self.source) from error
        return response.body

    async def _get_by_id(
        self, index: str, op: Operation, keys: Keys, doc_ids: list[str]
    ) -> list[dict[str, Any]]:
        """The documents ``doc_ids`` (those of ``where.id``), read in real time; the other
        filters (:func:`~.queries.matches`), ``order`` and paging apply to what was read."""
        where = op.where or {}
        if len(doc_ids) == 1 and not isinstance(where["id"], list | tuple):
            rows = await self._get_one(index, doc_ids[0], keys)
        else:
            rows = await self._get_many(index, doc_ids, keys)
        filters = {name: value for name, value in where.items() if name != "id"}
        rows = [row for row in rows if matches(row, filters)]
        if op.order:
            try:
                rows = sort_rows(rows, sort_clause(op.order))
            except (ValueError, TypeError) as error:
                raise self._invalid(f"{error} in order of index {index!r}") from None
        end = None if op.limit is None else op.offset + op.limit
        return rows[op.offset : end]

    async def _get_one(self, index: str, doc_id: str, keys: Keys) -> list[dict[str, Any]]:
        try:
            response = await self.client.get(index=index, id=doc_id)
        except NotFoundError as error:
            if error_type(error.body) in _MISSING:
                return []
            raise map_error(error, self.source) from error
        except DataSourceError:
            raise
        except Exception as error:
            raise map_error(error, self.source) from error
        return [keys.row(response.body)]

    async def _get_many(self, index: str, doc_ids: list[str], keys: Keys) -> list[dict[str, Any]]:
        if not doc_ids:
            return []
        rows = []
        for doc in await self.mget(index, doc_ids):
            if "error" in doc and error_type(doc) not in _MISSING:
                raise item_error(doc, self.source, f"get of {doc.get('_id')!r} in {index!r}")
            if doc.get("found"):
                rows.append(keys.row(doc))
        return rows

    async def _read(self, op: Operation, request: Any) -> Any:
        """A search's or count's body; None when the index of a declared table is missing
        (nothing was written to it yet). Another missing index is an error, as a misspelt
        name most likely is."""
        try:
            response = await request
        except NotFoundError as error:
            missing = error_type(error.body) == "index_not_found_exception"
            if missing and op.table in self.tables:
                return None
            raise map_error(error, self.source) from error
        except Exception as error:
            raise map_error(error, self.source) from error
        return response.body

    def _schema(self, op: Operation) -> Mapping[str, str] | None:
        """The column types of the declared table ``op.table`` names, if it is one."""
        table = self.tables.get(op.table or "")
        return None if table is None else table.columns

    def _invalid(self, message: str) -> InvalidOperation:
        return InvalidOperation(message, data_source=self.source)
