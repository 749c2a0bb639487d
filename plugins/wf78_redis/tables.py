"""Declared tables stored as Redis hashes: key names, typed encoding, and script arguments.

On a table without an owner column a row is the hash ``{prefix}:{table}:row:{id}`` (the
table name inside braces, a Redis Cluster hash tag) holding one field per non-null column,
``id`` included, and the set ``{prefix}:{table}:all`` indexes every id.

On a table with an owner column (``cid`` or ``uid``) each owner has its own ids: a row is
identified by (owner, id), two owners' rows with one id are two rows, and the row is the hash
``{prefix}:{table}:row:{n}:{id}:{owner}``, ``n`` being the id's length in bytes (so any id
and owner, ``:`` included, name one row; a row written without an owner has ``''``). The
sorted set ``{prefix}:{table}:rows`` holds every row's ``{n}:{id}:{owner}``, in which the rows
of one id are one lexicographic range; the set ``{prefix}:{table}:owner:{value}`` holds the
ids of each owner. A ``where`` with the owner and ids reaches each row by its key; one with
ids but no owner matches every owner's row of those ids, as SQL's ``WHERE id IN (...)`` on a
table keyed by (owner, id) does (so a Redis table or mirror answers as a SQL one, and the
relay of an outbox entry that names its row by id alone still applies), each id one range of
the sorted set. The hash keeps the plain ``id``: rows come back, and sort, by it.

``{prefix}:{table}:idem:{key}`` marks a write with a caller's idempotency key. Every column
name is checked against the declared schema before anything reaches Redis; the scripts
(:mod:`wf78_redis.scripts`) keep a row and its index entries together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec

from wf78_core.plugin import ColumnType, InvalidOperation, TableSchema, snowflake_id

from .pipeline import Arg

__all__ = ["RedisTable"]

_JSON_ENCODER = msgspec.json.Encoder()
_JSON_DECODER = msgspec.json.Decoder()


def _decode_json(raw: bytes) -> Any:
    return _JSON_DECODER.decode(raw)


_DECODERS: dict[ColumnType, Callable[[bytes], Any]] = {
    "text": bytes.decode,
    "int": int,
    "float": float,
    "bool": lambda raw: raw == b"1",
    "json": _decode_json,
    "datetime": bytes.decode,  # ISO strings, as the SQL adapters return them
}


class RedisTable:
    """Builds the keys and script arguments of one declared table; refuses undeclared names."""

    def __init__(self, schema: TableSchema, prefix: str, source: str) -> None:
        self.schema = schema
        self.source = source
        base = f"{prefix}:{{{schema.name}}}"
        self.owner = schema.owner if schema.owner in schema.columns else None
        # The index of every row, the scripts' KEYS[1]: a set of ids, or on an owned table a
        # sorted set of (owner, id) members, under a name of its own (an older wf78's set
        # of ids there is never taken for it).
        self.index_key = f"{base}:all" if self.owner is None else f"{base}:rows"
        self.row_prefix = f"{base}:row:"
        self.owner_prefix = f"{base}:owner:"
        # Idempotency markers of the table's writes with a caller's key (same hash tag).
        self.marker_prefix = f"{base}:idem:"

    def invalid(self, message: str) -> InvalidOperation:
        return InvalidOperation(message, data_source=self.source)

    def column(self, name: Any, field: str) -> str:
        """``name`` when it is a declared column, or InvalidOperation naming field and value."""
        if not isinstance(name, str) or name not in self.schema.columns:
            raise self.invalid(f"unknown column {name!r} in {field} of table {self.schema.name!r}")
        return name

    def encode(self, column: str, value: Any, field: str) -> str | bytes:
        """``value`` as stored in ``column``; equal values always encode to equal strings."""
        kind = self.schema.columns[column]
        where = f"{field}.{column} of table {self.schema.name!r}"
        if kind == "json":
            try:
                return _JSON_ENCODER.encode(value)
            except (msgspec.EncodeError, TypeError) as error:
                raise self.invalid(f"{where} is not JSON-encodable: {error}") from error
        if isinstance(value, bool):
            if kind == "bool":
                return "1" if value else "0"
            raise self.invalid(f"{where} must be {kind}, got {value!r}")
        try:
            if kind == "text" and isinstance(value, str | int | float):
                return str(value)
            if kind == "int" and isinstance(value, int | str):
                return str(int(value))
            if kind == "float" and isinstance(value, int | float | str):
                return repr(float(value))
            if kind == "bool" and value in (0, 1):
                return str(int(value))
            if kind == "datetime" and isinstance(value, datetime):
                return value.isoformat()
            if kind == "datetime" and isinstance(value, str):
                return datetime.fromisoformat(value).isoformat()
        except ValueError as error:
            raise self.invalid(f"{where} is not a valid {kind}: {value!r}") from error
        raise self.invalid(f"{where} must be {kind}, got {type(value).__name__} {value!r}")

    def decode(self, flat: Sequence[bytes]) -> dict[str, Any]:
        """An HGETALL reply as a row of every declared column (absent fields are None)."""
        row: dict[str, Any] = dict.fromkeys(self.schema.columns)
        columns = self.schema.columns
        for index in range(0, len(flat) - 1, 2):
            name = flat[index].decode()
            kind = columns.get(name)
            if kind is None:
                continue  # a field of a column no longer declared
            raw = flat[index + 1]
            try:
                row[name] = _DECODERS[kind](raw)
            except (ValueError, msgspec.DecodeError):
                row[name] = raw.decode(errors="replace")  # written by someone else: as is
        return row

    def write_args(
        self, rows: Sequence[Any], mode: Literal["insert", "ignore", "upsert"], field: str
    ) -> tuple[list[Arg], list[str]]:
        """Arguments of the ``write_rows`` script for ``rows`` and the ids they get
        (``ignore``: an insert that skips the rows already stored). On an owned table a row
        is its owner's (the owner column's value, none without one) and id."""
        args: list[Arg] = [
            self.row_prefix,
            self.owner_prefix,
            self.owner or "",
            mode,
            len(rows),
        ]
        ids: list[str] = []
        for index, row in enumerate(rows):
            where = field if field == "values" else f"{field}[{index}]"
            if not isinstance(row, Mapping):
                raise self.invalid(f"{where} of table {self.schema.name!r} must be an object")
            for name in row:
                self.column(name, where)
            raw_id = row.get("id")
            if raw_id is None:
                if mode == "upsert":
                    raise self.invalid(f"upsert needs {where}.id (table {self.schema.name!r})")
                raw_id = snowflake_id()
            row_id = self.encode("id", raw_id, where) if "id" in self.schema.columns else raw_id
            if not isinstance(row_id, str) or not row_id:
                raise self.invalid(f"{where}.id must be a non-empty string, got {raw_id!r}")
            pairs: list[Arg] = []
            absent: list[Arg] = []
            owner: Arg = ""
            for name, value in row.items():
                if name == "id":
                    continue
                if value is None:
                    absent.append(name)
                else:
                    encoded = self.encode(name, value, where)
                    pairs += [name, encoded]
                    if name == self.owner:
                        owner = encoded
            # A new row simply lacks its null columns; an upsert must clear them.
            if mode != "upsert":
                absent = []
            args += [row_id, owner, len(pairs) // 2, *pairs, len(absent), *absent]
            ids.append(row_id)
        return args, ids

    def match_args(
        self,
        action: Literal["get", "count", "update", "delete"],
        where: Mapping[str, Any] | None,
        values: Mapping[str, Any] | None = None,
    ) -> list[Arg] | None:
        """Arguments of the ``match_rows`` script, or None when ``where`` can match nothing.

        Equality filters are ANDed: a list means any of its values, None means absent.
        Rows are found by their keys (ids, with the owners on an owned table), else through
        the ids (every owner's rows of each), else the owner index, else the index of every
        row.
        """
        update = self._update_args(values) if action == "update" else []
        filters = self._filters(where)
        if filters is None:
            return None
        found = dict(filters)
        owners = self._owner_values(found)
        source, candidates = "all", []
        if found.get("id") and owners:
            source = "keys"
            candidates = [
                arg for row_id in found["id"] for owner in owners for arg in (row_id, owner)
            ]
        elif found.get("id"):
            source, candidates = "ids", found["id"]
        elif owners:
            source, candidates = "owners", owners
        args: list[Arg] = [
            self.row_prefix,
            self.owner_prefix,
            self.owner or "",
            action,
            source,
            len(candidates),
            *candidates,
            *_filter_args(filters),
        ]
        return args + update

    def update_many_args(
        self, rows: Sequence[Any], where: Mapping[str, Any] | None
    ) -> list[Arg] | None:
        """Arguments of the ``update_rows`` script: the owners whose rows of each id are
        updated (none: every owner's), the filters every row must pass (the owner), then each
        row's id and the columns it sets. None when the filters can match nothing."""
        name = self.schema.name
        if where and "id" in where:
            raise self.invalid(
                f"update_many takes the ids from its rows, not from where (table {name!r})"
            )
        filters = self._filters(where)
        if filters is None:
            return None
        owners = self._owner_values(dict(filters))
        args: list[Arg] = [
            self.row_prefix,
            self.owner_prefix,
            self.owner or "",
            len(owners),
            *owners,
            *_filter_args(filters),
            len(rows),
        ]
        seen: set[str | bytes] = set()
        for index, row in enumerate(rows):
            field = f"rows[{index}]"
            if not isinstance(row, Mapping):
                raise self.invalid(f"{field} of table {name!r} must be an object")
            if row.get("id") is None:
                raise self.invalid(f"{field} needs an id (table {name!r})")
            row_id = self.encode("id", row["id"], field)
            if row_id in seen:
                raise self.invalid(f"{field}: id {row['id']!r} appears twice (table {name!r})")
            seen.add(row_id)
            changes = {column: value for column, value in row.items() if column != "id"}
            if not changes:
                raise self.invalid(f"{field} sets no column besides id (table {name!r})")
            args += [row_id, *self._update_args(changes, field)]
        return args

    def require_key(self, action: str, where: Mapping[str, Any] | None) -> None:
        """Writes find their rows through the id or the owner index, never by a full scan."""
        keys = ["id"] if self.owner is None else ["id", self.owner]
        if not where or all(where.get(key) is None for key in keys):
            raise self.invalid(
                f"{action} needs {' or '.join(keys)} in where (table {self.schema.name!r}), "
                f"got {where!r}"
            )

    def check_columns(self, columns: Sequence[Any] | None) -> list[str] | None:
        if columns is None:
            return None
        return [self.column(name, "columns") for name in columns]

    def parse_order(self, order: Sequence[Any] | None) -> list[tuple[str, bool]]:
        """``col``, ``col asc``, ``col desc`` or ``-col`` as (column, descending) pairs."""
        parsed: list[tuple[str, bool]] = []
        for entry in order or ():
            if not isinstance(entry, str):
                raise self.invalid(f"bad order entry {entry!r} of table {self.schema.name!r}")
            if entry.startswith("-"):
                parsed.append((self.column(entry[1:], "order"), True))
                continue
            parts = entry.split()
            direction = parts[1].lower() if len(parts) == 2 else "asc"
            if not parts or len(parts) > 2 or direction not in ("asc", "desc"):
                raise self.invalid(
                    f"bad order entry {entry!r} in order of table {self.schema.name!r} "
                    "(expected 'col', 'col asc', 'col desc' or '-col')"
                )
            parsed.append((self.column(parts[0], "order"), direction == "desc"))
        return parsed

    def shape(
        self,
        replies: Sequence[Sequence[bytes]],
        *,
        columns: list[str] | None,
        order: list[tuple[str, bool]],
        limit: int | None,
        offset: int,
    ) -> list[dict[str, Any]]:
        """Decoded rows, ordered (by id when nothing else decides), paged and projected."""
        rows = [self.decode(flat) for flat in replies]
        # Snowflake ids are decimal strings: shorter ones are older. Two owners' rows of one
        # id (read without the owner) follow their owners.
        owner = self.owner
        if owner is None:
            rows.sort(key=lambda row: (len(row["id"] or ""), row["id"] or ""))
        else:
            rows.sort(
                key=lambda row: (len(row["id"] or ""), row["id"] or "", str(row[owner] or ""))
            )
        for column, descending in reversed(order):
            rows.sort(key=self._sort_key(column), reverse=descending)
        end = None if limit is None else offset + limit
        rows = rows[offset:end]
        if columns is not None:
            rows = [{name: row[name] for name in columns} for row in rows]
        return rows

    def _sort_key(self, column: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
        # NULLs first, as SQL sorts them; JSON values compare as their encoded text.
        if self.schema.columns[column] == "json":
            return lambda row: (row[column] is not None, _JSON_ENCODER.encode(row[column]))
        return lambda row: (row[column] is not None, row[column])

    def _owner_values(self, found: Mapping[str, list[Arg]]) -> list[Arg]:
        """The owner values a ``where`` (as filters) accepts, each once; none without them."""
        if self.owner is None:
            return []
        return list(dict.fromkeys(found.get(self.owner) or ()))

    def _filters(self, where: Mapping[str, Any] | None) -> list[tuple[str, list[Arg]]] | None:
        """``where`` as (column, accepted encoded values) pairs, no values meaning the column
        must be absent; None when a filter can match nothing (an empty list)."""
        filters: list[tuple[str, list[Arg]]] = []
        for name, wanted in (where or {}).items():
            column = self.column(name, "where")
            if wanted is None:
                filters.append((column, []))
                continue
            options = wanted if isinstance(wanted, list | tuple) else [wanted]
            # As in SQL, IN (...) never matches NULL.
            encoded: list[Arg] = [
                self.encode(column, item, "where") for item in options if item is not None
            ]
            if not encoded:
                return None
            filters.append((column, encoded))
        return filters

    def _update_args(self, values: Mapping[str, Any] | None, field: str = "values") -> list[Arg]:
        if not values:
            raise self.invalid(f"update needs non-empty values (table {self.schema.name!r})")
        pairs: list[Arg] = []
        absent: list[Arg] = []
        for name, value in values.items():
            column = self.column(name, field)
            if column == "id":
                raise self.invalid(f"update cannot change values.id (table {self.schema.name!r})")
            if value is None:
                absent.append(column)
            else:
                pairs += [column, self.encode(column, value, field)]
        return [len(pairs) // 2, *pairs, len(absent), *absent]


def _filter_args(filters: list[tuple[str, list[Arg]]]) -> list[Arg]:
    """Filters as the scripts read them: f, then per filter its column, k and k values."""
    args: list[Arg] = [len(filters)]
    for column, accepted in filters:
        args += [column, len(accepted), *accepted]
    return args
