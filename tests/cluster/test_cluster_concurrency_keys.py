"""Workflow concurrency keys on the Redis backend, for the whole cluster: at most
``max_per_key`` running runs per value of a context field, wherever they run
(wf78_core.cluster.shares), with the in-process semantics of
tests/core/test_concurrency_keys.py.

Two engines with a StreamWorker each (and a third that only queues) share one namespace
in the first tests; the last ones run ``wf78 worker`` processes (tests/cluster/
distributed_util.py): runs of one key never overlap beyond ``max_per_key`` (checked on
the runs' start and end times, both stamped by Redis's clock in the Lua step that starts
or ends the run), and a worker killed mid-run gives its run's slot back once the run is
taken over and finished elsewhere, losing nothing.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest
import redis
import redis.asyncio
from conftest import TERMINAL_RUN, Watch
from distributed_util import Cluster
from servers import RedisServer
from test_hash_slots import hash_tag

from wf78_core import ConfigError, Engine, Run, TaskContext, TaskEvent, hookimpl
from wf78_core.config import parse_config

pytestmark = pytest.mark.anyio

URL = "redis://127.0.0.1:6379/0"


class Held(Watch):
    """Action ``held.run``: records ``context["name"]`` as started, then waits for the
    gate of that name (``fail`` in the context: the first time, raises once the gate
    opens); ``running``
    counts runs in progress per customer, in every engine of this process."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []
        self.gates: dict[str, anyio.Event] = {}
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.failed: set[str] = set()

    def gate(self, name: str) -> anyio.Event:
        return self.gates.setdefault(name, anyio.Event())

    async def run(self, ctx: TaskContext) -> str:
        name, customer = str(ctx.context["name"]), str(ctx.context.get("customer_id"))
        self.started.append(name)
        self.running[customer] = self.running.get(customer, 0) + 1
        self.peak[customer] = max(self.peak.get(customer, 0), self.running[customer])
        self.touch()
        try:
            await self.gate(name).wait()
        finally:
            self.running[customer] -= 1
            self.touch()
        if ctx.context.get("fail") and name not in self.failed:
            self.failed.add(name)
            self.gates.pop(name)  # its retry waits again
            raise RuntimeError("asked to fail")
        return name

    async def wait_started(self, *names: str) -> None:
        await self.until(lambda: all(name in self.started for name in names))

    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        registry.add("held.run", self.run)

    @hookimpl
    def wf78_task_event(self, event: TaskEvent) -> None:
        self.touch()


def keyed(most: int = 1) -> dict[str, Any]:
    return {
        "id": "sync",
        "tasks": [
            {"id": "work", "action": "held.run"},
            {"id": "then", "action": "noop", "depends_on": ["work"]},
        ],
        "concurrency_key": "context.customer_id",
        "max_per_key": most,
    }


def config(namespace: str, *workflows: dict[str, Any], **engine: Any) -> dict[str, Any]:
    settings = {
        "backend": "redis",
        "backend_url": URL,
        "backend_namespace": namespace,
        "lease_ttl": 0.6,
        "claim_margin": 0.2,
        "aging_seconds": 0,
        **engine,
    }
    return {"engine": settings, "workflows": list(workflows)}


@asynccontextmanager
async def cluster(
    namespace: str, held: Held, *workflows: dict[str, Any]
) -> AsyncIterator[tuple[Engine, Engine, Engine]]:
    """A front engine that only queues and two engines that work, on one namespace."""
    async with AsyncExitStack() as stack:
        front = await stack.enter_async_context(
            Engine(config(namespace, *workflows, consume=False), plugins=[held])
        )
        first = await stack.enter_async_context(
            Engine(config(namespace, *workflows), plugins=[held])
        )
        second = await stack.enter_async_context(
            Engine(config(namespace, *workflows), plugins=[held])
        )
        yield front, first, second


async def settled(engine: Engine, *run_ids: str, within: float = 10.0) -> list[Run]:
    """The runs once none is pending or running (polled: another engine finishes them)."""
    with anyio.fail_after(within):
        for _ in itertools.count():
            runs = [await engine.fetch_run(run_id) for run_id in run_ids]
            if all(run.status in TERMINAL_RUN for run in runs):
                return runs
            await anyio.sleep(0.02)
    raise AssertionError("unreachable")


