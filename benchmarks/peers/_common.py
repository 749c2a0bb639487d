"""What every system's runner shares: its command line, worker processes, batching, output.

A runner is ``python -m benchmarks.peers.<system>_runner drive --n N --workers W --db D``.
It empties its own Redis logical database, starts ``W`` worker processes and waits until each
has said it is ready, then times from the first enqueue to the moment the system's own
completion state says all ``N`` tasks are done, checks the work, stops the workers, empties
the database again and prints one line ``wf78-bench-result: {json}``.

Only the standard library and ``redis.asyncio`` here: the arq and SAQ runners import this
module in their own virtualenv, ``.venv/redis5`` (arq pins ``redis < 6``, ``saq[redis]``
``redis < 8``; this project's lock has redis 8), which has neither wf78's dependencies nor
taskiq.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.run import RESULT_PREFIX, ROOT

__all__ = [
    "BATCH",
    "CONCURRENCY_VARIABLE",
    "DATABASES",
    "PORT_VARIABLE",
    "READY",
    "REDIS_HOST",
    "REDIS_PORT",
    "URL_VARIABLE",
    "WINDOW",
    "Client",
    "Drive",
    "Measurement",
    "WorkerPlan",
    "concurrency",
    "enqueue_in_batches",
    "ready_line",
    "redis_url",
    "runner_main",
    "wait_until",
    "worker_environment",
]

REDIS_HOST = "127.0.0.1"
# The Redis every case uses: ``python -m benchmarks.peers`` starts a private redis-server on a
# free port and names it here, so nobody else's load counts in its INFO figures.
PORT_VARIABLE = "WF78_PEERS_REDIS_PORT"
REDIS_PORT = int(os.environ.get(PORT_VARIABLE, "6379"))
# The only logical databases a runner may empty (FLUSHDB): one per system, so systems never
# share keys and db 0 (the test suite's, everyone's default) is never touched.
DATABASES = {"wf78": 9, "saq": 10, "arq": 11, "taskiq": 12, "wf78-dag": 13}
# Tasks enqueued concurrently, each batch through one asyncio.gather (the check's batches).
BATCH = 500
# Enqueues in flight: a steady window, each slot enqueuing its next task as its last returns
# (the shape of requests arriving one by one): the same for every system.
WINDOW = 100
# The peers' workers print this from their own start-up hook; wf78's worker logs "worker ready".
READY = "peers-bench worker ready"
# How a worker process learns its Redis URL (the peers' settings are module-level objects).
URL_VARIABLE = "WF78_PEERS_REDIS_URL"
# And how many tasks it runs at once, when --concurrency overrides the runner's setting.
CONCURRENCY_VARIABLE = "WF78_PEERS_CONCURRENCY"
READY_TIMEOUT = 60.0
POLL_SECONDS = 0.005
STOP_SECONDS = 5.0
# A worker log line like these means something went wrong (a task not found, a crash).
TROUBLE = re.compile(r"traceback|error|warning|exception|not found", re.IGNORECASE)

Measurement = dict[str, Any]
# What a connected client gives the measurement: enqueue task i, "are all done?", and the
# check made after the clock stops (it returns what it counted, for the report).
Client = tuple[
    Callable[[int], Awaitable[object]],
    Callable[[], Awaitable[bool]],
    Callable[[], Awaitable[Measurement]],
]


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def worker_environment(args: argparse.Namespace) -> dict[str, str]:
    """What a peer's worker process reads at import: its database, and --concurrency."""
    variables = {URL_VARIABLE: redis_url(args.db)}
    if args.concurrency is not None:
        variables[CONCURRENCY_VARIABLE] = str(args.concurrency)
    return variables


def concurrency(default: int) -> int:
    """The worker's tasks at once: --concurrency if given, else the runner's setting."""
    return int(os.environ.get(CONCURRENCY_VARIABLE, default))


def ready_line() -> None:
    """Print the readiness marker; the peers' start-up hooks call this."""
    print(READY, file=sys.stderr, flush=True)


@dataclass
class WorkerPlan:
    """How to start one worker process of a system and how it says it is ready."""

    command: Sequence[str]
    ready_text: str = READY
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Drive:
    """One system's side of a measurement: how its workers start, how tasks go in, when
    they are all done, and what to check afterwards."""

    system: str
    worker: Callable[[argparse.Namespace, Path], WorkerPlan]
    # An async context giving a connected :data:`Client`.
    client: Callable[[argparse.Namespace, Path], AbstractAsyncContextManager[Client]]
    # Distributions whose versions the result names.
    packages: Sequence[str] = ()
    # Tasks each enqueued item runs (a workflow run of several tasks): the per-task
    # figures and tasks/s count tasks, N items times this.
    tasks_per_item: int = 1


def environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This tree first on the path, whatever interpreter runs the worker."""
    paths = [str(ROOT), str(ROOT / "plugins")]
    inherited = os.environ.get("PYTHONPATH")
    if inherited:
        paths.append(inherited)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


@contextmanager
def worker_processes(
    plan: WorkerPlan, count: int, folder: Path
) -> Iterator[tuple[Callable[[], None], list[int]]]:
    """Start ``count`` worker processes, wait until each has printed its ready text on
    stderr, and stop them (SIGTERM, then SIGKILL) afterwards. Their output goes to files,
    never to pipes, so a worker never waits for its reader. Yields a check that raises when
    a worker has exited, and the workers' process ids (each leads its own session)."""
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []
    env = environment(plan.environment)
    try:
        for index in range(count):
            log = folder / f"worker-{index}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    list(plan.command),
                    cwd=ROOT,
                    env=env,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            processes.append((process, log))
        deadline = time.monotonic() + READY_TIMEOUT
        waiting = list(processes)
        while waiting:
            for process, log in list(waiting):
                if plan.ready_text in log.read_text(errors="replace"):
                    waiting.remove((process, log))
                elif process.poll() is not None:
                    raise RuntimeError(
                        f"worker exited {process.returncode} before it was ready: " + _tail(log)
                    )
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(
                    f"worker not ready after {READY_TIMEOUT:.0f}s: {_tail(waiting[0][1])}"
                )
            time.sleep(0.05)

        def alive() -> None:
            """Raise when a worker has exited or logged trouble."""
            for process, log in processes:
                if process.poll() is not None:
                    raise RuntimeError(f"worker exited {process.returncode}: {_tail(log)}")
                trouble = [line for line in _lines(log) if TROUBLE.search(line)]
                if trouble:
                    raise RuntimeError(f"worker {process.pid} logged: " + "\n".join(trouble[:5]))

        yield alive, [process.pid for process, _ in processes]
    finally:
        for process, _ in processes:
            _signal_group(process, signal.SIGTERM)
        for process, _ in processes:
            # taskiq's worker waits for its blocked stream read before it stops; nothing is
            # measured any more, so a worker still there after a few seconds is killed.
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=10)


def _signal_group(process: subprocess.Popen[bytes], number: int) -> None:
    """Signal the worker and any children it started (taskiq's CLI forks its worker)."""
    try:
        os.killpg(process.pid, number)
    except ProcessLookupError:
        pass


def _lines(log: Path) -> list[str]:
    try:
        return log.read_text(errors="replace").splitlines()
    except OSError:
        return ["(no log)"]


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(_lines(log)[-lines:])


async def enqueue_in_batches(enqueue: Callable[[int], Awaitable[object]], total: int) -> None:
    """``enqueue(i)`` for every ``i < total``, :data:`BATCH` at a time through one gather."""
    for start in range(0, total, BATCH):
        await asyncio.gather(*(enqueue(i) for i in range(start, min(start + BATCH, total))))


async def enqueue_steadily(
    enqueue: Callable[[int], Awaitable[object]], total: int, window: int = WINDOW
) -> None:
    """``enqueue(i)`` for every ``i < total``, at most ``window`` in flight: each of
    ``window`` senders enqueues its next task as soon as its last one returned."""
    numbers = iter(range(total))

    async def sender() -> None:
        for index in numbers:
            await enqueue(index)

    await asyncio.gather(*(sender() for _ in range(min(window, total))))


async def redis_info() -> dict[str, float]:
    """What the Redis server has spent so far: CPU seconds (``used_cpu_sys +
    used_cpu_user``), commands run (``INFO commandstats`` calls, those run by scripts
    included), commands received from clients (``total_commands_processed``), reads from
    client sockets (``total_reads_processed``: round trips, a pipeline being one) and bytes
    in and out."""
    import redis.asyncio as aioredis

    client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        info = await client.info("all")
    finally:
        await client.aclose()
    commands = sum(
        float(value["calls"])
        for name, value in info.items()
        if name.startswith("cmdstat_") and isinstance(value, dict)
    )
    return {
        "cpu_s": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        "commands": commands,
        "commands_processed": float(info["total_commands_processed"]),
        "round_trips": float(info.get("total_reads_processed", 0)),
        "bytes": float(info["total_net_input_bytes"]) + float(info["total_net_output_bytes"]),
    }


