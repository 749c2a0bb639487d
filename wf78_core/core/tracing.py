"""OpenTelemetry spans (CONTRACT.md, "Tracing"): one per data operation, one per workflow
run with a child per task attempt, joined to the caller's trace.

On only when ``opentelemetry-api`` is importable (the ``wf78[otel]`` extra) and the app set
a tracer provider (``trace.set_tracer_provider``) before the engine was built. That is
decided once, when a :class:`~wf78_core.core.dispatch.Dispatcher` is made
(:func:`instrument`): when it is on, the dispatcher's ``execute`` and ``enqueue`` are
replaced by traced ones on that instance; when it is off nothing is replaced, and the
remaining hooks (runs, tasks, the HTTP ``traceparent``) are one ``is None`` test each.

Spans:

``{action} {table or key}`` (kind CLIENT)
    a data operation: ``db.system.name`` (the source's type), ``db.operation.name`` (the
    action), ``db.collection.name`` (the table), ``wf78.data_source``, ``wf78.agent``,
    ``wf78.attempts``, ``wf78.fallback_from``, ``wf78.reason`` (why that source),
    ``wf78.tenant``; each retry and fallback is an event (``wf78.retry``,
    ``wf78.fallback``); a failure is recorded as an exception event, ``error.type``, and
    status ERROR.
``wf78.run {workflow}``
    a workflow run, from its start to its end in this process; started by a Redis
    backend, it covers the queueing (kind PRODUCER) and the workers' task spans are its
    children, through the ``traceparent`` kept with the run.
``wf78.task {task}``
    one attempt of a task, child of its run's span; the task's data operations are its
    children.

The parent of a span is the context current where the work was asked for: inside a request
the server instrumentation's span, or the incoming ``traceparent`` header that
:func:`joined` reads when no instrumentation made a span.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from wf78_core.core import logcontext
from wf78_core.core.fairness import TENANT

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from wf78_core.core.sources import SourcePool
    from wf78_core.definitions import Operation, Result, TaskDefinition

__all__ = [
    "TRACEPARENT",
    "TRACER",
    "RunTrace",
    "detect",
    "failed",
    "instrument",
    "joined",
    "noted",
    "queued_run",
    "task_span",
    "traceparent",
]

T = TypeVar("T")

#: the tracer of the engine built last, or None: tracing is off (see :func:`detect`)
TRACER: Tracer | None = None
#: the W3C header (and the field a queued run keeps it in)
TRACEPARENT = "traceparent"
_SCOPE_NAME = "wf78"
# The API's own way to name a provider without importing it (auto-configuration).
_PROVIDER_ENV = "OTEL_PYTHON_TRACER_PROVIDER"

# The API's modules, imported only once some code imported it (a process that never traces
# loads none of it: fewer objects for every garbage collection to scan).
otel_context: Any = None
otel_trace: Any = None
SpanKind: Any = None
StatusCode: Any = None
_PROPAGATOR: Any = None


def _load() -> bool:
    """Import the API's modules wf78 uses; False when it is not installed."""
    global otel_context, otel_trace, SpanKind, StatusCode, _PROPAGATOR
    try:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:  # the [otel] extra is not installed: tracing stays off
        return False
    otel_context, otel_trace = context, trace
    SpanKind, StatusCode = trace.SpanKind, trace.StatusCode
    _PROPAGATOR = TraceContextTextMapPropagator()
    return True


def detect() -> Tracer | None:
    """wf78's tracer, or None when ``opentelemetry-api`` is missing or the app set no
    tracer provider (the API's default proxy, or a no-op provider)."""
    if otel_trace is None:
        if "opentelemetry.trace" not in sys.modules and _PROVIDER_ENV not in os.environ:
            return None  # nothing imported the API, so nothing set a provider
        if not _load():
            return None
    provider = otel_trace.get_tracer_provider()
    if isinstance(provider, otel_trace.ProxyTracerProvider | otel_trace.NoOpTracerProvider):
        return None
    tracer: Tracer = provider.get_tracer(_SCOPE_NAME)
    return tracer


