"""B3 memory: the RSS of a process holding ``--n`` operations accepted but not finished.

The ``gate`` source (registered by this module's plugin, ``pool_size = 1``) takes one
operation at a time and holds it until the gate opens, so every other operation waits in the
engine (``engine.queue_size`` = ``--n``). Cases, each measuring RSS with the idle engine and
with the ``--n`` operations waiting:

``engine``   the candidate: ``--n`` operations accepted through ``engine.enqueue``, each a
             :class:`~wf78_core.Ticket`, with no caller coroutine per operation.
``engine_max_running_100``  the same with ``engine.max_running = 100`` (informational):
             granted tickets become tasks waiting for the source, at most ``max_running``.
``submit``   ``--n`` tasks of an ``asyncio.TaskGroup`` each awaiting ``engine.submit``: the
             caller's own task included (informational).
``floor``    the same tasks awaiting the gate directly: what the callers cost without the
             engine, so ``submit - floor`` is the engine's share of a submit (informational).
``workflow`` one run of a workflow of ``--n`` independent tasks, ``max_concurrent = 1``: queued
             tasks as the engine holds them (informational).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio

from benchmarks._harness import Measurement, case_main, rss
from wf78_core import Engine, Operation, TaskContext, hookimpl
from wf78_core.plugin.datasource import SourceSpec

SETTLE_TIMEOUT = 120.0


class GatePlugin:
    """A ``gate`` source type and a ``bench.gate`` action that wait for ``self.gate``."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        plugin = self

        class GateSource:
            actions = frozenset({"noop"})
            concurrency = 1

            def __init__(self, spec: SourceSpec) -> None:
                self.name = spec.name

            async def open(self) -> None:
                return None

            async def close(self) -> None:
                return None

            async def health(self) -> None:
                return None

            async def execute(self, op: Operation) -> None:
                await plugin.gate.wait()

        self.source_type = GateSource

    async def gate_action(self, ctx: TaskContext) -> None:
        await self.gate.wait()

    @hookimpl
    def wf78_register_datasources(self, registry: Any) -> None:
        registry.add("gate", self.source_type)

    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        registry.add("bench.gate", self.gate_action)


def _config(
    queue_size: int,
    workflows: list[dict[str, Any]] | None = None,
    *,
    max_running: int | None = None,
) -> dict[str, Any]:
    engine: dict[str, Any] = {"queue_size": queue_size}
    if max_running is not None:
        engine["max_running"] = max_running
    return {
        "engine": engine,
        "datasources": {"gate": {"type": "gate", "pool_size": 1}},
        "workflows": workflows or [],
    }


async def _settle(until: Callable[[], bool], what: str) -> None:
    """Wait until ``until()`` holds (every caller has reached its wait), then check it stays."""
    with anyio.fail_after(SETTLE_TIMEOUT):
        # Engine statistics have no change notification: polling is the only way to watch them.
        while not until():  # noqa: ASYNC110
            await anyio.sleep(0.05)
    await anyio.sleep(0.1)
    if not until():
        raise RuntimeError(f"{what}: state changed while settling")


def _memory(idle: int, loaded: int, n: int, drain: float) -> Measurement:
    return {
        "rss_idle": idle,
        "rss_total": loaded,
        "rss_increase": loaded - idle,
        "bytes_per_op": (loaded - idle) / n,
        "drain_seconds": drain,
    }


