"""The reader connections of a PostgreSQL source: each lent to one read at a time.

asyncpg's own pool costs a read about as much CPU as the read itself (its connection proxy,
its queue, and a reset query per release), and a source's reads need none of it: they run one
statement each, in autocommit, and raw SQL that would change a session is refused. So an
idle connection is taken at once; when every connection is lent and fewer than ``size`` are
open, a new one is opened; otherwise the read waits, first come first served, and a
connection given back goes straight to the oldest waiter.

A connection that fails with a lost connection is closed, never lent again; a read that met
a connection lost while it sat idle (the server restarted, an idle timeout) runs once more on
a fresh one, as reads may. A read cancelled midway closes its connection too: asyncpg may
still be cancelling the query on it.

A connection older than ``recycle`` seconds (the source's ``pool_recycle``) is closed and
replaced when it is next lent, before the read runs: never in the middle of one. asyncpg's
prepared statements belong to their connection, so the new one prepares them again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from .errors import is_connection_lost

__all__ = ["Readers"]

Connect = Callable[[], Awaitable[Any]]
Clock = Callable[[], float]
T = TypeVar("T")


class Readers:
    """At most ``size`` connections made by ``connect``; :meth:`fetch` runs one query.
    Each is replaced when lent ``recycle`` seconds or more after it was opened (on ``clock``,
    which a test may advance)."""

    def __init__(
        self,
        connect: Connect,
        size: int,
        *,
        recycle: float = float("inf"),
        clock: Clock = time.monotonic,
    ) -> None:
        self._connect = connect
        self.size = size
        self.recycle = recycle
        self.clock = clock
        self._idle: list[Any] = []
        self._opened_at: dict[Any, float] = {}  # by connection
        self._open = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self.closed = False
        #: connections closed after they failed
        self.discarded = 0
        #: connections closed and replaced for their age
        self.recycled = 0

    async def fill(self, count: int) -> None:
        """Open ``count`` connections now (a failure is the caller's)."""
        opened = [await self._new() for _ in range(count)]
        for connection in opened:
            self._give_back(connection)

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """The rows of one query; a connection lost while idle is replaced once.

        :meth:`use` with ``retry``, its steps written out, and an idle connection taken
        without awaiting :meth:`_lend`: every read takes this path, and the partial, the two
        coroutines and the await cost a third of its instructions (callgrind)."""
        for attempt in range(2):
            idle = self._idle  # emptied when closed
            if idle and self.clock() - self._opened_at[idle[-1]] < self.recycle:
                connection, fresh = idle.pop(), False
            else:
                connection, fresh = await self._lend()
            try:
                rows: list[Any] = await connection.fetch(sql, *params)
            except BaseException as error:
                if self._failed(connection, error) and not fresh and not attempt:
                    continue
                raise
            self._give_back(connection)
            return rows
        raise AssertionError("unreachable")  # pragma: no cover

    async def use(self, work: Callable[[Any], Awaitable[T]], *, retry: bool = False) -> T:
        """``work(connection)`` on a lent connection; with ``retry`` (work that may run
        twice) once more on a fresh one when the lent one was lost while idle."""
        for attempt in range(2):
            connection, fresh = await self._lend()
            try:
                done = await work(connection)
            except BaseException as error:
                if self._failed(connection, error) and retry and not fresh and not attempt:
                    continue
                raise
            self._give_back(connection)
            return done
        raise AssertionError("unreachable")  # pragma: no cover

    def _failed(self, connection: Any, error: BaseException) -> bool:
        """Take back ``connection`` after ``error``: closed when lost, cancelled midway or
        closed, else lent again. Whether a fresh connection may run the work again (the
        connection was lost, the readers are open)."""
        lost = isinstance(error, Exception) and is_connection_lost(error)
        if lost or not isinstance(error, Exception) or connection.is_closed():
            self._discard(connection)
        else:
            self._give_back(connection)
        return lost and not self.closed

    async def close(self) -> None:
        """Close the idle connections; lent ones close as they come back."""
        self.closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            self._open -= 1
            self._opened_at.pop(connection, None)
            try:
                await connection.close(timeout=5)
            except Exception:
                connection.terminate()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("the source is closing"))

    async def _lend(self) -> tuple[Any, bool]:
        """A connection and whether it was opened for this read."""
        if self.closed:
            raise ConnectionError("the source is closing")
        if self._idle:
            connection = self._idle.pop()
            if self.clock() - self._opened_at[connection] >= self.recycle:
                return await self._replace(connection), True
            return connection, False
        if self._open < self.size:
            return await self._new(), True
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            connection = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())  # lent to us just as we were cancelled
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass  # already passed over
            raise
        if connection is None:  # a slot freed by a discarded connection: ours to open
            return await self._new(), True
        if self.clock() - self._opened_at[connection] >= self.recycle:
            return await self._replace(connection), True
        return connection, False

    async def _new(self) -> Any:
        self._open += 1
        try:
            return await self._opened()
        except BaseException:
            self._open -= 1
            self._pass_slot()
            raise

    async def _replace(self, old: Any) -> Any:
        """A new connection in the slot of ``old``, which is closed first (politely: it is
        idle, lent to nobody)."""
        del self._opened_at[old]
        self.recycled += 1
        try:
            try:
                await old.close(timeout=5)
            except Exception:
                old.terminate()
            return await self._opened()
        except BaseException:
            old.terminate()  # cancelled while closing it; nothing if already closed
            self._open -= 1
            if not self.closed:
                self._pass_slot()
            raise

    async def _opened(self) -> Any:
        connection = await self._connect()
        self._opened_at[connection] = self.clock()
        return connection

    def _give_back(self, connection: Any) -> None:
        if self.closed or connection.is_closed():
            self._discard(connection)
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # else its caller was cancelled
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def _discard(self, connection: Any) -> None:
        connection.terminate()
        self._opened_at.pop(connection, None)
        self._open -= 1
        if not self.closed:
            self.discarded += 1
            self._pass_slot()

    def _pass_slot(self) -> None:
        """A connection slot is free: the oldest waiter opens a connection in it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
