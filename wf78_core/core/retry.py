"""How long to wait before trying again."""

from __future__ import annotations

import random

__all__ = ["backoff"]


def backoff(attempt: int, base: float, ceiling: float) -> float:
    """Exponential backoff with full jitter (the AWS architecture blog's recommendation):
    a random wait up to ``base * 2**attempt``, never above ``ceiling``."""
    return random.uniform(0, min(ceiling, base * 2**attempt))
