"""The built-in PostgreSQL data source (``type = "postgres"``).

Its driver, asyncpg, comes with the ``postgres`` extra (``pip install "wf78[postgres]"``):
this package imports without it, and its adapter's classes, loaded on first use, name
the extra when it is missing.
"""

from __future__ import annotations

from typing import Any

from wf78_core.plugin import DataSourceFactory, Registry, hookimpl, require_driver

__all__ = ["PostgresOptions", "PostgresSource", "wf78_register_datasources"]

_ADAPTER_NAMES = frozenset({"PostgresOptions", "PostgresSource"})


# A third-party plugin registering the same type replaces this one. The factory is named
# through this package so that loading it goes by way of the driver check below.
@hookimpl(trylast=True)
def wf78_register_datasources(registry: Registry[DataSourceFactory | str]) -> None:
    registry.add("postgres", "wf78_postgres:PostgresSource", default=True)


def __getattr__(name: str) -> Any:
    """The adapter's classes, imported on first use: the driver loads only when needed, and
    a missing driver is a ``ConfigError`` naming the extra to install."""
    if name in _ADAPTER_NAMES:
        require_driver("asyncpg", "postgres", what="data source type 'postgres'")
        from . import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
