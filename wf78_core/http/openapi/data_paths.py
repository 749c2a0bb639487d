"""The data routes in the OpenAPI document: per table, the schemas of its values, filters
and rows, each parameter's forms, and the GET and POST operations of its 14 methods (on a
route answering as koa78, ``[http] answers``, with koa78's answers)."""

from __future__ import annotations

from typing import Any

from wf78_core.config import Config, TableConfig
from wf78_core.config.checks import fold_path
from wf78_core.http.openapi.common import (
    DATA_ERRORS,
    INT64_MAX,
    INT64_MIN,
    MAX_ID,
    MAX_OFFSET,
    MAX_TEXT,
    PRIORITY_LIMIT,
    TEXT_ID,
    parameter_ref,
    ref,
    response_ref,
)
from wf78_core.http.routes import METHODS
from wf78_core.http.routes.koa78 import MISS_CODES

__all__ = ["data_paths", "idempotency_header", "priority_header"]

# What each koa78 method reads besides ``sid`` (wf78_core.http.routes.methods).
_METHOD_PARAMS: dict[str, tuple[str, ...]] = {
    "mAdd": ("pars", "values", "cols"),
    "mAddMany": ("pars", "rows", "cols"),
    "mAddManyByid": ("pars", "rows", "cols"),
    "mUpdate": ("mid", "pars", "values", "cols"),
    "mUpdateByid": ("mid", "pars", "values", "cols"),
    "mUpdateMany": ("pars", "rows", "cols"),
    "m": ("mid", "pars", "values", "cols"),
    "mByid": ("mid", "pars", "values", "cols"),
    "mByFirstField": ("pars", "values", "cols"),
    "get": ("where", "pars", "cols", "order", "getstart", "getnumber", "total", "since", "until"),
    "getbyBcid": (
        "bcid",
        "where",
        "pars",
        "cols",
        "order",
        "getstart",
        "getnumber",
        "total",
        "since",
        "until",
    ),
    "mdel": ("mid", "pars"),
    "mdelmany": ("ids", "pars"),
    "mUpdateElkByid": ("mid", "pars", "values", "cols"),
}

# How older koa78 clients say their pars are encoded (wf78_core.http.routes.encoding).
_ENCODING = ("v", "json", "jsonbase64", "base64")

# Methods whose values (or rows) carry the row's id.
_WITH_ID = frozenset({"mAddManyByid", "mUpdateByid", "mUpdateMany", "mByid"})
# Inserts that carry the caller's id too on a table with text ids (mid or values.id).
_TEXT_ID_INSERTS = frozenset({"mAdd", "mAddMany", "mByFirstField"})


def _id_pattern(table: TableConfig) -> str:
    return TEXT_ID if table.id == "text" else MAX_ID


_METHOD_SUMMARY = {
    "mAdd": "Insert one row (pars for the leading columns, or values) -> the new id",
    "mAddMany": "Insert rows (pars flat or nested, or rows) -> the new ids",
    "mAddManyByid": "Insert rows keeping their ids (id last); existing ids skipped -> count",
    "mUpdate": "Update the caller's row mid -> rows changed; 404 without such a row",
    "mUpdateByid": "Update the caller's row mid (or values.id) -> rows changed",
    "mUpdateMany": "Update rows [...cols, id] or rows objects with id -> rows changed",
    "m": "Update the caller's row mid, else insert with a new id -> the id",
    "mByid": "Update the caller's row mid, else insert it with id mid -> the id",
    "mByFirstField": "Update the caller's row whose first column matches, else insert -> id",
    "get": "Read the caller's rows (where, pars on cols, order, paging) -> rows",
    "getbyBcid": "Read the public rows of owner bcid (public_read tables only) -> rows",
    "mdel": "Delete the caller's row mid -> 1; 404 without such a row",
    "mdelmany": "Delete the caller's rows ids -> rows deleted",
    "mUpdateElkByid": "Update the search document of the caller's row -> 1",
}

