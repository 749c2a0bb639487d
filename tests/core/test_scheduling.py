"""The scheduler on its own: priority order, FIFO, aging, multi-limit grants, withdrawal."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from wf78_core.core.agents import Agent
from wf78_core.core.scheduling import Limit, Scheduler, Waiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def recorder(log: list[str], name: str) -> Callable[[], None]:
    return lambda: log.append(name)


def held(name: str, capacity: int = 1) -> Limit:
    """A limit with every slot already taken."""
    limit = Limit(name, capacity)
    limit.in_use = capacity
    return limit


def drain(scheduler: Scheduler, limit: Limit, times: int) -> None:
    """Free a slot of ``limit`` ``times`` times; each grant takes it again."""
    for _ in range(times):
        scheduler.release((limit,))


def test_limit_needs_capacity() -> None:
    with pytest.raises(ValueError, match="capacity >= 1"):
        Limit("zero", 0)


def test_free_limits_are_granted_at_once() -> None:
    scheduler = Scheduler()
    a, b = Limit("a", 2), Limit("b", 1)
    log: list[str] = []
    waiter = scheduler.enqueue(3, (a, b), recorder(log, "w"))
    assert log == ["w"]
    assert waiter.state == 1
    assert (a.in_use, b.in_use) == (1, 1)
    assert scheduler.queued_by_priority == {}
    assert scheduler.try_acquire((a,)) is True
    assert scheduler.try_acquire((a,)) is False  # a is full now
    assert scheduler.try_acquire((b,)) is False


def test_smaller_priority_first() -> None:
    scheduler = Scheduler(aging_seconds=0)
    limit = held("l")
    log: list[str] = []
    for priority in (3, 1, 2, 0, 2):
        scheduler.enqueue(priority, (limit,), recorder(log, f"p{priority}-{len(log)}"))
    assert log == []
    drain(scheduler, limit, 5)
    assert [name.split("-")[0] for name in log] == ["p0", "p1", "p2", "p2", "p3"]
    assert limit.in_use == 1 and limit.waiting == 0


def test_fifo_within_a_level() -> None:
    scheduler = Scheduler(aging_seconds=0)
    limit = held("l")
    log: list[str] = []
    for name in "abcde":
        scheduler.enqueue(1, (limit,), recorder(log, name))
    drain(scheduler, limit, 5)
    assert log == list("abcde")


def test_one_release_grants_as_many_as_fit() -> None:
    scheduler = Scheduler()
    limit = held("l", capacity=3)
    log: list[str] = []
    for name in "abcd":
        scheduler.enqueue(0, (limit,), recorder(log, name))
    limit.in_use = 1  # two slots freed behind the scheduler's back, then one release
    scheduler.release((limit,))
    assert log == ["a", "b", "c"]
    assert limit.in_use == 3 and limit.waiting == 1


@pytest.mark.parametrize(("waited", "winner"), [(10.0, "old"), (3.0, "urgent")])
def test_aging_lets_an_old_low_priority_waiter_win(waited: float, winner: str) -> None:
    clock = FakeClock()
    scheduler = Scheduler(aging_seconds=1.0, clock=clock)
    limit = held("l")
    log: list[str] = []
    scheduler.enqueue(5, (limit,), recorder(log, "old"))
    clock.now = waited
    scheduler.enqueue(0, (limit,), recorder(log, "urgent"))
    # 5 - waited/1.0 against 0 - 0: ten seconds make the old one more urgent, three do not.
    drain(scheduler, limit, 1)
    assert log == [winner]


def test_without_aging_the_urgent_waiter_always_wins() -> None:
    clock = FakeClock()
    scheduler = Scheduler(aging_seconds=0, clock=clock)
    limit = held("l")
    log: list[str] = []
    scheduler.enqueue(5, (limit,), recorder(log, "old"))
    for round_ in range(3):
        clock.now += 1_000_000.0
        scheduler.enqueue(0, (limit,), recorder(log, f"urgent{round_}"))
        drain(scheduler, limit, 1)
    assert log == ["urgent0", "urgent1", "urgent2"]
    drain(scheduler, limit, 1)
    assert log[-1] == "old"


def test_aging_still_orders_by_priority_among_fresh_waiters() -> None:
    clock = FakeClock()
    scheduler = Scheduler(aging_seconds=1.0, clock=clock)
    limit = held("l")
    log: list[str] = []
    for priority in (2, 0, 1):
        scheduler.enqueue(priority, (limit,), recorder(log, str(priority)))
    clock.now = 0.5  # everyone aged alike: order unchanged
    drain(scheduler, limit, 3)
    assert log == ["0", "1", "2"]


def test_multi_limit_grant_only_when_all_have_room() -> None:
    scheduler = Scheduler()
    a, b = Limit("a", 1), held("b")
    log: list[str] = []
    waiter = scheduler.enqueue(0, (a, b), recorder(log, "w"))
    assert log == []
    assert a.in_use == 0, "no slot of a is held while waiting for b"
    assert waiter.queue is b
    assert scheduler.try_acquire((a,)) is True  # a stays usable by others meanwhile
    scheduler.release((a,))
    assert log == []
    scheduler.release((b,))
    assert log == ["w"]
    assert (a.in_use, b.in_use) == (1, 1)
    assert scheduler.queued_by_priority == {}


def test_waiter_moves_to_the_next_full_limit() -> None:
    scheduler = Scheduler(aging_seconds=0)
    a, b = held("a"), held("b")
    log: list[str] = []
    waiter = scheduler.enqueue(0, (a, b), recorder(log, "w"))
    assert waiter.queue is a and a.waiting == 1
    scheduler.release((a,))  # a is free, b is not: the waiter moves to b's queue
    assert log == []
    assert waiter.queue is b
    assert (a.waiting, b.waiting) == (0, 1)
    assert (a.in_use, b.in_use) == (0, 1)
    assert scheduler.queued_by_priority == {0: 1}
    scheduler.release((b,))
    assert log == ["w"]
    assert (a.in_use, b.in_use) == (1, 1)


def test_moved_waiter_keeps_its_place_in_time() -> None:
    scheduler = Scheduler(aging_seconds=0)
    a, b = held("a"), held("b")
    log: list[str] = []
    scheduler.enqueue(1, (a, b), recorder(log, "first"))  # waits for a
    scheduler.enqueue(1, (b,), recorder(log, "second"))  # waits for b, queued later
    scheduler.release((a,))  # first moves to b's queue
    assert log == []
    scheduler.release((b,))
    assert log == ["first"], "same priority: the earlier waiter goes first"
    scheduler.release((b,))
    assert log == ["first", "second"]


def test_releasing_several_limits_dispatches_each() -> None:
    scheduler = Scheduler()
    a, b = held("a"), held("b")
    log: list[str] = []
    scheduler.enqueue(0, (a,), recorder(log, "on-a"))
    scheduler.enqueue(0, (b,), recorder(log, "on-b"))
    # one holder of both gives them back at once
    scheduler.release((a, b))
    assert sorted(log) == ["on-a", "on-b"]


def test_withdraw_frees_nothing_twice() -> None:
    scheduler = Scheduler()
    limit = held("l")
    log: list[str] = []
    gone = scheduler.enqueue(2, (limit,), recorder(log, "gone"))
    stays = scheduler.enqueue(2, (limit,), recorder(log, "stays"))
    assert scheduler.queued_by_priority == {2: 2}
    assert scheduler.withdraw(gone) is True
    assert scheduler.withdraw(gone) is False
    assert gone.state == 2
    assert limit.waiting == 1
    assert scheduler.queued_by_priority == {2: 1}
    scheduler.release((limit,))
    assert log == ["stays"]
    assert scheduler.withdraw(stays) is False  # already granted: nothing to take back
    assert limit.in_use == 1
    scheduler.release((limit,))
    assert limit.in_use == 0
    assert scheduler.queued_by_priority == {}


def test_withdrawn_waiters_are_skipped() -> None:
    scheduler = Scheduler()
    limit = held("l")
    log: list[str] = []
    waiters: list[Waiter] = [scheduler.enqueue(0, (limit,), recorder(log, name)) for name in "abc"]
    scheduler.withdraw(waiters[0])
    scheduler.withdraw(waiters[1])
    scheduler.release((limit,))
    assert log == ["c"]
    scheduler.withdraw(waiters[2])  # granted: a no-op
    scheduler.release((limit,))
    assert limit.in_use == 0 and limit.waiting == 0
    assert scheduler.queued_by_priority == {}


def test_queued_by_priority_accounting() -> None:
    scheduler = Scheduler(aging_seconds=0)
    a, b = held("a"), held("b")
    log: list[str] = []
    scheduler.enqueue(0, (a,), recorder(log, "a0"))
    scheduler.enqueue(0, (a, b), recorder(log, "ab0"))
    late = scheduler.enqueue(3, (b,), recorder(log, "b3"))
    assert scheduler.queued_by_priority == {0: 2, 3: 1}
    scheduler.release((a,))  # a0 granted
    assert log == ["a0"]
    assert scheduler.queued_by_priority == {0: 1, 3: 1}
    scheduler.release((a,))  # ab0 moves to b: still queued, counted once
    assert scheduler.queued_by_priority == {0: 1, 3: 1}
    scheduler.withdraw(late)
    assert scheduler.queued_by_priority == {0: 1}
    scheduler.release((b,))
    assert log == ["a0", "ab0"]
    assert scheduler.queued_by_priority == {}


@pytest.mark.anyio
async def test_acquire_waits_and_cancellation_leaves_nothing_behind() -> None:
    scheduler = Scheduler()
    limit = held("l")
    got: list[str] = []

    async def take(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            await scheduler.acquire(1, (limit,))
            got.append(name)

    cancelled, granted = anyio.CancelScope(), anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "cancelled", cancelled)
        tg.start_soon(take, "granted", granted)
        await anyio.wait_all_tasks_blocked()
        assert limit.waiting == 2
        assert scheduler.queued_by_priority == {1: 2}
        cancelled.cancel()
        await anyio.wait_all_tasks_blocked()
        assert limit.waiting == 1
        assert scheduler.queued_by_priority == {1: 1}
        scheduler.release((limit,))
    assert got == ["granted"]
    assert limit.in_use == 1
    assert scheduler.queued_by_priority == {}


@pytest.mark.anyio
async def test_grant_racing_a_cancellation_gives_the_slot_back() -> None:
    scheduler = Scheduler()
    limit = held("l")
    scope = anyio.CancelScope()

    async def take() -> None:
        with scope:
            await scheduler.acquire(0, (limit,))
            pytest.fail("the cancelled acquire must not return")

    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()  # the cancellation is delivered first...
        scheduler.release((limit,))  # ...then the slot is granted before the task wakes
        assert limit.in_use == 1
    assert limit.in_use == 0
    assert limit.waiting == 0
    assert scheduler.try_acquire((limit,)) is True


def test_withdrawn_waiters_do_not_pile_up() -> None:
    """Callers that give up (Overloaded) while the limit stays full leave nothing behind."""
    scheduler = Scheduler(aging_seconds=0)
    limit = Limit("full", 1)
    assert scheduler.try_acquire((limit,))
    for _ in range(10_000):
        waiter = scheduler.enqueue(1, (limit,), lambda: None)
        assert scheduler.withdraw(waiter)
    queued = limit.stored
    assert queued <= 65
    assert limit.waiting == 0
    assert scheduler.queued_by_priority == {}
    granted: list[int] = []
    scheduler.enqueue(2, (limit,), lambda: granted.append(2))
    scheduler.release((limit,))
    assert granted == [2]


def test_a_limit_alone_is_one_shared_tuple() -> None:
    scheduler = Scheduler()
    limit = Limit("l", 1)
    assert limit.alone == (limit,) and limit.alone is limit.alone
    assert scheduler.try_acquire(limit.alone) is True
    assert scheduler.try_acquire(limit.alone) is False
    scheduler.release(limit.alone)
    assert limit.in_use == 0


def test_an_agent_gives_the_same_limit_set_each_time() -> None:
    engine_limit, source, other = Limit("running", 10), Limit("source", 5), Limit("other", 5)
    agent = Agent("a", ["db"], 3, 0)
    both = agent.limit_set(engine_limit.alone, source)
    assert both == (engine_limit, source, agent.limit)
    assert agent.limit_set(engine_limit.alone, source) is both
    assert agent.limit_set((engine_limit,), source) is both  # equal outer limits, same set
    assert agent.limit_set((), source) == (source, agent.limit)
    assert agent.limit_set(engine_limit.alone, other) == (engine_limit, other, agent.limit)
    # Bounded, whatever callers pass.
    for index in range(200):
        limits = agent.limit_set((Limit(f"outer{index}", 1),), source)
        assert limits[-2:] == (source, agent.limit)
    assert agent.cached_limit_sets <= 64
