"""The koa78 data routes: ``/{apisys}/{apimicro}/{Table}/{method}`` for configured tables.

Every configured ``route = "apisys/apimicro"`` claims the paths below it; everything else
goes to the wrapped app. Under a claimed prefix an unknown table or method is 404, a
method starting with ``_`` is 403 (koa78 refused those too), an HTTP method other than
GET or POST is 405.

Parameters come from the query string, a JSON body or a form body (the body wins over
the query). ``pars`` keeps koa78's positional meaning: values for the columns named by
``cols`` (default: the table's declared columns, in order). The modern forms are a named
``values`` object and a ``rows`` list. Answers are koa78's envelope
``{"res", "errmsg", "kind", "back"}``: ``res`` 0 with HTTP 200, or ``res`` = -status
with the fitting HTTP status and ``kind`` naming the error class.

Status mapping:

======  ===================  ======================================================
status  kind                 when
======  ===================  ======================================================
400     invalid              bad input (``errmsg`` names the field), InvalidOperation
401     unauthorized         no identity on a table with an owner
403     forbidden            ``_method``; ``getbyBcid`` without ``public_read``;
                             an identity without the table's owner field
404     not_found            unknown table or method; a single-row write or delete
                             by id that matched no row of the caller
405     method_not_allowed   not GET/POST (``Allow: GET, POST``)
409     conflict             non-retryable data-source error that is a duplicate
                             key or a violated constraint
413     too_large            body over ``max_body``; ``pars``, ``rows``, ``ids`` or a
                             ``where`` list of more than ``max_pars`` values
415     unsupported_media    a body that is neither JSON nor a form
429     (reserved)           for a rate-limiting plugin; wf78 itself never answers it
503     overloaded           the engine's queue is full (``Retry-After``)
503     unavailable          retryable data-source error after retries, timeouts,
                             no agent or source, engine shutting down
502     source_error         any other non-retryable data-source failure
500     internal             a bug: logged, never shown
======  ===================  ======================================================

Methods (``cols`` = the columns ``pars`` refers to; ids are 1 to 64 digits):

- ``mAdd``: ``pars`` (the leading columns) or ``values`` -> the new id.
- ``mAddMany``: ``pars`` flat (split into rows of the column count) or a list of arrays,
  or ``rows`` -> the new ids.
- ``mAddManyByid``: as ``mAddMany`` with each row's id last (koa78's order); existing ids are skipped
  -> how many were inserted.
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

Data-source errors are answered with a generic message and logged by class and code,
never by message: driver messages can hold row values (MySQL's "Duplicate entry 'x'").

``Idempotency-Key`` (1 to 255 printable ASCII characters, else 400 naming it): a write
replayed with the same key answers the first one's ``back`` and writes nothing again. The
key is scoped by the caller (the owner on an owned table), so tenants never share one.
"""

from __future__ import annotations

import logging
import math
import re
import traceback
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgspec

from wf78_core.config import Identity, TableConfig
from wf78_core.data.table import DEFAULT_NUMBER, Table, owner_problem
from wf78_core.errors import (
    DataSourceError,
    InvalidOperation,
    NoAgentAvailable,
    NoDataSource,
    OperationError,
    Overloaded,
    Wf78Error,
)
from wf78_core.http.asgi import (
    MAX_JSON_DEPTH,
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    header,
    nested_deeper_than,
    parse_priority,
    read_body,
    send_json,
)
from wf78_core.http.context import RequestClient
from wf78_core.http.identity import TokenAuthenticator, bearer_token, effective_priority
from wf78_core.idempotency import derive_key

if TYPE_CHECKING:
    from wf78_core.engine import Engine

__all__ = ["DEFAULT_MAX_PARS", "METHODS", "DataRoute", "DataRoutes", "Refusal"]

log = logging.getLogger("wf78.routes")

METHODS = (
    "mAdd",
    "mAddMany",
    "mAddManyByid",
    "mUpdate",
    "mUpdateByid",
    "mUpdateMany",
    "m",
    "mByid",
    "mByFirstField",
    "get",
    "getbyBcid",
    "mdel",
    "mdelmany",
    "mUpdateElkByid",
)

