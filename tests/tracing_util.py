"""OpenTelemetry in tests: a tracer provider with an in-memory exporter, set as the global
provider for one test and taken away after it (the API lets a process set it only once, so
the fixture resets the API's globals), and helpers to read the finished spans' tree."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

__all__ = ["by_name", "children", "reset_tracing", "span_tree", "traced"]


def reset_tracing() -> None:
    """Forget the global tracer provider (tests only: the API allows one per process)."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # noqa: SLF001 (the API has no reset)
    trace._TRACER_PROVIDER = None  # noqa: SLF001


@pytest.fixture
def traced() -> Iterator[InMemorySpanExporter]:
    """A global SDK tracer provider for this test; its finished spans in the exporter.
    Engines built inside the test trace; those built after it do not."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reset_tracing()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        reset_tracing()
        provider.shutdown()


def by_name(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [
        span
        for span in spans
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    ]


def span_tree(spans: Sequence[ReadableSpan]) -> str:
    """The spans as an indented tree (roots first, children by start time), with their
    wf78 and db attributes: what the README shows."""
    ids = {span.context.span_id for span in spans if span.context is not None}
    roots = [span for span in spans if span.parent is None or span.parent.span_id not in ids]
    lines: list[str] = []

    def show(span: ReadableSpan, depth: int) -> None:
        attributes = span.attributes or {}
        shown = ", ".join(
            f"{key}={value!r}" if not isinstance(value, tuple) else f"{key}={list(value)!r}"
            for key, value in attributes.items()
            if key.startswith(("db.", "wf78.", "error."))
        )
        status = "" if span.status.is_ok else f" [{span.status.status_code.name}]"
        lines.append(f"{'  ' * depth}{span.name}{status}" + (f"  ({shown})" if shown else ""))
        for event in span.events:
            lines.append(f"{'  ' * (depth + 1)}event {event.name} {dict(event.attributes or {})}")
        for child in sorted(children(spans, span), key=lambda s: s.start_time or 0):
            show(child, depth + 1)

    for root in sorted(roots, key=lambda s: s.start_time or 0):
        show(root, 0)
    return "\n".join(lines)
