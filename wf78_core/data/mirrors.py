"""Mirrors: search and cache copies of a table, kept eventually consistent by an outbox.

A table may name a ``search_mirror`` (an elasticsearch source) and a ``cache_mirror`` (a
redis source) besides its primary ``data_source``. The policy:

- **The primary first.** A write of a mirrored table (through :class:`~wf78_core.data.table.Table`)
  carries outbox entries (:attr:`Operation.outbox <wf78_core.definitions.Operation.outbox>`)
  that the primary stores in the write's own transaction: the row and its entries commit or
  roll back together, so a mirror never learns of a write that did not happen, and never
  misses one that did. A write that changed no row (another owner's id) stores none.
- **Mirrors follow, at least once.** The :class:`Relay` (a service of the engine) reads the
  entries oldest first, applies each to its mirror through ``engine.submit`` and then deletes
  them. It runs right after a mirrored write commits, at start-up (finishing what a crash
  left) and every :attr:`Relay.interval` seconds. A mirror that is down delays its entries,
  never drops them: they are retried with backoff until they succeed. Every mirror operation
  is idempotent (by document id or cache key), so applying an entry twice after a crash is
  harmless. Entries of one row apply in commit order; each mirror has its own lane, so a
  search mirror that is down does not hold back cache invalidations.
- **Search mirror:** ``index`` the full row (inserts), partial ``update`` with ``@timestamp``,
  ``delete`` by id; writes whose effect on single rows is not known (``update_many``,
  ``delete_many``, ``add_many_by_id``, ``upsert``) send ``sync``: the relay reads the row from
  the primary and indexes it, or deletes the document when the row is gone.
- **Cache mirror:** every write invalidates the cached rows it touched; ``Table.get`` by id
  reads through the cache (filling it for ``cache_ttl`` seconds) and falls back to the
  primary when the cache fails. In this process a row with an invalidation still pending is
  read from the primary, and a fill raced by a write is skipped, so a caller reads its own
  writes; other processes see the change once the relay has run (at most ``cache_ttl``
  seconds of staleness if an invalidation raced their fill).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus

from wf78_core.core.retry import backoff
from wf78_core.data.outbox import (
    OutboxEntry,
    TableMirrors,
    cache_key,
    is_missing_index,
    search_body,
)
from wf78_core.data.ports import EnginePort
from wf78_core.definitions import Operation
from wf78_core.errors import ConfigError, OperationError, Problem

# The outbox format lives in wf78_core.data.outbox; its names are re-exported here, where
# they were first documented.
__all__ = [
    "RELAY_PRIORITY",
    "MirrorStats",
    "OutboxEntry",
    "Relay",
    "TableMirrors",
    "cache_key",
    "is_missing_index",
    "search_body",
]

# Mirror work is background work: less urgent than the default submit priority (1).
RELAY_PRIORITY = 2


class MirrorStats(msgspec.Struct, kw_only=True, frozen=True):
    """The relay's counters and the outbox entries waiting, by mirror."""

    pending: int
    pending_by_mirror: dict[str, int]
    applied: int
    acknowledged: int
    retries: int
    skipped: int
    passes: int
    cache_hits: int
    cache_misses: int
    cache_fallbacks: int
    last_error: str | None


class _Lane:
    """The entries of one mirror in one primary's outbox, applied in order."""

    __slots__ = ("busy", "mirror", "passes", "primary", "wake")

    def __init__(self, primary: str, mirror: str) -> None:
        self.primary = primary
        self.mirror = mirror
        self.wake = anyio.Event()
        self.busy = False
        # Passes that ended with the lane's outbox empty (as far as the last fetch saw).
        self.passes = 0