_BACK: dict[str, dict[str, Any]] = {
    "mAdd": {"type": "string", "description": "the new row's id"},
    "mAddMany": {"type": "array", "items": {"type": "string"}, "description": "the new ids"},
    "mAddManyByid": {"type": "integer", "description": "rows inserted"},
    "mUpdate": {"type": "integer", "description": "rows changed"},
    "mUpdateByid": {"type": "integer", "description": "rows changed"},
    "mUpdateMany": {"type": "integer", "description": "rows changed"},
    "m": {"type": "string", "description": "the row's id"},
    "mByid": {"type": "string", "description": "the row's id"},
    "mByFirstField": {"type": "string", "description": "the row's id"},
    "mdel": {"type": "integer", "description": "rows deleted"},
    "mdelmany": {"type": "integer", "description": "rows deleted"},
    "mUpdateElkByid": {"type": "integer", "description": "documents changed"},
}


_TEXT_COUNT = {"type": "string", "pattern": "^[0-9]+$"}
# koa78's back types (answers = "koa78"): ids and counts as its Base78 controller answered.
_KOA78_BACK: dict[str, dict[str, Any]] = {
    "mAddMany": {"type": "integer", "description": "rows inserted"},
    "mUpdate": {"type": "string", "description": "the row's id (or rows changed, as text)"},
    "mUpdateByid": {"type": "string", "description": "the row's id (or rows changed, as text)"},
    "mUpdateMany": {**_TEXT_COUNT, "description": "rows changed, as text"},
    "mdel": {"type": "string", "description": "the row's id"},
    "mdelmany": {**_TEXT_COUNT, "description": "rows deleted, as text"},
}
# What back holds when a write matched nothing (koa78 answered HTTP 200 and a code).
_KOA78_MISSED_BACK: dict[str, dict[str, Any]] = {
    "mAddManyByid": {"const": 0},
    "mUpdateMany": {"const": "0"},
    "mdelmany": {"const": "0"},
}


