"""Reading a data route's parameters: from the query string, a JSON body or a form body
(the body wins over the query), and each parameter's accepted forms.

A list parameter (``pars``, ``ids``, ``rows``, ``cols``) may be a JSON array, repeated
query/form keys (or ``name[]``), a JSON array in a string, or one value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import msgspec

from wf78_core.data.table import DEFAULT_NUMBER
from wf78_core.http.asgi import (
    MAX_JSON_DEPTH,
    BodyTooLarge,
    Receive,
    Scope,
    header,
    nested_deeper_than,
    read_body,
)
from wf78_core.http.routes.answers import Failure, bad, kind_of, shown, too_many
from wf78_core.http.routes.columns import FALSE, TRUE
from wf78_core.ids import IdKind, id_problem

__all__ = [
    "decoded",
    "flag",
    "list_param",
    "mid",
    "names_param",
    "object_param",
    "page",
    "read_params",
    "row_id",
    "text_param",
]

_DECODER = msgspec.json.Decoder()
_DIGITS = re.compile(r"[0-9]{1,64}")
_MAX_TEXT = 64  # bcid and other identifiers
_MAX_ID_INT = 10**64
_MAX_OFFSET = 1 << 62  # paging offsets past this overflow the databases' integers
# Parameters whose query/form value may be repeated (or sent as ``name[]``) to make a list.
_LIST_PARAMS = frozenset({"pars", "ids", "rows", "cols"})


async def read_params(scope: Scope, receive: Receive, max_body: int) -> dict[str, Any]:
    """Query-string parameters, overridden by the body's (JSON or form)."""
    raw_query = scope.get("query_string", b"")
    params: dict[str, Any] = _from_pairs(raw_query.decode("latin-1")) if raw_query else {}
    try:
        body = await read_body(receive, max_body, scope)
    except BodyTooLarge:
        raise Failure(413, "too_large", f"request body larger than {max_body} bytes") from None
    if not body.strip():
        return params
    content_type = (header(scope, b"content-type") or "").partition(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        params.update(_json_body(body))
    elif content_type == "application/x-www-form-urlencoded":
        params.update(_form_body(body))
    elif not content_type:
        params.update(_json_body(body) if body.lstrip()[:1] == b"{" else _form_body(body))
    else:
        raise Failure(
            415,
            "unsupported_media",
            f"body of type {content_type!r}: send application/json or "
            "application/x-www-form-urlencoded",
        )
    return params


def _from_pairs(text: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, values in parse_qs(text, keep_blank_values=True).items():
        listed = key.endswith("[]")
        name = key[:-2] if listed else key
        if name in _LIST_PARAMS and (listed or len(values) > 1):
            params[name] = list(values)
        else:
            params[name] = values[-1]
    return params


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        value = _DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError) as error:
        raise _invalid_json("body", error) from None
    if not isinstance(value, dict):
        raise bad("body", f"must be a JSON object, got {kind_of(value)}")
    if nested_deeper_than(value, text=body):
        for key, item in value.items():  # name the parameter that nests too deep
            if nested_deeper_than(item, MAX_JSON_DEPTH - 1):
                raise _too_deep(str(key))
    return value


def _form_body(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("body", "form body is not UTF-8") from None
    return _from_pairs(text)


def decoded(value: str, name: str) -> Any:
    """JSON sent as the text of parameter ``name`` (a form field, a query value)."""
    try:
        result = _DECODER.decode(value)
    except (msgspec.DecodeError, RecursionError) as error:
        raise _invalid_json(name, error) from None
    if nested_deeper_than(result, text=value):
        raise _too_deep(name)
    return result


def _too_deep(name: str) -> Failure:
    return bad(name, f"JSON nested more than {MAX_JSON_DEPTH} levels deep")


def _invalid_json(name: str, error: Exception) -> Failure:
    # msgspec raises RecursionError, not DecodeError, for arrays nested thousands deep.
    reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
    return bad(name, f"invalid JSON ({reason})")


def list_param(
    params: Mapping[str, Any], name: str, *, commas: bool = False, limit: int | None = None
) -> list[Any] | None:
    """A list parameter: a JSON array, repeated query/form keys, a JSON array in a string,
    (``commas``) a comma-separated string, or one value; 413 past ``limit`` items."""
    values = _any_list(params, name, commas)
    if limit is not None and values is not None and len(values) > limit:
        raise too_many(name, len(values), limit)
    return values


def _any_list(params: Mapping[str, Any], name: str, commas: bool) -> list[Any] | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            items = decoded(stripped, name)
            if not isinstance(items, list):
                raise bad(name, f"must be an array, got {kind_of(items)}")
            return items
        if commas:
            return [part.strip() for part in value.split(",") if part.strip()]
        return [value]
    if isinstance(value, dict):
        raise bad(name, "must be an array, got an object")
    return [value]


def object_param(params: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """An object parameter (``values``, ``where``), or JSON text of one."""
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().startswith("{"):
        value = decoded(value.strip(), name)
    if not isinstance(value, dict):
        raise bad(name, f"must be an object, got {kind_of(value)}")
    return value


def _digits_param(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise bad(name, f"must be digits, got {shown(value)}")
    if value > _MAX_OFFSET:
        raise bad(name, f"must be at most {_MAX_OFFSET}")
    return value


def page(params: Mapping[str, Any], max_page: int) -> tuple[int, int]:
    """``getstart`` and ``getnumber`` (at most ``max_page``)."""
    start = _digits_param(params, "getstart", 0)
    number = _digits_param(params, "getnumber", DEFAULT_NUMBER)
    if number > max_page:
        raise bad("getnumber", f"at most {max_page} rows per page, asked {number}")
    return start, number


def row_id(value: Any, field: str, kind: IdKind = "snowflake") -> str:
    """An id of a table whose ids are ``kind`` (snowflakes: 1 to 64 digits; text: see
    :func:`wf78_core.ids.id_problem`), as a string."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_ID_INT:
        value = str(value)
    text = value if isinstance(value, str) else ""  # "" fails: its problem says why
    problem = id_problem(text, kind)
    if problem is None:
        return text
    raise bad(field, f"{problem}, got {shown(value)}")


def mid(
    params: Mapping[str, Any], kind: IdKind = "snowflake", *, required: bool = True
) -> str | None:
    """``mid``, the id of the row a method is about."""
    value = params.get("mid")
    if value is None or value == "":
        if required:
            raise bad("mid", "required: the id of the row")
        return None
    return row_id(value, "mid", kind)


def flag(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    raise bad(name, f"must be 1 or 0, got {shown(value)}")


def text_param(params: Mapping[str, Any], name: str) -> str | None:
    """An identifier (``bcid``, ``since``): a non-empty string of at most 64 characters."""
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < _MAX_ID_INT:
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise bad(name, f"must be a non-empty string of at most {_MAX_TEXT} characters")
    return value


def names_param(params: Mapping[str, Any], name: str) -> list[str] | None:
    """``cols``: a list of names or a comma-separated string; ``all`` (koa78) = none given."""
    names = list_param(params, name, commas=True)
    if names is None:
        return None
    for index, item in enumerate(names):
        if not isinstance(item, str):
            raise bad(f"{name}[{index}]", f"must be a column name, got {kind_of(item)}")
    cleaned = [item.strip() for item in names if item.strip()]
    if not cleaned or cleaned == ["all"]:
        return None
    return cleaned