async def settle_scripts(engine: Engine, rounds: int = 5) -> None:
    """A few round trips to Redis: anything wrongly started would have been taken."""
    for _ in range(rounds):
        await engine.backend.depths()  # type: ignore[attr-defined]
        await anyio.sleep(0.05)


def leftovers(namespace: str) -> list[str]:
    """Keys of concurrency keys (slots, queues, the index) and lanes still in Redis."""
    client = redis.Redis.from_url(URL)
    try:
        found = []
        for pattern in ("ck:*", "ckq:*", "cks", "fr:*"):
            found += [k.decode() for k in client.scan_iter(match=f"wf78:{{{namespace}}}:{pattern}")]
        return found
    finally:
        client.close()


async def test_runs_of_one_key_run_one_at_a_time_across_workers_others_are_not_delayed(
    namespace: str,
) -> None:
    held = Held()
    async with cluster(namespace, held, keyed(1)) as (front, _, _):
        runs = {
            name: await front.run("sync", {"customer_id": customer, "name": name}, wait=False)
            for name, customer in (("a", "c1"), ("b", "c1"), ("c", "c1"), ("x", "c2"))
        }
        await held.wait_started("a", "x")  # another customer's run starts at once
        await settle_scripts(front)
        assert sorted(held.started) == ["a", "x"]
        for name in "bc":
            run = await front.fetch_run(runs[name].id)
            assert run.status == "pending" and run.started is None
            assert {t.state for t in run.tasks.values()} == {"pending"}
        assert await front.backend.depths() == {1: 2}  # type: ignore[attr-defined]
        held.gate("x").set()
        await settled(front, runs["x"].id)
        await settle_scripts(front)
        assert sorted(held.started) == ["a", "x"], "c2's run finishing frees nothing of c1"
        held.gate("a").set()
        await held.wait_started("b")
        await settle_scripts(front)
        assert held.started[2:] == ["b"]
        held.gate("b").set()
        await held.wait_started("c")
        held.gate("c").set()
        done = await settled(front, *(run.id for run in runs.values()))
        assert {run.status for run in done} == {"succeeded"}
        # Each waiting run started once the one before it had finished (Redis's clock).
        by_name = dict(zip(runs, done, strict=True))
        for before, after in ("ab", "bc"):
            assert by_name[after].started is not None and by_name[before].finished is not None
            assert by_name[after].started >= by_name[before].finished
        assert await front.backend.depths() == {}  # type: ignore[attr-defined]
    assert held.peak == {"c1": 1, "c2": 1}
    assert leftovers(namespace) == []


async def test_max_per_key_runs_at_once_and_waiting_runs_go_in_priority_order(
    namespace: str,
) -> None:
    held = Held()
    async with cluster(namespace, held, keyed(2)) as (front, _, _):

        async def start(name: str, priority: int = 1) -> str:
            context = {"customer_id": 7, "name": name}
            return (await front.run("sync", context, priority=priority, wait=False)).id

        ids = [await start("a"), await start("b")]
        await held.wait_started("a", "b")
        ids += [await start("late", priority=5), await start("urgent", priority=0)]
        assert await front.backend.depths() == {0: 1, 5: 1}  # type: ignore[attr-defined]
        held.gate("a").set()
        await held.wait_started("urgent")
        await settle_scripts(front)
        assert held.started[2:] == ["urgent"]
        for name in ("b", "urgent", "late"):
            held.gate(name).set()
        await settled(front, *ids)
    assert held.started[2:] == ["urgent", "late"]
    assert held.peak == {"7": 2}


