"""The built-in Redis data source (``type = "redis"``): a cache and small owner-scoped tables.

See :mod:`wf78_redis.adapter` for the key layout and :mod:`wf78_redis.pipeline` for how
commands issued together share one round trip.
"""

from __future__ import annotations

from typing import Any

from wf78_core.plugin.registry import Registry
from wf78_core.plugin.spec import hookimpl

__all__ = ["RedisOptions", "RedisSource", "wf78_register_datasources"]


# A third-party plugin registering the same type replaces this one.
@hookimpl(trylast=True)
def wf78_register_datasources(registry: Registry[Any]) -> None:
    registry.add("redis", "wf78_redis.adapter:RedisSource", default=True)


def __getattr__(name: str) -> Any:
    """The adapter's classes, imported on first use: the driver loads only when needed."""
    if name in ("RedisSource", "RedisOptions"):
        from . import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
