"""What the parts of the OpenAPI document share: references, limits, the error answers."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ADMIN_ERRORS",
    "DATA_ERRORS",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_ID",
    "MAX_OFFSET",
    "MAX_TEXT",
    "PRIORITY_LIMIT",
    "TEXT_ID",
    "json_response",
    "parameter_ref",
    "ref",
    "response_ref",
]

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_ID = "^[0-9]{1,64}$"
TEXT_ID = "^[A-Za-z0-9._:-]{1,64}$"  # ids of tables with id = "text" (wf78_core.ids)
PRIORITY_LIMIT = 999_999_999  # wf78_core.http.asgi.parse_priority: at most 9 digits
MAX_TEXT = 64  # bcid, since, until (wf78_core.http.routes.params)
MAX_OFFSET = 1 << 62  # getstart (wf78_core.http.routes.params)

# Every refusal a data route may answer, with the envelope's ``kind``.
DATA_ERRORS = {
    "400": ("invalid", "Bad input; errmsg names the field, parameter or header"),
    "401": ("unauthorized", "No identity, on a table scoped by an owner"),
    "403": ("forbidden", "Identity without the owner field, or getbyBcid without public_read"),
    "404": ("not_found", "No such row of the caller (a koa78 route: 200 with its code)"),
    "409": ("conflict", "A duplicate key or a violated constraint"),
    "413": ("too_large", "Body over max_body, or pars/rows/ids/where list over max_pars"),
    "415": ("unsupported_media", "A body neither JSON nor a form"),
    "422": ("idempotency_conflict", "The Idempotency-Key was first sent with another body"),
    "429": ("too_many_requests", "Reserved for a rate-limiting plugin"),
    "502": ("source_error", "A data source failed; the server log has the details"),
    "503": ("unavailable", "Engine full (overloaded, with Retry-After) or source unavailable"),
}

ADMIN_ERRORS = {
    "401": "No identity (WWW-Authenticate: Bearer)",
    "403": "The identity lacks the admin role",
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def response_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def parameter_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
