"""Schema-checked SQL: identifiers come only from the declared table, values are always bound."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import msgspec

from wf78_core.plugin import InvalidOperation, TableSchema, snowflake_id

from .ddl import key_columns
from .dialect import Dialect
from .values import check_fits, convert, text_limits

__all__ = [
    "Params",
    "Route",
    "Statement",
    "TableSql",
    "first_keyword",
    "is_read",
    "raw_params",
    "route",
]

Params = Sequence[Any] | Mapping[str, Any]
# Where raw SQL goes: a reader, the group-commit writer, or a connection of its own.
Route = Literal["read", "write", "alone"]


_JSON_DECODER = msgspec.json.Decoder()
# Whitespace and comments before the first keyword of raw SQL.
_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_KEYWORD = re.compile(r"[A-Za-z]+")
_WRITE_WORD = re.compile(r"\b(?:INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)
# SELECT texts and INSERT shapes kept per table at most (a few per table in practice).
_SELECT_CACHE = _SHAPE_CACHE = 256


class Statement(NamedTuple):
    sql: str
    params: list[Any]


def first_keyword(sql: str) -> str:
    """The first SQL keyword of ``sql``, upper-cased, skipping comments ("" if none)."""
    leading = _LEADING.match(sql)
    start = leading.end() if leading else 0
    keyword = _KEYWORD.match(sql, start)
    return keyword.group(0).upper() if keyword else ""


def is_read(sql: str, dialect: Dialect) -> bool:
    """Whether raw SQL can go to a reader; when unsure it says no, and the writer serves it."""
    keyword = first_keyword(sql)
    if keyword == "WITH":
        return _WRITE_WORD.search(sql) is None
    if keyword not in dialect.read_keywords:
        return False
    if keyword == "PRAGMA":  # SQLite: a PRAGMA that sets something writes
        return "=" not in sql and "(" not in sql
    return True


def route(sql: str, dialect: Dialect, source: str) -> Route:
    """Where raw SQL runs; InvalidOperation for SQL that would break the writer's transaction."""
    keyword = first_keyword(sql)
    reason = dialect.refused_keywords.get(keyword)
    if reason is not None:
        raise InvalidOperation(
            f"execute cannot run {keyword!r} in sql: {reason}", data_source=source
        )
    if is_read(sql, dialect):
        return "read"
    if dialect.batch_keywords is None or keyword in dialect.batch_keywords:
        return "write"
    return "alone"


def raw_params(params: list[Any] | dict[str, Any] | None, dialect: Dialect) -> Params:
    """Parameters of raw SQL, with datetimes as the typed columns store them."""
    if params is None:
        return []
    if isinstance(params, dict):
        return {key: dialect.plain(value) for key, value in params.items()}
    return [dialect.plain(value) for value in params]


