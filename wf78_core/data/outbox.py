"""The outbox: what a write of a mirrored table stores for the relay to apply.

A write of a table with a ``search_mirror`` or ``cache_mirror`` carries one entry per row
and mirror (:meth:`TableMirrors.entries`), stored by the primary in the write's own
transaction; :class:`wf78_core.data.mirrors.Relay` applies them. This module is the format
and the keys both sides share (the relay, and the table that writes and reads through the
cache), so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec

from wf78_core.config import ColumnType, TableConfig
from wf78_core.errors import OperationError

__all__ = [
    "Action",
    "OutboxEntry",
    "TableMirrors",
    "cache_key",
    "is_missing_index",
    "search_body",
]

_KEY_ENCODER = msgspec.json.Encoder()
Action = Literal["index", "update", "delete", "sync", "invalidate"]


class OutboxEntry(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One outbox entry: what to do to one row's copy in one mirror."""

    mirror: str
    action: Action
    table: str
    id: str
    # index: the full row; update: the columns changed.
    values: dict[str, Any] | None = None
    # invalidate: the cache key of the row.
    key: str | None = None
    # sync: the shard the row lives in.
    shard: str | None = None
    # The row's owner on an owned table: with ``id``, the row's key (each owner has its ids).
    owner: str | None = None

    def __post_init__(self) -> None:
        if self.action in ("index", "update") and not self.values:
            raise ValueError(f"a {self.action} entry needs values")
        if self.action == "invalidate" and not self.key:
            raise ValueError("an invalidate entry needs a key")


def cache_key(table: str, owner: str, row_id: str) -> str:
    """The cache key of one owner's row: a JSON array, so no owner or id can forge another's."""
    return "row:" + _KEY_ENCODER.encode([table, owner, row_id]).decode()


def is_missing_index(error: OperationError) -> bool:
    """Whether a search failed because its index does not exist yet (no write reached it)."""
    return "index_not_found_exception" in str(error)


def search_body(
    schema: Mapping[str, ColumnType],
    filters: Mapping[str, Any],
    sort: Sequence[tuple[str, bool]] = (),
    query: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A search body: ``query`` (scored) with exact ``filters`` (owner included) and ``sort``.

    Text columns filter and sort on their ``.keyword`` sub-field (what dynamic mapping adds):
    on the analysed field a ``term`` matches single words, so owner ``acme`` would match
    ``acme corp``.
    """
    clauses: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for column, value in filters.items():
        if column == "id":
            # The id field, not _id: an owned table's documents are named by owner and id.
            values = value if isinstance(value, list | tuple) else [value]
            clauses.append({"terms": {_exact(schema, "id"): [str(item) for item in values]}})
        elif value is None:
            missing.append({"exists": {"field": _exact(schema, column)}})
        elif isinstance(value, list | tuple):
            clauses.append({"terms": {_exact(schema, column): list(value)}})
        else:
            clauses.append({"term": {_exact(schema, column): value}})
    boolean: dict[str, Any] = {"filter": clauses}
    if missing:
        boolean["must_not"] = missing
    if query is not None:
        boolean["must"] = [dict(query)]
    body: dict[str, Any] = {"query": {"bool": boolean}}
    if sort:
        body["sort"] = [
            {
                _exact(schema, column): {
                    "order": "desc" if descending else "asc",
                    "unmapped_type": "keyword",
                }
            }
            for column, descending in sort
        ]
    return body


def _exact(schema: Mapping[str, ColumnType], column: str) -> str:
    return f"{column}.keyword" if schema.get(column, "text") == "text" else column


class TableMirrors:
    """One table's mirrors: the outbox entries its writes carry."""

    def __init__(self, name: str, config: TableConfig) -> None:
        self.table = name
        self.primary = config.data_source
        self.search = config.search_mirror
        self.cache = config.cache_mirror
        self.cache_ttl = config.cache_ttl
        # The owner column: a row is (owner, id) on an owned table.
        self.owner = config.owner

    @property
    def mirrors(self) -> tuple[str, ...]:
        return tuple(name for name in (self.search, self.cache) if name is not None)

    def key(self, entry: OutboxEntry) -> dict[str, Any]:
        """The ``where`` naming the row of ``entry``: its id, and its owner on an owned
        table (two owners may each hold the id)."""
        if self.owner is None or entry.owner is None:
            return {"id": entry.id}
        return {"id": entry.id, self.owner: entry.owner}

    def entries(
        self,
        action: Literal["index", "update", "delete", "sync"],
        rows: Iterable[Mapping[str, Any]],
        *,
        owner: str,
        shard: str | None = None,
    ) -> list[dict[str, Any]]:
        """The entries of a write of ``rows`` (each with its ``id``) by ``owner``."""
        entries: list[dict[str, Any]] = []
        for row in rows:
            row_id = str(row["id"])
            if self.search is not None:
                entry: dict[str, Any] = {
                    "mirror": self.search,
                    "action": action,
                    "table": self.table,
                    "id": row_id,
                }
                if self.owner is not None:
                    entry["owner"] = owner
                if action == "index":
                    entry["values"] = _document(row)
                elif action == "update":
                    entry["values"] = _document({k: v for k, v in row.items() if k != "id"})
                elif action == "sync" and shard is not None:
                    entry["shard"] = shard
                entries.append(entry)
            if self.cache is not None:
                entries.append(
                    {
                        "mirror": self.cache,
                        "action": "invalidate",
                        "table": self.table,
                        "id": row_id,
                        "key": cache_key(self.table, owner, row_id),
                    }
                )
        return entries


def _document(row: Mapping[str, Any]) -> dict[str, Any]:
    """Row values as a document: datetimes in ISO 8601, as SQL sources read them back."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
