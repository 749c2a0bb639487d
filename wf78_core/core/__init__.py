"""The engine core: scheduling, dispatch, sources, agents, workflow runs, events, stats."""