class Relay:
    """Applies outbox entries to the mirrors; the engine runs it when a table has mirrors.

    Tunables (class attributes, or set on an instance before the engine starts):
    ``batch`` entries per fetch, ``interval`` seconds of the safety timer, ``concurrency``
    rows applied at once per lane, ``poison_attempts`` tries of an entry the mirror refuses
    as invalid (not retryable) before it is skipped and counted in ``skipped``.
    """

    batch = 100
    interval = 5.0
    concurrency = 64
    poison_attempts = 5

    def __init__(self, engine: EnginePort) -> None:
        self.engine = engine
        self.tables = {
            name: TableMirrors(name, table)
            for name, table in engine.config.tables.items()
            if table.search_mirror is not None or table.cache_mirror is not None
        }
        self.applied = 0
        self.acknowledged = 0
        self.retries = 0
        self.skipped = 0
        self.passes = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.cache_fallbacks = 0
        self.last_error: str | None = None
        self._lanes: list[_Lane] = []
        self._ready: anyio.Event | None = None
        self._changed = anyio.Event()
        # Cache keys with an invalidation not yet applied, and how many.
        self._dirty: dict[str, int] = {}
        # Mirrored writes begun per table: a cache fill raced by one is skipped.
        self._generations: dict[str, int] = {}

    # -- the service ----------------------------------------------------------------------

    def _plan(self) -> list[_Lane]:
        """One lane per (primary, mirror); ConfigError when a primary keeps no outbox."""
        engine = self.engine
        problems: list[Problem] = []
        lanes: dict[tuple[str, str], _Lane] = {}
        for name, mirrors in self.tables.items():
            assert mirrors.primary is not None  # check_references demands it
            for primary in engine.sources.matching(mirrors.primary):
                if "outbox_fetch" not in getattr(primary.adapter, "outbox_actions", ()):
                    problems.append(
                        Problem(
                            f"tables.{name}.data_source",
                            f"data source {primary.name!r} (type {primary.type!r}) keeps no "
                            "outbox, and mirrors need one: use a SQL source as the primary",
                        )
                    )
                    continue
                for mirror in mirrors.mirrors:
                    lanes.setdefault((primary.name, mirror), _Lane(primary.name, mirror))
        if problems:
            raise ConfigError(problems)
        return list(lanes.values())

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Check the primaries, report started, then (once :meth:`start` is called) drain
        every lane and wait for writes, the safety timer or cancellation."""
        self._lanes = self._plan()
        self._ready = anyio.Event()
        self._dirty.clear()
        task_status.started()
        await self._ready.wait()
        async with anyio.create_task_group() as group:
            for lane in self._lanes:
                group.start_soon(self._lane_loop, lane)

    def start(self) -> None:
        """Begin relaying (the engine calls it once it accepts operations)."""
        if self._ready is not None:
            self._ready.set()

    async def flush(self) -> None:
        """Wait until every entry committed before the call has been applied (or skipped).

        Waits as long as a mirror is down: wrap it in ``anyio.fail_after`` to bound it.
        """
        lanes = list(self._lanes)
        # A pass already under way may have fetched before the caller's last commit.
        wanted = {id(lane): lane.passes + (2 if lane.busy else 1) for lane in lanes}
        for lane in lanes:
            lane.wake.set()
        await self.until(lambda: all(lane.passes >= wanted[id(lane)] for lane in lanes))

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, checked again after every pass, acknowledgement
        and failure of the relay (no polling)."""
        while not condition():
            await self._changed.wait()

    async def stats(self) -> MirrorStats:
        """The counters, and the entries waiting now (a primary that fails to answer is
        left out of ``pending``)."""
        pending: dict[str, int] = {}
        for lane in self._lanes:
            op = Operation(
                action="outbox_count", data_source=lane.primary, where={"mirror": lane.mirror}
            )
            try:
                count = await self.submit(op)
            except OperationError as error:
                self._failed(error)
                continue
            pending[lane.mirror] = pending.get(lane.mirror, 0) + int(count)
        return MirrorStats(
            pending=sum(pending.values()),
            pending_by_mirror=pending,
            applied=self.applied,
            acknowledged=self.acknowledged,
            retries=self.retries,
            skipped=self.skipped,
            passes=self.passes,
            cache_hits=self.cache_hits,
            cache_misses=self.cache_misses,
            cache_fallbacks=self.cache_fallbacks,
            last_error=self.last_error,
        )

    async def _lane_loop(self, lane: _Lane) -> None:
        failures = 0
        while True:
            lane.wake = anyio.Event()  # before draining: a write committed meanwhile wakes us
            lane.busy = True
            try:
                await self._drain(lane)
            except Exception as error:  # the primary failed, or the engine is closing
                self._failed(error)
                lane.busy = False
                failures += 1
                await anyio.sleep(self._backoff(failures))
                continue
            failures = 0
            lane.busy = False
            lane.passes += 1
            self.passes += 1
            self._touch()
            with anyio.move_on_after(self.interval):
                await lane.wake.wait()

    async def _drain(self, lane: _Lane) -> None:
        """Apply and acknowledge the lane's entries, a batch at a time, until none is left."""
        while True:
            fetched = await self.submit(
                Operation(
                    action="outbox_fetch",
                    data_source=lane.primary,
                    where={"mirror": lane.mirror},
                    limit=self.batch,
                )
            )
            if not fetched:
                return
            await self._apply_batch(lane, fetched)
            ids = [item["id"] for item in fetched]
            await self.submit(Operation(action="outbox_ack", data_source=lane.primary, value=ids))
            self.acknowledged += len(ids)
            self._touch()
            if len(fetched) < self.batch:
                return

    async def _apply_batch(self, lane: _Lane, fetched: list[dict[str, Any]]) -> None:
        """Rows in parallel, each row's entries in commit order."""
        chains: dict[tuple[str, str], list[OutboxEntry]] = {}
        for item in fetched:
            try:
                entry = msgspec.convert(item["payload"], OutboxEntry)
            except msgspec.ValidationError as error:
                self.skipped += 1
                self.last_error = f"outbox entry {item['id']} of {lane.primary!r}: {error}"
                continue
            chains.setdefault((entry.table, entry.id), []).append(entry)
        limiter = anyio.CapacityLimiter(self.concurrency)

        async def apply_chain(chain: list[OutboxEntry]) -> None:
            async with limiter:
                for entry in chain:
                    await self._apply_until_done(lane, entry)

        async with anyio.create_task_group() as group:
            for chain in chains.values():
                group.start_soon(apply_chain, chain)

    async def _apply_until_done(self, lane: _Lane, entry: OutboxEntry) -> None:
        attempt = 0
        try:
            while True:
                try:
                    await self._apply(lane, entry)
                except OperationError as error:
                    attempt += 1
                    self._failed(error)
                    if not error.retryable and attempt >= self.poison_attempts:
                        self.skipped += 1
                        return
                    self.retries += 1
                    await anyio.sleep(self._backoff(attempt))
                    continue
                self.applied += 1
                return
        finally:
            if entry.key is not None:
                self._settle(entry.key)

    async def _apply(self, lane: _Lane, entry: OutboxEntry) -> None:
        mirror = entry.mirror
        # An entry of a table no longer mirrored (another configuration wrote it) names its
        # row by id and owner as it was written.
        mirrors = self.tables.get(entry.table)
        where = mirrors.key(entry) if mirrors is not None else {"id": entry.id}
        if entry.action == "invalidate":
            op = Operation(action="cache_delete", data_source=mirror, key=entry.key)
        elif entry.action == "index":
            op = Operation(
                action="index", table=entry.table, data_source=mirror, values=entry.values
            )
        elif entry.action == "update":
            op = Operation(
                action="update",
                table=entry.table,
                data_source=mirror,
                where=where,
                values=entry.values,
            )
        else:
            found = []
            if entry.action == "sync":
                found = await self.submit(
                    Operation(
                        action="get",
                        table=entry.table,
                        data_source=lane.primary,
                        where=where,
                        shard=entry.shard,
                        limit=1,
                    )
                )
            if found:
                op = Operation(
                    action="index", table=entry.table, data_source=mirror, values=found[0]
                )
            else:
                op = Operation(action="delete", table=entry.table, data_source=mirror, where=where)
        await self.submit(op)

    async def submit(self, op: Operation, priority: int | None = RELAY_PRIORITY) -> Any:
        """One operation of the relay (reading the outbox, writing a mirror): its value."""
        return (await self.engine.submit(op, priority=priority)).value

    def _backoff(self, attempt: int) -> float:
        settings = self.engine.settings
        return backoff(min(attempt, 30), settings.retry_backoff, settings.retry_backoff_max)

    def _failed(self, error: BaseException) -> None:
        self.last_error = f"{type(error).__name__}: {error}"
        self._touch()

    def _touch(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    # -- the table's side -------------------------------------------------------------------

    async def write(
        self, table: str, entries: list[dict[str, Any]], call: Callable[[], Awaitable[Any]]
    ) -> Any:
        """Run ``call`` (a write carrying ``entries``), then wake the relay.

        Its cache keys count as dirty from now until their invalidation is applied, so this
        process neither serves nor fills them meanwhile.
        """
        keys = [entry["key"] for entry in entries if entry.get("key")]
        self._generations[table] = self._generations.get(table, 0) + 1
        for key in keys:
            self._dirty[key] = self._dirty.get(key, 0) + 1
        stored = False
        try:
            result = await call()
            # A write that counts rows stores its entries only when it changed some.
            stored = bool(result) if isinstance(result, int) else True
            return result
        finally:
            if not stored:
                for key in keys:
                    self._settle(key)
            mirrors = {entry["mirror"] for entry in entries}
            for lane in self._lanes:
                if lane.mirror in mirrors:
                    lane.wake.set()

    async def read_through(
        self,
        table: str,
        key: str,
        read: Callable[[], Awaitable[list[dict[str, Any]]]],
        priority: int | None,
    ) -> list[dict[str, Any]]:
        """One row by its cache ``key``: from the cache mirror, else ``read()`` from the
        primary (filling the cache). A cache that fails is passed by, never an error."""
        mirrors = self.tables[table]
        cache = mirrors.cache
        assert cache is not None
        usable = key not in self._dirty
        if usable:
            try:
                cached = await self.submit(
                    Operation(action="cache_get", data_source=cache, key=key), priority
                )
            except OperationError as error:
                self._cache_failed(error)
                usable = False
            else:
                if isinstance(cached, dict):
                    self.cache_hits += 1
                    return [cached]
                self.cache_misses += 1
        generation = self._generations.get(table, 0)
        rows = await read()
        if (
            rows
            and usable
            and key not in self._dirty
            and self._generations.get(table, 0) == generation
        ):
            op = Operation(
                action="cache_set", data_source=cache, key=key, value=rows[0], ttl=mirrors.cache_ttl
            )
            try:
                await self.submit(op, priority)
            except OperationError as error:
                self._cache_failed(error)
        return rows

    def _cache_failed(self, error: OperationError) -> None:
        self.cache_fallbacks += 1
        self._failed(error)

    def _settle(self, key: str) -> None:
        left = self._dirty.get(key, 0) - 1
        if left > 0:
            self._dirty[key] = left
        else:
            self._dirty.pop(key, None)