def _column_schema(kind: str) -> dict[str, Any]:
    """What a column accepts in a request (wf78_core.http.routes.columns)."""
    if kind == "int":
        return {
            "anyOf": [
                {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
                {"type": "string", "pattern": "^[+-]?[0-9]{1,18}$"},
                {"type": "null"},
            ]
        }
    if kind == "float":
        return {"type": ["number", "null"]}
    if kind == "bool":
        return {"type": ["boolean", "null"]}
    if kind == "datetime":
        return {"type": ["string", "null"], "format": "date-time"}
    if kind == "json":
        return {"description": "any JSON value"}
    return {
        "anyOf": [
            {"type": "string"},
            {"type": "number", "description": "stored as its text"},
            {"type": "null"},
        ]
    }


def _table_schemas(name: str, table: TableConfig, max_pars: int) -> dict[str, dict[str, Any]]:
    """``<Table>.values``, ``<Table>.where`` and ``<Table>.row`` schemas."""
    schema = table.schema()
    properties = {column: _column_schema(schema[column]) for column in table.columns}
    values = {
        "type": "object",
        "description": f"Values of {name}'s writable columns by name",
        "properties": properties,
        "additionalProperties": False,
    }
    values_with_id = {
        **values,
        "properties": {"id": {"type": "string", "pattern": _id_pattern(table)}, **properties},
    }
    filters: dict[str, Any] = {}
    for column, kind in schema.items():
        if column == table.owner:
            continue
        if column == "id":
            single: dict[str, Any] = {"type": "string", "pattern": _id_pattern(table)}
            filters[column] = single
            continue
        single = _column_schema(kind)
        filters[column] = {
            "anyOf": [single, {"type": "array", "items": single, "maxItems": max_pars}]
        }
    where = {
        "type": "object",
        "description": "Equality filters by column (an array: any of its values)",
        "properties": filters,
        "additionalProperties": False,
    }
    row = {
        "type": "object",
        "description": f"A row of {name}: the columns read",
        "properties": {"id": {"type": "string"}},
        "additionalProperties": True,
    }
    return {
        f"{name}.values": values,
        f"{name}.valuesWithId": values_with_id,
        f"{name}.where": where,
        f"{name}.row": row,
    }


def _data_params(
    name: str, table: TableConfig, *, max_page: int, max_pars: int
) -> dict[str, dict[str, Any]]:
    """The schema of each data-route parameter as a JSON body field."""
    names = {
        "oneOf": [
            {"type": "string", "description": "comma-separated"},
            {"type": "array", "items": {"type": "string"}},
        ]
    }
    return {
        **_write_params(name, table, names, max_pars),
        **_read_params(name, names, max_page, max_pars),
    }


def _write_params(
    name: str, table: TableConfig, names: dict[str, Any], max_pars: int
) -> dict[str, dict[str, Any]]:
    """``pars``, ``values``, ``rows``, ``cols`` and ``mid``."""
    columns = list(table.columns)
    readable = list(table.schema())
    column_list = ", ".join(columns)
    pars_list = {"type": "array", "maxItems": max_pars}
    return {
        "pars": {
            "description": (
                f"koa78's positional values: for the columns of cols (default: {column_list}); "
                "bulk methods take a flat list or a list of rows, with the id last for "
                "mAddManyByid and mUpdateMany; reads take filter values; at most "
                f"{max_pars} values (max_pars, else 413)"
            ),
            **pars_list,
        },
        "values": {**ref(f"{name}.values"), "description": "Values by column name"},
        "rows": {
            "type": "array",
            "maxItems": max_pars,
            "description": f"Rows: objects by column, or arrays in cols order; at most {max_pars}",
            "items": {"anyOf": [ref(f"{name}.values"), {"type": "array"}]},
        },
        "cols": {
            **names,
            "description": (
                f"Columns: those pars refers to in writes (writable: {column_list}), those read "
                f"in get (any of {', '.join(readable)}); 'all' = every column"
            ),
        },
        "mid": {
            "description": (
                "The row's id: 1 to 64 of A-Z a-z 0-9 . _ : - (text ids, the caller's)"
                if table.id == "text"
                else "The row's id: 1 to 64 digits"
            ),
            "anyOf": [
                {"type": "string", "pattern": _id_pattern(table)},
                {"type": "integer", "minimum": 0},
            ],
        },
    }


def _encoding_params() -> dict[str, dict[str, Any]]:
    """``v``, ``json``, ``jsonbase64`` and ``base64``: how older koa78 clients encoded pars."""
    yes_no: dict[str, Any] = {
        "anyOf": [
            {"type": "boolean"},
            {"type": "integer", "enum": [0, 1]},
            {"type": "string", "enum": ["0", "1", "true", "false"]},
        ]
    }
    return {
        "v": {
            "description": (
                "The koa78 client's version (the v header wins), default 24: from 17.01 to "
                "under 24 pars is jsonbase64 unless said otherwise"
            ),
            "anyOf": [{"type": "number"}, {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}],
        },
        "json": {**yes_no, "description": "koa78's flag: pars is JSON (always read as JSON)"},
        "jsonbase64": {
            **yes_no,
            "description": (
                "pars is one base64 text (koa78's alphabet: * + , - /, . =) of the values "
                "joined by ',~' (v >= 22) or of a JSON array"
            ),
        },
        "base64": {**yes_no, "description": "pars is base64 text, or a list of them: a value each"},
    }


def _read_params(
    name: str, names: dict[str, Any], max_page: int, max_pars: int
) -> dict[str, dict[str, Any]]:
    """``where``, ``order``, paging, ``total``, ``since``/``until``, ``bcid``, ``ids``, ``sid``."""
    return {
        **_encoding_params(),
        "where": {**ref(f"{name}.where")},
        "order": {
            "description": "'col', 'col asc', 'col desc' or '-col', or a list of them",
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        },
        "getstart": {
            "description": "Rows to skip",
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
                {"type": "string", "pattern": "^[0-9]{1,18}$"},
            ],
        },
        "getnumber": {
            "description": f"Rows per page, at most {max_page} (max_page)",
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": max_page},
                {"type": "string", "pattern": "^[0-9]{1,18}$"},
            ],
        },
        "total": {
            "description": "1: answer {rows, total}",
            "anyOf": [{"type": "boolean"}, {"type": "integer", "enum": [0, 1]}],
        },
        "since": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TEXT,
            "description": "Sharded tables: the first day read (ISO date)",
        },
        "until": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TEXT,
            "description": "Sharded tables: the last day read (ISO date)",
        },
        "bcid": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TEXT,
            "description": "The owner whose public rows to read",
        },
        "ids": {
            **names,
            "description": f"Ids of the rows (each as mid), at most {max_pars}",
        },
        "sid": {
            "type": "string",
            "description": "koa78's session token as a parameter (the headers win)",
        },
    }


