"""Group commit: one writer connection applies many callers' writes in one transaction.

Callers put a :class:`Write` on a bounded stream and wait for its ``done`` event. The loop
takes the first write, then everything already waiting (up to ``max_batch``), and applies
them in one transaction. Each write runs under a SAVEPOINT, so a bad one is rolled back
alone and only its caller gets the error; identical INSERTs run as one ``executemany``
(one multi-row INSERT where the driver builds one) and fall back to one savepoint per
write when that fails. Subclasses supply the driver: how to run a statement, how to map
its errors, and which errors end the whole transaction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from wf78_core.errors import DataSourceError

from .statements import Params

__all__ = ["GroupCommitWriter", "Write", "WriteFailed"]

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

    def __init__(self, *, source: str, max_batch: int, queue_size: int) -> None:
        self.source = source
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.transactions = 0
        self.writes = 0
        self.fallbacks = 0
        self._lock = anyio.Lock()
        self._send: MemoryObjectSendStream[Write] | None = None

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

    @abstractmethod
    async def _close_connection(self) -> None: ...

    @abstractmethod
    def map_error(self, error: BaseException, *, retryable: bool | None = None) -> DataSourceError:
        """A DataSourceError for a driver error; ``retryable`` overrides the guess."""

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
            raise self.closed_error() from None
        await write.done.wait()
        return write.outcome()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The group-commit loop, until cancelled; then queued writes fail as retryable."""
        if self._send is not None:
            raise RuntimeError(f"the writer of source {self.source!r} is already running")
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
                write.error = self.closed_error()
                write.done.set()
            send.close()
            receive.close()

    async def close(self) -> None:
        """Close the connection once the batch in progress, if any, is committed."""
        async with self._lock:
            await self._close_connection()

    # -- one batch ------------------------------------------------------------------------

    async def _commit(self, batch: list[Write]) -> None:
        """Apply ``batch`` in one transaction; afterwards every write has a result or an error."""
        self.writes += len(batch)
        try:
            await self._begin()
            groups: dict[object, list[Write]] = {}
            # Batched writes were all in flight at once, so any order among them is valid.
            for write in batch:
                groups.setdefault(write.group_key, []).append(write)
            for group in groups.values():
                await self._apply_group(group)
            await self._end()
            self.transactions += 1
        except Exception as error:
            # Nothing of the batch is committed, and what its writes saw inside the rolled
            # back transaction (even a duplicate key) may not hold: all may be tried again.
            await self._abort(error)
            for write in batch:
                write.error = self.map_error(error, retryable=True)
        finally:
            for write in batch:
                write.done.set()

    async def _apply_group(self, group: list[Write]) -> None:
        if len(group) > 1:
            sql = group[0].statements[0][0]
            rows = [params for write in group for params in write.statements[0][1]]
            try:
                await self._in_savepoint(partial(self._executemany, sql, rows))
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

    async def _apply(self, write: Write) -> Any:
        count = 0
        for sql, rows in write.statements:
            if len(rows) != 1:
                count += await self._executemany(sql, rows)
                continue
            outcome = await self._execute(sql, rows[0])
            if isinstance(outcome, list):
                return outcome
            count += outcome
        return count if write.counts else write.value

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
