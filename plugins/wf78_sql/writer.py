"""Group commit: one writer connection applies many callers' writes in one transaction.

Callers add a :class:`Write` to the open batch (at most ``max_batch`` writes; at most
``queue_size`` writes wait in all, beyond that callers wait for room) and wait on that
batch's one event: a write costs no event or stream hand-off of its own. The loop takes
the oldest batch and applies it in one transaction while the next one fills. At low load
(the last batch held one write, nothing queued, nothing committing) a caller commits its own
write instead of handing it to the loop. A batch that is one group of identical INSERTs
runs as one ``executemany`` (one multi-row INSERT where the driver builds one; where the
connection autocommits, that one statement alone, without BEGIN and COMMIT); otherwise each
write runs under a SAVEPOINT, so a bad one is rolled back alone and only its caller gets
the error, and a group that failed is applied write by write to find the bad one. A lone
single-row write needs no savepoint, nor, where the connection autocommits, a transaction.
Subclasses supply the driver: how to run a statement, how to map its errors, and which
errors end the whole transaction.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus

from wf78_core.plugin import DataSourceError, OperationError, batch_span, operation_span

from .statements import Params

__all__ = ["GroupCommitWriter", "Write", "WriteFailed"]

T = TypeVar("T")
# What GroupCommitWriter._unsaved answers when the transaction itself failed.
_ABORTED = object()


@dataclass(eq=False, slots=True)  # no __dict__: one tracked object less per write
class Write:
    """One caller's write: statements applied together (all or nothing), then its outcome.

    ``statements`` pairs SQL with its parameter sets (several sets run as ``executemany``).
    The result is ``value`` when ``counts`` is false (the ids of inserted rows), otherwise
    the rows changed, or the rows returned when the SQL returns any. ``then`` (an outbox
    INSERT) runs after them in the same savepoint, so it commits or rolls back with them;
    a write that ``counts`` runs it only when it changed some row. ``record`` (a caller's
    idempotency key, :mod:`wf78_sql.idempotency`) gives the statement storing the result,
    run last in the same savepoint; such a write is never grouped.
    """

    statements: list[tuple[str, list[Params]]]
    value: Any = None
    counts: bool = False
    groupable: bool = False
    then: tuple[str, list[Params]] | None = None
    record: Callable[[Any], tuple[str, Params]] | None = None
    result: Any = None
    error: OperationError | None = None
    #: the span of the operation it serves (tracing on), linked from its batch's span
    span: Any = None

    @property
    def group_key(self) -> object:
        """Writes with equal keys may run as one ``executemany``; others key on themselves."""
        if self.groupable and not self.counts and len(self.statements) == 1 and not self.record:
            return self.statements[0][0]
        return self

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class _Batch:
    """Writes committed together; their callers share one event."""

    __slots__ = ("done", "writes")

    def __init__(self) -> None:
        self.writes: list[Write] = []
        # asyncio's own event (every SQL driver here runs on asyncio): one wrapper less for
        # each caller to wait through.
        self.done = asyncio.Event()


async def _valued(run: Callable[[], Awaitable[Any]], value: Any) -> Any:
    """``run()``, then ``value``: a write's result is what it was given (its rows' ids)."""
    await run()
    return value


class WriteFailed(Exception):
    """A write failed inside its savepoint and was rolled back; the transaction lives on."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class GroupCommitWriter(ABC):
    """Batches writes while :meth:`run` runs, else applies them one at a time.

    Without a running loop (``run`` never started, or already stopped) :meth:`submit`
    applies the write in its own transaction, so direct use and tests need no task group.
    ``transactions`` counts committed transactions, ``writes`` the writes handled,
    ``fallbacks`` the groups of identical INSERTs that had to be applied one by one.
    """

    begin_sql = "BEGIN"
    savepoint = "write"
    # True where the connection commits each statement outside a transaction (SQLite's
    # isolation_level None, MySQL's autocommit): a lone single-statement write then runs
    # without BEGIN/COMMIT.
    autocommits = False

    def __init__(self, *, source: str, max_batch: int, queue_size: int) -> None:
        self.source = source
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.transactions = 0
        self.writes = 0
        self.fallbacks = 0
        # No yield when free: a caller committing its own write alone costs no extra turn
        # of the event loop (every path that takes it awaits the database anyway).
        self._lock = anyio.Lock(fast_acquire=True)
        self._running = False
        self._batches: deque[_Batch] = deque()
        self._queued = 0
        self._wake = anyio.Event()
        self._room: anyio.Event | None = None
        # The last batch held one write: load is low, a caller may commit its own write.
        self._alone = True

    # -- the driver ---------------------------------------------------------------------

    @abstractmethod
    async def _sql(self, sql: str) -> None:
        """Run a transaction-control statement."""

    @abstractmethod
    async def _execute(self, sql: str, params: Params) -> list[dict[str, Any]] | int:
        """Run one statement: the rows it returns if any, else the rows it changed."""

    @abstractmethod
    async def _executemany(self, sql: str, rows: list[Params]) -> int:
        """Run one statement for many parameter sets; the rows changed."""

    def _may_autocommit(self) -> bool:
        """Whether a write may run now without BEGIN (``autocommits`` says whether it ever
        may); a driver that checks its connection at BEGIN can say no when it is stale."""
        return self.autocommits

    def _one_statement(self, sql: str, rows: list[Params]) -> Callable[[], Awaitable[Any]] | None:
        """``rows`` of the INSERT ``sql`` as one multi-row statement, to run alone where the
        connection autocommits (one statement is atomic: every row or none, in one round
        trip); None when the driver cannot build one (then BEGIN, executemany, COMMIT)."""
        return None

    async def _run(self, sql: str, params: Params) -> None:
        """Run one statement whose outcome nobody reads (an INSERT of a known id, an outbox
        row): a driver may save a round trip over :meth:`_execute`."""
        await self._execute(sql, params)

    @abstractmethod
    async def _close_connection(self) -> None: ...

    @abstractmethod
    def map_error(self, error: BaseException, *, retryable: bool | None = None) -> OperationError:
        """A DataSourceError for a driver error (an InvalidOperation for a value the column
        refused); ``retryable`` overrides the guess."""

    @abstractmethod
    def closed_error(self) -> DataSourceError:
        """The retryable error of a write the writer can no longer take."""

    def aborts_batch(self, error: BaseException) -> bool:
        """Whether ``error`` ended the whole transaction (no savepoint is left to roll back to)."""
        return False

    async def _begin(self) -> None:
        await self._sql(self.begin_sql)

    async def _end(self) -> None:
        await self._sql("COMMIT")

    async def _abort(self, error: BaseException) -> None:
        """Undo the batch after ``error``; nothing of it may stay."""
        try:
            await self._sql("ROLLBACK")
        except Exception:
            pass  # no transaction left to roll back, or the connection is gone

    # -- callers and the loop -----------------------------------------------------------

    async def submit(self, write: Write) -> Any:
        """Apply ``write`` and return its result or raise its error (a DataSourceError, or an
        InvalidOperation for a value its column refused).

        A caller cancelled while waiting leaves its write queued: it may still commit.
        """
        write.span = operation_span()
        if not self._running or (self._alone and not self._batches and not self._lock.locked()):
            # No loop, or low load with nothing queued and nothing committing: the caller
            # commits its write itself (two hand-offs to the loop's task fewer). Writes that
            # come meanwhile queue for the loop, so the next batch holds them all.
            async with self._lock:
                with anyio.CancelScope(shield=True):
                    await self._traced_commit([write])
            return write.outcome()
        while self._queued >= self.queue_size:  # bounded: wait for the loop to take a batch
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
            if not self._running:
                raise self.closed_error()
        batches = self._batches
        if not batches or len(batches[-1].writes) >= self.max_batch:
            batches.append(_Batch())
            self._wake.set()  # the loop sleeps only while no batch waits
        batch = batches[-1]
        batch.writes.append(write)
        self._queued += 1
        await batch.done.wait()
        return write.outcome()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The group-commit loop, until cancelled; then queued writes fail as retryable."""
        if self._running:
            raise RuntimeError(f"the writer of source {self.source!r} is already running")
        self._running = True
        batches = self._batches
        try:
            task_status.started()
            while True:
                if not batches:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                await anyio.lowlevel.checkpoint_if_cancelled()  # the batches are shielded
                batch = batches.popleft()
                self._queued -= len(batch.writes)
                if self._room is not None:
                    self._room.set()
                    self._room = None
                # A batch taken is finished even when shutdown cancels us.
                with anyio.CancelScope(shield=True):
                    async with self._lock:
                        await self._traced_commit(batch.writes)
                self._alone = len(batch.writes) == 1
                batch.done.set()
        finally:
            self._running = False
            # No await from here on, so no caller can slip a write in after this.
            while batches:
                batch = batches.popleft()
                for write in batch.writes:
                    write.error = self.closed_error()
                batch.done.set()
            self._queued = 0
            if self._room is not None:
                self._room.set()
                self._room = None

    async def close(self) -> None:
        """Close the connection once the batch in progress, if any, is committed."""
        async with self._lock:
            await self._close_connection()

    # -- one batch ------------------------------------------------------------------------

    async def _traced_commit(self, batch: list[Write]) -> None:
        """:meth:`_commit`, as a span linked to each write's operation (tracing on)."""
        with batch_span(f"COMMIT {self.source}", [write.span for write in batch]):
            await self._commit(batch)

    async def _commit(self, batch: list[Write]) -> None:
        """Apply ``batch`` in one transaction; afterwards every write has a result or an error."""
        if len(batch) == 1:
            await self._commit_one(batch[0])
            return
        self.writes += len(batch)
        groups: dict[object, list[Write]] = {}
        # Batched writes were all in flight at once, so any order among them is valid.
        for write in batch:
            groups.setdefault(write.group_key, []).append(write)
        together = True
        if len(groups) == 1:
            # The common batch, identical INSERTs: no savepoint (two round trips fewer).
            if await self._commit_together(batch):
                return
            together = False  # a row is bad: find it write by write, each in a savepoint
        try:
            await self._begin()
            for group in groups.values():
                await self._apply_group(group, together=together)
            await self._end()
            self.transactions += 1
        except Exception as error:
            # Nothing of the batch is committed, and what its writes saw inside the rolled
            # back transaction (even a duplicate key) may not hold: all may be tried again.
            await self._abort(error)
            for write in batch:
                write.error = self.map_error(error, retryable=True)

    async def _commit_one(self, write: Write) -> None:
        """A batch of one write, as at low load: its transaction holds nothing else, so no
        savepoint is needed (two round trips fewer), and a single-row statement with nothing
        to run after it needs no transaction at all where the connection autocommits."""
        self.writes += 1
        apply: Callable[[], Awaitable[Any]] = partial(self._apply, write)
        alone = False
        if (
            write.then is None
            and write.record is None
            and len(write.statements) == 1
            and self._may_autocommit()
        ):
            sql, rows = write.statements[0]
            alone = len(rows) == 1
            if not alone and not write.counts:  # add_many: its rows as one statement
                single = self._one_statement(sql, rows)
                if single is not None:
                    apply, alone = partial(_valued, single, write.value), True
        try:
            result = await self._unsaved([write], apply, alone=alone)
        except WriteFailed as failed:
            write.error = self.map_error(failed.error)  # the write's own failure
            return
        if result is not _ABORTED:
            write.result = result

    async def _commit_together(self, group: list[Write]) -> bool:
        """A batch that is one group of identical writes, as one ``executemany``; False when
        a row failed (nothing committed: the caller applies the writes one by one), True
        when every write has its result or the batch's error."""
        sql = group[0].statements[0][0]
        rows = [params for write in group for params in write.statements[0][1]]
        single = None
        if all(write.then is None for write in group) and self._may_autocommit():
            single = self._one_statement(sql, rows)  # the batch as one self-committing INSERT
        try:
            if single is not None:
                done = await self._unsaved(group, single, alone=True)
            else:
                done = await self._unsaved(group, partial(self._apply_together, sql, rows, group))
        except WriteFailed:
            self.fallbacks += 1
            return False
        if done is not _ABORTED:
            for write in group:
                write.result = write.value
        return True

    async def _unsaved(
        self, batch: list[Write], apply: Callable[[], Awaitable[T]], *, alone: bool = False
    ) -> T | object:
        """``apply()`` for ``batch`` in a transaction of its own, without a savepoint
        (``alone``: none at all, the connection autocommits): what it returned, committed.
        Its own failure is rolled back and raised as WriteFailed. A failure of the
        transaction (BEGIN, COMMIT, the connection) commits nothing and is every write's,
        retryable: then :data:`_ABORTED` comes back."""
        try:
            if not alone:
                await self._begin()
            try:
                result = await apply()
            except Exception as error:
                if self.aborts_batch(error):
                    raise
                if not alone:
                    await self._abort(error)
                raise WriteFailed(error) from error
            if not alone:
                await self._end()
        except WriteFailed:
            raise
        except Exception as error:
            await self._abort(error)
            for write in batch:
                write.error = self.map_error(error, retryable=True)
            return _ABORTED
        self.transactions += 1
        return result

    async def _apply_group(self, group: list[Write], *, together: bool = True) -> None:
        if together and len(group) > 1:
            sql = group[0].statements[0][0]
            rows = [params for write in group for params in write.statements[0][1]]
            try:
                await self._in_savepoint(partial(self._apply_together, sql, rows, group))
            except WriteFailed:
                self.fallbacks += 1  # some row is bad: apply the writes one by one to find it
            else:
                for write in group:
                    write.result = write.value
                return
        for write in group:
            try:
                write.result = await self._in_savepoint(partial(self._apply, write))
            except WriteFailed as failed:
                write.error = self.map_error(failed.error)

    async def _apply_together(self, sql: str, rows: list[Params], group: list[Write]) -> None:
        """A group's identical INSERTs as one ``executemany``, then their outbox rows as one."""
        await self._executemany(sql, rows)
        then: dict[str, list[Params]] = {}
        for write in group:
            if write.then is not None:
                then.setdefault(write.then[0], []).extend(write.then[1])
        for then_sql, then_rows in then.items():
            await self._executemany(then_sql, then_rows)

    async def _apply(self, write: Write) -> Any:
        count = 0
        for sql, rows in write.statements:
            if len(rows) != 1:
                count += await self._executemany(sql, rows)
                continue
            if not write.counts and write.record is None:
                await self._run(sql, rows[0])  # its result is its value: nothing to read back
                continue
            outcome = await self._execute(sql, rows[0])
            if isinstance(outcome, list):
                if write.record is not None:
                    await self._execute(*write.record(outcome))
                return outcome
            count += outcome
        if write.then is not None and (count or not write.counts):
            then_sql, then_rows = write.then
            if len(then_rows) == 1:
                await self._run(then_sql, then_rows[0])
            else:
                await self._executemany(then_sql, then_rows)
        result = count if write.counts else write.value
        if write.record is not None:
            await self._execute(*write.record(result))
        return result

    async def _in_savepoint(self, apply: Callable[[], Awaitable[T]]) -> T:
        """Run ``apply`` under a savepoint; its failure is rolled back and raised as WriteFailed.

        A failure that ends the transaction, or of the savepoint statements themselves,
        propagates: the batch is lost.
        """
        await self._sql(f"SAVEPOINT {self.savepoint}")
        try:
            result = await apply()
        except Exception as error:
            if self.aborts_batch(error):
                raise
            await self._sql(f"ROLLBACK TO SAVEPOINT {self.savepoint}")
            await self._sql(f"RELEASE SAVEPOINT {self.savepoint}")
            raise WriteFailed(error) from error
        await self._sql(f"RELEASE SAVEPOINT {self.savepoint}")
        return result
