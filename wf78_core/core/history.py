"""The dashboard's history: one sample of the engine per second, the last 15 minutes of them.

A :class:`History` keeps a ring of :class:`Sample` (at most :data:`WINDOW`), filled by
:meth:`History.run`, a task of the engine's service group that wakes once a second (on
the second) and reads the counters the data path already keeps: operations and errors per
source since the last sample, their latency over that second (the difference of the
sources' histograms), the queue depth, and the tasks running per workflow.

With a :class:`SampleStore` (the Redis backend's, :mod:`wf78_core.cluster.samples`) each
sample is published too, and :meth:`History.fetch` answers the whole cluster's history,
every process's samples of a second merged by :func:`merge`. If the store cannot be
reached, the answer is this process's own ring, marked ``cluster = False``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import anyio
import msgspec
from anyio.abc import TaskStatus

from wf78_core.core.sources import SourcePool
from wf78_core.core.stats import EngineStats, percentile_of

__all__ = ["WINDOW", "History", "HistoryView", "Sample", "SampleStore", "SourceSample", "merge"]

#: Samples kept: one a second for 15 minutes.
WINDOW = 900
#: Seconds a publication to the store may take before the sample is kept local only.
PUBLISH_TIMEOUT = 0.8

logger = logging.getLogger("wf78.engine")


class SourceSample(msgspec.Struct, frozen=True, kw_only=True):
    """One data source over one second."""

    ops: float  # operations per second
    errors: float  # failed operations per second
    p50: float  # seconds, over the operations of that second (0.0: none)
    p99: float
    #: the latency histogram of that second (bucket index -> count), to merge processes
    buckets: dict[int, int] = {}


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """The engine over one second, ending at ``t`` (seconds since the epoch, whole)."""

    t: int
    ops: float
    errors: float
    queued: int  # waiting operations and tasks, every priority
    running: int
    sources: dict[str, SourceSample]
    workflows: dict[str, int]  # tasks running, per workflow
    nodes: int = 1  # processes merged into it


class HistoryView(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`History.fetch` answers."""

    samples: list[Sample]
    window: int = WINDOW
    interval: float = 1.0
    #: the samples are every process's (the Redis backend's store answered)
    cluster: bool = False
    #: why the cluster's view could not be read (then ``samples`` are this process's)
    problem: str | None = None


class SampleStore(Protocol):
    """Where every process of a cluster publishes its samples."""

    async def publish(self, sample: Sample) -> None: ...

    async def fetch(self, since: int, until: int) -> dict[int, list[Sample]]:
        """Every process's samples of the seconds ``since < t <= until``, by second."""

    async def close(self) -> None: ...


def merge(samples: list[Sample]) -> Sample:
    """Several processes' samples of one second as one: rates and running tasks add up,
    latencies come from the summed histograms. Queue depths and tasks running per workflow
    are the cluster's in every process's stats already: the largest is kept."""
    if len(samples) == 1:
        return samples[0]
    sources: dict[str, list[SourceSample]] = {}
    workflows: dict[str, int] = {}
    for sample in samples:
        for name, source in sample.sources.items():
            sources.setdefault(name, []).append(source)
        for name, running in sample.workflows.items():
            workflows[name] = max(workflows.get(name, 0), running)
    return Sample(
        t=samples[0].t,
        ops=sum(s.ops for s in samples),
        errors=sum(s.errors for s in samples),
        queued=max(s.queued for s in samples),
        running=sum(s.running for s in samples),
        sources={name: _merge_source(parts) for name, parts in sources.items()},
        workflows=workflows,
        nodes=sum(s.nodes for s in samples),
    )


def _merge_source(parts: list[SourceSample]) -> SourceSample:
    buckets: dict[int, int] = {}
    for part in parts:
        for index, count in part.buckets.items():
            buckets[index] = buckets.get(index, 0) + count
    return SourceSample(
        ops=sum(p.ops for p in parts),
        errors=sum(p.errors for p in parts),
        p50=percentile_of(buckets, 0.5),
        p99=percentile_of(buckets, 0.99),
        buckets=buckets,
    )


class _Seen(msgspec.Struct):
    """A source's counters at the last sample."""

    ops: int
    errors: int
    counts: list[int]