def _query_param(
    name: str, schema: dict[str, Any], max_page: int, id_pattern: str = MAX_ID
) -> dict[str, Any]:
    """A query parameter: lists may repeat the key; objects and arrays may be JSON text."""
    listed = name in ("pars", "rows", "ids", "cols")
    scalars: dict[str, dict[str, Any]] = {
        "mid": {"type": "string", "pattern": id_pattern},
        "getstart": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
        "getnumber": {"type": "integer", "minimum": 0, "maximum": max_page},
        "total": {"type": "integer", "enum": [0, 1]},
        "v": {"type": "number"},
        "json": {"type": "integer", "enum": [0, 1]},
        "jsonbase64": {"type": "integer", "enum": [0, 1]},
        "base64": {"type": "integer", "enum": [0, 1]},
        "bcid": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
        "since": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
        "until": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
    }
    value: dict[str, Any] = (
        {"type": "array", "items": {"type": "string"}}
        if listed
        else scalars.get(name, {"type": "string"})
    )
    if name in ("values", "where"):
        value = {**value, "description": "a JSON object, as text"}
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": schema.get("description", "")
        + ("" if not listed else " (repeat the key, or send a JSON array)"),
        "schema": value,
        "style": "form",
        "explode": True,
    }


def priority_header() -> dict[str, Any]:
    return {
        "name": "X-Wf78-Priority",
        "in": "header",
        "required": False,
        "description": "Smaller is more urgent; never above the identity's max_priority",
        "schema": {
            "type": "integer",
            "minimum": -PRIORITY_LIMIT,
            "maximum": PRIORITY_LIMIT,
        },
    }


def idempotency_header() -> dict[str, Any]:
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": (
            "A request replayed with the same key answers the first result and writes or "
            "starts nothing; the key sent with another body answers 422"
        ),
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
    }


def _with_id(params: dict[str, dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    """``values`` and ``rows`` of the methods whose values carry the row's id."""
    return {
        "valuesWithId": {**ref(f"{name}.valuesWithId"), "description": "Values and the id"},
        "rowsWithId": {
            **params["rows"],
            "items": {"anyOf": [ref(f"{name}.valuesWithId"), {"type": "array"}]},
        },
    }


def _data_operation(
    name: str, table: TableConfig, method: str, verb: str, *, koa78: bool
) -> dict[str, Any]:
    used = _METHOD_PARAMS[method]
    used = (*used, *(_ENCODING if "pars" in used else ()), "sid")
    with_id = method in _WITH_ID or (table.id == "text" and method in _TEXT_ID_INSERTS)
    if table.id == "text" and method in _TEXT_ID_INSERTS and "mid" not in used:
        used = ("mid", *used)
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"sid": []}]
    if table.owner is None or method == "getbyBcid":
        security.append({})  # anonymous callers too
    responses: dict[str, Any] = {"200": _done(name, method, koa78=koa78)}
    for status in DATA_ERRORS:
        responses[status] = response_ref(f"Data{status}")
    operation: dict[str, Any] = {
        "operationId": f"{name}.{method}.{verb}",
        "tags": [name],
        "summary": _METHOD_SUMMARY[method],
        "security": security,
        "parameters": [parameter_ref("Priority"), parameter_ref("IdempotencyKey")],
        "responses": responses,
    }
    if method == "getbyBcid" and not table.public_read:
        operation["description"] = "This table has no public_read: always 403."
    if verb == "get":
        operation["parameters"] += [parameter_ref(f"{name}.query.{p}") for p in used]
    else:
        operation["requestBody"] = _request_body(name, used, with_id=with_id)
    return operation


