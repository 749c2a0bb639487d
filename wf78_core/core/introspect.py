"""``engine.stats()``: one snapshot built from the parts that hold the numbers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from wf78_core.core.admission import Admission, Counters
from wf78_core.core.agents import Agent
from wf78_core.core.ports import RunStats
from wf78_core.core.sources import Source, SourcePool
from wf78_core.core.stats import AgentStats, EngineStats, SourceStats, WorkflowStats
from wf78_core.definitions import WorkflowDefinition

__all__ = ["engine_stats"]


def _source_stats(source: Source) -> SourceStats:
    counters = source.counters
    latency = counters.latency
    return SourceStats(
        name=source.name,
        type=source.type,
        healthy=source.healthy,
        in_flight=source.limit.in_use,
        capacity=source.limit.capacity,
        ops=counters.ops,
        errors=counters.errors,
        retries=counters.retries,
        fallbacks=counters.fallbacks,
        latency_mean=latency.total / latency.count if latency.count else 0.0,
        latency_p50=latency.percentile(0.5),
        latency_p90=latency.percentile(0.9),
        latency_p99=latency.percentile(0.99),
    )


def _agent_stats(agent: Agent, sources: SourcePool) -> AgentStats:
    named = sources.named
    in_rotation = any(named[name].healthy for name in agent.sources if name in named)
    return AgentStats(
        id=agent.id,
        capabilities=agent.capabilities,
        status=agent.status if in_rotation else "out_of_rotation",
        running=agent.running,
        capacity=agent.capacity,
        load=agent.load,
        completed=agent.completed,
    )


def engine_stats(
    *,
    admission: Admission,
    sources: SourcePool,
    agents: Sequence[Agent],
    workflows: Iterable[WorkflowDefinition],
    runs: RunStats,
    counters: Counters,
    uptime: float,
) -> EngineStats:
    """Queues, limits, agents, sources and totals, as one msgspec struct."""
    queued = dict(admission.scheduler.queued_by_priority)
    for level, depth in runs.queued_by_level.items():
        queued[level] = queued.get(level, 0) + depth
    return EngineStats(
        queued=dict(sorted(queued.items())),
        pending=admission.pending.in_use,
        running=admission.running.in_use + runs.running,
        max_running=admission.running.capacity,
        workflows=[
            WorkflowStats(
                id=w.id,
                priority=w.priority,
                running=runs.running_by_workflow.get(w.id, 0),
                max_concurrent=w.max_concurrent,
                queued=runs.queued_by_workflow.get(w.id, 0),
            )
            for w in workflows
        ],
        agents=[_agent_stats(agent, sources) for agent in agents],
        sources=[_source_stats(source) for source in sources],
        submitted=counters.submitted,
        completed=counters.completed,
        failed=counters.failed,
        retries=counters.retries,
        fallbacks=counters.fallbacks,
        runs_active=runs.runs_active,
        runs_finished=runs.runs_finished,
        uptime=uptime,
        dead_letters=runs.dead_letters,
        dead_letter_count=runs.dead_letter_count,
        journal=runs.journal,
        reads_shared=counters.reads_shared,
    )
