"""Driver errors mapped to :class:`~wf78_core.plugin.DataSourceError` at the adapter boundary."""

from __future__ import annotations

from redis import exceptions as redis_errors

from wf78_core.plugin import DataSourceError

__all__ = ["closed_error", "map_error"]

# Wrong credentials or permissions stay wrong however often we try.
_PERMANENT = (redis_errors.AuthenticationError, redis_errors.AuthorizationError)
# The server is unreachable, slow, loading its data set, or a replica mid-failover.
_TRANSIENT = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    TimeoutError,
    OSError,
)


def map_error(error: BaseException, source: str) -> DataSourceError:
    """A DataSourceError for a driver error: retryable when trying again can help."""
    if isinstance(error, DataSourceError):
        return error
    retryable = not isinstance(error, _PERMANENT) and isinstance(error, _TRANSIENT)
    message = str(error) or type(error).__name__
    if isinstance(error, redis_errors.ResponseError) and not retryable:
        text = f"redis source {source!r} refused the command: {message}"
    elif retryable:
        text = f"redis source {source!r} is unavailable: {type(error).__name__}: {message}"
    else:
        text = f"redis source {source!r} failed: {type(error).__name__}: {message}"
    mapped = DataSourceError(text, data_source=source, retryable=retryable)
    mapped.__cause__ = error
    return mapped


def closed_error(source: str, state: str = "closing") -> DataSourceError:
    """The retryable error of a command the source can no longer send."""
    return DataSourceError(
        f"redis source {source!r} is {state}", data_source=source, retryable=True
    )
