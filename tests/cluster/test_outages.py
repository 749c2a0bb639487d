"""The redis backend while Redis is away: every failure to reach it answers 503 with
``Retry-After`` and the envelope, a start whose reply was lost is neither doubled nor
reported as failed, and work lost with a restart is taken over within a lease."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from outage_util import ReplyCutter, config, settled, workflow
from servers import RedisServer

from wf78_core import BackendUnavailable, Engine, Wf78Middleware, hookimpl
from wf78_core.cluster.streams import RedisStreams, shown_url
from wf78_core.config import EngineSettings

pytestmark = pytest.mark.anyio

ADMIN = {"Authorization": "Bearer root"}
MARK = "cut-this-reply"


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


@asynccontextmanager
async def served(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """The admin routes of ``engine`` (a bug answers a plain 500 here, as a server would)."""
    app = Wf78Middleware(_inner, engine=engine)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://t", headers=ADMIN) as client,
    ):
        yield client


def stored_runs(server: RedisServer, namespace: str) -> set[str]:
    client = server.client()
    try:
        keys = client.keys(f"wf78:{{{namespace}}}:run:*")
    finally:
        client.close()
    return {key.decode().rpartition(":")[2] for key in keys}


def assert_unavailable(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 503, (answer.status_code, answer.text)
    assert int(answer.headers["retry-after"]) >= 1
    body: dict[str, Any] = answer.json()
    assert body["res"] == -503 and body["kind"] == "unavailable", body
    assert "redis backend" in body["errmsg"], body
    return body


async def test_a_start_whose_reply_was_lost_is_neither_doubled_nor_refused() -> None:
    """Redis stored the run and the connection broke before its answer: the start is
    retried under the same run id, which Redis recognises, and the caller gets that run."""
    flow = workflow("one")
    with RedisServer() as server:
        async with ReplyCutter(server.port, MARK.encode()) as proxy:
            settings = config(proxy.url, "lost", flow)
            engine = Engine(settings)
            async with served(engine) as client:
                await engine.run("one")  # the scripts are loaded now
                run = await engine.run("one", {"mark": MARK}, wait=False)
                assert proxy.cut == 1
                assert (await settled(engine, run.id, within=10)).status == "succeeded"
                assert len(stored_runs(server, "lost")) == 2
                # Through HTTP: a 202 with the one run stored.
                answer = await client.post(
                    "/_wf78/runs", json={"workflow": "one", "context": {"mark": MARK + "2"}}
                )
                assert answer.status_code == 202, answer.text
                assert len(stored_runs(server, "lost")) == 3
                assert answer.json()["run_id"] in stored_runs(server, "lost")


async def test_every_route_answers_503_while_redis_is_down() -> None:
    flow = workflow("one", trigger="event", event="ping")
    api = workflow("api")
    with RedisServer() as server:
        engine = Engine(config(server.url, "down", flow, api))
        async with served(engine) as client:
            started = await engine.run("api")
            await anyio.to_thread.run_sync(lambda: server.stop(kill=True))
            attempts = [
                client.post("/_wf78/runs", json={"workflow": "api"}),
                client.get(f"/_wf78/runs/{started.id}"),
                client.get("/_wf78/runs"),
                client.post(f"/_wf78/runs/{started.id}/cancel"),
                client.post("/_wf78/events/ping", json={}),
                client.get("/_wf78/dead-letters"),
                client.post("/_wf78/dead-letters/nope/retry"),
            ]
            for number, attempt in enumerate(attempts):
                body = assert_unavailable(await attempt)
                assert "6379" not in body["errmsg"]  # the private server's url, no other
                if number not in (0, 4):  # only a start (a run, an event's run) names a
                    assert body["back"] is None, body  # run, when it may have reached Redis
            # Once the connections open before the kill are gone, every connection is
            # refused: the start surely reached nothing and names no run.
            for _ in range(40):
                body = assert_unavailable(
                    await client.post("/_wf78/runs", json={"workflow": "api"})
                )
                if body["back"] is None:
                    break
                assert body["back"]["run_id"] in body["errmsg"]
            assert body["back"] is None and "try again" in body["errmsg"], body
            with pytest.raises(BackendUnavailable, match="redis backend") as caught:
                await engine.run("api", wait=False)
            assert caught.value.retry_after >= 1
            status = await client.get("/_wf78/status")  # from what was last read
            assert status.status_code == 200
            await anyio.to_thread.run_sync(server.start)
            with anyio.fail_after(10):
                for _ in itertools.count():
                    answer = await client.post("/_wf78/runs", json={"workflow": "api"})
                    if answer.status_code == 202:
                        break
                    assert_unavailable(answer)
                    await anyio.sleep(0.1)


async def test_redis_killed_for_two_seconds_under_starts() -> None:
    """Clients keep starting runs while Redis is killed and comes back two seconds later:
    every answer is a 202 or a 503 with the envelope; every run Redis holds was answered
    202, or named in a 503 that says its start could not be confirmed; every 202 is kept."""
    flow = workflow("one")
    with RedisServer() as server:
        engine = Engine(config(server.url, "kill", flow))
        accepted: set[str] = set()
        unconfirmed: set[str] = set()
        statuses: list[int] = []
        async with served(engine) as client:

            async def starter(until: float) -> None:
                while time.monotonic() < until:
                    answer = await client.post("/_wf78/runs", json={"workflow": "one"})
                    statuses.append(answer.status_code)
                    if answer.status_code == 202:
                        accepted.add(answer.json()["run_id"])
                        continue
                    body = assert_unavailable(answer)
                    if body["back"] and body["back"].get("run_id"):
                        unconfirmed.add(body["back"]["run_id"])
                    await anyio.sleep(0.05)

            def outage() -> None:
                time.sleep(0.5)
                server.stop(kill=True)
                time.sleep(2.0)
                server.start()

            until = time.monotonic() + 4.0
            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(starter, until)
                await anyio.to_thread.run_sync(outage)
            stored = stored_runs(server, "kill")
            assert 503 in statuses and statuses.count(202) > 50, statuses
            assert set(statuses) <= {202, 503}, statuses
            assert accepted <= stored
            assert stored <= accepted | unconfirmed
            for run_id in accepted:
                assert (await settled(engine, run_id, within=20)).status == "succeeded"


class Gate:
    """``gate.wait`` records each call and waits for ``gate.open`` (once open, runs through)."""

    def __init__(self) -> None:
        self.calls = 0
        self.open = anyio.Event()

    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        async def wait(ctx: Any) -> str:
            self.calls += 1
            await self.open.wait()
            return "done"

        registry.add("gate.wait", wait)


async def test_work_lost_with_a_redis_restart_is_taken_over_within_a_lease() -> None:
    """Redis comes back from a snapshot taken while the task was held: the entry is still
    delivered to the live worker, which has finished it since and holds nothing. It is
    taken over within claim_margin plus a lease, not after the task's budget (here ten
    seconds times six attempts)."""
    flow = {
        "id": "slow",
        "tasks": [{"id": "a", "action": "gate.wait", "timeout": 10, "retry": 5}],
    }
    gate = Gate()
    with RedisServer(appendonly=False) as server:
        settings = config(server.url, "lost", flow)
        async with Engine(settings, plugins=[gate]) as engine:
            run = await engine.run("slow", wait=False)
            with anyio.fail_after(5):
                for _ in itertools.count():
                    if gate.calls:
                        break
                    await anyio.sleep(0.01)
            snapshot = server.client()
            snapshot.save()  # the entry is delivered and running in this snapshot
            snapshot.close()
            gate.open.set()
            assert (await settled(engine, run.id, within=5)).status == "succeeded"
            await anyio.to_thread.run_sync(lambda: server.restart(down_for=0.2))
            back = time.monotonic()
            finished = await settled(engine, run.id, within=8)
            assert finished.status == "succeeded"
            # claim_margin 0.2 + lease_ttl 0.6, found by maintenance every 0.3 s
            assert time.monotonic() - back < 4.0
            assert gate.calls == 2


async def test_a_long_task_on_a_live_worker_is_not_taken_over() -> None:
    """The other side of a short takeover: a task running for many leases on a live
    worker keeps its entry (the heartbeat marks it in progress) and runs once."""
    flow = {
        "id": "long",
        "tasks": [{"id": "a", "action": "gate.wait", "timeout": 30}],
    }
    gate = Gate()
    with RedisServer() as server:
        settings = config(server.url, "long", flow)
        async with (
            Engine(settings, plugins=[gate]) as engine,
            Engine(settings, plugins=[gate]) as other,
        ):
            run = await engine.run("long", wait=False)
            await anyio.sleep(3.0)  # five leases, ten maintenance rounds of each worker
            gate.open.set()
            finished = await settled(engine, run.id, within=5)
            assert (finished.status, finished.tasks["a"].attempts, gate.calls) == (
                "succeeded",
                1,
                1,
            )
            reclaimed = [e.backend.reclaimed for e in (engine, other)]  # type: ignore[attr-defined]
            assert reclaimed == [0, 0]


def test_messages_show_the_backend_url_without_its_password() -> None:
    url = "redis://user:s3cret@10.0.0.5:6380/2?password=s3cret"
    assert shown_url(url) == "redis://10.0.0.5:6380/2"
    assert shown_url("rediss://:s3cret@[::1]/0") == "rediss://[::1]/0"
    streams = RedisStreams(EngineSettings(backend="redis", backend_url=url), [])
    error = streams.unreachable(ConnectionError("refused"), "r1")
    assert "s3cret" not in str(error) and "redis://10.0.0.5:6380/2" in str(error)
    assert (error.run_id, error.retry_after) == ("r1", 1.0)
