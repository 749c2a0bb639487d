"""Snowflake node ids leased in Redis (``wf78_core.cluster.nodes``): engines on one Redis
backend lease different node ids, keep them renewed, take another when theirs was lost,
and give them up at close; a configured ``[engine] node_id`` leases nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio

from wf78_core import Engine, Wf78Error
from wf78_core.cluster.nodes import NodeLease
from wf78_core.ids import node_id, snowflake_fields, snowflake_id

pytestmark = pytest.mark.anyio

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def raw() -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(URL, decode_responses=True)
    yield client
    await client.aclose()


def config(namespace: str, **engine: Any) -> dict[str, Any]:
    settings = {
        "backend": "redis",
        "backend_url": URL,
        "backend_namespace": namespace,
        "consume": False,
        **engine,
    }
    return {"engine": settings}


def node_key(namespace: str, node: int) -> str:
    return f"wf78:{{{namespace}}}:node:{node}"


async def test_two_engines_on_one_redis_lease_different_node_ids(
    namespace: str, raw: redis.asyncio.Redis
) -> None:
    first, second = Engine(config(namespace)), Engine(config(namespace))
    assert first.node_id is None  # leased when it starts
    async with first, second:
        nodes = [first.node_id, second.node_id]
        assert None not in nodes and nodes[0] != nodes[1]
        for engine in (first, second):
            assert engine.node_id is not None
            holder = await raw.get(node_key(namespace, engine.node_id))
            assert holder is not None
            assert 0 < await raw.pttl(node_key(namespace, engine.node_id)) <= 60_000
        # This process mints with the node id it leased last.
        assert node_id() == second.node_id
        assert snowflake_fields(snowflake_id())[1] == second.node_id
    assert first.node_id is None and second.node_id is None
    for node in nodes:
        assert node is not None
        assert await raw.pttl(node_key(namespace, node)) <= 1000  # released (a grace left)


async def test_a_configured_node_id_leases_nothing(
    namespace: str, raw: redis.asyncio.Redis
) -> None:
    async with Engine(config(namespace, node_id=17)) as engine:
        assert engine.node_id == 17 and node_id() == 17
        assert [key async for key in raw.scan_iter(match=f"wf78:{{{namespace}}}:node:*")] == []


async def test_the_lease_is_renewed_and_released(namespace: str, raw: redis.asyncio.Redis) -> None:
    lease = NodeLease(URL, namespace, ttl=0.3, grace=0.05)
    node = await lease.acquire()
    try:
        async with anyio.create_task_group() as group:
            await group.start(lease.renew)
            await anyio.sleep(1.0)  # three TTLs: only the renewals kept it
            assert await raw.get(node_key(namespace, node)) == lease.token
            assert node_id() == node
            group.cancel_scope.cancel()
    finally:
        await lease.release()
    await anyio.sleep(0.1)
    assert await raw.get(node_key(namespace, node)) is None
    assert lease.node_id is None


async def test_a_lost_lease_is_taken_again_or_replaced(
    namespace: str, raw: redis.asyncio.Redis
) -> None:
    lease = NodeLease(URL, namespace, ttl=5.0)
    node = await lease.acquire()
    try:
        # Redis lost the key (a restart without persistence): renewal takes it again.
        await raw.delete(node_key(namespace, node))
        await lease.renew_once()
        assert lease.node_id == node
        assert await raw.get(node_key(namespace, node)) == lease.token
        # Another process holds it now (this one was cut off past the TTL): a new node id.
        await raw.set(node_key(namespace, node), "someone-else")
        await lease.renew_once()
        assert lease.node_id is not None and lease.node_id != node
        assert node_id() == lease.node_id
        assert await raw.get(node_key(namespace, lease.node_id)) == lease.token
        assert await raw.get(node_key(namespace, node)) == "someone-else"
    finally:
        await lease.release()


async def test_no_free_node_id_or_no_redis_is_a_clear_error(
    namespace: str, raw: redis.asyncio.Redis
) -> None:
    await raw.mset({node_key(namespace, node): "taken" for node in range(1024)})
    with pytest.raises(Wf78Error, match="every one of the 1024 snowflake node ids is leased"):
        await NodeLease(URL, namespace).acquire()
    # An unreachable Redis is named without the password of its URL.
    with pytest.raises(Wf78Error, match=r"does not answer.*snowflake node id") as raised:
        await NodeLease("redis://:s3cret@127.0.0.1:1/0", namespace).acquire()
    assert "s3cret" not in str(raised.value) and "127.0.0.1:1" in str(raised.value)
