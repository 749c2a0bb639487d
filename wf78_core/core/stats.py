"""Counters and latency histograms behind ``engine.stats()``."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping

import msgspec

from wf78_core.core.records import DeadLetter

__all__ = [
    "AgentStats",
    "EngineStats",
    "LatencyHistogram",
    "LimitStats",
    "SourceCounters",
    "SourceStats",
    "WorkflowStats",
    "percentile_of",
]

# Bucket upper bounds: 1 µs to ~100 s, eight buckets per power of ten (< 34% error).
_BOUNDS = [10 ** (exponent / 8) * 1e-6 for exponent in range(0, 8 * 8 + 1)]


class LatencyHistogram:
    """Fixed log buckets: O(1) memory, cheap to record, percentiles to within a bucket."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS) + 1)
        self.count = 0
        self.total = 0.0

    def record(self, seconds: float) -> None:
        self.counts[bisect_left(_BOUNDS, seconds)] += 1
        self.count += 1
        self.total += seconds

    def percentile(self, q: float) -> float:
        """The upper bound of the bucket holding the q-th fraction (0..1) of samples."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for index, bucket in enumerate(self.counts):
            seen += bucket
            if seen >= rank and bucket:
                return _BOUNDS[min(index, len(_BOUNDS) - 1)]
        return _BOUNDS[-1]


def percentile_of(buckets: Mapping[int, int], q: float) -> float:
    """:meth:`LatencyHistogram.percentile` of some of its bucket counts (index -> count):
    the difference of two snapshots of ``counts``, or several processes' summed."""
    total = sum(buckets.values())
    if not total:
        return 0.0
    rank, seen = q * total, 0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen >= rank and buckets[index]:
            return _BOUNDS[min(index, len(_BOUNDS) - 1)]
    return _BOUNDS[-1]


class SourceCounters:
    """Mutable per-source counters, updated on the hot path."""

    __slots__ = ("errors", "fallbacks", "latency", "ops", "retries")

    def __init__(self) -> None:
        self.ops = 0
        self.errors = 0
        self.retries = 0
        self.fallbacks = 0
        self.latency = LatencyHistogram()


class SourceStats(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: str
    healthy: bool
    in_flight: int
    capacity: int
    ops: int
    errors: int
    retries: int
    fallbacks: int
    latency_mean: float
    latency_p50: float
    latency_p90: float
    latency_p99: float


class AgentStats(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    capabilities: tuple[str, ...]
    status: str  # idle | busy | out_of_rotation
    running: int
    capacity: int
    load: float
    completed: int


class WorkflowStats(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    priority: int
    running: int
    max_concurrent: int
    queued: int


class LimitStats(msgspec.Struct, frozen=True, kw_only=True):
    """One ``[limits.<name>]``: its settings and what it decided (this process's counts)."""

    name: str
    key: str
    rate: float | None
    burst: int | None
    concurrent: int | None
    allowed: int
    limited: int
    #: keys with state now: a rate not yet back to a full burst, or requests in flight
    keys: int
    in_flight: int
    #: decisions the shared store (Redis) could not make, let through or refused as
    #: ``on_backend_error`` says
    backend_errors: int = 0


class EngineStats(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the engine: queues, limits, agents, sources and totals."""

    queued: dict[int, int]
    pending: int
    running: int
    max_running: int
    workflows: list[WorkflowStats]
    agents: list[AgentStats]
    sources: list[SourceStats]
    submitted: int
    completed: int
    failed: int
    retries: int
    fallbacks: int
    runs_active: int
    runs_finished: int
    uptime: float
    #: tasks that failed after retries and fallbacks, kept until run again (newest first)
    dead_letters: list[DeadLetter] = []
    dead_letter_count: int = 0
    #: where accepted runs are journaled ("off" when nowhere)
    journal: str = "off"
    #: reads answered by an identical read already in flight (``[engine] shared_reads``)
    reads_shared: int = 0
    #: the identity field fair shares are kept by ("" = off; ``[engine] fair_by``)
    fair_by: str = ""
    #: tasks waiting for a slot, per tenant ("" = work without an identity; fair_by on)
    queued_by_tenant: dict[str, int] = {}
    #: every ``[limits.<name>]``, in configuration order
    limits: list[LimitStats] = []
