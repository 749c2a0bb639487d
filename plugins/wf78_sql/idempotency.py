"""Callers' idempotency keys of a SQL source, recorded in the write's own transaction.

A write carrying a caller's key (:func:`wf78_core.idempotency.explicit_key`) inserts
``(key, result JSON, created)`` into the idempotency table (``wf78_idempotency``, created on
first use) right after its own statements, in the same savepoint
(:attr:`wf78_sql.writer.Write.record`). A replay of the key fails that insert, or its own
insert, with a duplicate key: its savepoint rolls back, nothing of it stays, and the source
answers with the recorded result instead. Generated keys (``~...``) are never recorded:
inserts rely on their row ids (see :meth:`wf78_sql.SqlSource.execute`).

The result is stored with the request's fingerprint (:func:`wf78_core.plugin.record`), so
a replay asking for another request is refused (:func:`wf78_core.plugin.check_replay`).
Keys older than ``[engine] idempotency_ttl`` are purged by maintenance (the
``purge_idempotency`` action).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from wf78_core.plugin import InvalidOperation, recall, record

from .dialect import Dialect
from .statements import Params

__all__ = ["DEFAULT_IDEMPOTENCY_TABLE", "IdempotencySql"]

DEFAULT_IDEMPOTENCY_TABLE = "wf78_idempotency"


class IdempotencySql:
    """The statements of one idempotency table in one dialect."""

    def __init__(self, dialect: Dialect, table: str, source: str) -> None:
        if not dialect.idempotency_table:
            raise InvalidOperation(
                f"source {source!r} ({dialect.name}) cannot record idempotency keys",
                data_source=source,
            )
        quoted = dialect.quote(table)
        mark = dialect.placeholder
        key, result, created = (dialect.quote(name) for name in ("key", "result", "created"))
        self.create = [
            sql.format(table=quoted, index=dialect.quote(f"{table}_created"))
            for sql in dialect.idempotency_table
        ]
        self.insert = (
            f"INSERT INTO {quoted} ({key}, {result}, {created}) VALUES ({mark}, {mark}, {mark})"
        )
        self.select = f"SELECT {result} FROM {quoted} WHERE {key} = {mark}"
        self.purge = f"DELETE FROM {quoted} WHERE {created} < {mark}"

    def record(
        self, key: str, fingerprint: str | None = None
    ) -> Callable[[Any], tuple[str, Params]]:
        """What :attr:`Write.record <wf78_sql.writer.Write.record>` holds for ``key``: the
        INSERT of the write's result (with its request's ``fingerprint``), built once the
        result is known."""

        def insert(result: Any) -> tuple[str, Params]:
            # A result JSON cannot carry fails the write: its replay could not answer.
            return self.insert, [key, record(result, fingerprint).decode(), time.time()]

        return insert

    @staticmethod
    def decode(stored: Any) -> tuple[Any, str | None]:
        """A recorded result as the write first returned it (JSON: tuples come back as
        lists) and its request's fingerprint (None when it was recorded without one)."""
        if isinstance(stored, bytes | bytearray | memoryview):
            stored = bytes(stored)
        return recall(stored)
