"""The run journal: accepted runs and finished tasks on disk, so a crash loses nothing.

A run is written to the journal before :meth:`Engine.run <wf78_core.engine.Engine.run>`
acknowledges it (the return of ``run(..., wait=False)``, the 202 of ``POST /runs``). Every
task that finishes is checkpointed with its state and result; when the run finishes its
task rows are removed (a failed run keeps them while it has dead letters, which need the
results of the failed task's dependencies to run it again) and the run keeps a summary
(status, error, times) among the newest ``keep_finished``, so a client holding a run id
from before a crash still learns how that run ended. After a crash the engine reads
the unfinished runs back at start-up and resumes them: tasks with a checkpoint are not run
again, the others are (their writes carry idempotency keys, so a write that did commit
before the crash is not doubled).

Writes are group-committed: one writer task applies everything queued, in order, in one
transaction, so 10,000 tasks finishing together cost a few fsyncs, not 10,000. Only the
acknowledgement of a run (and dead-letter changes) waits for its commit; checkpoints are
queued, and the queue is bounded: a task that finishes while ``max_queued`` records wait
holds on until the writer has caught up.

Run idempotency keys (:mod:`wf78_core.core.runkeys`) are kept here too: a claimed key is
queued before its run's record, so it is durable when the run is; ``purge_keys`` (run by
maintenance) forgets those older than ``[engine] idempotency_ttl``.

Journals are pluggable: ``[engine] journal`` is ``"sqlite:///path"`` (the default,
``wf78-journal.db`` next to the configuration), ``"memory"`` (nothing survives the
process: for tests and benchmarks), ``"off"``, or ``"package.module:Class"``, a class
taking the engine's base directory that implements :class:`Journal`.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus

from wf78_core.core.records import DeadLetter, Journal, JournaledRun, TaskCheckpoint
from wf78_core.core.runkeys import KeyedRun
from wf78_core.errors import ConfigError, Wf78Error

__all__ = [
    "DeadLetter",
    "Journal",
    "JournaledRun",
    "MemoryJournal",
    "SQLiteJournal",
    "TaskCheckpoint",
    "open_journal",
]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def _text(value: Any) -> str:
    return _encoder.encode(value).decode()


# One queued write: (kind, parameters).
_Record = tuple[str, tuple[Any, ...]]


@dataclass(eq=False)
class _Batch:
    records: list[_Record] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class _QueuedJournal:
    """The queue, the bound and the writer loop; subclasses say how a batch is applied."""

    durable = True

    def __init__(
        self, *, max_queued: int = 10_000, max_batch: int = 5_000, keep_finished: int = 1000
    ) -> None:
        self.max_queued = max_queued
        self.keep_finished = keep_finished
        self.max_batch = max_batch
        self._batches: deque[_Batch] = deque()
        self._queued = 0
        self._wake = anyio.Event()
        self._room: anyio.Event | None = None
        self._running = False
        self._writing: _Batch | None = None  # the batch being applied
        #: transactions committed and records written, for tests and stats
        self.commits = 0
        self.records = 0

    def _add(self, kind: str, params: tuple[Any, ...]) -> _Batch:
        batches = self._batches
        if not batches or len(batches[-1].records) >= self.max_batch:
            batches.append(_Batch())
            self._wake.set()
        batch = batches[-1]
        batch.records.append((kind, params))
        self._queued += 1
        return batch

    @property
    def queued(self) -> int:
        """Records queued and not yet written (bounded by ``max_queued``)."""
        return self._queued

    async def _durable(self, kind: str, params: tuple[Any, ...]) -> None:
        if not self._running:
            raise Wf78Error("the journal is not running")
        batch = self._add(kind, params)
        await batch.done.wait()
        if batch.error is not None:
            raise Wf78Error(f"the journal could not record {kind}: {batch.error}") from batch.error

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._running = True
        batches = self._batches
        try:
            task_status.started()
            while True:
                if not batches:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                batch = self._writing = batches.popleft()
                with anyio.CancelScope(shield=True):  # a started batch is finished
                    await self._write_batch(batch)
                self._queued -= len(batch.records)
                self._writing = None
                batch.done.set()
                if self._room is not None and self._queued <= self.max_queued:
                    self._room.set()
                    self._room = None
        finally:
            self._running = False
            with anyio.CancelScope(shield=True):
                while batches:  # the engine stopped: what is queued is still written
                    batch = batches.popleft()
                    await self._write_batch(batch)
                    batch.done.set()
                self._queued = 0
                if self._room is not None:
                    self._room.set()

    async def _write_batch(self, batch: _Batch) -> None:
        """Apply ``batch``; a failure is kept for its waiters, not raised."""
        try:
            await self._apply(batch.records)
            self.commits += 1
            self.records += len(batch.records)
        except Exception as error:
            batch.error = error

    async def _apply(self, records: list[_Record]) -> None:
        raise NotImplementedError

    async def started(self, run: JournaledRun) -> None:
        await self._durable(
            "run",
            (run.id, run.workflow, _text(run.context), run.priority, run.created),
        )

    def checkpoint(self, run_id: str, task: TaskCheckpoint) -> None:
        if self._running:
            self._add("task", (run_id, task.task, _text(task)))

    def finished(self, run_id: str, status: str, error: str | None) -> None:
        if self._running:
            self._add("finish", (run_id, status, error, time.time()))

    async def room(self) -> None:
        while self._running and self._queued > self.max_queued:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()

    async def flush(self) -> None:
        last = self._batches[-1] if self._batches else self._writing
        if last is not None:
            await last.done.wait()

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        await self._durable("dead", (letter.id, letter.run_id, _text(letter)))

    async def remove_dead_letter(self, letter_id: str) -> None:
        await self._durable("undead", (letter_id,))

    def remember_key(self, key: str, claimed: KeyedRun) -> None:
        if self._running:
            self._add("key", (key, claimed.fingerprint, claimed.run_id, claimed.created))

    def forget_key(self, key: str) -> None:
        if self._running:
            self._add("unkey", (key,))


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS wf78_runs (id TEXT PRIMARY KEY, workflow TEXT NOT NULL, "
    "context TEXT NOT NULL, priority INTEGER NOT NULL, created REAL NOT NULL, "
    "status TEXT NOT NULL DEFAULT 'running', error TEXT, finished REAL)",
    "CREATE INDEX IF NOT EXISTS wf78_runs_finished ON wf78_runs (status, finished)",
    "CREATE TABLE IF NOT EXISTS wf78_run_tasks (run_id TEXT NOT NULL, task TEXT NOT NULL, "
    "checkpoint TEXT NOT NULL, PRIMARY KEY (run_id, task))",
    "CREATE TABLE IF NOT EXISTS wf78_dead_letters (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, "
    "letter TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS wf78_run_keys (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, "
    "run_id TEXT NOT NULL, created REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS wf78_run_keys_created ON wf78_run_keys (created)",
)

_SQL = {
    "run": "INSERT OR REPLACE INTO wf78_runs (id, workflow, context, priority, created, status) "
    "VALUES (?, ?, ?, ?, ?, 'running')",
    "task": "INSERT OR REPLACE INTO wf78_run_tasks (run_id, task, checkpoint) VALUES (?, ?, ?)",
    "dead": "INSERT OR REPLACE INTO wf78_dead_letters (id, run_id, letter) VALUES (?, ?, ?)",
    "undead": "DELETE FROM wf78_dead_letters WHERE id = ?",
    "key": "INSERT OR REPLACE INTO wf78_run_keys (key, fingerprint, run_id, created) "
    "VALUES (?, ?, ?, ?)",
    "unkey": "DELETE FROM wf78_run_keys WHERE key = ?",
}


_RUN_COLUMNS = "id, workflow, context, priority, created, status, error, finished"


def _run_of(row: Sequence[Any], tasks: dict[str, TaskCheckpoint]) -> JournaledRun:
    """A ``wf78_runs`` row (``_RUN_COLUMNS``) with its checkpoints."""
    run_id, workflow, context, priority, created, status, error, finished = row
    return JournaledRun(
        id=run_id,
        workflow=workflow,
        context=_decoder.decode(context),
        priority=priority,
        created=created,
        status=status,
        error=error,
        finished=finished,
        tasks=tasks,
    )


class SQLiteJournal(_QueuedJournal):
    """The default journal: one SQLite file (WAL, ``synchronous = FULL``), written by one
    thread, one transaction per batch."""

    def __init__(self, path: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = Path(path)
        self._connection: sqlite3.Connection | None = None
        self._finished_since_prune = 0
        self._lock = anyio.Lock()  # one statement at a time on the connection

    async def open(self) -> None:
        if self._connection is not None:
            return
        await anyio.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._connection = await anyio.to_thread.run_sync(self._connect)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA busy_timeout = 5000")
            for statement in _SCHEMA:
                connection.execute(statement)
        except BaseException:
            connection.close()
            raise
        return connection

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            async with self._lock:
                await anyio.to_thread.run_sync(connection.close)

    async def _apply(self, records: list[_Record]) -> None:
        async with self._lock:
            await anyio.to_thread.run_sync(self._write, records)

    def _write(self, records: list[_Record]) -> None:
        connection = self._connection
        if connection is None:
            raise Wf78Error("the journal is closed")
        connection.execute("BEGIN IMMEDIATE")
        try:
            start = 0
            while start < len(records):  # consecutive records of one kind: one executemany
                kind = records[start][0]
                end = start + 1
                while end < len(records) and records[end][0] == kind:
                    end += 1
                rows = [params for _, params in records[start:end]]
                if kind == "finish":
                    self._finish(connection, rows)
                else:
                    connection.executemany(_SQL[kind], rows)
                start = end
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def _finish(self, connection: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """A finished run keeps a summary; its task rows go, unless it failed with dead
        letters still kept. Summaries past the newest ``keep_finished`` are dropped."""
        for run_id, status, error, finished in rows:
            connection.execute(
                "UPDATE wf78_runs SET status = ?, error = ?, finished = ? WHERE id = ?",
                (status, error, finished, run_id),
            )
            kept = (
                status == "failed"
                and connection.execute(
                    "SELECT 1 FROM wf78_dead_letters WHERE run_id = ? LIMIT 1", (run_id,)
                ).fetchone()
            )
            if not kept:
                connection.execute("DELETE FROM wf78_run_tasks WHERE run_id = ?", (run_id,))
        self._finished_since_prune += len(rows)
        if self._finished_since_prune >= max(1, self.keep_finished // 10):
            self._finished_since_prune = 0
            connection.execute(
                "DELETE FROM wf78_runs WHERE status != 'running' AND id NOT IN "
                "(SELECT run_id FROM wf78_dead_letters) AND id NOT IN (SELECT id FROM "
                "wf78_runs WHERE status != 'running' ORDER BY finished DESC LIMIT ?)",
                (self.keep_finished,),
            )
            connection.execute(
                "DELETE FROM wf78_run_tasks WHERE run_id NOT IN (SELECT id FROM wf78_runs)"
            )

    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        connection = self._connection
        if connection is None:
            raise Wf78Error("the journal is closed")
        async with self._lock:
            return await anyio.to_thread.run_sync(
                lambda: connection.execute(sql, params).fetchall()
            )

    async def unfinished(self) -> list[JournaledRun]:
        rows = await self._query(
            f"SELECT {_RUN_COLUMNS} FROM wf78_runs WHERE status = 'running' ORDER BY created"
        )
        tasks = await self._checkpoints(
            "SELECT run_id, checkpoint FROM wf78_run_tasks WHERE run_id IN "
            "(SELECT id FROM wf78_runs WHERE status = 'running')"
        )
        return [_run_of(row, tasks.get(row[0], {})) for row in rows]

    async def load_run(self, run_id: str) -> JournaledRun | None:
        rows = await self._query(f"SELECT {_RUN_COLUMNS} FROM wf78_runs WHERE id = ?", (run_id,))
        if not rows:
            return None
        tasks = await self._checkpoints(
            "SELECT run_id, checkpoint FROM wf78_run_tasks WHERE run_id = ?", (run_id,)
        )
        return _run_of(rows[0], tasks.get(run_id, {}))

    async def _checkpoints(
        self, sql: str, params: Sequence[Any] = ()
    ) -> dict[str, dict[str, TaskCheckpoint]]:
        """Checkpoints by run id and task id, from ``sql`` selecting (run_id, checkpoint)."""
        found: dict[str, dict[str, TaskCheckpoint]] = {}
        for run_id, encoded in await self._query(sql, params):
            task = msgspec.json.decode(encoded, type=TaskCheckpoint)
            found.setdefault(run_id, {})[task.task] = task
        return found

    async def finished_runs(self) -> list[JournaledRun]:
        rows = await self._query(
            f"SELECT {_RUN_COLUMNS} FROM wf78_runs WHERE status != 'running' "
            "ORDER BY finished DESC LIMIT ?",
            (self.keep_finished,),
        )
        return [_run_of(row, {}) for row in reversed(rows)]

    async def dead_letters(self) -> list[DeadLetter]:
        rows = await self._query("SELECT letter FROM wf78_dead_letters")
        letters = [msgspec.json.decode(row[0], type=DeadLetter) for row in rows]
        return sorted(letters, key=lambda letter: letter.time)

    async def find_key(self, key: str) -> KeyedRun | None:
        rows = await self._query(
            "SELECT fingerprint, run_id, created FROM wf78_run_keys WHERE key = ?", (key,)
        )
        return KeyedRun(*rows[0]) if rows else None

    async def purge_keys(self, before: float) -> int:
        connection = self._connection
        if connection is None:
            raise Wf78Error("the journal is closed")
        sql = "DELETE FROM wf78_run_keys WHERE created < ?"
        async with self._lock:  # one statement, committed by itself (autocommit)
            return await anyio.to_thread.run_sync(
                lambda: connection.execute(sql, (before,)).rowcount
            )


class MemoryJournal(_QueuedJournal):
    """A journal in this process only: same behaviour, nothing survives a crash."""

    durable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._runs: dict[str, JournaledRun] = {}
        self._letters: dict[str, DeadLetter] = {}
        self._keys: dict[str, KeyedRun] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def _apply(self, records: list[_Record]) -> None:
        for kind, params in records:
            if kind == "run":
                run_id, workflow, context, priority, created = params
                self._runs[run_id] = JournaledRun(
                    id=run_id,
                    workflow=workflow,
                    context=_decoder.decode(context),
                    priority=priority,
                    created=created,
                )
            elif kind == "task":
                run_id, _, encoded = params
                run = self._runs.get(run_id)
                if run is not None:
                    task = msgspec.json.decode(encoded, type=TaskCheckpoint)
                    run.tasks[task.task] = task
            elif kind == "finish":
                run_id, status, error, finished = params
                run = self._runs.get(run_id)
                if run is None:
                    continue
                kept = status == "failed" and any(
                    letter.run_id == run_id for letter in self._letters.values()
                )
                self._runs[run_id] = msgspec.structs.replace(
                    run,
                    status=status,
                    error=error,
                    finished=finished,
                    tasks=run.tasks if kept else {},
                )
                self._prune()
            elif kind == "dead":
                letter_id, _, encoded = params
                self._letters[letter_id] = msgspec.json.decode(encoded, type=DeadLetter)
            elif kind == "undead":
                self._letters.pop(params[0], None)
            elif kind == "key":
                self._keys[params[0]] = KeyedRun(*params[1:])
            elif kind == "unkey":
                self._keys.pop(params[0], None)
        await anyio.lowlevel.checkpoint()

    def _prune(self) -> None:
        done = [run for run in self._runs.values() if run.status != "running"]
        letters = {letter.run_id for letter in self._letters.values()}
        for run in done[: max(0, len(done) - self.keep_finished)]:
            if run.id not in letters:
                del self._runs[run.id]

    async def unfinished(self) -> list[JournaledRun]:
        return [run for run in self._runs.values() if run.status == "running"]

    async def finished_runs(self) -> list[JournaledRun]:
        return [run for run in self._runs.values() if run.status != "running"]

    async def load_run(self, run_id: str) -> JournaledRun | None:
        return self._runs.get(run_id)

    async def dead_letters(self) -> list[DeadLetter]:
        return sorted(self._letters.values(), key=lambda letter: letter.time)

    async def find_key(self, key: str) -> KeyedRun | None:
        return self._keys.get(key)

    async def purge_keys(self, before: float) -> int:
        stale = [key for key, claimed in self._keys.items() if claimed.created < before]
        for key in stale:
            del self._keys[key]
        return len(stale)


def open_journal(
    setting: str, base_dir: str | Path, *, keep_finished: int = 1000
) -> Journal | None:
    """The journal ``[engine] journal`` names (not yet opened); None for ``"off"``.
    ``keep_finished``: how many finished runs keep a summary (``engine.run_history``)."""
    where = "engine.journal"
    if setting == "off":
        return None
    if setting == "memory":
        return MemoryJournal(keep_finished=keep_finished)
    if setting.startswith("sqlite:///"):
        location = setting.removeprefix("sqlite:///")
        if not location or location == ":memory:":
            raise ConfigError(
                f"expected 'sqlite:///path/to/journal.db', got {setting!r}", path=where
            )
        path = Path(location)
        return SQLiteJournal(
            path if path.is_absolute() else Path(base_dir) / path, keep_finished=keep_finished
        )
    if ":" in setting and "/" not in setting:
        from wf78_core.plugin.datasource import load_factory

        try:
            factory = load_factory(setting)
        except Exception as error:
            raise ConfigError(f"cannot load journal {setting!r}: {error}", path=where) from error
        journal: Journal = factory(base_dir)
        return journal
    raise ConfigError(
        f"unknown journal {setting!r}: expected 'sqlite:///path', 'memory', 'off' or "
        "'package.module:Class'",
        path=where,
    )
