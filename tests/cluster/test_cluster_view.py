"""What one process sees of and does to the whole cluster on the redis backend: a cancel
interrupts tasks running on other workers, ``engine.stats()`` counts every process's runs,
and ``wf78 worker --ready-file`` tells a supervisor when it takes work."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from conftest import Probe

from wf78_core import Engine, Wf78Middleware
from wf78_core.cluster.backend import RedisBackend

pytestmark = pytest.mark.anyio

URL = "redis://127.0.0.1:6379/0"
TESTS = Path(__file__).resolve().parent.parent


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


async def eventually(condition: Callable[[], bool], within: float, what: str) -> None:
    with anyio.fail_after(within):
        for _ in itertools.count():
            if condition():
                return
            await anyio.sleep(0.02)
    raise AssertionError(what)


# -- cancel ----------------------------------------------------------------------------------

HELD = workflow("held", task("a", "probe.hang"), task("b", depends_on=["a"]))


@pytest.mark.parametrize("heard", ["bell", "heartbeat"])
async def test_cancel_interrupts_a_task_running_on_another_worker(
    namespace: str, probe: Probe, heard: str
) -> None:
    """The front process (it runs no tasks) cancels a run whose task hangs on a worker
    in another engine: the worker hears it on the bell (or, had that message been lost,
    finds it with its next heartbeat) and interrupts the task."""
    async with (
        Engine(config(namespace, HELD, consume=False), plugins=[probe]) as front,
        Engine(config(namespace, HELD), plugins=[probe]) as working,
    ):
        worker = working.worker
        assert worker is not None and front.worker is None
        if heard == "heartbeat":
            worker.backend.cancel_listeners.clear()  # as if the bell's message was lost
        run = await front.run("held", wait=False)
        await probe.started("a")
        assert worker.busy == 1
        cancelled = await front.cancel(run.id)
        assert cancelled.status == "cancelled"
        await eventually(lambda: worker.busy == 0, 2.0, "the hanging task was interrupted")
        assert worker.cancelled == 1
        assert ("a", "cancelled") in probe.states(run.id)
        after = await front.fetch_run(run.id)
        assert after.status == "cancelled"
        assert {t.state for t in after.tasks.values()} == {"cancelled"}
        # The entry went back and the lease was released: the workflow runs again.
        again = await front.run("held", wait=False)
        await probe.started("a", 2)
        await front.cancel(again.id)
        await eventually(lambda: worker.busy == 0, 2.0, "the second task was interrupted")


# -- stats -----------------------------------------------------------------------------------


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


async def test_stats_count_the_runs_of_the_whole_cluster(namespace: str, probe: Probe) -> None:
    """A front process that runs no task sees the cluster's queued, running and finished
    runs in ``engine.stats()`` and ``GET {prefix}/status``."""
    flows = (
        workflow("gated", task("a", "probe.wait", params={"gate": "g"}), priority=0),
        workflow("quick", task("a"), priority=3),
    )
    front_config = config(namespace, *flows, consume=False)
    front_config["auth"] = {"tokens": {"root": {"uid": "1", "cid": "1", "roles": ["admin"]}}}
    front = Engine(front_config, plugins=[probe])
    app = Wf78Middleware(_inner, engine=front)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client,
        Engine(config(namespace, *flows, worker_slots=1), plugins=[probe]) as working,
    ):
        for _ in range(3):
            await front.run("quick")  # run by the other engine's worker
        await front.run("gated", wait=False)
        await probe.started("a")  # the worker's one slot is taken
        for _ in range(4):
            await front.run("quick", wait=False)

        def counted() -> bool:
            stats = front.stats()
            return (stats.runs_finished, stats.runs_active, stats.queued) == (3, 5, {3: 4})

        await eventually(counted, 5.0, f"the cluster's runs counted: {front.stats()}")
        assert {w.id: w.running for w in front.stats().workflows} == {"gated": 1, "quick": 0}
        status = await client.get("/_wf78/status", headers={"Authorization": "Bearer root"})
        assert status.status_code == 200
        assert (status.json()["runs_finished"], status.json()["runs_active"]) == (3, 5)
        probe.gate("g").set()
        await eventually(
            lambda: (front.stats().runs_finished, front.stats().runs_active) == (8, 0),
            5.0,
            "every run finished",
        )
        await eventually(lambda: working.stats().runs_finished == 8, 5.0, "the worker agrees")
        assert isinstance(working.backend, RedisBackend)


# -- the ready file --------------------------------------------------------------------------


def test_the_worker_writes_a_ready_file_and_removes_it(tmp_path: Path, namespace: str) -> None:
    path = tmp_path / "worker.json"
    path.write_text(json.dumps(config(namespace, workflow("one", task("a", "noop")))))
    ready = tmp_path / "ready" / "worker.ready"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WF78_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "wf78_core.cli", "worker", "--config", str(path)]
    refused = subprocess.run(
        [*command, "--ready-file", str(ready)], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert "--ready-file" in refused.stderr and "does not exist" in refused.stderr
    ready.parent.mkdir()
    worker = subprocess.Popen(
        [*command, "--ready-file", str(ready), "--log-level", "warning"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "no ready file within 30 s"
            time.sleep(0.05)
        described = json.loads(ready.read_text())
        assert described["pid"] == worker.pid
        assert described["slots"] == 100 and "*" in described["capabilities"]
        assert described["consumer"].split(":")[-2] == str(worker.pid)
        assert [p.name for p in ready.parent.iterdir()] == ["worker.ready"]  # no partial file
        os.kill(worker.pid, signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        assert not ready.exists()
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
        if worker.stderr is not None:
            worker.stderr.close()
