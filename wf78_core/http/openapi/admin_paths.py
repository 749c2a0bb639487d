"""The admin routes in the OpenAPI document: every path under the prefix, each needing
the admin role but the dashboard's page and files, which hold no data and load without a
token (the page's scripts send it to the JSON routes)."""

from __future__ import annotations

from typing import Any

from wf78_core.http.openapi.common import (
    ADMIN_ERRORS,
    json_response,
    parameter_ref,
    ref,
    response_ref,
)
from wf78_core.http.openapi.dashboard_paths import (
    dashboard_paths,
    runs_list_parameters,
    runs_list_response,
)

__all__ = ["admin_paths"]


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
    for status in ADMIN_ERRORS:
        all_responses[status] = response_ref(f"Admin{status}")
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


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


def _accepted_run() -> dict[str, Any]:
    return json_response(
        "Accepted; Location names the run",
        {
            "type": "object",
            "properties": {"run_id": {"type": "string"}},
            "required": ["run_id"],
        },
    )


def _overloaded(error: dict[str, Any]) -> dict[str, Any]:
    return json_response("The engine is full (Retry-After) or shutting down", error)


def admin_paths(prefix: str, admin_role: str, max_body: int, run_history: int) -> dict[str, Any]:
    """Every admin path under ``prefix``, in the order the admin app matches them."""
    return {
        **_page_paths(prefix),
        **_run_paths(prefix, admin_role, max_body, run_history),
        **_status_paths(prefix, admin_role),
    }


def _page_operation(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    refused = json_response("A token in the URL's query (use #token=)", ref("Error"))
    return {
        "tags": ["admin"],
        "summary": summary,
        "description": (
            "Static, holds no data: no identity needed (a browser cannot send a bearer "
            "header on a page load). The page takes the token from the URL's fragment "
            "(#token=, never sent to the server) or its form and sends it to the JSON "
            "routes, which need the admin role. ?token= is refused on every admin route."
        ),
        "security": [{}],
        "responses": {**responses, "400": refused},
        **extra,
    }


def _page_paths(prefix: str) -> dict[str, Any]:
    """The dashboard's page and files."""
    html = {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}
    return {
        f"{prefix}/": {"get": _page_operation("The dashboard page", {"200": html})},
        f"{prefix}/static/{{name}}": {
            "get": _page_operation(
                "A dashboard file",
                {
                    "200": {"description": "The file"},
                    "404": json_response("No such file", ref("Error")),
                },
                parameters=[_path_param("name", "The file's name")],
            )
        },
    }


def _run_paths(prefix: str, admin_role: str, max_body: int, run_history: int) -> dict[str, Any]:
    """Starting, reading and cancelling runs, and emitting events."""
    error = ref("Error")
    too_large = json_response(f"Body over {max_body} bytes (max_body)", error)
    overloaded = _overloaded(error)
    accepted_run = _accepted_run()
    # The same key answers the first run's ids (202); with another body, 422.
    reused = json_response("The Idempotency-Key was first sent with another body", error)
    run_id = _path_param("run_id", "A run's id")
    return {
        f"{prefix}/runs": {
            "get": _admin_operation(
                "The newest runs, newest first: filtered by workflow, status and time, paged",
                {
                    "200": runs_list_response(),
                    "400": json_response("A bad filter or page (field names it)", error),
                },
                parameters=runs_list_parameters(run_history),
                admin_role=admin_role,
            ),
            "post": _admin_operation(
                "Start a run of a workflow (the api trigger)",
                {
                    "202": accepted_run,
                    "400": json_response("Bad body or X-Wf78-Priority", error),
                    "404": json_response("Unknown workflow (field: workflow)", error),
                    "413": too_large,
                    "422": reused,
                    "503": overloaded,
                },
                parameters=[parameter_ref("Priority"), parameter_ref("IdempotencyKey")],
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
                {
                    "200": json_response("The run", ref("Run")),
                    "404": json_response("Unknown run", error),
                },
                parameters=[run_id],
                admin_role=admin_role,
            )
        },
        f"{prefix}/runs/{{run_id}}/cancel": {
            "post": _admin_operation(
                "Cancel a run",
                {
                    "200": json_response("The run", ref("Run")),
                    "404": json_response("Unknown run", error),
                },
                parameters=[run_id],
                admin_role=admin_role,
            )
        },
        **dashboard_paths(prefix, _admin_operation, run_id, admin_role),
        f"{prefix}/events/{{event}}": {
            "post": _admin_operation(
                "Emit an event: starts every workflow subscribed to it",
                {
                    "202": json_response(
                        "The runs started",
                        {
                            "type": "object",
                            "properties": {
                                "run_ids": {"type": "array", "items": {"type": "string"}}
                            },
                            "required": ["run_ids"],
                        },
                    ),
                    "400": json_response("The payload is not a JSON object", error),
                    "413": too_large,
                    "422": reused,
                    "503": overloaded,
                },
                parameters=[
                    _path_param("event", "The event's name"),
                    parameter_ref("IdempotencyKey"),
                ],
                body={"type": "object", "description": "The event's payload"},
                admin_role=admin_role,
            )
        },
    }


def _status_paths(prefix: str, admin_role: str) -> dict[str, Any]:
    """The engine's status, dead letters, metrics and this document."""
    error = ref("Error")
    overloaded = _overloaded(error)
    accepted_run = _accepted_run()
    return {
        f"{prefix}/status": {
            "get": _admin_operation(
                "engine.stats() as JSON",
                {"200": json_response("The stats", ref("EngineStats"))},
                admin_role=admin_role,
            )
        },
        f"{prefix}/dead-letters": {
            "get": _admin_operation(
                "Tasks that failed after their retries and fallbacks, newest first",
                {
                    "200": json_response(
                        "Dead letters",
                        {
                            "type": "object",
                            "properties": {
                                "dead_letters": {"type": "array", "items": ref("DeadLetter")}
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
                    "404": json_response("Unknown dead letter (field: letter_id)", error),
                    "409": json_response("Its run is still running", error),
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
                {"200": json_response("The OpenAPI document", {"type": "object"})},
                admin_role=admin_role,
            )
        },
    }
