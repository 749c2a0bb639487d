"""SQLite's group-commit writer: the shared loop (:mod:`wf78_sql.writer`) on one aiosqlite
connection, in ``BEGIN IMMEDIATE`` transactions; identical INSERTs share one ``executemany``."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import aiosqlite

from wf78_core.plugin import DataSourceError
from wf78_sql import GroupCommitWriter as SharedWriter
from wf78_sql import Params, Write

from .errors import closed_error, map_error

__all__ = ["GroupCommitWriter", "Write"]

# ``INSERT ... VALUES (?, ?, ...) [ON CONFLICT ...]``: the part a multi-row INSERT repeats.
_VALUES = re.compile(r"(.*\sVALUES\s*)(\((?:\s*\?\s*,)*\s*\?\s*\))(.*)", re.S | re.I)
# Host parameters one statement may have (SQLITE_MAX_VARIABLE_NUMBER's default).
_MAX_VARIABLES = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999


class GroupCommitWriter(SharedWriter):
    """Owns the writer connection: batches writes while :meth:`run` runs, else one at a time.

    ``transactions`` counts committed transactions, ``writes`` the writes handled.
    """

    # IMMEDIATE takes the write lock up front, so a busy database fails at BEGIN, not midway.
    begin_sql = "BEGIN IMMEDIATE"
    # The connection is opened with isolation_level=None: a statement alone commits itself.
    autocommits = True

    def __init__(
        self, connection: aiosqlite.Connection, *, source: str, max_batch: int, queue_size: int
    ) -> None:
        super().__init__(source=source, max_batch=max_batch, queue_size=queue_size)
        self.connection = connection

    def map_error(self, error: BaseException, *, retryable: bool | None = None) -> DataSourceError:
        return map_error(error, self.source, retryable=retryable)

    def closed_error(self) -> DataSourceError:
        return closed_error(self.source)

    async def _close_connection(self) -> None:
        await self.connection.close()

    async def _sql(self, sql: str) -> None:
        await self.connection.execute_fetchall(sql)

    async def _execute(self, sql: str, params: Params) -> list[dict[str, Any]] | int:
        changes_before = self.connection.total_changes
        async with self.connection.execute(sql, params) as cursor:
            if cursor.description is not None:
                return [dict(row) for row in await cursor.fetchall()]
            # sqlite3 reports -1 for writes it does not parse as DML (WITH ... INSERT).
            changed = cursor.rowcount
            if changed < 0:
                changed = self.connection.total_changes - changes_before
            return changed

    def _one_statement(self, sql: str, rows: list[Params]) -> Callable[[], Awaitable[Any]] | None:
        match = _VALUES.fullmatch(sql)
        if match is None or "?" in match.group(1) or "?" in match.group(3):
            return None
        width = match.group(2).count("?")
        if width * len(rows) > _MAX_VARIABLES or not all(
            isinstance(row, list | tuple) and len(row) == width for row in rows
        ):
            return None
        values = ",".join([match.group(2)] * len(rows))
        flat = [value for row in rows for value in row]
        return partial(self._run, match.group(1) + values + match.group(3), flat)

    async def _run(self, sql: str, params: Params) -> None:
        # One hop to aiosqlite's thread (``execute`` is one, closing its cursor another).
        await self.connection.execute_fetchall(sql, params)

    async def _executemany(self, sql: str, rows: list[Params]) -> int:
        async with self.connection.executemany(sql, rows) as cursor:
            return cursor.rowcount
