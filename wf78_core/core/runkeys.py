"""Idempotency keys of runs and events: the same key starts one run, however often it is sent.

``engine.run(..., idempotency_key=...)``, ``engine.emit(..., idempotency_key=...)`` and the
``Idempotency-Key`` header of ``POST {prefix}/runs`` and ``POST {prefix}/events/{name}``
name one request. The first one claims its key for the run it starts; a replay gets that
run's id and starts nothing; the key sent with another request (another workflow, context,
priority, event or payload: another :func:`~wf78_core.idempotency.fingerprint`) raises
:class:`~wf78_core.errors.IdempotencyConflict` (HTTP 422). An event's key is claimed once
per workflow it starts (:func:`event_key`).

Where keys live is the backend's: the in-process backend keeps them in :class:`RunKeys`, a
bounded map with a time to live, written to the journal when the journal keeps keys
(:class:`KeyJournal`: the built-in ones do), so a key outlives a restart; the Redis backend
keeps each in Redis (``SET NX`` with the time to live). Keys live ``[engine]
idempotency_ttl`` seconds; maintenance purges the journal's older ones.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import anyio
import msgspec

from wf78_core.core.records import Journal
from wf78_core.definitions import WorkflowDefinition
from wf78_core.errors import IdempotencyConflict
from wf78_core.idempotency import CONFLICT, MAX_KEY, derive_key, fingerprint

__all__ = [
    "MAX_KEYS",
    "KeyJournal",
    "KeyedRun",
    "RunKey",
    "RunKeys",
    "checked_key",
    "event_key",
    "run_key",
]

#: Keys the in-process map holds at most: past it the oldest are forgotten first (the
#: journal, when it keeps keys, still knows them).
MAX_KEYS = 100_000
# Seconds between the purges a claim makes of the journal's expired keys.
_PURGE_EVERY = 3600.0


class RunKey(msgspec.Struct, frozen=True):
    """A caller's key for starting a run, and the fingerprint of the request it names."""

    key: str
    fingerprint: str


class KeyedRun(msgspec.Struct, frozen=True):
    """What a claimed key holds: its request's fingerprint, the run it started, when."""

    fingerprint: str
    run_id: str
    created: float

    def replayed_by(self, key: RunKey) -> str:
        """The run id a replay of ``key`` answers; IdempotencyConflict for another request."""
        if key.fingerprint != self.fingerprint:
            raise IdempotencyConflict(CONFLICT)
        return self.run_id