def instrument(dispatcher: Any, pool: SourcePool) -> Tracer | None:
    """Decide once whether this engine traces; when it does, give ``dispatcher`` a traced
    ``execute`` and ``enqueue``. Returns the tracer (None: off, nothing changed)."""
    global TRACER
    tracer = TRACER = detect()
    if tracer is None:
        return None
    execute: Callable[..., Awaitable[Result]] = dispatcher.execute
    enqueue: Callable[..., Awaitable[Any]] = dispatcher.enqueue
    # A queued ticket runs in a task started by whoever freed its slot: its span's parent
    # is the context it was enqueued in, kept here (by operation) until it runs.
    queued: dict[int, tuple[Operation, Context]] = {}

    async def traced_execute(op: Operation, level: int, context: Any, **options: Any) -> Result:
        if not options.get("join", True):  # a shared read's own run: the caller's span
            return await execute(op, level, context, **options)
        parent = None
        if options.get("held") is not None:
            parent = queued.pop(id(op), (None, None))[1]
        span = tracer.start_span(
            _operation_name(op), parent, SpanKind.CLIENT, _operation_attributes(op)
        )
        token = otel_context.attach(otel_trace.set_span_in_context(span, parent))
        try:
            result = await execute(op, level, context, **options)
        except BaseException as error:
            _operation_failed(span, error, pool)
            raise
        else:
            _operation_succeeded(span, result)
            return result
        finally:
            otel_context.detach(token)
            span.end()

    async def traced_enqueue(op: Operation, **options: Any) -> Any:
        parent = otel_context.get_current()
        ticket = await enqueue(op, **options)
        queued[id(ticket.operation)] = (ticket.operation, parent)
        return ticket

    # Instance attributes: the untraced class methods stay as they are.
    setattr(dispatcher, "execute", traced_execute)  # noqa: B010
    setattr(dispatcher, "enqueue", traced_enqueue)  # noqa: B010
    return tracer


def _operation_name(op: Operation) -> str:
    target = op.table if op.table is not None else op.key
    return op.action if target is None else f"{op.action} {target}"


def _operation_attributes(op: Operation) -> dict[str, Any]:
    attributes: dict[str, Any] = {"db.operation.name": op.action}
    if op.table is not None:
        attributes["db.collection.name"] = op.table
    tenant = TENANT.get() or logcontext.bound().get("tenant")
    if tenant:
        attributes["wf78.tenant"] = tenant
    return attributes


def _operation_succeeded(span: Span, result: Result) -> None:
    span.set_attributes(
        {
            "db.system.name": result.source_type,
            "wf78.data_source": result.data_source,
            "wf78.attempts": result.attempts,
            "wf78.fallback_from": list(result.fallback_from),
            "wf78.reason": result.reason,
        }
    )
    if result.agent is not None:
        span.set_attribute("wf78.agent", result.agent)


def _operation_failed(span: Span, error: BaseException, pool: SourcePool) -> None:
    name = getattr(error, "data_source", None)
    if isinstance(name, str):
        span.set_attribute("wf78.data_source", name)
        source = pool.named.get(name)
        if source is not None:
            span.set_attribute("db.system.name", source.type)
    attempts = getattr(error, "attempts", None)
    if isinstance(attempts, int) and attempts:
        span.set_attribute("wf78.attempts", attempts)
    _failed(span, error)


def _failed(span: Span, error: BaseException) -> None:
    span.set_attribute("error.type", type(error).__name__)
    span.record_exception(error)
    span.set_status(StatusCode.ERROR, type(error).__name__)


def noted(fallback: bool, source: str, attempt: int, error: BaseException | None) -> None:
    """A retry (or, ``fallback``, a fallback) of the current operation, as an event of its
    span: the source tried next, the attempt's number, what failed before it."""
    span = otel_trace.get_current_span()
    span.add_event(
        "wf78.fallback" if fallback else "wf78.retry",
        {
            "wf78.data_source": source,
            "wf78.attempt": attempt,
            "error.type": type(error).__name__ if error is not None else "",
        },
    )


