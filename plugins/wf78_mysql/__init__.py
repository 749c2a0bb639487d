"""The built-in MySQL / MariaDB data source (``type = "mysql"``)."""

from __future__ import annotations

from typing import Any

from wf78_core.hookspecs import hookimpl
from wf78_core.registry import Registry

from .adapter import MySQLOptions, MySQLSource

__all__ = ["MySQLOptions", "MySQLSource", "wf78_register_datasources"]


# trylast: a third-party plugin may register a better "mysql" first.
@hookimpl(trylast=True)
def wf78_register_datasources(registry: Registry[Any]) -> None:
    registry.add("mysql", MySQLSource)
