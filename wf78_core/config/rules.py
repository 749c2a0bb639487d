"""Value rules shared by the config structs and the cross-checks: one definition of what a
plain identifier, a priority and a positive number are."""

from __future__ import annotations

import math
import re

__all__ = ["IDENTIFIER", "KOA78_METHODS", "MAX_PRIORITY", "positive", "priority_problem"]

# \A and \Z, not ^ and $: "$" also matches before a trailing newline ("items\n").
IDENTIFIER = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,63}\Z")

# The koa78 methods of a data route (what ``[limits.<name>] methods`` may name).
KOA78_METHODS = (
    "mAdd",
    "mAddMany",
    "mAddManyByid",
    "mUpdate",
    "mUpdateByid",
    "mUpdateMany",
    "m",
    "mByid",
    "mByFirstField",
    "get",
    "getbyBcid",
    "mdel",
    "mdelmany",
    "mUpdateElkByid",
)

# Priorities are small integers: the scheduler does float arithmetic on them when aging.
MAX_PRIORITY = 999_999_999


def priority_problem(value: int | None) -> str | None:
    """What is wrong with a priority, or ``None`` when it is in range (or unset)."""
    if value is None or -MAX_PRIORITY <= value <= MAX_PRIORITY:
        return None
    return f"must be from {-MAX_PRIORITY} to {MAX_PRIORITY}"


def positive(value: float) -> bool:
    """A finite number above zero (TOML and JSON configs can say ``nan`` and ``inf``)."""
    return math.isfinite(value) and value > 0
