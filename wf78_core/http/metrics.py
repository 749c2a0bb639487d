"""Prometheus exposition of ``engine.stats()``: a collector read at scrape time.

Every family is built from one ``engine.stats()`` snapshot per scrape, so the numbers of
one scrape agree with each other and nothing is counted twice on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wf78_core.core.stats import EngineStats
    from wf78_core.engine import Engine

__all__ = ["AGENT_STATES", "CONTENT_TYPE_LATEST", "EngineCollector", "engine_registry", "render"]

#: The values of an agent's ``status`` (``wf78_agent_status`` has one series per state).
AGENT_STATES = ("idle", "busy", "out_of_rotation")


class EngineCollector(Collector):
    """Reads ``engine.stats()`` when Prometheus scrapes; holds no counters of its own."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterable[Metric]:
        # Nothing to describe up front: registering must not take a snapshot.
        return ()

    def collect(self) -> Iterable[Metric]:
        stats = self.engine.stats()
        yield from _engine_families(stats)
        yield from _workflow_families(stats)
        yield from _agent_families(stats)
        yield from _source_families(stats)
        yield from _total_families(stats)
        yield from _limit_families(stats)


def _limit_families(stats: EngineStats) -> Iterator[Metric]:
    """Per ``[limits.<name>]``: requests let through and refused, keys with state; and the
    queue per tenant when fair shares are on."""
    allowed = CounterMetricFamily(
        "wf78_limit_allowed", "Requests a limit let through.", labels=["limit"]
    )
    limited = CounterMetricFamily(
        "wf78_limit_limited", "Requests a limit refused (HTTP 429).", labels=["limit"]
    )
    keys = GaugeMetricFamily(
        "wf78_limit_keys", "Keys a limit holds state for now.", labels=["limit"]
    )
    for limit in stats.limits:
        allowed.add_metric([limit.name], limit.allowed)
        limited.add_metric([limit.name], limit.limited)
        keys.add_metric([limit.name], limit.keys)
    yield from (allowed, limited, keys)
    if stats.fair_by:
        tenants = GaugeMetricFamily(
            "wf78_tenant_queue_depth",
            "Tasks and operations waiting for a slot, by tenant (fair_by).",
            labels=["tenant"],
        )
        for name, depth in stats.queued_by_tenant.items():
            tenants.add_metric([name], depth)
        yield tenants


def _engine_families(stats: EngineStats) -> Iterator[Metric]:
    """The queue by priority, work pending and running, the limit, dead letters."""
    queue = GaugeMetricFamily(
        "wf78_queue_depth",
        "Tasks and operations waiting for a slot, by priority (smaller is more urgent).",
        labels=["priority"],
    )
    # Every workflow's priority shows, at 0 when idle: absent series make poor alerts.
    depths = dict.fromkeys(sorted({w.priority for w in stats.workflows}), 0)
    depths.update(stats.queued)
    for priority, depth in sorted(depths.items()):
        queue.add_metric([str(priority)], depth)
    yield queue
    yield GaugeMetricFamily(
        "wf78_pending", "Accepted work not yet finished (queued and running).", stats.pending
    )
    yield GaugeMetricFamily(
        "wf78_running", "Tasks and operations running now, engine-wide.", stats.running
    )
    yield GaugeMetricFamily(
        "wf78_max_running", "Engine-wide limit on tasks running at once.", stats.max_running
    )
    yield GaugeMetricFamily(
        "wf78_dead_letters",
        "Tasks that failed after retries and fallbacks, waiting to be run again.",
        stats.dead_letter_count,
    )


def _workflow_families(stats: EngineStats) -> Iterator[Metric]:
    running = GaugeMetricFamily(
        "wf78_workflow_running", "Tasks running now, by workflow.", labels=["workflow"]
    )
    limit = GaugeMetricFamily(
        "wf78_workflow_max_concurrent",
        "A workflow's limit on tasks running at once.",
        labels=["workflow"],
    )
    waiting = GaugeMetricFamily(
        "wf78_workflow_queued", "Tasks of active runs waiting for a slot.", labels=["workflow"]
    )
    for workflow in stats.workflows:
        running.add_metric([workflow.id], workflow.running)
        limit.add_metric([workflow.id], workflow.max_concurrent)
        waiting.add_metric([workflow.id], workflow.queued)
    yield running
    yield limit
    yield waiting


