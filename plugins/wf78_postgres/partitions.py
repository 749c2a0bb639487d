"""Sharded tables as native declarative partitions.

A shard ``<table>_YYYYMMDD`` (or ``_YYYYMM``) that maintenance creates becomes a partition of
the partitioned table ``<table>``, ``PARTITION BY RANGE`` on its hidden ``wf78_day`` column
(the first day of the partition's period, which each partition fills in as its default).
The engine addresses a shard by its name, as it does every other SQL source's: a write to the
shard of "now" lands in that partition directly, a by-id write goes to the partition of the
id's embedded time (:func:`wf78_core.data.sharding.write_by_id`) and a range read reads only
the partitions of its range. Each partition has its own primary key (the owner and the id).

Maintenance creates partitions ahead and, after ``retention_days``, detaches each expired one
and drops it. A shard whose suffix is no day or month, or a table that exists already as a
plain table, keeps a table of its own, as on the other SQL sources.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from wf78_core.plugin import Operation, TableSchema
from wf78_sql import Dialect, Params
from wf78_sql.ddl import column_sql, key_columns

__all__ = ["DAY_COLUMN", "Partitions", "period"]

DAY_COLUMN = "wf78_day"
Read = Callable[[str, Params], Awaitable[tuple[list[str], Sequence[Sequence[Any]]]]]
Alone = Callable[[str, Params], Awaitable[Any]]

_KIND = (
    "SELECT c.relkind::text FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = current_schema() AND c.relname = $1"
)
_PARENT = (
    "SELECT p.relname FROM pg_catalog.pg_inherits i "
    "JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid "
    "JOIN pg_catalog.pg_class p ON p.oid = i.inhparent "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = current_schema() AND c.relname = $1"
)


def period(suffix: str) -> tuple[date, date] | None:
    """The first day of the shard ``suffix`` and of the next one; None for no day or month."""
    try:
        if len(suffix) == 8:
            start = datetime.strptime(suffix, "%Y%m%d").date()
            return start, start + timedelta(days=1)
        if len(suffix) == 6:
            start = datetime.strptime(suffix, "%Y%m").date()
            return start, date(start.year + start.month // 12, start.month % 12 + 1, 1)
    except ValueError:
        return None
    return None


class Partitions:
    """Creates, drops and migrates the partitions of sharded tables on one source.

    Each method answers None when the shard is no partition (the caller then does what the
    other SQL sources do).
    """

    def __init__(
        self, *, dialect: Dialect, tables: Mapping[str, TableSchema], read: Read, alone: Alone
    ) -> None:
        self.dialect = dialect
        self.tables = tables
        self._read = read
        self._alone = alone

    async def kind(self, name: str) -> str | None:
        """``"p"`` for a partitioned table, ``"r"`` for a plain one, None when absent."""
        _, rows = await self._read(_KIND, [name])
        return str(rows[0][0]) if rows else None

    async def parent(self, name: str) -> str | None:
        """The partitioned table ``name`` is a partition of, or None."""
        _, rows = await self._read(_PARENT, [name])
        return str(rows[0][0]) if rows else None

    async def create(self, op: Operation) -> bool | None:
        """Create the partition of ``op.shard`` (and its partitioned table when missing);
        whether it was created; None when the shard cannot be a partition."""
        assert op.table is not None and op.shard is not None
        bounds = period(op.shard)
        schema = self.tables[op.table]
        name = f"{op.table}_{op.shard}"
        if bounds is None:
            return None
        if await self.kind(name) is not None:
            return False
        parent = await self.kind(op.table)
        if parent == "r":
            return None  # a plain table already: its shards stay tables of their own
        if parent is None:
            await self._alone(self._parent_sql(schema), [])
        try:
            await self._alone(self._partition_sql(schema, name, *bounds), [])
        except Exception:
            if await self.kind(name) is not None:
                return False  # another maintainer created it meanwhile
            raise
        return True

    async def drop(self, op: Operation) -> bool | None:
        """Detach the partition of ``op.shard`` and drop it; whether it existed; None when
        it is no partition."""
        assert op.table is not None and op.shard is not None
        name = f"{op.table}_{op.shard}"
        parent = await self.parent(name)
        if parent is None:
            return None
        quote = self.dialect.quote
        await self._alone(f"ALTER TABLE {quote(parent)} DETACH PARTITION {quote(name)}", [])
        await self._alone(f"DROP TABLE IF EXISTS {quote(name)}", [])
        return True

    def _parent_sql(self, schema: TableSchema) -> str:
        """The partitioned table: the declared columns and the day, no key of its own (a
        partitioned table's key would have to hold the day)."""
        quote = self.dialect.quote
        keys = key_columns(schema)
        columns = [
            column_sql(schema, name, self.dialect)
            + (
                (" NOT NULL DEFAULT ''" if name == schema.owner else " NOT NULL")
                if name in keys
                else ""
            )
            for name in schema.columns
        ]
        columns.append(f"{quote(DAY_COLUMN)} DATE NOT NULL")
        return (
            f"CREATE TABLE IF NOT EXISTS {quote(schema.name)} ({', '.join(columns)}) "
            f"PARTITION BY RANGE ({quote(DAY_COLUMN)})"
        )

    def _partition_sql(self, schema: TableSchema, name: str, start: date, end: date) -> str:
        quote = self.dialect.quote
        parts = [f"{quote(DAY_COLUMN)} WITH OPTIONS DEFAULT '{start.isoformat()}'"]
        keys = key_columns(schema)
        if keys:
            parts.append(f"PRIMARY KEY ({', '.join(quote(key) for key in keys)})")
        return (
            f"CREATE TABLE IF NOT EXISTS {quote(name)} PARTITION OF {quote(schema.name)} "
            f"({', '.join(parts)}) FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
