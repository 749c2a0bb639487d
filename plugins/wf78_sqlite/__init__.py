"""The built-in SQLite data source: the embedded default (``type = "sqlite"``)."""

from __future__ import annotations

from typing import Any

from wf78_core.plugin import DataSourceFactory, Registry, hookimpl

__all__ = ["SQLiteOptions", "SQLiteSource", "wf78_register_datasources"]


# A third-party plugin registering the same type replaces this one.
@hookimpl(trylast=True)
def wf78_register_datasources(registry: Registry[DataSourceFactory | str]) -> None:
    registry.add("sqlite", "wf78_sqlite.adapter:SQLiteSource", default=True)


def __getattr__(name: str) -> Any:
    """The adapter's classes, imported on first use: the driver loads only when needed."""
    if name in ("SQLiteSource", "SQLiteOptions"):
        from . import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
