"""Shared building blocks of wf78's SQL adapters (a library, not a plugin: it registers nothing).

- :class:`Dialect`: what differs between SQL dialects (quoting, placeholders, upserts, types).
- :class:`TableSql`: schema-checked statements for one declared table, its values bound by
  each column's declared type and refused when the column cannot hold them (``values``).
- :func:`create_table_sql`, :func:`add_columns_sql`: a declared table's schema statements.
- :class:`GroupCommitWriter` and :class:`Write`: many callers' writes in one transaction.
- :class:`SqlSource`: the actions, their checks and result shapes, less the driver.
- :class:`OutboxSql`: the transactional outbox that feeds a table's mirrors.
- :class:`IdempotencySql`: callers' idempotency keys, recorded in the write's transaction.
- :class:`ServerOptions`, :class:`ConnectionWriter`, :class:`ServerSource`: what the
  client-server adapters (MySQL, PostgreSQL) share: options, a writer on a connection of its
  own (replaced when lost or too old), counters (``server``).
"""

from __future__ import annotations

from .ddl import add_columns_sql, create_table_sql
from .dialect import Dialect
from .errors import closed_error
from .idempotency import DEFAULT_IDEMPOTENCY_TABLE, IdempotencySql
from .options import convert_options
from .outbox import DEFAULT_OUTBOX_TABLE, OUTBOX_ACTIONS, OutboxSql, check_outbox_table
from .server import ConnectionWriter, ServerOptions, ServerSource
from .source import SQL_ACTIONS, SqlSource
from .statements import (
    Params,
    Route,
    Statement,
    TableSql,
    first_keyword,
    is_read,
    raw_params,
    route,
)
from .writer import GroupCommitWriter, Write, WriteFailed

__all__ = [
    "DEFAULT_IDEMPOTENCY_TABLE",
    "DEFAULT_OUTBOX_TABLE",
    "OUTBOX_ACTIONS",
    "SQL_ACTIONS",
    "ConnectionWriter",
    "Dialect",
    "GroupCommitWriter",
    "IdempotencySql",
    "OutboxSql",
    "Params",
    "Route",
    "ServerOptions",
    "ServerSource",
    "SqlSource",
    "Statement",
    "TableSql",
    "Write",
    "WriteFailed",
    "add_columns_sql",
    "check_outbox_table",
    "closed_error",
    "convert_options",
    "create_table_sql",
    "first_keyword",
    "is_read",
    "raw_params",
    "route",
]
