"""The built-in SQLite data source: the embedded default (``type = "sqlite"``)."""

from __future__ import annotations

from typing import Any

from wf78_core.hookspecs import hookimpl
from wf78_core.registry import Registry

from .adapter import SQLiteOptions, SQLiteSource

__all__ = ["SQLiteOptions", "SQLiteSource", "wf78_register_datasources"]


# trylast: a third-party plugin may register a better "sqlite" first.
@hookimpl(trylast=True)
def wf78_register_datasources(registry: Registry[Any]) -> None:
    registry.add("sqlite", SQLiteSource)
