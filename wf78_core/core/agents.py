"""Agents (note 2.2.3): who runs a data task, with what capacity, and whether in rotation."""

from __future__ import annotations

from collections.abc import Sequence

from wf78_core.core.scheduling import Limit

__all__ = ["Agent"]

# Limit sets an agent keeps at most (two per source it serves in practice: engine.submit's
# and a workflow task's).
_LIMIT_SETS = 64


class Agent:
    """A worker slot pool serving some data sources.

    ``capabilities`` holds source names or types; ``limit`` bounds the tasks it runs at
    once; ``order`` is its place in the configuration (the ``priority`` allocator fills
    agents in that order). An agent leaves rotation for a source whose health check
    fails and comes back when it passes.
    """

    __slots__ = ("_limit_sets", "capabilities", "completed", "id", "limit", "order", "sources")

    def __init__(self, id: str, capabilities: Sequence[str], concurrency: int, order: int):
        self.id = id
        self.capabilities = tuple(capabilities)
        self.limit = Limit(f"agent:{id}", concurrency)
        self.order = order
        self.completed = 0
        # Names of the configured sources this agent serves, filled by the engine.
        self.sources: list[str] = []
        self._limit_sets: dict[tuple[tuple[Limit, ...], Limit], tuple[Limit, ...]] = {}

    def limit_set(self, outer: tuple[Limit, ...], source: Limit) -> tuple[Limit, ...]:
        """``(*outer, source, self.limit)``: every limit a task on this agent takes, as the
        same tuple each time. A task holds it while it runs; one tuple per task would be
        1,000 more objects for the garbage collector to walk with 1,000 tasks in flight."""
        key = (outer, source)
        limits = self._limit_sets.get(key)
        if limits is None:
            if len(self._limit_sets) >= _LIMIT_SETS:
                self._limit_sets.clear()
            limits = self._limit_sets[key] = (*outer, source, self.limit)
        return limits

    @property
    def cached_limit_sets(self) -> int:
        """How many limit tuples :meth:`limit_set` keeps (bounded)."""
        return len(self._limit_sets)

    @property
    def running(self) -> int:
        return self.limit.in_use

    @property
    def capacity(self) -> int:
        return self.limit.capacity

    @property
    def load(self) -> float:
        return self.limit.in_use / self.limit.capacity

    @property
    def has_free_slot(self) -> bool:
        return self.limit.in_use < self.limit.capacity

    @property
    def status(self) -> str:
        return "busy" if self.limit.in_use else "idle"

    def serves(self, name: str, type: str) -> bool:
        return name in self.capabilities or type in self.capabilities

    def __repr__(self) -> str:
        return f"Agent({self.id!r}, {self.limit.in_use}/{self.limit.capacity})"
