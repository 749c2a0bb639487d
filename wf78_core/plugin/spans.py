"""Spans for work that serves many operations at once (a group commit, a pipeline).

With tracing on, each data operation is a span (:mod:`wf78_core.core.tracing`); a batch that
applies many of them is a span of its own, with a link to each operation's span (what
OpenTelemetry recommends for batches: one parent cannot hold many). A plugin notes the
operation's span when it takes a write (:func:`operation_span`) and wraps the batch in
:func:`batch_span`. Without ``opentelemetry-api`` loaded, or without a tracer provider set,
:func:`operation_span` costs a dictionary lookup and an attribute read; with a provider but
no span recording, a look at the current span. Either way it and :func:`batch_span` (given
no operation span) make nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["batch_span", "may_trace", "operation_span"]

_API = "opentelemetry.trace"
# The API's global tracer provider, None until the app sets one (or the API loads the one
# its environment names): till then no span records. Other libraries load the API too
# (redis-py does), so this test, not the import, is what keeps an untraced process from
# looking up its current span for every write (about 3x the time of this test).
_PROVIDER = "_TRACER_PROVIDER"


def may_trace() -> bool:
    """Whether a span may record in this process: the OpenTelemetry API is loaded and the
    app set a tracer provider (what ``wf78_core.core.tracing`` asks once per engine). A
    plugin asks once, when its source opens, where a per-operation look would cost."""
    api = sys.modules.get(_API)
    if api is None:
        return False
    provider = api.get_tracer_provider()
    return not isinstance(provider, api.ProxyTracerProvider | api.NoOpTracerProvider)


def operation_span() -> Any | None:
    """The span context of the operation being served now, or None (tracing off)."""
    api = sys.modules.get(_API)  # loaded only where tracing may be on
    # A missing attribute (an API that renamed it) reads as "maybe set": look the span up.
    if api is None or getattr(api, _PROVIDER, api) is None:
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
