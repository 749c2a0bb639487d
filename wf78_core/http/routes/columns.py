"""What the data routes know of one configured table: its columns, their converters, limits.

A converter turns what a caller sent for a column (a JSON value, or the text of a query or
form field) into the column's type, or raises a 400 naming the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from wf78_core.config import Config, TableConfig
from wf78_core.config.schema import AnswerMode
from wf78_core.http.routes.answers import bad, kind_of, shown

__all__ = [
    "CONVERTERS",
    "DEFAULT_MAX_PARS",
    "FALSE",
    "TRUE",
    "Converter",
    "TableRoutes",
    "has_search_source",
]

#: The most values ``pars`` (and ``rows``, ``ids``, a ``where`` list) may carry by default.
DEFAULT_MAX_PARS = 1000

Converter = Callable[[Any, str], Any]

_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
#: How a yes/no parameter or column may be written.
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off", ""})


def _text(value: Any, field: str) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return str(value)  # koa78 columns were all text; numbers arrive as JSON numbers
        except ValueError:  # an int too long to print
            raise bad(field, "is a number too long for a text column") from None
    raise bad(field, f"must be a string, got {kind_of(value)}")


def _int(value: Any, field: str) -> Any:
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None  # an empty form field
        if _INTEGER.fullmatch(text) and len(text) <= 20:
            number = int(text)
    if number is None:
        raise bad(field, f"must be an integer, got {shown(value)}")
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise bad(field, "is out of the 64-bit integer range")
    return number


def _float(value: Any, field: str) -> Any:
    if value is None:
        return None
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        if isinstance(value, str) and not value.strip():
            return None
        try:
            number = float(value)
        except (ValueError, OverflowError):
            raise bad(field, f"must be a number, got {shown(value)}") from None
    else:
        raise bad(field, f"must be a number, got {kind_of(value)}")
    if not math.isfinite(number):
        raise bad(field, "must be a finite number")
    return number


def _bool(value: Any, field: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered == "":
            return None
        if lowered in TRUE:
            return True
        if lowered in FALSE:
            return False
    raise bad(field, f"must be true or false, got {shown(value)}")


def _json(value: Any, field: str) -> Any:
    return value


def _datetime(value: Any, field: str) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise bad(field, f"must be an ISO 8601 datetime, got {shown(value)}") from None
        return value
    raise bad(field, f"must be an ISO 8601 datetime string, got {kind_of(value)}")


CONVERTERS: dict[str, Converter] = {
    "text": _text,
    "int": _int,
    "float": _float,
    "bool": _bool,
    "json": _json,
    "datetime": _datetime,
}


class TableRoutes:
    """What the routes need of one configured table, computed once: its columns and their
    converters, the owner column, the request limits, whether it has a search source
    (``mUpdateElkByid``) and whether its route answers as koa78 did (``koa78``)."""

    __slots__ = (
        "columns",
        "config",
        "converters",
        "id_kind",
        "koa78",
        "max_page",
        "max_pars",
        "name",
        "owner",
        "schema",
        "searchable",
        "writable",
    )

    def __init__(
        self,
        name: str,
        config: TableConfig,
        *,
        searchable: bool = False,
        max_pars: int = DEFAULT_MAX_PARS,
        max_page: int = 1000,
        answers: AnswerMode = "rest",
    ) -> None:
        self.name = name
        self.config = config
        self.searchable = searchable
        # ``[http] answers = "koa78"`` (or its route's entry in ``answers_by_route``).
        self.koa78 = answers == "koa78"
        self.max_pars = max_pars
        self.max_page = max_page
        self.owner = config.owner
        # "text": callers choose the ids (required on insert); "snowflake": digits.
        self.id_kind = config.id
        self.columns: tuple[str, ...] = tuple(config.columns)
        self.writable = frozenset(self.columns)
        self.schema = config.schema()
        self.converters: dict[str, Converter] = {
            column: CONVERTERS[kind] for column, kind in self.schema.items()
        }


def has_search_source(config: Config, table: TableConfig) -> bool:
    """What ``Table.update_search_doc`` writes to: a search mirror, or a data source of type
    elasticsearch."""
    if table.search_mirror is not None:
        return True
    name = table.data_source
    configured = config.datasources.get(name) if name is not None else None
    kind = configured.type if configured is not None else name
    return kind == "elasticsearch"
