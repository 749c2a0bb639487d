"""Sustained load against a real ``wf78 serve``: errors, latency, memory, and every row kept.

    python -m benchmarks.load [--seconds 60] [--concurrency 64] [--json PATH] [--quick]

Starts ``wf78 serve examples.app:app`` (the demo app: its own routes ``/`` and ``/hello``,
the data routes of ``items`` and ``notes`` under ``/api/demo/``, the admin routes under
``/_wf78/``) as a subprocess on a free loopback port, on a SQLite file in a temporary
directory, with two known bearer tokens (an admin and a plain user, through the app's
``WF78_DEMO_*`` variables). Once it answers, ``--concurrency`` worker tasks in one anyio
task group (in this process: the client does not share the server's event loop), each
with its own ``httpx.AsyncClient`` and so one keep-alive connection, send their next
request as soon as the last one answered, for ``--seconds``, drawing from a fixed, seeded
mix (:data:`MIX`): adds, gets by id of rows the worker added, updates, upserts by id, page
reads, notes adds, the app's own routes, ``/_wf78/status``, workflow run starts and their
status, and events.

Every answer is checked: anything that is not 2xx with the expected body (``res`` 0, the
row read back has the values last acknowledged) is an error, except a 503 that carries
``Retry-After`` (deliberate back-pressure: counted apart; the worker pauses as a polite
client would). The server's RSS (psutil) and the engine's backlog (``/_wf78/status``, not
counted as traffic) are sampled every second. After the traffic the workers'
pending runs are followed to the end, the server is stopped with SIGTERM (it must exit 0,
its log must hold no traceback) and the SQLite file is read directly: every acknowledged
add, upsert and event is there exactly once with its last acknowledged values.

The verdict is FAIL on any error, any lost, doubled or wrong row, a bad server exit or
log, or RSS growing more than ``--rss-threshold`` (10 %) from the end of the warm-up to
the end of the run (judged only when at least 20 s follow the warm-up).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil  # type: ignore[import-untyped]

from benchmarks.run import ROOT, machine

__all__ = ["MIX", "LoadOptions", "main", "run_load"]

ADMIN_TOKEN = "load-admin-token"
USER_TOKEN = "load-user-token"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
USER = {"authorization": f"Bearer {USER_TOKEN}"}
WORKFLOW = "high_priority_db_ops"
# Names and messages this run writes start with this, so the check finds exactly them.
TAG = "ld"
MB = 1024 * 1024
START_SECONDS = 30.0
STOP_SECONDS = 60.0
RUNS_SETTLE_SECONDS = 15.0
# Memory is judged only when at least this much of the run follows the warm-up.
MIN_JUDGED_SECONDS = 20.0
# A polite client's pause after a 503 with Retry-After (at most this, at least 50 ms).
MAX_BACKOFF = 1.0
FIRST_ERRORS = 20
# What Load.call answers for a 404 it was told to expect.
GONE: dict[str, Any] = {"gone": True}

# Request kinds and their weights (per cent of the requests a worker draws).
MIX: dict[str, int] = {
    "items.mAdd": 24,  # POST /api/demo/items/mAdd {"pars": [name, qty, price]}
    "items.get_id": 20,  # POST /api/demo/items/get {"where": {"id": ...}} of a row it added
    "items.mUpdateByid": 12,  # POST /api/demo/items/mUpdateByid {"mid", "values": {"qty"}}
    "items.mByid": 5,  # upsert with the client's id: new, or again on its own
    "items.page": 8,  # POST /api/demo/items/get {"getstart", "getnumber": 20}
    "notes.mAdd": 5,  # as the plain user (owner = uid)
    "app.hello": 8,  # GET /hello (the app's route; it counts the caller's rows)
    "app.index": 3,  # GET /
    "admin.status": 3,  # GET /_wf78/status
    "admin.run_start": 3,  # POST /_wf78/runs {"workflow": high_priority_db_ops}
    "admin.run_get": 5,  # GET /_wf78/runs/{id} of a run the worker started
    "admin.event": 4,  # POST /_wf78/events/log -> logging_workflow writes a logs row
}
_KINDS = tuple(MIX)
_WEIGHTS = tuple(MIX.values())


@dataclass(frozen=True)
class LoadOptions:
    seconds: float = 60.0
    concurrency: int = 64
    warmup: float = 30.0
    rss_threshold: float = 0.10
    seed: int = 78
    request_timeout: float = 30.0
    keep: bool = False  # keep the temporary directory (database, server log)


# -- the server ------------------------------------------------------------------------------


class Server:
    """``wf78 serve examples.app:app`` on a free loopback port, its database and log in
    ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.db = folder / "load.db"
        self.out_path = folder / "server.out"
        self.err_path = folder / "server.err"
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.command: list[str] = []
        # After stop(): did the engine's close checkpoint the WAL into the database?
        self.wal_left: bool | None = None

    def start(self) -> None:
        script = Path(sys.executable).with_name("wf78")
        wf78 = [str(script)] if script.exists() else [sys.executable, "-m", "wf78_core.cli"]
        self.command = [
            *wf78,
            "serve",
            "examples.app:app",
            "--app-dir",
            str(ROOT),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-level",
            "warning",
        ]
        env = {
            **os.environ,
            # This tree's code first, as every benchmark case does.
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
            "WF78_DEMO_DB": str(self.db),
            "WF78_DEMO_ADMIN_TOKEN": ADMIN_TOKEN,
            "WF78_DEMO_USER_TOKEN": USER_TOKEN,
        }
        env.pop("WF78_CONFIG", None)
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.process = subprocess.Popen(
                self.command, cwd=self.folder, env=env, stdout=out, stderr=err
            )
        self.base_url = self._wait_announced()
        self._wait_answers()

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"wf78 serve exited with {self.process.returncode}:\n{self.log()[-2000:]}"
            )

    def _wait_announced(self) -> str:
        """The URL from the ``wf78 serve: ... on http://127.0.0.1:PORT`` line (--port 0)."""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            self._check_alive()
            for line in self.out_path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("wf78 serve:") and " on http://" in line:
                    return line.split(" on ", 1)[1].split()[0].rstrip(";")
            time.sleep(0.05)
        raise RuntimeError(f"wf78 serve did not start within {START_SECONDS:g}s")

    def _wait_answers(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if httpx.get(self.base_url + "/", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"wf78 serve did not answer on {self.base_url}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> int | None:
        """SIGTERM, as an operator stops it, then SIGKILL after STOP_SECONDS; the exit
        status (negative: the signal that ended it)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.wal_left = self.db.with_name(self.db.name + "-wal").exists()
        return process.returncode

    def log(self) -> str:
        parts = []
        for path in (self.out_path, self.err_path):
            if path.exists():
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(parts)


# -- what the client saw ---------------------------------------------------------------------


@dataclass
class KindStats:
    count: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    backpressure: int = 0


@dataclass
class Expected:
    """A row the server acknowledged: where it is and its last acknowledged values."""

    table: str
    id: str
    qty: int | None = None
    uncertain: bool = False  # a later write of it was not acknowledged: value unknown


@dataclass
class Ledger:
    """Everything sent that should have left a trace in the database."""

    rows: dict[str, Expected] = field(default_factory=dict)  # by name / title
    unacknowledged: set[str] = field(default_factory=set)  # writes with no clear answer
    events: set[str] = field(default_factory=set)  # acknowledged event messages
    events_unacknowledged: set[str] = field(default_factory=set)


@dataclass
class Worker:
    index: int
    rng: random.Random
    sequence: int = 0
    items: list[str] = field(default_factory=list)  # names of its acknowledged items rows
    upserts: list[str] = field(default_factory=list)  # names of its mByid rows
    runs: list[str] = field(default_factory=list)  # started runs not yet seen finished

    def name(self, kind: str) -> str:
        self.sequence += 1
        return f"{TAG}-{kind}-{self.index}-{self.sequence}"


class Load:
    """The client side: the workers, what they saw and what they expect to find."""

    def __init__(self, options: LoadOptions, base_url: str, server_pid: int) -> None:
        self.options = options
        self.base_url = base_url
        self.server = psutil.Process(server_pid)
        self.stats: dict[str, KindStats] = {kind: KindStats() for kind in _KINDS}
        self.ledger = Ledger()
        self.first_errors: list[str] = []
        self.errors = 0
        self.backpressure = 0
        self.runs: Counter[str] = Counter()  # outcomes of the runs followed
        self.rss: list[tuple[float, int]] = []  # (seconds since start, bytes)
        self.per_second: list[int] = []  # requests answered in each second
        self.backlog: list[dict[str, Any]] = []  # the engine's queues, once a second
        self._answered = 0
        self.began = 0.0
        self.elapsed = 0.0
        self.deadline = 0.0
        self.final_status: dict[str, Any] = {}
        self._tls = ssl.create_default_context()

    # -- bookkeeping -----------------------------------------------------------------------

    def error(self, kind: str, message: str) -> None:
        self.errors += 1
        self.stats[kind].errors += 1
        if len(self.first_errors) < FIRST_ERRORS:
            self.first_errors.append(f"{kind}: {message}")

    async def call(
        self,
        client: httpx.AsyncClient,
        kind: str,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any = None,
        expect: int = 200,
        gone_ok: bool = False,
    ) -> Any:
        """Send one request and time it; the decoded answer, or None when it was refused
        with back-pressure or failed (counted, and the worker paused after a 503);
        with ``gone_ok`` a 404 is no error and answers :data:`GONE`."""
        stats = self.stats[kind]
        began = time.perf_counter()
        try:
            response = await client.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as error:
            stats.count += 1
            stats.latencies.append(time.perf_counter() - began)
            stats.statuses[0] += 1
            self._answered += 1
            self.error(kind, f"{method} {path}: {type(error).__name__}: {error}")
            return None
        latency = time.perf_counter() - began
        stats.count += 1
        stats.latencies.append(latency)
        stats.statuses[response.status_code] += 1
        self._answered += 1
        status = response.status_code
        if status == 503 and "retry-after" in response.headers:
            stats.backpressure += 1
            self.backpressure += 1
            try:
                pause = float(response.headers["retry-after"])
            except ValueError:
                pause = MAX_BACKOFF
            await anyio.sleep(min(max(pause, 0.05), MAX_BACKOFF))
            return None
        if status == 404 and gone_ok:
            return GONE
        if status != expect:
            self.error(kind, f"{method} {path}: HTTP {status} {response.text[:200]}")
            return None
        if "json" not in response.headers.get("content-type", ""):
            return response.text
        try:
            data = response.json()
        except ValueError as error:
            self.error(kind, f"{method} {path}: bad JSON: {error}")
            return None
        if isinstance(data, dict) and "res" in data and data["res"] != 0:
            self.error(kind, f"{method} {path}: res {data['res']} {data.get('errmsg')}")
            return None
        return data

    # -- the mix ---------------------------------------------------------------------------

    async def one(self, client: httpx.AsyncClient, worker: Worker, kind: str) -> None:
        rng = worker.rng
        ledger = self.ledger
        body: dict[str, Any]
        if kind in ("items.get_id", "items.mUpdateByid") and not worker.items:
            kind = "items.mAdd"
        if kind == "admin.run_get" and not worker.runs:
            kind = "admin.run_start"

        if kind == "items.mAdd":
            name = worker.name("i")
            qty = rng.randint(1, 1000)
            body = {"pars": [name, qty, round(rng.uniform(1, 500), 2)]}
            data = await self.call(client, kind, "POST", "/api/demo/items/mAdd", ADMIN, body)
            if data is None:
                ledger.unacknowledged.add(name)
                return
            back = data.get("back")
            if not isinstance(back, str) or not back.isdigit():
                self.error(kind, f"mAdd answered id {back!r}")
                ledger.unacknowledged.add(name)
                return
            ledger.rows[name] = Expected("items", back, qty)
            worker.items.append(name)

        elif kind == "items.get_id":
            name = rng.choice(worker.items)
            expected = ledger.rows[name]
            body = {"where": {"id": expected.id}}
            data = await self.call(client, kind, "POST", "/api/demo/items/get", ADMIN, body)
            if data is None:
                return
            rows = data.get("back")
            if not isinstance(rows, list) or len(rows) != 1:
                self.error(kind, f"get id {expected.id}: expected 1 row, got {rows!r:.200}")
                return
            row = rows[0]
            if row.get("id") != expected.id or row.get("name") != name:
                self.error(kind, f"get id {expected.id}: wrong row {row!r:.200}")
            elif not expected.uncertain and row.get("qty") != expected.qty:
                self.error(
                    kind,
                    f"get id {expected.id}: qty {row.get('qty')!r}, "
                    f"last acknowledged {expected.qty!r} (a lost update or a stale read)",
                )

        elif kind == "items.mUpdateByid":
            name = rng.choice(worker.items)
            expected = ledger.rows[name]
            qty = rng.randint(1, 1000)
            body = {"mid": expected.id, "values": {"qty": qty}}
            data = await self.call(client, kind, "POST", "/api/demo/items/mUpdateByid", ADMIN, body)
            if data is None:
                expected.uncertain = True
                return
            expected.qty = qty

        elif kind == "items.mByid":
            if worker.upserts and rng.random() < 0.3:
                name = rng.choice(worker.upserts)
                row_id = ledger.rows[name].id
            else:
                name = worker.name("u")
                # Longer than any snowflake id (19 digits): never collides with one.
                row_id = f"78{worker.index:06d}{worker.sequence:016d}"
            qty = rng.randint(1, 1000)
            body = {"values": {"id": row_id, "name": name, "qty": qty, "price": 1.0}}
            data = await self.call(client, kind, "POST", "/api/demo/items/mByid", ADMIN, body)
            known = ledger.rows.get(name)
            if data is None:
                if known is None:
                    ledger.unacknowledged.add(name)
                else:
                    known.uncertain = True
                return
            if data.get("back") != row_id:
                self.error(kind, f"mByid {row_id}: answered {data.get('back')!r}")
            if known is None:
                ledger.rows[name] = Expected("items", row_id, qty)
                worker.upserts.append(name)
            else:
                known.qty = qty

        elif kind == "items.page":
            body = {"getstart": rng.randint(0, 200), "getnumber": 20}
            data = await self.call(client, kind, "POST", "/api/demo/items/get", ADMIN, body)
            if data is not None:
                rows = data.get("back")
                if not isinstance(rows, list) or len(rows) > 20:
                    self.error(kind, f"page: expected at most 20 rows, got {rows!r:.200}")

        elif kind == "notes.mAdd":
            title = worker.name("n")
            body = {"pars": [title, "a note from the load generator"]}
            data = await self.call(client, kind, "POST", "/api/demo/notes/mAdd", USER, body)
            if data is None:
                ledger.unacknowledged.add(title)
                return
            ledger.rows[title] = Expected("notes", str(data.get("back")))

        elif kind == "app.hello":
            data = await self.call(client, kind, "GET", "/hello", USER)
            if data is not None and (data.get("hello") != "ada" or data.get("cid") != "demo"):
                self.error(kind, f"/hello answered {data!r:.200}")

        elif kind == "app.index":
            data = await self.call(client, kind, "GET", "/", USER)
            if data is not None and "wf78 demo" not in str(data):
                self.error(kind, "/ did not answer the demo page")

        elif kind == "admin.status":
            data = await self.call(client, kind, "GET", "/_wf78/status", ADMIN)
            if data is not None and "sources" not in data:
                self.error(kind, f"status without sources: {data!r:.200}")

        elif kind == "admin.run_start":
            operation = {"action": "get", "table": "items", "limit": 5}
            body = {"workflow": WORKFLOW, "context": {"operation": operation}}
            data = await self.call(client, kind, "POST", "/_wf78/runs", ADMIN, body, expect=202)
            if data is not None:
                worker.runs.append(str(data["run_id"]))

        elif kind == "admin.run_get":
            await self.follow_run(client, worker, kind, worker.runs[0])

        elif kind == "admin.event":
            message = worker.name("e")
            body = {"values": {"level": "info", "message": message}}
            data = await self.call(
                client, kind, "POST", "/_wf78/events/log", ADMIN, body, expect=202
            )
            if data is None:
                ledger.events_unacknowledged.add(message)
                return
            if len(data.get("run_ids", ())) != 1:
                self.error(kind, f"event log started {data!r:.200}")
            ledger.events.add(message)

    async def follow_run(
        self, client: httpx.AsyncClient, worker: Worker, kind: str, run_id: str
    ) -> None:
        """GET a run the worker started: forget it once it has finished (a failed or
        cancelled run is an error), else look at it again after its other runs."""
        path = f"/_wf78/runs/{run_id}"
        data = await self.call(client, kind, "GET", path, ADMIN, gone_ok=True)
        if data is None:
            return
        worker.runs.remove(run_id)
        if data is GONE:
            # Finished and already dropped from the engine's run history (the newest
            # ``engine.run_history`` finished runs are kept; active runs always are).
            self.runs["forgotten"] += 1
            return
        status = data.get("status")
        if status in ("pending", "running"):
            worker.runs.append(run_id)
            return
        self.runs[str(status)] += 1
        if status != "succeeded":
            self.error(kind, f"run {run_id} {status}: {data.get('error')!r}")

    async def settle_runs(self, client: httpx.AsyncClient, workers: Sequence[Worker]) -> None:
        """After the traffic: follow every started run to its end."""
        deadline = time.monotonic() + RUNS_SETTLE_SECONDS
        while any(worker.runs for worker in workers) and time.monotonic() < deadline:
            for worker in workers:
                for run_id in list(worker.runs):
                    await self.follow_run(client, worker, "admin.run_get", run_id)
            await anyio.sleep(0.1)
        self.runs["unfinished"] += sum(len(worker.runs) for worker in workers)

    # -- memory ----------------------------------------------------------------------------

    def _rss(self) -> int:
        total = int(self.server.memory_info().rss)
        for child in self.server.children(recursive=True):
            try:
                total += int(child.memory_info().rss)
            except psutil.Error:
                pass
        return total

    async def sample(self, client: httpx.AsyncClient) -> None:
        """Once a second until the deadline: the server's RSS, the requests answered, and
        the engine's backlog from ``/_wf78/status`` (on a connection of its own; these
        requests are not counted)."""
        next_at = self.began
        while True:
            now = time.monotonic()
            self.rss.append((now - self.began, self._rss()))
            if now > self.began:
                self.per_second.append(self._answered)
                self._answered = 0
            await self._sample_backlog(client, now - self.began)
            if now >= self.deadline:
                return
            next_at += 1.0
            await anyio.sleep(max(0.0, min(next_at, self.deadline) - time.monotonic()))

    async def _sample_backlog(self, client: httpx.AsyncClient, at: float) -> None:
        try:
            answer = await client.get("/_wf78/status", headers=ADMIN)
            stats = answer.json()
        except (httpx.HTTPError, ValueError):
            return
        if answer.status_code != 200 or not isinstance(stats, dict):
            return
        queued = sum(int(n) for n in (stats.get("queued") or {}).values())
        self.backlog.append(
            {
                "t": round(at, 2),
                "pending": stats.get("pending"),
                "running": stats.get("running"),
                "queued": queued,
                "runs_active": stats.get("runs_active"),
            }
        )

    # -- the run ---------------------------------------------------------------------------

    def client(self, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        timeout = httpx.Timeout(self.options.request_timeout)
        # Plain HTTP: one SSL context for all clients (each would load the CA store, 45 ms).
        return httpx.AsyncClient(
            base_url=self.base_url, limits=limits, timeout=timeout, verify=self._tls
        )

    async def worker(self, client: httpx.AsyncClient, worker: Worker) -> None:
        async with client:
            while time.monotonic() < self.deadline:
                kind = worker.rng.choices(_KINDS, _WEIGHTS)[0]
                await self.one(client, worker, kind)

    async def drive(self) -> None:
        options = self.options
        workers = [
            Worker(index, random.Random(options.seed * 1000 + index))
            for index in range(options.concurrency)
        ]
        # One client, so one keep-alive connection, per worker (as ``wrk -c`` has):
        # httpcore's pool scans every connection it holds on each request, so one pool
        # shared by 64 workers costs the client more CPU than the server spends.
        clients = [self.client(1) for _ in workers]
        self.began = time.monotonic()
        self.deadline = self.began + options.seconds
        async with self.client(1) as sampler, anyio.create_task_group() as group:
            group.start_soon(self.sample, sampler)
            for client, worker in zip(clients, workers, strict=True):
                group.start_soon(self.worker, client, worker)
        self.elapsed = time.monotonic() - self.began
        async with self.client(4) as client:
            await self.settle_runs(client, workers)
            answer = await client.get("/_wf78/status", headers=ADMIN)
            if answer.status_code == 200:
                self.final_status = answer.json()


# -- checking the database -------------------------------------------------------------------


def verify(db: Path, ledger: Ledger) -> dict[str, Any]:
    """Read the database the stopped server left: every acknowledged write exactly once,
    with its last acknowledged values."""
    found: dict[str, list[tuple[str, str, Any]]] = {}
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        for table, column, value in (("items", "name", "qty"), ("notes", "title", "NULL")):
            query = f"SELECT {column}, id, {value} FROM {table} WHERE {column} LIKE ?"
            for name, row_id, qty in connection.execute(query, (f"{TAG}-%",)):
                found.setdefault(name, []).append((table, row_id, qty))
        messages = Counter(
            message
            for (message,) in connection.execute(
                "SELECT message FROM logs WHERE message LIKE ?", (f"{TAG}-%",)
            )
        )
    lost: list[str] = []
    doubled: list[str] = []
    wrong: list[str] = []
    for name, expected in ledger.rows.items():
        rows = found.get(name, [])
        if not rows:
            lost.append(name)
        elif len(rows) > 1:
            doubled.append(name)
        else:
            table, row_id, qty = rows[0]
            if table != expected.table or row_id != expected.id:
                wrong.append(
                    f"{name}: {table}/{row_id}, acknowledged {expected.table}/{expected.id}"
                )
            elif expected.qty is not None and not expected.uncertain and qty != expected.qty:
                wrong.append(f"{name}: qty {qty}, last acknowledged {expected.qty}")
    unexpected = [
        name for name in found if name not in ledger.rows and name not in ledger.unacknowledged
    ]
    unacknowledged_present = sum(1 for name in ledger.unacknowledged if name in found)
    doubled += [name for name in ledger.unacknowledged if len(found.get(name, [])) > 1]
    events_lost = [message for message in ledger.events if messages[message] == 0]
    events_doubled = [message for message, count in messages.items() if count > 1]
    events_unexpected = [
        message
        for message in messages
        if message not in ledger.events and message not in ledger.events_unacknowledged
    ]
    problems = (
        len(lost)
        + len(doubled)
        + len(wrong)
        + len(unexpected)
        + len(events_lost)
        + len(events_doubled)
        + len(events_unexpected)
    )
    return {
        "rows_acknowledged": len(ledger.rows),
        "rows_found": sum(len(rows) for rows in found.values()),
        "lost": len(lost),
        "doubled": len(doubled),
        "wrong_values": len(wrong),
        "unexpected": len(unexpected),
        "unacknowledged_sent": len(ledger.unacknowledged),
        "unacknowledged_present": unacknowledged_present,
        "events_acknowledged": len(ledger.events),
        "events_lost": len(events_lost),
        "events_doubled": len(events_doubled),
        "events_unexpected": len(events_unexpected),
        "examples": (lost + doubled + wrong + unexpected + events_lost + events_doubled)[:10],
        "ok": problems == 0,
    }


# -- figures ---------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values (None when there are none)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def latency_summary(latencies: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(latencies)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "p50_ms": ms(percentile(ordered, 0.50)),
        "p90_ms": ms(percentile(ordered, 0.90)),
        "p99_ms": ms(percentile(ordered, 0.99)),
        "max_ms": ms(ordered[-1] if ordered else None),
    }


def slope_mb_per_min(samples: Sequence[tuple[float, int]]) -> float | None:
    """Least-squares slope of RSS over time, MB per minute."""
    if len(samples) < 2:
        return None
    xs = [t for t, _ in samples]
    ys = [rss / MB for _, rss in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return None
    return 60 * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def memory_summary(load: Load, options: LoadOptions) -> dict[str, Any]:
    samples = load.rss
    after = [sample for sample in samples if sample[0] >= options.warmup] or samples[-1:]
    warm = after[0][1] if after else 0
    end = samples[-1][1] if samples else 0
    growth = (end - warm) / warm if warm else 0.0
    judged = options.seconds - options.warmup >= MIN_JUDGED_SECONDS
    slope = slope_mb_per_min(after)
    return {
        "start_mb": round(samples[0][1] / MB, 1) if samples else None,
        "warmup_s": options.warmup,
        "warmup_end_mb": round(warm / MB, 1),
        "end_mb": round(end / MB, 1),
        "peak_mb": round(max(rss for _, rss in samples) / MB, 1) if samples else None,
        "growth_pct": round(100 * growth, 2),
        "slope_mb_per_min": None if slope is None else round(slope, 3),
        "threshold_pct": round(100 * options.rss_threshold, 1),
        "judged": judged,
        "ok": (growth <= options.rss_threshold) if judged else None,
        "samples": [(round(t, 2), round(rss / MB, 2)) for t, rss in samples],
    }


def backlog_summary(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The engine's accepted-but-unfinished work over the run: a backlog that keeps
    growing is memory that keeps growing (until ``queue_size`` answers 503)."""

    def series(key: str) -> list[int]:
        return [int(sample[key]) for sample in samples if sample.get(key) is not None]

    out: dict[str, Any] = {}
    for key in ("pending", "queued", "runs_active"):
        values = series(key)
        out[f"{key}_max"] = max(values) if values else None
        out[f"{key}_end"] = values[-1] if values else None
    out["samples"] = list(samples)
    return out


def server_log_problems(log: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if "Traceback" in line or line.startswith(("ERROR", "CRITICAL"))
    ]


def report(
    load: Load,
    options: LoadOptions,
    verification: dict[str, Any],
    server: Server,
    exit_status: int | None,
    load_average: tuple[tuple[float, float, float], tuple[float, float, float]],
    cpu: dict[str, float],
) -> dict[str, Any]:
    total = sum(stats.count for stats in load.stats.values())
    everything: list[float] = []
    kinds: dict[str, Any] = {}
    for kind, stats in load.stats.items():
        everything.extend(stats.latencies)
        kinds[kind] = {
            "count": stats.count,
            "statuses": {str(code): n for code, n in sorted(stats.statuses.items())},
            "errors": stats.errors,
            "backpressure_503": stats.backpressure,
            **latency_summary(stats.latencies),
        }
    memory = memory_summary(load, options)
    log = server.log()
    log_problems = server_log_problems(log)
    warnings = sum(1 for line in log.splitlines() if line.startswith("WARNING"))
    per_second = load.per_second[1:-1] or load.per_second  # whole seconds only
    status = load.final_status
    reasons = []
    if load.errors:
        reasons.append(f"{load.errors} errors")
    if not verification["ok"]:
        reasons.append("rows lost, doubled, wrong or unexpected")
    if exit_status != 0:
        reasons.append(f"server exit status {exit_status}")
    if log_problems:
        reasons.append(f"{len(log_problems)} error lines in the server log")
    if memory["ok"] is False:
        reasons.append(f"RSS grew {memory['growth_pct']}% after warm-up")
    if total == 0:
        reasons.append("no requests answered")
    return {
        "benchmark": "load",
        "command": command_line(options),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "git": git_state(),
        "load_average": {"before": load_average[0], "after": load_average[1]},
        "server": {
            "command": " ".join(server.command),
            "exit_status": exit_status,
            "log_error_lines": log_problems[:10],
            "log_warnings": warnings,
            "wal_left_after_stop": server.wal_left,
            "engine_submitted": status.get("submitted"),
            "engine_completed": status.get("completed"),
            "engine_failed": status.get("failed"),
        },
        "cpu_seconds": cpu,
        "options": {
            "seconds": options.seconds,
            "concurrency": options.concurrency,
            "warmup": options.warmup,
            "seed": options.seed,
            "client": f"httpx.AsyncClient, {options.concurrency} worker tasks (closed loop)",
        },
        "elapsed_s": round(load.elapsed, 3),
        "requests": total,
        "requests_per_s": round(total / load.elapsed, 1) if load.elapsed else 0.0,
        "requests_per_s_min_max": [min(per_second), max(per_second)] if per_second else None,
        "errors": load.errors,
        "backpressure_503": load.backpressure,
        "first_errors": load.first_errors,
        "latency": latency_summary(everything),
        "kinds": kinds,
        "runs": dict(load.runs),
        "memory": memory,
        "backlog": backlog_summary(load.backlog),
        "verification": verification,
        "verdict": "PASS" if not reasons else "FAIL",
        "reasons": reasons,
    }


def command_line(options: LoadOptions) -> str:
    """The command that reproduces a run with these options."""
    words = ["python -m benchmarks.load", f"--seconds {options.seconds:g}"]
    words.append(f"--concurrency {options.concurrency}")
    if options.warmup != min(30.0, options.seconds / 3):
        words.append(f"--warmup {options.warmup:g}")
    if options.rss_threshold != 0.10:
        words.append(f"--rss-threshold {100 * options.rss_threshold:g}")
    if options.seed != 78:
        words.append(f"--seed {options.seed}")
    return " ".join(words)


def git_state() -> dict[str, Any]:
    """The commit and whether the tree differs from it (read without taking git's locks:
    other work may be using the repository)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", "--no-optional-locks", *args],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
        except (OSError, subprocess.CalledProcessError):
            return ""
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(result: dict[str, Any]) -> str:
    machine_info = result["machine"]
    memory = result["memory"]
    backlog = result["backlog"]
    check = result["verification"]
    server = result["server"]
    before, after = result["load_average"]["before"], result["load_average"]["after"]
    lines = [
        f"wf78 load: {result['options']['concurrency']} workers for {result['elapsed_s']:.1f}s "
        f"against wf78 serve examples.app:app (SQLite), {result['date']}",
        f"command: {result['command']}",
        f"machine: nproc {machine_info['nproc']}, {machine_info['cpu_model']}, "
        f"Python {machine_info['python']}; load average {before[0]:.2f} -> {after[0]:.2f}",
        "",
        f"{'kind':<20}{'count':>8}{'errors':>8}{'503':>6}"
        f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}  statuses",
    ]
    for kind, figures in result["kinds"].items():
        statuses = " ".join(f"{code}:{n}" for code, n in figures["statuses"].items())
        lines.append(
            f"{kind:<20}{figures['count']:>8}{figures['errors']:>8}{figures['backpressure_503']:>6}"
            f"{_ms(figures['p50_ms']):>9}{_ms(figures['p90_ms']):>9}"
            f"{_ms(figures['p99_ms']):>9}{_ms(figures['max_ms']):>9}  {statuses}"
        )
    latency = result["latency"]
    lines.append(
        f"{'all':<20}{result['requests']:>8}{result['errors']:>8}{result['backpressure_503']:>6}"
        f"{_ms(latency['p50_ms']):>9}{_ms(latency['p90_ms']):>9}"
        f"{_ms(latency['p99_ms']):>9}{_ms(latency['max_ms']):>9}"
    )
    rate_range = result["requests_per_s_min_max"]
    spread = f" (per second {rate_range[0]}-{rate_range[1]})" if rate_range else ""
    runs = ", ".join(f"{status} {n}" for status, n in sorted(result["runs"].items())) or "none"
    cpu = result["cpu_seconds"]
    judged = "" if memory["judged"] else " (not judged: run too short)"
    lines += [
        "",
        f"throughput: {result['requests_per_s']:,.1f} requests/s{spread}; "
        f"errors {result['errors']}, 503 with Retry-After {result['backpressure_503']}",
        f"runs followed: {runs}",
        f"server RSS: start {memory['start_mb']} MB, after {memory['warmup_s']:.1f}s warm-up "
        f"{memory['warmup_end_mb']} MB, end {memory['end_mb']} MB, peak {memory['peak_mb']} MB; "
        f"growth {memory['growth_pct']:+.2f}% (limit {memory['threshold_pct']:g}%), "
        f"slope {memory['slope_mb_per_min']} MB/min{judged}",
        f"engine backlog (from /_wf78/status each second): pending max {backlog['pending_max']}, "
        f"at the end {backlog['pending_end']}; active runs max {backlog['runs_active_max']}, "
        f"at the end {backlog['runs_active_end']}",
        f"CPU seconds: server {cpu['server']:.1f}, client {cpu['client']:.1f}",
        f"rows: {check['rows_acknowledged']} acknowledged writes, lost {check['lost']}, "
        f"doubled {check['doubled']}, wrong values {check['wrong_values']}, "
        f"unexpected {check['unexpected']}; unacknowledged sent {check['unacknowledged_sent']} "
        f"(present {check['unacknowledged_present']})",
        f"events: {check['events_acknowledged']} acknowledged, lost {check['events_lost']}, "
        f"doubled {check['events_doubled']}, unexpected {check['events_unexpected']}",
        f"server: exit status {server['exit_status']}, error lines in log "
        f"{len(server['log_error_lines'])}, warnings {server['log_warnings']}, "
        f"WAL left {server['wal_left_after_stop']}; engine submitted {server['engine_submitted']}, "
        f"failed {server['engine_failed']}",
    ]
    for message in result["first_errors"][:10]:
        lines.append(f"  error: {message}")
    for line in server["log_error_lines"][:5]:
        lines.append(f"  server log: {line}")
    for example in check["examples"][:5]:
        lines.append(f"  row: {example}")
    verdict = result["verdict"]
    lines.append(
        f"verdict: {verdict}" + (f" ({'; '.join(result['reasons'])})" if result["reasons"] else "")
    )
    return "\n".join(lines)


# -- entry points ----------------------------------------------------------------------------


def run_load(options: LoadOptions) -> dict[str, Any]:
    """Start the server, drive it, stop it, check the database; the result as a dict."""
    folder = Path(tempfile.mkdtemp(prefix="wf78-load-"))
    try:
        result = _run_in(folder, options)
    finally:
        if not options.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if options.keep:
        result["folder"] = str(folder)
    return result


def _run_in(folder: Path, options: LoadOptions) -> dict[str, Any]:
    server = Server(folder)
    load_before = os.getloadavg()
    client_cpu = psutil.Process().cpu_times()
    try:
        server.start()
        load = Load(options, server.base_url, server.pid)
        anyio.run(load.drive)
        server_cpu = load.server.cpu_times()
    finally:
        exit_status = server.stop()
    client_after = psutil.Process().cpu_times()
    cpu = {
        "server": server_cpu.user + server_cpu.system,
        "client": (client_after.user - client_cpu.user) + (client_after.system - client_cpu.system),
    }
    verification = verify(server.db, load.ledger)
    load_average = (load_before, os.getloadavg())
    return report(load, options, verification, server, exit_status, load_average, cpu)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description="Sustained concurrent traffic against wf78 serve on SQLite: errors, "
        "latency percentiles, server RSS, and every acknowledged write checked afterwards.",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=90.0,
        help="traffic time (default 90: a 30 s warm-up, then 60 s judged)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="worker tasks, one request each (default 64)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before the RSS baseline (default 30, or a third of a shorter run): "
        "the run history (engine.run_history finished runs) and SQLite's page caches fill "
        "up first, then memory must stay flat",
    )
    parser.add_argument(
        "--rss-threshold",
        type=float,
        default=10.0,
        help="per cent of RSS growth after warm-up that fails the run (default 10)",
    )
    parser.add_argument("--seed", type=int, default=78, help="seed of the request mix")
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke check: 5 seconds")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (database, server log)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 5.0
    if args.seconds <= 0 or args.concurrency < 1:
        parser.error("--seconds must be positive and --concurrency at least 1")
    if args.warmup is None:
        args.warmup = min(30.0, args.seconds / 3)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 on PASS, 1 on FAIL."""
    args = parse_args(argv)
    options = LoadOptions(
        seconds=args.seconds,
        concurrency=args.concurrency,
        warmup=args.warmup,
        rss_threshold=args.rss_threshold / 100,
        seed=args.seed,
        keep=args.keep,
    )
    print(
        f"wf78 load: starting wf78 serve, then {options.concurrency} workers "
        f"for {options.seconds:g}s",
        file=sys.stderr,
        flush=True,
    )
    result = run_load(options)
    print(render(result))
    if result.get("folder"):
        print(f"kept: {result['folder']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
