"""A table's values in a request: rows to write, filters and columns to read.

``pars`` keeps koa78's positional meaning: values for the columns named by ``cols``
(default: the table's declared columns, in order). The modern forms are a named ``values``
object and a ``rows`` list. Every value is converted to its column's type here, so the
table sees only checked values.

On a route answering as koa78 (``TableRoutes.koa78``) a write's ``cols`` may name koa78's
system fields, as its ``cols`` check allowed: ``upby`` and ``uptime`` values are dropped
(the table sets them), and an ``id`` value is the row's id where the caller asks for it
(``values(..., allow_id=True)``), else dropped: a row's id never changes, and bulk rows
carry theirs last.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wf78_core.http.routes.answers import bad, kind_of, too_many
from wf78_core.http.routes.columns import TableRoutes
from wf78_core.http.routes.koa78 import SYSTEM_FIELDS
from wf78_core.http.routes.params import (
    decoded,
    list_param,
    names_param,
    object_param,
    row_id,
)

__all__ = ["named", "order", "read_cols", "rows", "values", "where"]


def _write_columns(info: TableRoutes, params: Mapping[str, Any]) -> tuple[str, ...]:
    """The columns ``pars`` refers to: ``cols`` (writable ones only) or the declared ones."""
    names = names_param(params, "cols")
    if names is None:
        return info.columns
    for index, name in enumerate(names):
        if name not in info.writable and not (info.koa78 and name in SYSTEM_FIELDS):
            raise bad(
                f"cols[{index}]",
                f"unknown or unwritable column {name!r} (writable: {', '.join(info.columns)})",
            )
    return tuple(names)


def named(info: TableRoutes, given: Any, field: str, *, allow_id: bool = False) -> dict[str, Any]:
    """A ``values`` object: writable columns only, each converted to its column type."""
    if not isinstance(given, dict):
        raise bad(field, f"must be an object of column to value, got {kind_of(given)}")
    out: dict[str, Any] = {}
    for column, value in given.items():
        where = f"{field}.{column}"
        if column == "id" and allow_id:
            out["id"] = row_id(value, where, info.id_kind)
        elif column in info.writable:
            out[column] = info.converters[column](value, where)
        elif column in info.schema:
            raise bad(where, "is set by the table and cannot be written")
        else:
            raise bad(where, f"unknown column (writable: {', '.join(info.columns)})")
    return out


def _positional(
    info: TableRoutes,
    pars: list[Any],
    columns: tuple[str, ...],
    *,
    start: int = 0,
    count: int | None = None,
    take_id: bool = False,
) -> dict[str, Any]:
    """``pars[start:start+count]`` as values of ``columns``, each converted and named
    by its position in ``pars`` (``take_id``: with the value of a system field ``id``)."""
    count = len(pars) - start if count is None else count
    out: dict[str, Any] = {}
    for offset, column in enumerate(columns[:count]):
        _put(info, out, column, pars[start + offset], f"pars[{start + offset}]", take_id)
    return out


def _put(
    info: TableRoutes, out: dict[str, Any], column: str, value: Any, field: str, take_id: bool
) -> None:
    """``out[column]`` = ``value`` converted; a system field named in koa78 mode's ``cols``
    is dropped, but for ``id`` when ``take_id``."""
    if column in info.writable:
        out[column] = info.converters[column](value, field)
    elif column == "id" and take_id:
        out["id"] = row_id(value, field, info.id_kind)


def values(
    info: TableRoutes, params: Mapping[str, Any], *, allow_id: bool = False
) -> dict[str, Any]:
    """One row's values: ``values`` by name (``allow_id``: with its ``id``, also from
    ``cols`` in koa78 mode), or ``pars`` for the leading columns of ``cols`` (koa78 wrote
    as many columns as it was given values)."""
    given = object_param(params, "values")
    if given is not None:
        return named(info, given, "values", allow_id=allow_id)
    pars = list_param(params, "pars", limit=info.max_pars)
    if not pars:
        raise bad("pars", "required: the values of the columns (or a values object)")
    columns = _write_columns(info, params)
    if len(pars) > len(columns):
        raise bad(
            "pars",
            f"{len(pars)} values for {len(columns)} columns ({', '.join(columns)})",
        )
    return _positional(info, pars, columns, take_id=allow_id)


def rows(info: TableRoutes, params: Mapping[str, Any], *, with_id: bool) -> list[dict[str, Any]]:
    """Many rows: ``rows`` (objects, or arrays in column order), or ``pars`` as a flat list
    split into rows of the column count (``with_id``: the row's id last) or a list of
    arrays."""
    columns = _write_columns(info, params)
    width = len(columns) + (1 if with_id else 0)
    if params.get("rows") is not None:
        listed = list_param(params, "rows", limit=info.max_pars)
        assert listed is not None
        return [_one_row(info, row, f"rows[{i}]", columns, with_id) for i, row in enumerate(listed)]
    pars = list_param(params, "pars", limit=info.max_pars)
    if not pars:
        raise bad("pars", "required: the values of the rows (or a rows list)")
    if all(isinstance(row, list) for row in pars):
        return [_one_row(info, row, f"pars[{i}]", columns, with_id) for i, row in enumerate(pars)]
    if any(isinstance(value, list | dict) for value in pars):
        raise bad("pars", "must be a flat list of values or a list of rows, not a mix")
    if len(pars) % width:
        shape = ", ".join(columns) + (", id" if with_id else "")
        raise bad(
            "pars",
            f"{len(pars)} values do not split into rows of {width} ({shape})",
        )
    out = []
    for start in range(0, len(pars), width):
        row: dict[str, Any] = {}
        if with_id:
            last = start + width - 1
            row["id"] = row_id(pars[last], f"pars[{last}]", info.id_kind)
        row.update(_positional(info, pars, columns, start=start))
        out.append(row)
    return out


def _one_row(
    info: TableRoutes, row: Any, field: str, columns: tuple[str, ...], with_id: bool
) -> dict[str, Any]:
    if isinstance(row, str) and row.strip()[:1] in ("{", "["):
        row = decoded(row.strip(), field)  # a row sent as JSON text in a form
    if isinstance(row, dict):
        out = named(info, row, field, allow_id=with_id)
        if with_id and "id" not in out:
            raise bad(f"{field}.id", "required")
        return out
    if not isinstance(row, list):
        raise bad(field, f"must be an object or an array, got {kind_of(row)}")
    width = len(columns) + (1 if with_id else 0)
    if len(row) != width:
        shape = ", ".join(columns) + (", id" if with_id else "")
        raise bad(field, f"{len(row)} values for a row of {width} ({shape})")
    out = {}
    if with_id:  # koa78 puts the id after the columns
        out["id"] = row_id(row[-1], f"{field}[{len(columns)}]", info.id_kind)
    for index, column in enumerate(columns):
        _put(info, out, column, row[index], f"{field}[{index}]", False)
    return out


def where(info: TableRoutes, params: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Equality filters of a read: ``where`` by name, and koa78's ``pars`` for the
    columns of ``cols`` (default: the declared ones). True when ``pars`` filtered."""
    filters: dict[str, Any] = {}
    given = object_param(params, "where")
    if given is not None:
        for column, value in given.items():
            field = f"where.{column}"
            if column not in info.schema:
                raise bad(field, "unknown column")
            if column == info.owner:
                raise bad(field, "the owner column comes from the identity")
            filters[column] = _filter_value(info, column, value, field)
    pars = list_param(params, "pars", limit=info.max_pars)
    if not pars:
        return filters, False
    names = names_param(params, "cols")
    columns = tuple(names) if names is not None else info.columns
    if len(pars) > len(columns):
        raise bad("pars", f"{len(pars)} values for {len(columns)} columns ({', '.join(columns)})")
    for index, (column, value) in enumerate(zip(columns, pars, strict=False)):
        if column not in info.schema or column == info.owner:
            raise bad(f"cols[{index}]", f"unknown column {column!r}")
        filters[column] = _filter_value(info, column, value, f"pars[{index}]")
    return filters, True


def _filter_value(info: TableRoutes, column: str, value: Any, field: str) -> Any:
    if column == "id":
        return row_id(value, field, info.id_kind)
    if isinstance(value, list):
        if len(value) > info.max_pars:
            raise too_many(field, len(value), info.max_pars)
        return [info.converters[column](item, f"{field}[{i}]") for i, item in enumerate(value)]
    return info.converters[column](value, field)


def read_cols(info: TableRoutes, params: Mapping[str, Any]) -> list[str] | None:
    """``cols`` of a read: the columns to return (any of the schema's)."""
    names = names_param(params, "cols")
    if names is None:
        return None
    for index, name in enumerate(names):
        if name not in info.schema:
            raise bad(f"cols[{index}]", f"unknown column {name!r}")
    return names


def order(params: Mapping[str, Any]) -> str | list[str] | None:
    value = params.get("order")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise bad("order", "must be a column name, 'col desc', or a list of them")
