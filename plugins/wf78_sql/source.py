"""What every SQL data source does the same way: actions, their checks and result shapes.

A subclass supplies the connections: :meth:`SqlSource._read` for queries and a
:class:`~wf78_sql.writer.GroupCommitWriter` in ``_writer`` for writes.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio
from anyio.abc import TaskStatus

from wf78_core.plugin import (
    DataSourceError,
    InvalidOperation,
    Operation,
    SourceSpec,
    check_replay,
    explicit_key,
    generated_ids,
)

from .ddl import add_columns_sql, create_table_sql
from .dialect import Dialect
from .errors import closed_error
from .idempotency import DEFAULT_IDEMPOTENCY_TABLE, IdempotencySql
from .outbox import DEFAULT_OUTBOX_TABLE, OUTBOX_ACTIONS, OUTBOX_WRITES, OutboxSql
from .statements import Params, TableSql, raw_params, route
from .writer import GroupCommitWriter, Write

__all__ = ["SQL_ACTIONS", "SqlSource"]

SQL_ACTIONS = frozenset(
    {
        "add",
        "add_many",
        "get",
        "count",
        "update",
        "update_many",
        "upsert",
        "delete",
        "delete_many",
        "execute",
        "create_table",
        "drop_table",
        "list_shards",
        "list_columns",
        "add_columns",
        "purge_idempotency",
        "noop",
    }
)
_SHARD = re.compile(r"[0-9]{1,14}")
# Shard statement builders kept at most (a few per sharded table in practice).
_SHARD_CACHE = 1024


class SqlSource(ABC):
    """A :class:`~wf78_core.plugin.DataSource` over SQL, less the driver.

    ``transactions`` and ``writes`` count committed write transactions and writes handled.
    """

    kind: ClassVar[str]
    dialect: ClassVar[Dialect]
    actions: frozenset[str] = SQL_ACTIONS
    # The relay's actions on the transactional outbox (wf78_sql.outbox), kept apart from
    # ``actions`` so that selection never routes to them.
    outbox_actions: frozenset[str] = OUTBOX_ACTIONS
    # The outbox table's name; subclasses take it from their options.
    outbox_table: str = DEFAULT_OUTBOX_TABLE
    # Where callers' idempotency keys are recorded (wf78_sql.idempotency).
    idempotency_table: str = DEFAULT_IDEMPOTENCY_TABLE

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self._tables = {
            name: TableSql(schema, spec.name, self.dialect) for name, schema in spec.tables.items()
        }
        self._shards: dict[tuple[str, str], TableSql] = {}
        # The (characters, bytes) each text column of a physical table holds, by table name,
        # as last read from the database (list_columns); otherwise the dialect's types hold.
        self._capacity: dict[str, dict[str, tuple[int | None, int | None]]] = {}
        self._writer: GroupCommitWriter | None = None
        self._transactions = 0
        self._writes = 0
        self._outbox: OutboxSql | None = None  # set once its table exists
        self._keys: IdempotencySql | None = None  # likewise
        if not self.dialect.outbox_table:
            self.outbox_actions = frozenset()

    # -- the driver ---------------------------------------------------------------------

    @abstractmethod
    async def _read(self, sql: str, params: Params) -> tuple[list[str], Sequence[Sequence[Any]]]:
        """Run a query on a reader: column names and rows; DataSourceError when it fails."""

    async def _run_alone(self, sql: str, params: Params) -> Any:
        """Raw SQL that may not join a batch; by default every write may."""
        return await self._write(Write([(sql, [params])], counts=True))

    def _raw_statement(
        self, sql: str, params: list[Any] | dict[str, Any] | None
    ) -> tuple[str, Params]:
        return sql, raw_params(params, self.dialect)

    # -- shared behaviour -----------------------------------------------------------------

    @property
    def transactions(self) -> int:
        """Committed write transactions since the source was built."""
        return self._transactions + (self._writer.transactions if self._writer else 0)

    @property
    def keeps_key_table(self) -> bool:
        """Whether the idempotency-key table was needed (opened) since the source was built."""
        return self._keys is not None

    @property
    def writes(self) -> int:
        """Writes handled (committed or failed) since the source was built."""
        return self._writes + (self._writer.writes if self._writer else 0)

    def closed_error(self, state: str = "closing") -> DataSourceError:
        return closed_error(self.kind, self.name, state)

    def _retire_writer(self) -> GroupCommitWriter | None:
        """Take the writer out of service, keeping its counts."""
        writer, self._writer = self._writer, None
        if writer is not None:
            self._transactions += writer.transactions
            self._writes += writer.writes
        return writer

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The group-commit writer loop, until cancelled; writes still queued then fail
        with a retryable DataSourceError."""
        if self._writer is None:
            raise self.closed_error("not open")
        await self._writer.run(task_status=task_status)

    async def health(self) -> None:
        """A ``SELECT 1`` on a reader; a retryable DataSourceError when it fails."""
        try:
            await self._read("SELECT 1", [])
        except DataSourceError as error:
            raise DataSourceError(
                f"{self.kind} source {self.name!r} is unhealthy: {error}",
                data_source=self.name,
                retryable=True,
            ) from error

    async def execute(self, op: Operation) -> Any:
        """Perform one operation.

        Returns: ``add`` the row id, ``add_many`` the ids (with ``conflict = "ignore"``
        the rows inserted), ``get`` a list of dicts, ``count`` an int,
        ``update``/``update_many``/``delete``/``delete_many`` the rows changed, ``upsert``
        the id, ``create_table``/``drop_table`` whether the table was created/dropped,
        ``list_shards`` the shard suffixes of ``op.table`` in ascending order,
        ``list_columns`` the physical table's column names ([] when it does not exist),
        ``add_columns`` the declared columns it lacked and now has (additive only), ``execute``
        rows for a query else the rows changed, ``purge_idempotency`` the callers' keys
        recorded before ``op.value`` (seconds since the epoch) and now forgotten, ``noop``
        None. ``op.shard`` addresses the physical table ``<table>_<shard>`` (same
        columns). Raises InvalidOperation for a bad operation, DataSourceError when the
        database refuses.

        Idempotency (:mod:`wf78_core.idempotency`): a write with a caller's key records it
        with its result (and its request's fingerprint) in the write's transaction, and a
        replay answers that result, or IdempotencyConflict when it asks for another. An
        insert whose ids were generated for it and meets a duplicate key on them ran before
        (its commit's answer was lost): it succeeds with those ids. Other writes are
        idempotent as they are; raw SQL only with a caller's key.
        """
        if op.action not in self.actions:
            if op.action in self.outbox_actions:
                return await self._outbox_action(op)
            raise InvalidOperation(
                f"action {op.action!r} is not supported by {self.kind} source {self.name!r} "
                f"(expected one of {sorted(self.actions)})",
                data_source=self.name,
            )
        if op.outbox and op.action not in OUTBOX_WRITES:
            raise InvalidOperation(
                f"{op.action} cannot carry outbox entries (only {sorted(OUTBOX_WRITES)} do)",
                data_source=self.name,
            )
        if op.action == "noop":
            return None
        if op.action == "execute":
            return await self._execute_sql(op)
        if op.action == "purge_idempotency":
            return await self.purge_idempotency_keys(_purge_before(op, self.name))
        table = self._table(op)
        match op.action:
            case "list_shards":
                return await self._list_shards(table)
            case "list_columns":
                return await self._list_columns(op, table)
            case "add_columns":
                return await self._add_columns(op, table)
            case "create_table":
                return await self._create_table(table)
            case "drop_table":
                return await self._drop_table(table, op)
            case "count":
                statement = table.count(op.where)
                _, rows = await self._read(statement.sql, statement.params)
                return int(rows[0][0])
            case "get":
                statement, names = table.select(
                    where=op.where,
                    columns=op.columns,
                    order=op.order,
                    limit=op.limit,
                    offset=op.offset,
                )
                _, rows = await self._read(statement.sql, statement.params)
                return table.decode_rows(names, rows)
            case "add":
                if op.values is None:
                    raise table.invalid(f"add needs values (table {op.table!r})")
                statement, row_id = table.insert(op.values)
                write = Write([(statement.sql, [statement.params])], value=row_id, groupable=True)
            case "add_many":
                write = self._add_many(table, op)
                if not write.value:
                    return 0 if write.counts else []
            case "upsert":
                statement, row_id = table.upsert(op.values or {})
                write = Write([(statement.sql, [statement.params])], value=row_id, groupable=True)
            case "update":
                statement = table.update(op.values, op.where)
                write = Write([(statement.sql, [statement.params])], counts=True)
            case "update_many":
                if op.rows is not None and not op.rows:
                    return 0
                statement = table.update_many(op.rows, op.where)
                write = Write([(statement.sql, [statement.params])], counts=True)
            case _:
                statement = table.delete(op.where, many=op.action == "delete_many")
                write = Write([(statement.sql, [statement.params])], counts=True)
        if op.outbox:
            outbox = await self._open_outbox()
            write.then = (outbox.insert, outbox.rows(op.outbox))
        if op.idempotency_key is None:
            return await self._write(write)
        return await self._write_once(op, write, table)

    async def _write_once(self, op: Operation, write: Write, table: TableSql | None) -> Any:
        """``write`` of an operation with an idempotency key, which may have run before."""
        key = explicit_key(op)
        if key is not None:
            write.record = (await self._open_keys()).record(key, op.idempotency_fingerprint)
        try:
            return await self._write(write)
        except DataSourceError as error:
            if not error.conflict:
                raise
            if key is not None:
                found, result, recorded = await self._recorded(key)
                if found:
                    # Rolled back with its savepoint: a replay of another request wrote nothing.
                    check_replay(recorded, op, data_source=self.name)
                    return result
            ids = generated_ids(op)
            if table is not None and ids and await self._stored(table, ids):
                return write.value
            raise

    async def _open_keys(self) -> IdempotencySql:
        """The idempotency table's statements, creating it on first use (as the outbox's)."""
        if self._keys is None:
            keys = IdempotencySql(self.dialect, self.idempotency_table, self.name)
            await self._ddl(keys.create)
            self._keys = keys
        return self._keys

    async def _recorded(self, key: str) -> tuple[bool, Any, str | None]:
        """Whether ``key`` is recorded, the result recorded with it and its request's
        fingerprint."""
        keys = await self._open_keys()
        _, rows = await self._read(keys.select, [key])
        if not rows:
            return False, None, None
        result, recorded = keys.decode(rows[0][0])
        return True, result, recorded

    async def _stored(self, table: TableSql, ids: list[str]) -> bool:
        """Whether every row of ``ids`` is stored (after the write that met them committed)."""
        statement = table.count({"id": ids})
        _, rows = await self._read(statement.sql, statement.params)
        return int(rows[0][0]) == len(set(ids))

    async def purge_idempotency_keys(self, before: float) -> int:
        """Forget callers' keys recorded before ``before`` (seconds since the epoch); how
        many were forgotten. A replay of a forgotten key runs as a new write. The action
        ``purge_idempotency`` (``value`` = ``before``) does it through the engine."""
        if self._keys is None and self.idempotency_table not in await self._table_names(
            self.idempotency_table
        ):
            return 0  # no key was ever recorded here: no table to make just to purge it
        keys = await self._open_keys()
        return int(await self._write(Write([(keys.purge, [[before]])], counts=True)))

    async def _open_outbox(self) -> OutboxSql:
        """The outbox's statements, creating its table on first use (concurrent first uses
        may each send the idempotent CREATE ... IF NOT EXISTS)."""
        if self._outbox is None:
            outbox = OutboxSql(self.dialect, self.outbox_table, self.name)
            await self._ddl(outbox.create)
            self._outbox = outbox
        return self._outbox

    async def _outbox_action(self, op: Operation) -> Any:
        """``outbox_fetch`` -> ``[{"id", "payload"}]`` oldest first, ``outbox_ack`` (ids in
        ``op.value``) -> entries deleted, ``outbox_count`` -> entries waiting; ``where`` may
        name one ``mirror``."""
        outbox = await self._open_outbox()
        if op.action == "outbox_ack":
            sql, params = outbox.delete(op)
            if not sql:
                return 0
            return await self._write(Write([(sql, [params])], counts=True))
        if op.action == "outbox_count":
            sql, params = outbox.count(op)
            _, rows = await self._read(sql, params)
            return int(rows[0][0])
        sql, params = outbox.fetch(op)
        _, rows = await self._read(sql, params)
        return [outbox.decode(row) for row in rows]

    def _table(self, op: Operation) -> TableSql:
        """The statement builder of ``op.table``, or of its shard ``op.shard``."""
        if op.table is None:
            raise InvalidOperation(f"{op.action} needs a table", data_source=self.name)
        table = self._tables.get(op.table)
        if table is None:
            raise InvalidOperation(
                f"unknown table {op.table!r} ({self.kind} source {self.name!r} has "
                f"{sorted(self._tables)})",
                data_source=self.name,
            )
        if op.shard is None or op.action == "list_shards":
            return table
        # Checked again here: the shard becomes part of an identifier.
        if not isinstance(op.shard, str) or not _SHARD.fullmatch(op.shard):
            raise InvalidOperation(
                f"shard must be 1 to 14 digits, got {op.shard!r}", data_source=self.name
            )
        key = (op.table, op.shard)
        shard = self._shards.get(key)
        if shard is None:
            if len(self._shards) >= _SHARD_CACHE:
                self._shards.clear()
            name = f"{op.table}_{op.shard}"
            shard = self._shards[key] = table.renamed(name, self._capacity.get(name))
        return shard

    async def _table_names(self, prefix: str) -> set[str]:
        """Names of the database's tables that start with ``prefix``."""
        pattern = prefix.replace("!", "!!").replace("_", "!_").replace("%", "!%") + "%"
        _, rows = await self._read(self.dialect.list_tables, [pattern])
        return {str(row[0]) for row in rows}

    async def _list_shards(self, table: TableSql) -> list[str]:
        name = table.schema.name
        shape = re.compile(re.escape(name) + r"_([0-9]{1,14})")
        found = (shape.fullmatch(other) for other in await self._table_names(name + "_"))
        return sorted(match.group(1) for match in found if match is not None)

    async def _list_columns(self, op: Operation, table: TableSql) -> list[str]:
        """The physical table's column names in order ([] when it does not exist); what
        its text columns hold is kept, so that a value they cannot hold is refused."""
        name = table.schema.name
        _, rows = await self._read(self.dialect.list_columns, [name])
        names = [str(row[0]) for row in rows]
        if not names:
            return names
        capacity = {str(row[0]): (_size(row[1]), _size(row[2])) for row in rows}
        if capacity != self._capacity.get(name):
            self._capacity[name] = capacity
            assert op.table is not None
            if op.shard is None:
                self._tables[op.table] = table.renamed(name, capacity)
            else:
                self._shards[(op.table, op.shard)] = table.renamed(name, capacity)
        return names

    async def _add_columns(self, op: Operation, table: TableSql) -> list[str]:
        """Add the declared columns the physical table lacks (never drops or changes one);
        the names of those added, in declared order ([] when the table does not exist)."""
        existing = set(await self._list_columns(op, table))
        if not existing:
            return []
        missing = [name for name in table.schema.columns if name not in existing]
        if missing:
            await self._ddl(add_columns_sql(table.schema, missing, self.dialect))
            await self._list_columns(op, self._table(op))
        return missing

    async def _create_table(self, table: TableSql) -> bool:
        """Create the table (and its owner index) unless it exists; whether it was created."""
        if table.schema.name in await self._table_names(table.schema.name):
            return False
        await self._ddl(create_table_sql(table.schema, self.dialect))
        self._capacity.pop(table.schema.name, None)  # the declared types hold now
        return True

    async def _drop_table(self, table: TableSql, op: Operation) -> bool:
        if op.shard is None:
            raise table.invalid(
                f"drop_table drops shards only: it needs op.shard (table {op.table!r})"
            )
        if table.schema.name not in await self._table_names(table.schema.name):
            return False
        await self._ddl([f"DROP TABLE IF EXISTS {table.quoted}"])
        self._capacity.pop(table.schema.name, None)
        if op.table is not None:
            self._shards.pop((op.table, op.shard), None)
        return True

    async def _ddl(self, statements: list[str]) -> None:
        """Schema statements: alone where they commit implicitly, else as one write."""
        batched: list[tuple[str, list[Params]]] = []
        for sql in statements:
            if route(sql, self.dialect, self.name) == "alone":
                await self._run_alone(sql, [])
            else:
                batched.append((sql, [[]]))
        if batched:
            await self._write(Write(batched, counts=True))

    def _add_many(self, table: TableSql, op: Operation) -> Write:
        """One write holding every row, so the caller's rows land all together or not at all."""
        if op.rows is None:
            raise table.invalid(f"add_many needs rows (table {op.table!r})")
        statements: dict[str, list[Params]] = {}
        ids: list[str | None] = []
        ignore = op.conflict == "ignore"
        for index, row in enumerate(op.rows):
            statement, row_id = table.insert(row, field=f"rows[{index}]", ignore=ignore)
            statements.setdefault(statement.sql, []).append(statement.params)
            ids.append(row_id)
        if ignore:
            # Which rows were skipped is unknown: the result is how many were inserted.
            return Write(list(statements.items()), value=ids, counts=True)
        return Write(list(statements.items()), value=ids, groupable=True)

    async def _execute_sql(self, op: Operation) -> Any:
        if not op.sql:
            raise InvalidOperation("execute needs sql", data_source=self.name)
        where = route(op.sql, self.dialect, self.name)
        sql, params = self._raw_statement(op.sql, op.params)
        if where == "read":
            names, rows = await self._read(sql, params)
            return [dict(zip(names, row, strict=True)) for row in rows]
        if where == "alone":
            return await self._run_alone(sql, params)
        write = Write([(sql, [params])], counts=True)
        if explicit_key(op) is None:
            return await self._write(write)
        return await self._write_once(op, write, None)

    async def _write(self, write: Write) -> Any:
        writer = self._writer
        if writer is None:
            raise self.closed_error("not open")
        return await writer.submit(write)


def _size(value: Any) -> int | None:
    """A column's limit as the database reports it (None: no limit applies)."""
    return None if value is None else int(value)


def _purge_before(op: Operation, source: str) -> float:
    """The cut-off of a ``purge_idempotency`` operation: ``value``, seconds since the epoch."""
    before = op.value
    if isinstance(before, bool) or not isinstance(before, int | float):
        raise InvalidOperation(
            "purge_idempotency needs value = the time (seconds since the epoch) before which "
            f"keys are forgotten, got {before!r}",
            data_source=source,
        )
    return float(before)
