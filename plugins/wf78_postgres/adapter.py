"""The PostgreSQL data source (asyncpg): reader connections and one group-commit writer.

Every write goes through :class:`~wf78_postgres.writer.PostgresWriter`, which applies whatever
is queued, up to ``max_batch`` writes from many callers, in one transaction on its own
connection: one commit (one WAL flush) serves them all, identical INSERTs travel as one
pipelined ``executemany``, and savepoints still give each caller its own result or error.
Reads take reader connections (:mod:`wf78_postgres.readers`, autocommit), so each sees the
last committed data.

Raw SQL (``execute``) takes PostgreSQL's ``$1, $2...`` placeholders and a list of
parameters, and is routed by its first keyword: queries to a reader; DML to the writer; DDL
and the like alone on a reader connection, outside any batch; transaction control and session
changes are refused. Every statement runs through the extended protocol: one statement each.

Sessions use the UTC time zone; ``datetime`` columns are ``TIMESTAMP`` holding UTC (naive
datetimes are taken as UTC) and are read back as UTC ISO strings.

Sharded tables (:mod:`wf78_postgres.partitions`) are native declarative partitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import anyio
import asyncpg
import msgspec

from wf78_core.plugin import ConfigError, InvalidOperation, Operation, SourceSpec
from wf78_sql import (
    Params,
    ServerOptions,
    ServerSource,
    TableSql,
    Write,
    convert_options,
    create_table_sql,
)

from .errors import map_error, sqlstate
from .partitions import Partitions
from .readers import Readers
from .statements import IGNORE_TAIL, POSTGRES, native
from .writer import PostgresWriter, changed_rows

__all__ = ["PostgresOptions", "PostgresSource", "connection_url"]

_PARTITION_ACTIONS = frozenset({"create_table", "drop_table", "add_columns"})
_SERVER_SETTINGS = {"timezone": "UTC", "application_name": "wf78"}
# What a concurrent CREATE ... IF NOT EXISTS may still meet: another session's table or index
# committed between the check and the creation (unique_violation on the catalog,
# duplicate_table, duplicate_object).
_CREATED_MEANWHILE = frozenset({"23505", "42P07", "42710"})


class PostgresOptions(ServerOptions, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The ``[datasources.<name>]`` keys of type ``postgres`` besides ``type`` and ``url``:
    the shared ones (:class:`wf78_sql.ServerOptions`; the writer keeps one connection besides
    ``maxsize`` readers) and these."""

    # Prepared statements asyncpg keeps per reader connection.
    statement_cache_size: int = 256
    # Sharded tables as native partitions of one partitioned table; false: a table per shard.
    partitions: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.statement_cache_size < 0:
            raise ValueError("statement_cache_size must be >= 0")


