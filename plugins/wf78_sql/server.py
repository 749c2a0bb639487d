"""What the client-server SQL adapters (MySQL, PostgreSQL) share, less the driver.

- :class:`ServerOptions`: the ``[datasources.<name>]`` keys both take, checked alike (a
  ``ValueError`` naming the key, which the config loader reports under the source's path).
- :class:`ConnectionWriter`: a group-commit writer on one connection of its own. A connection
  the server dropped while idle is replaced once at ``BEGIN``; one lost mid-batch or that
  cannot roll back is closed (``discarded``); one older than ``pool_recycle`` seconds is
  closed and replaced before the next batch (``recycled``), never during one.
- :class:`ServerSource`: the writer's counters kept across the writer's life.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec

from wf78_core.plugin import DataSourceError, SourceSpec

from .errors import closed_error
from .outbox import DEFAULT_OUTBOX_TABLE, check_outbox_table
from .source import SqlSource
from .writer import GroupCommitWriter

__all__ = ["ConnectionWriter", "ServerOptions", "ServerSource"]

Clock = Callable[[], float]


class ServerOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The keys of a server database's ``[datasources.<name>]`` table besides ``type`` and
    ``url`` that MySQL and PostgreSQL share (each adds its own)."""

    # Reader connections opened at start and at most (MySQL: the pool, the writer's included).
    minsize: int = 1
    maxsize: int = 10
    connect_timeout: float = 5.0
    # Writes applied per group-commit transaction at most.
    max_batch: int = 1000
    # Writes waiting for the writer at most; further writers wait for room.
    queue_size: int = 10_000
    # Create the declared tables (MySQL: on open; PostgreSQL: by the engine) and today's shards
    # at start; false: nothing is created on this source unless ``wf78 maintain`` asks.
    create_tables: bool = True
    # Seconds after which a connection is closed and replaced at its next use (the writer's
    # between batches), never during a query.
    pool_recycle: float = 3600
    # The transactional outbox feeding table mirrors (created on first use).
    outbox_table: str = DEFAULT_OUTBOX_TABLE

    def __post_init__(self) -> None:
        check_outbox_table(self.outbox_table)
        for name in ("max_batch", "queue_size", "maxsize"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 <= self.minsize <= self.maxsize:
            raise ValueError("minsize must be between 0 and maxsize")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        if not self.pool_recycle > 0:  # NaN too
            raise ValueError(
                f"pool_recycle must be a positive number of seconds, got {self.pool_recycle}"
            )


class ConnectionWriter(GroupCommitWriter):
    """A :class:`~wf78_sql.writer.GroupCommitWriter` on one connection of its own.

    A subclass opens (:meth:`_open`), closes at once (:meth:`_release`) and commits on its
    driver's connections and says which errors mean a lost connection. ``discarded`` counts
    connections closed after they failed, ``recycled`` those replaced for their age.
    """

    kind: ClassVar[str] = "sql"

    def __init__(
        self,
        *,
        source: str,
        max_batch: int,
        queue_size: int,
        recycle: float = float("inf"),
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(source=source, max_batch=max_batch, queue_size=queue_size)
        self.connection: Any = None
        #: seconds after which the connection is replaced before the next batch
        self.recycle = recycle
        #: the clock ``recycle`` is measured on (a test may advance its own)
        self.clock = clock
        self._opened_at = 0.0
        self.discarded = 0
        self.recycled = 0

    # -- the driver ---------------------------------------------------------------------

    @abstractmethod
    async def _open(self) -> Any:
        """A new connection, ready for batches (a failure is the caller's)."""

    @abstractmethod
    def _release(self, connection: Any) -> None:
        """Close ``connection`` at once, without a round trip."""

    @abstractmethod
    def _is_closed(self, connection: Any) -> bool: ...

    @abstractmethod
    def is_connection_lost(self, error: BaseException) -> bool: ...

    @abstractmethod
    def commit_unknown(self, error: BaseException) -> Exception:
        """The error of a COMMIT whose connection was lost (the batch may be committed)."""

    async def _commit_connection(self) -> None:
        await self._sql("COMMIT")

    async def _rollback_connection(self) -> None:
        await self._sql("ROLLBACK")

    # -- shared behaviour ---------------------------------------------------------------

    def closed_error(self) -> DataSourceError:
        return closed_error(self.kind, self.source)

    @property
    def expired(self) -> bool:
        """Whether the connection is older than ``recycle`` (replaced before the next batch)."""
        return self.connection is not None and self.clock() - self._opened_at >= self.recycle

    async def _begin(self) -> None:
        # A connection the server dropped while idle fails at once; nothing of the batch has
        # run yet, so one fresh connection is worth a try before failing the batch.
        for attempt in range(2):
            await self._connect()
            try:
                await self._sql(self.begin_sql)
                return
            except Exception as error:
                if attempt or not self.is_connection_lost(error):
                    raise
                self._drop(counted=True)

    async def _end(self) -> None:
        try:
            await self._commit_connection()
        except Exception as error:
            if self.is_connection_lost(error):
                raise self.commit_unknown(error) from error
            raise

    async def _abort(self, error: BaseException) -> None:
        connection = self.connection
        if connection is None:
            return
        if self._is_closed(connection) or self.is_connection_lost(error):
            self._drop(counted=True)
            return
        try:
            await self._rollback_connection()
        except Exception:
            self._drop(counted=True)  # a connection that cannot roll back is not reused

    async def _connect(self) -> Any:
        """The writer's connection: a closed one replaced (counted), one past its age closed
        politely and replaced (between batches: only ``_begin`` calls this)."""
        if self.connection is not None and self._is_closed(self.connection):
            self._drop(counted=True)
        elif self.expired:
            await self._close_connection()
            self.recycled += 1
        if self.connection is None:
            self.connection = await self._open()
            self._opened_at = self.clock()
        return self.connection

    def _drop(self, *, counted: bool) -> None:
        """Close the writer's connection at once and forget it."""
        connection, self.connection = self.connection, None
        if connection is None:
            return
        self._release(connection)
        if counted:
            self.discarded += 1


class ServerSource(SqlSource):
    """A :class:`~wf78_sql.source.SqlSource` whose writer is a :class:`ConnectionWriter`:
    its counters (``discarded``, ``recycled``, ``fallbacks`` and the subclass's
    ``counted``) add up across writers."""

    counted: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        self._counts = dict.fromkeys(("discarded", "recycled", "fallbacks", *self.counted), 0)

    @property
    def discarded(self) -> int:
        """Writer connections closed (not used again) after they failed."""
        return self._count("discarded")

    @property
    def fallbacks(self) -> int:
        """Groups of identical INSERTs applied one by one because some row failed."""
        return self._count("fallbacks")

    def _count(self, name: str) -> int:
        writer = self._writer
        return self._counts[name] + (getattr(writer, name, 0) if writer is not None else 0)

    def _retire_writer(self) -> GroupCommitWriter | None:
        writer = super()._retire_writer()
        if writer is not None:
            for name in self._counts:
                self._counts[name] += getattr(writer, name, 0)
        return writer