async def engine(args: argparse.Namespace, max_running: int | None = None) -> Measurement:
    """``--n`` operations accepted through ``engine.enqueue``: tickets, no caller tasks."""
    plugin = GatePlugin()
    n: int = args.n
    async with Engine(_config(n, max_running=max_running), plugins=[plugin]) as wf78:
        await anyio.sleep(0.1)
        idle = rss()
        op = Operation(action="noop", data_source="gate")
        tickets = [await wf78.enqueue(op) for _ in range(n)]

        def accepted() -> bool:
            # One operation holds the gate; every other one waits in the scheduler, as a
            # ticket or (granted up to max_running) as a task waiting for the source.
            stats = wf78.stats()
            return stats.pending == n and sum(stats.queued.values()) == n - 1

        await _settle(accepted, "engine")
        stats = wf78.stats()
        loaded = rss()
        began = time.perf_counter()
        plugin.gate.set()
        await _settle(lambda: wf78.completed == n or wf78.failed > 0, "engine drain")
        drain = time.perf_counter() - began
        results = [await ticket.result() for ticket in tickets]
        if wf78.completed != n or wf78.failed or len(results) != n:
            raise RuntimeError(f"expected {n} completed, got {wf78.completed}/{wf78.failed}")
    return {
        **_memory(idle, loaded, n, drain),
        # Granted tickets run as tasks waiting for the source; the rest are queued tickets.
        "running_tasks": stats.running,
        "queued": sum(stats.queued.values()),
        "max_running": stats.max_running,
    }


async def submit(args: argparse.Namespace) -> Measurement:
    """``--n`` caller tasks, each awaiting ``engine.submit``."""
    plugin = GatePlugin()
    n: int = args.n
    async with Engine(_config(n), plugins=[plugin]) as wf78:
        await anyio.sleep(0.1)
        idle = rss()
        op = Operation(action="noop", data_source="gate")
        async with asyncio.TaskGroup() as callers:
            for _ in range(n):
                callers.create_task(wf78.submit(op))

            def queued() -> bool:
                stats = wf78.stats()
                return stats.pending == n and sum(stats.queued.values()) == n - 1

            await _settle(queued, "submit")
            loaded = rss()
            began = time.perf_counter()
            plugin.gate.set()
        drain = time.perf_counter() - began
        if wf78.completed != n or wf78.failed:
            raise RuntimeError(f"expected {n} completed, got {wf78.completed}/{wf78.failed}")
    return _memory(idle, loaded, n, drain)


async def floor(args: argparse.Namespace) -> Measurement:
    plugin = GatePlugin()
    n: int = args.n
    waiting = 0

    async def caller() -> None:
        nonlocal waiting
        waiting += 1
        await plugin.gate.wait()

    async with Engine(_config(n), plugins=[plugin]):
        await anyio.sleep(0.1)
        idle = rss()
        async with asyncio.TaskGroup() as callers:
            for _ in range(n):
                callers.create_task(caller())
            await _settle(lambda: waiting == n, "floor")
            loaded = rss()
            began = time.perf_counter()
            plugin.gate.set()
        drain = time.perf_counter() - began
    return _memory(idle, loaded, n, drain)


async def workflow(args: argparse.Namespace) -> Measurement:
    plugin = GatePlugin()
    n: int = args.n
    wide = {
        "id": "wide",
        "max_concurrent": 1,
        "tasks": [{"id": f"t{i}", "action": "bench.gate"} for i in range(n)],
    }
    # A throwaway engine imports every plugin first, so the definition is measured alone.
    Engine(_config(n), plugins=[plugin])
    before_config = rss()
    config = _config(n, [wide])
    config["engine"]["drain_timeout"] = 600.0  # leaving the engine waits for the run
    wf78 = Engine(config, plugins=[plugin])
    async with wf78:
        await anyio.sleep(0.1)
        idle = rss()
        run = await wf78.run("wide", wait=False)

        def queued() -> bool:
            return sum(wf78.stats().queued.values()) == n - 1

        await _settle(queued, "workflow")
        loaded = rss()
        began = time.perf_counter()
        plugin.gate.set()
    drain = time.perf_counter() - began
    status = wf78.get_run(run.id).status
    if status != "succeeded":
        raise RuntimeError(f"the run ended {status}")
    return {**_memory(idle, loaded, n, drain), "rss_definition": idle - before_config}


if __name__ == "__main__":
    case_main(
        {
            "engine": engine,
            "engine_max_running_100": partial(engine, max_running=100),
            "submit": submit,
            "floor": floor,
            "workflow": workflow,
        },
        description=__doc__ or "",
        default_n=100_000,
    )
