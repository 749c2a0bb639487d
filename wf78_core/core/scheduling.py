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
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from itertools import count

import anyio

__all__ = ["Limit", "Scheduler", "Waiter"]


class Waiter:
    """One task waiting for its limits; ``on_grant`` runs once all are taken."""

    __slots__ = ("enqueued", "limits", "on_grant", "priority", "queue", "seq", "state")

    def __init__(
        self,
        priority: int,
        limits: tuple[Limit, ...],
        on_grant: Callable[[], object],
        seq: int,
        enqueued: float,
    ) -> None:
        self.priority = priority
        self.limits = limits
        self.on_grant = on_grant
        self.seq = seq
        self.enqueued = enqueued
        self.queue: Limit | None = None
        self.state = 0  # 0 waiting, 1 granted, 2 withdrawn


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
        self._levels: dict[int, deque[Waiter]] = {}
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

    def __repr__(self) -> str:
        return f"Limit({self.name!r}, {self.in_use}/{self.capacity}, waiting={self.waiting})"

    def push(self, waiter: Waiter) -> None:
        level = self._levels.get(waiter.priority)
        if level is None:
            level = self._levels[waiter.priority] = deque()
        if level and level[-1].seq > waiter.seq:
            # A waiter moved here from another limit keeps its place in time (FIFO by seq).
            index = len(level)
            while index and level[index - 1].seq > waiter.seq:
                index -= 1
            level.insert(index, waiter)
        else:
            level.append(waiter)
        waiter.queue = self
        self.waiting += 1

    def pop_best(self, now: float, aging: float) -> Waiter | None:
        """Remove and return the most urgent live waiter (lazy removal of withdrawn ones)."""
        while self.waiting:
            best_level: deque[Waiter] | None = None
            best_key: tuple[float, int] = (0.0, 0)
            for priority, level in self._levels.items():
                while level and level[0].state != 0:
                    level.popleft()
                    self.stale -= 1
                if not level:
                    continue
                head = level[0]
                urgency = priority - (now - head.enqueued) / aging if aging else priority
                key = (urgency, head.seq)
                if best_level is None or key < best_key:
                    best_level, best_key = level, key
            if best_level is None:
                self.waiting = self.stale = 0
                return None
            waiter = best_level.popleft()
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
                live = deque(waiter for waiter in level if waiter.state == 0)
                if live:
                    self._levels[priority] = live
                else:
                    del self._levels[priority]
            self.stale = 0


class Scheduler:
    """Takes and releases sets of limits in priority order; counts waiters per priority."""

    def __init__(self, *, aging_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.aging = aging_seconds
        self.clock = clock
        self._seq = count()
        self.queued_by_priority: dict[int, int] = {}

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
        waiter = Waiter(priority, limits, on_grant, next(self._seq), self.clock())
        blocked = self._blocking(waiter)
        if blocked is None and not any(limit.waiting for limit in limits):
            self._grant(waiter)
        else:
            (blocked or next(limit for limit in limits if limit.waiting)).push(waiter)
            self.queued_by_priority[priority] = self.queued_by_priority.get(priority, 0) + 1
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
        self._dequeued(waiter.priority)
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
                self._dequeued(waiter.priority)
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

    def _dequeued(self, priority: int) -> None:
        left = self.queued_by_priority[priority] - 1
        if left:
            self.queued_by_priority[priority] = left
        else:
            del self.queued_by_priority[priority]
