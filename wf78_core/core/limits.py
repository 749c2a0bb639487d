"""Limits per key (``[limits.<name>]``): a rate (GCRA) and a cap on requests in flight.

Each limit is kept per key: the identity fields it names (``key = "cid"``, ``"uid"``,
``"cid,table"``), over the data routes of its ``tables`` and koa78 ``methods`` (default
all). Every call of a table by a caller (a ``Table`` method with an identity, or a data
route's request: :mod:`wf78_core.data.tenancy`) asks :meth:`Limiter.enter` once before it
runs; a refusal is :class:`~wf78_core.errors.RateLimited` (over HTTP, 429 with
``Retry-After`` and the IETF ``RateLimit-Policy`` / ``RateLimit`` headers).

Rate: GCRA (the generic cell rate algorithm), one number per key, the theoretical
arrival time (TAT) of the next request. A request at ``now`` passes when ``TAT - now <=
tolerance`` (``tolerance = (burst - 1) / rate``) and moves TAT on by ``1 / rate``; so a
key may send ``burst`` requests at once and ``rate`` per second after that: over ``t``
seconds at most ``rate * t + burst``. A key whose TAT is past holds nothing worth
keeping and is dropped in the next sweep.

Concurrent: at most ``concurrent`` requests of a key in flight; one more waits up to
``wait`` seconds for a slot (handed over by the request that finishes), then is refused.

With a :class:`LimitStore` (the Redis backend, :mod:`wf78_core.cluster.limits`) both are
decided in the store, so they hold across every process; when the store cannot answer,
the limit's ``on_backend_error`` lets the request through ("open", logged) or refuses it
("closed").
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from itertools import count
from typing import Protocol

import anyio

from wf78_core.config.schema import Identity, LimitConfig
from wf78_core.core.stats import LimitStats
from wf78_core.errors import BackendUnavailable, RateLimited

__all__ = ["LimitStore", "Limiter", "Pass", "Rule"]

log = logging.getLogger("wf78.limits")

# Seconds between two "store unreachable" warnings of one limit.
_WARN_EVERY = 10.0


class LimitStore(Protocol):
    """Where limits are decided when they must hold across processes (Redis). Every
    method raises :class:`~wf78_core.errors.BackendUnavailable` when it cannot answer."""

    async def rate(self, limit: str, key: str, interval: float, tolerance: float) -> float:
        """One GCRA step for ``key`` of ``limit``: ``TAT - now`` after the request passed
        (>= 0), or minus the seconds until it would pass (< 0: refused)."""
        ...

    async def take(self, limit: str, key: str, capacity: int, lease: str) -> bool:
        """Take one of ``capacity`` slots of ``key`` under the name ``lease``."""
        ...

    async def give(self, limit: str, key: str, lease: str) -> None:
        """Give back the slot taken as ``lease``."""
        ...

    async def close(self) -> None:
        """Let go of the connection (at the engine's shutdown)."""
        ...


class _Slot:
    """A request waiting for a concurrency slot of one key."""

    __slots__ = ("event", "gone", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False
        self.gone = False


class Rule:
    """One ``[limits.<name>]``: its settings, its local state and its counters."""

    def __init__(self, name: str, config: LimitConfig, clock: Callable[[], float]) -> None:
        self.name = name
        self.config = config
        self.fields = tuple(part.strip() for part in config.key.split(","))
        self.tables = None if config.tables is None else frozenset(config.tables)
        self.methods = None if config.methods is None else frozenset(config.methods)
        self.rate = config.rate
        self.burst = None if config.rate is None else config.burst or max(1, math.ceil(config.rate))
        self.interval = 0.0 if config.rate is None else 1.0 / config.rate
        # A hair over (burst - 1) intervals: float sums of intervals must not lose a request.
        self.tolerance = 0.0 if self.burst is None else (self.burst - 1 + 1e-6) * self.interval
        self.concurrent = config.concurrent
        self.wait = config.wait
        self.closed = config.on_backend_error == "closed"
        self.clock = clock
        # IETF draft-ietf-httpapi-ratelimit-headers: quota q per window w seconds.
        window = max(1, math.ceil((self.burst or 0) * self.interval))
        self.policy = f'"{name}";q={self.burst};w={window}' if self.rate is not None else ""
        self.allowed = 0
        self.limited = 0
        self.backend_errors = 0
        self._warned = -math.inf
        self._tat: dict[str, float] = {}  # key -> theoretical arrival time (or its echo)
        self._sweep_at = 1024
        self._in_flight: dict[str, int] = {}
        self._queues: dict[str, deque[_Slot]] = {}

    def applies(self, table: str, method: str) -> bool:
        return (self.tables is None or table in self.tables) and (
            self.methods is None or method in self.methods
        )

    def key_of(self, identity: Identity | None, table: str) -> str:
        values = []
        for field in self.fields:
            if field == "table":
                values.append(table)
            else:
                values.append("" if identity is None else str(getattr(identity, field)))
        return values[0] if len(values) == 1 else "\x1f".join(values)

    # -- rate ------------------------------------------------------------------------------

    def rate_here(self, key: str) -> float:
        """One GCRA step in this process: as :meth:`LimitStore.rate`."""
        now = self.clock()
        tat = self._tat.get(key, now)
        if tat < now:
            tat = now
        backlog = tat - now
        if backlog > self.tolerance:
            return -(backlog - self.tolerance)
        self.remember(key, tat + self.interval, now)
        return backlog + self.interval

    def remember(self, key: str, tat: float, now: float) -> None:
        tats = self._tat
        tats[key] = tat
        if len(tats) > self._sweep_at:
            for stale in [k for k, t in tats.items() if t <= now]:
                del tats[stale]
            self._sweep_at = max(1024, 2 * len(tats))

    def refused(self, key: str, wait: float) -> RateLimited:
        self.limited += 1
        return RateLimited(
            f"rate limit {self.name!r} exceeded for {self._whose(key)}: at most "
            f"{self.rate:g} requests per second, {self.burst} at once; retry in {wait:.3g}s",
            limit=self.name,
            retry_after=wait,
            policy=self.policy,
            state=f'"{self.name}";r=0;t={max(1, math.ceil(wait))}',
        )

    def state(self, backlog: float) -> str:
        """The ``RateLimit`` header after a request passed with ``backlog`` (TAT - now)."""
        remaining = max(0, math.floor((self.tolerance - backlog) / self.interval + 1e-9) + 1)
        return f'"{self.name}";r={remaining};t={math.ceil(backlog)}'

    def _whose(self, key: str) -> str:
        fields = ",".join(self.fields)
        return f"{fields} {key!r}" if "\x1f" not in key else f"{fields} {key.split(chr(31))}"

    # -- concurrency -----------------------------------------------------------------------

    async def take_here(self, key: str) -> bool:
        """A concurrency slot of ``key`` in this process, waiting up to ``wait``."""
        capacity = self.concurrent
        assert capacity is not None
        in_flight = self._in_flight.get(key, 0)
        if in_flight < capacity:
            self._in_flight[key] = in_flight + 1
            return True
        slot = _Slot()
        self._queues.setdefault(key, deque()).append(slot)
        with anyio.move_on_after(self.wait):
            await slot.event.wait()
        if slot.granted:
            return True
        slot.gone = True
        return False

    def give_here(self, key: str) -> None:
        queue = self._queues.get(key)
        while queue:
            slot = queue.popleft()
            if not slot.gone:
                slot.granted = True  # the slot passes straight to the waiter
                slot.event.set()
                if not queue:
                    del self._queues[key]
                return
        self._queues.pop(key, None)
        left = self._in_flight[key] - 1
        if left:
            self._in_flight[key] = left
        else:
            del self._in_flight[key]

    def busy(self, key: str) -> RateLimited:
        self.limited += 1
        return RateLimited(
            f"concurrency limit {self.name!r}: {self._whose(key)} has {self.concurrent} "
            f"requests in flight already (waited {self.wait:g}s for one to finish)",
            limit=self.name,
            retry_after=1.0,
        )

    # -- the store -------------------------------------------------------------------------

    def unreachable(self, error: BackendUnavailable) -> RateLimited | None:
        """The store failed: None lets the request through (``open``), else the refusal."""
        self.backend_errors += 1
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            how = "refused (closed)" if self.closed else "let through (open)"
            log.warning("limit %r: its store failed, requests %s: %s", self.name, how, error)
        if not self.closed:
            return None
        self.limited += 1
        return RateLimited(
            f"limit {self.name!r} cannot be checked now (its store is unreachable); "
            "try again later",
            limit=self.name,
            retry_after=1.0,
        )

    def stats(self) -> LimitStats:
        now = self.clock()
        waiting = {key for key, tat in self._tat.items() if tat > now}
        return LimitStats(
            name=self.name,
            key=",".join(self.fields),
            rate=self.rate,
            burst=self.burst,
            concurrent=self.concurrent,
            allowed=self.allowed,
            limited=self.limited,
            keys=len(waiting | self._in_flight.keys()),
            in_flight=sum(self._in_flight.values()),
            backend_errors=self.backend_errors,
        )


class Pass:
    """A request let through: the headers to answer with and the slots to give back."""

    __slots__ = ("_limiter", "headers", "slots")

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter
        self.headers: list[tuple[bytes, bytes]] = []
        self.slots: list[tuple[Rule, str, str]] = []

    async def leave(self) -> None:
        """The request finished: its concurrency slots go back."""
        slots, self.slots = self.slots, []
        for rule, key, lease in slots:
            await self._limiter.give(rule, key, lease)


class Limiter:
    """Every ``[limits.<name>]`` of an engine; ``store`` (None: this process only)."""

    def __init__(
        self,
        limits: Mapping[str, LimitConfig],
        *,
        clock: Callable[[], float] = time.monotonic,
        store: LimitStore | None = None,
    ) -> None:
        self.rules = tuple(Rule(name, config, clock) for name, config in limits.items())
        self.store = store
        self._by_route: dict[tuple[str, str], tuple[Rule, ...]] = {}
        self._leases = count()
        self._process = secrets.token_hex(8)  # lease names unique across processes

    def __bool__(self) -> bool:
        return bool(self.rules)

    def rules_for(self, table: str, method: str) -> tuple[Rule, ...]:
        """The limits a call of ``table``/``method`` passes (remembered per pair)."""
        found = self._by_route.get((table, method))
        if found is None:
            found = self._by_route[(table, method)] = tuple(
                rule for rule in self.rules if rule.applies(table, method)
            )
        return found

    async def enter(self, identity: Identity | None, table: str, method: str) -> Pass:
        """Pass the limits of ``table``/``method`` for ``identity``, or raise
        :class:`~wf78_core.errors.RateLimited`; the caller calls :meth:`Pass.leave`."""
        admitted = Pass(self)
        rules = self.rules_for(table, method)
        try:
            for rule in rules:
                key = rule.key_of(identity, table)
                if rule.rate is not None:
                    await self._rate(rule, key, admitted)
                if rule.concurrent is not None:
                    await self._take(rule, key, admitted)
                rule.allowed += 1
        except BaseException:
            await admitted.leave()
            raise
        return admitted

    async def _rate(self, rule: Rule, key: str, admitted: Pass) -> None:
        store = self.store
        if store is None:
            backlog = rule.rate_here(key)
        else:
            try:
                backlog = await store.rate(rule.name, key, rule.interval, rule.tolerance)
            except BackendUnavailable as error:
                refusal = rule.unreachable(error)
                if refusal is not None:
                    raise refusal from error
                return
            if backlog >= 0:
                now = rule.clock()
                rule.remember(key, now + backlog, now)
        if backlog < 0:
            raise rule.refused(key, -backlog)
        if not admitted.headers:  # the first rate limit's state is the one answered
            admitted.headers = [
                (b"ratelimit-policy", rule.policy.encode()),
                (b"ratelimit", rule.state(backlog).encode()),
            ]

    async def _take(self, rule: Rule, key: str, admitted: Pass) -> None:
        store = self.store
        if store is None:
            if not await rule.take_here(key):
                raise rule.busy(key)
            admitted.slots.append((rule, key, ""))
            return
        lease = f"{self._process}.{next(self._leases)}"
        capacity = rule.concurrent
        assert capacity is not None
        try:
            taken = await store.take(rule.name, key, capacity, lease)
            delay, deadline = 0.005, anyio.current_time() + rule.wait
            while not taken and anyio.current_time() + delay <= deadline:
                # Another process's request holds the slot: look again, less often.
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.1)
                taken = await store.take(rule.name, key, capacity, lease)
        except BackendUnavailable as error:
            refusal = rule.unreachable(error)
            if refusal is not None:
                raise refusal from error
            return
        if not taken:
            raise rule.busy(key)
        admitted.slots.append((rule, key, lease))

    async def give(self, rule: Rule, key: str, lease: str) -> None:
        store = self.store
        if store is None:
            rule.give_here(key)
            return
        try:
            with anyio.CancelScope(shield=True):
                await store.give(rule.name, key, lease)
        except BackendUnavailable as error:
            rule.unreachable(error)  # the lease expires in the store by itself

    def stats(self) -> list[LimitStats]:
        return [rule.stats() for rule in self.rules]