async def test_cancelling_a_waiting_run_frees_nothing_a_running_one_frees_its_slot(
    namespace: str,
) -> None:
    held = Held()
    async with cluster(namespace, held, keyed(1)) as (front, _, _):
        ids = [
            (await front.run("sync", {"customer_id": "c1", "name": n}, wait=False)).id
            for n in "abc"
        ]
        await held.wait_started("a")
        cancelled = await front.cancel(ids[1])
        assert cancelled.status == "cancelled"
        assert {task.state for task in cancelled.tasks.values()} == {"cancelled"}
        await settle_scripts(front)
        assert held.started == ["a"], "the cancelled run held no slot: c still waits"
        assert (await front.fetch_run(ids[2])).status == "pending"
        held.gate("a").set()
        await held.wait_started("c")
        held.gate("c").set()
        runs = await settled(front, ids[0], ids[2])
        assert [run.status for run in runs] == ["succeeded", "succeeded"]
        # a running run cancelled gives its key back to the next one
        run_d = await front.run("sync", {"customer_id": "c1", "name": "d"}, wait=False)
        run_e = await front.run("sync", {"customer_id": "c1", "name": "e"}, wait=False)
        await held.wait_started("d")
        await front.cancel(run_d.id)
        await held.wait_started("e")
        held.gate("e").set()
        assert (await settled(front, run_e.id))[0].status == "succeeded"
    assert held.peak == {"c1": 1}
    assert leftovers(namespace) == []


async def test_a_run_without_the_field_fails_naming_it(namespace: str) -> None:
    held = Held()
    async with cluster(namespace, held, keyed(1)) as (front, _, _):
        for context in ({"name": "n"}, {"name": "n", "customer_id": None}):
            for wait in (True, False):
                run = await front.run("sync", context, wait=wait)
                assert run.status == "failed"
                assert run.error is not None and "'customer_id'" in run.error
                assert "concurrency_key 'context.customer_id'" in run.error
                stored = await front.fetch_run(run.id)
                assert (stored.status, stored.error) == ("failed", run.error)
                assert {task.state for task in stored.tasks.values()} == {"skipped"}
        assert held.started == []
        ok = await front.run("sync", {"customer_id": "c", "name": "ok"}, wait=False)
        await held.wait_started("ok")  # a failed run held no key
        held.gate("ok").set()
        assert (await settled(front, ok.id))[0].status == "succeeded"
        assert await front.backend.finished_runs() == 5  # type: ignore[attr-defined]


async def test_a_retried_dead_letter_takes_its_key_again_or_waits_for_it(namespace: str) -> None:
    held = Held()
    async with cluster(namespace, held, keyed(1)) as (front, _, _):
        failing = await front.run("sync", {"customer_id": "k", "name": "f", "fail": 1}, wait=False)
        await held.wait_started("f")
        held.gate("f").set()
        assert (await settled(front, failing.id))[0].status == "failed"
        holder = await front.run("sync", {"customer_id": "k", "name": "h"}, wait=False)
        await held.wait_started("h")
        (letter,) = await front.fetch_dead_letters()
        reopened = await front.retry_dead_letter(letter.id)
        assert reopened.status == "pending", "its key's only slot is taken: it waits"
        await settle_scripts(front)
        assert held.started.count("f") == 1
        held.gate("h").set()
        await held.until(lambda: held.started.count("f") == 2)  # started once h finished
        held.gate("f").set()
        runs = await settled(front, holder.id, failing.id)
        assert [run.status for run in runs] == ["succeeded", "succeeded"]
    assert held.peak == {"k": 1}
    assert leftovers(namespace) == []


async def test_the_reconciler_gives_back_slots_of_runs_that_are_gone(namespace: str) -> None:
    held = Held()
    async with cluster(namespace, held, keyed(1)) as (front, _, _):
        lost = await front.run("sync", {"customer_id": "z", "name": "lost"}, wait=False)
        waiting = await front.run("sync", {"customer_id": "z", "name": "next"}, wait=False)
        await held.wait_started("lost")
        # The holder's run disappears (a lost write, a flushed key): its slot drifted.
        client = redis.asyncio.Redis.from_url(URL)
        await client.delete(f"wf78:{{{namespace}}}:run:{lost.id}")
        await client.aclose()
        assert await front.backend.streams.reconcile() >= 1  # type: ignore[attr-defined]
        await held.wait_started("next")
        held.gate("lost").set()
        held.gate("next").set()
        assert (await settled(front, waiting.id))[0].status == "succeeded"


