"""The whole OpenAPI document: the data and admin paths, and the components they refer to."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import msgspec

from wf78_core.config import Config
from wf78_core.core.runs import Run
from wf78_core.core.stats import EngineStats
from wf78_core.http.openapi.admin_paths import admin_paths
from wf78_core.http.openapi.common import ADMIN_ERRORS, DATA_ERRORS, json_response, ref
from wf78_core.http.openapi.data_paths import data_paths, idempotency_header, priority_header
from wf78_core.http.routes import DEFAULT_MAX_PARS
from wf78_core.persistence.journal import DeadLetter

__all__ = ["openapi_document"]


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
    paths, table_schemas, query_parameters = data_paths(
        config, max_page=max_page, max_pars=max_pars
    )
    paths.update(admin_paths(prefix, admin_role, max_body, config.engine.run_history))
    parameters: dict[str, Any] = {
        "Priority": priority_header(),
        "IdempotencyKey": idempotency_header(),
        **query_parameters,
    }
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
            "schemas": {**_shared_schemas(), **table_schemas},
            "parameters": parameters,
            "responses": _error_responses(),
            "securitySchemes": _security_schemes(),
        },
    }


def _shared_schemas() -> dict[str, Any]:
    """Runs, stats and dead letters (from their msgspec structs), the envelope, the error."""
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
    return schemas


def _error_responses() -> dict[str, Any]:
    """Every refusal of a data route (the envelope) and of an admin route (``Error``)."""
    responses: dict[str, Any] = {}
    for status, (kind, description) in DATA_ERRORS.items():
        refusal = {
            "allOf": [
                ref("Envelope"),
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
        responses[f"Data{status}"] = json_response(description, refusal)
    for status, description in ADMIN_ERRORS.items():
        responses[f"Admin{status}"] = json_response(description, ref("Error"))
    return responses


def _security_schemes() -> dict[str, Any]:
    """Bearer tokens and koa78's ``sid`` header."""
    return {
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
    }
