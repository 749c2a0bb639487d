"""A plugin for the processes of tests/cluster/test_distributed.py (``wf78 worker --plugin
distributed_plugin``, and the serving process's app): actions and a data-source type that
report to Redis, so the test sees what happened in every process.

Actions (the run context names the Redis keys, so every test keeps to its own namespace):

- ``dist.record``: appends a JSON record ``{event: "start", run, task, priority, label,
  pid, time}`` to the list ``context["log"]``, sleeps ``context["sleep"]`` seconds, then
  appends an ``end`` record (``interrupted: true`` when the worker interrupted it);
  returns the label;
- ``dist.gate``: records its start, waits until the list ``context["gate"]`` has an item
  (a turnstile: it puts the item back for the next task waiting), records its end;
- ``dist.write_then_hold``: the built-in ``datasource.execute`` (the task's params are the
  operation, so its write gets the engine's idempotency key ``run:<run>:<task>``), then a
  ``written`` record, then sleeps ``context["hold"]`` seconds, so a worker can be killed
  after the write committed and before the task was reported done.

Data-source type ``counting`` (options ``key``, ``latency``; ``url`` is the Redis URL):
every operation increments ``<key>:now`` on entry and decrements it on exit, keeps the
largest value seen in ``<key>:max`` (in one Lua call, so it is exact across processes)
and adds the process id to the set ``<key>:pids``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import anyio
import msgspec
import redis.asyncio

from wf78_core.core.actions import TaskContext, execute_action
from wf78_core.definitions import Operation
from wf78_core.plugin.datasource import SourceSpec, convert_options
from wf78_core.plugin.spec import hookimpl

URL = "redis://127.0.0.1:6379/0"
# INCR the level, raise the high-water mark to it: one atomic step.
_ENTER = """
local now = redis.call('INCR', KEYS[1])
if now > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], now) end
redis.call('SADD', KEYS[3], ARGV[1])
return now
"""

_client: Any = None


def _redis() -> Any:
    """This process's client (a worker process runs one event loop for its whole life)."""
    global _client
    if _client is None:
        _client = redis.asyncio.Redis.from_url(URL)
    return _client


async def _log(ctx: TaskContext, event: str, **extra: Any) -> None:
    record = {
        "event": event,
        "run": ctx.run_id,
        "task": ctx.task.id,
        "priority": ctx.priority,
        "label": ctx.context.get("label"),
        "pid": os.getpid(),
        "time": time.time(),
        **extra,
    }
    await _redis().rpush(str(ctx.context["log"]), json.dumps(record))


async def record(ctx: TaskContext) -> Any:
    await _log(ctx, "start")
    try:
        await anyio.sleep(float(ctx.context.get("sleep", 0)))
    except anyio.get_cancelled_exc_class():
        # Interrupted (its entry was taken over, or its run cancelled): it ends here.
        with anyio.CancelScope(shield=True):
            await _log(ctx, "end", interrupted=True)
        raise
    await _log(ctx, "end")
    return ctx.context.get("label")


async def gate(ctx: TaskContext) -> Any:
    await _log(ctx, "start")
    key = str(ctx.context["gate"])
    # A turnstile: take the token, put it back for the next one waiting.
    await _redis().blpop([key], timeout=0)
    await _redis().rpush(key, 1)
    await _log(ctx, "end")
    return ctx.context.get("label")


async def write_then_hold(ctx: TaskContext) -> Any:
    result = await execute_action(ctx)
    await _log(ctx, "written", value=result.value)
    await anyio.sleep(float(ctx.context.get("hold", 0)))
    return result


class CountingSource:
    """Counts the operations inside it, across every process using the same ``key``."""

    class Options(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
        key: str
        latency: float = 0.0

    actions = frozenset({"noop"})
    concurrency = 100

    def __init__(self, spec: SourceSpec) -> None:
        options = convert_options(spec, self.Options)
        self.url = spec.url or URL
        self.keys = [options.key + ":now", options.key + ":max", options.key + ":pids"]
        self.latency = options.latency
        self._redis: Any = None
        self._enter: Any = None

    async def open(self) -> None:
        self._redis = redis.asyncio.Redis.from_url(self.url)
        self._enter = self._redis.register_script(_ENTER)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def health(self) -> None:
        await self._redis.ping()

    async def execute(self, op: Operation) -> Any:
        now = await self._enter(keys=self.keys, args=[os.getpid()])
        try:
            await anyio.sleep(self.latency)
        finally:
            with anyio.CancelScope(shield=True):
                await self._redis.decr(self.keys[0])
        return int(now)


@hookimpl
def wf78_register_actions(registry: Any) -> None:
    registry.add("dist.record", record)
    registry.add("dist.gate", gate)
    registry.add("dist.write_then_hold", write_then_hold)


@hookimpl
def wf78_register_datasources(registry: Any) -> None:
    registry.add("counting", CountingSource)
