"""Fair shares between tenants inside one priority level (``[engine] fair_by``).

Without fairness a priority level is one FIFO queue: a tenant with 10,000 queued
operations is ahead of another tenant's single one. With it, each level keeps a FIFO
queue per tenant and a turn order of the tenants that wait: the next slot goes to the
tenant whose turn it is, which then moves to the back (after ``weight`` turns in a row,
``[engine.fair_weights]``). A tenant that starts waiting joins at the back, so it waits
at most one turn of each tenant already waiting.

The tenant of a waiter is :data:`TENANT` when it starts waiting: a ``Table`` call with an
identity (a data route's included) and ``POST {prefix}/runs`` set it to the caller's
``fair_by`` field (``cid`` or ``uid``), and a run's tasks run as the run's tenant; work
without an identity (schedules, events, an engine used from Python without :func:`tenant`)
is the tenant ``""``, one tenant like any other. Nothing here runs unless a task has to wait: taking
a free slot never looks at tenants.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Generic, Protocol, TypeVar

__all__ = ["TENANT", "FairLevel", "Queued", "resolve_fair_by", "tenant", "tenant_of"]

#: The tenant of the work started in this context ("" = no identity).
TENANT: ContextVar[str] = ContextVar("wf78_tenant", default="")


@contextmanager
def tenant(name: str) -> Iterator[None]:
    """Work submitted inside ``with tenant("acme"):`` waits in acme's turn."""
    token = TENANT.set(name)
    try:
        yield
    finally:
        TENANT.reset(token)


def tenant_of(identity: object | None, fair_by: str) -> str:
    """The tenant of ``identity`` for fair shares: its ``fair_by`` field ("" when fair
    shares are off or it has none)."""
    if identity is None or not fair_by:
        return ""
    return str(getattr(identity, fair_by, "") or "")


def resolve_fair_by(fair_by: str | None, owned_tables: bool) -> str:
    """``[engine] fair_by`` as set, or (unset) ``"cid"`` when some table has an owner."""
    if fair_by is None:
        return "cid" if owned_tables else ""
    return fair_by


class Queued(Protocol):
    """What a fair level needs of a waiter."""

    state: int  # 0 waiting; anything else: granted or withdrawn, dropped when met
    seq: int  # arrival order: FIFO inside one tenant
    tenant: str | None
    weight: int


W = TypeVar("W", bound=Queued)


class FairLevel(Generic[W]):
    """The waiters of one priority level: a FIFO queue per tenant, taken in turns."""

    __slots__ = ("_credit", "_queues", "_turns")

    def __init__(self) -> None:
        self._queues: dict[str, deque[W]] = {}
        self._turns: deque[str] = deque()  # tenants with waiters, whose turn first
        self._credit = 0  # turns left to the tenant at the front of _turns

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def tenants(self) -> int:
        return len(self._queues)

    def push(self, waiter: W) -> None:
        """Queue ``waiter`` in its tenant's queue by arrival (a waiter moved here from
        another limit keeps its place in time)."""
        name = waiter.tenant or ""
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = deque()
            self._turns.append(name)
            if len(self._turns) == 1:
                self._credit = waiter.weight
        if queue and queue[-1].seq > waiter.seq:
            index = len(queue)
            while index and queue[index - 1].seq > waiter.seq:
                index -= 1
            queue.insert(index, waiter)
        else:
            queue.append(waiter)

    def head(self) -> tuple[W | None, int]:
        """The live waiter whose turn it is (None: none left) and how many withdrawn
        waiters were dropped on the way."""
        dropped = 0
        turns = self._turns
        while turns:
            name = turns[0]
            queue = self._queues[name]
            while queue and queue[0].state != 0:
                queue.popleft()
                dropped += 1
            if queue:
                return queue[0], dropped
            del self._queues[name]
            turns.popleft()
            self._credit = self._queues_weight()
        return None, dropped

    def take(self) -> W:
        """Take the waiter :meth:`head` returned; its tenant moves on a turn."""
        name = self._turns[0]
        queue = self._queues[name]
        waiter = queue.popleft()
        self._credit -= 1
        if not queue:
            del self._queues[name]
            self._turns.popleft()
            self._credit = self._queues_weight()
        elif self._credit <= 0:
            self._turns.rotate(-1)
            self._credit = self._queues_weight()
        return waiter

    def compact(self) -> int:
        """Drop withdrawn waiters; how many live ones are left."""
        for name in list(self._queues):
            live = deque(waiter for waiter in self._queues[name] if waiter.state == 0)
            if live:
                self._queues[name] = live
            else:
                del self._queues[name]
        front = self._turns[0] if self._turns else None
        self._turns = deque(name for name in self._turns if name in self._queues)
        if not self._turns or self._turns[0] != front:
            self._credit = self._queues_weight()
        return len(self)

    def _queues_weight(self) -> int:
        """The weight of the tenant now at the front (its waiters carry it)."""
        if not self._turns:
            return 0
        return self._queues[self._turns[0]][0].weight