def session_cpu(sessions: Sequence[int]) -> float:
    """CPU seconds (user + system) spent so far by every live process of these sessions
    (each worker starts its own; taskiq's command forks its worker inside it)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    wanted = set(sessions)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state ppid pgrp session ... utime(12) stime(13)
        if int(fields[3]) in wanted:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


async def wait_until(
    done: Callable[[], Awaitable[bool]], limit: float, alive: Callable[[], None]
) -> int:
    """Poll ``done()`` every few milliseconds until it is true or ``limit`` seconds have
    passed; ``alive()`` (looked at once a second) raises when a worker has died. Returns
    how many polls it made (each one Redis command, taken off the per-task figures)."""
    deadline = time.monotonic() + limit
    next_look = 0.0
    polls = 1
    while not await done():
        polls += 1
        if time.monotonic() > next_look:
            alive()
            next_look = time.monotonic() + 1.0
        if time.monotonic() > deadline:
            raise TimeoutError(f"tasks not finished after {limit:.0f}s")
        await asyncio.sleep(POLL_SECONDS)
    return polls


async def flush_database(db: int) -> None:
    """Empty this system's own logical database, and only one of those."""
    if db not in DATABASES.values():
        raise SystemExit(f"refusing to FLUSHDB {db}: not one of {sorted(DATABASES.values())}")
    import redis.asyncio as aioredis

    client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def measure(drive: Drive, args: argparse.Namespace) -> Measurement:
    await flush_database(args.db)
    try:
        with tempfile.TemporaryDirectory(prefix=f"peers-{drive.system}-") as name:
            folder = Path(name)
            plan = drive.worker(args, folder)
            with worker_processes(plan, args.workers, folder) as (alive, sessions):
                async with drive.client(args, folder) as (enqueue, done, check):
                    redis_before = await redis_info()
                    workers_before = session_cpu(sessions)
                    own_before = time.process_time()
                    began = time.perf_counter()
                    if args.window:
                        await enqueue_steadily(enqueue, args.n, args.window)
                    else:
                        await enqueue_in_batches(enqueue, args.n)
                    enqueued = time.perf_counter() - began
                    polls = await wait_until(done, args.timeout, alive)
                    seconds = time.perf_counter() - began
                    own = time.process_time() - own_before
                    workers = session_cpu(sessions) - workers_before
                    redis_after = await redis_info()
                    checked: Measurement = await check()
                    alive()
    finally:
        await flush_database(args.db)
    spent = {key: redis_after[key] - redis_before[key] for key in redis_before}
    # The completion polls (one command each) are the benchmark's, not the system's.
    for key in ("commands", "commands_processed", "round_trips"):
        spent[key] = max(0.0, spent[key] - polls)
    tasks = args.n * drive.tasks_per_item
    per_task = {
        "redis_cpu_us": spent["cpu_s"] * 1e6 / tasks,
        "redis_commands": spent["commands"] / tasks,
        "redis_commands_from_clients": spent["commands_processed"] / tasks,
        "redis_round_trips": spent["round_trips"] / tasks,
        "redis_bytes": spent["bytes"] / tasks,
        "worker_cpu_us": workers * 1e6 / tasks,
        "enqueuer_cpu_us": own * 1e6 / tasks,
    }
    return {
        "system": drive.system,
        "n": args.n,
        "workers": args.workers,
        "seconds": seconds,
        "tasks": tasks,
        "tasks_per_s": tasks / seconds,
        "enqueue_seconds": enqueued,
        "window": args.window,
        "per_task": per_task,
        "polls": polls,
        "checked": checked,
        "concurrency": args.concurrency,
        "versions": {name: _version(name) for name in (*drive.packages, "redis", "hiredis")},
        "python": sys.executable,
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def runner_main(drive: Drive, argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=f"B11/B12: {drive.system} on Redis")
    parser.add_argument("mode", choices=["drive"])
    parser.add_argument("--n", type=int, default=20_000, help="no-op tasks")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--db", type=int, default=DATABASES[drive.system])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to finish")
    parser.add_argument(
        "--window",
        type=int,
        default=WINDOW,
        help=f"enqueues in flight, steadily (default {WINDOW}); 0: batches of {BATCH}",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        help="tasks each worker runs at once, instead of the runner's setting (peers only)",
    )
    args = parser.parse_args(argv)
    result = asyncio.run(measure(drive, args))
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
