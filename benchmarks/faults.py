"""Fault injection with the real servers: after each fault, every accepted write is there once.

    python -m benchmarks.faults [--only mariadb,redis,kill9] [--json PATH]
                                [--mariadb-stop shutdown|kill|pause] [--redis-no-aof]
                                [--kill9-rewind SECONDS]

Each scenario starts the servers it needs itself, as private processes of the real binaries
(``tests/servers.py``: its own ``mariadbd`` / ``redis-server`` on a free port and folder; the
shared servers on 3306 and 6379 are never touched), and checks the outcome in the data store
directly, not through wf78:

``mariadb``  5,000 writes accepted as workflow runs (``engine.run(..., wait=False)``, SQLite
             journal; one ``datasource.execute`` ``add`` task with ``retry`` and backoff), sent
             evenly over 10 s by a client that does not wait for one before sending the next.
             A quarter of the way through, MariaDB is shut down (SIGTERM: its orderly
             shutdown, which drops every connection; ``--mariadb-stop kill``: SIGKILL), stays
             down 5 s, and is started again on the same data directory and port
             (``--mariadb-stop pause``: SIGSTOP for 5 s, then SIGCONT). Every run must
             succeed and the table hold exactly one row per accepted write (counted by the
             ``tag`` column each write sets).
``redis``    10,000 cache operations through ``engine.submit`` with ``retry`` (9 in 10 a
             ``cache_set`` of a distinct key, 1 in 10 an ``incr`` of one of 10 counters, each
             with the engine's generated idempotency key), over 5 s; at 40 % Redis is shut
             down (``SHUTDOWN NOSAVE``), stays down 1 s and is started again on the same port
             and folder. Redis runs with ``appendonly yes`` and ``appendfsync always``, the
             configuration in which an acknowledged write survives a restart: every
             acknowledged key must hold its value and every counter equal its acknowledged
             increments.
             ``--redis-no-aof`` runs Redis without persistence instead: a restart then empties
             it, which is the server's configuration, not wf78; the check covers what was
             acknowledged after the restart and the loss is reported apart.
``kill9``    ``wf78 serve`` (a subprocess: uvicorn, SQLite source and SQLite journal in a
             temporary folder) gets 1,000 ``POST /_wf78/runs`` of a workflow whose first task
             is a slow query (a recursive CTE) and whose second adds a row; once every 202 is
             in, the run list is read and the process is killed with SIGKILL, then started
             again with the same configuration. Every run must reach ``succeeded`` on the new
             process (``GET /_wf78/runs/{id}``; a run that finished before the kill is no
             longer journaled and answers 404: its row must be there) and the SQLite file hold
             exactly one row per run. Adds that had committed before the kill but were run
             again after it (answered from ``wf78_idempotency``, not written twice) are counted.
             The window in which a kill makes a finished task run again is one journal group
             commit (milliseconds), so a plain kill rarely hits it; ``--kill9-rewind 0.5``
             widens it by putting the journal back as it was 0.5 s before the kill (what a
             journal writer stalled that long would have left; see :func:`kill9_serve`).

Every scenario prints: operations accepted, errors seen by the client, retries, outage, time
to recover, rows/keys present, missing, doubled, and a verdict. The exit status is 0 when
every verdict is PASS, 1 otherwise. ``tests/test_faults.py`` runs the same scenarios.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec

from benchmarks.run import machine
from tests.servers import MariaDB, RedisServer, free_port
from wf78_core import Engine, Operation, Result, Run

__all__ = [
    "SCENARIOS",
    "Report",
    "kill9_serve",
    "main",
    "mariadb_outage",
    "redis_restart",
    "render",
]

SCENARIOS = ("mariadb", "redis", "kill9")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# Retry settings of every scenario's writes: enough attempts, with backoff capped at
# RETRY_BACKOFF_MAX (full jitter, so about half of it on average), to outlast the outages.
RETRY_BACKOFF = 0.1
RETRY_BACKOFF_MAX = 1.0
WRITE_RETRY = 60
# How often the engine checks its sources (``[agents] health_interval``; this is the
# default): a source that failed a check leaves rotation until a check passes, so writes
# resume up to this long after the server is back.
HEALTH_INTERVAL = 5.0
# How long, after the last write was sent, the accepted ones may take to finish.
SETTLE_SECONDS = 120.0
ADMIN_TOKEN = "faults-admin-token"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
PREFIX = "/_wf78"


@dataclass
class Report:
    """What one scenario saw. ``problems`` empty means PASS."""

    scenario: str
    title: str
    accepted: int = 0
    client_errors: int = 0
    retries: str = ""
    outage: str = ""
    recovery: str = ""
    present: int = 0
    missing: int = 0
    doubled: int = 0
    #: rows or keys no client was told were accepted
    unexpected: int = 0
    #: further figures, printed under the common ones
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        return "PASS" if self.ok else "FAIL"

    def check(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)


# -- shared pieces ----------------------------------------------------------------------------


async def _paced(
    count: int, seconds: float, start: Callable[[int], Coroutine[Any, Any, None]]
) -> None:
    """``start(i)`` for every ``i < count``, evenly over ``seconds``, each in a task of its own:
    a client that sends its next write without waiting for the last one."""
    began = anyio.current_time()
    interval = seconds / count
    async with anyio.create_task_group() as group:
        for i in range(count):
            delay = began + i * interval - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)
            group.start_soon(start, i)


def _compare(report: Report, acknowledged: Iterable[str], stored: Counter[str]) -> None:
    """Fill present / missing / doubled / unexpected of ``report`` from the stored copies of
    each acknowledged write (by its tag)."""
    wanted = set(acknowledged)
    report.present = sum(1 for tag in wanted if stored[tag] >= 1)
    report.missing = len(wanted) - report.present
    report.doubled = sum(1 for tag in wanted if stored[tag] > 1)
    report.unexpected = sum(count for tag, count in stored.items() if tag not in wanted)
    report.check(report.missing == 0, f"{report.missing} acknowledged writes missing")
    report.check(report.doubled == 0, f"{report.doubled} acknowledged writes stored twice or more")
    report.check(report.unexpected == 0, f"{report.unexpected} rows no client was told about")


def _attempts(run: Run, task: str) -> int:
    """Data-path attempts of a ``datasource.execute`` task (its Result says), else 1."""
    result = run.tasks[task].result
    if isinstance(result, Result):
        return result.attempts
    if isinstance(result, dict) and isinstance(result.get("attempts"), int):
        return int(result["attempts"])
    return max(1, run.tasks[task].attempts)


def _retry_summary(attempts: Sequence[int]) -> str:
    retried = [n for n in attempts if n > 1]
    if not retried:
        return "0 (no write needed a second attempt)"
    return (
        f"{sum(n - 1 for n in retried):,} retried attempts ({len(retried):,} writes retried, "
        f"at most {max(retried)} attempts for one)"
    )


# -- MariaDB stopped during writes --------------------------------------------------------------

MARIADB_TABLE = "fault_writes"
MARIADB_STOPS = {
    "shutdown": "shut down (SIGTERM)",
    "kill": "killed (SIGKILL)",
    "pause": "paused (SIGSTOP)",
}


def _mariadb_config(url: str, folder: Path, writes: int, health: float) -> dict[str, Any]:
    return {
        "engine": {
            "journal": f"sqlite:///{folder / 'journal.db'}",
            "retry_backoff": RETRY_BACKOFF,
            "retry_backoff_max": RETRY_BACKOFF_MAX,
            "run_history": writes + 100,  # every run stays readable for the check
        },
        "agents": {"health_interval": health},
        "datasources": {
            "db": {"type": "mysql", "url": url, "create_tables": True, "connect_timeout": 2.0}
        },
        "tables": {MARIADB_TABLE: {"columns": {"tag": "text"}, "data_source": "db"}},
        "workflows": [
            {
                "id": "write",
                "max_concurrent": 500,
                "tasks": [
                    {
                        "id": "add",
                        "action": "datasource.execute",
                        "params": {"action": "add", "table": MARIADB_TABLE},
                        "retry": WRITE_RETRY,
                        "timeout": 10.0,
                    }
                ],
            }
        ],
    }


def _mysql_tags(db: MariaDB, table: str) -> Counter[str]:
    connection = db.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT tag, COUNT(*) FROM `{table}` GROUP BY tag")
            return Counter({str(tag): int(count) for tag, count in cursor.fetchall()})
    finally:
        connection.close()


async def mariadb_outage(
    *,
    writes: int = 5_000,
    seconds: float = 10.0,
    down_at: float = 0.25,
    down_for: float = 5.0,
    stop: str = "shutdown",
    health_interval: float = HEALTH_INTERVAL,
) -> Report:
    """MariaDB stopped for ``down_for`` seconds, ``down_at`` of the way through ``writes``
    workflow runs sent evenly over ``seconds``. ``stop``: ``"shutdown"`` (SIGTERM, mariadbd's
    orderly shutdown), ``"kill"`` (SIGKILL) or ``"pause"`` (SIGSTOP, then SIGCONT: the server
    hangs with every connection open)."""
    if stop not in MARIADB_STOPS:
        raise ValueError(f"stop must be one of {sorted(MARIADB_STOPS)}, got {stop!r}")
    report = Report(
        "mariadb",
        f"MariaDB {MARIADB_STOPS[stop]} for {down_for:g} s during {writes:,} writes accepted "
        "as workflow runs",
    )
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wf78-faults-") as tmp, MariaDB() as db:
        folder = Path(tmp)
        engine = Engine(_mariadb_config(db.url, folder, writes, health_interval), base_dir=folder)
        accepted: dict[str, tuple[str, float]] = {}  # tag -> (run id, accepted at)
        errors: list[str] = []
        times: dict[str, float] = {}

        async def write(i: int) -> None:
            tag = f"w{i:06d}"
            try:
                run = await engine.run("write", {"values": {"tag": tag}}, wait=False)
            except Exception as error:
                errors.append(f"{tag}: {type(error).__name__}: {error}")
            else:
                accepted[tag] = (run.id, time.time())

        async def fault() -> None:
            await anyio.sleep(seconds * down_at)
            times["stop"] = time.time()
            if stop == "pause":
                db.pause()
            else:
                await anyio.to_thread.run_sync(partial(db.stop, kill=stop == "kill"))
            times["exited"] = time.time()
            await anyio.sleep(down_for)
            times["start"] = time.time()
            if stop == "pause":
                db.resume()
                await anyio.to_thread.run_sync(db.wait_until_answers)
            else:
                await anyio.to_thread.run_sync(db.start)
            times["back"] = time.time()

        async with engine:
            async with anyio.create_task_group() as group:
                group.start_soon(fault)
                await _paced(writes, seconds, write)
            runs, unfinished = await _wait_runs(engine, [rid for rid, _ in accepted.values()])
            retries = engine.retries
        stored = await anyio.to_thread.run_sync(_mysql_tags, db, MARIADB_TABLE)

    back = times["back"]
    statuses = Counter(run.status for run in runs.values())
    attempts = [_attempts(run, "add") for run in runs.values()]
    during = sum(1 for _, at in accepted.values() if times["stop"] <= at <= back)
    backlog = [
        run.finished
        for run in runs.values()
        if run.finished is not None and run.created <= back and run.finished >= back
    ]
    report.accepted = len(accepted)
    report.client_errors = len(errors)
    report.retries = _retry_summary(attempts)
    if stop == "pause":
        phases = f"paused {down_for:g} s, answering {back - times['start']:.2f} s after SIGCONT"
    else:
        phases = (
            f"stopping {times['exited'] - times['stop']:.2f} s, down {down_for:g} s, "
            f"start-up {back - times['start']:.2f} s"
        )
    report.outage = (
        f"{back - times['stop']:.2f} s unavailable (stop signal -> answering again): {phases}"
    )
    report.recovery = (
        f"first write stored {min(backlog) - back:.2f} s after the server answered, the last "
        f"of the {len(backlog):,} writes waiting for it {max(backlog) - back:.2f} s after"
        if backlog
        else "nothing was waiting when the server answered"
    )
    report.details = {
        "accepted while MariaDB was down": during,
        "runs": dict(statuses) | ({"unfinished": len(unfinished)} if unfinished else {}),
        "engine retries counter": retries,
        "engine health checks every": f"{health_interval:g} s",
    }
    if errors:
        report.details["first client errors"] = errors[:5]
    report.check(not errors, f"{len(errors)} writes were refused to the client")
    report.check(
        statuses.get("succeeded", 0) == len(accepted),
        f"not every accepted run succeeded: {dict(statuses)}, {len(unfinished)} unfinished",
    )
    _compare(report, accepted, stored)
    report.seconds = time.monotonic() - began
    return report


async def _wait_runs(
    engine: Engine, run_ids: list[str], within: float = SETTLE_SECONDS
) -> tuple[dict[str, Run], set[str]]:
    """Wait until every run is finished (or ``within`` passed): the finished runs by id, and
    the ids still unfinished."""
    pending = set(run_ids)
    done: dict[str, Run] = {}
    deadline = anyio.current_time() + within
    while pending and anyio.current_time() < deadline:
        for run_id in list(pending):
            run = engine.get_run(run_id)
            if run.status in TERMINAL:
                done[run_id] = run
                pending.discard(run_id)
        if pending:
            await anyio.sleep(0.2)
    return done, pending


# -- Redis restarted during cache operations -----------------------------------------------------

CACHE_PREFIX = "wf78"  # the redis source's default key_prefix


def _redis_config(url: str, health: float) -> dict[str, Any]:
    return {
        "engine": {
            "journal": "off",  # engine.submit is not journaled anyway
            "retry_backoff": RETRY_BACKOFF,
            "retry_backoff_max": RETRY_BACKOFF_MAX,
        },
        "agents": {"health_interval": health},
        "datasources": {
            "cache": {
                "type": "redis",
                "url": url,
                "socket_timeout": 2.0,
                "connect_timeout": 2.0,
            }
        },
    }


def _value(i: int) -> dict[str, Any]:
    return {"i": i, "text": f"value of key {i}"}


async def redis_restart(
    *,
    operations: int = 10_000,
    seconds: float = 5.0,
    restart_at: float = 0.4,
    down_for: float = 1.0,
    counters: int = 10,
    incr_every: int = 10,
    appendonly: bool = True,
    health_interval: float = HEALTH_INTERVAL,
) -> Report:
    """Redis restarted (``SHUTDOWN NOSAVE``, ``down_for`` seconds down, started again) at
    ``restart_at`` of ``operations`` cache operations sent evenly over ``seconds``: every
    ``incr_every``-th an ``incr`` of one of ``counters`` counters, the others a ``cache_set``
    of a distinct key."""
    persistence = "appendonly yes, appendfsync always" if appendonly else "no persistence"
    report = Report(
        "redis",
        f"Redis restarted (SHUTDOWN NOSAVE + start, {persistence}) during {operations:,} "
        "cache operations",
    )
    began = time.monotonic()
    with RedisServer(appendonly=appendonly) as server:
        engine = Engine(_redis_config(server.url, health_interval))
        sent: dict[int, float] = {}  # operation -> sent at
        acknowledged: dict[int, float] = {}  # operation -> acknowledged at
        errors: list[str] = []
        attempts: list[int] = []
        times: dict[str, float] = {}

        def operation(i: int) -> Operation:
            if i % incr_every == incr_every - 1:
                counter = f"c{(i // incr_every) % counters}"
                return Operation(action="incr", key=counter, data_source="cache", retry=WRITE_RETRY)
            return Operation(
                action="cache_set",
                key=f"k{i}",
                value=_value(i),
                data_source="cache",
                retry=WRITE_RETRY,
            )

        async def send(i: int) -> None:
            sent[i] = time.time()
            try:
                result = await engine.submit(operation(i))
            except Exception as error:
                errors.append(f"{i}: {type(error).__name__}: {error}")
            else:
                acknowledged[i] = time.time()
                attempts.append(result.attempts)

        async def fault() -> None:
            await anyio.sleep(seconds * restart_at)
            times["stop"] = time.time()
            await anyio.to_thread.run_sync(server.stop)
            times["exited"] = time.time()
            await anyio.sleep(down_for)
            times["start"] = time.time()
            await anyio.to_thread.run_sync(server.start)
            times["back"] = time.time()

        async with engine:
            async with anyio.create_task_group() as group:
                group.start_soon(fault)
                await _paced(operations, seconds, send)
            retries = engine.retries
        stored, counted, keys = await anyio.to_thread.run_sync(
            _redis_state, server, operations, incr_every, counters
        )

    back = times["back"]
    # Without persistence the restart empties Redis: only what was acknowledged after it can
    # still be there. With the append-only file, everything acknowledged must be.
    checked = {i: at for i, at in acknowledged.items() if appendonly or at >= back}
    sets = [i for i in checked if i % incr_every != incr_every - 1]
    increments = Counter(
        f"c{(i // incr_every) % counters}" for i in checked if i % incr_every == incr_every - 1
    )
    report.accepted = len(acknowledged)
    report.client_errors = len(errors)
    report.retries = _retry_summary(attempts)
    report.outage = (
        f"{back - times['stop']:.2f} s unavailable (shutdown -> answering again): stopping "
        f"{times['exited'] - times['stop']:.2f} s, down {down_for:g} s, start-up and loading "
        f"{back - times['start']:.2f} s"
    )
    # Caught in the restart: sent before Redis answered again, not acknowledged before the
    # shutdown began.
    caught = [
        at - back
        for i, at in acknowledged.items()
        if sent[i] < back and at >= times["stop"] and at >= back
    ]
    first = min((at - back for at in acknowledged.values() if at >= back), default=None)
    report.recovery = (
        f"first acknowledgement {first:.2f} s after Redis answered; the last of the "
        f"{len(caught):,} operations caught in the restart {max(caught):.2f} s after it"
        if caught and first is not None
        else "no operation was caught in the restart"
    )
    wrong = [i for i in sets if i in stored and stored[i] != _value(i)]
    present_sets = [i for i in sets if i in stored and stored[i] == _value(i)]
    report.present = len(present_sets)
    report.missing = len(sets) - len(present_sets)
    report.doubled = 0
    lost_increments = sum(max(0, n - counted.get(c, 0)) for c, n in increments.items())
    extra_increments = sum(max(0, counted.get(c, 0) - n) for c, n in increments.items())
    extra_increments += sum(n for c, n in counted.items() if c not in increments)
    report.missing += lost_increments
    report.doubled += extra_increments
    acknowledged_keys = {f"k{i}" for i in acknowledged if i % incr_every != incr_every - 1}
    report.unexpected = len(keys - acknowledged_keys) if appendonly else 0
    report.details = {
        "cache_set acknowledged": len(sets),
        "keys holding their value": len(present_sets),
        "incr acknowledged": sum(increments.values()),
        f"incr counted by Redis (over {counters} counters)": sum(counted.values()),
        "engine retries counter": retries,
        "engine health checks every": f"{health_interval:g} s",
    }
    if wrong:
        report.details["keys with a wrong value"] = len(wrong)
    if not appendonly:
        lost = sum(1 for at in acknowledged.values() if at < back)
        report.details["acknowledged before the restart, lost by Redis (no persistence)"] = lost
    if errors:
        report.details["first client errors"] = errors[:5]
    report.check(not errors, f"{len(errors)} operations failed for the client")
    report.check(report.missing == 0, f"{report.missing} acknowledged writes missing or wrong")
    report.check(report.doubled == 0, f"{report.doubled} increments counted more than once")
    report.check(report.unexpected == 0, f"{report.unexpected} keys no client was told about")
    report.seconds = time.monotonic() - began
    return report


def _redis_state(
    server: RedisServer, operations: int, incr_every: int, counters: int
) -> tuple[dict[int, Any], dict[str, int], set[str]]:
    """What Redis holds, read directly: decoded values of the cache_set keys, counter values,
    and the names of every ``k...`` key there."""
    client = server.client()
    try:
        values: dict[int, Any] = {}
        indexes = [i for i in range(operations) if i % incr_every != incr_every - 1]
        for start in range(0, len(indexes), 1000):
            chunk = indexes[start : start + 1000]
            raws = client.mget([f"{CACHE_PREFIX}:cache:k{i}" for i in chunk])
            for i, raw in zip(chunk, raws, strict=True):
                if raw is not None:
                    values[i] = msgspec.json.decode(raw)
        names = [f"c{n}" for n in range(counters)]
        raws = client.mget([f"{CACHE_PREFIX}:cache:{name}" for name in names])
        counted = {name: int(raw) for name, raw in zip(names, raws, strict=True) if raw}
        keys = {
            key.decode().removeprefix(f"{CACHE_PREFIX}:cache:")
            for key in client.scan_iter(match=f"{CACHE_PREFIX}:cache:k*", count=5000)
        }
    finally:
        client.close()
    return values, counted, keys


# -- wf78 serve killed with SIGKILL while runs are in flight --------------------------------------

KILL9_TABLE = "fault_runs"
KILL9_WORKFLOW = "slow_write"

_APP = """\
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def home(request):
    return PlainTextResponse("wf78 fault injection")


