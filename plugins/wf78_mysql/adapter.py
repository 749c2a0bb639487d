"""The MySQL / MariaDB data source (aiomysql): a connection pool and one group-commit writer.

Every write goes through :class:`~wf78_mysql.writer.MySQLWriter`, which applies whatever is
queued, up to ``max_batch`` writes from many callers, in one transaction on one pooled
connection: one commit (one redo-log flush) serves them all, identical INSERTs travel as one
multi-row INSERT, and savepoints still give each caller its own result or error. Reads take
other pooled connections, in autocommit mode, so each sees the last committed data.

Raw SQL (``execute``) is routed by its first keyword: queries to a reader; DML to the writer;
statements that commit implicitly (DDL, ``CALL``...) alone on a pooled connection, outside
any batch; transaction control and session changes are refused. Raw SQL takes PyMySQL's
placeholders (``%s``, or ``%(name)s`` with a dict); with parameters a literal ``%`` is
written ``%%``, without them as is. Every query holds one statement.

Sessions use utf8mb4, the UTC time zone and strict mode (a too-long value is an error, not a
silent truncation). ``INSERT IGNORE`` (``add_many`` with ``conflict = "ignore"``) would still
cut a text to its column, so the statement builder refuses any value longer than its column
holds, naming the column; ``text`` columns are LONGTEXT. ``datetime`` columns hold no zone: values are stored in UTC and read back
as UTC ISO strings; naive datetimes are taken as UTC. aiomysql runs on asyncio only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomysql
import anyio
from pymysql.constants import CLIENT  # type: ignore[import-untyped]

from wf78_core.plugin import ConfigError, SourceSpec
from wf78_sql import (
    Params,
    ServerOptions,
    ServerSource,
    convert_options,
    create_table_sql,
)

from .connections import QuietCursor, prepare
from .errors import map_error
from .statements import MYSQL
from .writer import MySQLWriter

__all__ = ["MySQLOptions", "MySQLSource", "connection_settings"]

# Strict mode makes a too-long value an error rather than a silent truncation; UTC because
# DATETIME columns hold no zone (and NOW() in raw SQL should agree with stored values).
_INIT_COMMAND = (
    "SET SESSION time_zone = '+00:00', "
    "SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES')"
)
# The largest multi-row INSERT sent at once, when max_allowed_packet allows it.
_MAX_STATEMENT = 4 * 1024 * 1024


class MySQLOptions(ServerOptions, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The ``[datasources.<name>]`` keys of type ``mysql`` besides ``type`` and ``url``: the
    shared ones (:class:`wf78_sql.ServerOptions`; ``minsize`` and ``maxsize`` bound the pool,
    whose writer keeps one connection; the pool replaces a connection idle longer than
    ``pool_recycle``, the writer its own once older) and these."""

    charset: str = "utf8mb4"

    def __post_init__(self) -> None:
        if self.maxsize < 2:
            raise ValueError("maxsize must be >= 2: the writer keeps one connection")
        super().__post_init__()