class RunTrace:
    """The span of one workflow run: its parent is the context the run was made in."""

    __slots__ = ("parent", "span")

    def __init__(self) -> None:
        self.parent: Context = otel_context.get_current()
        self.span: Span | None = None

    def start(self, run_id: str, workflow: str) -> None:
        if self.span is None and TRACER is not None:
            self.span = TRACER.start_span(
                f"wf78.run {workflow}",
                self.parent,
                attributes={"wf78.run_id": run_id, "wf78.workflow": workflow},
            )

    def finish(self, status: str, error: str | None) -> None:
        span, self.span = self.span, None
        if span is None:
            return
        span.set_attribute("wf78.status", status)
        if status == "failed":
            span.set_status(StatusCode.ERROR, error or "failed")
        span.end()

    def context(self) -> Context:
        """The context a task of the run starts its span in."""
        if self.span is None:
            return self.parent
        context: Context = otel_trace.set_span_in_context(self.span, self.parent)
        return context


@contextmanager
def task_span(
    tracer: Tracer,
    run_id: str,
    workflow: str,
    task: TaskDefinition,
    attempt: int,
    parent: RunTrace | str | None,
) -> Iterator[Span]:
    """The current span while one attempt of ``task`` runs: ``wf78.task {task}``, child
    of its run's span (``parent``), or of the ``traceparent`` a queued run carried."""
    if isinstance(parent, RunTrace):
        context, kind = parent.context(), SpanKind.INTERNAL
    elif parent:
        context, kind = _PROPAGATOR.extract({TRACEPARENT: parent}), SpanKind.CONSUMER
    else:
        context, kind = None, SpanKind.INTERNAL
    span = tracer.start_span(
        f"wf78.task {task.id}",
        context,
        kind,
        {
            "wf78.run_id": run_id,
            "wf78.workflow": workflow,
            "wf78.task": task.id,
            "wf78.action": task.action,
            "wf78.attempts": attempt,
        },
    )
    token = otel_context.attach(otel_trace.set_span_in_context(span, context))
    try:
        yield span
    finally:
        otel_context.detach(token)
        span.end()


def failed(span: Span, error: BaseException) -> None:
    """Record ``error`` on ``span``: an exception event, ``error.type``, status ERROR."""
    _failed(span, error)


def traceparent(span: Span | None = None) -> str | None:
    """The W3C ``traceparent`` of ``span`` (default: the current one); None without one."""
    if otel_trace is None:
        return None
    carrier: dict[str, str] = {}
    context = None if span is None else otel_trace.set_span_in_context(span)
    _PROPAGATOR.inject(carrier, context)
    return carrier.get(TRACEPARENT)


@contextmanager
def queued_run(workflow: str, run_id: str) -> Iterator[str | None]:
    """Around queueing a run for other processes: its ``wf78.run`` span (kind PRODUCER),
    and the ``traceparent`` to keep with it (None: tracing is off)."""
    tracer = TRACER
    if tracer is None:
        yield None
        return
    span = tracer.start_span(
        f"wf78.run {workflow}",
        kind=SpanKind.PRODUCER,
        attributes={"wf78.run_id": run_id, "wf78.workflow": workflow, "wf78.queued": True},
    )
    try:
        yield traceparent(span)
    except BaseException as error:
        _failed(span, error)
        raise
    finally:
        span.end()


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        if name in (b"traceparent", b"tracestate"):
            found[name.decode("latin-1")] = value.decode("latin-1")
    return found


async def joined(scope: Mapping[str, Any], work: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
    """Await ``work`` in the trace of the request ``scope``: when no server
    instrumentation made a span, the one its ``traceparent`` header names (if any)."""
    if otel_trace.get_current_span().get_span_context().is_valid:
        return await work  # the server's instrumentation: its span is the parent
    carrier = _headers(scope)
    if TRACEPARENT not in carrier:
        return await work
    token = otel_context.attach(_PROPAGATOR.extract(carrier))
    try:
        return await work
    finally:
        otel_context.detach(token)
