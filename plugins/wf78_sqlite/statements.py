"""Schema-checked SQL: identifiers come only from the declared table, values are always bound."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from wf78_core.config import ColumnType
from wf78_core.datasource import TableSchema
from wf78_core.errors import InvalidOperation
from wf78_core.ids import snowflake_id

__all__ = [
    "Params",
    "Statement",
    "TableSql",
    "create_table_sql",
    "first_keyword",
    "is_read",
    "quote",
    "raw_params",
]

Params = Sequence[Any] | Mapping[str, Any]

_SQL_TYPES: dict[ColumnType, str] = {
    "text": "TEXT",
    "int": "INTEGER",
    "float": "REAL",
    "bool": "INTEGER",
    "json": "TEXT",
    "datetime": "TEXT",
}
_BINDABLE = (str, int, float, bytes)
_JSON_ENCODER = msgspec.json.Encoder()
_JSON_DECODER = msgspec.json.Decoder()
# Whitespace and comments before the first keyword of raw SQL.
_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_KEYWORD = re.compile(r"[A-Za-z]+")
_WRITE_WORD = re.compile(r"\b(?:INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


class Statement(NamedTuple):
    sql: str
    params: list[Any]


def quote(identifier: str) -> str:
    """A double-quoted SQL identifier (callers pass only names checked against the schema)."""
    return '"' + identifier.replace('"', '""') + '"'


def create_table_sql(table: TableSchema) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` for a declared table, plus an index on its owner column."""
    columns = [
        f"{quote(name)} TEXT PRIMARY KEY" if name == "id" else f"{quote(name)} {_SQL_TYPES[kind]}"
        for name, kind in table.columns.items()
    ]
    statements = [f"CREATE TABLE IF NOT EXISTS {quote(table.name)} ({', '.join(columns)})"]
    if table.owner and table.owner in table.columns:
        # Owner-scoped reads (the koa78 cid/uid filter) hit this column on every request.
        index = quote(f"{table.name}_{table.owner}")
        statements.append(
            f"CREATE INDEX IF NOT EXISTS {index} ON {quote(table.name)} ({quote(table.owner)})"
        )
    return statements


def first_keyword(sql: str) -> str:
    """The first SQL keyword of ``sql``, upper-cased, skipping comments ("" if none)."""
    leading = _LEADING.match(sql)
    start = leading.end() if leading else 0
    keyword = _KEYWORD.match(sql, start)
    return keyword.group(0).upper() if keyword else ""


def is_read(sql: str) -> bool:
    """Whether raw SQL can go to a reader; when unsure it says no, and the writer serves it."""
    keyword = first_keyword(sql)
    if keyword in ("SELECT", "VALUES", "EXPLAIN"):
        return True
    if keyword == "WITH":
        return _WRITE_WORD.search(sql) is None
    if keyword == "PRAGMA":
        return "=" not in sql and "(" not in sql
    return False


def raw_params(params: list[Any] | dict[str, Any] | None) -> Params:
    """Parameters of raw SQL, with datetimes as ISO strings like the typed columns store them."""
    if params is None:
        return []
    if isinstance(params, dict):
        return {key: _plain(value) for key, value in params.items()}
    return [_plain(value) for value in params]


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