def test_the_redis_backend_accepts_concurrency_keys_and_still_checks_them() -> None:
    tasks = [{"id": "t", "action": "noop"}]
    engine = {"backend": "redis"}
    ok = parse_config(
        {
            "engine": engine,
            "workflows": [
                {"id": "w", "tasks": tasks, "concurrency_key": "context.c", "max_per_key": 2}
            ],
        }
    )
    assert ok.workflows[0].max_per_key == 2
    with pytest.raises(ConfigError) as raised:
        parse_config(
            {
                "engine": engine,
                "workflows": [
                    {"id": "w", "tasks": tasks, "concurrency_key": "c", "max_per_key": 0}
                ],
            }
        )
    found = {p.path: p.message for p in raised.value.problems}
    assert 'must be "context.<field>"' in found["workflows[0].concurrency_key"]
    assert "must be >= 1" in found["workflows[0].max_per_key"]


# -- Redis Cluster: every key carries the namespace's hash tag --------------------------

_ARGUMENT = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)")


def _unescape(text: str) -> bytes:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code.startswith("x") and len(code) == 3:
            return chr(int(code[1:], 16))
        return {"n": "\n", "r": "\r", "t": "\t"}.get(code, code)

    return _ESCAPE.sub(one, text).encode("latin-1")


async def _monitor(server: RedisServer, into: list[list[bytes]], ready: anyio.Event) -> None:
    client = redis.asyncio.Redis(host=server.host, port=server.port)
    try:
        async with client.monitor() as monitor:
            ready.set()
            while True:
                line = await monitor.connection.read_response()
                text = line.decode("latin-1") if isinstance(line, bytes) else str(line)
                if "]" in text:
                    into.append([_unescape(a) for a in _ARGUMENT.findall(text.split("]", 1)[1])])
    finally:
        await client.aclose()


async def test_keys_and_lanes_keep_the_namespace_hash_tag(tmp_path: Path) -> None:
    """What keyed runs, tenants' lanes and turns touch (START, TAKE's refill, COMPLETE's
    promotion, CANCEL, RECONCILE, DEPTHS) carries the tag ``{namespace}``, so a
    namespace stays in one Redis Cluster slot."""
    from wf78_core.core.fairness import tenant

    namespace = f"slot{uuid4().hex[:8]}"
    commands: list[list[bytes]] = []
    held = Held()
    with RedisServer(tmp_path / "redis", appendonly=False) as server:
        async with anyio.create_task_group() as group:
            ready = anyio.Event()
            group.start_soon(_monitor, server, commands, ready)
            await ready.wait()
            settings = config(namespace, keyed(1), backend_url=server.url)
            settings["engine"]["fair_weights"] = {"acme": 2}
            async with Engine(settings, plugins=[held]) as engine:
                with tenant("acme"):
                    one = await engine.run("sync", {"customer_id": "{x}", "name": "1"}, wait=False)
                two = await engine.run("sync", {"customer_id": "{x}", "name": "2"}, wait=False)
                three = await engine.run("sync", {"customer_id": "{x}", "name": "3"}, wait=False)
                await held.wait_started("1")
                await engine.backend.depths()  # type: ignore[attr-defined]
                await engine.backend.streams.reconcile()  # type: ignore[attr-defined]
                await engine.cancel(three.id)
                held.gate("1").set()
                await held.wait_started("2")
                held.gate("2").set()
                await settled(engine, one.id, two.id)
            await anyio.sleep(0.2)
            group.cancel_scope.cancel()
        client = server.client()
        strays, touched = [], set()
        for command in commands:
            try:
                keys = client.command_getkeys(*command)
            except redis.ResponseError:
                continue
            for found in keys:
                key = found.encode("latin-1") if isinstance(found, str) else found
                touched.add(key.split(b":")[2] if key.count(b":") >= 2 else key)
                if hash_tag(key) != namespace.encode():
                    strays.append(key)
        client.close()
    assert not strays, strays[:10]
    # The workload went through the new keys (inside scripts, so MONITOR shows them).
    assert {b"ck", b"ckq", b"cks", b"fr", b"kmax", b"fw"} <= touched, touched


# -- worker processes ------------------------------------------------------------------


def process_settings(namespace: str, **engine: Any) -> dict[str, Any]:
    return {
        "backend": "redis",
        "backend_url": URL,
        "backend_namespace": namespace,
        "lease_ttl": 1.0,
        "claim_margin": 0.5,
        "aging_seconds": 0,
        "drain_timeout": 5.0,
        **engine,
    }


