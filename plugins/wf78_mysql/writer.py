"""MySQL's group-commit writer: the shared loop (:mod:`wf78_sql.writer`) on one pooled connection.

The writer keeps one connection from the pool, in autocommit mode, and applies each batch in
one explicit transaction on it (``START TRANSACTION`` ... ``COMMIT``); a lone single-row write
with nothing to run after it goes out alone, committed by the server as it runs (one round
trip instead of three). Identical single-row INSERTs go out as one multi-row
``INSERT ... VALUES (...), (...)`` (what aiomysql's ``executemany`` sends, built here more
cheaply, chunked under ``max_statement`` bytes). A connection lost mid-batch fails every write of the batch as
retryable and is closed, never returned to the pool: the server rolls back what it never
saw committed, so nothing of the batch stays.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aiomysql.cursors import RE_INSERT_VALUES
from pymysql.constants import SERVER_STATUS  # type: ignore[import-untyped]
from pymysql.converters import escape_string  # type: ignore[import-untyped]

from wf78_core.plugin import OperationError
from wf78_sql import ConnectionWriter, Params

from .connections import prepare
from .errors import CommitUnknown, aborts_transaction, is_connection_lost, map_error

__all__ = ["MySQLWriter"]

# A write without a transaction goes out only on a connection that answered this recently
# (seconds): under load, every write; after a pause, START TRANSACTION goes first, where a
# connection the server dropped meanwhile is found (and replaced) before any write is sent.
_FRESH_SECONDS = 0.01


class MySQLWriter(ConnectionWriter):
    """Batches writes on a connection of ``pool``.

    ``discarded`` counts connections closed after they failed, ``recycled`` those replaced
    for their age (``recycle`` seconds), ``multi_row_inserts`` the INSERTs sent for several
    rows at once (a chunk counts once per ``executemany``).
    """

    kind = "mysql"
    begin_sql = "START TRANSACTION"
    savepoint = "wf78_write"  # WRITE is a reserved word in MySQL
    autocommits = True

    def __init__(
        self,
        pool: Any,
        *,
        source: str,
        max_batch: int,
        queue_size: int,
        max_statement: int,
        recycle: float = float("inf"),
    ) -> None:
        super().__init__(source=source, max_batch=max_batch, queue_size=queue_size, recycle=recycle)
        self.pool = pool
        self.max_statement = max_statement
        self._used_at = 0.0
        self.multi_row_inserts = 0

    @property
    def thread_id(self) -> int | None:
        """The server thread id of the writer's connection (for KILL), None when it has none."""
        connection = self.connection
        if connection is None or connection.closed:
            return None
        thread_id: int = connection.thread_id()
        return thread_id

    def map_error(self, error: BaseException, *, retryable: bool | None = None) -> OperationError:
        return map_error(error, self.source, retryable=retryable)

    def aborts_batch(self, error: BaseException) -> bool:
        return aborts_transaction(error)

    def is_connection_lost(self, error: BaseException) -> bool:
        return is_connection_lost(error)

    def commit_unknown(self, error: BaseException) -> Exception:
        return CommitUnknown(error)

    async def _commit_connection(self) -> None:
        await self.connection.commit()

    async def _rollback_connection(self) -> None:
        await self.connection.rollback()

    def _is_closed(self, connection: Any) -> bool:
        closed: bool = connection.closed
        return closed

    async def _open(self) -> Any:
        connection = await self.pool.acquire()
        try:
            await prepare(connection)
            await connection.autocommit(True)
        except Exception:
            self._release(connection)
            self.discarded += 1
            raise
        return connection

    def _release(self, connection: Any) -> None:
        """Close ``connection`` and give its pool slot back, without the connection."""
        connection.close()
        self.pool.release(connection)  # a closed connection only leaves the pool's books

    async def _close_connection(self) -> None:
        connection = self.connection
        if connection is None:
            return
        try:
            if not connection.closed:
                await connection.ensure_closed()
        except Exception:
            pass  # already gone: closing it below is all that is left to do
        finally:
            self._drop(counted=False)

    def _may_autocommit(self) -> bool:
        connection = self.connection
        return (
            connection is not None
            and not connection.closed
            and time.monotonic() - self._used_at < _FRESH_SECONDS
            and not self.expired  # else BEGIN goes first, on a new connection
        )

    def _one_statement(self, sql: str, rows: list[Params]) -> Callable[[], Awaitable[Any]] | None:
        match = RE_INSERT_VALUES.match(sql)
        if match is None or not _plain_rows(match.group(2).rstrip(), rows):
            return None
        statements = self._multi_row(match, rows)
        if len(statements) != 1:
            return None  # several statements would not be one atomic step
        return partial(self._insert_alone, statements[0])

    async def _insert_alone(self, statement: bytes) -> None:
        await self._sql(statement)
        self.multi_row_inserts += 1

    async def _sql(self, sql: str | bytes) -> None:
        async with self.connection.cursor() as cursor:
            await cursor.execute(sql)
        self._used_at = time.monotonic()

    async def _execute(self, sql: str, params: Params) -> list[dict[str, Any]] | int:
        async with self.connection.cursor() as cursor:
            await cursor.execute(sql, params)
            if cursor.description is not None:
                names = [column[0] for column in cursor.description]
                rows = await cursor.fetchall()
                return [dict(zip(names, row, strict=True)) for row in rows]
            changed: int = cursor.rowcount
        self._used_at = time.monotonic()
        return changed

    async def _executemany(self, sql: str, rows: list[Params]) -> int:
        async with self.connection.cursor() as cursor:
            match = RE_INSERT_VALUES.match(sql) if len(rows) > 1 else None
            if match is not None and _plain_rows(match.group(2).rstrip(), rows):
                changed = await self._insert_rows(cursor, match, rows)
            else:
                cursor.max_stmt_length = self.max_statement
                await cursor.executemany(sql, rows)
                changed = cursor.rowcount
            if len(rows) > 1:
                self.multi_row_inserts += 1
            return changed

    async def _insert_rows(self, cursor: Any, match: re.Match[str], rows: list[Params]) -> int:
        """What aiomysql's ``executemany`` sends for ``INSERT ... VALUES (%s, ...)``, built
        cheaper (see :meth:`_multi_row`)."""
        changed = 0
        for statement in self._multi_row(match, rows):
            changed += await cursor.execute(statement)
        return changed

    def _multi_row(self, match: re.Match[str], rows: list[Params]) -> list[bytes]:
        """``rows`` as multi-row INSERTs: every value escaped in one pass (strings, ints and
        None as pymysql escapes them, the rest by the connection), one ``%`` per statement;
        statements chunked under ``max_statement`` bytes like aiomysql's."""
        connection = self.connection
        encoding = connection.encoding
        prefix = (match.group(1) % ()).encode(encoding)
        values = match.group(2).rstrip()
        postfix = (match.group(3) or "").encode(encoding)
        escape = connection.escape
        if connection.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES:
            escaped = [escape(value) for row in rows for value in row]
        else:
            escaped = [
                "'" + escape_string(value) + "'"
                if type(value) is str
                else str(value)
                if type(value) is int
                else "NULL"
                if value is None
                else escape(value)
                for row in rows
                for value in row
            ]
        body = (",".join([values] * len(rows)) % tuple(escaped)).encode(encoding, "surrogateescape")
        if len(prefix) + len(body) + len(postfix) <= self.max_statement:
            return [prefix + body + postfix]
        # Too long for one statement: one per chunk of rows, each under max_statement.
        width = len(rows[0])
        statements: list[bytes] = []
        chunk = bytearray(prefix)
        for start in range(0, len(escaped), width):
            row = (values % tuple(escaped[start : start + width])).encode(
                encoding, "surrogateescape"
            )
            if len(chunk) > len(prefix) and (
                len(chunk) + len(row) + len(postfix) + 1 > self.max_statement
            ):
                statements.append(bytes(chunk + postfix))
                chunk = bytearray(prefix)
            elif len(chunk) > len(prefix):
                chunk += b","
            chunk += row
        statements.append(bytes(chunk + postfix))
        return statements


def _plain_rows(values: str, rows: list[Params]) -> bool:
    """Whether ``values`` is ``(%s, ...)`` and every row a sequence of that many values."""
    width = values.count("%s")
    return values == "(" + ", ".join(["%s"] * width) + ")" and all(
        isinstance(row, list | tuple) and len(row) == width for row in rows
    )
