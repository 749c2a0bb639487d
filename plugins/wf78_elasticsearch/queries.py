"""Operation fields turned into query DSL, and hits turned back into documents."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["as_ids", "document", "sort_clause", "where_query"]


def where_query(where: Mapping[str, Any] | None) -> dict[str, Any]:
    """Equality filters ANDed, as SQL sources read ``where``: a list value means any of
    them (``terms``), ``None`` means the field is missing, ``id`` matches document ids.

    ``term`` compares exact values: a string matches a ``keyword`` field as written, but a
    ``text`` field only by its analysed tokens (map such fields as ``keyword`` to filter).
    """
    if not where:
        return {"match_all": {}}
    filters: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for name, value in where.items():
        if name == "id":
            filters.append({"ids": {"values": as_ids(value)}})
        elif value is None:
            missing.append({"exists": {"field": name}})
        elif isinstance(value, list | tuple):
            filters.append({"terms": {name: list(value)}})
        else:
            filters.append({"term": {name: value}})
    query: dict[str, Any] = {}
    if filters:
        query["filter"] = filters
    if missing:
        query["must_not"] = missing
    return {"bool": query}


def as_ids(value: Any) -> list[str]:
    """One id or a list of them, as the strings Elasticsearch keeps ``_id`` as."""
    values = value if isinstance(value, list | tuple) else [value]
    return [str(item) for item in values]


def sort_clause(order: Sequence[str]) -> list[dict[str, Any]]:
    """``["name", "-qty", "at desc"]`` as a ``sort`` list; ValueError on a malformed entry."""
    clauses: list[dict[str, Any]] = []
    for entry in order:
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"bad order entry {entry!r}")
        parts = entry.split()
        if len(parts) == 1:
            field, direction = parts[0], "asc"
            if field.startswith("-"):
                field, direction = field[1:], "desc"
        elif len(parts) == 2 and parts[1].lower() in ("asc", "desc"):
            field, direction = parts[0], parts[1].lower()
        else:
            raise ValueError(
                f"bad order entry {entry!r} (expected 'field', 'field asc', 'field desc' "
                "or '-field')"
            )
        clauses.append({field: {"order": direction}})
    return clauses


def document(hit: Mapping[str, Any]) -> dict[str, Any]:
    """A hit or a fetched document as a row: its ``_source`` with ``id`` = ``_id`` first."""
    source = hit.get("_source")
    row: dict[str, Any] = {"id": hit["_id"]}
    if isinstance(source, Mapping):
        row.update(source)
    row["id"] = hit["_id"]
    return row
