"""The built-in Redis data source (``type = "redis"``): a cache and small owner-scoped tables.

See :mod:`wf78_redis.adapter` for the key layout and :mod:`wf78_redis.pipeline` for how
commands issued together share one round trip.
"""

from __future__ import annotations

from typing import Any

from wf78_core.hookspecs import hookimpl
from wf78_core.registry import Registry

from .adapter import RedisOptions, RedisSource

__all__ = ["RedisOptions", "RedisSource", "wf78_register_datasources"]


# trylast: a third-party plugin may register a better "redis" first.
@hookimpl(trylast=True)
def wf78_register_datasources(registry: Registry[Any]) -> None:
    registry.add("redis", RedisSource)
