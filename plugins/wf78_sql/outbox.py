"""The transactional outbox of a SQL source: mirror entries stored in the write's transaction.

A write of a table with mirrors carries ``op.outbox`` entries; they become rows of the outbox
table (``id`` ascending in commit order, ``created``, ``mirror``, ``payload`` JSON) inserted in
the same savepoint as the write (:attr:`wf78_sql.writer.Write.then`), so the row and its
entries commit or roll back together. The relay (:mod:`wf78_core.data.mirrors`) reads them with
``outbox_fetch``, applies them to the mirrors and deletes them with ``outbox_ack``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from wf78_core.plugin import InvalidOperation, Operation

from .dialect import Dialect
from .statements import Params

__all__ = [
    "DEFAULT_OUTBOX_TABLE",
    "OUTBOX_ACTIONS",
    "OUTBOX_WRITES",
    "OutboxSql",
    "check_outbox_table",
]

DEFAULT_OUTBOX_TABLE = "wf78_outbox"
# Actions of the outbox itself; the relay sends them to a named source, never through selection.
OUTBOX_ACTIONS = frozenset({"outbox_fetch", "outbox_ack", "outbox_count"})
# The actions that may carry outbox entries.
OUTBOX_WRITES = frozenset(
    {"add", "add_many", "upsert", "update", "update_many", "delete", "delete_many"}
)
# Entries returned by one outbox_fetch unless op.limit says otherwise.
DEFAULT_FETCH = 100
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()
# Room for the "_mirror" suffix of its index within 64 characters.
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,56}")


def check_outbox_table(name: str) -> None:
    """ValueError unless ``name`` can be the outbox table (an option's ``__post_init__``)."""
    if not _TABLE_NAME.fullmatch(name):
        raise ValueError(
            f"outbox_table must be a plain identifier of at most 57 characters, got {name!r}"
        )


class OutboxSql:
    """The statements of one outbox table in one dialect."""

    def __init__(self, dialect: Dialect, table: str, source: str) -> None:
        self.source = source
        quoted = dialect.quote(table)
        mark = dialect.placeholder
        self.create = [
            sql.format(table=quoted, index=dialect.quote(f"{table}_mirror"))
            for sql in dialect.outbox_table
        ]
        self.insert = (
            f"INSERT INTO {quoted} (created, mirror, payload) VALUES ({mark}, {mark}, {mark})"
        )
        self._select = f"SELECT id, payload FROM {quoted}"
        self._count = f"SELECT COUNT(*) FROM {quoted}"
        self._delete = f"DELETE FROM {quoted} WHERE id IN "
        self._mark = mark
        self._mirror = f" WHERE mirror = {mark}"

    def rows(self, entries: list[dict[str, Any]]) -> list[Params]:
        """The INSERT parameters of ``entries``; InvalidOperation for one JSON cannot carry."""
        now = time.time()
        rows: list[Params] = []
        for index, entry in enumerate(entries):
            mirror = entry.get("mirror") if isinstance(entry, Mapping) else None
            if not isinstance(mirror, str) or not mirror:
                raise InvalidOperation(
                    f"outbox[{index}] needs a mirror name, got {entry!r}", data_source=self.source
                )
            try:
                payload = _ENCODER.encode(entry).decode()
            except (msgspec.EncodeError, TypeError) as error:
                raise InvalidOperation(
                    f"outbox[{index}] cannot be encoded as JSON: {error}", data_source=self.source
                ) from None
            rows.append([now, mirror, payload])
        return rows

    def fetch(self, op: Operation) -> tuple[str, list[Any]]:
        """The oldest entries (of ``op.where["mirror"]`` when given), at most ``op.limit``."""
        sql, params = self._filtered(self._select, op)
        sql += f" ORDER BY id LIMIT {self._mark}"
        return sql, [*params, DEFAULT_FETCH if op.limit is None else op.limit]

    def count(self, op: Operation) -> tuple[str, list[Any]]:
        return self._filtered(self._count, op)

    def delete(self, op: Operation) -> tuple[str, list[Any]]:
        """``DELETE`` of the entry ids in ``op.value``; ("", []) when there are none."""
        ids = op.value
        if not isinstance(ids, list) or not all(
            isinstance(value, int) and not isinstance(value, bool) for value in ids
        ):
            raise InvalidOperation(
                f"outbox_ack needs value = a list of entry ids, got {ids!r}",
                data_source=self.source,
            )
        if not ids:
            return "", []
        return f"{self._delete}({', '.join([self._mark] * len(ids))})", list(ids)

    def decode(self, row: Any) -> dict[str, Any]:
        """A fetched row as ``{"id", "payload"}``; a payload that is no JSON object is None."""
        try:
            payload = _DECODER.decode(row[1])
        except msgspec.DecodeError:
            payload = None
        return {"id": int(row[0]), "payload": payload if isinstance(payload, dict) else None}

    def _filtered(self, sql: str, op: Operation) -> tuple[str, list[Any]]:
        where = op.where or {}
        if set(where) - {"mirror"}:
            raise InvalidOperation(
                f"{op.action} filters by mirror only, got where = {where!r}",
                data_source=self.source,
            )
        if "mirror" not in where:
            return sql, []
        return sql + self._mirror, [str(where["mirror"])]
