"""Operation fields turned into query DSL, and hits turned back into documents."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "as_ids",
    "document",
    "exact_field",
    "matches",
    "sort_clause",
    "sort_rows",
    "where_query",
]


def exact_field(schema: Mapping[str, str] | None, name: str) -> str:
    """The field that compares ``name`` exactly: for a declared ``text`` column its
    ``.keyword`` sub-field (what dynamic mapping adds), else the field itself."""
    return f"{name}.keyword" if schema is not None and schema.get(name) == "text" else name


def where_query(
    where: Mapping[str, Any] | None,
    schema: Mapping[str, str] | None = None,
    *,
    keyed: bool = False,
) -> dict[str, Any]:
    """Equality filters ANDed, as SQL sources read ``where``: a list value means any of
    them (``terms``), ``None`` means the field is missing, ``id`` matches document ids (with
    ``keyed``, documents named by owner and id (:mod:`.keys`), the ``id`` field instead).

    ``term`` compares exact values: a string matches a ``keyword`` field as written, but a
    ``text`` field only by its analysed tokens (``acme`` would match ``Acme Corp``). The text
    columns of a declared table (``schema``) filter on their ``.keyword`` sub-field; map other
    fields as ``keyword`` to filter them exactly.
    """
    if not where:
        return {"match_all": {}}
    filters: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for name, value in where.items():
        if name == "id" and not keyed:
            filters.append({"ids": {"values": as_ids(value)}})
            continue
        if name == "id" and value is not None:
            value = as_ids(value) if isinstance(value, list | tuple) else str(value)
        if value is None:
            missing.append({"exists": {"field": exact_field(schema, name)}})
        elif isinstance(value, list | tuple):
            filters.append({"terms": {exact_field(schema, name): list(value)}})
        else:
            filters.append({"term": {exact_field(schema, name): value}})
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


def sort_clause(
    order: Sequence[str], schema: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """``["name", "-qty", "at desc"]`` as a ``sort`` list; ValueError on a malformed entry.
    A declared table's (``schema``) text columns sort on their ``.keyword`` sub-field, and its
    columns no document has yet sort as missing rather than failing the search."""
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
        if schema is not None and field in schema:
            spec = {"order": direction, "unmapped_type": "keyword"}
            clauses.append({exact_field(schema, field): spec})
        else:
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


def matches(row: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Whether a document passes equality filters as :func:`where_query` states them, compared
    with the values it stores (exactly: ``"1"`` is not ``1``): a list means any of them,
    ``None`` that the field is missing or null; a field holding a list passes when one of its
    values does."""
    for name, wanted in filters.items():
        value = row.get(name)
        held = value if isinstance(value, list) else [value]
        if wanted is None:
            if any(item is not None for item in held):
                return False
            continue
        options = wanted if isinstance(wanted, list | tuple) else [wanted]
        if not any(_same(item, option) for item in held for option in options):
            return False
    return True


def _same(stored: Any, wanted: Any) -> bool:
    # True == 1 in Python; a term filter does not confuse a boolean with a number.
    return (
        stored is not None
        and stored == wanted
        and isinstance(stored, bool) == isinstance(wanted, bool)
    )


def sort_rows(rows: list[dict[str, Any]], clauses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` ordered by :func:`sort_clause` clauses (built without a schema) as
    Elasticsearch orders hits: documents missing a field last, in either direction.
    TypeError when a field's values do not compare."""
    for clause in reversed(clauses):  # stable sorts, least significant first
        ((field, spec),) = clause.items()
        present = [row for row in rows if row.get(field) is not None]
        absent = [row for row in rows if row.get(field) is None]
        present.sort(key=lambda row: row[field], reverse=spec["order"] == "desc")
        rows = present + absent
    return rows