class History:
    """The ring of samples and the sampler that fills it (see the module's docstring).

    ``stats`` is the engine's ``stats()``; ``make_store``, when set, builds the store a
    session publishes to (a new one per start: its connection belongs to that event loop).
    """

    def __init__(
        self,
        sources: SourcePool,
        stats: Callable[[], EngineStats],
        *,
        make_store: Callable[[], SampleStore] | None = None,
        window: int = WINDOW,
    ) -> None:
        self.sources = sources
        self.stats = stats
        self.make_store = make_store
        self.window = window
        self.ring: deque[Sample] = deque(maxlen=window)
        self.store: SampleStore | None = None
        self._seen: dict[str, _Seen] = {}
        self._last = time.time()

    def samples(self, since: float = 0.0) -> list[Sample]:
        """This process's samples after ``since`` (seconds since the epoch), oldest first."""
        return [sample for sample in self.ring if sample.t > since]

    async def fetch(self, since: float = 0.0) -> HistoryView:
        """The samples after ``since``: the cluster's with a store, else this process's."""
        store = self.store
        if store is None:
            return HistoryView(samples=self.samples(since))
        now = int(time.time())
        start = max(int(since), now - self.window)
        try:
            by_second = await store.fetch(start, now)
        except Exception as error:  # the store is away: this process's view, saying why
            problem = f"the cluster's history could not be read: {error}"
            return HistoryView(samples=self.samples(since), problem=problem)
        samples = [merge(by_second[t]) for t in sorted(by_second) if by_second[t]]
        return HistoryView(samples=samples, cluster=True)

    # -- the sampler -------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Take a sample on every whole second until cancelled (the engine's services)."""
        self.store = self.make_store() if self.make_store is not None else None
        self._remember(time.time())
        task_status.started()
        try:
            while True:
                await anyio.sleep(1.0 - time.time() % 1.0)
                sample = self.take()
                if sample is None:
                    continue
                self.ring.append(sample)
                if self.store is not None:
                    await self._publish(self.store, sample)
        finally:
            store, self.store = self.store, None
            if store is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(PUBLISH_TIMEOUT):
                    await store.close()

    async def _publish(self, store: SampleStore, sample: Sample) -> None:
        with anyio.move_on_after(PUBLISH_TIMEOUT):
            try:
                await store.publish(sample)
            except Exception as error:  # kept here; the next second tries again
                logger.debug("history: publishing a sample failed: %s", error)

    def take(self) -> Sample | None:
        """The sample of the time since the last one (None: no whole second has passed)."""
        now = time.time()
        second = round(now)
        if self.ring and second <= self.ring[-1].t:
            return None
        elapsed = max(now - self._last, 1e-3)
        sources = self._source_samples(elapsed)
        self._remember(now)
        stats = self.stats()
        return Sample(
            t=second,
            ops=sum(s.ops for s in sources.values()),
            errors=sum(s.errors for s in sources.values()),
            queued=sum(stats.queued.values()),
            running=stats.running,
            sources=sources,
            workflows={w.id: w.running for w in stats.workflows},
        )

    def _source_samples(self, elapsed: float) -> dict[str, SourceSample]:
        samples: dict[str, SourceSample] = {}
        for source in self.sources:
            counters = source.counters
            seen = self._seen.get(source.name)
            # New, or reopened with fresh counters (a restart): from zero.
            if seen is None or counters.ops < seen.ops or counters.errors < seen.errors:
                seen = _Seen(0, 0, [0] * len(counters.latency.counts))
            buckets = _difference(counters.latency.counts, seen.counts)
            samples[source.name] = SourceSample(
                ops=(counters.ops - seen.ops) / elapsed,
                errors=(counters.errors - seen.errors) / elapsed,
                p50=percentile_of(buckets, 0.5),
                p99=percentile_of(buckets, 0.99),
                buckets=buckets,
            )
        return samples

    def _remember(self, now: float) -> None:
        self._last = now
        self._seen = {
            source.name: _Seen(
                source.counters.ops, source.counters.errors, list(source.counters.latency.counts)
            )
            for source in self.sources
        }


def _difference(after: list[int], before: list[int]) -> dict[int, int]:
    """The non-zero bucket counts of ``after - before`` (a counter that went down: 0)."""
    return {
        index: count - before[index]
        for index, count in enumerate(after)
        if index < len(before) and count > before[index]
    }
