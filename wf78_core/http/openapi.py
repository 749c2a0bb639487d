"""An OpenAPI 3.1 document of the HTTP API the middleware serves for one configuration.

:func:`openapi_document` describes the koa78 data routes of every table that has a
``route`` (14 methods each, GET with query parameters and POST with a JSON or form body,
answered with the ``{res, errmsg, kind, back}`` envelope) and the admin routes under the
prefix. The admin routes serve it as ``GET {prefix}/openapi.json`` (admin role needed, like
every route there). The document is a plain, JSON-serialisable dict; the response schemas
of runs, stats and dead letters come from their msgspec structs.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import msgspec

from wf78_core.config import Config, TableConfig
from wf78_core.core.runs import Run
from wf78_core.core.stats import EngineStats
from wf78_core.http.routes import DEFAULT_MAX_PARS, METHODS
from wf78_core.persistence.journal import DeadLetter

__all__ = ["openapi_document"]

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_MAX_ID = "^[0-9]{1,64}$"
_PRIORITY_LIMIT = 999_999_999  # wf78_core.http.parse_priority: at most 9 digits
_MAX_TEXT = 64  # bcid, since, until (wf78_core.routes)
_MAX_OFFSET = 1 << 62  # getstart (wf78_core.routes)

# What each koa78 method reads besides ``sid`` (wf78_core.routes' handlers).
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

# Methods whose values (or rows) carry the row's id.
_WITH_ID = frozenset({"mAddManyByid", "mUpdateByid", "mUpdateMany", "mByid"})

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

# Every refusal a data route may answer, with the envelope's ``kind``.
_DATA_ERRORS = {
    "400": ("invalid", "Bad input; errmsg names the field, parameter or header"),
    "401": ("unauthorized", "No identity, on a table scoped by an owner"),
    "403": ("forbidden", "Identity without the owner field, or getbyBcid without public_read"),
    "404": ("not_found", "Unknown table or method, or no such row of the caller"),
    "409": ("conflict", "A duplicate key or a violated constraint"),
    "413": ("too_large", "Body over max_body, or pars/rows/ids/where list over max_pars"),
    "415": ("unsupported_media", "A body neither JSON nor a form"),
    "429": ("too_many_requests", "Reserved for a rate-limiting plugin"),
    "502": ("source_error", "A data source failed; the server log has the details"),
    "503": ("unavailable", "Engine full (overloaded, with Retry-After) or source unavailable"),
}

_ADMIN_ERRORS = {
    "401": "No identity (WWW-Authenticate: Bearer)",
    "403": "The identity lacks the admin role",
}

_CLIENT_ERROR = {"description": "Bad input; `field` (when given) and `error` name it"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _response_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _column_schema(kind: str) -> dict[str, Any]:
    """What a column accepts in a request (wf78_core.routes' converters)."""
    if kind == "int":
        return {
            "anyOf": [
                {"type": "integer", "minimum": _INT64_MIN, "maximum": _INT64_MAX},
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
        "properties": {"id": {"type": "string", "pattern": _MAX_ID}, **properties},
    }
    filters: dict[str, Any] = {}
    for column, kind in schema.items():
        if column == table.owner:
            continue
        if column == "id":
            single: dict[str, Any] = {"type": "string", "pattern": _MAX_ID}
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
    columns = list(table.columns)
    readable = list(table.schema())
    column_list = ", ".join(columns)
    pars_list = {"type": "array", "maxItems": max_pars}
    names = {
        "oneOf": [
            {"type": "string", "description": "comma-separated"},
            {"type": "array", "items": {"type": "string"}},
        ]
    }
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
        "values": {**_ref(f"{name}.values"), "description": "Values by column name"},
        "rows": {
            "type": "array",
            "maxItems": max_pars,
            "description": f"Rows: objects by column, or arrays in cols order; at most {max_pars}",
            "items": {"anyOf": [_ref(f"{name}.values"), {"type": "array"}]},
        },
        "cols": {
            **names,
            "description": (
                f"Columns: those pars refers to in writes (writable: {column_list}), those read "
                f"in get (any of {', '.join(readable)}); 'all' = every column"
            ),
        },
        "mid": {
            "description": "The row's id: 1 to 64 digits",
            "anyOf": [
                {"type": "string", "pattern": _MAX_ID},
                {"type": "integer", "minimum": 0},
            ],
        },
        "where": {**_ref(f"{name}.where")},
        "order": {
            "description": "'col', 'col asc', 'col desc' or '-col', or a list of them",
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        },
        "getstart": {
            "description": "Rows to skip",
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": _MAX_OFFSET},
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
            "maxLength": _MAX_TEXT,
            "description": "Sharded tables: the first day read (ISO date)",
        },
        "until": {
            "type": "string",
            "minLength": 1,
            "maxLength": _MAX_TEXT,
            "description": "Sharded tables: the last day read (ISO date)",
        },
        "bcid": {
            "type": "string",
            "minLength": 1,
            "maxLength": _MAX_TEXT,
            "description": "The owner whose public rows to read",
        },
        "ids": {
            **names,
            "description": f"Ids of the rows (1 to 64 digits each), at most {max_pars}",
        },
        "sid": {
            "type": "string",
            "description": "koa78's session token as a parameter (the headers win)",
        },
    }


def _query_param(name: str, schema: dict[str, Any], max_page: int) -> dict[str, Any]:
    """A query parameter: lists may repeat the key; objects and arrays may be JSON text."""
    listed = name in ("pars", "rows", "ids", "cols")
    scalars: dict[str, dict[str, Any]] = {
        "mid": {"type": "string", "pattern": _MAX_ID},
        "getstart": {"type": "integer", "minimum": 0, "maximum": _MAX_OFFSET},
        "getnumber": {"type": "integer", "minimum": 0, "maximum": max_page},
        "total": {"type": "integer", "enum": [0, 1]},
        "bcid": {"type": "string", "minLength": 1, "maxLength": _MAX_TEXT},
        "since": {"type": "string", "minLength": 1, "maxLength": _MAX_TEXT},
        "until": {"type": "string", "minLength": 1, "maxLength": _MAX_TEXT},
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


def _priority_header() -> dict[str, Any]:
    return {
        "name": "X-Wf78-Priority",
        "in": "header",
        "required": False,
        "description": "Smaller is more urgent; never above the identity's max_priority",
        "schema": {
            "type": "integer",
            "minimum": -_PRIORITY_LIMIT,
            "maximum": _PRIORITY_LIMIT,
        },
    }


def _idempotency_header() -> dict[str, Any]:
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "A write replayed with the same key answers the first result",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
    }


def _with_id(params: dict[str, dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    """``values`` and ``rows`` of the methods whose values carry the row's id."""
    return {
        "valuesWithId": {**_ref(f"{name}.valuesWithId"), "description": "Values and the id"},
        "rowsWithId": {
            **params["rows"],
            "items": {"anyOf": [_ref(f"{name}.valuesWithId"), {"type": "array"}]},
        },
    }


def _parameter_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


def _data_operation(name: str, table: TableConfig, method: str, verb: str) -> dict[str, Any]:
    used = (*_METHOD_PARAMS[method], "sid")

    def schema_of(param: str) -> dict[str, str]:
        if param in ("values", "rows") and method in _WITH_ID:
            return _ref(f"{name}.param.{param}WithId")
        return _ref(f"{name}.param.{param}")

    anonymous = table.owner is None or method == "getbyBcid"
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"sid": []}]
    if anonymous:
        security.append({})
    back = _BACK.get(method) or {
        "description": "The rows, or {rows, total} with total=1",
        "anyOf": [
            {"type": "array", "items": _ref(f"{name}.row")},
            {
                "type": "object",
                "properties": {
                    "rows": {"type": "array", "items": _ref(f"{name}.row")},
                    "total": {"type": "integer"},
                },
                "required": ["rows", "total"],
            },
        ],
    }
    responses: dict[str, Any] = {
        "200": {
            "description": "Done: res 0",
            "content": {
                "application/json": {
                    "schema": {
                        "allOf": [
                            _ref("Envelope"),
                            {
                                "type": "object",
                                "properties": {"res": {"const": 0}, "back": back},
                            },
                        ]
                    }
                }
            },
        }
    }
    for status in _DATA_ERRORS:
        responses[status] = _response_ref(f"Data{status}")
    operation: dict[str, Any] = {
        "operationId": f"{name}.{method}.{verb}",
        "tags": [name],
        "summary": _METHOD_SUMMARY[method],
        "security": security,
        "parameters": [_parameter_ref("Priority"), _parameter_ref("IdempotencyKey")],
        "responses": responses,
    }
    if method == "getbyBcid" and not table.public_read:
        operation["description"] = "This table has no public_read: always 403."
    if verb == "get":
        operation["parameters"] += [_parameter_ref(f"{name}.query.{p}") for p in used]
        return operation
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
    operation["requestBody"] = {
        "required": False,
        "description": "Parameters (the body wins over the query string)",
        "content": {
            "application/json": {"schema": body},
            "application/x-www-form-urlencoded": {"schema": form},
        },
    }
    return operation


def _admin_operation(
    summary: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    body_required: bool = False,
    security: list[dict[str, list[str]]] | None = None,
    admin_role: str,
) -> dict[str, Any]:
    all_responses = dict(responses)
    for status in _ADMIN_ERRORS:
        all_responses[status] = _response_ref(f"Admin{status}")
    operation: dict[str, Any] = {
        "tags": ["admin"],
        "summary": summary,
        "description": f"Needs an identity with the {admin_role!r} role.",
        "security": security or [{"bearer": []}, {"sid": []}],
        "responses": all_responses,
    }
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": body}},
        }
    return operation


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


