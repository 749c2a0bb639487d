"""The built-in Elasticsearch data source (``type = "elasticsearch"``), with grouped bulk writes."""

from __future__ import annotations

from typing import Any

from wf78_core.hookspecs import hookimpl
from wf78_core.registry import Registry

from .adapter import ElasticsearchOptions, ElasticsearchSource
from .errors import PartialWrite

__all__ = [
    "ElasticsearchOptions",
    "ElasticsearchSource",
    "PartialWrite",
    "wf78_register_datasources",
]


# trylast: a third-party plugin may register a better "elasticsearch" first.
@hookimpl(trylast=True)
def wf78_register_datasources(registry: Registry[Any]) -> None:
    registry.add("elasticsearch", ElasticsearchSource)
