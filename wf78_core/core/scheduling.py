"""Priority admission to shared limits: the heart of wf78's scheduling.

A task that needs several limits (the engine's running cap, its workflow's
``max_concurrent``, its agent's capacity) takes all of them at once or none: a slot is
never held while the task waits. When a limit is full the task waits in *that* limit's
queue; when a slot frees, the releaser hands it straight to the most urgent waiter
(smaller priority first, FIFO within a level, aged by waiting time) in the same call, so
there is no dispatcher task to wake and no polling. A waiter that then finds another
limit full moves to that limit's queue, keeping its place in time.

Aging: every ``aging_seconds`` a waiter has waited counts as one level more urgent, so a
steady stream of urgent work delays, but never starves, a low-priority task.

Fair shares (``fair=True``, ``[engine] fair_by``): inside one priority level waiters are
taken in turns between tenants rather than FIFO (:mod:`wf78_core.core.fairness`); a
level's urgency is that of the waiter whose turn it is. Taking a free slot never looks
at tenants: fairness costs only when a task has to wait.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from itertools import count
from typing import Any

import anyio

from wf78_core.core.fairness import TENANT, FairLevel

__all__ = ["Limit", "Scheduler", "Waiter"]


class Waiter:
    """One task waiting for its limits; ``on_grant`` runs once all are taken."""

    __slots__ = (
        "enqueued",
        "limits",
        "on_grant",
        "priority",
        "queue",
        "seq",
        "state",
        "tenant",
        "weight",
    )

    def __init__(
        self,
        priority: int,
        limits: tuple[Limit, ...],
        on_grant: Callable[[], object],
        seq: int,
        enqueued: float,
        tenant: str | None = None,
        weight: int = 1,
    ) -> None:
        self.priority = priority
        self.limits = limits
        self.on_grant = on_grant
        self.seq = seq
        self.enqueued = enqueued
        self.queue: Limit | None = None
        self.state = 0  # 0 waiting, 1 granted, 2 withdrawn
        self.tenant = tenant  # None: fairness off (FIFO inside the level)
        self.weight = weight


class Limit:
    """A counted resource (``capacity`` slots) with a priority queue of waiters."""

    __slots__ = ("_levels", "alone", "capacity", "in_use", "name", "stale", "waiting")

    def __init__(self, name: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"limit {name!r} needs capacity >= 1, got {capacity}")
        self.name = name
        self.capacity = capacity
        self.in_use = 0
        self.waiting = 0
        self.stale = 0  # withdrawn waiters not yet dropped from the deques
        self._levels: dict[int, _FifoLevel | FairLevel[Waiter]] = {}
        # This limit on its own, to take or release it without a new tuple each time.
        self.alone: tuple[Limit] = (self,)

    @property
    def free(self) -> int:
        return self.capacity - self.in_use

    @property
    def stored(self) -> int:
        """Waiter entries held in the queues, withdrawn ones not yet dropped included
        (what a flood of withdrawn waiters costs in memory)."""
        return sum(len(level) for level in self._levels.values())

    def tenants(self) -> int:
        """Tenants with waiters in this limit's fair levels (0 with fairness off)."""
        return sum(level.tenants() for level in self._levels.values())

    def __repr__(self) -> str:
        return f"Limit({self.name!r}, {self.in_use}/{self.capacity}, waiting={self.waiting})"

    def push(self, waiter: Waiter) -> None:
        level = self._levels.get(waiter.priority)
        if level is None:
            level = self._levels[waiter.priority] = (
                _FifoLevel() if waiter.tenant is None else FairLevel()
            )
        level.push(waiter)
        waiter.queue = self
        self.waiting += 1

    def pop_best(self, now: float, aging: float) -> Waiter | None:
        """Remove and return the most urgent live waiter (lazy removal of withdrawn ones)."""
        while self.waiting:
            best_level: _FifoLevel | FairLevel[Waiter] | None = None
            best_key: tuple[float, int] = (0.0, 0)
            for priority, level in self._levels.items():
                head, dropped = level.head()
                self.stale -= dropped
                if head is None:
                    continue
                urgency = priority - (now - head.enqueued) / aging if aging else priority
                key = (urgency, head.seq)
                if best_level is None or key < best_key:
                    best_level, best_key = level, key
            if best_level is None:
                self.waiting = self.stale = 0
                return None
            waiter = best_level.take()
            self.waiting -= 1
            waiter.queue = None
            return waiter
        return None

    def withdrawn(self) -> None:
        """Count a withdrawn waiter; drop them all once they outnumber the live ones."""
        self.waiting -= 1
        self.stale += 1
        if self.stale > 64 and self.stale > self.waiting:
            for priority, level in list(self._levels.items()):
                if not level.compact():
                    del self._levels[priority]
            self.stale = 0