class PostgresSource(ServerSource):
    """A :class:`~wf78_core.plugin.DataSource` on one PostgreSQL database.

    Call :meth:`open`, then start :meth:`run` in a task group (``await tg.start(source.run)``)
    for group commit. Without ``run`` every write commits alone. The declared tables are
    created by the engine's start-up maintenance (or :meth:`ensure_tables`), so that a
    sharded table's is made a partitioned one. Counters: ``transactions`` and ``writes``,
    ``discarded`` (writer connections closed after failing), ``pipelines`` (``executemany``
    calls of several rows), ``copies`` (groups of INSERTs sent as one COPY), ``fallbacks``
    (groups applied row by row after a bad row) and ``recycled`` (connections replaced for
    being older than ``pool_recycle``: readers at their next checkout, the writer's between
    batches).
    """

    Options = PostgresOptions
    kind = "postgres"
    dialect = POSTGRES
    counted = ("pipelines", "copies")

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        self.options = convert_options(spec, PostgresOptions)
        self.outbox_table = self.options.outbox_table
        self.url = connection_url(spec)
        self.concurrency = min(self.options.queue_size, 1024)
        self._readers: Readers | None = None
        self._readers_recycled = 0
        self._partitions = (
            Partitions(dialect=POSTGRES, tables=spec.tables, read=self._read, alone=self._run_alone)
            if self.options.partitions
            else None
        )

    # -- counters ---------------------------------------------------------------------------

    @property
    def readers(self) -> Readers | None:
        """The reader connections (None while closed)."""
        return self._readers

    @property
    def pipelines(self) -> int:
        return self._count("pipelines")

    @property
    def copies(self) -> int:
        return self._count("copies")

    @property
    def recycled(self) -> int:
        """Connections closed and replaced for their age, readers' and writer's."""
        readers = self._readers
        return (
            self._count("recycled")
            + self._readers_recycled
            + (readers.recycled if readers is not None else 0)
        )

    @property
    def writer_pid(self) -> int | None:
        """The server process of the writer's connection, None before its first batch."""
        writer = self._writer
        return writer.backend_pid if isinstance(writer, PostgresWriter) else None

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open ``minsize`` readers (at least one: the server must answer) and make the
        writer (which connects on its first batch)."""
        if self._readers is not None:
            return
        options = self.options
        readers = Readers(self._connect_reader, options.maxsize, recycle=options.pool_recycle)
        try:
            await readers.fill(max(options.minsize, 1))
        except Exception as error:
            await readers.close()
            raise map_error(error, self.name, retryable=True) from error
        self._readers = readers
        self._writer = PostgresWriter(
            self._connect_writer,
            source=self.name,
            max_batch=options.max_batch,
            queue_size=options.queue_size,
            recycle=options.pool_recycle,
        )

    async def _connect_reader(self) -> Any:
        return await asyncpg.connect(
            self.url,
            timeout=self.options.connect_timeout,
            statement_cache_size=self.options.statement_cache_size,
            server_settings=_SERVER_SETTINGS,
        )

    async def _connect_writer(self) -> Any:
        return await asyncpg.connect(
            self.url,
            timeout=self.options.connect_timeout,
            # The writer keeps its own prepared statements; asyncpg's cache holds what COPY
            # prepares to learn its columns' types.
            statement_cache_size=64,
            server_settings=_SERVER_SETTINGS,
        )

    async def close(self) -> None:
        """Close the writer's connection after the batch in progress, then the readers."""
        writer, readers = self._retire_writer(), self._readers
        self._readers = None
        if readers is not None:
            self._readers_recycled += readers.recycled
        with anyio.CancelScope(shield=True):
            try:
                if writer is not None:
                    await writer.close()
            finally:
                if readers is not None:
                    await readers.close()

    async def ensure_tables(self, *, skip: Sequence[str] = ()) -> list[str]:
        """Create the declared tables the database lacks (not those of ``skip``: sharded
        tables, made partitioned by their first shard); the names of those created."""
        created: list[str] = []
        for schema in self.spec.tables.values():
            if schema.name in skip or schema.name in await self._table_names(schema.name):
                continue
            for sql in create_table_sql(schema, POSTGRES):
                await self._run_alone(sql, [])
            created.append(schema.name)
        return created

    # -- actions that differ ----------------------------------------------------------------

    async def execute(self, op: Operation) -> Any:
        partitions = self._partitions
        if (
            partitions is not None
            and op.shard is not None
            and op.action in _PARTITION_ACTIONS
            and op.table in self.spec.tables
            and isinstance(op.shard, str)
        ):
            done: Any = None
            if op.action == "create_table":
                done = await partitions.create(op)
            elif op.action == "drop_table":
                done = await partitions.drop(op)
            elif await partitions.parent(f"{op.table}_{op.shard}") is not None:
                # A partition takes its columns from its partitioned table: added there.
                done = await super().execute(msgspec.structs.replace(op, shard=None))
            if done is not None:
                return done
        return await super().execute(op)

    def _add_many(self, table: TableSql, op: Operation) -> Write:
        """As the shared one; ``conflict = "ignore"`` is PostgreSQL's ON CONFLICT DO NOTHING,
        whose RETURNING counts the rows inserted."""
        write = super()._add_many(table, op)
        if op.conflict == "ignore":
            write.statements = [(sql + IGNORE_TAIL, rows) for sql, rows in write.statements]
        return write

    # -- the driver -------------------------------------------------------------------------

    async def _read(self, sql: str, params: Params) -> tuple[list[str], Sequence[Sequence[Any]]]:
        readers = self._readers
        if readers is None:
            raise self.closed_error("not open")
        try:
            rows = await readers.fetch(native(sql), params)  # type: ignore[arg-type]  # a list
        except ConnectionError as error:
            if readers.closed:
                raise self.closed_error() from error
            raise map_error(error, self.name) from error
        except Exception as error:
            raise map_error(error, self.name) from error
        return (list(rows[0].keys()) if rows else []), rows

    async def _run_alone(self, sql: str, params: Params) -> Any:
        """DDL and the like run alone, in autocommit, outside any batch (one statement)."""
        readers = self._readers
        if readers is None:
            raise self.closed_error("not open")
        try:
            return await readers.use(partial(_alone, native(sql), params))
        except Exception as error:
            if sqlstate(error) in _CREATED_MEANWHILE and _creates_if_missing(sql):
                return 0  # another session created it just now: as asked
            if isinstance(error, ConnectionError) and readers.closed:
                raise self.closed_error() from error
            raise map_error(error, self.name) from error

    def _raw_statement(
        self, sql: str, params: list[Any] | dict[str, Any] | None
    ) -> tuple[str, Params]:
        if isinstance(params, dict):
            raise InvalidOperation(
                "postgres raw SQL takes positional parameters ($1, $2...) as a list, got a mapping",
                data_source=self.name,
            )
        return super()._raw_statement(sql, params)


async def _alone(sql: str, params: Params, connection: Any) -> Any:
    statement = await connection.prepare(sql)
    rows = await statement.fetch(*params)
    if statement.get_attributes():
        return [dict(row.items()) for row in rows]
    return changed_rows(statement.get_statusmsg())


def _creates_if_missing(sql: str) -> bool:
    head = " ".join(sql.split()[:8]).upper()
    return head.startswith("CREATE") and "IF NOT EXISTS" in head


def connection_url(spec: SourceSpec) -> str:
    """``postgresql://user:pass@host:5432/db``, checked (asyncpg reads it as it is)."""
    where = f"datasources.{spec.name}.url"
    url = spec.url or ""
    expected = "expected 'postgresql://user:password@host:5432/database'"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as error:
        raise ConfigError(f"{expected}, got {url!r}: {error}", path=where) from error
    database = parts.path.lstrip("/")
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or not database:
        raise ConfigError(f"{expected}, got {url!r}", path=where)
    if parts.fragment:
        raise ConfigError(f"the url takes no fragment ({url!r})", path=where)
    return url