app = Starlette(routes=[Route("/", home)])
"""

_CONFIG = """\
[engine]
journal = "sqlite:///{journal}"
run_history = {history}

[datasources.main]
type = "sqlite"
url = "sqlite:///{database}"

[tables.{table}]
columns = {{ tag = "text" }}
data_source = "main"

[auth.tokens.{token}]
uid = "u-faults"
cid = "faults"
uname = "faults"
roles = ["admin"]

[[workflows]]
id = "{workflow}"
max_concurrent = {max_concurrent}

# The slow first task: a query counting to {slow_rows} (CPU on a reader thread).
[[workflows.tasks]]
id = "slow"
action = "datasource.execute"
params = {{ action = "execute", data_source = "main", sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {slow_rows}) SELECT count(*) AS n FROM c" }}

[[workflows.tasks]]
id = "add"
action = "datasource.execute"
depends_on = ["slow"]
params = {{ action = "add", table = "{table}" }}
retry = 5
"""


class _Served:
    """One ``wf78 serve`` process of the scenario, started and killed by its pid only."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        command = [
            str(Path(sys.executable).with_name("wf78")),
            "serve",
            "faultapp:app",
            "--config",
            str(self.folder / "wf78.toml"),
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        with (self.folder / f"serve-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def answering(self, client: httpx.AsyncClient, within: float = 60.0) -> None:
        deadline = anyio.current_time() + within
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"wf78 serve exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                if (await client.get("/", timeout=1.0)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if anyio.current_time() > deadline:
                raise RuntimeError(f"wf78 serve did not answer within {within}s:\n{self.log()}")
            await anyio.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL, to this pid only
        self.process.wait()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (wf78 serve's graceful shutdown) and its exit status."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def log(self) -> str:
        path = self.folder / f"serve-{self.starts}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return "(no log)"


async def kill9_serve(
    *,
    runs: int = 1_000,
    concurrency: int = 32,
    max_concurrent: int = 4,
    slow_rows: int = 50_000,
    rewind: float = 0.0,
) -> Report:
    """``wf78 serve`` killed with SIGKILL once ``runs`` runs are accepted, then restarted.

    ``rewind`` > 0 widens the crash window: once every run is accepted the journal is copied
    (SQLite's backup API), the server goes on for ``rewind`` seconds, and after the kill the
    journal is put back as copied, as if its writer had stalled that long (a slow fsync).
    Only checkpoints are lost that way (they are queued, never awaited; no acceptance came
    after the copy), so every task that finished in those seconds runs again on restart,
    and every add among them must be answered from ``wf78_idempotency``, not written twice.
    """
    title = f"wf78 serve killed with SIGKILL while {runs:,} accepted runs are in flight, restarted"
    if rewind:
        title += f" (journal rewound {rewind:g} s: the crash window widened)"
    report = Report("kill9", title)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wf78-faults-") as tmp:
        folder = Path(tmp)
        database = folder / "data.db"
        journal = folder / "journal.db"
        copy = folder / "journal-copy.db"
        (folder / "faultapp.py").write_text(_APP, encoding="utf-8")
        (folder / "wf78.toml").write_text(
            _CONFIG.format(
                journal=journal,
                database=database,
                history=max(1_000, 2 * runs),
                table=KILL9_TABLE,
                token=ADMIN_TOKEN,
                workflow=KILL9_WORKFLOW,
                max_concurrent=max_concurrent,
                slow_rows=slow_rows,
            ),
            encoding="utf-8",
        )
        served = _Served(folder, free_port())
        accepted: dict[str, str] = {}  # run id -> tag
        errors: list[str] = []
        times: dict[str, float] = {}
        try:
            limits = httpx.Limits(max_connections=concurrency)
            async with httpx.AsyncClient(
                base_url=served.base, headers=ADMIN, limits=limits, timeout=30.0
            ) as client:
                served.start()
                await served.answering(client)

                async def post(i: int) -> None:
                    tag = f"r{i:06d}"
                    body = {"workflow": KILL9_WORKFLOW, "context": {"values": {"tag": tag}}}
                    try:
                        response = await client.post(f"{PREFIX}/runs", json=body)
                    except httpx.HTTPError as error:
                        errors.append(f"{tag}: {type(error).__name__}: {error}")
                        return
                    if response.status_code == 202:
                        accepted[response.json()["run_id"]] = tag
                    else:
                        errors.append(f"{tag}: {response.status_code} {response.text[:200]}")

                times["posting"] = time.time()
                await _in_parallel(post, range(runs), concurrency)
                times["posted"] = time.time()
                if rewind:
                    await anyio.to_thread.run_sync(_copy_sqlite, journal, copy)
                    await anyio.sleep(rewind)
                listed = await client.get(f"{PREFIX}/runs", params={"limit": max(1_000, 2 * runs)})
                before = {run["id"]: run["status"] for run in listed.json()["runs"]}
                times["kill"] = time.time()
                served.kill()
                if rewind:
                    for stale in (
                        journal.with_name(journal.name + "-wal"),
                        journal.with_name(journal.name + "-shm"),
                    ):
                        stale.unlink(missing_ok=True)
                    copy.replace(journal)
                times["restart"] = time.time()
                served.start()
                await served.answering(client)
                times["back"] = time.time()
                after = await _follow_runs(client, list(accepted), concurrency)
                times["settled"] = time.time()
            exit_status = served.stop()
        finally:
            if served.process is not None and served.process.poll() is None:
                served.process.kill()
                served.process.wait()
        stored, recorded = _sqlite_state(database)

    finished_before = {rid for rid, status in before.items() if status in TERMINAL}
    in_flight = [rid for rid in accepted if before.get(rid) not in TERMINAL]
    known_after = {rid: run for rid, run in after.items() if run is not None}
    forgotten = [rid for rid, run in after.items() if run is None]
    statuses = Counter(str(run["status"]) for run in known_after.values())
    replayed = [
        rid
        for rid, run in known_after.items()
        if (run["tasks"]["add"].get("started") or 0) >= times["restart"]
        and recorded.get(f"run:{rid}:add", float("inf")) < times["kill"]
    ]
    attempts = [_json_attempts(run, "add") for run in known_after.values()]
    settled = [
        run["finished"] - times["back"] for run in known_after.values() if run.get("finished")
    ]
    report.accepted = len(accepted)
    report.client_errors = len(errors)
    report.retries = (
        f"{len(replayed):,} adds ran again after the restart although they had committed "
        "before the kill (answered from wf78_idempotency, not written twice); "
        + _retry_summary(attempts)
    )
    report.outage = (
        f"{times['back'] - times['kill']:.2f} s from SIGKILL to the new process answering "
        f"({times['back'] - times['restart']:.2f} s start-up, resuming "
        f"{len(known_after):,} runs)"
    )
    report.recovery = (
        f"{max(settled):.2f} s after the new process answered, every resumed run had finished"
        if settled
        else "no run was resumed"
    )
    report.details = {
        "POSTs answered 202 in": f"{times['posted'] - times['posting']:.2f} s",
        "adds run again after the restart that had committed before the kill": len(replayed),
        "in flight at the kill": len(in_flight),
        "finished before the kill": len(finished_before & set(accepted)),
        "runs on the new process": dict(statuses),
        "unknown to the new process (finished before the kill, no longer journaled)": len(
            forgotten
        ),
        "exit status of the restarted server after SIGTERM": exit_status,
    }
    if errors:
        report.details["first client errors"] = errors[:5]
    report.check(not errors, f"{len(errors)} POSTs were not answered 202")
    report.check(bool(in_flight), "no run was in flight at the kill: the scenario proved nothing")
    report.check(
        statuses.get("succeeded", 0) == len(known_after),
        f"runs on the new process did not all succeed: {dict(statuses)}",
    )
    lost = [rid for rid in forgotten if stored[accepted[rid]] == 0]
    report.check(not lost, f"{len(lost)} runs unknown to the new process left no row (lost)")
    unsure = [rid for rid in forgotten if rid not in finished_before]
    if unsure:
        report.details["finished between the run list and the kill"] = len(unsure)
    report.check(exit_status == 0, f"the restarted server exited with {exit_status}")
    _compare(report, accepted.values(), stored)
    report.seconds = time.monotonic() - began
    return report


async def _in_parallel(
    call: Callable[[int], Awaitable[None]], items: Iterable[int], concurrency: int
) -> None:
    """``call(item)`` for every item, ``concurrency`` at a time."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await call(item)

    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(worker)


async def _follow_runs(
    client: httpx.AsyncClient, run_ids: list[str], concurrency: int
) -> dict[str, dict[str, Any] | None]:
    """``GET {prefix}/runs/{id}`` until each run is finished or unknown (None: a 404)."""
    pending = list(run_ids)
    seen: dict[str, dict[str, Any] | None] = {}
    deadline = anyio.current_time() + SETTLE_SECONDS

    async def look(index: int) -> None:
        run_id = pending[index]
        response = await client.get(f"{PREFIX}/runs/{run_id}")
        if response.status_code == 404:
            seen[run_id] = None
        elif response.status_code == 200:
            run = response.json()
            if run["status"] in TERMINAL:
                seen[run_id] = run
        else:
            raise RuntimeError(f"GET run {run_id}: {response.status_code} {response.text[:200]}")

    while pending and anyio.current_time() < deadline:
        await _in_parallel(look, range(len(pending)), concurrency)
        pending = [run_id for run_id in pending if run_id not in seen]
        if pending:
            await anyio.sleep(0.5)
    for run_id in pending:
        seen[run_id] = {"status": "unfinished", "tasks": {"add": {}}}
    return seen


def _json_attempts(run: dict[str, Any], task: str) -> int:
    result = run["tasks"][task].get("result")
    if isinstance(result, dict) and isinstance(result.get("attempts"), int):
        return int(result["attempts"])
    return 1


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database another process is writing (backup API)."""
    with closing(sqlite3.connect(source)) as origin, closing(sqlite3.connect(target)) as copy:
        origin.backup(copy)


def _sqlite_state(database: Path) -> tuple[Counter[str], dict[str, float]]:
    """Rows per tag, and when each idempotency key was recorded, read from the file."""
    with closing(sqlite3.connect(database)) as connection:
        rows = connection.execute(f"SELECT tag, COUNT(*) FROM {KILL9_TABLE} GROUP BY tag")
        stored = Counter({str(tag): int(count) for tag, count in rows})
        keys = connection.execute('SELECT "key", "created" FROM wf78_idempotency')
        recorded = {str(key): float(created) for key, created in keys}
    return stored, recorded


# -- the script --------------------------------------------------------------------------------------


def render(report: Report) -> str:
    lines = [
        f"== {report.scenario}: {report.title}",
        f"  operations accepted         {report.accepted:,}",
        f"  errors seen by the client   {report.client_errors:,}",
        f"  retries                     {report.retries}",
        f"  outage                      {report.outage}",
        f"  time to recover             {report.recovery}",
        f"  rows/keys present           {report.present:,}",
        f"  missing                     {report.missing:,}",
        f"  doubled                     {report.doubled:,}",
        f"  unexpected                  {report.unexpected:,}",
    ]
    for label, value in report.details.items():
        shown = f"{value:,}" if type(value) is int else value
        lines.append(f"  - {label}: {shown}")
    lines.append(f"  scenario time               {report.seconds:.1f} s")
    lines.append(f"  verdict                     {report.verdict}")
    lines.extend(f"    problem: {problem}" for problem in report.problems)
    return "\n".join(lines)


def _versions() -> str:
    def version(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError:
            return "?"
        return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "?"

    mariadb = version(["/usr/sbin/mariadbd", "--version"])
    redis = version(["redis-server", "--version"])
    return f"{mariadb}\n  {redis}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.faults",
        description="Fault injection with private real servers: nothing lost, nothing doubled.",
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios (default: {','.join(SCENARIOS)})",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the reports as JSON here")
    parser.add_argument(
        "--mariadb-stop",
        choices=sorted(MARIADB_STOPS),
        default="shutdown",
        help="how MariaDB is stopped: shutdown (SIGTERM, the default), kill (SIGKILL) or "
        "pause (SIGSTOP, then SIGCONT)",
    )
    parser.add_argument(
        "--kill9-rewind",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="kill9: put the journal back as it was SECONDS before the kill (a stalled "
        "journal writer), so more finished tasks run again after the restart (default 0)",
    )
    parser.add_argument(
        "--redis-no-aof",
        action="store_true",
        help="run Redis without persistence (a restart empties it; see the module's notes)",
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown or not chosen:
        parser.error(f"--only takes {', '.join(SCENARIOS)}; got {args.only!r}")
    args.scenarios = [name for name in SCENARIOS if name in chosen]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    host = machine()
    print(
        f"wf78 fault injection, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {host['nproc']} CPUs "
        f"({host['cpu_model']}), Python {host['python']}\n  {_versions()}\n"
        f"  load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    runners: dict[str, Callable[[], Awaitable[Report]]] = {
        "mariadb": partial(mariadb_outage, stop=args.mariadb_stop),
        "redis": partial(redis_restart, appendonly=not args.redis_no_aof),
        "kill9": partial(kill9_serve, rewind=args.kill9_rewind),
    }
    reports = []
    for name in args.scenarios:
        print(f"\n(running {name} ...)", file=sys.stderr, flush=True)
        report = anyio.run(runners[name])
        reports.append(report)
        print("\n" + render(report), flush=True)
    verdict = "PASS" if all(report.ok for report in reports) else "FAIL"
    print(f"\noverall: {verdict}")
    if args.json:
        payload = [asdict(report) | {"verdict": report.verdict} for report in reports]
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
