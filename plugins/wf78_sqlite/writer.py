"""Group commit: one writer connection applies many callers' writes in one transaction.

Callers put a :class:`Write` on a bounded stream and wait for its ``done`` event. The loop
takes the first write, then everything already waiting (up to ``max_batch``), and applies
them between ``BEGIN IMMEDIATE`` and ``COMMIT``. Each write runs under a SAVEPOINT, so a bad
one is rolled back alone and only its caller gets the error; identical INSERTs share one
``executemany`` and fall back to one savepoint per write when that fails.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import aiosqlite
import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from wf78_core.errors import DataSourceError

from .errors import closed_error, map_error
from .statements import Params

__all__ = ["GroupCommitWriter", "Write"]

T = TypeVar("T")


@dataclass(eq=False)
class Write:
    """One caller's write: statements applied together (all or nothing), then its outcome.

    ``statements`` pairs SQL with its parameter sets (several sets run as ``executemany``).
    The result is ``value`` when ``counts`` is false (the ids of inserted rows), otherwise
    the rows changed, or the rows returned when the SQL returns any.
    """

    statements: list[tuple[str, list[Params]]]
    value: Any = None
    counts: bool = False
    groupable: bool = False
    result: Any = None
    error: DataSourceError | None = None
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def group_key(self) -> object:
        """Writes with equal keys may run as one ``executemany``; others key on themselves."""
        if self.groupable and not self.counts and len(self.statements) == 1:
            return self.statements[0][0]
        return self

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class _WriteFailed(Exception):
    """A write failed inside its savepoint and was rolled back; the transaction lives on."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class GroupCommitWriter:
    """Owns the writer connection: batches writes while :meth:`run` runs, else one at a time.

    Without a running loop (``run`` never started, or already stopped) :meth:`submit`
    applies the write in its own transaction, so direct use and tests need no task group.
    ``transactions`` counts committed transactions, ``writes`` the writes handled.
    """

    def __init__(
        self, connection: aiosqlite.Connection, *, source: str, max_batch: int, queue_size: int
    ) -> None:
        self.connection = connection
        self.source = source
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.transactions = 0
        self.writes = 0
        self._lock = anyio.Lock()
        self._send: MemoryObjectSendStream[Write] | None = None

    async def submit(self, write: Write) -> Any:
        """Apply ``write`` and return its result or raise its DataSourceError.

        A caller cancelled while waiting leaves its write queued: it may still commit.
        """
        send = self._send
        if send is None:
            async with self._lock:
                with anyio.CancelScope(shield=True):
                    await self._commit([write])
            return write.outcome()
        try:
            await send.send(write)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise closed_error(self.source) from None
        await write.done.wait()
        return write.outcome()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The group-commit loop, until cancelled; then queued writes fail as retryable."""
        if self._send is not None:
            raise RuntimeError(f"the writer of sqlite source {self.source!r} is already running")
        send, receive = anyio.create_memory_object_stream[Write](self.queue_size)
        self._send = send
        try:
            task_status.started()
            while True:
                batch = [await receive.receive()]
                while len(batch) < self.max_batch:
                    try:
                        batch.append(receive.receive_nowait())
                    except anyio.WouldBlock:
                        break
                # Writes taken from the stream are finished even when shutdown cancels us.
                with anyio.CancelScope(shield=True):
                    async with self._lock:
                        await self._commit(batch)
        finally:
            self._send = None
            # No await from here on, so no sender can slip in between draining and closing;
            # draining also takes the writes of senders still blocked on a full stream.
            while True:
                try:
                    write = receive.receive_nowait()
                except anyio.WouldBlock:
                    break
                write.error = closed_error(self.source)
                write.done.set()
            send.close()
            receive.close()

    async def close(self) -> None:
        """Close the connection once the batch in progress, if any, is committed."""
        async with self._lock:
            await self.connection.close()

    async def _commit(self, batch: list[Write]) -> None:
        """Apply ``batch`` in one transaction; afterwards every write has a result or an error."""
        self.writes += len(batch)
        try:
            await self._sql("BEGIN IMMEDIATE")
            groups: dict[object, list[Write]] = {}
            # Batched writes were all in flight at once, so any order among them is valid.
            for write in batch:
                groups.setdefault(write.group_key, []).append(write)
            for group in groups.values():
                await self._apply_group(group)
            await self._sql("COMMIT")
            self.transactions += 1
        except Exception as error:
            # Nothing of the batch is committed: every write may be tried again.
            await self._rollback()
            for write in batch:
                if write.error is None:
                    write.error = map_error(error, self.source, retryable=True)
        finally:
            for write in batch:
                write.done.set()

    async def _apply_group(self, group: list[Write]) -> None:
        if len(group) > 1:
            sql = group[0].statements[0][0]
            rows = [params for write in group for params in write.statements[0][1]]
            try:
                await self._in_savepoint(partial(self._executemany, sql, rows))
            except _WriteFailed:
                pass  # some row is bad: apply the writes one by one to find it
            else:
                for write in group:
                    write.result = write.value
                return
        for write in group:
            try:
                write.result = await self._in_savepoint(partial(self._apply, write))
            except _WriteFailed as failed:
                write.error = map_error(failed.error, self.source)

    async def _apply(self, write: Write) -> Any:
        count = 0
        for sql, rows in write.statements:
            if len(rows) != 1:
                count += await self._executemany(sql, rows)
                continue
            changes_before = self.connection.total_changes
            async with self.connection.execute(sql, rows[0]) as cursor:
                if cursor.description is not None:
                    return [dict(row) for row in await cursor.fetchall()]
                # sqlite3 reports -1 for writes it does not parse as DML (WITH ... INSERT).
                changed = cursor.rowcount
                if changed < 0:
                    changed = self.connection.total_changes - changes_before
                count += changed
        return count if write.counts else write.value

    async def _executemany(self, sql: str, rows: list[Params]) -> int:
        async with self.connection.executemany(sql, rows) as cursor:
            return cursor.rowcount

    async def _in_savepoint(self, apply: Callable[[], Awaitable[T]]) -> T:
        """Run ``apply`` under a savepoint; its failure is rolled back and raised as _WriteFailed.

        A failure of the savepoint statements themselves propagates: the batch is lost.
        """
        await self._sql("SAVEPOINT write")
        try:
            result = await apply()
        except Exception as error:
            await self._sql("ROLLBACK TO write")
            await self._sql("RELEASE write")
            raise _WriteFailed(error) from error
        await self._sql("RELEASE write")
        return result

    async def _sql(self, sql: str) -> None:
        await self.connection.execute_fetchall(sql)

    async def _rollback(self) -> None:
        try:
            await self._sql("ROLLBACK")
        except Exception:
            pass  # no transaction left to roll back, or the connection is gone
