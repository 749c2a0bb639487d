"""The Redis Streams backend across processes: one serving process (``wf78 serve``, which
only queues runs and reads them back through the admin API) and three ``wf78 worker``
processes (tests/cluster/distributed_util.py starts them; tests/cluster/distributed_plugin.py gives them
actions and a data source that report to Redis).

- priority order holds across all workers (and aging lets an old task overtake);
- ``max_concurrent`` holds across all workers, counted inside a data-source adapter;
- ``kill -9`` of a worker holding tasks: the others finish them, no run is lost, no
  idempotent write is doubled, DAGs with fan-in complete;
- a survivor takes over a dead worker's tasks only as far as its ``worker_slots`` go;
- a stalled worker (SIGSTOP past its lease) that wakes up after its task was taken over
  does not free the lease the new holder has (``max_concurrent`` still holds).

Each test has a Redis namespace of its own (deleted afterwards), so tests and benchmarks
sharing the Redis server never see each other's work.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pymysql  # type: ignore[import-untyped]
import pytest
import redis
from distributed_util import Cluster

from wf78_core.idempotency import key_id, task_key

URL = "redis://127.0.0.1:6379/0"
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "database": "test"}
MYSQL_URL = "mysql://root@127.0.0.1:3306/test"


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(URL, decode_responses=True)
    yield client
    client.close()


def key(namespace: str, name: str) -> str:
    """A key of the test's own (under the namespace, so the clean-up deletes it)."""
    return f"wf78:{{{namespace}}}:test:{name}"


def settings(namespace: str, **engine: Any) -> dict[str, Any]:
    return {
        "backend": "redis",
        "backend_url": URL,
        "backend_namespace": namespace,
        "lease_ttl": 1.0,
        "claim_margin": 0.5,
        "aging_seconds": 0,
        "drain_timeout": 5.0,
        "retry_backoff": 0.01,
        **engine,
    }


def records(raw: redis.Redis, log: str, event: str | None = None) -> list[dict[str, Any]]:
    """What the plugin's actions logged (only the ``event`` ones, if given), oldest first."""
    found = [json.loads(item) for item in raw.lrange(log, 0, -1)]
    return [r for r in found if event is None or r["event"] == event]


