"""Fair shares between tenants inside a priority level (``[engine] fair_by``): the order
waiters are granted in, with a clock the test moves (no sleeping, no timing)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wf78_core import Engine
from wf78_core.config import parse_config
from wf78_core.core.fairness import TENANT, resolve_fair_by, tenant
from wf78_core.core.scheduling import Limit, Scheduler, Waiter
from wf78_core.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def held(name: str = "l", capacity: int = 1) -> Limit:
    limit = Limit(name, capacity)
    limit.in_use = capacity
    return limit


def queue(
    scheduler: Scheduler, limit: Limit, who: str, count: int, log: list[str], priority: int = 1
) -> list[Waiter]:
    """``count`` waiters of tenant ``who`` (named who1, who2, ...) queued on ``limit``."""
    waiters = []
    with tenant(who):
        for index in range(1, count + 1):
            name = f"{who}{index}"
            waiters.append(scheduler.enqueue(priority, (limit,), _record(log, name)))
    return waiters


def _record(log: list[str], name: str) -> Callable[[], None]:
    return lambda: log.append(name)


def grant_all(scheduler: Scheduler, limit: Limit, log: list[str]) -> list[str]:
    """Free the slot until nobody waits; the order the waiters got it in."""
    while limit.waiting:
        scheduler.release((limit,))
    return log


def test_fifo_without_fairness_puts_the_flood_first() -> None:
    scheduler = Scheduler(aging_seconds=0, clock=FakeClock())
    limit, log = held(), []
    queue(scheduler, limit, "a", 5, log)
    queue(scheduler, limit, "b", 1, log)
    assert grant_all(scheduler, limit, log) == ["a1", "a2", "a3", "a4", "a5", "b1"]
    assert scheduler.queued_by_tenant == {}  # not counted with fairness off


def test_a_tenant_waits_one_turn_behind_a_flood() -> None:
    scheduler = Scheduler(aging_seconds=0, clock=FakeClock(), fair=True)
    limit, log = held(), []
    queue(scheduler, limit, "a", 5, log)
    queue(scheduler, limit, "b", 1, log)
    assert scheduler.queued_by_tenant == {"a": 5, "b": 1}
    assert limit.tenants() == 2
    assert grant_all(scheduler, limit, log) == ["a1", "b1", "a2", "a3", "a4", "a5"]
    assert scheduler.queued_by_tenant == {}
    assert scheduler.queued_by_priority == {}


def test_tenants_take_turns_round_robin() -> None:
    scheduler = Scheduler(aging_seconds=0, clock=FakeClock(), fair=True)
    limit, log = held(), []
    queue(scheduler, limit, "a", 3, log)
    queue(scheduler, limit, "b", 3, log)
    queue(scheduler, limit, "c", 1, log)
    assert grant_all(scheduler, limit, log) == ["a1", "b1", "c1", "a2", "b2", "a3", "b3"]


def test_weights_give_turns_in_a_row() -> None:
    scheduler = Scheduler(aging_seconds=0, clock=FakeClock(), fair=True, weights={"acme": 3})
    limit, log = held(), []
    queue(scheduler, limit, "acme", 6, log)
    queue(scheduler, limit, "other", 3, log)
    assert grant_all(scheduler, limit, log) == [
        *("acme1", "acme2", "acme3", "other1"),
        *("acme4", "acme5", "acme6", "other2", "other3"),
    ]


def test_work_without_identity_is_its_own_tenant() -> None:
    scheduler = Scheduler(aging_seconds=0, clock=FakeClock(), fair=True)
    limit, log = held(), []
    queue(scheduler, limit, "a", 3, log)
    assert TENANT.get() == ""
    scheduler.enqueue(1, (limit,), _record(log, "schedule"))  # no tenant set: ""
    assert scheduler.queued_by_tenant == {"a": 3, "": 1}
    assert grant_all(scheduler, limit, log) == ["a1", "schedule", "a2", "a3"]


def test_priority_comes_before_fairness() -> None:
    scheduler = Scheduler(aging_seconds=0, clock=FakeClock(), fair=True)
    limit, log = held(), []
    queue(scheduler, limit, "low", 2, log, priority=5)
    queue(scheduler, limit, "a", 2, log, priority=0)
    queue(scheduler, limit, "b", 1, log, priority=0)
    assert grant_all(scheduler, limit, log) == ["a1", "b1", "a2", "low1", "low2"]


def test_aging_still_lifts_a_waiting_level() -> None:
    clock = FakeClock()
    scheduler = Scheduler(aging_seconds=1.0, clock=clock, fair=True)
    limit, log = held(), []
    queue(scheduler, limit, "low", 1, log, priority=3)
    for step in range(1, 6):
        clock.now = float(step)
        queue(scheduler, limit, f"hot{step}-", 1, log, priority=0)
        scheduler.release((limit,))  # one grant per second, urgent work keeps coming
    # low waited 3s at t=3 (urgency 0, older than the urgent head): it is not starved.
    assert "low1" in log
    assert log.index("low1") <= 3


def test_withdrawn_waiters_are_skipped_and_compacted() -> None:
    scheduler = Scheduler(aging_seconds=0, clock=FakeClock(), fair=True)
    limit, log = held(), []
    flood = queue(scheduler, limit, "a", 100, log)
    queue(scheduler, limit, "b", 2, log)
    for waiter in flood[:99]:
        assert scheduler.withdraw(waiter)
    assert scheduler.queued_by_tenant == {"a": 1, "b": 2}
    assert limit.stored < 102  # compacted once the withdrawn outnumbered the live
    assert grant_all(scheduler, limit, log) == ["a100", "b1", "b2"]


def test_a_waiter_moving_to_another_limit_keeps_its_tenant_and_place() -> None:
    scheduler = Scheduler(aging_seconds=0, clock=FakeClock(), fair=True)
    first, second, log = held("first"), held("second"), []
    with tenant("a"):
        scheduler.enqueue(1, (first, second), _record(log, "a1"))
        scheduler.enqueue(1, (second,), _record(log, "a2"))
    with tenant("b"):
        scheduler.enqueue(1, (second,), _record(log, "b1"))
    scheduler.release((first,))  # a1 moves on to wait for "second", ahead of a2 (older)
    assert log == []
    assert second.waiting == 3
    grant_all(scheduler, second, log)
    assert log == ["a1", "b1", "a2"]


@pytest.mark.parametrize(
    ("configured", "owned", "expected"),
    [(None, True, "cid"), (None, False, ""), ("", True, ""), ("uid", False, "uid")],
)
def test_fair_by_defaults_to_cid_when_tables_have_an_owner(
    configured: str | None, owned: bool, expected: str
) -> None:
    assert resolve_fair_by(configured, owned) == expected


def test_engine_turns_fairness_on_for_owned_tables() -> None:
    owned = {"tables": {"items": {"columns": ["name"], "owner": "cid"}}}
    engine = Engine({**owned, "engine": {"journal": "memory"}})
    assert engine.admission.fair_by == "cid"
    assert engine.scheduler.fair is True
    off = Engine({**owned, "engine": {"journal": "memory", "fair_by": ""}})
    assert off.scheduler.fair is False
    assert off.stats().fair_by == ""
    plain = Engine({"engine": {"journal": "memory", "fair_weights": {"acme": 3}}})
    assert plain.scheduler.fair is False


def test_fair_config_errors_name_their_path() -> None:
    with pytest.raises(ConfigError, match=r"engine\.fair_by"):
        parse_config({"engine": {"fair_by": "team"}})
    with pytest.raises(ConfigError, match=r"engine\.fair_weights"):
        parse_config({"engine": {"fair_by": "", "fair_weights": {"acme": 3}}})
    with pytest.raises(ConfigError, match=r"engine\.fair_weights"):
        parse_config({"engine": {"fair_weights": {"acme": 0}}})


@pytest.mark.anyio
async def test_engine_stats_show_the_queue_per_tenant() -> None:
    config = {
        "engine": {"journal": "memory", "fair_by": "cid", "max_running": 1},
        "datasources": {"mem": {"type": "memory"}},
    }
    async with Engine(config) as engine:
        scheduler = engine.scheduler
        running = engine.admission.running
        running.in_use = running.capacity  # every slot busy: what comes next waits
        log: list[str] = []
        queue(scheduler, running, "acme", 2, log)
        queue(scheduler, running, "zeta", 1, log)
        stats = engine.stats()
        assert stats.fair_by == "cid"
        assert stats.queued_by_tenant == {"acme": 2, "zeta": 1}
        grant_all(scheduler, running, log)
        assert log == ["acme1", "zeta1", "acme2"]
        running.in_use = 0
        assert engine.stats().queued_by_tenant == {}