def _agent_families(stats: EngineStats) -> Iterator[Metric]:
    load = GaugeMetricFamily(
        "wf78_agent_load", "Share of an agent's slots in use (0 to 1).", labels=["agent"]
    )
    agent_running = GaugeMetricFamily(
        "wf78_agent_running", "Operations an agent is running now.", labels=["agent"]
    )
    capacity = GaugeMetricFamily(
        "wf78_agent_capacity", "Operations an agent runs at once.", labels=["agent"]
    )
    status = GaugeMetricFamily(
        "wf78_agent_status",
        "1 for the agent's current status, 0 for the others.",
        labels=["agent", "status"],
    )
    agent_completed = CounterMetricFamily(
        "wf78_agent_completed", "Operations an agent has finished.", labels=["agent"]
    )
    for agent in stats.agents:
        load.add_metric([agent.id], agent.load)
        agent_running.add_metric([agent.id], agent.running)
        capacity.add_metric([agent.id], agent.capacity)
        for state in AGENT_STATES:
            status.add_metric([agent.id, state], 1.0 if agent.status == state else 0.0)
        agent_completed.add_metric([agent.id], agent.completed)
    yield load
    yield agent_running
    yield capacity
    yield status
    yield agent_completed


def _source_families(stats: EngineStats) -> Iterator[Metric]:
    labels = ["source", "type"]
    ops = CounterMetricFamily(
        "wf78_source_ops", "Operations a data source completed successfully.", labels=labels
    )
    errors = CounterMetricFamily(
        "wf78_source_errors", "Failed attempts on a data source.", labels=labels
    )
    retries = CounterMetricFamily(
        "wf78_source_retries", "Attempts on a data source that were retried.", labels=labels
    )
    fallbacks = CounterMetricFamily(
        "wf78_source_fallbacks", "Operations that degraded away from a source.", labels=labels
    )
    healthy = GaugeMetricFamily(
        "wf78_source_healthy", "1 if the source passed its last health check.", labels=labels
    )
    in_flight = GaugeMetricFamily(
        "wf78_source_in_flight", "Operations in flight on a source.", labels=labels
    )
    source_capacity = GaugeMetricFamily(
        "wf78_source_capacity", "Operations a source takes at once.", labels=labels
    )
    latency = SummaryMetricFamily(
        "wf78_source_latency_seconds",
        "Latency of successful operations (quantiles to within one log bucket).",
        labels=labels,
    )
    for source in stats.sources:
        values = [source.name, source.type]
        ops.add_metric(values, source.ops)
        errors.add_metric(values, source.errors)
        retries.add_metric(values, source.retries)
        fallbacks.add_metric(values, source.fallbacks)
        healthy.add_metric(values, 1.0 if source.healthy else 0.0)
        in_flight.add_metric(values, source.in_flight)
        source_capacity.add_metric(values, source.capacity)
        # The histogram records exactly the successful operations, so count == ops.
        latency.add_sample(
            "wf78_source_latency_seconds",
            {"source": source.name, "type": source.type, "quantile": "0.5"},
            source.latency_p50,
        )
        latency.add_sample(
            "wf78_source_latency_seconds",
            {"source": source.name, "type": source.type, "quantile": "0.9"},
            source.latency_p90,
        )
        latency.add_sample(
            "wf78_source_latency_seconds",
            {"source": source.name, "type": source.type, "quantile": "0.99"},
            source.latency_p99,
        )
        latency.add_metric(values, source.ops, source.latency_mean * source.ops)
    yield ops
    yield errors
    yield retries
    yield fallbacks
    yield healthy
    yield in_flight
    yield source_capacity
    yield latency


def _total_families(stats: EngineStats) -> Iterator[Metric]:
    """Engine-wide counters, runs and uptime."""
    yield CounterMetricFamily(
        "wf78_submitted", "Operations and tasks accepted by the engine.", stats.submitted
    )
    yield CounterMetricFamily(
        "wf78_completed", "Operations and tasks that succeeded.", stats.completed
    )
    yield CounterMetricFamily("wf78_failed", "Operations and tasks that failed.", stats.failed)
    yield CounterMetricFamily("wf78_retries", "Attempts retried, engine-wide.", stats.retries)
    yield CounterMetricFamily(
        "wf78_fallbacks", "Operations served by a fallback source.", stats.fallbacks
    )
    yield CounterMetricFamily(
        "wf78_reads_shared",
        "Reads answered by an identical read already in flight (single-flight).",
        stats.reads_shared,
    )
    yield GaugeMetricFamily("wf78_runs_active", "Workflow runs not finished.", stats.runs_active)
    yield GaugeMetricFamily(
        "wf78_runs_finished",
        "Finished workflow runs still kept for lookups (bounded by run_history).",
        stats.runs_finished,
    )
    yield GaugeMetricFamily(
        "wf78_uptime_seconds", "Seconds since the engine started.", stats.uptime
    )


def engine_registry(engine: Engine) -> CollectorRegistry:
    """A registry of its own (not the process-wide one) holding the engine's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry`` (content type ``CONTENT_TYPE_LATEST``)."""
    return generate_latest(registry)
