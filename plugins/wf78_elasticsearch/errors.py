"""Client errors and failed bulk items mapped to :class:`~wf78_core.plugin.DataSourceError`.

Retryable: the cluster could not be reached or timed out, refused for load (429) or failed
(5xx, 408). Not retryable: the request itself is wrong (400), the index is missing (404),
a version conflict or duplicate id (409), refused credentials (401/403), a TLS failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from elastic_transport import (
    ApiError,
    ConnectionError,
    ConnectionTimeout,
    SerializationError,
    TlsError,
    TransportError,
)

from wf78_core.plugin import DataSourceError

__all__ = [
    "PartialWrite",
    "closed_error",
    "error_type",
    "item_error",
    "map_error",
    "retryable_status",
]


class PartialWrite(DataSourceError):
    """Some documents of one caller's ``add_many`` were written and others failed.

    Elasticsearch has no multi-document transaction: ``written`` holds the ids that were
    stored, ``failed`` maps row indexes to their errors. Never retryable once anything was
    written, since trying again would store the written rows twice under new ids.
    """

    def __init__(
        self,
        message: str,
        *,
        data_source: str,
        written: list[str],
        failed: dict[int, DataSourceError],
        retryable: bool,
    ) -> None:
        super().__init__(message, data_source=data_source, retryable=retryable)
        self.written = written
        self.failed = failed


def retryable_status(status: int) -> bool:
    """Whether a request refused with this HTTP status may succeed when sent again."""
    return status in (408, 429) or status >= 500


def map_error(
    error: BaseException, source: str, *, retryable: bool | None = None
) -> DataSourceError:
    """A DataSourceError for a client error; ``retryable`` overrides the guess from its kind."""
    guess = False
    conflict = isinstance(error, ApiError) and error.meta.status == 409
    if isinstance(error, TlsError):
        text = f"TLS with elasticsearch source {source!r} failed: {error}"
    elif isinstance(error, ConnectionTimeout):
        guess = True
        text = f"elasticsearch source {source!r} timed out: {error}"
    elif isinstance(error, ConnectionError):
        guess = True
        text = f"elasticsearch source {source!r} is unreachable: {error}"
    elif isinstance(error, ApiError):
        status = error.meta.status
        guess = retryable_status(status)
        kind, reason = _error_details(error.body)
        if kind:
            text = f"elasticsearch source {source!r} answered {status} {kind}: {reason}"
        else:
            text = f"elasticsearch source {source!r} answered {status}: {error.message}"
    elif isinstance(error, SerializationError):
        text = f"elasticsearch source {source!r} could not encode or decode JSON: {error}"
    elif isinstance(error, TransportError):
        guess = True
        text = f"elasticsearch source {source!r} failed: {type(error).__name__}: {error}"
    else:
        text = f"elasticsearch source {source!r} failed: {type(error).__name__}: {error}"
    mapped = DataSourceError(
        text,
        data_source=source,
        retryable=guess if retryable is None else retryable,
        conflict=conflict,
    )
    mapped.__cause__ = error
    return mapped


def item_error(item: Mapping[str, Any], source: str, what: str) -> DataSourceError:
    """The error of one failed bulk item (``{"status": 409, "error": {...}}``)."""
    status = int(item.get("status", 0))
    kind, reason = _error_details(item)
    if kind == "version_conflict_engine_exception" and what.startswith("add"):
        text = f"{what}: a document with that id already exists ({reason})"
    else:
        text = f"{what} failed with {status} {kind or 'error'}: {reason}"
    return DataSourceError(
        f"{text} (elasticsearch source {source!r})",
        data_source=source,
        retryable=retryable_status(status),
        conflict=status == 409,
    )


def closed_error(source: str, state: str = "closing") -> DataSourceError:
    """The retryable error of an operation the source can no longer serve."""
    return DataSourceError(
        f"elasticsearch source {source!r} is {state}", data_source=source, retryable=True
    )


def error_type(body: Any) -> str:
    """The ``error.type`` of a response or bulk item body, or ``""``."""
    return _error_details(body)[0]


def _error_details(body: Any) -> tuple[str, str]:
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        reason = str(error.get("reason", ""))
        caused_by = error.get("caused_by")
        if isinstance(caused_by, Mapping) and caused_by.get("reason"):
            reason += f" (caused by: {caused_by['reason']})"
        return str(error.get("type", "")), reason
    if error is not None:
        return "error", str(error)
    return "", ""
