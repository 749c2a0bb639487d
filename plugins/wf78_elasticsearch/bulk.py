"""Grouped writes: the index, update and delete requests of many callers in one ``_bulk``.

Callers put a :class:`Write` (its NDJSON items, already encoded) on a bounded stream and wait
for its ``done`` event. :meth:`BulkWriter.run` takes the first write, then every write
already waiting while the items stay within ``max_bulk``, and sends them as one ``_bulk``
request. Elasticsearch answers each item on its own, in request order, so every caller gets
its own items' answers: one refused document (a duplicate id, a mapping error) fails only
its caller. A failed request (unreachable cluster, timeout, 429 or 5xx for the whole
request) fails every item it carried with the mapped, usually retryable, error.

With tracing on, a write handed to the loop notes its operation's span
(:func:`~wf78_core.plugin.operation_span`), and the loop sends each batch inside a span
``BULK {source}`` (:func:`~wf78_core.plugin.batch_span`): a root span linked to the span of
every operation it carried, with ``wf78.batch.size`` (its writes; one write larger than
``max_bulk`` goes out in several requests under that one span). A write sent by its caller
(no loop running) runs under its operation's span and makes no batch span.

``client.bulk`` is called directly rather than through ``helpers.async_bulk``: the helper
reports only the failed items, without their position, and may split or retry on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from elasticsearch import AsyncElasticsearch

from wf78_core.plugin import DataSourceError, batch_span, operation_span

from .errors import closed_error, map_error

__all__ = ["BulkWriter", "Item", "Response", "Write"]

# The NDJSON lines of one bulk item: the action line, then the document (not for delete).
Item = tuple[bytes, ...]
# What one item got back: Elasticsearch's answer (``{"status": 201, "_id": ...}``) or the
# error of the request that carried it.
Response = Mapping[str, Any] | DataSourceError
Refresh = Literal["false", "true", "wait_for"]


@dataclass(eq=False)
class Write:
    """One caller's bulk items; after ``done`` is set, ``responses`` answers each of them."""

    items: list[Item]
    responses: list[Response | None] = field(init=False)
    done: anyio.Event = field(default_factory=anyio.Event)
    #: the span of the operation it serves (tracing on), linked from its batch's span
    span: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.responses = [None] * len(self.items)

    def fail(self, error: DataSourceError) -> None:
        """Answer the items still unanswered with ``error`` and wake the caller."""
        self.responses = [error if r is None else r for r in self.responses]
        self.done.set()


class BulkWriter:
    """Sends writes as ``_bulk`` requests: grouped while :meth:`run` runs, else one by one.

    Without a running loop (``run`` never started, or already stopped) :meth:`submit` sends
    the caller's write as its own bulk request, so direct use needs no task group.
    ``bulks`` counts bulk requests sent, ``documents`` the items they carried.
    """

    def __init__(
        self,
        client: AsyncElasticsearch,
        *,
        source: str,
        max_bulk: int,
        queue_size: int,
        refresh: Refresh,
    ) -> None:
        self.client = client
        self.source = source
        self.max_bulk = max_bulk
        self.queue_size = queue_size
        self.refresh = refresh
        self.bulks = 0
        self.documents = 0
        self._send: MemoryObjectSendStream[Write] | None = None

    @property
    def running(self) -> bool:
        return self._send is not None

    async def submit(self, write: Write) -> list[Response]:
        """Send ``write`` and return one response per item, in order.

        A caller cancelled while waiting leaves its write queued: it may still be sent.
        """
        send = self._send
        if send is None:
            await self._flush([write])
        else:
            write.span = operation_span()
            try:
                await send.send(write)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise closed_error(self.source) from None
            await write.done.wait()
        return [r if r is not None else closed_error(self.source) for r in write.responses]

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The grouping loop, until cancelled. The bulk in flight then completes (shielded,
        bounded by the request timeout); writes still queued fail as retryable."""
        if self._send is not None:
            raise RuntimeError(
                f"the bulk writer of elasticsearch source {self.source!r} is already running"
            )
        send, receive = anyio.create_memory_object_stream[Write](self.queue_size)
        self._send = send
        # A write taken from the stream that did not fit the last bulk: it heads the next one.
        carried: Write | None = None
        try:
            task_status.started()
            while True:
                if carried is None:
                    head = await receive.receive()
                else:
                    # Cancelled here, the carried write is still ours to fail in `finally`.
                    await anyio.lowlevel.checkpoint_if_cancelled()
                    head, carried = carried, None
                batch, carried = self._gather(head, receive)
                # Writes taken from the stream are sent even when shutdown cancels us.
                with anyio.CancelScope(shield=True):
                    await self._traced_flush(batch)
        finally:
            self._send = None
            # No await from here on, so no sender slips in between draining and closing;
            # draining also takes the writes of senders still blocked on a full stream.
            if carried is not None:
                carried.fail(closed_error(self.source))
            while True:
                try:
                    receive.receive_nowait().fail(closed_error(self.source))
                except anyio.WouldBlock:
                    break
            send.close()
            receive.close()

    def _gather(
        self, head: Write, receive: MemoryObjectReceiveStream[Write]
    ) -> tuple[list[Write], Write | None]:
        """``head`` and the writes already waiting that fit in ``max_bulk`` items."""
        batch = [head]
        size = len(head.items)
        while size < self.max_bulk:
            try:
                write = receive.receive_nowait()
            except anyio.WouldBlock:
                break
            if size + len(write.items) > self.max_bulk:
                return batch, write
            batch.append(write)
            size += len(write.items)
        return batch, None

    async def _traced_flush(self, batch: Sequence[Write]) -> None:
        """:meth:`_flush`, as a span linked to each write's operation (tracing on)."""
        with batch_span(f"BULK {self.source}", [write.span for write in batch]):
            await self._flush(batch)

    async def _flush(self, batch: Sequence[Write]) -> None:
        """Send ``batch`` (in chunks of ``max_bulk`` items when one write is larger) and
        hand every item its answer; then every write is done."""
        slots = [(write, index) for write in batch for index in range(len(write.items))]
        try:
            for start in range(0, len(slots), self.max_bulk):
                chunk = slots[start : start + self.max_bulk]
                lines = [line for write, index in chunk for line in write.items[index]]
                responses: Sequence[Response]
                try:
                    responses = await self._bulk(lines, len(chunk))
                except Exception as error:
                    # One error object per caller: the engine records attempts on it.
                    responses = [map_error(error, self.source) for _ in chunk]
                for (write, index), response in zip(chunk, responses, strict=True):
                    write.responses[index] = response
        finally:
            for write in batch:
                write.fail(closed_error(self.source, "interrupted"))

    async def _bulk(self, lines: list[bytes], expected: int) -> list[Mapping[str, Any]]:
        self.bulks += 1
        self.documents += expected
        # Lines are pre-encoded bytes, which the NDJSON serializer passes through as is.
        response = await self.client.bulk(
            operations=lines,  # type: ignore[arg-type]
            refresh=self.refresh,
        )
        items = response.body.get("items") if isinstance(response.body, Mapping) else None
        if not isinstance(items, list) or len(items) != expected:
            raise DataSourceError(
                f"elasticsearch source {self.source!r} answered a bulk of {expected} items "
                f"with {len(items) if isinstance(items, list) else 'no'} results",
                data_source=self.source,
            )
        # Each item is {"<action>": {"_id": ..., "status": ..., "result" or "error": ...}}.
        return [next(iter(item.values())) for item in items]
