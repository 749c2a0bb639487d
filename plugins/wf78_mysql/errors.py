"""aiomysql (PyMySQL) errors mapped to :class:`~wf78_core.plugin.DataSourceError`."""

from __future__ import annotations

import re

import aiomysql

from wf78_core.plugin import DataSourceError, InvalidOperation, OperationError

__all__ = [
    "CommitUnknown",
    "aborts_transaction",
    "error_code",
    "is_connection_lost",
    "map_error",
]

# Client and server codes of a connection that is gone: 2003 cannot connect, 2006 server has
# gone away, 2013 lost during query, 2055 lost (extended), 1053 server shutdown, 1927
# MariaDB's "connection was killed", 4031 MySQL's idle-timeout disconnect.
LOST_CONNECTION = frozenset({2003, 2006, 2013, 2055, 1053, 1927, 4031})
DUPLICATE_KEY = frozenset({1062, 1586})
# Trying again can help: deadlock, lock wait timeout, too many connections (1040 and per
# user 1203), a query interrupted by KILL QUERY (1317), MariaDB's max_statement_time (1969).
RETRYABLE = LOST_CONNECTION | {1213, 1205, 1040, 1203, 1317, 1969}
# These end the whole transaction, so no savepoint is left to roll back to.
_ENDS_TRANSACTION = LOST_CONNECTION | {1213}
# A value its column cannot hold, refused by strict mode: too long (1406), out of range
# (1264), not of the column's type (1366, 1265). The caller's input, not the source's fault.
REFUSED_VALUE = {
    1406: "is too long for the column",
    1264: "is out of the column's range",
    1366: "is not a value of the column's type",
    1265: "does not fit the column",
}
_COLUMN = re.compile(r"column [`']?([^`'\s]+)[`']?")


class CommitUnknown(Exception):
    """The connection was lost during COMMIT: the batch may or may not have been committed."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def error_code(error: BaseException) -> int | None:
    code = error.args[0] if isinstance(error, aiomysql.MySQLError) and error.args else None
    return code if isinstance(code, int) else None


def is_connection_lost(error: BaseException) -> bool:
    """Whether the connection that raised ``error`` is unusable."""
    if isinstance(error, CommitUnknown | aiomysql.InterfaceError | OSError):
        return True
    return error_code(error) in LOST_CONNECTION


def aborts_transaction(error: BaseException) -> bool:
    return is_connection_lost(error) or error_code(error) in _ENDS_TRANSACTION


def map_error(
    error: BaseException, source: str, *, retryable: bool | None = None
) -> OperationError:
    """A DataSourceError for a driver error; ``retryable`` overrides the guess from its code.
    A value its column refused is an InvalidOperation naming the column (never the value:
    the server's message quotes it)."""
    code = error_code(error)
    if code in REFUSED_VALUE and len(error.args) >= 2:
        found = _COLUMN.search(str(error.args[1]))
        column = repr(found.group(1)) if found else "of the write"
        refused = InvalidOperation(
            f"a value for column {column} {REFUSED_VALUE[code]} (mysql source {source!r}, "
            f"error {code})",
            data_source=source,
        )
        refused.__cause__ = error
        return refused
    if isinstance(error, aiomysql.MySQLError) and len(error.args) >= 2:
        detail = f"({code}) {error.args[1]}"
    else:
        detail = f"{type(error).__name__}: {error}"
    guess = code in RETRYABLE
    if isinstance(error, CommitUnknown):
        guess = True
        text = (
            f"mysql source {source!r} lost its connection during COMMIT, so the batch may "
            f"or may not have been committed: {error}"
        )
    elif is_connection_lost(error):
        guess = True
        text = f"mysql source {source!r} lost its connection: {detail}"
    elif code in DUPLICATE_KEY:
        text = f"duplicate key on mysql source {source!r}: {detail}"
    else:
        text = f"mysql source {source!r} failed: {detail}"
    mapped = DataSourceError(
        text,
        data_source=source,
        retryable=guess if retryable is None else retryable,
        conflict=code in DUPLICATE_KEY,
    )
    mapped.__cause__ = error
    return mapped
