"""The 14 koa78 methods of a data route, each a call of one :class:`Table` method.

``cols`` = the columns ``pars`` refers to; ids are 1 to 64 digits, or on a table with
``id = "text"`` the caller's text ids, which inserts need: ``mid`` or ``values.id``
(``mAdd``, ``mByFirstField``), each row's id as in ``mAddManyByid`` (``mAddMany``); ``m``
then inserts with ``mid`` as ``mByid`` does.

- ``mAdd``: ``pars`` (the leading columns) or ``values`` -> the new id.
- ``mAddMany``: ``pars`` flat (split into rows of the column count) or a list of arrays,
  or ``rows`` -> the new ids.
- ``mAddManyByid``: as ``mAddMany`` with each row's id last (koa78's order); existing ids are
  skipped -> how many were inserted.
- ``mUpdate``, ``mUpdateByid``: ``mid`` + ``pars``/``values`` (or ``values`` with ``id``)
  -> rows changed; 404 when the caller has no such row.
- ``mUpdateMany``: rows ``[...cols, id]`` (flat or nested, id last as in koa78) or ``rows``
  -> rows changed.
- ``m``: update the row ``mid`` when the caller has it, else insert with a new id -> id.
- ``mByid``: the same, but an insert keeps ``mid`` as the id -> id.
- ``mByFirstField``: update the caller's row whose first column matches, else insert -> id.
- ``get``, ``getbyBcid`` (``bcid`` = the owner; ``public_read`` tables, no identity
  needed): ``where`` (object) and/or koa78's ``pars`` as equality filters on ``cols``;
  without ``pars``, ``cols`` picks the columns read; ``order``, ``getstart``,
  ``getnumber`` (<= ``max_page``), ``total=1`` -> rows, or ``{"rows", "total"}``.
- ``mdel``: ``mid`` -> 1; 404 when the caller has no such row.
- ``mdelmany``: ``ids`` (array or comma-separated; ``pars`` too) -> rows deleted.
- ``mUpdateElkByid``: ``pars = [id, document]`` or ``mid`` + ``values`` -> 1; 404 as above.

A route answering as koa78 (:mod:`.koa78`) gives ``back`` koa78's types and answers a write
that matched nothing with HTTP 200 and koa78's negative ``res`` (:class:`.koa78.Missed`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from wf78_core.data.table import Table
from wf78_core.http.routes.answers import bad
from wf78_core.http.routes.columns import TableRoutes
from wf78_core.http.routes.koa78 import (
    DEFAULT_ORDER,
    count_missed,
    local_rows,
    no_row,
    row_or_count,
)
from wf78_core.http.routes.params import (
    decoded,
    flag,
    list_param,
    mid,
    object_param,
    page,
    row_id,
    text_param,
)
from wf78_core.http.routes.rows import named, order, read_cols, rows, values, where

__all__ = ["HANDLERS", "METHODS", "Handler"]

#: ``handler(table_routes, table, params) -> back``: the table is scoped to the caller.
Handler = Callable[[TableRoutes, Table, dict[str, Any]], Awaitable[Any]]


def _new_row(info: TableRoutes, params: dict[str, Any], *, required: bool) -> dict[str, Any]:
    """The values of a row to insert; on a table with text ids with its id, from
    ``values.id`` or ``mid`` (``required``: a 400 without one)."""
    text = info.id_kind == "text"
    checked = values(info, params, allow_id=text)
    if text and "id" not in checked:
        row = mid(params, info.id_kind, required=False)
        if row is not None:
            checked["id"] = row
        elif required:
            raise bad(
                "mid",
                f"required: table {info.name!r} has text ids, chosen by the caller "
                "(mid or values.id)",
            )
    return checked


async def _m_add(info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    return await table.add(_new_row(info, params, required=True))


async def _m_add_many(info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    ids = await table.add_many(rows(info, params, with_id=info.id_kind == "text"))
    return len(ids) if info.koa78 else ids  # koa78: how many rows were inserted


async def _m_add_many_by_id(info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    inserted = await table.add_many_by_id(rows(info, params, with_id=True))
    if info.koa78 and not inserted:
        raise count_missed(info, "mAddManyByid", 0)
    return inserted


def _row_values(
    info: TableRoutes, params: dict[str, Any], *, required: bool = True
) -> tuple[str | None, dict[str, Any]]:
    """The row a by-id write is about (``mid``; in koa78 mode an ``id`` named in ``cols``
    when ``mid`` is not given) and its values (``required``: a 400 without a row)."""
    row = mid(params, info.id_kind, required=required and not info.koa78)
    checked = values(info, params, allow_id=info.koa78)
    named_id = checked.pop("id", None)
    if row is None:
        row = named_id
    if row is None and required:
        raise bad("mid", "required: the id of the row")
    return row, checked


async def _m_update(info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    return await _update(info, table, params, "mUpdate")


async def _update(info: TableRoutes, table: Table, params: dict[str, Any], method: str) -> Any:
    row, checked = _row_values(info, params)
    assert row is not None
    changed = await table.update(row, checked)
    if not changed:
        raise no_row(info, method, row)
    return row_or_count(row, changed) if info.koa78 else changed


async def _m_update_by_id(info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    # koa78 took the id from ``mid``; the modern form may carry it in ``values``.
    given = object_param(params, "values")
    if given is not None and "id" in given:
        checked = named(info, given, "values", allow_id=True)
        if not await table.update_by_id(checked):
            raise no_row(info, "mUpdateByid", checked["id"])
        return checked["id"] if info.koa78 else 1
    return await _update(info, table, params, "mUpdateByid")


async def _m_update_many(info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    changed = await table.update_many(rows(info, params, with_id=True))
    if not info.koa78:
        return changed
    if not changed:
        raise count_missed(info, "mUpdateMany", "0")
    return str(changed)  # koa78 answered the count as text


async def _m(info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    if info.id_kind == "text":  # a new row's id is the caller's: mid, as mByid takes it
        return await _m_by_id(info, table, params)
    row, checked = _row_values(info, params, required=False)
    if row is not None and checked and await table.update(row, checked):
        return row
    return await table.add(checked)


async def _m_by_id(info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    given = object_param(params, "values")
    if given is not None and "id" in given:
        return await table.upsert(named(info, given, "values", allow_id=True))
    row, checked = _row_values(info, params)
    return await table.upsert({"id": row, **checked})


async def _m_by_first_field(info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    checked = _new_row(info, params, required=False)
    if info.columns and info.columns[0] not in checked:
        field = "values" if params.get("values") is not None else "pars"
        raise bad(field, f"the first column {info.columns[0]!r} is required")
    return await table.upsert_by_first_field(checked)


async def _get(info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    return await _read(info, table, params, None)


async def _get_by_bcid(info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    bcid = text_param(params, "bcid")
    if bcid is None:
        raise bad("bcid", "required: the owner whose public rows to read")
    return await _read(info, table, params, bcid)


async def _read(info: TableRoutes, table: Table, params: dict[str, Any], bcid: str | None) -> Any:
    filters, filtered = where(info, params)
    cols = None if filtered else read_cols(info, params)
    start, number = page(params, info.max_page)
    total = flag(params, "total")
    sort = order(params)
    if info.koa78:
        # koa78 read every column (cols only named the filters) newest first by default.
        cols = None
        sort = DEFAULT_ORDER if sort is None else sort
    options: dict[str, Any] = {
        "where": filters,
        "cols": cols,
        "order": sort,
        "start": start,
        "number": number,
        "since": text_param(params, "since"),
        "until": text_param(params, "until"),
    }
    back: Any
    if bcid is None:
        if total:
            found, count = await table.get(total=True, **options)
            back = {"rows": found, "total": count}
        else:
            back = await table.get(**options)
    elif total:
        found, count = await table.get_public(bcid, total=True, **options)
        back = {"rows": found, "total": count}
    else:
        back = await table.get_public(bcid, **options)
    return local_rows(back) if info.koa78 else back


async def _m_del(info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    row = mid(params, info.id_kind, required=False)
    if row is None:
        pars = list_param(params, "pars", limit=info.max_pars)
        if not pars or len(pars) != 1:
            raise bad("mid", "required: the id of the row")
        row = row_id(pars[0], "pars[0]", info.id_kind)
    deleted = await table.delete(row)
    if not deleted:
        raise no_row(info, "mdel", row)
    return row if info.koa78 else deleted  # koa78 answered the id


async def _m_del_many(info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    field = "ids" if params.get("ids") is not None else "pars"
    ids = list_param(params, field, commas=True, limit=info.max_pars)
    if not ids:
        raise bad("ids", "required: the ids of the rows (a list or comma-separated)")
    deleted = await table.delete_many(
        [row_id(value, f"{field}[{i}]", info.id_kind) for i, value in enumerate(ids)]
    )
    if not info.koa78:
        return deleted
    if not deleted:
        raise count_missed(info, "mdelmany", "0")
    return str(deleted)  # koa78 answered the count as text


async def _m_update_elk_by_id(info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    # koa78: pars = [id, JSON document]; or mid with values / pars for the columns.
    if not info.searchable:  # refused up front, naming the method
        raise bad(
            "mUpdateElkByid",
            f"table {info.name!r} has no search source (a search_mirror, or a data_source "
            "of type 'elasticsearch')",
        )
    row = mid(params, info.id_kind, required=False)
    if row is not None:
        checked = values(info, params)
    else:
        pars = list_param(params, "pars", limit=info.max_pars)
        if not pars or len(pars) != 2:
            raise bad("pars", "expected [id, document] (or mid with values)")
        row = row_id(pars[0], "pars[0]", info.id_kind)
        document = pars[1]
        if isinstance(document, str):
            document = decoded(document, "pars[1]")
        checked = named(info, document, "pars[1]")
    changed = await table.update_search_doc(row, checked)
    if not changed:
        raise no_row(info, "mUpdateElkByid", row)  # koa78 had no code for it: 404 always
    return changed


HANDLERS: dict[str, Handler] = {
    "mAdd": _m_add,
    "mAddMany": _m_add_many,
    "mAddManyByid": _m_add_many_by_id,
    "mUpdate": _m_update,
    "mUpdateByid": _m_update_by_id,
    "mUpdateMany": _m_update_many,
    "m": _m,
    "mByid": _m_by_id,
    "mByFirstField": _m_by_first_field,
    "get": _get,
    "getbyBcid": _get_by_bcid,
    "mdel": _m_del,
    "mdelmany": _m_del_many,
    "mUpdateElkByid": _m_update_elk_by_id,
}

#: The koa78 method names, in the order the documentation lists them.
METHODS: tuple[str, ...] = tuple(HANDLERS)