class _FifoLevel(deque[Waiter]):
    """The waiters of one priority level in arrival order (fairness off)."""

    __slots__ = ()

    def tenants(self) -> int:
        return 0

    def push(self, waiter: Waiter) -> None:
        if self and self[-1].seq > waiter.seq:
            # A waiter moved here from another limit keeps its place in time (FIFO by seq).
            index = len(self)
            while index and self[index - 1].seq > waiter.seq:
                index -= 1
            self.insert(index, waiter)
        else:
            self.append(waiter)

    def head(self) -> tuple[Waiter | None, int]:
        dropped = 0
        while self and self[0].state != 0:
            self.popleft()
            dropped += 1
        return (self[0] if self else None), dropped

    def take(self) -> Waiter:
        return self.popleft()

    def compact(self) -> int:
        live = [waiter for waiter in self if waiter.state == 0]
        self.clear()
        self.extend(live)
        return len(live)


class Scheduler:
    """Takes and releases sets of limits in priority order; counts waiters per priority."""

    def __init__(
        self,
        *,
        aging_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        fair: bool = False,
        weights: Mapping[str, int] | None = None,
    ):
        self.aging = aging_seconds
        self.clock = clock
        self._seq = count()
        self.queued_by_priority: dict[int, int] = {}
        #: waiters take turns between tenants inside a priority level
        self.fair = fair
        self.weights: dict[str, int] = dict(weights or {})
        #: waiters queued per tenant (fairness on only)
        self.queued_by_tenant: dict[str, int] = {}

    def try_acquire(self, limits: tuple[Limit, ...]) -> bool:
        """Take every limit now if each has a free slot and nobody is queued for it."""
        for limit in limits:
            if limit.in_use >= limit.capacity or limit.waiting:
                return False
        for limit in limits:
            limit.in_use += 1
        return True

    def enqueue(
        self, priority: int, limits: tuple[Limit, ...], on_grant: Callable[[], object]
    ) -> Waiter:
        """Queue for ``limits``; ``on_grant`` is called (synchronously) once all are held.

        If they are free now, ``on_grant`` runs before this returns.
        """
        if self.fair:
            name = TENANT.get()
            waiter = Waiter(
                priority,
                limits,
                on_grant,
                next(self._seq),
                self.clock(),
                name,
                self.weights.get(name, 1),
            )
        else:
            waiter = Waiter(priority, limits, on_grant, next(self._seq), self.clock())
        blocked = self._blocking(waiter)
        if blocked is None and not any(limit.waiting for limit in limits):
            self._grant(waiter)
        else:
            (blocked or next(limit for limit in limits if limit.waiting)).push(waiter)
            self.queued_by_priority[priority] = self.queued_by_priority.get(priority, 0) + 1
            if waiter.tenant is not None:
                by_tenant = self.queued_by_tenant
                by_tenant[waiter.tenant] = by_tenant.get(waiter.tenant, 0) + 1
        return waiter

    async def acquire(self, priority: int, limits: tuple[Limit, ...]) -> None:
        """Wait until every limit is held; on cancellation nothing stays held or queued."""
        if self.try_acquire(limits):
            return
        event = anyio.Event()
        waiter = self.enqueue(priority, limits, event.set)
        if waiter.state == 1:
            return
        try:
            await event.wait()
        except BaseException:
            if not self.withdraw(waiter):
                self.release(limits)  # granted while being cancelled: give it back
            raise

    def withdraw(self, waiter: Waiter) -> bool:
        """Take a waiter out of its queue; False if it had already been granted."""
        if waiter.state != 0:
            return False
        waiter.state = 2
        queue = waiter.queue
        if queue is not None:
            queue.withdrawn()
            waiter.queue = None
        self._dequeued(waiter)
        return True

    def release(self, limits: tuple[Limit, ...]) -> None:
        """Give back one slot of each limit and hand freed slots to the best waiters."""
        for limit in limits:
            limit.in_use -= 1
        for limit in limits:
            if limit.waiting:  # checked here: most releases have nobody to hand a slot to
                self._dispatch(limit)

    def _dispatch(self, limit: Limit) -> None:
        if not limit.waiting or limit.in_use >= limit.capacity:
            return
        now = self.clock()
        while limit.waiting and limit.in_use < limit.capacity:
            waiter = limit.pop_best(now, self.aging)
            if waiter is None:
                return
            blocked = self._blocking(waiter)
            if blocked is None:
                self._dequeued(waiter)
                self._grant(waiter)
            else:
                blocked.push(waiter)

    def _blocking(self, waiter: Waiter) -> Limit | None:
        for limit in waiter.limits:
            if limit.in_use >= limit.capacity:
                return limit
        return None

    def _grant(self, waiter: Waiter) -> None:
        for limit in waiter.limits:
            limit.in_use += 1
        waiter.state = 1
        waiter.on_grant()

    def _dequeued(self, waiter: Waiter) -> None:
        _count_down(self.queued_by_priority, waiter.priority)
        if waiter.tenant is not None:
            _count_down(self.queued_by_tenant, waiter.tenant)


def _count_down(counts: dict[Any, int], key: Any) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
