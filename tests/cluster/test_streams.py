"""The Redis Streams backend inside one process: runs, DAGs, failures, leases, priority,
takeover, poison entries, drift repair, scheduling and the admin API (see
tests/cluster/test_distributed.py for several processes)."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio
from asgi_lifespan import LifespanManager
from conftest import Probe
from servers import RedisServer

from wf78_core import (
    BackendUnavailable,
    ConfigError,
    Engine,
    Run,
    Wf78Error,
    Wf78Middleware,
    hookimpl,
)
from wf78_core.cli import main
from wf78_core.cluster.backend import RedisBackend
from wf78_core.cluster.streams import Completion, RedisStreams, encode_result
from wf78_core.config import EngineSettings

pytestmark = pytest.mark.anyio

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def raw() -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(URL, decode_responses=True)
    yield client
    await client.aclose()


async def settled(
    engine: Engine, run_id: str, statuses: tuple[str, ...] = ("succeeded",), within: float = 10.0
) -> Run:
    """The run once its status is one of ``statuses`` (polled: another process may be the
    one that finishes it)."""
    with anyio.fail_after(within):
        for _ in itertools.count():
            run = await engine.fetch_run(run_id)
            if run.status in statuses:
                break
            await anyio.sleep(0.02)
    return run


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


def workflow(id: str, *tasks: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": id, "tasks": list(tasks), **fields}


def task(id: str, action: str = "probe.record", **fields: Any) -> dict[str, Any]:
    return {"id": id, "action": action, **fields}


DAG = workflow(
    "dag",
    task("a"),
    task("b", depends_on=["a"]),
    task("c", depends_on=["a"]),
    task("d", "probe.fail", depends_on=["b", "c"], params={"times": 0}),
)


async def test_a_dag_runs_through_redis_and_keeps_its_results(
    namespace: str, probe: Probe, raw: redis.asyncio.Redis
) -> None:
    async with Engine(config(namespace, DAG), plugins=[probe]) as engine:
        run = await engine.run("dag", {"label": "x"})
        assert run.status == "succeeded"
        assert {t.id: t.state for t in run.tasks.values()} == dict.fromkeys("abcd", "succeeded")
        assert run.results == {"a": "x", "b": "x", "c": "x", "d": 1}
        assert run.context == {"label": "x"}
        assert run.started is not None and run.finished is not None
        assert run.finished >= run.started
        # b and c ran after a, d after both (fan-in)
        order = [t for _, t in probe.calls]
        assert order[0] == "a" and sorted(order[1:3]) == ["b", "c"]
        again = await engine.fetch_run(run.id)
        assert again == run
        ttl = await raw.ttl(f"wf78:{{{namespace}}}:run:{run.id}")
        assert 0 < ttl <= 86_400  # kept run_ttl after it finished
        assert await engine.backend.finished_runs() == 1  # type: ignore[attr-defined]
        with pytest.raises(Wf78Error, match="fetch_run"):
            engine.get_run(run.id)
        with pytest.raises(Wf78Error, match="fetch_recent_runs"):
            engine.recent_runs()
        assert [r.id for r in await engine.fetch_recent_runs(5)] == [run.id]


async def test_a_process_that_only_queues_waits_for_one_that_works(
    namespace: str, probe: Probe
) -> None:
    flow = workflow("one", task("a"))
    async with (
        Engine(config(namespace, flow, consume=False), plugins=[probe]) as front,
        Engine(config(namespace, flow), plugins=[probe]) as back,
    ):
        assert front.worker is None and back.worker is not None
        started = await front.run("one", {"label": "far"}, wait=False)
        assert started.status == "running"
        assert started.tasks["a"].state == "pending"
        done = await front.run("one", {"label": "near"})
        assert done.status == "succeeded" and done.results == {"a": "near"}
        await settled(front, started.id)
        assert back.worker.completed == 2


async def test_a_failed_task_skips_its_dependants_and_becomes_a_dead_letter(
    namespace: str, probe: Probe
) -> None:
    flow = workflow(
        "failing",
        task("a", "probe.fail", retry=1, params={"times": 2}),
        task("b", depends_on=["a"]),
        task("c", depends_on=["b"]),
        task("side"),
    )
    async with Engine(config(namespace, flow, retry_backoff=0.001), plugins=[probe]) as engine:
        run = await engine.run("failing")
        assert run.status == "failed"
        assert run.tasks["a"].state == "failed"
        assert run.tasks["a"].attempts == 2  # the first try and one retry
        assert "planned failure 2" in (run.tasks["a"].error or "")
        assert run.tasks["b"].state == "skipped"
        assert run.tasks["b"].error == "dependency 'a' did not succeed"
        assert run.tasks["c"].error == "dependency 'b' did not succeed"
        assert run.tasks["side"].state == "succeeded"
        assert run.error == "task 'a': RuntimeError: planned failure 2"
        letters = await engine.fetch_dead_letters()
        assert [(d.run_id, d.task, d.attempts) for d in letters] == [(run.id, "a", 2)]
        assert engine.dead_letters() == letters
        with pytest.raises(Wf78Error, match="unknown dead letter"):
            await engine.retry_dead_letter("nope")
        # Retried: the task runs again (probe.fail now succeeds), b and c follow.
        reopened = await engine.retry_dead_letter(letters[0].id)
        assert reopened.id == run.id and reopened.status == "running"
        assert reopened.tasks["side"].state == "succeeded"  # kept, not run again
        again = await settled(engine, run.id)
        assert {t.id: t.state for t in again.tasks.values()} == dict.fromkeys(
            ["a", "b", "c", "side"], "succeeded"
        )
        assert again.results["a"] == 3 and again.error is None
        assert await engine.fetch_dead_letters() == []
        assert [label for _, label in probe.calls].count("side") == 1
        with pytest.raises(Wf78Error, match="unknown dead letter"):
            await engine.retry_dead_letter(letters[0].id)


async def test_a_retry_that_succeeds_counts_its_attempts(namespace: str, probe: Probe) -> None:
    flow = workflow("flaky", task("a", "probe.fail", retry=2, params={"times": 1}))
    async with Engine(config(namespace, flow, retry_backoff=0.001), plugins=[probe]) as engine:
        run = await engine.run("flaky")
    assert run.status == "succeeded"
    assert run.tasks["a"].attempts == 2 and run.results == {"a": 2}


async def test_results_and_contexts_must_be_json(namespace: str, probe: Probe) -> None:
    class Odd:
        @hookimpl
        def wf78_register_actions(self, registry: Any) -> None:
            registry.add("odd", lambda ctx: object())

    flow = workflow("odd", task("a", "odd"))
    async with Engine(config(namespace, flow), plugins=[Odd()]) as engine:
        run = await engine.run("odd")
        assert run.status == "failed"
        assert "ResultNotStorable" in (run.tasks["a"].error or "")
        with pytest.raises(Wf78Error, match="JSON"):
            await engine.run("odd", {"when": object()})


async def test_cancel_drops_what_was_queued(namespace: str, probe: Probe) -> None:
    flow = workflow(
        "held",
        task("a", "probe.wait", params={"gate": "g"}),
        task("b", depends_on=["a"]),
    )
    async with Engine(config(namespace, flow), plugins=[probe]) as engine:
        started = await engine.run("held", wait=False)
        await probe.started("a")
        cancelled = await engine.cancel(started.id)
        assert cancelled.status == "cancelled"
        assert {t.state for t in cancelled.tasks.values()} == {"cancelled"}
        probe.gate("g").set()
        worker = engine.worker
        assert worker is not None
        with anyio.fail_after(5):
            for _ in itertools.count():
                if not worker.busy:
                    break
                await anyio.sleep(0.01)
        after = await engine.fetch_run(started.id)
        assert after.status == "cancelled"  # what a returned after the cancel was dropped
        assert [t for _, t in probe.calls] == ["a"]
        with pytest.raises(Wf78Error, match="unknown run"):
            await engine.cancel("nope")


async def test_max_concurrent_holds_with_leases(
    namespace: str, probe: Probe, raw: redis.asyncio.Redis
) -> None:
    flow = workflow("two", task("a", "probe.wait", params={"gate": "g"}), max_concurrent=2)
    async with Engine(config(namespace, flow, worker_slots=10), plugins=[probe]) as engine:
        ids = [(await engine.run("two", wait=False)).id for _ in range(6)]
        await probe.started("a", 2)
        await anyio.sleep(0.2)
        assert probe.peak == 2
        lease = f"wf78:{{{namespace}}}:lease:two"
        assert await raw.zcard(lease) == 2
        assert await raw.zcard(f"wf78:{{{namespace}}}:wait:two") == 4
        probe.gate("g").set()
        for run_id in ids:
            await settled(engine, run_id)
        assert probe.peak == 2
        assert await raw.zcard(lease) == 0


async def test_priority_then_aging_decide_what_is_taken_next(namespace: str, probe: Probe) -> None:
    flows = (
        workflow("block", task("a", "probe.wait", params={"gate": "g"}), priority=0),
        workflow("low", task("a"), priority=5),
        workflow("high", task("a"), priority=1),
    )
    async with Engine(config(namespace, *flows, worker_slots=1), plugins=[probe]) as engine:
        await engine.run("block", wait=False)
        await probe.started("a")
        for i in range(3):
            await engine.run("low", {"label": f"low{i}"}, wait=False)
            await engine.run("high", {"label": f"high{i}"}, wait=False)
        probe.gate("g").set()
        await probe.until(lambda: len(probe.calls) == 7)
    labels = [label for label, _ in probe.calls[1:]]
    assert labels == ["high0", "high1", "high2", "low0", "low1", "low2"]


async def test_aging_lets_an_old_task_overtake(namespace: str, probe: Probe) -> None:
    flows = (
        workflow("block", task("a", "probe.wait", params={"gate": "g"}), priority=0),
        workflow("low", task("a"), priority=5),
        workflow("high", task("a"), priority=1),
    )
    settings = {"worker_slots": 1, "aging_seconds": 0.05}
    async with Engine(config(namespace, *flows, **settings), plugins=[probe]) as engine:
        await engine.run("block", wait=False)
        await probe.started("a")
        await engine.run("low", {"label": "old-low"}, wait=False)
        await anyio.sleep(0.5)  # 10 aging steps: level 5 counts as -5
        await engine.run("high", {"label": "new-high"}, wait=False)
        probe.gate("g").set()
        await probe.until(lambda: len(probe.calls) == 3)
    assert [label for label, _ in probe.calls[1:]] == ["old-low", "new-high"]


async def test_a_dead_workers_task_is_taken_over(namespace: str, probe: Probe) -> None:
    flow = workflow("one", task("a"))
    settings = config(namespace, flow)
    async with Engine(settings, plugins=[probe]) as engine:
        assert engine.worker is not None
        engine.worker.stop()  # this engine's own worker takes nothing new
        await anyio.sleep(0.05)
        started = await engine.run("one", wait=False)
        # Another "worker" takes the task and dies without a heartbeat.
        ghost = RedisStreams(engine.settings, engine.config.workflows)
        async with anyio.create_task_group() as group:
            await group.start(ghost.run)
            taken = await ghost.take(["*"], 5)
            assert [t.run_id for t in taken] == [started.id]
            group.cancel_scope.cancel()
        # A live worker takes it over once the ghost's heartbeat is missing.
        async with Engine(settings, plugins=[probe]) as rescuer:
            run = await settled(rescuer, started.id)
            assert run.tasks["a"].attempts == 2  # the ghost's delivery and the rescue
            assert rescuer.backend.reclaimed >= 1  # type: ignore[attr-defined]


async def test_a_worker_killed_mid_batch_loses_nothing(namespace: str, probe: Probe) -> None:
    """A worker takes a batch, reports part of it (one grouped COMPLETE) and dies: every
    entry it still held is taken over and run by another; none is lost or run twice."""
    flow = workflow("one", task("a"), max_concurrent=100)
    settings = config(namespace, flow)
    async with Engine(settings, plugins=[probe]) as engine:
        assert engine.worker is not None
        engine.worker.stop()  # this engine's own worker takes nothing new
        await anyio.sleep(0.05)
        ids = [(await engine.run("one", {"label": f"r{i}"}, wait=False)).id for i in range(20)]
        ghost = RedisStreams(engine.settings, engine.config.workflows)
        async with anyio.create_task_group() as group:
            await group.start(ghost.run)
            taken = await ghost.take(["*"], 50)
            assert sorted(t.run_id for t in taken) == sorted(ids)  # one batch, all of them
            done = Completion(outcome="succeeded", result=encode_result("ghost"))
            async with anyio.create_task_group() as reports:  # grouped into one call
                for one in taken[:5]:
                    reports.start_soon(ghost.complete, one, done)
            group.cancel_scope.cancel()  # dies holding the other 15, no heartbeat left
    async with Engine(settings, plugins=[probe]) as rescuer:
        runs = {run_id: await settled(rescuer, run_id) for run_id in ids}
    reported = {t.run_id for t in taken[:5]}
    assert {run.status for run in runs.values()} == {"succeeded"}
    assert {i for i, run in runs.items() if run.results["a"] == "ghost"} == reported
    assert all(runs[i].tasks["a"].attempts == 1 for i in reported)
    assert all(runs[i].tasks["a"].attempts == 2 for i in set(ids) - reported)
    # The rescuer ran exactly the 15 the ghost held, each once.
    assert sorted(label for label, _ in probe.calls) == sorted(
        runs[i].context["label"] for i in set(ids) - reported
    )


async def test_an_entry_delivered_too_often_is_a_poison_dead_letter(
    namespace: str, probe: Probe
) -> None:
    flow = workflow("one", task("a"), task("b", depends_on=["a"]))
    settings = config(namespace, flow, max_deliveries=1)
    async with Engine(settings, plugins=[probe]) as engine:
        assert engine.worker is not None
        engine.worker.stop()
        await anyio.sleep(0.05)
        started = await engine.run("one", wait=False)
        ghost = RedisStreams(engine.settings, engine.config.workflows)
        async with anyio.create_task_group() as group:
            await group.start(ghost.run)
            assert len(await ghost.take(["*"], 5)) == 1
            group.cancel_scope.cancel()
        async with Engine(settings, plugins=[probe]) as rescuer:
            run = await settled(rescuer, started.id, ("failed", "succeeded"))
            assert run.status == "failed"
            assert "PoisonTask: delivered 2 times" in (run.tasks["a"].error or "")
            assert run.tasks["b"].state == "skipped"
            assert probe.calls == []  # the poison entry never ran
            letters = await rescuer.fetch_dead_letters()
            assert [d.task for d in letters] == ["a"]


async def test_the_reconciler_drops_leases_that_drifted(
    namespace: str, probe: Probe, raw: redis.asyncio.Redis
) -> None:
    flow = workflow("solo", task("a"), max_concurrent=1)
    async with Engine(config(namespace, flow), plugins=[probe]) as engine:
        await engine.run("solo")  # the workflow is known to Redis
        # A lease whose task is gone (say, a stream flushed by hand) blocks the workflow.
        await raw.zadd(f"wf78:{{{namespace}}}:lease:solo", {"lost\x1fa": float("inf")})
        run = await engine.run("solo", wait=False)
        assert (await engine.fetch_run(run.id)).tasks["a"].state == "queued"
        await settled(engine, run.id)
        assert engine.backend.repaired >= 1  # type: ignore[attr-defined]


async def test_a_schedule_runs_once_per_tick_across_processes(
    namespace: str, probe: Probe, raw: redis.asyncio.Redis
) -> None:
    flow = workflow("tick", task("a"), trigger="schedule", schedule=0.2)
    settings = config(namespace, flow)
    began = time.time()
    async with Engine(settings, plugins=[probe]), Engine(settings, plugins=[probe]):
        await anyio.sleep(1.3)
    ticks = (time.time() - began) / 0.2
    started = int(await raw.hget(f"wf78:{{{namespace}}}:stats", "runs_started") or 0)
    assert 4 <= started <= ticks + 1  # two engines, one run per tick


async def test_leaving_lets_held_tasks_finish(namespace: str, probe: Probe) -> None:
    flow = workflow("held", task("a", "probe.wait", params={"gate": "g"}))
    engine = Engine(config(namespace, flow), plugins=[probe])
    async with engine:
        started = await engine.run("held", wait=False)
        await probe.started("a")

        async def release() -> None:
            await anyio.sleep(0.2)
            probe.gate("g").set()

        async with anyio.create_task_group() as group:
            group.start_soon(release)
    async with Engine(config(namespace, flow, consume=False), plugins=[probe]) as reader:
        assert (await reader.fetch_run(started.id)).status == "succeeded"


async def test_bad_backend_settings_name_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="backend_namespace"):
        Engine({"engine": {"backend": "redis", "backend_namespace": "a b"}})
    with pytest.raises(ConfigError, match="backend_url"):
        Engine({"engine": {"backend": "redis", "backend_url": "http://x"}})
    with pytest.raises(ConfigError, match="lease_ttl"):
        Engine({"engine": {"backend": "redis", "lease_ttl": 0}})
    with pytest.raises(ConfigError, match="backend"):
        Engine({"engine": {"backend": "kafka"}})
    assert EngineSettings(backend="redis").backend_namespace == "wf78"


async def test_an_unreachable_backend_fails_start_up_clearly(namespace: str) -> None:
    engine = Engine(config(namespace, backend_url="redis://127.0.0.1:1/0"))
    with pytest.raises(Wf78Error, match=r"redis://127\.0\.0\.1:1/0 does not answer"):
        async with engine:
            pass


async def test_the_admin_api_serves_runs_from_redis(namespace: str, probe: Probe) -> None:
    settings = config(namespace, workflow("one", task("a")))
    settings["auth"] = {"tokens": {"root": {"uid": "1", "cid": "1", "roles": ["admin"]}}}

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})

    app = Wf78Middleware(inner, engine=Engine(settings, plugins=[probe]))
    headers = {"Authorization": "Bearer root"}
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client,
    ):
        answer = await client.post("/_wf78/runs", json={"workflow": "one"}, headers=headers)
        assert answer.status_code == 202, answer.text
        run_id = answer.json()["run_id"]
        with anyio.fail_after(5):
            while True:
                got = await client.get(f"/_wf78/runs/{run_id}", headers=headers)
                assert got.status_code == 200
                if got.json()["status"] == "succeeded":
                    break
                await anyio.sleep(0.02)
        listed = await client.get("/_wf78/runs", headers=headers)
        assert [r["id"] for r in listed.json()["runs"]] == [run_id]
        missing = await client.get("/_wf78/runs/nope", headers=headers)
        assert missing.status_code == 404
        status = await client.get("/_wf78/status", headers=headers)
        assert status.status_code == 200
        letters = await client.get("/_wf78/dead-letters", headers=headers)
        assert letters.json() == {"dead_letters": []}


def test_the_worker_command_needs_the_redis_backend(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "memory.toml"
    path.write_text('[engine]\nbackend = "memory"\n')
    assert main(["worker", "--config", str(path)]) == 2
    assert 'needs [engine] backend = "redis"' in capsys.readouterr().err
    assert main(["worker", "--config", str(path), "--plugin", "no.such.module"]) == 2
    assert "cannot be imported" in capsys.readouterr().err


async def test_stats_show_the_shared_queue(namespace: str, probe: Probe) -> None:
    flows = (
        workflow("block", task("a", "probe.wait", params={"gate": "g"}), priority=0),
        workflow("later", task("a"), priority=3),
    )
    async with Engine(config(namespace, *flows, worker_slots=1), plugins=[probe]) as engine:
        await engine.run("block", wait=False)
        await probe.started("a")
        for _ in range(4):
            await engine.run("later", wait=False)
        backend = engine.backend
        assert isinstance(backend, RedisBackend)
        assert await backend.depths() == {3: 4}
        stats = engine.stats()
        assert stats.queued == {3: 4}
        assert stats.running == 1
        assert {w.id: w.running for w in stats.workflows} == {"block": 1, "later": 0}
        probe.gate("g").set()
        await probe.until(lambda: len(probe.calls) == 5)


class Nap:
    """Actions that take a little while: ``nap`` sleeps ``params["s"]`` and counts itself."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        async def nap(ctx: Any) -> str:
            await anyio.sleep(float(ctx.params.get("s", 0.05)))
            self.calls.append((ctx.run_id, ctx.task.id))
            return ctx.task.id

        registry.add("nap", nap)


