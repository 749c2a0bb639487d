"""B16's tenant B stage by stage: where its request waits while tenant A floods.

``python -m benchmarks.fairness_stages noisy_fair --n 20000 --in-flight 64`` runs the B16
case of :mod:`benchmarks.fairness` (``noisy_fair`` or ``noisy_fifo``) with timing probes
wrapped around public methods on tenant B's path, and prints, for B's requests of each
phase (idle, flood), the p50 / p90 / p99 of:

* ``total``: ``DataRoutes.handle``, in to out (the whole request but the driver's few µs);
* ``before_scheduler``: handle in to the first wait for a slot or, without one, to the
  SQLite writer (the route: identity, parameters, ``Table``, admission, dispatch);
* ``scheduler_turn``: ``Scheduler.acquire`` in to the grant (waiting for a slot of the
  source, in its tenant's turn with fair shares on); 0 when a slot was free;
* ``ready_queue``: the grant to ``acquire`` returning (the event loop running the
  callbacks queued ahead of B's wake-up);
* ``writer``: ``GroupCommitWriter.submit`` in to out (B's write's batch and the one it
  waited for);
* ``rest``: the remainder (answering, the hand-offs in between).

Then the writer's writes per transaction over the whole case. Timing probes cost a few µs
per call of every tenant: compare their figures with each other, not with B16's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from benchmarks.fairness import B_PHASE, noisy_fair, noisy_fifo
from wf78_core.core.scheduling import Scheduler
from wf78_core.http.routes.serving import DataRoutes
from wf78_sql import GroupCommitWriter

__all__ = ["main"]

STAGES = ("total", "before_scheduler", "scheduler_turn", "ready_queue", "writer", "rest")

# The marks of the B request running in this context: name -> perf_counter (first one).
_MARKS: ContextVar[dict[str, float] | None] = ContextVar("b16_marks", default=None)


def _mark(name: str) -> None:
    marks = _MARKS.get()
    if marks is not None:
        marks.setdefault(name, time.perf_counter())


class Probes:
    """Wraps the public methods on B's path; :meth:`remove` puts them back."""

    def __init__(self) -> None:
        self.requests: dict[str, list[dict[str, float]]] = {"idle": [], "flood": []}
        self.writers: set[GroupCommitWriter] = set()
        self._saved: list[tuple[type, str, Any]] = []

    def install(self) -> None:
        handle = DataRoutes.handle
        acquire = Scheduler.acquire
        enqueue = Scheduler.enqueue
        submit = GroupCommitWriter.submit
        requests, writers = self.requests, self.writers

        async def probed_handle(self: DataRoutes, *args: Any) -> None:
            phase = B_PHASE.get()
            if not phase:
                return await handle(self, *args)
            marks = {"in": time.perf_counter()}
            token = _MARKS.set(marks)
            try:
                return await handle(self, *args)
            finally:
                marks["out"] = time.perf_counter()
                _MARKS.reset(token)
                requests[phase].append(marks)

        async def probed_acquire(self: Scheduler, *args: Any) -> None:
            _mark("acquire_in")
            await acquire(self, *args)
            _mark("acquire_out")

        def probed_enqueue(
            self: Scheduler, priority: int, limits: Any, on_grant: Callable[[], object]
        ) -> Any:
            marks = _MARKS.get()
            if marks is None:
                return enqueue(self, priority, limits, on_grant)

            def granted() -> object:  # runs in the releasing task: B's marks by closure
                marks.setdefault("grant", time.perf_counter())
                return on_grant()

            return enqueue(self, priority, limits, granted)

        async def probed_submit(self: GroupCommitWriter, write: Any) -> Any:
            writers.add(self)
            _mark("write_in")
            try:
                return await submit(self, write)
            finally:
                _mark("write_out")

        for owner, name, probe in (
            (DataRoutes, "handle", probed_handle),
            (Scheduler, "acquire", probed_acquire),
            (Scheduler, "enqueue", probed_enqueue),
            (GroupCommitWriter, "submit", probed_submit),
        ):
            self._saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, probe)

    def remove(self) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()


def stages(marks: dict[str, float]) -> dict[str, float]:
    """One B request's stages in seconds (see the module's docstring)."""
    total = marks["out"] - marks["in"]
    waited = "acquire_in" in marks and "grant" in marks and "acquire_out" in marks
    first_wait = marks["acquire_in"] if waited else marks.get("write_in", marks["out"])
    turn = marks["grant"] - marks["acquire_in"] if waited else 0.0
    ready = marks["acquire_out"] - marks["grant"] if waited else 0.0
    writer = marks["write_out"] - marks["write_in"] if "write_out" in marks else 0.0
    before = first_wait - marks["in"]
    return {
        "total": total,
        "before_scheduler": before,
        "scheduler_turn": turn,
        "ready_queue": ready,
        "writer": writer,
        "rest": total - before - turn - ready - writer,
    }


def summary(requests: list[dict[str, float]]) -> dict[str, Any]:
    """p50 / p90 / p99 (ms) of each stage over ``requests``; the mean of each stage over
    the slowest 1 % (what B's p99 is made of)."""
    rows = sorted((stages(marks) for marks in requests), key=lambda row: row["total"])
    if len(rows) < 100:
        return {"requests": len(rows)}
    out: dict[str, Any] = {"requests": len(rows)}
    slowest = rows[-len(rows) // 100 :]
    for stage in STAGES:
        values = [row[stage] for row in rows]
        cuts = statistics.quantiles(values, n=100)
        out[stage] = {
            "p50": round(cuts[49] * 1e3, 3),
            "p90": round(cuts[89] * 1e3, 3),
            "p99": round(cuts[98] * 1e3, 3),
            "slowest_1pct_mean": round(statistics.mean(r[stage] for r in slowest) * 1e3, 3),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=("noisy_fair", "noisy_fifo"))
    parser.add_argument("--n", type=int, default=20_000, help="tenant A's flood")
    parser.add_argument("--in-flight", type=int, default=64, help="tenant A's workers")
    args = parser.parse_args(argv)
    case = noisy_fair if args.case == "noisy_fair" else noisy_fifo
    probes = Probes()
    probes.install()
    try:
        result = asyncio.run(case(args))
    finally:
        probes.remove()
    transactions = sum(writer.transactions for writer in probes.writers)
    writes = sum(writer.writes for writer in probes.writers)
    report = {
        "case": args.case,
        "result": result,
        "stages_ms": {phase: summary(rows) for phase, rows in probes.requests.items()},
        "writes_per_transaction": round(writes / transactions, 2) if transactions else None,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
