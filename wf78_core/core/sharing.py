"""Shared reads (single-flight): identical reads in flight at the same moment run once.

A read (``get``, ``count``, ``search``) names what it reads by its source, action, table,
shard, ``where`` (the owner filter of a ``Table`` included, so no two owners ever share),
columns, order, limit, offset and search body. While one such read runs, the same read
arriving joins it instead of querying again; when it finishes every caller gets its own copy
of the rows (the first caller too, when anyone joined), so no caller sees another's changes.

Read-your-writes holds: every write acknowledged on a table (its operation finished, well or
not) starts a new *generation* of that table, and a read joins only a read that started in
the current one. A read begun before a write was acknowledged may not have seen it, so any
read arriving after the acknowledgement runs on its own. Writes without a table (raw SQL)
start a new generation of every table. This holds for the writes of this process; a write
acknowledged by another process can still be missed by a read that joins one begun before
it, exactly as by that read itself.

When the first read fails or is cancelled, the reads that joined it run on their own: an
error is never handed to a caller whose own attempt might have succeeded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from copy import deepcopy
from typing import Any

import anyio
import msgspec

from wf78_core.core.admission import Counters
from wf78_core.definitions import Operation, Result

__all__ = ["SHARED_ACTIONS", "Flight", "SharedReads"]

#: The actions that may share one query.
SHARED_ACTIONS = frozenset({"get", "count", "search"})
# Actions that change nothing: they start no new generation.
_READS = frozenset({"get", "count", "search", "cache_get", "health", "noop", "list_shards"})

_ENCODER = msgspec.json.Encoder()


class Flight:
    """One read in flight: its generation, whether others joined, and how it ended."""

    __slots__ = ("done", "generation", "joined", "key", "reads", "result")

    def __init__(self, reads: SharedReads, key: bytes, generation: tuple[int, int]) -> None:
        self.reads = reads
        self.key = key
        self.generation = generation
        # Made by the first caller to join: a read nobody joins (most) needs none.
        self.done: anyio.Event | None = None
        self.joined = 0
        self.result: Result | None = None

    def land(self, result: Result) -> Result:
        """The leader's ``result``: kept for the callers that joined, and the leader's own
        copy when anyone did."""
        if self.joined:
            # Others copy the kept result after this caller has its own.
            self.result = result
            result = _copy(result)
        self.drop()
        return result

    def drop(self) -> None:
        """End this flight (after :meth:`land`, or without a result: its followers run on
        their own)."""
        flights = self.reads.flights
        if flights.get(self.key) is self:
            del flights[self.key]
        if self.done is not None:
            self.done.set()


class SharedReads:
    """The reads in flight, by what they read, and each table's write generation."""

    __slots__ = ("_counters", "_everything", "_tables", "flights")

    def __init__(self, counters: Counters) -> None:
        # counters.reads_shared: reads answered by another caller's query.
        self._counters = counters
        self.flights: dict[bytes, Flight] = {}
        self._tables: dict[str, int] = {}
        # Bumped by a write without a table: every table's generation moves with it.
        self._everything = 0

    @property
    def in_flight(self) -> int:
        """Reads running now that another may join."""
        return len(self.flights)

    def wrote(self, op: Operation) -> None:
        """Note that ``op`` finished: a write starts a new generation of its table."""
        if op.action in _READS:
            return
        table = op.table
        if table is None:
            self._everything += 1
        else:
            self._tables[table] = self._tables.get(table, 0) + 1

    def _key(self, source: str | None, op: Operation) -> bytes | None:
        """What ``op`` reads, as the key of its flight; None: a value JSON cannot name
        (such a read is its own). ``source``: the source the read names (None: the one
        routing picks for it; a read in flight on another replica of the table is as good
        as a new one there)."""
        try:
            return _ENCODER.encode(
                (
                    source,
                    op.action,
                    op.table,
                    op.shard,
                    op.where,
                    op.columns,
                    op.order,
                    op.limit,
                    op.offset,
                    op.params,
                )
            )
        except (TypeError, msgspec.EncodeError):
            return None

    def enter(self, source: str | None, op: Operation) -> tuple[Flight | None, bool]:
        """Where a read ``op`` stands: the same read in flight, to :meth:`follow`
        (``(flight, False)``), or the flight it now leads, to land or drop when it ends
        (``(flight, True)``; ``(None, True)``: it cannot be shared)."""
        key = self._key(source, op)
        if key is None:
            return None, True
        flight = self._joinable(key, op)
        if flight is not None:
            return flight, False
        return self._lead(key, op), True

    def _joinable(self, key: bytes, op: Operation) -> Flight | None:
        """The read in flight under ``key`` begun in the current generation of ``op``'s
        table, to :meth:`follow`; None: the caller runs its read and should :meth:`_lead`."""
        flight = self.flights.get(key)
        if flight is not None and flight.generation == self._generation(op):
            return flight
        return None

    def _lead(self, key: bytes, op: Operation) -> Flight:
        """Start the flight of ``key``: reads arriving now join it until :meth:`land` or
        :meth:`drop`."""
        flight = self.flights[key] = Flight(self, key, self._generation(op))
        return flight

    async def follow(self, flight: Flight) -> Result | None:
        """Wait for ``flight``: its result (a copy), or None when it failed or was cancelled
        (then the caller runs its read on its own)."""
        flight.joined += 1
        if flight.done is None:
            flight.done = anyio.Event()
        await flight.done.wait()
        result = flight.result
        if result is None:
            return None
        self._counters.reads_shared += 1
        return _copy(result)

    def _generation(self, op: Operation) -> tuple[int, int]:
        return (self._everything, self._tables.get(op.table or "", 0))

    async def read(
        self, source: str | None, op: Operation, run: Callable[[], Awaitable[Result]]
    ) -> Result:
        """``run()``, or the result of the same read already in flight (a copy of it)."""
        flight, leads = self.enter(source, op)
        if flight is None:
            return await run()
        if not leads:
            result = await self.follow(flight)
            return await run() if result is None else result
        try:
            result = await run()
        except BaseException:
            flight.drop()
            raise
        return flight.land(result)


def _copy(result: Result) -> Result:
    """``result`` with a value of its own: rows are dicts, and JSON columns nest."""
    value = result.value
    if isinstance(value, list):
        value = [_row(row) for row in value]
    elif isinstance(value, dict):
        value = deepcopy(value)
    return msgspec.structs.replace(result, value=value)


def _row(row: Any) -> Any:
    if type(row) is not dict:
        return deepcopy(row)
    copied = row.copy()
    for name, value in copied.items():
        if isinstance(value, dict | list):
            copied[name] = deepcopy(value)
    return copied