def wait_for(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        time.sleep(0.02)


def started_order(runs: dict[str, dict[str, Any]], task: str = "a") -> list[str]:
    """Labels of the runs by when Redis handed their task to a worker (the TAKE script's
    clock: one order for every process)."""
    ordered = sorted(runs.values(), key=lambda run: run["tasks"][task]["started"])
    return [run["context"]["label"] for run in ordered]


# -- priority ------------------------------------------------------------------------------

PRIORITY_FLOWS = [
    {"id": "block", "priority": 0, "tasks": [{"id": "a", "action": "dist.gate", "timeout": 20}]},
    {"id": "high", "priority": 1, "tasks": [{"id": "a", "action": "dist.record", "timeout": 5}]},
    {"id": "low", "priority": 5, "tasks": [{"id": "a", "action": "dist.record", "timeout": 5}]},
]


def _block_every_worker(cluster: Cluster, raw: redis.Redis, log: str, gate: str) -> set[int]:
    """Fill each worker's only slot with a task that waits for ``gate``; their pids."""
    for index in range(len(cluster.workers)):
        cluster.start("block", {"log": log, "gate": gate, "label": f"block{index}"})
    wait_for(
        lambda: len(records(raw, log, "start")) == len(cluster.workers), 10, "blockers running"
    )
    return {record["pid"] for record in records(raw, log, "start")}


def test_priority_order_holds_across_workers(
    tmp_path: Path, namespace: str, raw: redis.Redis
) -> None:
    log, gate = key(namespace, "log"), key(namespace, "gate")
    config = {"engine": settings(namespace, worker_slots=1), "workflows": PRIORITY_FLOWS}
    with Cluster(tmp_path, config) as cluster:
        pids = {worker.pid for worker in cluster.workers}
        # One blocker per worker (one slot each): nothing in flight when the backlog comes.
        assert _block_every_worker(cluster, raw, log, gate) == pids
        backlog = []
        for index in range(8):  # interleaved, low first: queue order alone would mix them
            context = {"log": log, "sleep": 0.05}
            backlog.append(cluster.start("low", {**context, "label": f"low{index}"}))
            backlog.append(cluster.start("high", {**context, "label": f"high{index}"}))
        raw.rpush(gate, 1)
        runs = cluster.finished(backlog, within=20)
    assert {run["status"] for run in runs.values()} == {"succeeded"}
    # Every high task was taken before any low one, and each level in queue order (FIFO),
    # across the three workers.
    assert started_order(runs) == [f"high{i}" for i in range(8)] + [f"low{i}" for i in range(8)]
    ran = [r for r in records(raw, log, "start") if r["label"].startswith(("high", "low"))]
    assert len(ran) == 16
    assert {r["pid"] for r in ran} == pids  # all three workers took part
    assert {(r["label"][:3], r["priority"]) for r in ran} == {("hig", 1), ("low", 5)}
    assert cluster.exit_codes == [0, 0, 0]  # SIGTERM: each finished and left cleanly


def test_aging_lets_an_old_low_priority_task_overtake_across_workers(
    tmp_path: Path, namespace: str, raw: redis.Redis
) -> None:
    log, gate = key(namespace, "log"), key(namespace, "gate")
    engine = settings(namespace, worker_slots=1, aging_seconds=0.1)
    with Cluster(tmp_path, {"engine": engine, "workflows": PRIORITY_FLOWS}) as cluster:
        _block_every_worker(cluster, raw, log, gate)
        context = {"log": log, "sleep": 0.05}
        old = cluster.start("low", {**context, "label": "old-low"})
        time.sleep(1.2)  # 12 aging steps: level 5 now counts as -7
        fresh = [cluster.start("high", {**context, "label": f"high{i}"}) for i in range(3)]
        fresh.append(cluster.start("low", {**context, "label": "new-low"}))
        raw.rpush(gate, 1)
        runs = cluster.finished([old, *fresh], within=20)
    assert {run["status"] for run in runs.values()} == {"succeeded"}
    # The old low task overtook the fresh high ones; a fresh low one did not.
    assert started_order(runs) == ["old-low", "high0", "high1", "high2", "new-low"]


# -- max_concurrent ------------------------------------------------------------------------


def test_max_concurrent_holds_across_workers(
    tmp_path: Path, namespace: str, raw: redis.Redis
) -> None:
    counter = key(namespace, "inside")
    config = {
        # Leases outlive any heartbeat hiccup of a busy machine: this test kills nobody.
        "engine": settings(namespace, worker_slots=4, lease_ttl=3.0),
        "datasources": {"counter": {"type": "counting", "key": counter, "latency": 0.1}},
        "workflows": [
            {
                "id": "limited",
                "max_concurrent": 2,
                "tasks": [
                    {
                        "id": "use",
                        "data_source": "counter",
                        "timeout": 5,
                        "params": {"action": "noop"},
                    }
                ],
            }
        ],
    }
    with Cluster(tmp_path, config) as cluster:
        run_ids = [cluster.start("limited", {}) for _ in range(30)]
        runs = cluster.finished(run_ids, within=30)
    assert cluster.exit_codes == [0, 0, 0]
    assert {run["status"] for run in runs.values()} == {"succeeded"}
    assert {run["tasks"]["use"]["result"]["data_source"] for run in runs.values()} == {"counter"}
    # Never more than two inside the adapter at once, in all processes together; and two
    # did run side by side.
    assert int(raw.get(counter + ":max")) == 2
    assert int(raw.get(counter + ":now")) == 0
    assert len(raw.smembers(counter + ":pids")) >= 2
    assert raw.zcard(f"wf78:{{{namespace}}}:lease:limited") == 0


# -- kill -9 -------------------------------------------------------------------------------


@pytest.fixture
def mysql_table() -> Iterator[str]:
    table = f"t_{uuid4().hex[:8]}_dist"
    yield table
    _mysql(f"DROP TABLE IF EXISTS `{table}`")


def _mysql(sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    connection = pymysql.connect(**MYSQL, autocommit=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())
    finally:
        connection.close()


WRITES = ("left", "right", "join")


def test_a_killed_workers_tasks_are_finished_by_the_others_without_doubled_writes(
    tmp_path: Path, namespace: str, raw: redis.Redis, mysql_table: str
) -> None:
    log = key(namespace, "log")
    write = {"action": "add", "table": mysql_table, "data_source": "db"}
    config = {
        "engine": settings(namespace, worker_slots=4),
        "datasources": {"db": {"type": "mysql", "url": MYSQL_URL, "create_tables": True}},
        "tables": {mysql_table: {"columns": {"label": "text"}}},
        "workflows": [
            {
                "id": "pipeline",
                "tasks": [
                    {"id": "prep", "action": "dist.record", "timeout": 5},
                    # fan-out: two writes after prep; fan-in: a third once both are done
                    {"id": "left", "depends_on": ["prep"], "timeout": 5, "params": write},
                    {"id": "right", "depends_on": ["prep"], "timeout": 5, "params": write},
                    {
                        "id": "join",
                        "action": "dist.write_then_hold",
                        "depends_on": ["left", "right"],
                        "timeout": 5,
                        "params": write,
                    },
                ],
            }
        ],
    }
    labels: dict[str, str] = {}
    try:
        with Cluster(tmp_path, config) as cluster:
            for index in range(12):
                label = f"{namespace}-{index}"
                context = {"log": log, "label": label, "sleep": 0.3, "hold": 1.5}
                context["values"] = {"label": label}  # what every write of the run stores
                labels[cluster.start("pipeline", context)] = label

            # The first worker to finish a join's write dies while it holds that task.
            def first_written() -> list[dict[str, Any]]:
                return records(raw, log, "written")

            wait_for(lambda: first_written(), 20, "a join task wrote its row")
            victim_pid, victim_run = first_written()[0]["pid"], first_written()[0]["run"]
            victim = next(w for w in cluster.workers if w.pid == victim_pid)
            # Frozen first, so what it holds can be read exactly; then killed.
            victim.freeze()
            time.sleep(0.2)  # what it sent before it froze reaches Redis
            held = _pending_of(raw, namespace, victim_pid)
            assert (victim_run, "join") in held, held
            victim.kill()
            killed_at = time.time()
            runs = cluster.finished(list(labels), within=30)
            survivors = [w for w in cluster.workers if w is not victim]
            taken_over = sum("took over" in w.stderr for w in survivors)
        assert cluster.exit_codes.count(0) == 2 and cluster.exit_codes.count(None) == 1
    finally:
        # The database's shared idempotency table keeps the tasks' keys: remove them.
        for run_id in labels:
            for task in WRITES:
                _mysql("DELETE FROM wf78_idempotency WHERE `key` = %s", (task_key(run_id, task),))

    # Nothing lost: every run and every task of it succeeded (the fan-in included).
    assert {run["status"] for run in runs.values()} == {"succeeded"}, runs
    for run in runs.values():
        assert {t["state"] for t in run["tasks"].values()} == {"succeeded"}, run
    assert int(raw.hget(f"wf78:{{{namespace}}}:stats", "runs_finished")) == len(labels)
    assert raw.hlen(f"wf78:{{{namespace}}}:dead") == 0
    assert taken_over >= 1
    # The victim's tasks were run again by a survivor: the join it was holding (its write
    # committed, its end never reported) ran twice, once on each side of the kill.
    assert _leftovers(raw, namespace) == {}  # no lease, waiting task or entry left behind
    again = [
        r for r in records(raw, log, "written") if (r["run"], r["task"]) == (victim_run, "join")
    ]
    assert [r["pid"] == victim_pid for r in again] == [True, False]
    assert again[1]["time"] > killed_at
    assert again[0]["value"] == again[1]["value"]  # the replay answered the first write's id
    assert runs[victim_run]["tasks"]["join"]["attempts"] == 2
    # Every task the victim held was delivered again, to a survivor.
    assert all(runs[run_id]["tasks"][task]["attempts"] == 2 for run_id, task in held), held
    # No write doubled: each run has exactly its three rows, with the ids derived from the
    # idempotency keys run:<run>:<task>.
    rows = _mysql(f"SELECT id, label FROM `{mysql_table}`")
    assert len(rows) == 3 * len(labels)
    by_label: dict[str, set[str]] = {}
    for row_id, label in rows:
        by_label.setdefault(label, set()).add(str(row_id))
    for run_id, label in labels.items():
        assert by_label[label] == {key_id(task_key(run_id, task)) for task in WRITES}
    assert Counter(str(row_id) for row_id, _ in rows).most_common(1)[0][1] == 1


def _pending_of(raw: redis.Redis, namespace: str, pid: int) -> list[tuple[str, str]]:
    """(run, task) of the stream entries delivered to the worker process ``pid`` and not
    acknowledged."""
    prefix = f"wf78:{{{namespace}}}:"
    held = []
    for capability in raw.smembers(prefix + "caps"):
        for level in raw.zrange(prefix + f"levels:{capability}", 0, -1):
            stream = prefix + f"q:{capability}:{level}"
            for consumer in raw.xinfo_consumers(stream, capability):
                if consumer["name"].split(":")[-2] == str(pid) and consumer["pending"]:
                    entries = raw.xpending_range(
                        stream, capability, "-", "+", 100, consumername=consumer["name"]
                    )
                    for entry in entries:
                        for _, fields in raw.xrange(
                            stream, entry["message_id"], entry["message_id"]
                        ):
                            held.append((fields["r"], fields["t"]))
    return held


def _leftovers(raw: redis.Redis, namespace: str) -> dict[str, int]:
    """What the namespace still holds of leases, waiting tasks and stream entries."""
    prefix = f"wf78:{{{namespace}}}:"
    left = {}
    for workflow in raw.smembers(prefix + "wfs"):
        left[f"lease:{workflow}"] = raw.zcard(prefix + f"lease:{workflow}")
        left[f"wait:{workflow}"] = raw.zcard(prefix + f"wait:{workflow}")
    for capability in raw.smembers(prefix + "caps"):
        for level in raw.zrange(prefix + f"levels:{capability}", 0, -1):
            stream = f"q:{capability}:{level}"
            left[stream] = raw.xlen(prefix + stream)
            left[stream + " pending"] = raw.xpending(prefix + stream, capability)["pending"]
    return {name: count for name, count in left.items() if count}


# -- worker_slots after a takeover ---------------------------------------------------------


def most_at_once(events: list[dict[str, Any]]) -> dict[int, int]:
    """Per process id, the most actions that ran in it at the same time (from the start
    and end records, which one process stamps with one clock)."""
    by_pid: dict[int, list[tuple[float, int]]] = {}
    for r in events:
        step = 1 if r["event"] == "start" else -1 if r["event"] == "end" else 0
        if step:
            by_pid.setdefault(r["pid"], []).append((r["time"], step))
    most = {}
    for pid, steps in by_pid.items():
        level = peak = 0
        for _, step in sorted(steps, key=lambda s: (s[0], s[1])):
            level += step
            peak = max(peak, level)
        most[pid] = peak
    return most


def test_a_takeover_keeps_to_the_workers_slots(
    tmp_path: Path, namespace: str, raw: redis.Redis
) -> None:
    """A survivor takes over a dead worker's tasks only as far as its free slots go; the
    rest waits for the next round (or another survivor)."""
    log = key(namespace, "log")
    flow = {"id": "hold", "tasks": [{"id": "a", "action": "dist.gate", "timeout": 20}]}
    config = {"engine": settings(namespace, worker_slots=2), "workflows": [flow]}
    gates = {}
    with Cluster(tmp_path, config) as cluster:
        for index in range(6):  # two per worker: every slot taken
            gate = key(namespace, f"gate{index}")
            gates[cluster.start("hold", {"log": log, "gate": gate, "label": str(index)})] = gate
        wait_for(lambda: len(records(raw, log, "start")) == 6, 10, "six tasks running")
        held = Counter(r["pid"] for r in records(raw, log, "start"))
        assert sorted(held.values()) == [2, 2, 2]
        victim, survivor = cluster.workers[0], cluster.workers[1]
        victim.kill()
        # One survivor frees one slot; the victim's two tasks need two.
        first = next(r["run"] for r in records(raw, log, "start") if r["pid"] == survivor.pid)
        raw.rpush(gates[first], 1)
        wait_for(lambda: "took over" in survivor.stderr, 10, "the survivor took over")
        time.sleep(1.0)  # a few maintenance rounds
        for gate in gates.values():
            raw.rpush(gate, 1)
        runs = cluster.finished(list(gates), within=20)
    assert {run["status"] for run in runs.values()} == {"succeeded"}
    peaks = most_at_once(records(raw, log))
    assert peaks[survivor.pid] <= 2, peaks


# -- a stalled worker that comes back ------------------------------------------------------


def most_runs_at_once(events: list[dict[str, Any]]) -> int:
    """The most distinct runs whose action was running at the same moment, in any process
    (two attempts of one run's task, before and after a takeover, count once)."""
    steps = sorted(
        (r["time"], -1 if r["event"] == "end" else 1, r["run"], r["pid"])
        for r in events
        if r["event"] in ("start", "end")
    )
    open_attempts: Counter[str] = Counter()
    most = 0
    for _, step, run, _ in steps:
        open_attempts[run] += step
        most = max(most, sum(1 for count in open_attempts.values() if count > 0))
    return most


def test_a_stalled_workers_late_completion_keeps_max_concurrent(
    tmp_path: Path, namespace: str, raw: redis.Redis
) -> None:
    """A worker stalls (SIGSTOP: a long GC pause, a blocked event loop) past its lease, a
    survivor takes its task over, then the stalled one wakes up: its heartbeat finds the
    entry is no longer its own and interrupts its attempt, and what it reports must not
    free the lease the survivor now holds for that task: the workflow's next run starts
    only when the survivor is done."""
    log = key(namespace, "log")
    flow = {
        "id": "solo",
        "max_concurrent": 1,
        "tasks": [{"id": "a", "action": "dist.record", "timeout": 20}],
    }
    config = {"engine": settings(namespace, worker_slots=2), "workflows": [flow]}
    with Cluster(tmp_path, config) as cluster:
        first = cluster.start("solo", {"log": log, "label": "first", "sleep": 3.0})
        wait_for(lambda: len(records(raw, log, "start")) == 1, 10, "the first run started")
        stalled_pid = records(raw, log, "start")[0]["pid"]
        stalled = next(w for w in cluster.workers if w.pid == stalled_pid)
        stalled.freeze()
        try:
            # Nothing else waits for the workflow's one lease: a survivor takes the task
            # over (rather than another run taking the lease that lapsed).
            wait_for(lambda: len(records(raw, log, "start")) == 2, 10, "a survivor took over")
            later = [
                cluster.start("solo", {"log": log, "label": f"later{i}", "sleep": 0.2})
                for i in range(2)
            ]
        finally:
            stalled.thaw()  # its attempt ends about 1.5 s before the survivor's
        runs = cluster.finished([first, *later], within=20)
    assert {run["status"] for run in runs.values()} == {"succeeded"}
    events = records(raw, log)
    taken_over = [r for r in events if r["run"] == first and r["event"] == "start"]
    assert [r["pid"] == stalled_pid for r in taken_over] == [True, False]
    ended = [r for r in events if r["run"] == first and r["event"] == "end"]
    assert [(r["pid"] == stalled_pid, r.get("interrupted", False)) for r in ended] == [
        (True, True),
        (False, False),
    ], _timeline(events, stalled_pid)
    assert most_runs_at_once(events) == 1, _timeline(events, stalled_pid)


def _timeline(events: list[dict[str, Any]], stalled_pid: int) -> str:
    began = events[0]["time"]
    return "\n" + "\n".join(
        f"{r['time'] - began:6.2f}s {r['event']:5} {r['label']:7} "
        + ("stalled worker" if r["pid"] == stalled_pid else f"worker {r['pid']}")
        for r in sorted(events, key=lambda r: r["time"])
    )
