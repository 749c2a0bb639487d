"""The SQLite data source (aiosqlite): WAL mode, a pool of readers and one group-commit writer.

SQLite takes one writer at a time and every commit pays for a WAL append (and an fsync with
``synchronous = "FULL"``). So every write goes through a single writer connection that
applies whatever is queued, up to ``max_batch`` writes from many callers, in one transaction
(:mod:`wf78_sqlite.writer`): throughput grows with concurrency, while savepoints still give
each caller its own result or error. Reads go to ``readers`` other connections, which in WAL
mode see the last committed data without waiting for the writer.

Durability: with ``synchronous = "NORMAL"`` in WAL mode a committed write survives an
application crash; the last transactions may be lost on power loss or an OS crash (the
database stays consistent). ``"FULL"`` syncs every commit, a cost group commit shares out.

aiosqlite runs on asyncio only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import anyio
import msgspec
from anyio.abc import TaskStatus

from wf78_core.datasource import SourceSpec
from wf78_core.definitions import Operation
from wf78_core.errors import ConfigError, DataSourceError, InvalidOperation, Problem

from .errors import closed_error, map_error
from .statements import (
    Params,
    TableSql,
    create_table_sql,
    first_keyword,
    is_read,
    raw_params,
)
from .writer import GroupCommitWriter, Write

__all__ = ["SQLiteOptions", "SQLiteSource", "database_path"]

_URL_PREFIX = "sqlite:///"
# Raw SQL must not end or nest the writer's own transaction and savepoints.
_TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"})


class SQLiteOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The ``[datasources.<name>]`` keys of type ``sqlite`` besides ``type`` and ``url``."""

    readers: int = 4
    synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL"
    busy_timeout: float = 5.0
    # Writes applied per group-commit transaction at most.
    max_batch: int = 1000
    # Writes waiting for the writer at most; further writers wait for room.
    queue_size: int = 10_000
    create_tables: bool = True

    def __post_init__(self) -> None:
        for name in ("readers", "max_batch", "queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.busy_timeout < 0:
            raise ValueError("busy_timeout must be >= 0")


class _ReaderPool:
    """Reader connections, each lent to one caller at a time."""

    def __init__(self, connections: list[aiosqlite.Connection]) -> None:
        self.connections = connections
        self._idle = list(connections)
        self._slots = anyio.Semaphore(len(connections))

    async def fetchall(self, sql: str, params: Params) -> list[sqlite3.Row]:
        async with self._slots:
            connection = self._idle.pop()
            try:
                # One thread hop for execute + fetch, so a cancelled caller leaves no open cursor.
                return list(await connection.execute_fetchall(sql, params))
            finally:
                self._idle.append(connection)


class SQLiteSource:
    """A :class:`~wf78_core.datasource.DataSource` on one SQLite file.

    Call :meth:`open`, then start :meth:`run` in a task group (``await tg.start(source.run)``)
    for group commit. Without ``run`` every write commits alone, which suits scripts and tests.
    ``transactions`` and ``writes`` count committed transactions and writes handled.
    """

    Options = SQLiteOptions
    actions: frozenset[str] = frozenset(
        {"add", "add_many", "get", "update", "upsert", "delete", "delete_many", "execute", "noop"}
    )

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.options = _options(spec)
        self.path = database_path(spec)
        self.concurrency = min(self.options.queue_size, 1024)
        self._tables = {name: TableSql(schema, spec.name) for name, schema in spec.tables.items()}
        self._writer: GroupCommitWriter | None = None
        self._readers: _ReaderPool | None = None
        self._transactions = 0
        self._writes = 0

    @property
    def transactions(self) -> int:
        """Committed write transactions since the source was built."""
        return self._transactions + (self._writer.transactions if self._writer else 0)

    @property
    def writes(self) -> int:
        """Writes handled (committed or failed) since the source was built."""
        return self._writes + (self._writer.writes if self._writer else 0)

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

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The group-commit writer loop, until cancelled; writes still queued then fail
        with a retryable DataSourceError."""
        if self._writer is None:
            raise closed_error(self.name, "not open")
        await self._writer.run(task_status=task_status)

    async def close(self) -> None:
        """Close every connection, after the write in progress if any (idempotent)."""
        writer, readers = self._writer, self._readers
        self._writer = self._readers = None
        if writer is not None:
            self._transactions += writer.transactions
            self._writes += writer.writes
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

    async def health(self) -> None:
        """A ``SELECT 1`` on a reader; a retryable DataSourceError when it fails."""
        try:
            await self._read("SELECT 1", [])
        except DataSourceError as error:
            raise DataSourceError(
                f"sqlite source {self.name!r} is unhealthy: {error}",
                data_source=self.name,
                retryable=True,
            ) from error

    async def execute(self, op: Operation) -> Any:
        """Perform one operation.

        Returns: ``add`` the row id, ``add_many`` the ids, ``get`` a list of dicts,
        ``update``/``delete``/``delete_many`` the rows changed, ``upsert`` the id,
        ``execute`` rows for a query else the rows changed, ``noop`` None. Raises
        InvalidOperation for a bad operation, DataSourceError when SQLite refuses.
        """
        if op.action not in self.actions:
            raise InvalidOperation(
                f"action {op.action!r} is not supported by sqlite source {self.name!r} "
                f"(expected one of {sorted(self.actions)})",
                data_source=self.name,
            )
        if op.action == "noop":
            return None
        if op.action == "execute":
            return await self._execute_sql(op)
        table = self._table(op)
        match op.action:
            case "get":
                statement, names = table.select(
                    where=op.where,
                    columns=op.columns,
                    order=op.order,
                    limit=op.limit,
                    offset=op.offset,
                )
                rows = await self._read(statement.sql, statement.params)
                return [table.decode(names, row) for row in rows]
            case "add":
                if op.values is None:
                    raise table.invalid(f"add needs values (table {op.table!r})")
                statement, row_id = table.insert(op.values)
                write = Write([(statement.sql, [statement.params])], value=row_id, groupable=True)
            case "add_many":
                write = self._add_many(table, op)
                if not write.value:
                    return []
            case "upsert":
                statement, row_id = table.upsert(op.values or {})
                write = Write([(statement.sql, [statement.params])], value=row_id, groupable=True)
            case "update":
                statement = table.update(op.values, op.where)
                write = Write([(statement.sql, [statement.params])], counts=True)
            case _:
                statement = table.delete(op.where, many=op.action == "delete_many")
                write = Write([(statement.sql, [statement.params])], counts=True)
        return await self._write(write)

    def _table(self, op: Operation) -> TableSql:
        if op.table is None:
            raise InvalidOperation(f"{op.action} needs a table", data_source=self.name)
        table = self._tables.get(op.table)
        if table is None:
            raise InvalidOperation(
                f"unknown table {op.table!r} (sqlite source {self.name!r} has "
                f"{sorted(self._tables)})",
                data_source=self.name,
            )
        return table

    def _add_many(self, table: TableSql, op: Operation) -> Write:
        """One write holding every row, so the caller's rows land all together or not at all."""
        if op.rows is None:
            raise table.invalid(f"add_many needs rows (table {op.table!r})")
        statements: dict[str, list[Params]] = {}
        ids: list[str | None] = []
        for index, row in enumerate(op.rows):
            statement, row_id = table.insert(row, field=f"rows[{index}]")
            statements.setdefault(statement.sql, []).append(statement.params)
            ids.append(row_id)
        return Write(list(statements.items()), value=ids, groupable=True)

    async def _execute_sql(self, op: Operation) -> Any:
        if not op.sql:
            raise InvalidOperation("execute needs sql", data_source=self.name)
        keyword = first_keyword(op.sql)
        if keyword in _TRANSACTION_CONTROL:
            raise InvalidOperation(
                f"execute cannot run {keyword!r} in sql: every write already runs in the "
                "writer's transaction",
                data_source=self.name,
            )
        params = raw_params(op.params)
        if is_read(op.sql):
            return [dict(row) for row in await self._read(op.sql, params)]
        return await self._write(Write([(op.sql, [params])], counts=True))

    async def _read(self, sql: str, params: Params) -> list[sqlite3.Row]:
        readers = self._readers
        if readers is None:
            raise closed_error(self.name, "not open")
        try:
            return await readers.fetchall(sql, params)
        except Exception as error:
            raise map_error(error, self.name) from error

    async def _write(self, write: Write) -> Any:
        writer = self._writer
        if writer is None:
            raise closed_error(self.name, "not open")
        return await writer.submit(write)

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
                for sql in create_table_sql(schema):
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


def _options(spec: SourceSpec) -> SQLiteOptions:
    """``spec.options`` as SQLiteOptions; a plain mapping is converted (and checked) here."""
    raw = spec.options
    where = f"datasources.{spec.name}"
    if isinstance(raw, SQLiteOptions):
        return raw
    if raw is None:
        return SQLiteOptions()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"options must be a table, got {type(raw).__name__}", path=where)
    try:
        return msgspec.convert(dict(raw), SQLiteOptions)
    except msgspec.ValidationError as error:
        message, _, at = str(error).partition(" - at `$")
        if at:
            where += at.rstrip("`")
        elif message.startswith("Object contains unknown field"):
            where += "." + message.split("`")[1]
            message = "unknown key"
        raise ConfigError([Problem(where, message)]) from error


async def _close_quietly(connection: aiosqlite.Connection) -> None:
    try:
        await connection.close()
    except Exception:
        pass  # closing after a failed open: the first error is the one worth raising