def _done(name: str, method: str, *, koa78: bool = False) -> dict[str, Any]:
    """The 200 answer of ``method``: the envelope with ``res`` 0 and the method's ``back``;
    on a route answering as koa78, also koa78's answer of a write that matched nothing."""
    back = (
        (_KOA78_BACK.get(method) if koa78 else None)
        or _BACK.get(method)
        or {
            "description": "The rows, or {rows, total} with total=1",
            "anyOf": [
                {"type": "array", "items": ref(f"{name}.row")},
                {
                    "type": "object",
                    "properties": {
                        "rows": {"type": "array", "items": ref(f"{name}.row")},
                        "total": {"type": "integer"},
                    },
                    "required": ["rows", "total"],
                },
            ],
        }
    )
    success: dict[str, Any] = {"res": {"const": 0}, "back": back}
    if koa78:
        success["kind"] = {"const": "json"}
    schema: dict[str, Any] = {"allOf": [ref("Envelope"), {"type": "object", "properties": success}]}
    description = "Done: res 0"
    if koa78 and method in MISS_CODES:
        code = MISS_CODES[method]
        missed = {
            "res": {"const": code},
            "kind": {"const": "string"},
            "back": _KOA78_MISSED_BACK.get(method, {"type": "string"}),
        }
        nothing = {"allOf": [ref("Envelope"), {"type": "object", "properties": missed}]}
        schema = {"oneOf": [schema, nothing]}
        description = f"Done: res 0; or nothing matched: res {code} (koa78's answer)"
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _request_body(name: str, used: tuple[str, ...], *, with_id: bool) -> dict[str, Any]:
    """The parameters of a POST, as a JSON object or a form (``with_id``: values and rows
    carry the row's id)."""

    def schema_of(param: str) -> dict[str, str]:
        if param in ("values", "rows") and with_id:
            return ref(f"{name}.param.{param}WithId")
        return ref(f"{name}.param.{param}")

    body = {
        "type": "object",
        "properties": {p: schema_of(p) for p in used},
        "additionalProperties": True,
    }
    form = {
        "type": "object",
        "properties": {
            p: (
                {"type": "array", "items": {"type": "string"}}
                if p in ("pars", "rows", "ids", "cols")
                else {"type": "string"}
            )
            for p in used
        },
    }
    return {
        "required": False,
        "description": "Parameters (the body wins over the query string)",
        "content": {
            "application/json": {"schema": body},
            "application/x-www-form-urlencoded": {"schema": form},
        },
    }


def data_paths(
    config: Config, *, max_page: int, max_pars: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The paths of every routed table's 14 methods, with the schemas and the query
    parameters they refer to: ``(paths, schemas, parameters)``."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    parameters: dict[str, Any] = {}
    modes = {fold_path(route): mode for route, mode in config.http.answers_by_route.items()}
    for name, table in config.tables.items():
        if table.route is None:
            continue
        koa78 = modes.get(fold_path(table.route), config.http.answers) == "koa78"
        schemas.update(_table_schemas(name, table, max_pars))
        params = _data_params(name, table, max_page=max_page, max_pars=max_pars)
        for param, schema in {**params, **_with_id(params, name)}.items():
            schemas[f"{name}.param.{param}"] = schema
        for param, schema in params.items():
            parameters[f"{name}.query.{param}"] = _query_param(
                param, schema, max_page, _id_pattern(table)
            )
        for method in METHODS:
            paths[f"/{table.route}/{name}/{method}"] = {
                verb: _data_operation(name, table, method, verb, koa78=koa78)
                for verb in ("get", "post")
            }
    return paths, schemas, parameters
