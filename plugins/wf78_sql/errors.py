"""Errors every SQL adapter raises the same way."""

from __future__ import annotations

from wf78_core.plugin import DataSourceError

__all__ = ["closed_error"]


def closed_error(kind: str, source: str, state: str = "closing") -> DataSourceError:
    """The retryable error of a write or read the source can no longer serve."""
    return DataSourceError(
        f"{kind} source {source!r} is {state}", data_source=source, retryable=True
    )
