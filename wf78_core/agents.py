"""Agents (note 2.2.3): who runs a data task, with what capacity, and whether in rotation."""

from __future__ import annotations

from collections.abc import Sequence

from .scheduling import Limit

__all__ = ["Agent"]


class Agent:
    """A worker slot pool serving some data sources.

    ``capabilities`` holds source names or types; ``limit`` bounds the tasks it runs at
    once; ``order`` is its place in the configuration (the ``priority`` allocator fills
    agents in that order). An agent leaves rotation for a source whose health check
    fails and comes back when it passes.
    """

    __slots__ = ("capabilities", "completed", "id", "limit", "order", "sources")

    def __init__(self, id: str, capabilities: Sequence[str], concurrency: int, order: int):
        self.id = id
        self.capabilities = tuple(capabilities)
        self.limit = Limit(f"agent:{id}", concurrency)
        self.order = order
        self.completed = 0
        # Names of the configured sources this agent serves, filled by the engine.
        self.sources: list[str] = []

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
