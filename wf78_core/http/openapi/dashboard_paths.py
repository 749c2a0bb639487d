"""The dashboard's read routes in the OpenAPI document (``wf78_core.http.admin_views``):
the runs listed with filters and pages, a run as a DAG, the history and the workflows."""

from __future__ import annotations

from typing import Any

from wf78_core.http.openapi.common import json_response, ref

__all__ = ["dashboard_paths", "runs_list_parameters", "runs_list_response"]

_STATUSES = ["pending", "running", "succeeded", "failed", "cancelled"]
_SAMPLE = {
    "type": "object",
    "properties": {
        "t": {"type": "integer", "description": "The second it ends (seconds since the epoch)"},
        "ops": {"type": "number"},
        "errors": {"type": "number"},
        "queued": {"type": "integer"},
        "running": {"type": "integer"},
        "sources": {"type": "object", "additionalProperties": {"type": "object"}},
        "workflows": {"type": "object", "additionalProperties": {"type": "integer"}},
        "nodes": {"type": "integer"},
    },
    "required": ["t", "ops", "errors", "queued", "running", "sources", "workflows"],
}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def runs_list_parameters(run_history: int) -> list[dict[str, Any]]:
    """``GET {prefix}/runs``'s query: a page, and the filters."""
    epoch = {"type": "number", "minimum": 0}
    return [
        _query(
            "limit",
            "How many (1 to the engine's run_history; default 20)",
            {"type": "integer", "minimum": 1, "maximum": run_history},
        ),
        _query(
            "offset",
            "How many matching runs to pass over, newest first (default 0)",
            {"type": "integer", "minimum": 0, "maximum": run_history},
        ),
        _query("workflow", "Only this workflow's runs", {"type": "string"}),
        _query("status", "Only runs in this status", {"type": "string", "enum": _STATUSES}),
        _query("since", "Only runs created at or after (seconds since the epoch)", epoch),
        _query("until", "Only runs created at or before (seconds since the epoch)", epoch),
    ]


def runs_list_response() -> dict[str, Any]:
    return json_response(
        "A page of runs, newest first",
        {
            "type": "object",
            "properties": {
                "runs": {"type": "array", "items": ref("Run")},
                "offset": {"type": "integer"},
                "limit": {"type": "integer"},
                "next_offset": {"type": ["integer", "null"]},
                "total": {"type": "integer", "description": "Matching runs (when filtered)"},
            },
            "required": ["runs", "offset", "limit", "next_offset"],
        },
    )


def _graph() -> dict[str, Any]:
    task = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "depends_on": {"type": "array", "items": {"type": "string"}},
            "state": {"type": "string"},
            "attempts": {"type": "integer"},
            "params": {"type": ["string", "null"], "description": "JSON text"},
            "result": {"type": ["string", "null"], "description": "JSON text, cut"},
            "result_truncated": {"type": "boolean"},
            "error": {"type": ["string", "null"]},
            "data_source": {"type": ["string", "null"]},
            "dead_letter": {"type": ["string", "null"], "description": "Its dead letter's id"},
        },
        "required": ["id", "depends_on", "state", "attempts", "result", "result_truncated"],
    }
    return {
        "type": "object",
        "properties": {"run": {"type": "object"}, "tasks": {"type": "array", "items": task}},
        "required": ["run", "tasks"],
    }


def dashboard_paths(
    prefix: str, operation: Any, run_id: dict[str, Any], admin_role: str
) -> dict[str, Any]:
    """``operation`` builds an admin operation (the admin paths' own builder)."""
    error = ref("Error")
    bad = json_response("A bad query parameter (field names it)", error)
    return {
        f"{prefix}/runs/{{run_id}}/graph": {
            "get": operation(
                "A run as a DAG: each task's depends_on, params, result (cut), attempts, error",
                {
                    "200": json_response("The run and its tasks", _graph()),
                    "404": json_response("Unknown run (field: run_id)", error),
                },
                parameters=[run_id],
                admin_role=admin_role,
            )
        },
        f"{prefix}/history": {
            "get": operation(
                "One sample a second for the last 15 minutes (the cluster's on redis)",
                {
                    "200": json_response(
                        "The samples, oldest first",
                        {
                            "type": "object",
                            "properties": {
                                "samples": {"type": "array", "items": _SAMPLE},
                                "window": {"type": "integer"},
                                "interval": {"type": "number"},
                                "cluster": {"type": "boolean"},
                                "problem": {"type": ["string", "null"]},
                            },
                            "required": ["samples", "window", "interval", "cluster"],
                        },
                    ),
                    "400": bad,
                },
                parameters=[
                    _query(
                        "since",
                        "Only samples after this second (seconds since the epoch)",
                        {"type": "number", "minimum": 0},
                    )
                ],
                admin_role=admin_role,
            )
        },
        f"{prefix}/workflows": {
            "get": operation(
                "The workflows: trigger, schedule or event, next fire time",
                {
                    "200": json_response(
                        "The workflows",
                        {
                            "type": "object",
                            "properties": {
                                "workflows": {"type": "array", "items": {"type": "object"}},
                                "now": {"type": "number"},
                            },
                            "required": ["workflows", "now"],
                        },
                    )
                },
                admin_role=admin_role,
            )
        },
    }