def recorded(most: int, timeout: float = 10) -> dict[str, Any]:
    """A keyed workflow whose task is ``dist.record`` (it logs to Redis and sleeps)."""
    return {
        "id": "keyed",
        "concurrency_key": "context.customer_id",
        "max_per_key": most,
        "tasks": [
            {"id": "a", "action": "dist.record", "timeout": timeout},
            {"id": "b", "action": "noop", "depends_on": ["a"]},
        ],
    }


def most_at_once(runs: list[dict[str, Any]]) -> int:
    """The most runs running at once, from their start and finish times (both stamped by
    Redis, in the Lua step that starts or ends the run; an end before a start at the
    same instant: the step that ended one started the next)."""
    steps = sorted(
        [(run["started"], 1) for run in runs] + [(run["finished"], -1) for run in runs],
        key=lambda step: (step[0], step[1]),
    )
    level = peak = 0
    for _, step in steps:
        level += step
        peak = max(peak, level)
    return peak


def log_of(raw: redis.Redis, log: str, event: str) -> list[dict[str, Any]]:
    return [r for r in (json.loads(i) for i in raw.lrange(log, 0, -1)) if r["event"] == event]


def wait_for(condition: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("most", [1, 2])
def test_max_per_key_holds_across_worker_processes(
    tmp_path: Path, namespace: str, most: int
) -> None:
    """Two worker processes of two slots each: four runs of one key could run at once
    (two in each process), ``max_per_key`` allows ``most``."""
    raw = redis.Redis.from_url(URL, decode_responses=True)
    log = f"wf78:{{{namespace}}}:test:log"
    engine = process_settings(namespace, worker_slots=2)
    with Cluster(tmp_path, {"engine": engine, "workflows": [recorded(most)]}, workers=2) as cluster:
        ids: dict[str, list[str]] = {"c1": [], "c2": []}
        for index in range(8):
            for customer in ("c1", "c2") if index < 3 else ("c1",):
                context = {"customer_id": customer, "log": log, "sleep": 0.1}
                context["label"] = f"{customer}-{index}"
                ids[customer].append(cluster.start("keyed", context))
        runs = cluster.finished([*ids["c1"], *ids["c2"]], within=60)
    starts = log_of(raw, log, "start")
    raw.close()
    assert {run["status"] for run in runs.values()} == {"succeeded"}
    assert sorted(r["label"] for r in starts) == sorted(  # nothing lost, nothing run twice
        runs[run_id]["context"]["label"] for run_id in runs
    )
    assert most_at_once([runs[r] for r in ids["c1"]]) <= most
    assert most_at_once([runs[r] for r in ids["c2"]]) <= most
    assert leftovers(namespace) == []


def test_a_killed_worker_gives_its_runs_slot_back_once_the_run_is_taken_over(
    tmp_path: Path, namespace: str
) -> None:
    raw = redis.Redis.from_url(URL, decode_responses=True)
    log = f"wf78:{{{namespace}}}:test:log"
    config = {"engine": process_settings(namespace, worker_slots=2), "workflows": [recorded(1)]}
    try:
        with Cluster(tmp_path, config, workers=2) as cluster:
            context = {"customer_id": "c", "log": log, "sleep": 1.5}
            first = cluster.start("keyed", {**context, "label": "first"})
            wait_for(lambda: log_of(raw, log, "start"), 20, "the first run started")
            second = cluster.start("keyed", {**context, "label": "second", "sleep": 0})
            (started,) = log_of(raw, log, "start")
            victim = next(w for w in cluster.workers if w.pid == started["pid"])
            victim.kill()
            runs = cluster.finished([first, second], within=30)
            survivor = next(w for w in cluster.workers if w is not victim)
            took_over = "took over" in survivor.stderr
        starts = log_of(raw, log, "start")
    finally:
        raw.close()
    assert {run["status"] for run in runs.values()} == {"succeeded"}
    assert took_over
    # The first run was taken over by the survivor and finished there; only then did the
    # second run (same key) start: the slot came back with the run's end, not before.
    assert [(r["label"], r["pid"] == victim.pid) for r in starts] == [
        ("first", True),
        ("first", False),
        ("second", False),
    ]
    assert runs[first]["tasks"]["a"]["attempts"] == 2
    assert runs[second]["started"] >= runs[first]["finished"]
    assert most_at_once(list(runs.values())) == 1
    assert leftovers(namespace) == []
