"""The note's data-source selection rules (section 4.1) as a ``trylast`` strategy.

Rules, first match wins, each only among healthy candidates able to do the action:

1. by data type: ``kind`` cache/temp -> redis; history/log -> sqlite; search ->
   elasticsearch; core -> PostgreSQL or MySQL, whichever is configured (both: the one
   declared first), then sqlite;
2. by performance need: ``latency = "low"`` -> redis, then sqlite;
3. by volume: large -> elasticsearch, medium -> PostgreSQL or MySQL, small -> sqlite.

A rule's entry ``"mysql|postgres"`` is one rank of equal types: among them the candidate
declared first wins (candidates come in the order the sources are declared).

When the preferred type is not configured the next rule is tried; with no match the
engine falls back to the first candidate. Slow sources are demoted: a candidate whose
recent median latency is over four times the best candidate's is only chosen when no
other candidate of an acceptable type exists.
"""

from __future__ import annotations

from collections.abc import Sequence

from wf78_core.plugin import Choice, Operation, SourceInfo, hookimpl

__all__ = ["RULES", "choose", "wf78_select_datasource"]

# The server SQL databases: equally preferred, the first declared wins.
_SERVER_SQL = "mysql|postgres"
# (hint, value) -> preferred source types, most preferred first ("a|b": equal rank).
RULES: dict[tuple[str, str], tuple[str, ...]] = {
    ("kind", "cache"): ("redis",),
    ("kind", "temp"): ("redis", "sqlite"),
    ("kind", "history"): ("sqlite",),
    ("kind", "log"): ("sqlite",),
    ("kind", "search"): ("elasticsearch",),
    ("kind", "core"): (_SERVER_SQL, "sqlite"),
    ("latency", "low"): ("redis", "sqlite"),
    ("volume", "large"): ("elasticsearch", _SERVER_SQL),
    ("volume", "medium"): (_SERVER_SQL, "sqlite"),
    ("volume", "small"): ("sqlite",),
}
_SLOW_FACTOR = 4.0


def choose(operation: Operation, candidates: Sequence[SourceInfo]) -> tuple[str, str] | None:
    """The source the rules pick for ``operation`` and why, or ``None``."""
    fastest = min((c.latency for c in candidates if c.latency), default=0.0)
    for hint in ("kind", "latency", "volume"):
        value = getattr(operation, hint, None)
        if value is None:
            continue
        for source_type in RULES.get((hint, value), ()):
            types = source_type.split("|")
            matching = [c for c in candidates if c.type in types]
            if not matching:
                continue
            quick = [
                c for c in matching if not fastest or c.latency <= fastest * _SLOW_FACTOR
            ] or matching
            return quick[0].name, f"rule {hint}={value} -> {quick[0].type}"
    return None


@hookimpl(trylast=True)
def wf78_select_datasource(operation: Operation, candidates: Sequence[SourceInfo]) -> Choice:
    return choose(operation, candidates)
