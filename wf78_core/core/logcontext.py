"""What a log line was about: the run, task, workflow, data source and tenant of the work
being done when it was logged, and the trace and span ids when tracing is on.

The engine binds these fields in a :class:`~contextvars.ContextVar` around the work they
describe (a task attempt, with its run's tenant: :mod:`wf78_core.core.taskspans`); else the
tenant is the one set for fair shares (:data:`wf78_core.core.fairness.TENANT`: by a
``Table`` call with an identity, a data route's included). :class:`ContextFilter` copies
them onto each :class:`logging.LogRecord` that passes a handler it is attached to, and
:class:`JsonFormatter` writes one JSON object per record (``--log-format json`` of
``wf78 serve``, ``worker``, ``run`` and ``maintain``).
A record names what was done, never the values of rows or tokens: the fields hold ids and
names only, and the formatter adds nothing but the record's own message.

    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import Any

from wf78_core.core.fairness import TENANT

__all__ = [
    "FIELDS",
    "ContextFilter",
    "JsonFormatter",
    "bind",
    "bound",
    "unbind",
]

#: the fields a record may carry, in the order :class:`JsonFormatter` writes them
FIELDS = ("run_id", "task_id", "workflow", "data_source", "tenant", "trace_id", "span_id")

_NONE: Mapping[str, str] = {}
_FIELDS: ContextVar[Mapping[str, str]] = ContextVar("wf78_log_fields", default=_NONE)


def bind(**fields: str | None) -> Token[Mapping[str, str]]:
    """Add ``fields`` (None values are left out) to the current context's log fields until
    :func:`unbind` with the token returned."""
    merged = dict(_FIELDS.get())
    for name, value in fields.items():
        if value is not None:
            merged[name] = value
    return _FIELDS.set(merged)


def unbind(token: Token[Mapping[str, str]]) -> None:
    _FIELDS.reset(token)


def bound() -> Mapping[str, str]:
    """The log fields bound in the current context."""
    return _FIELDS.get()


class ContextFilter(logging.Filter):
    """Copies the bound fields (and the current trace and span ids, when a span is being
    recorded) onto every record; lets every record pass. A field the record already has
    (``extra=``) is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _FIELDS.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        if not hasattr(record, "tenant"):
            tenant = TENANT.get()
            if tenant:
                record.tenant = tenant
        # The API, if some code imported it (wf78 never imports it only for this).
        otel_trace = sys.modules.get("opentelemetry.trace")
        if otel_trace is not None and not hasattr(record, "trace_id"):
            span = otel_trace.get_current_span().get_span_context()
            if span.is_valid:
                record.trace_id = format(span.trace_id, "032x")
                record.span_id = format(span.span_id, "016x")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the context fields the record has, ``process``, and ``exception`` (the
    formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z"
        line: dict[str, Any] = {
            "time": stamp,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        line["process"] = record.process
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)
