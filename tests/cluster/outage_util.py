"""Helpers for tests/cluster/test_outages.py: the redis backend's settings, waiting for a run,
and :class:`ReplyCutter`, a TCP proxy in front of a private Redis that loses one reply.

A command whose reply is lost is the case a client cannot tell apart from one that never
ran: Redis executed it, the connection broke before the answer came back. The proxy
forwards every byte both ways, except that once a command carrying ``marker`` went to
Redis, the next non-error reply on that connection is dropped and the connection closed
(an error reply, such as ``NOSCRIPT`` before redis-py loads its script, is passed on and
the proxy waits for the command to come again).
"""

from __future__ import annotations

import itertools
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import SocketStream, TaskGroup

from wf78_core import Engine, Run

__all__ = ["ReplyCutter", "config", "settled", "workflow"]


def workflow(id: str, *actions: str, **fields: Any) -> dict[str, Any]:
    """A workflow of one task per action, each depending on the one before."""
    tasks: list[dict[str, Any]] = []
    for index, action in enumerate(actions or ("noop",)):
        task: dict[str, Any] = {"id": f"t{index}", "action": action}
        if index:
            task["depends_on"] = [f"t{index - 1}"]
        tasks.append(task)
    return {"id": id, "tasks": tasks, **fields}


def config(url: str, namespace: str, *workflows: dict[str, Any], **engine: Any) -> dict[str, Any]:
    settings = {
        "backend": "redis",
        "backend_url": url,
        "backend_namespace": namespace,
        "lease_ttl": 0.6,
        "claim_margin": 0.2,
        "aging_seconds": 0,
        "overload_timeout": 0.5,
        **engine,
    }
    return {
        "engine": settings,
        "workflows": list(workflows),
        "auth": {"tokens": {"root": {"uid": "1", "cid": "1", "roles": ["admin"]}}},
    }


async def settled(engine: Engine, run_id: str, within: float) -> Run:
    """The run once it is no longer pending or running (polled; read errors while Redis
    comes back are waited out)."""
    with anyio.fail_after(within):
        for _ in itertools.count():
            try:
                run = await engine.fetch_run(run_id)
            except Exception:
                await anyio.sleep(0.05)
                continue
            if run.status not in ("pending", "running"):
                return run
            await anyio.sleep(0.02)
    raise AssertionError("unreachable")


class ReplyCutter:
    """``async with ReplyCutter(port, marker) as proxy``: ``proxy.url`` reaches the Redis on
    ``port``; ``proxy.cut`` counts the replies lost on purpose (at most one)."""

    def __init__(self, port: int, marker: bytes) -> None:
        self.target = port
        self.marker = marker
        self.cut = 0
        self.url = ""
        self._stack = AsyncExitStack()
        self._group: TaskGroup | None = None

    async def __aenter__(self) -> Self:
        listener = await self._stack.enter_async_context(
            await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        )
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self.url = f"redis://127.0.0.1:{port}/0"
        group = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.callback(group.cancel_scope.cancel)
        group.start_soon(listener.serve, self._relay)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _relay(self, client: SocketStream) -> None:
        # Whether the command in flight on this connection carries the marker.
        armed = [False]
        async with client, await anyio.connect_tcp("127.0.0.1", self.target) as server:

            async def upstream() -> None:
                async for chunk in client:
                    if self.cut == 0 and self.marker in chunk:
                        armed[0] = True
                    await server.send(chunk)

            async def downstream(group: TaskGroup) -> None:
                async for chunk in server:
                    if armed[0] and not chunk.startswith(b"-"):
                        self.cut += 1
                        group.cancel_scope.cancel()  # Redis ran it; the client never hears
                        return
                    armed[0] = False
                    await client.send(chunk)

            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(upstream)
                    group.start_soon(downstream, group)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
