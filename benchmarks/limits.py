"""B17 limit accuracy: :data:`KEYS` keys each sending at twice their limit's rate for
:data:`SECONDS` seconds; each key's allowed requests against ``rate x time + burst``.

``one_process``  one engine (the in-process limits): each key a task asking
                 ``engine.limits.enter`` every ``1 / (2 x rate)`` seconds on a fixed schedule.
``two_processes`` two engines in two processes, the redis backend on the shared Redis
                 (``WF78_BENCH_REDIS``, default ``redis://127.0.0.1:6379/0``, a fresh
                 namespace per run): each process sends every key at its rate, so together
                 twice it; the allowed counts of both are added per key.

Reports the expected count per key, every key's allowed count and the largest deviation
from the expected count in percent (the bar: within 5%).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from benchmarks._harness import Measurement, case_main
from benchmarks.run import ROOT
from wf78_core import Engine, RateLimited
from wf78_core.config import Identity

KEYS = 10
RATE = 10.0
BURST = 10
SECONDS = 10.0
REDIS = os.environ.get("WF78_BENCH_REDIS", "redis://127.0.0.1:6379/0")
NAMESPACE_ENV = "WF78_BENCH_LIMIT_NAMESPACE"


def _config(namespace: str | None) -> dict[str, Any]:
    engine: dict[str, Any] = {"journal": "memory"}
    if namespace is not None:
        engine |= {"backend": "redis", "backend_url": REDIS, "backend_namespace": namespace}
    return {
        "engine": engine,
        "tables": {"items": {"columns": ["name"], "owner": "cid"}},
        "limits": {"api": {"rate": RATE, "burst": BURST}},
    }


async def _send(engine: Engine, rate: float, start_at: float) -> list[int]:
    """Every key at ``rate`` requests per second from ``start_at`` (loop time) for SECONDS:
    each request its own task, started on schedule however long the last one takes (a
    slow store must not slow the senders down: that would lower the rate sent)."""
    loop = asyncio.get_running_loop()
    allowed = [0] * KEYS

    async def one(index: int, identity: Identity) -> None:
        try:
            admitted = await engine.limits.enter(identity, "items", "mAdd")
        except RateLimited:
            return
        allowed[index] += 1
        await admitted.leave()

    async def key(index: int) -> None:
        identity = Identity(cid=f"key-{index}")
        every = 1.0 / rate
        due = start_at + index * every / KEYS
        end = start_at + SECONDS
        async with asyncio.TaskGroup() as group:
            while due < end:
                await asyncio.sleep(max(0.0, due - loop.time()))
                due += every
                group.create_task(one(index, identity))

    await asyncio.gather(*(key(index) for index in range(KEYS)))
    return allowed


def _report(allowed: list[int]) -> Measurement:
    expected = RATE * SECONDS + BURST
    deviation = max(abs(count - expected) / expected * 100 for count in allowed)
    return {
        "keys": KEYS,
        "rate": RATE,
        "burst": BURST,
        "seconds": SECONDS,
        "expected_per_key": expected,
        "allowed_per_key": allowed,
        "max_deviation_pct": deviation,
    }


async def one_process(args: argparse.Namespace) -> Measurement:
    async with Engine(_config(None)) as engine:
        loop = asyncio.get_running_loop()
        return _report(await _send(engine, 2 * RATE, loop.time() + 0.1))


async def half(args: argparse.Namespace) -> Measurement:
    """One of the two processes of ``two_processes`` (started by it): says ``ready`` once
    its engine is up, then reads the wall-clock moment both start sending at."""
    async with Engine(_config(os.environ[NAMESPACE_ENV])) as engine:
        print("ready", flush=True)
        start = float(await asyncio.to_thread(sys.stdin.readline))
        loop = asyncio.get_running_loop()
        # The parent staggers the halves by half a period: their arrivals interleave.
        allowed = await _send(engine, RATE, loop.time() + start - time.time())
        return {"allowed": allowed, "backend_errors": engine.stats().limits[0].backend_errors}


async def two_processes(args: argparse.Namespace) -> Measurement:
    env = {**os.environ, NAMESPACE_ENV: f"bench-limits-{uuid.uuid4().hex[:12]}"}
    command = [sys.executable, "-m", "benchmarks.limits", "half"]
    processes = [
        subprocess.Popen(  # noqa: ASYNC220 - both must run at once, this process waits
            command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for process in processes:  # both engines up before either sends
        assert process.stdout is not None
        line = await asyncio.to_thread(process.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"a half did not start: {line!r}")
    start = time.time() + 0.5
    allowed = [0] * KEYS
    errors = 0
    for index, process in enumerate(processes):
        assert process.stdin is not None
        process.stdin.write(repr(start + index / RATE / 2) + "\n")
        process.stdin.flush()
    for process in processes:
        output, _ = await asyncio.to_thread(process.communicate, timeout=SECONDS + 120)
        if process.returncode:
            raise RuntimeError(f"a half exited with {process.returncode}")
        line = next(line for line in output.splitlines() if line.startswith("wf78-bench-result: "))
        answer = json.loads(line.partition(": ")[2])
        allowed = [mine + theirs for mine, theirs in zip(allowed, answer["allowed"], strict=True)]
        errors += answer["backend_errors"]
    return _report(allowed) | {"processes": 2, "backend_errors": errors}


CASES = {"one_process": one_process, "two_processes": two_processes, "half": half}

if __name__ == "__main__":
    case_main(CASES, description=__doc__ or "", default_n=1)