class MySQLSource(ServerSource):
    """A :class:`~wf78_core.plugin.DataSource` on one MySQL or MariaDB database.

    Call :meth:`open`, then start :meth:`run` in a task group (``await tg.start(source.run)``)
    for group commit. Without ``run`` every write commits alone. Counters: ``transactions``
    and ``writes`` (as for SQLite), ``discarded`` (connections closed after failing
    mid-batch), ``multi_row_inserts`` and ``fallbacks`` (groups of INSERTs applied row by row
    because one row failed).
    """

    Options = MySQLOptions
    kind = "mysql"
    dialect = MYSQL
    counted = ("multi_row_inserts",)

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        self.options = convert_options(spec, MySQLOptions)
        self.outbox_table = self.options.outbox_table
        self.settings = connection_settings(spec)
        self.concurrency = min(self.options.queue_size, 1024)
        self._pool: Any = None

    # -- counters ---------------------------------------------------------------------------

    @property
    def pool(self) -> Any:
        """The aiomysql pool (None while closed)."""
        return self._pool

    @property
    def multi_row_inserts(self) -> int:
        """INSERT statements sent for several rows at once."""
        return self._count("multi_row_inserts")

    @property
    def writer_thread_id(self) -> int | None:
        """The server thread id of the writer's connection, None before its first batch."""
        writer = self._writer
        return writer.thread_id if isinstance(writer, MySQLWriter) else None

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the pool (and the declared tables when ``create_tables`` is set)."""
        if self._pool is not None:
            return
        options = self.options
        try:
            pool = await aiomysql.create_pool(
                minsize=options.minsize,
                maxsize=options.maxsize,
                pool_recycle=options.pool_recycle,
                charset=options.charset,
                connect_timeout=options.connect_timeout,
                autocommit=True,
                cursorclass=QuietCursor,
                # Affected rows of an UPDATE count matched rows, as SQLite's do.
                client_flag=CLIENT.FOUND_ROWS,
                init_command=_INIT_COMMAND,
                **self.settings,
            )
        except Exception as error:
            raise map_error(error, self.name, retryable=True) from error
        self._pool = pool
        try:
            _, rows = await self._read("SELECT @@max_allowed_packet", [])
            packet = int(rows[0][0])
            self._writer = MySQLWriter(
                pool,
                source=self.name,
                max_batch=options.max_batch,
                queue_size=options.queue_size,
                # Leave room for the packet header and the INSERT's head and tail.
                max_statement=max(1024, min(packet, _MAX_STATEMENT) - 16 * 1024),
                recycle=options.pool_recycle,
            )
            if options.create_tables:
                await self.ensure_tables()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise

    async def close(self) -> None:
        """Close the writer's connection after the batch in progress, then the pool
        (idempotent)."""
        writer, pool = self._retire_writer(), self._pool
        self._pool = None
        with anyio.CancelScope(shield=True):
            try:
                if writer is not None:
                    await writer.close()
            finally:
                if pool is not None:
                    pool.close()
                    await pool.wait_closed()

    async def ensure_tables(self) -> list[str]:
        """Create the declared tables the database lacks; the names of those created."""
        _, rows = await self._read(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()", []
        )
        existing = {row[0] for row in rows}
        created: list[str] = []
        for schema in self.spec.tables.values():
            if schema.name in existing:
                continue
            for sql in create_table_sql(schema, MYSQL):
                await self._run_alone(sql, [])
            created.append(schema.name)
        return created

    # -- the driver -------------------------------------------------------------------------

    async def _read(self, sql: str, params: Params) -> tuple[list[str], Sequence[Sequence[Any]]]:
        names, rows, _ = await self._on_pooled(sql, params)
        return names, rows

    async def _run_alone(self, sql: str, params: Params) -> Any:
        """Statements that commit implicitly run alone, in autocommit, outside any batch."""
        names, rows, changed = await self._on_pooled(sql, params)
        if names:
            return [dict(zip(names, row, strict=True)) for row in rows]
        return changed

    def _raw_statement(
        self, sql: str, params: list[Any] | dict[str, Any] | None
    ) -> tuple[str, Params]:
        if params is None:
            # Statements always run with parameters here, so a literal % must be doubled.
            return sql.replace("%", "%%"), []
        return super()._raw_statement(sql, params)

    async def _on_pooled(
        self, sql: str, params: Params
    ) -> tuple[list[str], Sequence[Sequence[Any]], int]:
        pool = self._pool
        if pool is None or pool.closed:
            raise self.closed_error("not open")
        try:
            connection = await pool.acquire()
        except RuntimeError as error:  # the pool is closing
            raise self.closed_error() from error
        except Exception as error:
            raise map_error(error, self.name) from error
        try:
            async with (await prepare(connection)).cursor() as cursor:
                await cursor.execute(sql, params)
                if cursor.description is None:
                    return [], [], cursor.rowcount
                names = [column[0] for column in cursor.description]
                return names, list(await cursor.fetchall()), cursor.rowcount
        except RuntimeError as error:
            raise self.closed_error() from error
        except Exception as error:
            raise map_error(error, self.name) from error
        finally:
            # Not awaited (as `async with pool.acquire()` would): the task it returns only
            # wakes a caller waiting for a connection, and waiting for it costs each read two
            # more turns of the event loop.
            pool.release(connection)


def connection_settings(spec: SourceSpec) -> dict[str, Any]:
    """host, port, user, password and db of ``mysql://user:pass@host:3306/db``."""
    where = f"datasources.{spec.name}.url"
    url = spec.url or ""
    expected = "expected 'mysql://user:password@host:3306/database'"
    try:
        parts = urlsplit(url)
        port = parts.port or 3306
    except ValueError as error:
        raise ConfigError(f"{expected}, got {url!r}: {error}", path=where) from error
    database = unquote(parts.path.lstrip("/"))
    if parts.scheme != "mysql" or not parts.hostname or not database or "/" in database:
        raise ConfigError(f"{expected}, got {url!r}", path=where)
    if parts.query or parts.fragment:
        raise ConfigError(
            f"the url takes no query or fragment ({url!r}): put options in the "
            f"[datasources.{spec.name}] table",
            path=where,
        )
    return {
        "host": parts.hostname,
        "port": port,
        "user": unquote(parts.username or "") or None,
        "password": unquote(parts.password or ""),
        "db": database,
    }
