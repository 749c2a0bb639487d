"""Values bound by their column's declared type, and refused when the column cannot hold them.

:meth:`wf78_sql.statements.TableSql.encode` passes a value of the column's own type
straight through; everything else comes here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from wf78_core.plugin import InvalidOperation, TableSchema

from .dialect import Dialect

__all__ = ["Limit", "check_fits", "convert", "text_limits"]

# (characters a value may have unchecked, most characters, most bytes) of one text column.
Limit = tuple[int, int, int]

_BINDABLE = (str, int, float, bytes)
_JSON_ENCODER = msgspec.json.Encoder()
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
# Characters or bytes beyond which no value reaches a column (max_allowed_packet is 1 GiB at
# most): such a column needs no check.
_UNLIMITED = 1 << 30


def text_limits(
    schema: TableSchema,
    dialect: Dialect,
    limits: Mapping[str, tuple[int | None, int | None]] | None,
) -> dict[str, Limit]:
    """The text columns a value can be too long for, from the physical table's own
    ``limits`` (characters, bytes) or else the dialect's types. UTF-8 takes at most 4
    bytes a character, so a value of at most ``bytes // 4`` characters needs no check."""
    found: dict[str, Limit] = {}
    for name, kind in schema.columns.items():
        if kind != "text":
            continue
        if limits is not None and name in limits:
            characters, size = limits[name]
        else:
            declared = dialect.key_limit if name in ("id", schema.owner) else dialect.text_limit
            characters, size = declared if declared is not None else (None, None)
        if characters is None:
            characters = size
        if size is None and characters is not None:
            size = characters * 4
        if characters is None or size is None or min(characters, size) >= _UNLIMITED:
            continue
        found[name] = (min(characters, size // 4), characters, size)
    return found


def check_fits(value: str, where: str, limit: Limit, source: str) -> None:
    """InvalidOperation naming ``where`` (field, column and table) when ``value`` has more
    characters or bytes than the column holds: MySQL's ``INSERT IGNORE`` would cut it
    silently, whatever the session's mode."""
    _, characters, size = limit
    if len(value) > characters:
        raise InvalidOperation(
            f"{where} has {len(value)} characters; the column holds at most {characters}",
            data_source=source,
        )
    encoded = len(value.encode("utf-8", "surrogatepass"))
    if encoded > size:
        raise InvalidOperation(
            f"{where} is {encoded} bytes in UTF-8; the column holds at most {size} bytes",
            data_source=source,
        )


def convert(
    kind: str, value: Any, where: str, dialect: Dialect, limit: Limit | None, source: str
) -> Any:
    """``value`` (not None) as a column of type ``kind`` stores and compares it: numbers as
    text for text columns, numeric text as numbers for int and float ones, bools as 0/1,
    json as text, datetimes per dialect; InvalidOperation naming ``where`` otherwise."""
    if kind == "text":
        if isinstance(value, int | float | str):
            try:
                text = str(int(value) if isinstance(value, bool) else value)
            except ValueError as error:  # an int too long to print
                raise InvalidOperation(
                    f"{where} is a number too long for a text column", data_source=source
                ) from error
            if limit is not None and len(text) > limit[0]:
                check_fits(text, where, limit, source)
            return text
    elif kind in ("int", "float") and isinstance(value, str):
        return _number(kind, value, where, source)
    elif kind == "json":
        try:
            return _JSON_ENCODER.encode(value).decode()
        except (msgspec.EncodeError, TypeError) as error:
            raise InvalidOperation(
                f"{where} is not JSON-encodable: {error}", data_source=source
            ) from error
    elif kind == "bool":
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return int(value)
        raise InvalidOperation(f"{where} must be a bool, got {value!r}", data_source=source)
    elif kind == "datetime":
        return _datetime(value, where, dialect, source)
    if isinstance(value, _BINDABLE):
        return value
    raise InvalidOperation(
        f"{where} has unsupported type {type(value).__name__}", data_source=source
    )


def _number(kind: str, value: str, where: str, source: str) -> int | float:
    """Numeric text for an int or float column, as the number it stands for."""
    text = value.strip()
    if kind == "int":
        if _INTEGER.fullmatch(text):
            return int(text)
        raise InvalidOperation(
            f"{where} must be an integer, got {_shown(value)}", data_source=source
        )
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if math.isfinite(number):
        return number
    raise InvalidOperation(
        f"{where} must be a finite number, got {_shown(value)}", data_source=source
    )


def _datetime(value: Any, where: str, dialect: Dialect, source: str) -> Any:
    if isinstance(value, datetime):
        return dialect.store_datetime(value)
    if isinstance(value, str):
        try:
            return dialect.store_datetime(datetime.fromisoformat(value))
        except ValueError as error:
            raise InvalidOperation(
                f"{where} is not an ISO 8601 datetime: {value!r}", data_source=source
            ) from error
    raise InvalidOperation(
        f"{where} must be a datetime or ISO string, got {value!r}", data_source=source
    )


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 40 else repr(value[:40] + "...")