def checked_key(key: Any) -> str:
    """``key`` when it is a string of 1 to 200 characters, else ValueError saying so."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY:
        shown = f"{len(key)} characters" if isinstance(key, str) else repr(key)
        raise ValueError(
            f"idempotency_key must be a string of 1 to {MAX_KEY} characters, got {shown}"
        )
    return key


def run_key(
    key: str | None, workflow: str, context: Mapping[str, Any] | None, priority: int | None
) -> RunKey | None:
    """The key of ``engine.run(workflow, context, priority=...)`` (None without one);
    ValueError for a key that is not a string of 1 to 200 characters."""
    if key is None:
        return None
    return RunKey(checked_key(key), fingerprint("run", workflow, dict(context or {}), priority))


def event_key(
    key: str | None, workflow: WorkflowDefinition, payload: Mapping[str, Any] | None
) -> RunKey | None:
    """The key of the run an event (``workflow.event``) starts of one subscribed
    ``workflow`` (None without one): each workflow's run is claimed on its own, so a replay
    after a partial failure starts only what is missing; the fingerprint is the event's
    (name and payload)."""
    if key is None:
        return None
    request = fingerprint("event", workflow.event, dict(payload or {}))
    return RunKey(derive_key(checked_key(key), "event", workflow.id), request)


@runtime_checkable
class KeyJournal(Protocol):
    """A journal that keeps run keys (the built-in SQLite and memory journals do)."""

    def remember_key(self, key: str, claimed: KeyedRun) -> None:
        """Queue a claimed key: durable with the run record queued after it."""

    def forget_key(self, key: str) -> None:
        """Queue the removal of a key whose run was not started after all."""

    async def find_key(self, key: str) -> KeyedRun | None:
        """A key as the journal holds it."""

    async def purge_keys(self, before: float) -> int:
        """Forget keys claimed before ``before`` (seconds since the epoch); how many."""


class _Claim:
    """A key in the map; ``settled`` is set once its run started, or failed to."""

    __slots__ = ("claimed", "settled")

    def __init__(self, claimed: KeyedRun, *, settled: bool) -> None:
        self.claimed = claimed
        self.settled = anyio.Event()
        if settled:
            self.settled.set()


class RunKeys:
    """The run keys of the in-process backend: a bounded map with a time to live, and the
    journal behind it when the journal keeps keys (:class:`KeyJournal`)."""

    def __init__(self, ttl: float, journal: Journal | None, *, limit: int = MAX_KEYS) -> None:
        self.ttl = ttl
        self.limit = limit
        self.journal: KeyJournal | None = journal if isinstance(journal, KeyJournal) else None
        self._claims: dict[str, _Claim] = {}
        # When a claim next purges the journal's expired keys itself (an engine without the
        # maintenance workflow still keeps its journal small).
        self._purge_at = time.time() + _PURGE_EVERY

    def __len__(self) -> int:
        return len(self._claims)

    async def claim(self, key: RunKey, run_id: str) -> str | None:
        """None when ``key`` is now claimed for ``run_id`` (then call :meth:`started` or
        :meth:`failed`); else the run id the key's first request started (a claim still
        starting is waited for), or IdempotencyConflict for another request."""
        while True:
            now = time.time()
            claim = self._claims.get(key.key)
            if claim is not None and claim.claimed.created + self.ttl <= now:
                del self._claims[key.key]
                claim = None
            if claim is not None:
                if not claim.settled.is_set():
                    await claim.settled.wait()
                    continue  # started (found next time) or failed (claimed next time)
                return claim.claimed.replayed_by(key)
            kept = await self._journaled(key.key, now)
            if key.key in self._claims:
                continue  # claimed by another caller while the journal was read
            if kept is not None:
                self._keep(key.key, _Claim(kept, settled=True))
                return kept.replayed_by(key)
            claimed = KeyedRun(key.fingerprint, run_id, now)
            self._keep(key.key, _Claim(claimed, settled=False))
            if self.journal is not None:
                self.journal.remember_key(key.key, claimed)  # durable with the run's record
                if now >= self._purge_at:
                    self._purge_at = now + _PURGE_EVERY
                    await self.journal.purge_keys(now - self.ttl)
            return None

    async def _journaled(self, key: str, now: float) -> KeyedRun | None:
        if self.journal is None:
            return None
        kept = await self.journal.find_key(key)
        return None if kept is None or kept.created + self.ttl <= now else kept

    def _keep(self, key: str, claim: _Claim) -> None:
        claims = self._claims
        claims[key] = claim
        while len(claims) > self.limit:  # the oldest first; a claim still starting stays
            oldest = next(iter(claims))
            if not claims[oldest].settled.is_set():
                break
            del claims[oldest]

    def started(self, key: RunKey) -> None:
        """The claimed key's run was accepted: replays find it from now on."""
        claim = self._claims.get(key.key)
        if claim is not None:
            claim.settled.set()

    def failed(self, key: RunKey) -> None:
        """The claimed key's run was not started: the key is free again."""
        claim = self._claims.pop(key.key, None)
        if claim is not None:
            claim.settled.set()
        if self.journal is not None:
            self.journal.forget_key(key.key)

    async def purge(self, before: float) -> int:
        """Forget keys claimed before ``before``: in the map, and in the journal; how many
        the journal forgot (all of the map's when there is no journal)."""
        stale = [
            key
            for key, claim in self._claims.items()
            if claim.settled.is_set() and claim.claimed.created < before
        ]
        for key in stale:
            del self._claims[key]
        if self.journal is None:
            return len(stale)
        return await self.journal.purge_keys(before)
