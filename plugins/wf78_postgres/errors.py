"""asyncpg errors mapped to :class:`~wf78_core.plugin.DataSourceError` by their SQLSTATE."""

from __future__ import annotations

import asyncpg

from wf78_core.plugin import DataSourceError, InvalidOperation, OperationError

__all__ = ["CommitUnknown", "is_connection_lost", "map_error", "sqlstate"]

# Trying again can help: serialization failure, deadlock, lock not available, too many
# connections, a query cancelled (statement_timeout), the server shutting down or starting.
RETRYABLE = frozenset({"40001", "40P01", "55P03", "53300", "57014", "57P01", "57P02", "57P03"})
# The connection is gone: class 08 (connection exception) and the server's shutdowns.
_LOST = frozenset({"57P01", "57P02", "57P03"})
DUPLICATE_KEY = "23505"
# The caller's input, not the source's fault: an unknown column (raw SQL, or a physical table
# lacking a declared column) and values their column cannot hold (class 22, data exceptions).
UNKNOWN_COLUMN = "42703"
REFUSED_VALUE = {
    "22000": "is not of its column's type",  # asyncpg's own check of a parameter
    "22001": "is too long for the column",
    "22003": "is out of the column's range",
    "22P02": "is not a value of the column's type",
    "22007": "is not a valid datetime",
    "22008": "is out of the datetime range",
    "22021": "is not valid UTF-8",
    "22P05": "holds a character the database cannot store",
}


class CommitUnknown(Exception):
    """The connection was lost during COMMIT: the batch may or may not have been committed."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def sqlstate(error: BaseException) -> str | None:
    code = getattr(error, "sqlstate", None)
    return code if isinstance(code, str) else None


def is_connection_lost(error: BaseException) -> bool:
    """Whether the connection that raised ``error`` is unusable. asyncpg's
    InternalClientError ("cannot switch to state ...; another operation is in progress")
    is a connection whose protocol an earlier failure (the server killed mid-query) left
    in the middle of an operation: it never works again."""
    if isinstance(
        error,
        CommitUnknown
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.InternalClientError
        | ConnectionError
        | OSError,
    ) and not isinstance(error, asyncpg.DataError):
        return True
    code = sqlstate(error)
    return code is not None and (code.startswith("08") or code in _LOST)


def map_error(
    error: BaseException, source: str, *, retryable: bool | None = None
) -> OperationError:
    """A DataSourceError for a driver error; ``retryable`` overrides the guess from its
    SQLSTATE. An unknown column or a value its column refused is an InvalidOperation."""
    code = sqlstate(error)
    message = str(error).strip() or type(error).__name__
    if code == UNKNOWN_COLUMN or (code is not None and code.startswith("22")):
        if code == UNKNOWN_COLUMN:  # "column "x" does not exist": names no value
            text = f"unknown column on postgres source {source!r}: {message}"
        else:  # never the server's message: it quotes the value
            column = getattr(error, "column_name", None)
            where = f"a value for column {column!r}" if column else "a value of the write"
            text = (
                f"{where} {REFUSED_VALUE.get(code, 'was refused by its column')} "
                f"(postgres source {source!r}, SQLSTATE {code})"
            )
        refused = InvalidOperation(text, data_source=source)
        refused.__cause__ = error
        return refused
    guess = code in RETRYABLE
    if isinstance(error, CommitUnknown):
        guess = True
        text = (
            f"postgres source {source!r} lost its connection during COMMIT, so the batch may "
            f"or may not have been committed: {message}"
        )
    elif is_connection_lost(error):
        guess = True
        text = f"postgres source {source!r} lost its connection: {type(error).__name__}: {message}"
    elif code == DUPLICATE_KEY:
        text = f"duplicate key on postgres source {source!r}: {message}"
    else:
        shown = f"({code}) {message}" if code else f"{type(error).__name__}: {message}"
        text = f"postgres source {source!r} failed: {shown}"
    mapped = DataSourceError(
        text,
        data_source=source,
        retryable=guess if retryable is None else retryable,
        conflict=code == DUPLICATE_KEY,
    )
    mapped.__cause__ = error
    return mapped