def _admin_paths(prefix: str, admin_role: str, max_body: int, run_history: int) -> dict[str, Any]:
    error = _ref("Error")
    too_large = _json(f"Body over {max_body} bytes (max_body)", error)
    overloaded = _json("The engine is full (Retry-After) or shutting down", error)
    accepted_run = _json(
        "Accepted; Location names the run",
        {
            "type": "object",
            "properties": {"run_id": {"type": "string"}},
            "required": ["run_id"],
        },
    )
    run_id = _path_param("run_id", "A run's id")
    page_security: list[dict[str, list[str]]] = [{"bearer": []}, {"sid": []}, {"token": []}]
    html = {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}
    return {
        f"{prefix}/": {
            "get": _admin_operation(
                "The dashboard page (a browser may pass ?token=)",
                {"200": html},
                security=page_security,
                admin_role=admin_role,
            )
        },
        f"{prefix}/static/{{name}}": {
            "get": _admin_operation(
                "A dashboard file",
                {
                    "200": {"description": "The file"},
                    "404": _json("No such file", error),
                },
                parameters=[_path_param("name", "The file's name")],
                security=page_security,
                admin_role=admin_role,
            )
        },
        f"{prefix}/runs": {
            "get": _admin_operation(
                "The newest runs, newest first",
                {
                    "200": _json(
                        "Runs",
                        {
                            "type": "object",
                            "properties": {"runs": {"type": "array", "items": _ref("Run")}},
                            "required": ["runs"],
                        },
                    ),
                    "400": _json("limit out of range", error),
                },
                parameters=[
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "How many (1 to the engine's run_history; default 20)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": run_history},
                    }
                ],
                admin_role=admin_role,
            ),
            "post": _admin_operation(
                "Start a run of a workflow (the api trigger)",
                {
                    "202": accepted_run,
                    "400": _json("Bad body or X-Wf78-Priority", error),
                    "404": _json("Unknown workflow (field: workflow)", error),
                    "413": too_large,
                    "503": overloaded,
                },
                parameters=[_parameter_ref("Priority")],
                body={
                    "type": "object",
                    "properties": {
                        "workflow": {"type": "string"},
                        "context": {"type": "object"},
                    },
                    "required": ["workflow"],
                    "additionalProperties": False,
                },
                body_required=True,
                admin_role=admin_role,
            ),
        },
        f"{prefix}/runs/{{run_id}}": {
            "get": _admin_operation(
                "A run's snapshot",
                {"200": _json("The run", _ref("Run")), "404": _json("Unknown run", error)},
                parameters=[run_id],
                admin_role=admin_role,
            )
        },
        f"{prefix}/runs/{{run_id}}/cancel": {
            "post": _admin_operation(
                "Cancel a run",
                {"200": _json("The run", _ref("Run")), "404": _json("Unknown run", error)},
                parameters=[run_id],
                admin_role=admin_role,
            )
        },
        f"{prefix}/events/{{event}}": {
            "post": _admin_operation(
                "Emit an event: starts every workflow subscribed to it",
                {
                    "202": _json(
                        "The runs started",
                        {
                            "type": "object",
                            "properties": {
                                "run_ids": {"type": "array", "items": {"type": "string"}}
                            },
                            "required": ["run_ids"],
                        },
                    ),
                    "400": _json("The payload is not a JSON object", error),
                    "413": too_large,
                    "503": overloaded,
                },
                parameters=[_path_param("event", "The event's name")],
                body={"type": "object", "description": "The event's payload"},
                admin_role=admin_role,
            )
        },
        f"{prefix}/status": {
            "get": _admin_operation(
                "engine.stats() as JSON",
                {"200": _json("The stats", _ref("EngineStats"))},
                admin_role=admin_role,
            )
        },
        f"{prefix}/dead-letters": {
            "get": _admin_operation(
                "Tasks that failed after their retries and fallbacks, newest first",
                {
                    "200": _json(
                        "Dead letters",
                        {
                            "type": "object",
                            "properties": {
                                "dead_letters": {"type": "array", "items": _ref("DeadLetter")}
                            },
                            "required": ["dead_letters"],
                        },
                    )
                },
                admin_role=admin_role,
            )
        },
        f"{prefix}/dead-letters/{{letter_id}}/retry": {
            "post": _admin_operation(
                "Run a dead letter's task again, in its run",
                {
                    "202": accepted_run,
                    "404": _json("Unknown dead letter (field: letter_id)", error),
                    "409": _json("Its run is still running", error),
                    "503": overloaded,
                },
                parameters=[_path_param("letter_id", "A dead letter's id")],
                admin_role=admin_role,
            )
        },
        f"{prefix}/metrics": {
            "get": _admin_operation(
                "Prometheus text exposition",
                {
                    "200": {
                        "description": "Metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                admin_role=admin_role,
            )
        },
        f"{prefix}/openapi.json": {
            "get": _admin_operation(
                "This document",
                {"200": _json("The OpenAPI document", {"type": "object"})},
                admin_role=admin_role,
            )
        },
    }


def openapi_document(
    config: Config,
    prefix: str = "/_wf78",
    *,
    max_body: int = 1 << 20,
    max_page: int = 1000,
    max_pars: int = DEFAULT_MAX_PARS,
    admin_role: str = "admin",
    title: str = "wf78",
    version: str | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of what ``Wf78Middleware(app, config=config, prefix=prefix,
    max_body=..., max_page=..., max_pars=...)`` serves (the wrapped app's own routes are
    not in it)."""
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    if version is None:
        try:
            version = metadata.version("wf78")
        except metadata.PackageNotFoundError:  # a source tree that is not installed
            version = "0"
    _, struct_schemas = msgspec.json.schema_components(
        (Run, EngineStats, DeadLetter), ref_template="#/components/schemas/{name}"
    )
    schemas: dict[str, Any] = dict(struct_schemas)
    schemas["Envelope"] = {
        "type": "object",
        "description": "koa78's answer: res 0 = success, else -status",
        "properties": {
            "res": {"type": "integer"},
            "errmsg": {"type": "string"},
            "kind": {"type": "string"},
            "back": {},
        },
        "required": ["res", "errmsg", "kind", "back"],
    }
    schemas["Error"] = {
        "type": "object",
        "properties": {
            "error": {"type": "string", "description": "What is wrong, naming the field"},
            "field": {"type": "string", "description": "The field, parameter or header"},
        },
        "required": ["error"],
    }
    responses: dict[str, Any] = {}
    for status, (kind, description) in _DATA_ERRORS.items():
        refusal = {
            "allOf": [
                _ref("Envelope"),
                {
                    "type": "object",
                    "properties": {
                        "res": {"const": -int(status)},
                        "kind": {"type": "string"},
                        "back": {"type": "null"},
                    },
                },
            ],
            "description": f"kind {kind!r}",
        }
        responses[f"Data{status}"] = _json(description, refusal)
    for status, description in _ADMIN_ERRORS.items():
        responses[f"Admin{status}"] = _json(description, _ref("Error"))

    parameters: dict[str, Any] = {
        "Priority": _priority_header(),
        "IdempotencyKey": _idempotency_header(),
    }
    paths: dict[str, Any] = {}
    for name, table in config.tables.items():
        if table.route is None:
            continue
        schemas.update(_table_schemas(name, table, max_pars))
        params = _data_params(name, table, max_page=max_page, max_pars=max_pars)
        for param, schema in {**params, **_with_id(params, name)}.items():
            schemas[f"{name}.param.{param}"] = schema
        for param, schema in params.items():
            parameters[f"{name}.query.{param}"] = _query_param(param, schema, max_page)
        for method in METHODS:
            paths[f"/{table.route}/{name}/{method}"] = {
                verb: _data_operation(name, table, method, verb) for verb in ("get", "post")
            }
    paths.update(_admin_paths(prefix, admin_role, max_body, config.engine.run_history))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "The data routes of the configured tables (koa78's shape) and the admin "
                f"routes under {prefix or '/'} (the {admin_role!r} role)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": parameters,
            "responses": responses,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <token> ([auth.tokens])",
                },
                "sid": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "sid",
                    "description": "koa78's alias of the bearer token",
                },
                "token": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "The dashboard page and its files only",
                },
            },
        },
    }
