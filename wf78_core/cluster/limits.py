"""``[limits.<name>]`` across every process: the limits' state in Redis.

One atomic Lua step per decision, not a token lease refilled in batches. A lease makes
most decisions local (faster: no round trip), but a process must ask for tokens ahead
of need, so with many processes and many keys the tokens leased and unused by one are
refused to the others (a key busy in two processes passes less than its rate) or, when
leases are small, nearly every request asks Redis anyway. A Lua step per request keeps
the limit exact whatever the number of processes (the limit-accuracy benchmark, B17,
holds it within 5% across two processes) for one Redis round trip (~0.1 ms here) on a
limited route only; routes no limit names never touch Redis.

Rate: GCRA, the theoretical arrival time of the key's next request kept as a string
with the key's expiry at that time, read from Redis' own clock (``TIME``) so processes
on hosts with drifting clocks share one. Concurrent: a sorted set per key, a member per
request in flight scored by when its lease lapses (``[engine] lease_ttl`` after it was
taken): a process that dies without giving a slot back loses it after that time.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from wf78_core.config import EngineSettings
from wf78_core.errors import BackendUnavailable

__all__ = ["RedisLimitStore"]

_CONNECTIONS = 16

# KEYS[1] the key's TAT; ARGV interval, tolerance (seconds). Returns TAT - now after the
# request passed, or minus the wait before it would pass, as a string (Lua numbers would
# come back truncated to integers).
_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local backlog = tat - now
if backlog > tolerance then
  return tostring(tolerance - backlog)
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', next_tat), 'PX',
  math.ceil((next_tat - now) * 1000) + 1)
return tostring(backlog + interval)
"""

# KEYS[1] the key's leases; ARGV capacity, lease name, lease seconds. 1: taken.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000) + 1)
return 1
"""


class RedisLimitStore:
    """:class:`wf78_core.core.limits.LimitStore` in Redis (the engine's ``backend_url``,
    keys under its namespace's hash tag)."""

    def __init__(self, settings: EngineSettings) -> None:
        self.url = settings.backend_url
        self.prefix = f"wf78:{{{settings.backend_namespace}}}:limit:"
        self.lease_seconds = settings.lease_ttl
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}

    def _client(self) -> Any:
        if self._redis is None:
            # A few connections shared by every request (callers wait for a free one rather
            # than open hundreds under a flood); short timeouts: a request waits for them.
            pool = BlockingConnectionPool.from_url(
                self.url,
                max_connections=_CONNECTIONS,
                timeout=2.0,
                socket_timeout=1.0,
                socket_connect_timeout=1.0,
            )
            self._redis = Redis(connection_pool=pool)
            self._scripts = {
                "rate": self._redis.register_script(_RATE),
                "take": self._redis.register_script(_TAKE),
            }
        return self._redis

    async def close(self) -> None:
        redis, self._redis = self._redis, None
        if redis is not None:
            await redis.aclose(close_connection_pool=True)

    def _failed(self, error: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"redis at {self.url.split('@')[-1]} did not answer: {error}")

    async def rate(self, limit: str, key: str, interval: float, tolerance: float) -> float:
        self._client()
        try:
            answer = await self._scripts["rate"](
                keys=[f"{self.prefix}{limit}:r:{key}"], args=[repr(interval), repr(tolerance)]
            )
        except (RedisError, OSError) as error:
            raise self._failed(error) from error
        return float(answer)

    async def take(self, limit: str, key: str, capacity: int, lease: str) -> bool:
        self._client()
        try:
            taken = await self._scripts["take"](
                keys=[f"{self.prefix}{limit}:c:{key}"],
                args=[capacity, lease, repr(self.lease_seconds)],
            )
        except (RedisError, OSError) as error:
            raise self._failed(error) from error
        return bool(taken)

    async def give(self, limit: str, key: str, lease: str) -> None:
        redis = self._client()
        try:
            await redis.zrem(f"{self.prefix}{limit}:c:{key}", lease)
        except (RedisError, OSError) as error:
            raise self._failed(error) from error
