"""What differs between SQL dialects, as far as the shared statement builder cares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from wf78_core.plugin import ColumnType

__all__ = ["Dialect"]


@dataclass(frozen=True, kw_only=True)
class Dialect:
    """Quoting, placeholders, type names and the few statements each dialect spells its own way.

    Templates are filled with already-quoted identifiers: ``upsert`` with ``{key}`` (the
    row's key columns, comma-separated: the owner and ``id`` on an owned table), ``{id}`` and
    ``{assignments}``, ``upsert_value`` with ``{column}``, ``upsert_nothing`` with ``{key}``
    and ``{id}``, ``empty_insert`` with ``{table}``.
    """

    name: str
    quote_char: str
    placeholder: str
    column_types: Mapping[ColumnType, str]
    # The type of the ``id`` and owner columns: keys that are compared and indexed.
    key_type: str
    upsert: str
    upsert_value: str
    upsert_nothing: str
    empty_insert: str
    # LIMIT that means "every row", for an OFFSET without a LIMIT.
    no_limit: int
    # The head of an INSERT that skips rows whose key exists (add_many, conflict="ignore").
    insert_ignore: str
    # Names of the database's tables LIKE one bound pattern (escape character "!").
    list_tables: str
    # The columns of the table named by one bound parameter, in order: rows of (name, the
    # most characters it holds, the most bytes it holds), the limits NULL where none apply.
    list_columns: str
    # Where the owner column's index is declared: its own statement or inside CREATE TABLE.
    owner_index: Literal["statement", "inline"] = "statement"
    table_options: str = ""
    # First keywords of raw SQL that only read.
    read_keywords: frozenset[str] = frozenset({"SELECT", "VALUES", "EXPLAIN"})
    # First keywords of raw SQL that may join a group-commit batch; None means every write.
    batch_keywords: frozenset[str] | None = None
    # First keywords raw SQL may not start with, and why.
    refused_keywords: Mapping[str, str] = field(default_factory=dict)
    # (characters, bytes) a ``key_type`` column and a ``text`` column hold at most, None
    # for no limit a value could reach: longer values are refused, never cut.
    key_limit: tuple[int, int] | None = None
    text_limit: tuple[int, int] | None = None
    # True: datetime columns hold no zone, so values are stored as naive UTC and read back
    # as UTC; False: they are stored as ISO 8601 text, zone included.
    utc_datetimes: bool = False
    # CREATE statements of the transactional outbox (wf78_sql.outbox), filled with the quoted
    # ``{table}`` and ``{index}`` names; empty means the dialect keeps no outbox.
    outbox_table: tuple[str, ...] = ()
    # CREATE statements of the table recording callers' idempotency keys (wf78_sql.idempotency),
    # filled like ``outbox_table``; empty means the dialect records none.
    idempotency_table: tuple[str, ...] = ()

    def quote(self, identifier: str) -> str:
        """A quoted identifier (callers pass only names checked against the schema)."""
        mark = self.quote_char
        quoted = mark + identifier.replace(mark, mark + mark) + mark
        if self.placeholder == "%s":
            # pyformat drivers read every % of a statement with parameters as a placeholder.
            quoted = quoted.replace("%", "%%")
        return quoted

    def placeholders(self, count: int) -> str:
        return ", ".join([self.placeholder] * count)

    def store_datetime(self, moment: datetime) -> Any:
        """A datetime as the dialect's datetime columns hold it."""
        if not self.utc_datetimes:
            return moment.isoformat()
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        return moment

    def load_datetime(self, value: Any) -> Any:
        """A stored datetime as an ISO 8601 string (text columns already hold one)."""
        if isinstance(value, datetime):
            return (value.replace(tzinfo=UTC) if self.utc_datetimes else value).isoformat()
        return value

    def plain(self, value: Any) -> Any:
        """A raw SQL parameter: datetimes as the datetime columns hold them, the rest as is."""
        return self.store_datetime(value) if isinstance(value, datetime) else value
