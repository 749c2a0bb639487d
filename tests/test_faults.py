"""Fault injection with the real servers: after each fault every accepted write is present
exactly once, counted in the data store itself (not through wf78).

Each test starts private servers of its own (``tests/servers.py``: ``mariadbd`` and
``redis-server`` on free ports and temporary folders, never the shared ones on 3306 and 6379)
and runs a scenario of ``benchmarks/faults.py``, which also prints the figures at full size
(``python -m benchmarks.faults``). Timing is the script's business; these tests assert only
what was lost, doubled or refused.
"""

from __future__ import annotations

import pytest

from benchmarks.faults import kill9_serve, mariadb_outage, redis_restart, render

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_mariadb_shut_down_for_five_seconds_during_writes() -> None:
    """MariaDB really shut down (SIGTERM: its orderly shutdown drops every connection, as a
    stopped service does; closer to "stopped" than SIGSTOP, which leaves connections hanging
    open) for 5 s, a quarter of the way through 5,000 writes accepted as workflow runs."""
    report = await mariadb_outage(writes=5_000, seconds=10.0, down_at=0.25, down_for=5.0)
    summary = render(report)
    assert report.accepted == 5_000, summary
    assert report.client_errors == 0, summary
    assert report.details["runs"] == {"succeeded": 5_000}, summary
    assert report.details["accepted while MariaDB was down"] > 0, summary
    assert report.present == 5_000 and report.missing == report.doubled == 0, summary
    assert report.unexpected == 0, summary
    assert report.ok, summary


async def test_redis_restarted_during_cache_operations() -> None:
    """Redis (append-only file, fsync before every reply) shut down with SHUTDOWN NOSAVE and
    started again on the same port during 10,000 cache operations: every acknowledged key
    holds its value, every counter its acknowledged increments, none twice."""
    report = await redis_restart(operations=10_000, seconds=5.0, restart_at=0.4, down_for=1.0)
    summary = render(report)
    assert report.accepted == 10_000 and report.client_errors == 0, summary
    assert report.present == 9_000, summary
    assert report.missing == report.doubled == report.unexpected == 0, summary
    assert report.details["incr acknowledged"] == 1_000, summary
    assert report.details["incr counted by Redis (over 10 counters)"] == 1_000, summary
    assert report.ok, summary


@pytest.mark.parametrize("rewind", [0.0, 0.5], ids=["plain", "journal-rewound"])
async def test_serve_killed_with_sigkill_while_runs_are_in_flight(rewind: float) -> None:
    """``wf78 serve`` killed with SIGKILL once 200 runs are accepted (the script: 1,000), then
    started again: every run reaches ``succeeded`` and its row is in the SQLite file once.

    ``journal-rewound`` puts the journal back as it was 0.5 s before the kill (a stalled
    journal writer; only unawaited checkpoints are lost), so the tasks that finished in that
    half second run again after the restart: their adds must be answered from the recorded
    idempotency key, not written a second time."""
    report = await kill9_serve(runs=200, rewind=rewind)
    summary = render(report)
    assert report.accepted == 200 and report.client_errors == 0, summary
    assert report.details["in flight at the kill"] > 0, summary
    statuses = report.details["runs on the new process"]
    assert set(statuses) <= {"succeeded"}, summary
    assert report.present == 200 and report.missing == report.doubled == 0, summary
    assert report.unexpected == 0, summary
    assert report.ok, summary
