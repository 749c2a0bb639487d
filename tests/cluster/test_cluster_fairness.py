"""Fair shares between tenants on the Redis backend, across every worker of a namespace
(wf78_core.cluster.shares): ready tasks wait in their tenant's lane and workers take
them in the tenants' turns, so one tenant's backlog delays another tenant's single run
by about one turn, however many workers there are.

Runs are queued by an engine that does not work (``consume = false``) before the
workers start, so the order is decided by Redis alone; the order the tasks were taken
in is read back from Redis (each task's start time, stamped by the TAKE script).
"""

from __future__ import annotations

import itertools
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest
import redis
from conftest import TERMINAL_RUN, Probe

from wf78_core import Engine, Run
from wf78_core.core.fairness import tenant

pytestmark = pytest.mark.anyio

URL = "redis://127.0.0.1:6379/0"


def config(namespace: str, **engine: Any) -> dict[str, Any]:
    settings = {
        "backend": "redis",
        "backend_url": URL,
        "backend_namespace": namespace,
        "lease_ttl": 0.6,
        "claim_margin": 0.2,
        "aging_seconds": 0,
        **engine,
    }
    flows = [
        {"id": "job", "tasks": [{"id": "a", "action": "probe.record"}]},
        {"id": "urgent", "priority": 0, "tasks": [{"id": "a", "action": "probe.record"}]},
        {"id": "capped", "max_concurrent": 1, "tasks": [{"id": "a", "action": "probe.record"}]},
    ]
    return {"engine": settings, "workflows": flows}


async def queue(front: Engine, who: str | None, count: int, workflow: str = "job") -> list[str]:
    """``count`` runs started as tenant ``who`` (None: without one, as schedules and
    events are); their ids."""
    ids = []
    for index in range(count):
        context = {"label": f"{who}{index}"}
        if who is None:
            ids.append((await front.run(workflow, context, wait=False)).id)
            continue
        with tenant(who):
            ids.append((await front.run(workflow, context, wait=False)).id)
    return ids


async def work(
    namespace: str, probe: Probe, ids: list[str], workers: int, **engine: Any
) -> list[Run]:
    """Start ``workers`` engines that work (``engine``: their settings) and return the
    runs once all finished."""
    async with AsyncExitStack() as stack:
        last = None
        for _ in range(workers):
            last = await stack.enter_async_context(
                Engine(config(namespace, **engine), plugins=[probe])
            )
        assert last is not None
        with anyio.fail_after(30):
            for _ in itertools.count():
                runs = [await last.fetch_run(run_id) for run_id in ids]
                if all(run.status in TERMINAL_RUN for run in runs):
                    break
                await anyio.sleep(0.05)
    assert {run.status for run in runs} == {"succeeded"}
    return runs


def taken_at(run: Run) -> float:
    started = run.tasks["a"].started
    assert started is not None
    return started


def lanes_left(namespace: str) -> list[bytes]:
    client = redis.Redis.from_url(URL)
    try:
        return list(client.scan_iter(match=f"wf78:{{{namespace}}}:fr:*"))
    finally:
        client.close()


@pytest.mark.parametrize("slots", [1, 4])
async def test_one_tenants_backlog_delays_anothers_run_by_one_turn_across_workers(
    namespace: str, probe: Probe, slots: int
) -> None:
    async with Engine(config(namespace, consume=False), plugins=[probe]) as front:
        backlog = await queue(front, "A", 100)
        (single,) = await queue(front, "B", 1)
        # Waiting in the lanes counts as queued, for every process's stats.
        assert await front.backend.depths() == {1: 101}  # type: ignore[attr-defined]
    runs = await work(namespace, probe, [*backlog, single], workers=2, worker_slots=slots)
    b_run = runs[-1]
    ahead = [run for run in runs[:-1] if taken_at(run) < taken_at(b_run)]
    # FIFO would have run all of A's 100 first; in turns, at most A's one turn is ahead.
    assert len(ahead) <= 1, [run.context["label"] for run in ahead]
    # Inside one tenant, FIFO: taken no later than the runs queued after it.
    times = [taken_at(run) for run in runs[:-1]]
    assert times == sorted(times)
    assert lanes_left(namespace) == []


async def test_turns_follow_the_tenants_weights(namespace: str, probe: Probe) -> None:
    weights = {"fair_weights": {"A": 3}}
    async with Engine(config(namespace, consume=False, **weights), plugins=[probe]) as front:
        ids = await queue(front, "A", 9) + await queue(front, "B", 3)
    runs = await work(namespace, probe, ids, workers=1, worker_slots=1, **weights)
    order = "".join(run.context["label"][0] for run in sorted(runs, key=taken_at))
    assert order == "AAABAAABAAAB"


async def test_work_without_a_tenant_is_one_tenant_like_any_other(
    namespace: str, probe: Probe
) -> None:
    async with Engine(config(namespace, consume=False), plugins=[probe]) as front:
        anonymous = await queue(front, None, 20)
        ids = [*anonymous, *await queue(front, "B", 2)]
    runs = await work(namespace, probe, ids, workers=1, worker_slots=1)
    order = [run.context["label"][0] for run in sorted(runs, key=taken_at)]
    assert order[:4] == ["N", "B", "N", "B"]  # "None0", "B0", "None1", "B1"


async def test_priority_comes_before_turns(namespace: str, probe: Probe) -> None:
    async with Engine(config(namespace, consume=False), plugins=[probe]) as front:
        ids = await queue(front, "A", 5) + await queue(front, "B", 2, workflow="urgent")
    runs = await work(namespace, probe, ids, workers=1, worker_slots=1)
    order = [run.context["label"] for run in sorted(runs, key=taken_at)]
    assert order[:2] == ["B0", "B1"]  # level 0 before level 1, whoever waits longer


async def test_the_wait_for_max_concurrent_takes_turns_too(namespace: str, probe: Probe) -> None:
    """Over ``max_concurrent``, tasks wait in the workflow's wait set by their tenants'
    rounds: B's one run is not behind A's backlog there either."""
    async with Engine(config(namespace, consume=False), plugins=[probe]) as front:
        backlog = await queue(front, "A", 30, workflow="capped")
        (single,) = await queue(front, "B", 1, workflow="capped")
    runs = await work(namespace, probe, [*backlog, single], workers=2, worker_slots=1)
    ahead = [run for run in runs[:-1] if taken_at(run) < taken_at(runs[-1])]
    assert len(ahead) <= 1, [run.context["label"] for run in ahead]
    # max_concurrent = 1 still held: each task started after the one before had finished.
    spans = sorted((taken_at(run), run.tasks["a"].finished or 0.0) for run in runs)
    assert all(start >= end for (_, end), (start, _) in itertools.pairwise(spans))
    assert lanes_left(namespace) == []