class TableSql:
    """Builds statements for one declared table and refuses every identifier it does not declare."""

    def __init__(
        self,
        schema: TableSchema,
        source: str,
        dialect: Dialect,
        limits: Mapping[str, tuple[int | None, int | None]] | None = None,
    ) -> None:
        self.schema = schema
        self.source = source
        self.dialect = dialect
        self.quoted = dialect.quote(schema.name)
        self.has_id = "id" in schema.columns
        self._quoted = {name: dialect.quote(name) for name in schema.columns}
        self._insert_sql: dict[tuple[object, ...], str] = {}  # by column names and mode
        self._insert_shapes: dict[tuple[object, ...], tuple[tuple[str, ...], str]] = {}
        # SELECT text and column names by statement shape (see select)
        self._select_sql: dict[tuple[object, ...], tuple[str, tuple[str, ...]]] = {}
        # The same for the commonest shape, a get by one key's value: by the key's name.
        self._select_one: dict[str, tuple[str, tuple[str, ...]]] = {}
        # Columns whose stored value decode converts; rows of other columns are copied as is.
        self._converted = {
            name: kind
            for name, kind in schema.columns.items()
            if kind in ("bool", "json", "datetime")
        }
        # Per text column that could be too short for a value: (characters a value may have
        # unchecked, most characters, most bytes).
        self._limits = text_limits(schema, dialect, limits)

    def renamed(
        self, name: str, limits: Mapping[str, tuple[int | None, int | None]] | None = None
    ) -> TableSql:
        """A builder for the physical table ``name`` with this table's columns (a shard);
        ``limits`` are its columns' own (characters, bytes), when read from the database."""
        return TableSql(
            msgspec.structs.replace(self.schema, name=name), self.source, self.dialect, limits
        )

    def invalid(self, message: str) -> InvalidOperation:
        return InvalidOperation(message, data_source=self.source)

    def column(self, name: Any, field: str) -> str:
        """The quoted column ``name``, or InvalidOperation naming ``field`` and the value."""
        if not isinstance(name, str) or name not in self.schema.columns:
            raise self.invalid(f"unknown column {name!r} in {field} of table {self.schema.name!r}")
        return self._quoted[name]

    def encode(self, column: str, value: Any, field: str) -> Any:
        """``value`` as stored in ``column`` and compared with it: bound by the column's
        declared type, so a filter means the same on every dialect (MySQL compares a text
        column with a number as numbers: ``'0123' = 123``). Numbers for text columns become
        their text, numeric text for int and float columns a number; bools become 0/1, json
        text, datetimes per dialect. A text too long for its column is refused, never cut."""
        if value is None:
            return None
        kind = self.schema.columns[column]
        cls = type(value)
        # The hot path: values of the column's own type need no conversion.
        if kind == "text":
            if cls is str:
                limit = self._limits.get(column)
                if limit is not None and len(value) > limit[0]:
                    check_fits(value, self._where(field, column), limit, self.source)
                return value
        elif kind == "int":
            if cls is int:
                return value
        elif kind == "float":
            if cls is float or cls is int:
                return value
        return convert(
            kind,
            value,
            self._where(field, column),
            self.dialect,
            self._limits.get(column),
            self.source,
        )

    def _where(self, field: str, column: str) -> str:
        return f"{field}.{column} of table {self.schema.name!r}"

    def decode_rows(
        self, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> list[dict[str, Any]]:
        """:meth:`decode` of every row; plain copies when no column needs converting.

        Every get takes this, so decode's steps are written out here, and ``zip`` is not
        strict: ``columns`` and the rows come from one statement (strict costs a third)."""
        converted = self._converted
        if converted.keys().isdisjoint(columns):
            return [dict(zip(columns, row, strict=False)) for row in rows]
        decoded = []
        for row in rows:
            out = dict(zip(columns, row, strict=False))
            for name, kind in converted.items():
                value = out.get(name)
                if value is not None:
                    out[name] = self._convert(kind, value)
            decoded.append(out)
        return decoded

    def decode(self, columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
        """A result row as a dict: bools and JSON decoded, datetimes as ISO strings."""
        out = dict(zip(columns, row, strict=True))
        for name, kind in self._converted.items():  # the few columns that need it
            value = out.get(name)
            if value is not None:
                out[name] = self._convert(kind, value)
        return out

    def _convert(self, kind: str, value: Any) -> Any:
        """A stored non-null value of a bool, json or datetime column as decode returns it."""
        if kind == "bool":
            return bool(value)
        if kind == "json":
            try:
                return _JSON_DECODER.decode(value)
            except msgspec.DecodeError:
                return value  # rows written by raw SQL may hold plain text: return it as is
        return self.dialect.load_datetime(value)

    def insert(
        self, values: Mapping[str, Any], field: str = "values", *, ignore: bool = False
    ) -> tuple[Statement, str | None]:
        """An INSERT of one row and the row's id (generated when missing); ``ignore``
        skips the row when its key exists."""
        if not isinstance(values, Mapping):
            raise self.invalid(
                f"{field} must be a mapping of column to value (table {self.schema.name!r}), "
                f"got {type(values).__name__}"
            )
        row = dict(values)
        # The column names and SQL of rows with these keys, when such a row was checked before.
        shape = (tuple(row), ignore)
        known = self._insert_shapes.get(shape)
        if known is None:
            for name in row:
                self.column(name, field)
        row_id: str | None = None
        if self.has_id:
            if row.get("id") is None:
                row["id"] = snowflake_id()
            row_id = str(row["id"])
        if known is not None:
            encode = self.encode
            return Statement(
                known[1], [encode(name, row[name], field) for name in known[0]]
            ), row_id
        # Schema order makes rows with the same columns share one SQL text (and one batch).
        names = [name for name in self.schema.columns if name in row]
        params = [self.encode(name, row[name], field) for name in names]
        if not names:
            return Statement(self.dialect.empty_insert.format(table=self.quoted), []), row_id
        key = (*names, ignore)
        sql = self._insert_sql.get(key)
        if sql is None:
            head = self.dialect.insert_ignore if ignore else "INSERT INTO"
            sql = self._insert_sql[key] = (
                f"{head} {self.quoted} ({self._names(names)}) "
                f"VALUES ({self.dialect.placeholders(len(names))})"
            )
        if len(self._insert_shapes) >= _SHAPE_CACHE:
            self._insert_shapes.clear()
        self._insert_shapes[shape] = (tuple(names), sql)
        return Statement(sql, params), row_id

    def upsert(self, values: Mapping[str, Any]) -> tuple[Statement, str]:
        """An INSERT that updates the given columns when the row's key (its id, with the
        owner on an owned table) exists; ``values`` needs an id."""
        if not self.has_id:
            raise self.invalid(f"upsert needs an id column, table {self.schema.name!r} has none")
        if values.get("id") is None:
            raise self.invalid(f"upsert needs values.id (table {self.schema.name!r})")
        statement, row_id = self.insert(values)
        dialect = self.dialect
        updates = [
            f"{self._quoted[name]} = {dialect.upsert_value.format(column=self._quoted[name])}"
            for name in self.schema.columns
            if name in values and name != "id"
        ]
        key = ", ".join(self._quoted[name] for name in key_columns(self.schema))
        if updates:
            action = dialect.upsert.format(
                key=key, id=self._quoted["id"], assignments=", ".join(updates)
            )
        else:
            action = dialect.upsert_nothing.format(key=key, id=self._quoted["id"])
        return Statement(f"{statement.sql} {action}", statement.params), str(row_id)

    def select(
        self,
        *,
        where: Mapping[str, Any] | None,
        columns: Sequence[str] | None,
        order: Sequence[str] | None,
        limit: int | None,
        offset: int,
    ) -> tuple[Statement, list[str]]:
        """A SELECT and the names of the columns it returns.

        The text is built once per shape (columns, where names with the kind of each value,
        order, whether there is a LIMIT) and kept: a shape seen before was checked then,
        so only the values are encoded again.
        """
        if where and len(where) == 1 and not columns and not order and limit is None:
            # A get by one key, the commonest shape: kept by the key's name.
            ((name, value),) = where.items()
            if not offset and value is not None and not isinstance(value, (list, tuple)):
                known_one = self._select_one.get(name)
                if known_one is not None:
                    try:
                        param = self.encode(name, value, "where")
                    except Exception:  # reported by the full build below, as always
                        pass
                    else:
                        return Statement(known_one[0], [param]), list(known_one[1])
        # One pass over where gives its shape and, should the shape be known, its values. A
        # failure here (an unknown column, an unhashable name...) is left to the full build,
        # which reports the first problem in the order the checks always run.
        shape: list[tuple[Any, int]] = []
        params: list[Any] = []
        try:
            if where:
                encode = self.encode
                for name, value in where.items():
                    if value is None:
                        shape.append((name, -1))
                    elif isinstance(value, list | tuple):
                        shape.append((name, len(value)))
                        params.extend([encode(name, item, "where") for item in value])
                    else:
                        shape.append((name, -2))
                        params.append(encode(name, value, "where"))
            paged = limit is not None or bool(offset)
            key = (
                tuple(columns) if columns else None,
                tuple(shape),
                tuple(order) if order else None,
                paged,
            )
            cached = self._select_sql.get(key)
        except Exception:
            cached = key = None
        if cached is None:
            statement, names = self._select(where, columns, order, limit, offset)
            if key is not None:
                if len(self._select_sql) >= _SELECT_CACHE:
                    self._select_sql.clear()
                entry = self._select_sql[key] = (statement.sql, tuple(names))
                if key[0] is None and key[2] is None and not paged and len(shape) == 1:
                    if shape[0][1] == -2 and isinstance(shape[0][0], str):
                        self._select_one[shape[0][0]] = entry
            return statement, names
        sql, known = cached
        if paged:
            params += [self.dialect.no_limit if limit is None else limit, offset]
        return Statement(sql, params), list(known)

    def _select(
        self,
        where: Mapping[str, Any] | None,
        columns: Sequence[str] | None,
        order: Sequence[str] | None,
        limit: int | None,
        offset: int,
    ) -> tuple[Statement, list[str]]:
        names = list(columns) if columns else list(self.schema.columns)
        select_list = ", ".join(self.column(name, "columns") for name in names)
        sql = f"SELECT {select_list} FROM {self.quoted}"
        clause, params = self.where(where or {})
        if clause:
            sql += f" WHERE {clause}"
        if order:
            sql += " ORDER BY " + ", ".join(self._order(entry) for entry in order)
        if limit is not None or offset:
            mark = self.dialect.placeholder
            sql += f" LIMIT {mark} OFFSET {mark}"
            params += [self.dialect.no_limit if limit is None else limit, offset]
        return Statement(sql, params), names

    def count(self, where: Mapping[str, Any] | None) -> Statement:
        """``SELECT COUNT(*)`` of the rows matching ``where`` (every row without one)."""
        sql = f"SELECT COUNT(*) FROM {self.quoted}"
        clause, params = self.where(where or {})
        if clause:
            sql += f" WHERE {clause}"
        return Statement(sql, params)

    def update_many(
        self, rows: Sequence[Mapping[str, Any]] | None, where: Mapping[str, Any] | None
    ) -> Statement:
        """One UPDATE of many rows by id: ``col = CASE id WHEN ? THEN ? ... ELSE col END``.

        Each row names its ``id`` and the columns to set; ``where`` adds filters (the
        owner), so a row that does not match them is left alone.
        """
        name = self.schema.name
        if not self.has_id:
            raise self.invalid(f"update_many needs an id column, table {name!r} has none")
        if not rows:
            raise self.invalid(f"update_many needs non-empty rows (table {name!r})")
        if where and "id" in where:
            raise self.invalid(
                f"update_many takes the ids from its rows, not from where (table {name!r})"
            )
        ids: list[Any] = []
        seen: set[Any] = set()
        by_column: dict[str, list[tuple[Any, Any]]] = {}
        for index, row in enumerate(rows):
            field = f"rows[{index}]"
            if not isinstance(row, Mapping):
                raise self.invalid(f"{field} must be a mapping (table {name!r}), got {row!r}")
            if row.get("id") is None:
                raise self.invalid(f"{field} needs an id (table {name!r})")
            for column in row:
                self.column(column, field)
            key = self.encode("id", row["id"], field)
            if key in seen:
                raise self.invalid(f"{field}: id {row['id']!r} appears twice (table {name!r})")
            seen.add(key)
            ids.append(key)
            for column, value in row.items():
                if column != "id":
                    by_column.setdefault(column, []).append(
                        (key, self.encode(column, value, field))
                    )
        if not by_column:
            raise self.invalid(f"update_many rows set no column besides id (table {name!r})")
        mark = self.dialect.placeholder
        quoted_id = self._quoted["id"]
        assignments: list[str] = []
        params: list[Any] = []
        for column in self.schema.columns:  # schema order: one SQL text per column set
            pairs = by_column.get(column)
            if not pairs:
                continue
            quoted = self._quoted[column]
            cases = " ".join(f"WHEN {mark} THEN {mark}" for _ in pairs)
            assignments.append(f"{quoted} = CASE {quoted_id} {cases} ELSE {quoted} END")
            for key, value in pairs:
                params += [key, value]
        sql = (
            f"UPDATE {self.quoted} SET {', '.join(assignments)} "
            f"WHERE {quoted_id} IN ({self.dialect.placeholders(len(ids))})"
        )
        params += ids
        clause, where_params = self.where(where or {})
        if clause:
            sql += f" AND {clause}"
        return Statement(sql, params + where_params)

    def update(
        self, values: Mapping[str, Any] | None, where: Mapping[str, Any] | None
    ) -> Statement:
        if not values:
            raise self.invalid(f"update needs non-empty values (table {self.schema.name!r})")
        self._require_where("update", where)
        mark = self.dialect.placeholder
        assignments = [f"{self.column(name, 'values')} = {mark}" for name in values]
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
        mark = self.dialect.placeholder
        for name, value in where.items():
            column = self.column(name, "where")
            if value is None:
                parts.append(f"{column} IS NULL")
            elif isinstance(value, list | tuple):
                if not value:
                    parts.append("1 = 0")  # IN () matches nothing, and not every dialect parses it
                    continue
                parts.append(f"{column} IN ({self.dialect.placeholders(len(value))})")
                params.extend(self.encode(name, item, "where") for item in value)
            else:
                parts.append(f"{column} = {mark}")
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
        return ", ".join(self._quoted[name] for name in names)
