"""Redis Cluster: every key the Redis Streams backend touches, by a script or directly,
carries the namespace's hash tag, so a namespace lives in one hash slot and every
multi-key script runs whole on the node that owns it.

Two checks. (1) On a private redis-server, ``MONITOR`` records every command of a
workload that goes through every script and every direct command of the backend (a DAG
with fan-out and fan-in, a failure, a dead letter retried, a cancel, leases with a wait
set, a dead worker's task taken over, the reconciler, depths, idempotency keys, a
scheduled tick, the node lease); ``COMMAND GETKEYS`` names each command's keys, and each
must carry the tag ``{namespace}``. (2) A real Redis Cluster of three masters
(``redis-server --cluster-enabled yes`` on free ports, joined by ``redis-cli --cluster
create``) runs a DAG through the node that owns the namespace's slot: a script that
touched a key of another node's slot would fail there ("non local key").
"""

from __future__ import annotations

import random
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest
import redis
import redis.asyncio
from conftest import Probe
from servers import RedisServer
from test_streams import DAG, settled, task, workflow

from wf78_core import Engine
from wf78_core.cluster.nodes import NodeLease
from wf78_core.cluster.streams import RedisStreams

pytestmark = pytest.mark.anyio

# A MONITOR line: time, [db source], then the command's arguments, each quoted.
_ARGUMENT = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)")
_NAMED = {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b"}


def _unescape(text: str) -> bytes:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code.startswith("x") and len(code) == 3:
            return chr(int(code[1:], 16))
        return _NAMED.get(code, code.encode()).decode("latin-1")

    return _ESCAPE.sub(one, text).encode("latin-1")


def hash_tag(key: bytes) -> bytes:
    """The part of ``key`` Redis Cluster hashes: between the first ``{`` and the next
    ``}`` when that is not empty, else the whole key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def config(url: str, namespace: str, *workflows: dict[str, Any], **engine: Any) -> dict[str, Any]:
    settings = {
        "backend": "redis",
        "backend_url": url,
        "backend_namespace": namespace,
        "lease_ttl": 0.6,
        "claim_margin": 0.2,
        "aging_seconds": 0,
        "retry_backoff": 0.001,
        **engine,
    }
    return {"engine": settings, "workflows": list(workflows)}


async def _workload(url: str, namespace: str, probe: Probe) -> None:
    """Every script and every direct command the backend sends."""
    failing = workflow(
        "failing",
        task("a", "probe.fail", params={"times": 1}),
        task("b", depends_on=["a"]),
    )
    held = workflow("held", task("a", "probe.wait", params={"gate": "g"}), max_concurrent=1)
    settings = config(url, namespace, DAG, failing, held, workflow("one", task("a")))
    async with Engine(settings, plugins=[probe]) as engine:
        assert (await engine.run("dag", {"label": "x"})).status == "succeeded"
        keyed = await engine.run("dag", {"label": "y"}, idempotency_key="k1")
        assert (await engine.run("dag", {"label": "y"}, idempotency_key="k1")).id == keyed.id
        failed = await engine.run("failing")
        assert failed.status == "failed"
        letters = await engine.fetch_dead_letters()
        await engine.retry_dead_letter(letters[0].id)
        await settled(engine, failed.id)
        waiting = [(await engine.run("held", wait=False)).id for _ in range(3)]
        await probe.started("a", 1)
        await anyio.sleep(0.5)  # heartbeats, maintenance (reclaim, reconcile), depths
        await engine.cancel(waiting[0])
        probe.gate("g").set()
        for run_id in waiting[1:]:
            await settled(engine, run_id)
        assert [r.id for r in await engine.fetch_recent_runs(3)]
        assert await engine.backend.streams.claim_tick("one", 1.0)  # type: ignore[attr-defined]
        # A dead worker's task, taken over.
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
        await settled(rescuer, started.id)
        await rescuer.backend.depths()  # type: ignore[attr-defined]
        await rescuer.backend.streams.reconcile()  # type: ignore[attr-defined]
    lease = NodeLease(url, namespace)
    await lease.acquire()
    await lease.release()


async def _record(server: RedisServer, into: list[list[bytes]], ready: anyio.Event) -> None:
    client = redis.asyncio.Redis(host=server.host, port=server.port)
    try:
        async with client.monitor() as monitor:
            ready.set()
            while True:
                line = await monitor.connection.read_response()
                text = line.decode("latin-1") if isinstance(line, bytes) else str(line)
                if "]" not in text:
                    continue  # "OK" of MONITOR itself
                into.append([_unescape(a) for a in _ARGUMENT.findall(text.split("]", 1)[1])])
    finally:
        await client.aclose()


async def test_every_key_the_backend_touches_carries_the_namespace_tag(
    tmp_path: Path, probe: Probe
) -> None:
    namespace = f"slot{uuid4().hex[:10]}"
    commands: list[list[bytes]] = []
    with RedisServer(tmp_path / "redis", appendonly=False) as server:
        async with anyio.create_task_group() as group:
            ready = anyio.Event()
            group.start_soon(_record, server, commands, ready)
            await ready.wait()
            await _workload(server.url, namespace, probe)
            await anyio.sleep(0.2)  # the last commands reach the monitor
            group.cancel_scope.cancel()
        client = server.client()
        names: set[str] = set()
        strays: list[str] = []
        checked = 0
        for command in commands:
            name = command[0].decode().upper()
            names.add(name)
            try:
                keys = client.command_getkeys(*command)
            except redis.ResponseError:
                continue  # no key arguments (TIME, PING, PUBLISH, SUBSCRIBE, INFO, ...)
            for found in keys:
                key = found.encode("latin-1") if isinstance(found, str) else found
                checked += 1
                if hash_tag(key) != namespace.encode():
                    strays.append(f"{name} {key!r}")
        client.close()
    assert not strays, f"keys outside the {{{namespace}}} slot: {strays[:10]}"
    # The workload went through every script and the commands sent without one.
    assert checked > 200
    for expected in ("EVALSHA", "XADD", "XREADGROUP", "XACK", "XCLAIM", "XAUTOCLAIM", "HGETALL"):
        assert expected in names, f"the workload sent no {expected}"


def test_hash_tag_follows_redis_cluster_rules() -> None:
    assert hash_tag(b"wf78:{ns}:run:1") == b"ns"
    assert hash_tag(b"wf78:{}:x{ns}") == b"wf78:{}:x{ns}"  # an empty first tag: the whole key
    assert hash_tag(b"plain") == b"plain"


# -- a real Redis Cluster ------------------------------------------------------------------


class _ClusterNode(RedisServer):
    """A ``redis-server --cluster-enabled yes`` of its own, no persistence."""

    def _command(self) -> list[str]:
        return [
            *super()._command(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(Path(self.directory) / "nodes.conf"),
            "--cluster-node-timeout",
            "5000",
        ]


def _cluster_port() -> int:
    """A free port a cluster node can take: at most 55535 (its bus is the port + 10000),
    with the bus port free as well."""
    for _ in range(200):
        port = random.randint(20_000, 55_000)
        if all(_free(candidate) for candidate in (port, port + 10_000)):
            return port
    raise AssertionError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[_ClusterNode]]:
    cli = shutil.which("redis-cli")
    assert cli is not None, "redis-cli is needed to create the cluster"
    nodes = [
        _ClusterNode(tmp_path / f"node{i}", _cluster_port(), appendonly=False) for i in range(3)
    ]
    try:
        for node in nodes:
            node.start()
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"{node.host}:{node.port}" for node in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for node in nodes:
            client = node.client()
            for _ in range(200):
                if client.cluster("info")["cluster_state"] == "ok":
                    break
                anyio.run(anyio.sleep, 0.05)
            client.close()
        yield nodes
    finally:
        for node in nodes:
            node.close()


def _owner(nodes: list[_ClusterNode], namespace: str) -> _ClusterNode:
    client = nodes[0].client()
    slot = int(client.execute_command("CLUSTER", "KEYSLOT", f"wf78:{{{namespace}}}:stats"))
    ranges = client.execute_command("CLUSTER", "SLOTS")
    client.close()
    for first, last, master, *_ in ranges:
        if first <= slot <= last:
            port = int(master[1])
            return next(node for node in nodes if node.port == port)
    raise AssertionError(f"no node serves slot {slot}")


async def test_a_dag_runs_on_a_real_redis_cluster(
    cluster: list[_ClusterNode], probe: Probe
) -> None:
    namespace = f"clu{uuid4().hex[:10]}"
    owner = _owner(cluster, namespace)
    others = [node for node in cluster if node is not owner]
    # A key of another node's slot, touched by a script on the owner, fails (Redis
    # checks what scripts touch in cluster mode): what the test relies on.
    probe_client = owner.client()
    with pytest.raises(redis.ResponseError):
        for index in range(64):
            key = f"stray{index}"
            probe_client.eval("return redis.call('GET', ARGV[1])", 1, f"{{{namespace}}}x", key)
    probe_client.close()
    flow = workflow(
        "fan",
        task("a"),
        *(task(f"b{i}", depends_on=["a"]) for i in range(4)),
        task("c", depends_on=[f"b{i}" for i in range(4)]),
    )
    async with Engine(config(owner.url, namespace, flow), plugins=[probe]) as engine:
        runs = [await engine.run("fan", {"label": str(i)}) for i in range(3)]
        assert {run.status for run in runs} == {"succeeded"}
        assert all(run.tasks["c"].state == "succeeded" for run in runs)
        assert await engine.backend.finished_runs() == 3  # type: ignore[attr-defined]
    # Nothing of the namespace landed on the other masters.
    for node in others:
        client = node.client()
        assert list(client.scan_iter(match=f"wf78:{{{namespace}}}:*")) == []
        client.close()
