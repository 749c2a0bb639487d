"""``priority``: agents in configured order; the first with a free slot takes the task."""

from __future__ import annotations

from collections.abc import Sequence

from wf78_core.plugin import AgentInfo, hookimpl

__all__ = ["wf78_allocate_agent"]


@hookimpl(trylast=True)
def wf78_allocate_agent(agents: Sequence[AgentInfo]) -> AgentInfo | None:
    ordered = sorted(agents, key=lambda agent: agent.order)
    return next(
        (agent for agent in ordered if agent.has_free_slot), ordered[0] if ordered else None
    )