async def test_a_redis_restart_loses_no_accepted_run() -> None:
    """Redis (append-only, fsync per write) restarted while a worker runs 300 accepted
    two-task runs: the worker, its listener and its reports ride it out and every run
    finishes."""
    flow = workflow("pair", task("a", "nap"), task("b", "nap", depends_on=["a"]))
    naps = Nap()
    with RedisServer() as server:
        settings = config("restart", flow, backend_url=server.url, worker_slots=20)
        async with Engine(settings, plugins=[naps]) as engine:
            assert engine.backend is not None
            ids = [(await engine.run("pair", wait=False)).id for _ in range(300)]
            for _ in range(100):
                if len(naps.calls) >= 60:
                    break
                await anyio.sleep(0.02)
            assert await engine.backend.finished_runs() < 300  # the restart comes mid-way
            await anyio.to_thread.run_sync(lambda: server.restart(down_for=1.0))
            for run_id in ids:
                for _ in range(100):  # the first reads after the restart may still fail (503)
                    try:
                        run = await settled(engine, run_id, within=30)
                        break
                    except BackendUnavailable:
                        await anyio.sleep(0.1)
                assert run.status == "succeeded"
            assert await engine.backend.finished_runs() == 300
    ran = {(run_id, task) for run_id, task in naps.calls}
    assert ran == {(run_id, t) for run_id in ids for t in "ab"}  # at least once each
