"""The SQLite data source (aiosqlite): WAL mode, a pool of readers and one group-commit writer.

SQLite takes one writer at a time and every commit pays for a WAL append (and an fsync with
``synchronous = "FULL"``). So every write goes through a single writer connection that
applies whatever is queued, up to ``max_batch`` writes from many callers, in one transaction
(:mod:`wf78_sqlite.writer`): throughput grows with concurrency, while savepoints still give
each caller its own result or error. Reads go to ``readers`` other connections, which in WAL
mode see the last committed data without waiting for the writer.

Short reads skip the thread hop: with ``inline_read_steps`` > 0 (the default) a read first runs
on the event loop's own read-only connection, with a progress handler that interrupts it once it
has taken that many SQLite virtual-machine steps (a read by primary key takes well under a
hundred; the default 2,000 is some tens of microseconds). An interrupted read has returned
nothing and is run again on a reader thread, as is a read that meets a lock (the inline
connection never waits: ``busy_timeout = 0``). So a get by id costs no thread round trip, and
no long query holds up the loop. Set ``inline_read_steps = 0`` to send every read to a thread
(a database on slow or network storage, where even a short read may wait for the disk).

Durability: the default ``synchronous = "FULL"`` syncs every commit, so a write that was
acknowledged survives power loss too ("nothing accepted is ever lost"); group commit shares
that fsync among every write of the batch. ``"NORMAL"`` survives an application crash
but may lose the last transactions on power loss (the database stays consistent).

aiosqlite runs on asyncio only.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import anyio
import msgspec

from wf78_core.plugin import ConfigError, DataSourceError, SourceSpec
from wf78_sql import (
    DEFAULT_OUTBOX_TABLE,
    Params,
    SqlSource,
    check_outbox_table,
    convert_options,
    create_table_sql,
)

from .errors import map_error
from .statements import SQLITE
from .writer import GroupCommitWriter

__all__ = ["SQLiteOptions", "SQLiteSource", "database_path"]

_URL_PREFIX = "sqlite:///"


class SQLiteOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The ``[datasources.<name>]`` keys of type ``sqlite`` besides ``type`` and ``url``."""

    readers: int = 4
    # Reads run on the event loop until they take this many SQLite VM steps (0 = never).
    inline_read_steps: int = 2000
    synchronous: Literal["OFF", "NORMAL", "FULL"] = "FULL"
    busy_timeout: float = 5.0
    # Writes applied per group-commit transaction at most.
    max_batch: int = 1000
    # Writes waiting for the writer at most; further writers wait for room.
    queue_size: int = 10_000
    create_tables: bool = True
    # The transactional outbox feeding table mirrors (created on first use).
    outbox_table: str = DEFAULT_OUTBOX_TABLE

    def __post_init__(self) -> None:
        check_outbox_table(self.outbox_table)
        for name in ("readers", "max_batch", "queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.busy_timeout < 0:
            raise ValueError("busy_timeout must be >= 0")
        if self.inline_read_steps < 0:
            raise ValueError("inline_read_steps must be >= 0")


class _ReaderPool:
    """Reader connections, each lent to one caller at a time.

    An idle connection is taken at once, without a semaphore's checkpoint; when all are
    lent, callers wait first come, first served, and a connection given back goes straight
    to the oldest waiter.
    """

    def __init__(self, connections: list[aiosqlite.Connection]) -> None:
        self.connections = connections
        self._idle = list(connections)
        self._waiters: deque[asyncio.Future[aiosqlite.Connection]] = deque()

    async def fetchall(self, sql: str, params: Params) -> list[sqlite3.Row]:
        connection = self._idle.pop() if self._idle else await self._lent()
        try:
            # One thread hop for execute + fetch, so a cancelled caller leaves no open cursor.
            return list(await connection.execute_fetchall(sql, params))
        finally:
            self._give_back(connection)

    async def _lent(self) -> aiosqlite.Connection:
        waiter: asyncio.Future[aiosqlite.Connection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._give_back(waiter.result())  # lent to us just as we were cancelled
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass  # already passed over
            raise

    def _give_back(self, connection: aiosqlite.Connection) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # else its caller was cancelled
                waiter.set_result(connection)
                return
        self._idle.append(connection)


class SQLiteSource(SqlSource):
    """A :class:`~wf78_core.plugin.DataSource` on one SQLite file.

    Call :meth:`open`, then start :meth:`run` in a task group (``await tg.start(source.run)``)
    for group commit. Without ``run`` every write commits alone, which suits scripts and tests.
    ``transactions`` and ``writes`` count committed transactions and writes handled.
    """

    Options = SQLiteOptions
    kind = "sqlite"
    dialect = SQLITE

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        self.options = convert_options(spec, SQLiteOptions)
        self.outbox_table = self.options.outbox_table
        self.path = database_path(spec)
        self.concurrency = min(self.options.queue_size, 1024)
        self._readers: _ReaderPool | None = None
        self._inline: sqlite3.Connection | None = None
        # Reads finished on the event loop, and reads sent to a reader thread.
        self.inline_reads = 0
        self.threaded_reads = 0

    async def open(self) -> None:
        """Connect the writer and the readers, switch to WAL and create the declared tables."""
        if self._writer is not None:
            return
        opened: list[aiosqlite.Connection] = []
        try:
            await anyio.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            writer = await self._connect(opened, query_only=False)
            await self._prepare(writer)
            readers = [
                await self._connect(opened, query_only=True) for _ in range(self.options.readers)
            ]
        except BaseException as error:
            with anyio.CancelScope(shield=True):
                for connection in opened:
                    await _close_quietly(connection)
            if isinstance(error, sqlite3.Error | OSError):
                raise map_error(error, self.name) from error
            raise
        self._writer = GroupCommitWriter(
            writer,
            source=self.name,
            max_batch=self.options.max_batch,
            queue_size=self.options.queue_size,
        )
        self._readers = _ReaderPool(readers)
        if self.options.inline_read_steps:
            self._inline = self._connect_inline()

    @property
    def inline_connection(self) -> sqlite3.Connection | None:
        """The read-only connection short reads run on in the event loop (None: off)."""
        return self._inline

    async def close(self) -> None:
        """Close every connection, after the write in progress if any (idempotent)."""
        writer, readers = self._retire_writer(), self._readers
        self._readers = None
        inline, self._inline = self._inline, None
        if inline is not None:
            inline.close()
        errors: list[Exception] = []
        with anyio.CancelScope(shield=True):
            if writer is not None:
                try:
                    await writer.close()
                except Exception as error:
                    errors.append(error)
            for connection in readers.connections if readers else []:
                try:
                    await connection.close()
                except Exception as error:
                    errors.append(error)
        if errors:
            raise map_error(errors[0], self.name) from errors[0]

    async def _read(self, sql: str, params: Params) -> tuple[list[str], Sequence[Sequence[Any]]]:
        readers = self._readers
        if readers is None:
            raise self.closed_error("not open")
        inline = self._inline
        if inline is not None:
            try:
                rows = inline.execute(sql, params).fetchall()
            except sqlite3.Error:
                pass  # interrupted, locked or failed: the reader thread runs it (and reports)
            else:
                self.inline_reads += 1
                return (list(rows[0].keys()) if rows else []), rows
        self.threaded_reads += 1
        try:
            rows = await readers.fetchall(sql, params)
        except Exception as error:
            raise map_error(error, self.name) from error
        return (list(rows[0].keys()) if rows else []), rows

    async def _connect(
        self, opened: list[aiosqlite.Connection], *, query_only: bool
    ) -> aiosqlite.Connection:
        # Autocommit mode: the writer issues BEGIN/COMMIT itself, readers see each commit.
        connection = await aiosqlite.connect(self.path, isolation_level=None)
        opened.append(connection)
        connection.row_factory = sqlite3.Row
        # PRAGMAs take no bound parameters; these values are validated options, not input.
        await connection.execute_fetchall(
            f"PRAGMA busy_timeout = {int(self.options.busy_timeout * 1000)}"
        )
        await connection.execute_fetchall("PRAGMA foreign_keys = ON")
        if query_only:
            # A reader never writes, whatever SQL reaches it.
            await connection.execute_fetchall("PRAGMA query_only = ON")
        return connection

    def _connect_inline(self) -> sqlite3.Connection:
        """The event loop's read-only connection: never waits for a lock, and gives up
        (``interrupted``) after ``inline_read_steps`` VM steps. Opening a WAL database's
        file takes microseconds, so this happens on the loop too."""
        connection = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,  # closed from whichever thread closes the source
        )
        try:
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA busy_timeout = 0")
            connection.execute("PRAGMA query_only = ON")
            connection.set_progress_handler(_interrupt, self.options.inline_read_steps)
        except BaseException:
            connection.close()
            raise
        return connection

    async def _prepare(self, writer: aiosqlite.Connection) -> None:
        rows = list(await writer.execute_fetchall("PRAGMA journal_mode = WAL"))
        mode = str(rows[0][0]).lower() if rows else ""
        if mode != "wal":
            raise DataSourceError(
                f"sqlite source {self.name!r} could not switch {str(self.path)!r} to WAL "
                f"(journal_mode is {mode!r})",
                data_source=self.name,
            )
        await writer.execute_fetchall(f"PRAGMA synchronous = {self.options.synchronous}")
        if self.options.create_tables:
            for schema in self.spec.tables.values():
                for sql in create_table_sql(schema, SQLITE):
                    await writer.execute_fetchall(sql)


def database_path(spec: SourceSpec) -> Path:
    """The file of ``sqlite:///path``: relative paths resolve against ``spec.base_dir``."""
    where = f"datasources.{spec.name}.url"
    url = spec.url
    if not url or not url.startswith(_URL_PREFIX):
        raise ConfigError(f"expected 'sqlite:///path/to.db', got {url!r}", path=where)
    location = url.removeprefix(_URL_PREFIX)
    if location in ("", ":memory:"):
        raise ConfigError(
            f"in-memory SQLite is not supported ({url!r}): WAL mode needs a file", path=where
        )
    path = Path(location)
    return path if path.is_absolute() else Path(spec.base_dir) / path


def _interrupt() -> int:
    """The inline connection's progress handler: any non-zero answer interrupts the read."""
    return 1


async def _close_quietly(connection: aiosqlite.Connection) -> None:
    try:
        await connection.close()
    except Exception:
        pass  # closing after a failed open: the first error is the one worth raising
