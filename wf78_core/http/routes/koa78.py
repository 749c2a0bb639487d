"""koa78-base78's answers, for its clients: ``[http] answers = "koa78"`` (or a route's entry
in ``[http] answers_by_route``).

What changes against the default (``"rest"``), read from koa78's Base78 controller and
router (README "Moving from koa78" has the whole table):

- a write that matched nothing answers HTTP 200 with koa78's negative ``res``, ``kind``
  ``"string"`` and a text (or count) ``back``, not a 404: :data:`MISS_CODES`;
- success answers ``kind`` ``"json"`` (koa78's default ``backtype``);
- ``back`` has koa78's types: the row's id for ``mUpdate``, ``mUpdateByid`` and ``mdel``,
  counts for ``mAddMany`` (a number), ``mUpdateMany`` and ``mdelmany`` (text);
- rows read carry ``uptime`` as this server's local ``YYYY-MM-DD HH:mm:ss``;
- ``get`` orders by ``id desc`` unless ``order`` says otherwise, and ``cols`` only names the
  columns ``pars`` filters on (koa78 read every column);
- a write's ``cols`` may name the system fields ``id``, ``upby`` and ``uptime``
  (:data:`SYSTEM_FIELDS`; see :mod:`.rows`).

Every other failure keeps its HTTP status and envelope in both modes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from wf78_core.errors import RowNotFound
from wf78_core.http.routes.answers import Failure
from wf78_core.http.routes.columns import TableRoutes

__all__ = [
    "DEFAULT_ORDER",
    "MISS_CODES",
    "SYSTEM_FIELDS",
    "Missed",
    "count_missed",
    "local_rows",
    "no_row",
    "row_or_count",
]

#: koa78's ``res`` when a write matched nothing (its Base78 controller's codes). ``m``,
#: ``mByid`` and ``mByFirstField`` update through its ``mUpdateByid``, hence its code.
MISS_CODES: dict[str, int] = {
    "mAddManyByid": -1003,
    "mUpdateByid": -2001,
    "m": -2001,
    "mByid": -2001,
    "mByFirstField": -2001,
    "mUpdate": -2002,
    "mUpdateMany": -2003,
    "mdel": -3001,
    "mdelmany": -3002,
}

#: The columns every koa78 table had, which its ``cols`` check let through in any request.
SYSTEM_FIELDS = frozenset({"id", "upby", "uptime"})

#: koa78's ``order`` when a request gives none.
DEFAULT_ORDER = "id desc"

_LOCAL_TIME = "%Y-%m-%d %H:%M:%S"  # dayjs's YYYY-MM-DD HH:mm:ss


class Missed(Exception):
    """koa78 mode: the method matched nothing. HTTP 200 with koa78's negative ``res``,
    ``kind`` ``"string"``, ``errmsg`` saying why and ``back`` typed as koa78 returned it."""

    def __init__(self, res: int, message: str, back: Any) -> None:
        super().__init__(message)
        self.res = res
        self.message = message
        self.back = back


def no_row(info: TableRoutes, method: str, row: str) -> Exception:
    """The answer of a single-row write that found no row of the caller: 404, or in koa78
    mode :class:`Missed` with the method's code (if koa78 had one) and the message as
    ``back``. Worded as
    ``Table``'s :class:`RowNotFound`: another owner's id reads like a missing one."""
    message = str(RowNotFound(info.name, row))
    if info.koa78 and method in MISS_CODES:
        return Missed(MISS_CODES[method], message, message)
    return Failure(404, "not_found", message)


def count_missed(info: TableRoutes, method: str, back: Any) -> Missed:
    """koa78 mode: a bulk write that changed no row (``back`` as koa78 typed its zero)."""
    verb = "inserted" if method == "mAddManyByid" else "matched"
    message = f"table {info.name!r}: {method} {verb} no row of this caller"
    return Missed(MISS_CODES[method], message, back)


def row_or_count(row: str, count: int) -> str:
    """koa78's ``back`` of ``mUpdate`` and ``mUpdateByid``: the row's id when one row
    changed, else the count as text."""
    return row if count == 1 else str(count)


def local_rows(back: Any) -> Any:
    """Rows read (a list, or ``{"rows", "total"}``) with ``uptime`` as koa78 showed it."""
    found = back["rows"] if isinstance(back, dict) else back
    if isinstance(found, list):
        _localize(found)
    return back


def _localize(rows: Iterable[Any]) -> None:
    for row in rows:
        if isinstance(row, dict) and "uptime" in row:
            row["uptime"] = _local_time(row["uptime"])


def _local_time(value: Any) -> Any:
    """``uptime`` (stored in UTC; a time without zone is UTC) in this server's local time,
    ``YYYY-MM-DD HH:mm:ss``; anything that is not a time is left as it is."""
    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    if not isinstance(moment, datetime):
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone().strftime(_LOCAL_TIME)