_DECODER = msgspec.json.Decoder()
_ALLOW = [(b"allow", b"GET, POST")]
_NO_STORE = (b"cache-control", b"no-store")
_DIGITS = re.compile(r"[0-9]{1,64}")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_TEXT = 64  # bcid and other identifiers
_MAX_IDEMPOTENCY_KEY = 255  # the Idempotency-Key header (scoped, then hashed when long)
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_MAX_ID_INT = 10**64
_MAX_OFFSET = 1 << 62  # paging offsets past this overflow the databases' integers
#: The most values ``pars`` (and ``rows``, ``ids``, a ``where`` list) may carry by default.
DEFAULT_MAX_PARS = 1000
# Parameters whose query/form value may be repeated (or sent as ``name[]``) to make a list.
_LIST_PARAMS = frozenset({"pars", "ids", "rows", "cols"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class Failure(Exception):
    """An answer other than success: HTTP ``status``, envelope ``kind`` and ``errmsg``."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers or []


def _bad(field: str, message: str) -> Failure:
    return Failure(400, "invalid", f"{field}: {message}")


# -- column values --------------------------------------------------------------------------

Converter = Callable[[Any, str], Any]


def _text(value: Any, field: str) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return str(value)  # koa78 columns were all text; numbers arrive as JSON numbers
        except ValueError:  # an int too long to print
            raise _bad(field, "is a number too long for a text column") from None
    raise _bad(field, f"must be a string, got {_type(value)}")


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
        raise _bad(field, f"must be an integer, got {_shown(value)}")
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise _bad(field, "is out of the 64-bit integer range")
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
            raise _bad(field, f"must be a number, got {_shown(value)}") from None
    else:
        raise _bad(field, f"must be a number, got {_type(value)}")
    if not math.isfinite(number):
        raise _bad(field, "must be a finite number")
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
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise _bad(field, f"must be true or false, got {_shown(value)}")


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
            raise _bad(field, f"must be an ISO 8601 datetime, got {_shown(value)}") from None
        return value
    raise _bad(field, f"must be an ISO 8601 datetime string, got {_type(value)}")


_CONVERTERS: dict[str, Converter] = {
    "text": _text,
    "int": _int,
    "float": _float,
    "bool": _bool,
    "json": _json,
    "datetime": _datetime,
}


def _type(value: Any) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _shown(value: Any) -> str:
    """A caller's value, shortened: errors echo only what the caller sent."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


# -- routes ---------------------------------------------------------------------------------


class TableRoutes:
    """What the routes need of one configured table, computed once."""

    __slots__ = (
        "columns",
        "config",
        "converters",
        "max_pars",
        "name",
        "owner",
        "schema",
        "writable",
    )

    def __init__(self, name: str, config: TableConfig, *, max_pars: int = DEFAULT_MAX_PARS) -> None:
        self.name = name
        self.config = config
        self.max_pars = max_pars
        self.owner = config.owner
        self.columns: tuple[str, ...] = tuple(config.columns)
        self.writable = frozenset(self.columns)
        self.schema = config.schema()
        self.converters: dict[str, Converter] = {
            column: _CONVERTERS[kind] for column, kind in self.schema.items()
        }


Handler = Callable[["DataRoutes", TableRoutes, Table, dict[str, Any]], Awaitable[Any]]


class DataRoute:
    """One ``/{apisys}/{apimicro}/{Table}/{method}`` path of a configured table."""

    __slots__ = ("handler", "method", "table")

    def __init__(self, table: TableRoutes, method: str, handler: Handler) -> None:
        self.table = table
        self.method = method
        self.handler = handler

    def __repr__(self) -> str:
        return f"DataRoute({self.table.name!r}, {self.method!r})"


class Refusal:
    """A path under a configured route that names no table method (404) or a refused one."""

    __slots__ = ("failure",)

    def __init__(self, failure: Failure) -> None:
        self.failure = failure


class DataRoutes:
    """The koa78 data routes of an engine's configured tables.

    ``match(path)`` is a dict lookup for a served path; ``handle`` reads the parameters,
    calls the :class:`~wf78_core.table.Table` method and answers the envelope.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_body: int = 1 << 20,
        max_page: int = 1000,
        max_pars: int = DEFAULT_MAX_PARS,
    ) -> None:
        self.engine = engine
        self.max_body = max_body
        self.max_page = max_page
        self.max_pars = max_pars
        self._tokens = TokenAuthenticator(engine.config.auth)
        self._guest = engine.config.auth.guest
        self._exact: dict[str, DataRoute] = {}
        self._prefixes: dict[tuple[str, str], set[str]] = {}
        for name, config in engine.config.tables.items():
            if config.route is None:
                continue
            apisys, apimicro = config.route.split("/")
            self._prefixes.setdefault((apisys, apimicro), set()).add(name)
            table = TableRoutes(name, config, max_pars=max_pars)
            for method in METHODS:
                path = f"/{config.route}/{name}/{method}"
                self._exact[path] = DataRoute(table, method, _HANDLERS[method])

    # -- matching -----------------------------------------------------------------------

    @property
    def claims(self) -> tuple[str, ...]:
        """The path prefixes under which :meth:`match` may answer (``/apisys/apimicro/``)."""
        return tuple(f"/{apisys}/{apimicro}/" for apisys, apimicro in self._prefixes)

    def match(self, path: str) -> DataRoute | Refusal | None:
        """The route of ``path``; a :class:`Refusal` for a claimed path that names no
        method; ``None`` when no configured route claims it (the app serves it)."""
        route = self._exact.get(path)
        if route is not None:
            return route
        if not path.startswith("/api"):
            return None
        parts = path.split("/")
        if len(parts) < 4 or (parts[1], parts[2]) not in self._prefixes:
            return None
        base = f"/{parts[1]}/{parts[2]}"
        if len(parts) != 5 or not parts[3] or not parts[4]:
            return Refusal(
                Failure(404, "not_found", f"no data route {path!r}: use {base}/<Table>/<method>")
            )
        table, method = parts[3], parts[4]
        if method.startswith("_"):
            return Refusal(Failure(403, "forbidden", f"method {method!r} is not served"))
        tables = self._prefixes[(parts[1], parts[2])]
        if table not in tables:
            return Refusal(Failure(404, "not_found", f"unknown table {table!r} under {base}/"))
        return Refusal(
            Failure(
                404,
                "not_found",
                f"unknown method {method!r} of table {table!r} (methods: {', '.join(METHODS)})",
            )
        )

    # -- serving ------------------------------------------------------------------------

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        client: RequestClient,
        route: DataRoute | Refusal,
    ) -> None:
        try:
            back = await self._serve(scope, receive, client, route)
        except Failure as failure:
            await _answer_failure(send, failure)
            return
        except Exception as error:
            await _answer_failure(send, _failure_of(error, route))
            return
        await send_json(send, 200, {"res": 0, "errmsg": "", "kind": "", "back": back}, [_NO_STORE])

    async def _serve(
        self, scope: Scope, receive: Receive, client: RequestClient, route: DataRoute | Refusal
    ) -> Any:
        if isinstance(route, Refusal):
            raise route.failure
        if scope["method"] not in ("GET", "POST"):
            raise Failure(
                405,
                "method_not_allowed",
                f"{scope['method']} is not allowed: use GET or POST",
                list(_ALLOW),
            )
        requested = header(scope, b"x-wf78-priority")
        priority: int | None = None
        if requested is not None:
            priority = parse_priority(requested)
            if priority is None:
                raise _bad(
                    "X-WF78-Priority",
                    f"must be an integer of at most 9 digits, got {_shown(requested)}",
                )
        info = route.table
        params = await self._params(scope, receive)
        identity = client.identity
        sid = params.get("sid")
        if (
            isinstance(sid, str)
            and sid
            and (identity is None or identity is self._guest)
            and bearer_token(scope) is None
        ):
            # koa78 clients may send the session token as a parameter.
            identity = self._tokens.lookup(sid)
        method = route.method
        if method == "getbyBcid":
            if not info.config.public_read:
                raise Failure(
                    403,
                    "forbidden",
                    f"table {info.name!r} does not allow public reads (getbyBcid)",
                )
        else:
            _check_identity(info, identity)
        # The middleware capped the header's priority by its identity; a ``sid``
        # parameter may have named another one.
        if identity is not client.identity:
            priority = effective_priority(priority, identity)
        else:
            priority = client.priority
        table = Table(
            self.engine,
            info.name,
            identity=identity,
            priority=priority,
            idempotency_key=_idempotency_key(scope, info, identity),
        )
        return await route.handler(self, info, table, params)

    async def _params(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        """Query-string parameters, overridden by the body's (JSON or form)."""
        raw_query = scope.get("query_string", b"")
        params: dict[str, Any] = _from_pairs(raw_query.decode("latin-1")) if raw_query else {}
        try:
            body = await read_body(receive, self.max_body, scope)
        except BodyTooLarge:
            raise Failure(
                413, "too_large", f"request body larger than {self.max_body} bytes"
            ) from None
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

    # -- parameters ---------------------------------------------------------------------

    def page(self, params: dict[str, Any]) -> tuple[int, int]:
        start = _digits_param(params, "getstart", 0)
        number = _digits_param(params, "getnumber", DEFAULT_NUMBER)
        if number > self.max_page:
            raise _bad("getnumber", f"at most {self.max_page} rows per page, asked {number}")
        return start, number


# -- reading parameters ----------------------------------------------------------------------


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
        decoded = _DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError) as error:
        raise _invalid_json("body", error) from None
    if not isinstance(decoded, dict):
        raise _bad("body", f"must be a JSON object, got {_type(decoded)}")
    if nested_deeper_than(decoded, text=body):
        for key, value in decoded.items():  # name the parameter that nests too deep
            if nested_deeper_than(value, MAX_JSON_DEPTH - 1):
                raise _too_deep(str(key))
    return decoded


def _form_body(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("body", "form body is not UTF-8") from None
    return _from_pairs(text)


def _decoded(value: str, name: str) -> Any:
    try:
        decoded = _DECODER.decode(value)
    except (msgspec.DecodeError, RecursionError) as error:
        raise _invalid_json(name, error) from None
    if nested_deeper_than(decoded, text=value):
        raise _too_deep(name)
    return decoded


def _too_deep(name: str) -> Failure:
    return _bad(name, f"JSON nested more than {MAX_JSON_DEPTH} levels deep")


def _invalid_json(name: str, error: Exception) -> Failure:
    # msgspec raises RecursionError, not DecodeError, for arrays nested thousands deep.
    reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
    return _bad(name, f"invalid JSON ({reason})")


def _list_param(
    params: Mapping[str, Any], name: str, *, commas: bool = False, limit: int | None = None
) -> list[Any] | None:
    """A list parameter: a JSON array, repeated query/form keys, a JSON array in a string,
    (``commas``) a comma-separated string, or one value; 413 past ``limit`` items."""
    values = _any_list(params, name, commas)
    if limit is not None and values is not None and len(values) > limit:
        raise _too_many(name, len(values), limit)
    return values


def _too_many(field: str, count: int, limit: int) -> Failure:
    return Failure(
        413,
        "too_large",
        f"{field}: {count} values, more than the {limit} a request may carry (max_pars); "
        "split the request",
    )


def _any_list(params: Mapping[str, Any], name: str, commas: bool) -> list[Any] | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            decoded = _decoded(stripped, name)
            if not isinstance(decoded, list):
                raise _bad(name, f"must be an array, got {_type(decoded)}")
            return decoded
        if commas:
            return [part.strip() for part in value.split(",") if part.strip()]
        return [value]
    if isinstance(value, dict):
        raise _bad(name, "must be an array, got an object")
    return [value]


def _object_param(params: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().startswith("{"):
        value = _decoded(value.strip(), name)
    if not isinstance(value, dict):
        raise _bad(name, f"must be an object, got {_type(value)}")
    return value


def _digits_param(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(name, f"must be digits, got {_shown(value)}")
    if value > _MAX_OFFSET:
        raise _bad(name, f"must be at most {_MAX_OFFSET}")
    return value


def _row_id(value: Any, field: str) -> str:
    """An id: 1 to 64 digits (koa78 ids are snowflakes), as a string."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_ID_INT:
        value = str(value)
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return value
    raise _bad(field, f"must be an id of 1 to 64 digits, got {_shown(value)}")


def _mid(params: Mapping[str, Any], *, required: bool = True) -> str | None:
    value = params.get("mid")
    if value is None or value == "":
        if required:
            raise _bad("mid", "required: the id of the row")
        return None
    return _row_id(value, "mid")


def _flag(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _bad(name, f"must be 1 or 0, got {_shown(value)}")


def _text_param(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < _MAX_ID_INT:
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise _bad(name, f"must be a non-empty string of at most {_MAX_TEXT} characters")
    return value


def _names_param(params: Mapping[str, Any], name: str) -> list[str] | None:
    """``cols``: a list of names or a comma-separated string; ``all`` (koa78) = none given."""
    names = _list_param(params, name, commas=True)
    if names is None:
        return None
    for index, item in enumerate(names):
        if not isinstance(item, str):
            raise _bad(f"{name}[{index}]", f"must be a column name, got {_type(item)}")
    cleaned = [item.strip() for item in names if item.strip()]
    if not cleaned or cleaned == ["all"]:
        return None
    return cleaned


def _check_identity(info: TableRoutes, identity: Identity | None) -> None:
    owner = info.owner
    if owner is None:
        return
    if identity is None:
        raise Failure(
            401,
            "unauthorized",
            f"table {info.name!r} is scoped by {owner}: send Authorization: Bearer <token>",
            [(b"www-authenticate", b"Bearer")],
        )
    if not getattr(identity, owner):
        raise Failure(
            403, "forbidden", f"table {info.name!r} is scoped by {owner}: the identity has none"
        )
    problem = owner_problem(getattr(identity, owner))
    if problem is not None:
        raise Failure(
            403, "forbidden", f"table {info.name!r} is scoped by {owner}: its {owner} {problem}"
        )


def _idempotency_key(scope: Scope, info: TableRoutes, identity: Identity | None) -> str | None:
    """The request's ``Idempotency-Key`` header scoped by its caller (the owner of an owned
    table, else company and user), so two tenants' equal keys never meet; None without one."""
    value = header(scope, b"idempotency-key")
    if value is None:
        return None
    value = value.strip(" \t")
    if not 0 < len(value) <= _MAX_IDEMPOTENCY_KEY or not (value.isascii() and value.isprintable()):
        raise _bad(
            "Idempotency-Key",
            f"must be 1 to {_MAX_IDEMPOTENCY_KEY} printable ASCII characters, got {_shown(value)}",
        )
    if identity is None:
        caller = ""
    elif info.owner is not None:
        caller = str(getattr(identity, info.owner))
    else:
        caller = f"{identity.cid}/{identity.uid}"
    return derive_key(caller, value)


# -- values of columns -----------------------------------------------------------------------


def _write_columns(info: TableRoutes, params: Mapping[str, Any]) -> tuple[str, ...]:
    """The columns ``pars`` refers to: ``cols`` (writable ones only) or the declared ones."""
    names = _names_param(params, "cols")
    if names is None:
        return info.columns
    for index, name in enumerate(names):
        if name not in info.writable:
            raise _bad(
                f"cols[{index}]",
                f"unknown or unwritable column {name!r} (writable: {', '.join(info.columns)})",
            )
    return tuple(names)


def _named(info: TableRoutes, values: Any, field: str, *, allow_id: bool = False) -> dict[str, Any]:
    """A ``values`` object: writable columns only, each converted to its column type."""
    if not isinstance(values, dict):
        raise _bad(field, f"must be an object of column to value, got {_type(values)}")
    out: dict[str, Any] = {}
    for column, value in values.items():
        where = f"{field}.{column}"
        if column == "id" and allow_id:
            out["id"] = _row_id(value, where)
        elif column in info.writable:
            out[column] = info.converters[column](value, where)
        elif column in info.schema:
            raise _bad(where, "is set by the table and cannot be written")
        else:
            raise _bad(where, f"unknown column (writable: {', '.join(info.columns)})")
    return out


def _positional(
    info: TableRoutes,
    pars: list[Any],
    columns: tuple[str, ...],
    *,
    start: int = 0,
    count: int | None = None,
) -> dict[str, Any]:
    """``pars[start:start+count]`` as values of ``columns``, each converted and named
    by its position in ``pars``."""
    count = len(pars) - start if count is None else count
    return {
        column: info.converters[column](pars[start + offset], f"pars[{start + offset}]")
        for offset, column in enumerate(columns[:count])
    }


def _values(info: TableRoutes, params: Mapping[str, Any]) -> dict[str, Any]:
    """One row's values: ``values`` by name, or ``pars`` for the leading columns of
    ``cols`` (koa78 wrote as many columns as it was given values)."""
    named = _object_param(params, "values")
    if named is not None:
        return _named(info, named, "values")
    pars = _list_param(params, "pars", limit=info.max_pars)
    if not pars:
        raise _bad("pars", "required: the values of the columns (or a values object)")
    columns = _write_columns(info, params)
    if len(pars) > len(columns):
        raise _bad(
            "pars",
            f"{len(pars)} values for {len(columns)} columns ({', '.join(columns)})",
        )
    return _positional(info, pars, columns)


def _rows(info: TableRoutes, params: Mapping[str, Any], *, with_id: bool) -> list[dict[str, Any]]:
    """Many rows: ``rows`` (objects, or arrays in column order), or ``pars`` as a flat list
    split into rows of the column count (``with_id``: the row's id last) or a list of
    arrays."""
    columns = _write_columns(info, params)
    width = len(columns) + (1 if with_id else 0)
    named = params.get("rows")
    if named is not None:
        rows = _list_param(params, "rows", limit=info.max_pars)
        assert rows is not None
        return [_one_row(info, row, f"rows[{i}]", columns, with_id) for i, row in enumerate(rows)]
    pars = _list_param(params, "pars", limit=info.max_pars)
    if not pars:
        raise _bad("pars", "required: the values of the rows (or a rows list)")
    if all(isinstance(row, list) for row in pars):
        return [_one_row(info, row, f"pars[{i}]", columns, with_id) for i, row in enumerate(pars)]
    if any(isinstance(value, list | dict) for value in pars):
        raise _bad("pars", "must be a flat list of values or a list of rows, not a mix")
    if len(pars) % width:
        shape = ", ".join(columns) + (", id" if with_id else "")
        raise _bad(
            "pars",
            f"{len(pars)} values do not split into rows of {width} ({shape})",
        )
    out = []
    for start in range(0, len(pars), width):
        row: dict[str, Any] = {}
        if with_id:
            last = start + width - 1
            row["id"] = _row_id(pars[last], f"pars[{last}]")
        row.update(_positional(info, pars, columns, start=start))
        out.append(row)
    return out


def _one_row(
    info: TableRoutes, row: Any, field: str, columns: tuple[str, ...], with_id: bool
) -> dict[str, Any]:
    if isinstance(row, str) and row.strip()[:1] in ("{", "["):
        row = _decoded(row.strip(), field)  # a row sent as JSON text in a form
    if isinstance(row, dict):
        values = _named(info, row, field, allow_id=with_id)
        if with_id and "id" not in values:
            raise _bad(f"{field}.id", "required")
        return values
    if not isinstance(row, list):
        raise _bad(field, f"must be an object or an array, got {_type(row)}")
    width = len(columns) + (1 if with_id else 0)
    if len(row) != width:
        shape = ", ".join(columns) + (", id" if with_id else "")
        raise _bad(field, f"{len(row)} values for a row of {width} ({shape})")
    out: dict[str, Any] = {}
    if with_id:  # koa78 puts the id after the columns
        out["id"] = _row_id(row[-1], f"{field}[{len(columns)}]")
    for index, column in enumerate(columns):
        out[column] = info.converters[column](row[index], f"{field}[{index}]")
    return out


def _where(info: TableRoutes, params: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Equality filters of a read: ``where`` by name, and koa78's ``pars`` for the
    columns of ``cols`` (default: the declared ones). True when ``pars`` filtered."""
    where: dict[str, Any] = {}
    named = _object_param(params, "where")
    if named is not None:
        for column, value in named.items():
            field = f"where.{column}"
            if column not in info.schema:
                raise _bad(field, "unknown column")
            if column == info.owner:
                raise _bad(field, "the owner column comes from the identity")
            where[column] = _filter_value(info, column, value, field)
    pars = _list_param(params, "pars", limit=info.max_pars)
    if not pars:
        return where, False
    names = _names_param(params, "cols")
    columns = tuple(names) if names is not None else info.columns
    if len(pars) > len(columns):
        raise _bad("pars", f"{len(pars)} values for {len(columns)} columns ({', '.join(columns)})")
    for index, (column, value) in enumerate(zip(columns, pars, strict=False)):
        if column not in info.schema or column == info.owner:
            raise _bad(f"cols[{index}]", f"unknown column {column!r}")
        where[column] = _filter_value(info, column, value, f"pars[{index}]")
    return where, True


def _filter_value(info: TableRoutes, column: str, value: Any, field: str) -> Any:
    if column == "id":
        return _row_id(value, field)
    if isinstance(value, list):
        if len(value) > info.max_pars:
            raise _too_many(field, len(value), info.max_pars)
        return [info.converters[column](item, f"{field}[{i}]") for i, item in enumerate(value)]
    return info.converters[column](value, field)


def _read_cols(info: TableRoutes, params: Mapping[str, Any]) -> list[str] | None:
    names = _names_param(params, "cols")
    if names is None:
        return None
    for index, name in enumerate(names):
        if name not in info.schema:
            raise _bad(f"cols[{index}]", f"unknown column {name!r}")
    return names


def _order(params: Mapping[str, Any]) -> str | list[str] | None:
    value = params.get("order")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise _bad("order", "must be a column name, 'col desc', or a list of them")


def _not_found(info: TableRoutes, row_id: str) -> Failure:
    return Failure(404, "not_found", f"table {info.name!r} has no row {row_id!r} for this caller")


# -- the 14 methods ------------------------------------------------------------------------


async def _m_add(
    routes: DataRoutes, info: TableRoutes, table: Table, params: dict[str, Any]
) -> Any:
    return await table.add(_values(info, params))


async def _m_add_many(
    routes: DataRoutes, info: TableRoutes, table: Table, params: dict[str, Any]
) -> Any:
    return await table.add_many(_rows(info, params, with_id=False))


async def _m_add_many_by_id(
    routes: DataRoutes, info: TableRoutes, table: Table, params: dict[str, Any]
) -> Any:
    return await table.add_many_by_id(_rows(info, params, with_id=True))


async def _m_update(
    routes: DataRoutes, info: TableRoutes, table: Table, params: dict[str, Any]
) -> Any:
    row_id = _mid(params)
    assert row_id is not None
    changed = await table.update(row_id, _values(info, params))
    if not changed:
        raise _not_found(info, row_id)
    return changed


async def _m_update_by_id(
    routes: DataRoutes, info: TableRoutes, table: Table, params: dict[str, Any]
) -> Any:
    # koa78 took the id from ``mid``; the modern form may carry it in ``values``.
    named = _object_param(params, "values")
    if named is not None and "id" in named:
        values = _named(info, named, "values", allow_id=True)
        row_id = values["id"]
        if not await table.update_by_id(values):
            raise _not_found(info, row_id)
        return 1
    return await _m_update(routes, info, table, params)


async def _m_update_many(
    routes: DataRoutes, info: TableRoutes, table: Table, params: dict[str, Any]
) -> Any:
    return await table.update_many(_rows(info, params, with_id=True))


async def _m(routes: DataRoutes, info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    values = _values(info, params)
    row_id = _mid(params, required=False)
    if row_id is not None and values and await table.update(row_id, values):
        return row_id
    return await table.add(values)


async def _m_by_id(
    routes: DataRoutes, info: TableRoutes, table: Table, params: dict[str, Any]
) -> Any:
    named = _object_param(params, "values")
    if named is not None and "id" in named:
        return await table.upsert(_named(info, named, "values", allow_id=True))
    row_id = _mid(params)
    return await table.upsert({"id": row_id, **_values(info, params)})


async def _m_by_first_field(
    routes: DataRoutes, info: TableRoutes, table: Table, params: dict[str, Any]
) -> Any:
    values = _values(info, params)
    if info.columns and info.columns[0] not in values:
        field = "values" if params.get("values") is not None else "pars"
        raise _bad(field, f"the first column {info.columns[0]!r} is required")
    return await table.upsert_by_first_field(values)


async def _get(routes: DataRoutes, info: TableRoutes, table: Table, params: dict[str, Any]) -> Any:
    return await _read(routes, info, table, params, None)


async def _get_by_bcid(
    routes: DataRoutes, info: TableRoutes, table: Table, params: dict[str, Any]
) -> Any:
    bcid = _text_param(params, "bcid")
    if bcid is None:
        raise _bad("bcid", "required: the owner whose public rows to read")
    return await _read(routes, info, table, params, bcid)


async def _read(
    routes: DataRoutes,
    info: TableRoutes,
    table: Table,
    params: dict[str, Any],
    bcid: str | None,
) -> Any:
    where, filtered = _where(info, params)
    cols = None if filtered else _read_cols(info, params)
    start, number = routes.page(params)
    total = _flag(params, "total")
    options: dict[str, Any] = {
        "where": where,
        "cols": cols,
        "order": _order(params),
        "start": start,
        "number": number,
        "since": _text_param(params, "since"),
        "until": _text_param(params, "until"),
    }
    if bcid is None:
        if total:
            rows, count = await table.get(total=True, **options)
            return {"rows": rows, "total": count}
        return await table.get(**options)
    if total:
        rows, count = await table.get_public(bcid, total=True, **options)
        return {"rows": rows, "total": count}
    return await table.get_public(bcid, **options)


async def _m_del(
    routes: DataRoutes, info: TableRoutes, table: Table, params: dict[str, Any]
) -> Any:
    row_id = _mid(params, required=False)
    if row_id is None:
        pars = _list_param(params, "pars", limit=info.max_pars)
        if not pars or len(pars) != 1:
            raise _bad("mid", "required: the id of the row")
        row_id = _row_id(pars[0], "pars[0]")
    deleted = await table.delete(row_id)
    if not deleted:
        raise _not_found(info, row_id)
    return deleted


async def _m_del_many(
    routes: DataRoutes, info: TableRoutes, table: Table, params: dict[str, Any]
) -> Any:
    field = "ids" if params.get("ids") is not None else "pars"
    ids = _list_param(params, field, commas=True, limit=info.max_pars)
    if not ids:
        raise _bad("ids", "required: the ids of the rows (a list or comma-separated)")
    return await table.delete_many([_row_id(value, f"{field}[{i}]") for i, value in enumerate(ids)])


async def _m_update_elk_by_id(
    routes: DataRoutes, info: TableRoutes, table: Table, params: dict[str, Any]
) -> Any:
    # koa78: pars = [id, JSON document]; or mid with values / pars for the columns.
    _check_search_source(routes, info)
    row_id = _mid(params, required=False)
    if row_id is not None:
        values = _values(info, params)
    else:
        pars = _list_param(params, "pars", limit=info.max_pars)
        if not pars or len(pars) != 2:
            raise _bad("pars", "expected [id, document] (or mid with values)")
        row_id = _row_id(pars[0], "pars[0]")
        document = pars[1]
        if isinstance(document, str):
            document = _decoded(document, "pars[1]")
        values = _named(info, document, "pars[1]")
    changed = await table.update_search_doc(row_id, values)
    if not changed:
        raise _not_found(info, row_id)
    return changed


def _check_search_source(routes: DataRoutes, info: TableRoutes) -> None:
    """mUpdateElkByid needs what Table.update_search_doc writes to: a search mirror, or a
    data source of type elasticsearch. Refused up front, naming the method."""
    config = info.config
    if config.search_mirror is not None:
        return
    name = config.data_source
    configured = routes.engine.config.datasources.get(name) if name is not None else None
    kind = configured.type if configured is not None else name
    if kind != "elasticsearch":
        raise _bad(
            "mUpdateElkByid",
            f"table {info.name!r} has no search source (a search_mirror, or a data_source "
            "of type 'elasticsearch')",
        )


_HANDLERS: dict[str, Handler] = {
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


# -- answers --------------------------------------------------------------------------------


def _retry_after(seconds: float) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]


def _logged(error: BaseException) -> str:
    """What the log says of an error: the classes and codes along its causes and its flags,
    never a message (messages of drivers and plugins quote the values they were given)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(parts) < 5:
        seen.add(id(current))
        # Codes, never text: MySQL's error number (args[0]), SQLite's error name.
        codes: list[int | str] = [arg for arg in current.args[:1] if type(arg) is int]
        name = getattr(current, "sqlite_errorname", None)
        if isinstance(name, str):
            codes.append(name)
        part = type(current).__name__
        parts.append(f"{part} {codes[0]}" if codes else part)
        context = None if current.__suppress_context__ else current.__context__
        current = current.__cause__ or context
    flags: list[str] = []
    if isinstance(error, OperationError):
        flags += [flag for flag in ("retryable", "conflict") if getattr(error, flag)]
        if error.attempts:
            flags.append(f"attempts={error.attempts}")
    return " <- ".join(parts) + (f" ({', '.join(flags)})" if flags else "")


def _failure_of(error: Exception, route: DataRoute | Refusal) -> Failure:
    """The answer for an error raised while serving: never a traceback, never a driver
    message (it may hold other callers' values); those go to the log."""
    where = f"{route.table.name}/{route.method}" if isinstance(route, DataRoute) else "route"
    if isinstance(error, Overloaded):
        return Failure(503, "overloaded", str(error), _retry_after(error.retry_after))
    if isinstance(error, InvalidOperation):
        return Failure(400, "invalid", str(error))
    if isinstance(error, DataSourceError):
        source = f"data source {error.data_source!r}" if error.data_source else "the data source"
        log.warning("%s: %s failed: %s", where, source, _logged(error))
        if error.retryable:
            return Failure(
                503,
                "unavailable",
                f"{source} is unavailable (tried {max(error.attempts, 1)} times); try again",
                _retry_after(1.0),
            )
        if error.conflict:
            return Failure(
                409,
                "conflict",
                f"{source} refused the write: a row with that key exists "
                "or a constraint is violated",
            )
        return Failure(502, "source_error", f"{source} failed; the server log has the details")
    if isinstance(error, OperationError):
        log.warning("%s: %s", where, _logged(error))
        if error.retryable or isinstance(error, NoDataSource | NoAgentAvailable):
            return Failure(
                503,
                "unavailable",
                f"{type(error).__name__}: the operation could not run now; try again",
                _retry_after(1.0),
            )
        return Failure(502, "source_error", f"{type(error).__name__}: the operation failed")
    if isinstance(error, Wf78Error):
        log.warning("%s: %s", where, error)
        return Failure(503, "unavailable", str(error), _retry_after(1.0))
    # The stack without the message: a bug's message may quote a row too.
    stack = "".join(traceback.format_tb(error.__traceback__))
    log.error("%s: unexpected error %s\n%s", where, _logged(error), stack)
    return Failure(500, "internal", "internal error; the server log has the details")


async def _answer_failure(send: Send, failure: Failure) -> None:
    payload = {
        "res": -failure.status,
        "errmsg": failure.message,
        "kind": failure.kind,
        "back": None,
    }
    await send_json(send, failure.status, payload, [_NO_STORE, *failure.headers])
