"""Snowflake node ids leased in Redis: a different one for every process sharing a backend.

With ``[engine] backend = "redis"`` and no ``[engine] node_id``, the Redis backend leases
this process's node id (0-1023) when it opens, so no two processes or hosts on that Redis
mint the same snowflake (:mod:`wf78_core.ids`):

- **lease**: ``SET <prefix>node:<n> <token> NX PX <ttl>`` on the first free ``n`` from a
  random start, in one Lua script (:data:`LEASE_TTL`, 60 s);
- **renewal**: every third of the TTL in the background. A lease that vanished (Redis
  restarted empty) is taken again; one that another process holds (this one was cut off
  from Redis for longer than the TTL) is given up for a new node id, with a warning;
- **release** at close: the key is kept a moment longer (:data:`RELEASE_GRACE`), so no
  process takes the node id within the millisecond of this one's last id.

The key carries the namespace's hash tag, as every key of the backend does.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
from anyio.abc import TaskStatus
from redis.asyncio import Redis
from redis.exceptions import RedisError

from wf78_core.errors import Wf78Error
from wf78_core.ids import NODE_IDS, hold_node_id, release_node_id

__all__ = ["LEASE_TTL", "RELEASE_GRACE", "NodeLease"]

#: Seconds a node id stays leased without renewal.
LEASE_TTL = 60.0
#: Seconds a released node id stays reserved.
RELEASE_GRACE = 1.0
logger = logging.getLogger("wf78.cluster")

# KEYS[1] names the slot; ARGV: key prefix, token, TTL in ms, first node id to try, ids.
_LEASE = """
local prefix, token, ttl = ARGV[1], ARGV[2], ARGV[3]
local start, count = tonumber(ARGV[4]), tonumber(ARGV[5])
for step = 0, count - 1 do
  local node = (start + step) % count
  if redis.call('SET', prefix .. node, token, 'NX', 'PX', ttl) then return node end
end
return -1
"""
# KEYS[1] = the node's key; ARGV: token, TTL in ms. 1: still ours; 0: another's now.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
# KEYS[1] = the node's key; ARGV: token, grace in ms.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def shown_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


class NodeLease:
    """This process's node id, leased in the Redis at ``url`` under ``namespace``.

    ``await acquire()`` leases one and makes it the node id snowflakes are minted with;
    ``renew`` (a task) keeps it; ``await release()`` gives it up. ``node_id`` is the one
    held (None before ``acquire`` and after ``release``).
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        ttl: float = LEASE_TTL,
        grace: float = RELEASE_GRACE,
    ) -> None:
        self.url = url
        self.prefix = f"wf78:{{{namespace}}}:node:"
        self.ttl = ttl
        self.grace = grace
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.node_id: int | None = None
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}

    def key(self, node: int) -> str:
        return f"{self.prefix}{node}"

    async def acquire(self) -> int:
        """Connect and lease a free node id; snowflakes are minted with it from now on."""
        if self.node_id is not None:
            raise Wf78Error(f"node id {self.node_id} is already leased by this process")
        redis: Any = Redis.from_url(self.url)
        try:
            self._scripts = {
                name: redis.register_script(source)
                for name, source in (("lease", _LEASE), ("renew", _RENEW), ("release", _RELEASE))
            }
            node = await self._lease()
        except (RedisError, OSError) as error:
            await redis.aclose()
            raise Wf78Error(
                f"the redis backend at {shown_url(self.url)} does not answer: {error} "
                "(leasing this process's snowflake node id)"
            ) from error
        except BaseException:
            await redis.aclose()
            raise
        self._redis = redis
        self.node_id = node
        hold_node_id(node)
        logger.info("snowflake node id %d leased in redis (%s)", node, self.prefix)
        return node

    async def _lease(self) -> int:
        node = int(
            await self._scripts["lease"](
                keys=[self.prefix + "lease"],
                args=[
                    self.prefix,
                    self.token,
                    int(self.ttl * 1000),
                    secrets.randbelow(NODE_IDS),
                    NODE_IDS,
                ],
            )
        )
        if node < 0:
            raise Wf78Error(
                f"every one of the {NODE_IDS} snowflake node ids is leased in the redis "
                f"backend at {shown_url(self.url)} ({self.prefix}*): too many processes"
            )
        return node

    async def renew(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Renew the lease every third of its TTL until cancelled."""
        task_status.started()
        while True:
            await anyio.sleep(self.ttl / 3)
            try:
                await self.renew_once()
            except (RedisError, OSError, Wf78Error) as error:
                # Another try at the next turn; the lease lasts a TTL from the last renewal.
                logger.warning("snowflake node id %s: renewal failed: %s", self.node_id, error)

    async def renew_once(self) -> None:
        """Renew the lease now; when another process holds it now, lease another id."""
        old = self.node_id
        if old is None:
            return
        kept = await self._scripts["renew"](
            keys=[self.key(old)], args=[self.token, int(self.ttl * 1000)]
        )
        if int(kept) == 1:
            return
        new = await self._lease()
        hold_node_id(new)
        release_node_id(old)
        self.node_id = new
        logger.warning(
            "snowflake node id %d is leased by another process now (this one was cut off "
            "from redis for longer than %s s): minting with node id %d from now on",
            old,
            self.ttl,
            new,
        )

    async def release(self) -> None:
        """Stop minting with the leased node id and give it up (kept ``grace`` seconds)."""
        node, redis = self.node_id, self._redis
        self.node_id = self._redis = None
        if node is None or redis is None:
            return
        release_node_id(node)
        with anyio.CancelScope(shield=True):
            try:
                await self._scripts["release"](
                    keys=[self.key(node)], args=[self.token, max(1, int(self.grace * 1000))]
                )
            except (RedisError, OSError) as error:
                logger.warning("snowflake node id %d: not released (%s); it expires", node, error)
            finally:
                await redis.aclose()
