"""PostgreSQL's group-commit writer: the shared loop (:mod:`wf78_sql.writer`) on one connection.

The writer keeps a connection of its own and applies each batch in one transaction on it.
Identical INSERTs of a batch go out as one pipelined ``executemany`` (asyncpg sends one
Bind/Execute per row and waits once: one round trip for the batch), measured against one
multi-row ``INSERT ... VALUES`` and ``COPY`` in ``benchmarks/postgres_writes.py``. A bad row
fails the ``executemany``; the shared loop then applies the batch write by write, each under
a savepoint, so only its own caller gets the error. Statements are prepared once per
connection (kept by the writer), so a new connection prepares them again. A connection lost
mid-batch fails every write of the batch as retryable and is closed: the server rolls back
what it never saw committed. One older than ``pool_recycle`` is replaced between batches
(:class:`wf78_sql.ConnectionWriter`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from wf78_core.plugin import OperationError
from wf78_sql import ConnectionWriter, Params

from .errors import CommitUnknown, is_connection_lost, map_error
from .statements import IGNORE_TAIL, native

__all__ = ["COPY_ROWS", "PostgresWriter", "changed_rows", "copy_target"]

Connect = Callable[[], Awaitable[Any]]
# Prepared statements kept per writer connection at most.
_STATEMENT_CACHE = 512
# Rows from which a group of identical plain INSERTs goes out as one COPY (binary format).
COPY_ROWS = 32
_IDENTIFIER = r'"(?:[^"]|"")+"'
# The shared builder's plain INSERT: INSERT INTO "t" ("a", "b") VALUES (NUL, NUL).
_PLAIN_INSERT = re.compile(
    rf"INSERT INTO ({_IDENTIFIER}) \(({_IDENTIFIER}(?:, {_IDENTIFIER})*)\) "
    r"VALUES \(\x00(?:, \x00)*\)"
)
_copy_targets: dict[str, tuple[str, list[str]] | None] = {}


def copy_target(sql: str) -> tuple[str, list[str]] | None:
    """The table and columns of the builder's plain INSERT ``sql`` (no ON CONFLICT, no
    RETURNING), which COPY can do as well; None for any other statement."""
    if sql in _copy_targets:
        return _copy_targets[sql]
    found = _PLAIN_INSERT.fullmatch(sql)
    target = None
    if found is not None:
        columns = re.findall(_IDENTIFIER, found.group(2))
        if ", ".join(columns) == found.group(2) and len(columns) == sql.count("\x00"):
            target = (_unquote(found.group(1)), [_unquote(column) for column in columns])
    if len(_copy_targets) >= 1024:
        _copy_targets.clear()
    _copy_targets[sql] = target
    return target


def _unquote(identifier: str) -> str:
    return identifier[1:-1].replace('""', '"')


def changed_rows(status: str) -> int:
    """The rows a command tag reports changed (``INSERT 0 3``, ``UPDATE 2``...), else 0."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class PostgresWriter(ConnectionWriter):
    """Batches writes on a connection from ``connect``; ``discarded`` counts connections
    closed after they failed, ``recycled`` those replaced for their age (``recycle``
    seconds), ``pipelines`` the ``executemany`` calls of several rows, ``copies`` the groups
    of at least ``copy_rows`` plain INSERTs sent as one COPY."""

    kind = "postgres"
    savepoint = "wf78_write"

    def __init__(
        self,
        connect: Connect,
        *,
        source: str,
        max_batch: int,
        queue_size: int,
        recycle: float = float("inf"),
    ) -> None:
        super().__init__(source=source, max_batch=max_batch, queue_size=queue_size, recycle=recycle)
        self._connect_new = connect
        self._statements: dict[str, Any] = {}
        self.pipelines = 0
        self.copies = 0
        self.copy_rows = COPY_ROWS

    @property
    def backend_pid(self) -> int | None:
        """The server process of the writer's connection (pg_terminate_backend), or None."""
        connection = self.connection
        if connection is None or connection.is_closed():
            return None
        pid: int = connection.get_server_pid()
        return pid

    def map_error(self, error: BaseException, *, retryable: bool | None = None) -> OperationError:
        return map_error(error, self.source, retryable=retryable)

    def aborts_batch(self, error: BaseException) -> bool:
        return is_connection_lost(error)

    def is_connection_lost(self, error: BaseException) -> bool:
        return is_connection_lost(error)

    def commit_unknown(self, error: BaseException) -> Exception:
        return CommitUnknown(error)

    async def _open(self) -> Any:
        connection = await self._connect_new()
        self._statements = {}  # prepared statements belong to their connection
        return connection

    def _release(self, connection: Any) -> None:
        self._statements = {}
        connection.terminate()

    def _is_closed(self, connection: Any) -> bool:
        closed: bool = connection.is_closed()
        return closed

    async def _close_connection(self) -> None:
        connection, self.connection = self.connection, None
        self._statements = {}
        if connection is None:
            return
        try:
            await connection.close(timeout=5)
        except Exception:
            connection.terminate()

    async def _sql(self, sql: str) -> None:
        await self.connection.execute(sql)

    async def _statement(self, sql: str) -> Any:
        """The connection's prepared statement of ``sql`` (the builder's placeholders numbered),
        prepared on first use: the extended protocol runs one statement per text, so raw SQL
        cannot end the batch's transaction with a second one."""
        statements = self._statements
        found = statements.get(sql)
        if found is None:
            if len(statements) >= _STATEMENT_CACHE:
                statements.clear()
            found = statements[sql] = await self.connection.prepare(native(sql))
        return found

    async def _execute(self, sql: str, params: Params) -> list[dict[str, Any]] | int:
        statement = await self._statement(sql)
        rows = await statement.fetch(*params)
        if not statement.get_attributes():
            return changed_rows(statement.get_statusmsg())
        if sql.endswith(IGNORE_TAIL):
            return len(rows)  # add_many ignoring conflicts: the rows inserted
        return [dict(row.items()) for row in rows]

    async def _executemany(self, sql: str, rows: list[Params]) -> int:
        if len(rows) >= self.copy_rows:
            target = copy_target(sql)
            if target is not None:
                table, columns = target
                await self.connection.copy_records_to_table(table, records=rows, columns=columns)
                self.copies += 1
                return len(rows)
        statement = await self._statement(sql)
        if len(rows) > 1:
            self.pipelines += 1
        if sql.endswith(IGNORE_TAIL):
            return len(await statement.fetchmany(rows))
        await statement.executemany(rows)
        return len(rows)
