"""Driver errors mapped to :class:`~wf78_core.plugin.DataSourceError` at the adapter boundary."""

from __future__ import annotations

import sqlite3

from wf78_core.plugin import DataSourceError
from wf78_sql import closed_error as _closed_error

__all__ = ["closed_error", "map_error"]


def map_error(
    error: BaseException, source: str, *, retryable: bool | None = None
) -> DataSourceError:
    """A DataSourceError for a driver error; ``retryable`` overrides the guess from its kind."""
    message = str(error)
    guess = False
    conflict = isinstance(error, sqlite3.IntegrityError)
    if conflict:
        unique = "UNIQUE" in message or "PRIMARY KEY" in message
        what = "duplicate key" if unique else "constraint violated"
        text = f"{what} on sqlite source {source!r}: {message}"
    elif isinstance(error, sqlite3.OperationalError):
        lowered = message.lower()
        # Another connection holds the lock: waiting and trying again can succeed.
        guess = "locked" in lowered or "busy" in lowered
        text = f"sqlite source {source!r} failed: {message}"
    elif isinstance(error, ValueError) and "closed" in message.lower():
        guess = True
        text = f"sqlite source {source!r} is closed: {message}"
    else:
        text = f"sqlite source {source!r} failed: {type(error).__name__}: {message}"
    mapped = DataSourceError(
        text,
        data_source=source,
        retryable=guess if retryable is None else retryable,
        conflict=conflict,
    )
    mapped.__cause__ = error
    return mapped


def closed_error(source: str, state: str = "closing") -> DataSourceError:
    """The retryable error of a write or read the source can no longer serve."""
    return _closed_error("sqlite", source, state)