class TableSql:
    """Builds statements for one declared table and refuses every identifier it does not declare."""

    def __init__(self, schema: TableSchema, source: str) -> None:
        self.schema = schema
        self.source = source
        self.quoted = quote(schema.name)
        self.has_id = "id" in schema.columns

    def invalid(self, message: str) -> InvalidOperation:
        return InvalidOperation(message, data_source=self.source)

    def column(self, name: Any, field: str) -> str:
        """The quoted column ``name``, or InvalidOperation naming ``field`` and the value."""
        if not isinstance(name, str) or name not in self.schema.columns:
            raise self.invalid(f"unknown column {name!r} in {field} of table {self.schema.name!r}")
        return quote(name)

    def encode(self, column: str, value: Any, field: str) -> Any:
        """``value`` as stored in ``column``: bools as 0/1, json as text, datetimes as ISO."""
        if value is None:
            return None
        kind = self.schema.columns[column]
        where = f"{field}.{column} of table {self.schema.name!r}"
        if kind == "json":
            try:
                return _JSON_ENCODER.encode(value).decode()
            except (msgspec.EncodeError, TypeError) as error:
                raise self.invalid(f"{where} is not JSON-encodable: {error}") from error
        if kind == "bool":
            if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
                return int(value)
            raise self.invalid(f"{where} must be a bool, got {value!r}")
        if kind == "datetime":
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, str):
                try:
                    return datetime.fromisoformat(value).isoformat()
                except ValueError as error:
                    raise self.invalid(f"{where} is not an ISO 8601 datetime: {value!r}") from error
            raise self.invalid(f"{where} must be a datetime or ISO string, got {value!r}")
        if isinstance(value, _BINDABLE):
            return value
        raise self.invalid(f"{where} has unsupported type {type(value).__name__}")

    def decode(self, columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
        """A result row as a dict with bools and JSON decoded (datetimes stay ISO strings)."""
        out: dict[str, Any] = {}
        for name, value in zip(columns, row, strict=True):
            kind = self.schema.columns.get(name)
            if value is not None and kind == "bool":
                value = bool(value)
            elif value is not None and kind == "json":
                try:
                    value = _JSON_DECODER.decode(value)
                except msgspec.DecodeError:
                    pass  # rows written by raw SQL may hold plain text: return it as is
            out[name] = value
        return out

    def insert(
        self, values: Mapping[str, Any], field: str = "values"
    ) -> tuple[Statement, str | None]:
        """An INSERT of one row and the row's id (generated when missing)."""
        row = dict(values)
        for name in row:
            self.column(name, field)
        row_id: str | None = None
        if self.has_id:
            if row.get("id") is None:
                row["id"] = snowflake_id()
            row_id = str(row["id"])
        # Schema order makes rows with the same columns share one SQL text (and one executemany).
        names = [name for name in self.schema.columns if name in row]
        params = [self.encode(name, row[name], field) for name in names]
        if not names:
            return Statement(f"INSERT INTO {self.quoted} DEFAULT VALUES", []), row_id
        placeholders = ", ".join(["?"] * len(names))
        sql = f"INSERT INTO {self.quoted} ({self._names(names)}) VALUES ({placeholders})"
        return Statement(sql, params), row_id

    def upsert(self, values: Mapping[str, Any]) -> tuple[Statement, str]:
        """INSERT ... ON CONFLICT(id) DO UPDATE of the given columns; ``values`` must hold an id."""
        if not self.has_id:
            raise self.invalid(f"upsert needs an id column, table {self.schema.name!r} has none")
        if values.get("id") is None:
            raise self.invalid(f"upsert needs values.id (table {self.schema.name!r})")
        statement, row_id = self.insert(values)
        updates = [
            f"{quote(name)} = excluded.{quote(name)}"
            for name in self.schema.columns
            if name in values and name != "id"
        ]
        action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
        sql = f'{statement.sql} ON CONFLICT("id") {action}'
        return Statement(sql, statement.params), str(row_id)

    def select(
        self,
        *,
        where: Mapping[str, Any] | None,
        columns: Sequence[str] | None,
        order: Sequence[str] | None,
        limit: int | None,
        offset: int,
    ) -> tuple[Statement, list[str]]:
        """A SELECT and the names of the columns it returns."""
        names = list(columns) if columns else list(self.schema.columns)
        select_list = ", ".join(self.column(name, "columns") for name in names)
        sql = f"SELECT {select_list} FROM {self.quoted}"
        clause, params = self.where(where or {})
        if clause:
            sql += f" WHERE {clause}"
        if order:
            sql += " ORDER BY " + ", ".join(self._order(entry) for entry in order)
        if limit is not None or offset:
            sql += " LIMIT ? OFFSET ?"
            params += [-1 if limit is None else limit, offset]
        return Statement(sql, params), names

    def update(
        self, values: Mapping[str, Any] | None, where: Mapping[str, Any] | None
    ) -> Statement:
        if not values:
            raise self.invalid(f"update needs non-empty values (table {self.schema.name!r})")
        self._require_where("update", where)
        assignments = [f"{self.column(name, 'values')} = ?" for name in values]
        params = [self.encode(name, value, "values") for name, value in values.items()]
        clause, where_params = self.where(where or {})
        sql = f"UPDATE {self.quoted} SET {', '.join(assignments)} WHERE {clause}"
        return Statement(sql, params + where_params)

    def delete(self, where: Mapping[str, Any] | None, *, many: bool = False) -> Statement:
        self._require_where("delete_many" if many else "delete", where)
        if many and not any(isinstance(value, list | tuple) for value in (where or {}).values()):
            raise self.invalid(
                f"delete_many needs a list value in where (table {self.schema.name!r}), "
                f"got {where!r}"
            )
        clause, params = self.where(where or {})
        return Statement(f"DELETE FROM {self.quoted} WHERE {clause}", params)

    def where(self, where: Mapping[str, Any]) -> tuple[str, list[Any]]:
        """Equality filters ANDed: a list value means IN (...), None means IS NULL."""
        parts: list[str] = []
        params: list[Any] = []
        for name, value in where.items():
            column = self.column(name, "where")
            if value is None:
                parts.append(f"{column} IS NULL")
            elif isinstance(value, list | tuple):
                parts.append(f"{column} IN ({', '.join(['?'] * len(value))})")
                params.extend(self.encode(name, item, "where") for item in value)
            else:
                parts.append(f"{column} = ?")
                params.append(self.encode(name, value, "where"))
        return " AND ".join(parts), params

    def _require_where(self, action: str, where: Mapping[str, Any] | None) -> None:
        if not where:
            raise self.invalid(
                f"{action} needs a non-empty where: refusing to touch every row of table "
                f"{self.schema.name!r}"
            )

    def _order(self, entry: Any) -> str:
        if not isinstance(entry, str):
            raise self.invalid(f"bad order entry {entry!r} of table {self.schema.name!r}")
        if entry.startswith("-"):
            return f"{self.column(entry[1:], 'order')} DESC"
        parts = entry.split()
        if len(parts) == 1:
            return f"{self.column(parts[0], 'order')} ASC"
        if len(parts) == 2:
            direction = parts[1].upper()
            if direction not in ("ASC", "DESC"):
                raise self.invalid(
                    f"bad order direction {parts[1]!r} in order of table {self.schema.name!r} "
                    "(expected asc or desc)"
                )
            return f"{self.column(parts[0], 'order')} {direction}"
        raise self.invalid(
            f"bad order entry {entry!r} in order of table {self.schema.name!r} "
            "(expected 'col', 'col asc', 'col desc' or '-col')"
        )

    def _names(self, names: Iterable[str]) -> str:
        return ", ".join(quote(name) for name in names)
