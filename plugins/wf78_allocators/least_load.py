"""``least_load``: the agent with the smallest share of its capacity in use."""

from __future__ import annotations

from collections.abc import Sequence

from wf78_core.plugin import AgentInfo, hookimpl

__all__ = ["wf78_allocate_agent"]


@hookimpl(trylast=True)
def wf78_allocate_agent(agents: Sequence[AgentInfo]) -> AgentInfo | None:
    if not agents:
        return None
    return min(agents, key=lambda agent: (agent.load, agent.order))
