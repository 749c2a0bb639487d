"""Spans for work that serves many operations at once (a group commit, a pipeline).

With tracing on, each data operation is a span (:mod:`wf78_core.core.tracing`); a batch that
applies many of them is a span of its own, with a link to each operation's span (what
OpenTelemetry recommends for batches: one parent cannot hold many). A plugin notes the
operation's span when it takes a write (:func:`operation_span`) and wraps the batch in
:func:`batch_span`. Without ``opentelemetry-api`` loaded, or with no span recording, both
cost one dictionary lookup and make nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["batch_span", "operation_span"]

_API = "opentelemetry.trace"


def operation_span() -> Any | None:
    """The span context of the operation being served now, or None (tracing off)."""
    api = sys.modules.get(_API)  # loaded only where tracing may be on
    if api is None:
        return None
    span = api.get_current_span()
    return span.get_span_context() if span.is_recording() else None


@contextmanager
def batch_span(
    name: str, operations: Sequence[Any | None], attributes: dict[str, Any] | None = None
) -> Iterator[None]:
    """A span ``name`` around the batch, linked to the span of each of its ``operations``
    (their :func:`operation_span`); nothing when none of them is traced."""
    links = [context for context in operations if context is not None]
    api = sys.modules.get(_API)
    if api is None or not links:
        yield
        return
    tracer = api.get_tracer("wf78")
    with tracer.start_as_current_span(
        name,
        kind=api.SpanKind.CLIENT,
        context=api.set_span_in_context(api.INVALID_SPAN),  # a root: its links say whose
        links=[api.Link(context) for context in links],
        attributes={"wf78.batch.size": len(operations), **(attributes or {})},
    ):
        yield
