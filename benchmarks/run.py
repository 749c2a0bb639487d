"""Run the wf78 benchmarks and check their targets.

    python -m benchmarks [--only B1,B2] [--rounds N] [--quick] [--output PATH] [--strict]
    python benchmarks/run.py ...           (the same)

Every measured case runs in a fresh process (``python -m benchmarks.<module> <case>``). A
round runs the baseline, then the candidate(s); CPU speed drifts over minutes, so a
comparison is the median over rounds of the per-round ratio, never a ratio of medians.
Prints a table with each target and PASS/FAIL and writes every sample to a JSON file.

The batching benchmarks (B1, B2, B5, B6, B7) measure two shapes of load: the burst (batches
of operations through one ``asyncio.gather``) and a steady window (each operation its own
task, at most W in flight under a semaphore: sub-benchmarks ``B2s64``, ``B2s1000``, ...);
B2 and B5 also compare the p99 latency of one add at 1 and 8 in flight (``B2lat1``, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["RESULT_PREFIX", "main"]

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
# The line a case prints its JSON result on (see _harness.py).
RESULT_PREFIX = "wf78-bench-result: "
CASE_TIMEOUT = 900.0
MB = 1024 * 1024

Sample = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """How big and how often: the full run, or ``--quick`` for a smoke check."""

    mode: str
    rounds: int
    dispatch_ops: int
    sqlite_writes: int
    queued_ops: int
    dag_sizes: tuple[int, ...]
    mysql_writes: int
    redis_sets: int
    es_writes: int
    single_gets: int
    passthrough_requests: int = 20_000
    route_gets: int = 5_000
    route_adds: int = 5_000
    shared_gets: int = 20_000
    # B14: seconds wrk loads each server (after a warm-up of its own).
    peer_seconds: int = 10
    in_flight: int = 1000
    # The steady shape: windows of W operations in flight (each its own task).
    steady_windows: tuple[int, ...] = (64, 1000)
    # Latency at low load: adds timed one by one, at 1 and 8 in flight.
    latency_ops: int = 3_000
    latency_windows: tuple[int, ...] = (1, 8)
    # Memory is not CPU-bound and barely varies: fewer rounds say as much.
    memory_rounds: int = 3


FULL = Plan(
    "full",
    rounds=7,
    dispatch_ops=100_000,
    sqlite_writes=20_000,
    queued_ops=100_000,
    dag_sizes=(1_000, 10_000, 100_000),
    mysql_writes=20_000,
    redis_sets=50_000,
    es_writes=5_000,
    single_gets=5_000,
)
QUICK = Plan(
    "quick",
    rounds=2,
    dispatch_ops=20_000,
    sqlite_writes=4_000,
    queued_ops=20_000,
    dag_sizes=(1_000, 10_000),
    mysql_writes=4_000,
    redis_sets=10_000,
    es_writes=1_000,
    single_gets=1_000,
    passthrough_requests=5_000,
    route_gets=1_000,
    route_adds=1_000,
    shared_gets=4_000,
    peer_seconds=3,
    latency_ops=500,
    memory_rounds=1,
)


@dataclass(frozen=True)
class Target:
    """``value <op> limit``, e.g. a ratio ``>= 0.33``."""

    op: str
    limit: float
    unit: str

    def met(self, value: float) -> bool:
        return value >= self.limit if self.op == ">=" else value <= self.limit

    def __str__(self) -> str:
        return f"{self.op} {_number(self.limit)}{self.unit}"


@dataclass
class Outcome:
    """One benchmark's verdict, the lines printed under it and everything for the JSON."""

    id: str
    title: str
    measure: str
    target: Target
    value: float | None = None
    spread: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None or self.value is None:
            return "ERROR"
        return "PASS" if self.target.met(self.value) else "FAIL"

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "measure": self.measure,
            "value": self.value,
            "spread": list(self.spread) if self.spread else None,
            "target": {**asdict(self.target), "text": str(self.target)},
            "status": self.status,
            "error": self.error,
            "parameters": self.parameters,
            "summary": self.summary,
            "notes": self.notes,
            "rounds": self.rounds,
        }


class CaseFailed(Exception):
    """A case process failed or printed no result."""


def case_environment() -> dict[str, str]:
    """The environment of a case: this tree's core and plugins come first on the path.

    The editable install's path entries (a ``.pth`` file in the shared virtualenv) can point
    at another checkout; a benchmark must measure the code next to it.
    """
    paths = [str(ROOT), str(ROOT / "plugins")]
    inherited = os.environ.get("PYTHONPATH")
    if inherited:
        paths.append(inherited)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def run_case(
    module: str,
    case: str,
    n: int,
    in_flight: int = 1000,
    shape: str = "burst",
    *,
    latency: bool = False,
) -> Sample:
    """Run one case in a fresh interpreter and return its JSON result."""
    command = [
        sys.executable,
        "-m",
        f"benchmarks.{module}",
        case,
        f"--n={n}",
        f"--in-flight={in_flight}",
    ]
    if shape != "burst":
        command.append(f"--shape={shape}")
    if latency:
        command.append("--latency")
    label = " ".join(command[2:])
    result: Sample = run_child(command, label)
    return result


@dataclass(frozen=True)
class Run:
    """One case of a round; ``key`` names its sample in the round (``engine``,
    ``s64:engine`` for the steady window of 64, ``lat1:engine`` for latency at 1 in flight)."""

    key: str
    case: str
    n: int
    in_flight: int
    shape: str = "burst"
    latency: bool = False


def burst_runs(cases: Sequence[str], n: int, in_flight: int) -> list[Run]:
    return [Run(case, case, n, in_flight) for case in cases]


def steady_runs(plan: Plan, cases: Sequence[str], n: int) -> list[Run]:
    """``cases`` (baselines first) in the steady shape, for each of ``plan.steady_windows``."""
    return [
        Run(f"s{window}:{case}", case, n, window, "steady")
        for window in plan.steady_windows
        for case in cases
    ]


def latency_runs(plan: Plan, cases: Sequence[str]) -> list[Run]:
    """``cases`` (baselines first) timed per operation at each of ``plan.latency_windows``."""
    return [
        Run(f"lat{window}:{case}", case, plan.latency_ops, window, "steady", latency=True)
        for window in plan.latency_windows
        for case in cases
    ]


def _group_text(samples: dict[str, Sample], keys: Sequence[str]) -> str:
    """``prefix case figure, case ratio``: each case of a group against the group's first
    (its baseline), throughput or, for latency, p99."""
    prefix = keys[0].partition(":")[0] + " " if ":" in keys[0] else ""
    latency = prefix.startswith("lat")
    figure = "p99_us" if latency else "ops_per_s"
    first = samples[keys[0]][figure]
    parts = []
    for index, key in enumerate(keys):
        case = key.partition(":")[2] or key
        value = samples[key][figure]
        if index == 0:
            parts.append(f"{case} p99 {value:,.0f} us" if latency else f"{case} {value:,.0f}/s")
        else:
            parts.append(f"{case} {value / first:.2f}x")
    return prefix + ", ".join(parts)


def round_runs(plan: Plan, label: str, module: str, runs: Sequence[Run]) -> list[dict[str, Sample]]:
    """``plan.rounds`` rounds of ``runs`` in order (baselines first), each a fresh process."""
    rounds = []
    for number in range(1, plan.rounds + 1):
        samples = {
            run.key: run_case(
                module, run.case, run.n, run.in_flight, run.shape, latency=run.latency
            )
            for run in runs
        }
        rounds.append(samples)
        groups: dict[str, list[str]] = {}
        for run in runs:
            groups.setdefault(run.key.partition(":")[0] if ":" in run.key else "", []).append(
                run.key
            )
        progress(
            f"{label} round {number}/{plan.rounds}: "
            + "; ".join(_group_text(samples, keys) for keys in groups.values())
        )
    return rounds


def run_child(command: list[str], label: str) -> dict[str, Any]:
    """Run a benchmark process (``CASE_TIMEOUT`` at most) and return the JSON it printed
    after ``RESULT_PREFIX``; :class:`CaseFailed` with its last error lines otherwise."""
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=case_environment(),
            capture_output=True,
            text=True,
            timeout=CASE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise CaseFailed(f"{label}: no result after {CASE_TIMEOUT:.0f}s") from error
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise CaseFailed(f"{label} exited {done.returncode}:\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    return result


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def median_and_spread(values: Sequence[float]) -> tuple[float, tuple[float, float]]:
    return statistics.median(values), (min(values), max(values))


# -- the benchmarks ------------------------------------------------------------------------


def dispatch(plan: Plan) -> list[Outcome]:
    n, in_flight = plan.dispatch_ops, plan.in_flight
    runs = burst_runs(("raw", "engine", "engine_timeout"), n, in_flight) + steady_runs(
        plan, ("raw", "engine"), n
    )
    all_rounds = round_runs(plan, "B1", "dispatch", runs)
    outcome = Outcome(
        "B1",
        "dispatch: no-op engine.submit vs asyncio.gather",
        "engine/raw ops/s",
        Target(">=", 0.33, "x"),
        parameters={"operations": n, "in_flight": in_flight, "shape": "burst"},
    )
    for samples in all_rounds:
        burst = {case: samples[case] for case in ("raw", "engine", "engine_timeout")}
        raw = burst["raw"]["ops_per_s"]
        ratio = burst["engine"]["ops_per_s"] / raw
        timeout_ratio = burst["engine_timeout"]["ops_per_s"] / raw
        outcome.rounds.append({**burst, "ratio": ratio, "timeout_ratio": timeout_ratio})
    rounds = outcome.rounds
    outcome.value, outcome.spread = median_and_spread([r["ratio"] for r in rounds])
    summary = {
        "raw_ops_per_s": statistics.median(r["raw"]["ops_per_s"] for r in rounds),
        "engine_ops_per_s": statistics.median(r["engine"]["ops_per_s"] for r in rounds),
        "engine_timeout_ops_per_s": statistics.median(
            r["engine_timeout"]["ops_per_s"] for r in rounds
        ),
        "timeout_ratio": statistics.median(r["timeout_ratio"] for r in rounds),
    }
    outcome.summary = summary
    outcome.notes = [
        f"raw asyncio.gather        {summary['raw_ops_per_s']:>10,.0f} ops/s "
        "(reference: about 140,000 on these machines)",
        f"engine.submit             {summary['engine_ops_per_s']:>10,.0f} ops/s",
        f"engine.submit timeout=30  {summary['engine_timeout_ops_per_s']:>10,.0f} ops/s "
        f"= {summary['timeout_ratio']:.2f}x raw (informational: a cancel scope per op)",
    ]
    outcomes = [outcome]
    for window in plan.steady_windows:
        steady = _steady_outcome(
            Outcome(
                f"B1s{window}",
                f"dispatch, steady {window}: no-op engine.submit vs a bare task, "
                f"each under the same semaphore of {window}",
                "engine/raw ops/s",
                Target(">=", 0.8, "x"),
            ),
            all_rounds,
            window,
            n,
            "engine",
            "raw",
        )
        base, cand = steady.summary["baseline_ops_per_s"], steady.summary["candidate_ops_per_s"]
        steady.notes = [
            f"raw: a task per no-op      {base:>10,.0f} ops/s ({1e6 / base:.2f} us/op)",
            f"engine.submit in the task  {cand:>10,.0f} ops/s ({1e6 / cand:.2f} us/op, "
            f"+{1e6 / cand - 1e6 / base:.2f} us)",
        ]
        outcomes.append(steady)
    return outcomes


def _rate(rounds: Sequence[dict[str, Any]], case: str, key: str = "ops_per_s") -> float:
    return float(statistics.median(r[case][key] for r in rounds))


def _ratio_text(value: float, spread: tuple[float, float]) -> str:
    return f"{value:.2f}x ({spread[0]:.2f}-{spread[1]:.2f})"


# B2's informational comparisons: (label, candidate case, baseline case).
SQLITE_INFORMATIONAL = (
    ("a", "engine", "direct_wal_full", "direct, WAL + FULL, execute + commit under the lock"),
    ("b", "engine", "direct_wal_full_autocommit", "direct, WAL + FULL, autocommit (one hop)"),
    (
        "c",
        "engine_normal",
        "direct_wal_normal_autocommit",
        "direct, WAL + NORMAL, autocommit (not durable)",
    ),
)


def sqlite_writes(plan: Plan) -> list[Outcome]:
    n, in_flight = plan.sqlite_writes, plan.in_flight
    outcome = Outcome(
        "B2",
        "SQLite writes: engine add (group commit) vs aiosqlite, one commit each",
        "engine/direct rows/s",
        Target(">=", 10.0, "x"),
        parameters={"writes": n, "in_flight": in_flight, "shape": "burst"},
    )
    # Each baseline runs before the engine it is compared with.
    cases = (
        "direct",
        "engine",
        "direct_wal_full",
        "direct_wal_full_autocommit",
        "direct_wal_normal_autocommit",
        "engine_normal",
    )
    # The steady shape and the latency comparison: the baseline has the engine's pragmas.
    steady_cases = ("direct_wal_full", "direct_wal_full_autocommit", "engine")
    runs = (
        burst_runs(cases, n, in_flight)
        + steady_runs(plan, steady_cases, n)
        + latency_runs(plan, steady_cases)
    )
    all_rounds = round_runs(plan, "B2", "sqlite_writes", runs)
    for all_samples in all_rounds:
        samples = {case: all_samples[case] for case in cases}
        ratios = {"primary": samples["engine"]["ops_per_s"] / samples["direct"]["ops_per_s"]}
        for label, candidate, baseline, _ in SQLITE_INFORMATIONAL:
            ratios[label] = samples[candidate]["ops_per_s"] / samples[baseline]["ops_per_s"]
        outcome.rounds.append({**samples, "ratio": ratios["primary"], "ratios": ratios})
    rounds = outcome.rounds
    outcome.value, outcome.spread = median_and_spread([r["ratio"] for r in rounds])
    batches = [r["engine"]["writes_per_transaction"] for r in rounds]
    known = [size for size in batches if size]
    per_commit = statistics.median(known) if known else None
    summary: dict[str, Any] = {
        "rows_per_s": {case: _rate(rounds, case) for case in cases},
        "engine_writes_per_transaction": per_commit,
        "informational_ratios": {},
    }
    outcome.notes = [
        "primary baseline: aiosqlite with SQLite's defaults (no PRAGMA: rollback journal, "
        "synchronous FULL),",
        "  execute(INSERT) + commit() per row under an asyncio.Lock",
        f"direct                         {summary['rows_per_s']['direct']:>10,.0f} rows/s",
        f"engine add (WAL + FULL)        {summary['rows_per_s']['engine']:>10,.0f} rows/s"
        + (f", {per_commit:,.0f} writes per commit" if per_commit else ""),
        "informational, each with its own ratio (engine / that baseline):",
    ]
    for label, candidate, baseline, text in SQLITE_INFORMATIONAL:
        value, spread = median_and_spread([r["ratios"][label] for r in rounds])
        summary["informational_ratios"][label] = {
            "candidate": candidate,
            "baseline": baseline,
            "value": value,
            "spread": list(spread),
        }
        engine_text = "engine" if candidate == "engine" else "engine at synchronous NORMAL"
        outcome.notes.append(
            f"  ({label}) {text}: {summary['rows_per_s'][baseline]:,.0f} rows/s; "
            f"{engine_text} {summary['rows_per_s'][candidate]:,.0f} rows/s = "
            f"{_ratio_text(value, spread)}"
        )
    outcome.summary = summary
    outcomes = [outcome]
    for window in plan.steady_windows:
        steady = _steady_outcome(
            Outcome(
                f"B2s{window}",
                f"SQLite writes, steady {window}: engine add vs aiosqlite with the engine's "
                "pragmas (WAL + FULL), execute + commit per row under a lock",
                "engine/direct rows/s",
                Target(">=", 10.0, "x"),
            ),
            all_rounds,
            window,
            n,
            "engine",
            "direct_wal_full",
            informational=(("direct_wal_full_autocommit", "direct, WAL + FULL, autocommit"),),
        )
        steady.notes[:0] = [
            f"direct WAL + FULL, execute + commit  "
            f"{steady.summary['baseline_ops_per_s']:>10,.0f} rows/s",
            f"engine add                           "
            f"{steady.summary['candidate_ops_per_s']:>10,.0f} rows/s, "
            f"{_writes_per_commit(all_rounds, f's{window}:engine')} writes per commit",
        ]
        outcomes.append(steady)
    for window in plan.latency_windows:
        outcomes.append(
            _latency_outcome(
                Outcome(
                    f"B2lat{window}",
                    f"SQLite add latency, {window} in flight: engine vs aiosqlite WAL + FULL, "
                    "execute + commit under a lock",
                    "engine/direct p99",
                    Target("<=", 1.0, "x"),
                ),
                all_rounds,
                window,
                plan.latency_ops,
                "engine",
                "direct_wal_full",
                informational=(("direct_wal_full_autocommit", "direct, WAL + FULL, autocommit"),),
            )
        )
    return outcomes


def queued_memory(plan: Plan) -> list[Outcome]:
    target_ops = FULL.queued_ops
    small = plan.queued_ops
    projected = small != target_ops
    outcome = Outcome(
        "B3",
        f"memory: {target_ops:,} operations accepted through engine.enqueue",
        "total RSS",
        Target("<=", 150.0, " MB"),
        parameters={
            "operations": target_ops,
            "informational_operations": small,
            "pool_size": 1,
            "queue_size": target_ops,
        },
    )
    rounds = min(plan.rounds, plan.memory_rounds)
    for number in range(1, rounds + 1):
        # The candidate always runs at full size: up to max_running granted tickets become
        # tasks, the rest stay tickets, so bytes per operation do not scale linearly.
        samples = {
            case: run_case("queued_memory", case, target_ops)
            for case in ("engine", "engine_max_running_100")
        }
        samples |= {
            case: run_case("queued_memory", case, small) for case in ("floor", "submit", "workflow")
        }
        engine = samples["engine"]
        total = engine["rss_total"]
        submit = samples["submit"]
        submit_total = submit["rss_idle"] + submit["bytes_per_op"] * target_ops
        outcome.rounds.append(
            {
                **samples,
                "total_mb": total / MB,
                "submit_total_mb": submit_total / MB,
                "submit_engine_share_per_op": submit["bytes_per_op"]
                - samples["floor"]["bytes_per_op"],
            }
        )
        progress(
            f"B3 round {number}/{rounds}: enqueue {total / MB:,.0f} MB total "
            f"({engine['bytes_per_op']:,.0f} B/op); submit {submit_total / MB:,.0f} MB"
        )
    data = outcome.rounds

    def median_of(case: str, key: str) -> float:
        return float(statistics.median(r[case][key] for r in data))

    outcome.value, outcome.spread = median_and_spread([r["total_mb"] for r in data])
    summary = {
        "idle_mb": median_of("engine", "rss_idle") / MB,
        "increase_mb": median_of("engine", "rss_increase") / MB,
        "bytes_per_op": median_of("engine", "bytes_per_op"),
        "running_tasks": median_of("engine", "running_tasks"),
        "max_running_100_total_mb": median_of("engine_max_running_100", "rss_total") / MB,
        "max_running_100_bytes_per_op": median_of("engine_max_running_100", "bytes_per_op"),
        "release_seconds": median_of("engine", "drain_seconds"),
        "submit_total_mb": statistics.median(r["submit_total_mb"] for r in data),
        "submit_bytes_per_op": median_of("submit", "bytes_per_op"),
        "caller_task_bytes_per_op": median_of("floor", "bytes_per_op"),
        "submit_engine_share_bytes_per_op": statistics.median(
            r["submit_engine_share_per_op"] for r in data
        ),
        "workflow_bytes_per_task": median_of("workflow", "bytes_per_op"),
        "workflow_definition_bytes_per_task": median_of("workflow", "rss_definition") / small,
    }
    outcome.summary = summary
    granted = summary["running_tasks"]
    # Granted tickets wait for the source as tasks; the difference to max_running = 100 is
    # what such a task costs beyond a queued ticket.
    per_task = statistics.median(
        (r["engine"]["rss_total"] - r["engine_max_running_100"]["rss_total"])
        / max(r["engine"]["running_tasks"] - r["engine_max_running_100"]["running_tasks"], 1)
        for r in data
    )
    summary["granted_task_extra_bytes"] = per_task
    scale = f", projected from {small:,}" if projected else ""
    outcome.notes = [
        f"idle engine {summary['idle_mb']:,.0f} MB; {target_ops:,} enqueued operations add "
        f"{summary['increase_mb']:,.0f} MB = {summary['bytes_per_op']:,.0f} B per operation",
        f"  of which {granted:,.0f} (engine.max_running) were granted and wait for the source "
        f"as tasks, about {per_task:,.0f} B more each than a queued ticket",
        f"  with engine.max_running = 100: {summary['max_running_100_total_mb']:,.0f} MB total "
        f"= {summary['max_running_100_bytes_per_op']:,.0f} B per operation",
        f"releasing them all took {summary['release_seconds']:.2f}s",
        f"informational: {target_ops:,} callers each awaiting engine.submit "
        f"{summary['submit_total_mb']:,.0f} MB total{scale} = "
        f"{summary['submit_bytes_per_op']:,.0f} B/op,",
        f"  of which the caller's own asyncio task (floor: bare tasks) "
        f"{summary['caller_task_bytes_per_op']:,.0f} B, the engine "
        f"{summary['submit_engine_share_bytes_per_op']:,.0f} B",
        f"informational: queued workflow tasks (one run, max_concurrent = 1) "
        f"{summary['workflow_bytes_per_task']:,.0f} B/task, plus "
        f"{summary['workflow_definition_bytes_per_task']:,.0f} B/task for the definition",
    ]
    return [outcome]


def _throughput_outcome(
    outcome: Outcome,
    rounds: list[dict[str, Sample]],
    candidate: str,
    baseline: str,
) -> Outcome:
    """``outcome`` with the median of the per-round ratios candidate/baseline ops/s."""
    ratios = [r[candidate]["ops_per_s"] / r[baseline]["ops_per_s"] for r in rounds]
    outcome.value, outcome.spread = median_and_spread(ratios)
    outcome.rounds = [
        {baseline: r[baseline], candidate: r[candidate], "ratio": ratio}
        for r, ratio in zip(rounds, ratios, strict=True)
    ]
    outcome.summary = {
        "baseline_ops_per_s": _rate(rounds, baseline),
        "candidate_ops_per_s": _rate(rounds, candidate),
    }
    return outcome


def _steady_outcome(
    outcome: Outcome,
    rounds: list[dict[str, Sample]],
    window: int,
    n: int,
    candidate: str,
    baseline: str,
    *,
    informational: Sequence[tuple[str, str]] = (),
) -> Outcome:
    """The throughput ratio of ``candidate`` and ``baseline`` in the steady window of
    ``window``; each ``informational`` (case, text) baseline gets its own ratio in a note."""
    prefix = f"s{window}:"
    outcome.parameters = {"operations": n, "in_flight": window, "shape": "steady"}
    _throughput_outcome(outcome, rounds, prefix + candidate, prefix + baseline)
    for kept, r in zip(outcome.rounds, rounds, strict=True):
        kept.update({prefix + case: r[prefix + case] for case, _ in informational})
    for case, text in informational:
        values = [
            r[prefix + candidate]["ops_per_s"] / r[prefix + case]["ops_per_s"] for r in rounds
        ]
        value, spread = median_and_spread(values)
        rate = _rate(rounds, prefix + case)
        outcome.summary[case] = {"ops_per_s": rate, "ratio": value, "spread": list(spread)}
        outcome.notes.append(
            f"informational: {text} {rate:,.0f}/s; {candidate} = {_ratio_text(value, spread)}"
        )
    return outcome


def _latency_outcome(
    outcome: Outcome,
    rounds: list[dict[str, Sample]],
    window: int,
    n: int,
    candidate: str,
    baseline: str,
    *,
    informational: Sequence[tuple[str, str]] = (),
) -> Outcome:
    """The median of the per-round ratios of p99 latency, candidate / baseline, at
    ``window`` in flight; p50 and the ``informational`` baselines in the notes."""
    prefix = f"lat{window}:"
    base, cand = prefix + baseline, prefix + candidate
    outcome.parameters = {"operations": n, "in_flight": window, "shape": "steady"}
    ratios = [r[cand]["p99_us"] / r[base]["p99_us"] for r in rounds]
    outcome.value, outcome.spread = median_and_spread(ratios)
    outcome.rounds = [
        {
            base: r[base],
            cand: r[cand],
            **{prefix + case: r[prefix + case] for case, _ in informational},
            "ratio": ratio,
        }
        for r, ratio in zip(rounds, ratios, strict=True)
    ]
    p50_value, p50_spread = median_and_spread(
        [r[cand]["p50_us"] / r[base]["p50_us"] for r in rounds]
    )

    def figures(key: str) -> dict[str, float]:
        return {
            quantile: _rate(rounds, key, quantile)
            for quantile in ("p50_us", "p90_us", "p99_us", "mean_us", "ops_per_s")
        }

    outcome.summary = {
        "baseline": figures(base),
        "candidate": figures(cand),
        "p50_ratio": p50_value,
        "p50_spread": list(p50_spread),
    }

    def line(label: str, key: str) -> str:
        got = figures(key)
        return (
            f"{label:<38} p50 {got['p50_us']:>8,.0f} us  p90 {got['p90_us']:>8,.0f} us  "
            f"p99 {got['p99_us']:>8,.0f} us  ({got['ops_per_s']:,.0f}/s)"
        )

    outcome.notes = [
        line(f"direct ({baseline})", base),
        line(f"engine ({candidate})", cand),
        f"p50 engine/direct {_ratio_text(p50_value, p50_spread)} (informational); "
        f"medians over rounds of {n:,} timed operations each",
    ]
    for case, text in informational:
        key = prefix + case
        values = [r[cand]["p99_us"] / r[key]["p99_us"] for r in rounds]
        value, spread = median_and_spread(values)
        outcome.summary[case] = {**figures(key), "p99_ratio": value, "spread": list(spread)}
        outcome.notes.append(
            f"informational: {text}: p50 {figures(key)['p50_us']:,.0f} us, p99 "
            f"{figures(key)['p99_us']:,.0f} us; engine p99 = {_ratio_text(value, spread)}"
        )
    return outcome


def _writes_per_commit(rounds: list[dict[str, Sample]], key: str) -> str:
    known = [r[key]["writes_per_transaction"] for r in rounds if r[key]["writes_per_transaction"]]
    return f"{statistics.median(known):,.0f}" if known else "?"


def mysql_writes(plan: Plan) -> list[Outcome]:
    n, in_flight = plan.mysql_writes, plan.in_flight
    cases = ("direct", "engine")
    runs = burst_runs(cases, n, in_flight) + steady_runs(plan, cases, n) + latency_runs(plan, cases)
    rounds = round_runs(plan, "B5", "mysql_writes", runs)
    outcome = _throughput_outcome(
        Outcome(
            "B5",
            "MySQL writes: engine add (group commit) vs aiomysql autocommit, pool of 10",
            "engine/direct rows/s",
            Target(">=", 3.0, "x"),
            parameters={"writes": n, "in_flight": in_flight, "shape": "burst"},
        ),
        rounds,
        "engine",
        "direct",
    )
    per_commit = statistics.median(r["engine"]["writes_per_transaction"] or 0 for r in rounds)
    outcome.summary["engine_writes_per_transaction"] = per_commit
    outcome.notes = [
        f"direct aiomysql INSERT, autocommit  {outcome.summary['baseline_ops_per_s']:>10,.0f} rows/s",
        f"engine add                          {outcome.summary['candidate_ops_per_s']:>10,.0f} "
        f"rows/s, {per_commit:,.0f} writes per commit (multi-row INSERT)",
    ]
    outcomes = [outcome]
    for window in plan.steady_windows:
        steady = _steady_outcome(
            Outcome(
                f"B5s{window}",
                f"MySQL writes, steady {window}: engine add vs aiomysql autocommit, pool of 10",
                "engine/direct rows/s",
                Target(">=", 3.0, "x"),
            ),
            rounds,
            window,
            n,
            "engine",
            "direct",
        )
        steady.notes = [
            f"direct aiomysql INSERT, autocommit  "
            f"{steady.summary['baseline_ops_per_s']:>10,.0f} rows/s",
            f"engine add                          "
            f"{steady.summary['candidate_ops_per_s']:>10,.0f} rows/s, "
            f"{_writes_per_commit(rounds, f's{window}:engine')} writes per commit",
        ]
        outcomes.append(steady)
    for window in plan.latency_windows:
        outcomes.append(
            _latency_outcome(
                Outcome(
                    f"B5lat{window}",
                    f"MySQL add latency, {window} in flight: engine vs aiomysql autocommit "
                    "INSERT, pool of 10",
                    "engine/direct p99",
                    Target("<=", 1.0, "x"),
                ),
                rounds,
                window,
                plan.latency_ops,
                "engine",
                "direct",
            )
        )
    return outcomes


# B15: the steady windows of PostgreSQL adds (the 64 and 500 in flight).
POSTGRES_WINDOWS = (64, 500)


def postgres_writes(plan: Plan) -> list[Outcome]:
    """B15: PostgreSQL adds (engine vs asyncpg autocommit INSERTs on a pool of 10) in the
    steady windows of :data:`POSTGRES_WINDOWS`, and get by id at one in flight (engine vs
    ``fetchrow`` on one connection; an asyncpg pool with its default reset informational)."""
    n, gets = plan.mysql_writes, plan.single_gets
    runs = [
        Run(f"s{window}:{case}", case, n, window, "steady")
        for window in POSTGRES_WINDOWS
        for case in ("direct", "engine")
    ] + [Run(f"get:{case}", case, gets, 1) for case in ("get_direct", "get_engine", "get_pool")]
    rounds = round_runs(plan, "B15", "postgres_writes", runs)
    outcomes = []
    for window in POSTGRES_WINDOWS:
        steady = _steady_outcome(
            Outcome(
                f"B15s{window}",
                f"PostgreSQL writes, steady {window}: engine add vs asyncpg autocommit, pool of 10",
                "engine/direct rows/s",
                Target(">=", 3.0, "x"),
            ),
            rounds,
            window,
            n,
            "engine",
            "direct",
        )
        steady.notes = [
            f"direct asyncpg INSERT, autocommit   "
            f"{steady.summary['baseline_ops_per_s']:>10,.0f} rows/s",
            f"engine add                          "
            f"{steady.summary['candidate_ops_per_s']:>10,.0f} rows/s, "
            f"{_writes_per_commit(rounds, f's{window}:engine')} writes per commit",
        ]
        outcomes.append(steady)
    outcome = Outcome(
        "B15get",
        "PostgreSQL get by id, one in flight: engine vs asyncpg fetchrow",
        "engine/direct time per get",
        Target("<=", 1.25, "x"),
        parameters={"operations": gets, "in_flight": 1},
    )
    values = [r["get:get_engine"]["per_op_us"] / r["get:get_direct"]["per_op_us"] for r in rounds]
    outcome.value, outcome.spread = median_and_spread(values)
    outcome.rounds = [{**r, "ratio": ratio} for r, ratio in zip(rounds, values, strict=True)]
    direct_us, engine_us, pool_us = (
        _rate(rounds, f"get:{case}", "per_op_us")
        for case in ("get_direct", "get_engine", "get_pool")
    )
    outcome.summary = {"direct_us": direct_us, "engine_us": engine_us, "pool_us": pool_us}
    outcome.notes = [
        f"direct fetchrow, one connection      {direct_us:>7,.1f} us/get",
        f"engine.submit(get)                   {engine_us:>7,.1f} us/get "
        f"(+{engine_us - direct_us:,.1f} us)",
        f"informational: fetchrow on an asyncpg pool (default reset) {pool_us:,.1f} us/get",
    ]
    outcomes.append(outcome)
    return outcomes


def redis_cache(plan: Plan) -> list[Outcome]:
    n, in_flight = plan.redis_sets, plan.in_flight
    runs = burst_runs(("direct", "pipelined", "engine"), n, in_flight) + steady_runs(
        plan, ("direct", "engine"), n
    )
    rounds = round_runs(plan, "B6", "redis_cache", runs)
    pooled = _throughput_outcome(
        Outcome(
            "B6a",
            "Redis cache_set: engine (auto-pipelining) vs redis.asyncio, pool of 100",
            "engine/direct ops/s",
            Target(">=", 2.0, "x"),
            parameters={"operations": n, "in_flight": in_flight, "shape": "burst"},
        ),
        rounds,
        "engine",
        "direct",
    )
    piped = _throughput_outcome(
        Outcome(
            "B6b",
            "Redis cache_set: engine vs hand-pipelined (500 per pipeline)",
            "engine/pipelined ops/s",
            Target(">=", 0.8, "x"),
            parameters={
                "operations": n,
                "in_flight": in_flight,
                "pipeline": 500,
                "shape": "burst",
            },
        ),
        rounds,
        "engine",
        "pipelined",
    )
    per_pipeline = statistics.median(r["engine"]["commands_per_pipeline"] or 0 for r in rounds)
    pooled.summary["engine_commands_per_pipeline"] = per_pipeline
    pooled.notes = [
        f"direct SET, pool of 100        {pooled.summary['baseline_ops_per_s']:>10,.0f} ops/s",
        f"engine cache_set               {pooled.summary['candidate_ops_per_s']:>10,.0f} ops/s, "
        f"{per_pipeline:,.0f} commands per pipeline",
    ]
    piped.notes = [
        f"hand-pipelined SET (500 per pipeline, 2 in flight) "
        f"{piped.summary['baseline_ops_per_s']:>10,.0f} ops/s",
        f"engine cache_set                                   "
        f"{piped.summary['candidate_ops_per_s']:>10,.0f} ops/s",
    ]
    outcomes = [pooled, piped]
    for window in plan.steady_windows:
        steady = _steady_outcome(
            Outcome(
                f"B6s{window}",
                f"Redis cache_set, steady {window}: engine vs redis.asyncio SET, pool of 100",
                "engine/direct ops/s",
                Target(">=", 3.0, "x"),
            ),
            rounds,
            window,
            n,
            "engine",
            "direct",
        )
        key = f"s{window}:engine"
        per_pipe = statistics.median(r[key]["commands_per_pipeline"] or 0 for r in rounds)
        steady.notes = [
            f"direct SET, pool of 100        {steady.summary['baseline_ops_per_s']:>10,.0f} ops/s",
            f"engine cache_set               {steady.summary['candidate_ops_per_s']:>10,.0f} "
            f"ops/s, {per_pipe:,.0f} commands per pipeline",
        ]
        outcomes.append(steady)
    return outcomes


def es_writes(plan: Plan) -> list[Outcome]:
    n = plan.es_writes
    cases = ("direct", "engine")
    runs = burst_runs(cases, n, n) + steady_runs(plan, cases, n)
    rounds = round_runs(plan, "B7", "es_writes", runs)
    outcome = _throughput_outcome(
        Outcome(
            "B7",
            "Elasticsearch index: engine (bulk grouping) vs single index calls",
            "engine/direct docs/s",
            Target(">=", 3.0, "x"),
            parameters={"operations": n, "in_flight": n, "shape": "burst"},
        ),
        rounds,
        "engine",
        "direct",
    )
    per_bulk = statistics.median(r["engine"]["documents_per_bulk"] or 0 for r in rounds)
    outcome.summary["engine_documents_per_bulk"] = per_bulk
    outcome.notes = [
        f"direct client.index            {outcome.summary['baseline_ops_per_s']:>10,.0f} docs/s",
        f"engine index                   {outcome.summary['candidate_ops_per_s']:>10,.0f} docs/s, "
        f"{per_bulk:,.0f} documents per bulk request (warm-up included)",
        "osmem-server (in-memory, on the same cores) stands in for Elasticsearch",
    ]
    outcomes = [outcome]
    for window in plan.steady_windows:
        steady = _steady_outcome(
            Outcome(
                f"B7s{window}",
                f"Elasticsearch index, steady {window}: engine vs single index calls",
                "engine/direct docs/s",
                Target(">=", 3.0, "x"),
            ),
            rounds,
            window,
            n,
            "engine",
            "direct",
        )
        key = f"s{window}:engine"
        bulk = statistics.median(r[key]["documents_per_bulk"] or 0 for r in rounds)
        steady.notes = [
            f"direct client.index            {steady.summary['baseline_ops_per_s']:>10,.0f} docs/s",
            f"engine index                   {steady.summary['candidate_ops_per_s']:>10,.0f} "
            f"docs/s, {bulk:,.0f} documents per bulk request (warm-up included)",
        ]
        outcomes.append(steady)
    return outcomes


# B8's sub-benchmarks: id, store, the direct call, the engine's action, the case prefix.
SINGLE_GETS = (
    ("B8a", "SQLite", "aiosqlite execute_fetchall(SELECT by id)", "get", "sqlite"),
    ("B8b", "MySQL", "aiomysql SELECT by id, pooled connection", "get", "mysql"),
    ("B8c", "Redis", "redis.asyncio GET", "cache_get", "redis"),
)


def single_gets(plan: Plan) -> list[Outcome]:
    n = plan.single_gets
    stores = [store for *_, store in SINGLE_GETS] + ["redis_table"]
    cases = [f"{store}_{side}" for store in stores for side in ("direct", "engine")]
    rounds = []
    for number in range(1, plan.rounds + 1):
        samples = {case: run_case("single_gets", case, n, 1) for case in cases}
        rounds.append(samples)
        progress(
            f"B8 round {number}/{plan.rounds}: "
            + ", ".join(
                f"{store} {samples[store + '_direct']['per_op_us']:.0f} -> "
                f"{samples[store + '_engine']['per_op_us']:.0f} us"
                for store in stores
            )
        )

    def ratios(store: str) -> list[float]:
        return [
            r[f"{store}_engine"]["per_op_us"] / r[f"{store}_direct"]["per_op_us"] for r in rounds
        ]

    def per_op(case: str) -> float:
        return _rate(rounds, case, "per_op_us")

    outcomes = []
    for bench_id, name, direct_text, action, store in SINGLE_GETS:
        outcome = Outcome(
            bench_id,
            f"{name} get by id, one in flight: engine vs the driver call",
            "engine/direct time per get",
            Target("<=", 1.25, "x"),
            parameters={"operations": n, "in_flight": 1},
        )
        values = ratios(store)
        outcome.value, outcome.spread = median_and_spread(values)
        outcome.rounds = [
            {
                f"{store}_direct": r[f"{store}_direct"],
                f"{store}_engine": r[f"{store}_engine"],
                "ratio": ratio,
            }
            for r, ratio in zip(rounds, values, strict=True)
        ]
        direct_us, engine_us = per_op(f"{store}_direct"), per_op(f"{store}_engine")
        outcome.summary = {"direct_us": direct_us, "engine_us": engine_us}
        outcome.notes = [
            f"direct {direct_text:<41} {direct_us:>7,.1f} us/get",
            f"engine.submit({action}){'':<{34 - len(action)}} {engine_us:>7,.1f} us/get "
            f"(+{engine_us - direct_us:,.1f} us)",
        ]
        outcomes.append(outcome)
    table_values = ratios("redis_table")
    value, spread = median_and_spread(table_values)
    direct_us, engine_us = per_op("redis_table_direct"), per_op("redis_table_engine")
    outcomes[-1].summary["table_get"] = {
        "direct_us": direct_us,
        "engine_us": engine_us,
        "ratio": value,
        "spread": list(spread),
    }
    outcomes[-1].notes.append(
        f"informational: table get by id (a Lua script) {engine_us:,.1f} us/get vs HGETALL "
        f"of the row {direct_us:,.1f} us/get = {_ratio_text(value, spread)}"
    )
    return outcomes


def dag_scaling(plan: Plan) -> list[Outcome]:
    sizes = plan.dag_sizes
    base, largest = sizes[0], sizes[-1]
    outcome = Outcome(
        "B4",
        "scaling: one layered DAG run of N noop tasks",
        f"per-task time {largest // 1000}k / {base // 1000}k",
        Target("<=", 1.3, "x"),
        parameters={"sizes": list(sizes)},
    )
    for number in range(1, plan.rounds + 1):
        samples = {str(n): run_case("dag_scaling", "dag", n) for n in sizes}
        per_task = {n: samples[str(n)]["per_task_us"] for n in sizes}
        ratios = {str(n): per_task[n] / per_task[base] for n in sizes[1:]}
        outcome.rounds.append({"samples": samples, "ratios": ratios})
        progress(
            f"B4 round {number}/{plan.rounds}: "
            + ", ".join(f"{n:,} tasks {per_task[n]:.1f} us/task" for n in sizes)
        )
    rounds = outcome.rounds
    outcome.value, outcome.spread = median_and_spread([r["ratios"][str(largest)] for r in rounds])
    per_task_median = {
        str(n): statistics.median(r["samples"][str(n)]["per_task_us"] for r in rounds)
        for n in sizes
    }
    ratio_median = {
        str(n): statistics.median(r["ratios"][str(n)] for r in rounds) for n in sizes[1:]
    }
    outcome.summary = {"per_task_us": per_task_median, "ratio_to_smallest": ratio_median}
    for n in sizes:
        ratio = f"  ({ratio_median[str(n)]:.2f}x {base:,})" if n != base else ""
        build = statistics.median(r["samples"][str(n)]["build_per_task_us"] for r in rounds)
        outcome.notes.append(
            f"N = {n:>7,}: {per_task_median[str(n)]:6.1f} us/task{ratio}; "
            f"Engine(config) {build:,.1f} us/task"
        )
    return [outcome]


# B9's sub-benchmarks: (id, how driven, paired case, connections). Each case runs bare and
# wrapped in one process in alternating chunks and reports the median chunk-pair ratio.
PASSTHROUGH = (
    ("B9a", "uvicorn's HTTP/1.1 protocol in process, 64 connections", "uvicorn_conc", 64),
    ("B9b", "uvicorn's HTTP/1.1 protocol in process, one connection", "uvicorn_seq", 1),
)
# Informational: the middleware's own cost, the ASGI app called directly (no server).
PASSTHROUGH_ASGI = (("sequential", "paired_seq", 1), ("64 concurrent", "paired_conc", 64))
HTTP_CONNECTIONS = 64


def middleware_passthrough(plan: Plan) -> list[Outcome]:
    n = plan.passthrough_requests
    rounds = []
    for number in range(1, plan.rounds + 1):
        samples = {
            case: run_case("middleware_passthrough", case, n, workers)
            for _, _, case, workers in PASSTHROUGH
        }
        for _, case, workers in PASSTHROUGH_ASGI:
            samples[case] = run_case("middleware_passthrough", case, n, workers)
        for case in ("bare_tcp", "wf78_tcp"):
            samples[case] = run_case("middleware_passthrough", case, n, HTTP_CONNECTIONS)
        rounds.append(samples)
        progress(
            f"B9 round {number}/{plan.rounds}: "
            + ", ".join(
                f"{case} {samples[case]['ratio']:.3f}x"
                for case in ("uvicorn_conc", "uvicorn_seq", "paired_seq", "paired_conc")
            )
            + f", tcp {samples['wf78_tcp']['requests_per_s'] / samples['bare_tcp']['requests_per_s']:.3f}x"
        )

    outcomes = []
    for bench_id, how, case, workers in PASSTHROUGH:
        outcome = Outcome(
            bench_id,
            f"pass-through: Starlette JSON endpoint, bare vs in Wf78Middleware ({how})",
            "wrapped/bare requests/s",
            Target(">=", 0.97, "x"),
            parameters={"requests": n, "connections": workers, "driver": "uvicorn H11Protocol"},
        )
        values = [r[case]["ratio"] for r in rounds]
        outcome.value, outcome.spread = median_and_spread(values)
        outcome.rounds = [{case: r[case], "ratio": v} for r, v in zip(rounds, values, strict=True)]
        bare, wrapped = (
            _rate(rounds, case, "bare_requests_per_s"),
            _rate(rounds, case, "wf78_requests_per_s"),
        )
        bare_us, wrapped_us = (
            _rate(rounds, case, "bare_per_request_us"),
            _rate(rounds, case, "wf78_per_request_us"),
        )
        outcome.summary = {"bare_requests_per_s": bare, "wf78_requests_per_s": wrapped}
        outcome.notes = [
            f"bare Starlette          {bare:>10,.0f} req/s ({bare_us:.1f} us/request)",
            f"in Wf78Middleware       {wrapped:>10,.0f} req/s ({wrapped_us:.1f} us/request, "
            f"+{wrapped_us - bare_us:.1f} us)",
        ]
        outcomes.append(outcome)
    last = outcomes[-1]
    for how, case, _ in PASSTHROUGH_ASGI:
        values = [r[case]["ratio"] for r in rounds]
        value, spread = median_and_spread(values)
        bare_us = _rate(rounds, case, "bare_per_request_us")
        wrapped_us = _rate(rounds, case, "wf78_per_request_us")
        last.summary[case] = {
            "ratio": value,
            "spread": list(spread),
            "bare_us": bare_us,
            "wf78_us": wrapped_us,
        }
        last.notes.append(
            f"informational, the ASGI app called directly ({how}, no server): "
            f"{bare_us:.1f} -> {wrapped_us:.1f} us/request (+{wrapped_us - bare_us:.1f} us) = "
            f"{_ratio_text(value, spread)}"
        )
    tcp_values = [r["wf78_tcp"]["requests_per_s"] / r["bare_tcp"]["requests_per_s"] for r in rounds]
    value, spread = median_and_spread(tcp_values)
    bare, wrapped = (
        _rate(rounds, "bare_tcp", "requests_per_s"),
        _rate(rounds, "wf78_tcp", "requests_per_s"),
    )
    client = rounds[-1]["wf78_tcp"].get("client", "?")
    last.summary["tcp"] = {
        "bare_requests_per_s": bare,
        "wf78_requests_per_s": wrapped,
        "ratio": value,
        "spread": list(spread),
        "client": client,
    }
    last.notes.append(
        f"informational, over TCP (uvicorn, one worker; {client}, same cores, noisy): "
        f"bare {bare:,.0f} req/s, wrapped {wrapped:,.0f} req/s = {_ratio_text(value, spread)}"
    )
    return outcomes


def data_routes(plan: Plan) -> list[Outcome]:
    gets, adds = plan.route_gets, plan.route_adds
    rounds = []
    for number in range(1, plan.rounds + 1):
        samples = {
            "get_direct": run_case("data_routes", "get_direct", gets, 1),
            "get_wf78": run_case("data_routes", "get_wf78", gets, 1),
            "add_direct": run_case("data_routes", "add_direct", adds, HTTP_CONNECTIONS),
            "add_wf78": run_case("data_routes", "add_wf78", adds, HTTP_CONNECTIONS),
            "add_direct_wal": run_case("data_routes", "add_direct_wal", adds, HTTP_CONNECTIONS),
        }
        rounds.append(samples)
        progress(
            f"B10 round {number}/{plan.rounds}: get {samples['get_direct']['requests_per_s']:,.0f}"
            f" -> {samples['get_wf78']['requests_per_s']:,.0f} req/s, mAdd "
            f"{samples['add_direct']['requests_per_s']:,.0f} -> "
            f"{samples['add_wf78']['requests_per_s']:,.0f} req/s"
        )

    def ratios(base: str, cand: str) -> list[float]:
        return [r[cand]["requests_per_s"] / r[base]["requests_per_s"] for r in rounds]

    specs = (
        (
            "B10a",
            "data route get by id, sequential: koa78 get vs a hand-written aiosqlite endpoint",
            "route/hand-written requests/s",
            0.9,
            "get_direct",
            "get_wf78",
            {"requests": gets, "workers": 1},
        ),
        (
            "B10b",
            "data route mAdd, 64 concurrent: koa78 mAdd vs hand-written insert + commit",
            "route/hand-written requests/s",
            3.0,
            "add_direct",
            "add_wf78",
            {"requests": adds, "workers": HTTP_CONNECTIONS},
        ),
    )
    outcomes = []
    for bench_id, title, measure, limit, base, cand, parameters in specs:
        outcome = Outcome(bench_id, title, measure, Target(">=", limit, "x"), parameters=parameters)
        values = ratios(base, cand)
        outcome.value, outcome.spread = median_and_spread(values)
        outcome.rounds = [
            {base: r[base], cand: r[cand], "ratio": v} for r, v in zip(rounds, values, strict=True)
        ]
        direct, wf78 = _rate(rounds, base, "requests_per_s"), _rate(rounds, cand, "requests_per_s")
        outcome.summary = {"direct_requests_per_s": direct, "wf78_requests_per_s": wf78}
        outcome.notes = [
            f"hand-written Starlette + aiosqlite  {direct:>10,.0f} req/s",
            f"Wf78Middleware koa78 route          {wf78:>10,.0f} req/s",
        ]
        outcomes.append(outcome)
    outcomes[-1].notes[0] += " (SQLite defaults: rollback journal, synchronous FULL)"
    outcomes[-1].notes[1] += " (engine default: WAL, synchronous FULL, group commit)"
    wal_values = ratios("add_direct_wal", "add_wf78")
    value, spread = median_and_spread(wal_values)
    wal = _rate(rounds, "add_direct_wal", "requests_per_s")
    outcomes[-1].summary["direct_wal_full"] = {
        "requests_per_s": wal,
        "ratio": value,
        "spread": list(spread),
    }
    outcomes[-1].notes.append(
        f"informational: hand-written with the engine's pragmas (WAL + FULL) {wal:,.0f} req/s;"
        f" route = {_ratio_text(value, spread)}"
    )
    return outcomes


def shared_reads(plan: Plan) -> list[Outcome]:
    """B13: 1,000 gets in flight over 10 hot rows on MariaDB, engine and HTTP route vs direct."""
    n = plan.shared_gets
    cases = ("direct", "engine", "http_direct", "http", "engine_unshared")
    rounds = []
    for number in range(1, plan.rounds + 1):
        samples = {case: run_case("shared_reads", case, n, plan.in_flight) for case in cases}
        rounds.append(samples)
        progress(
            f"B13 round {number}/{plan.rounds}: direct {samples['direct']['ops_per_s']:,.0f}, "
            f"engine {samples['engine']['ops_per_s']:,.0f}, hand-written HTTP "
            f"{samples['http_direct']['ops_per_s']:,.0f}, route {samples['http']['ops_per_s']:,.0f}"
            f" gets/s (unshared engine {samples['engine_unshared']['ops_per_s']:,.0f})"
        )
    specs = (
        ("B13a", "engine.submit get", "direct", "engine"),
        ("B13b", "koa78 get route", "http_direct", "http"),
    )
    outcomes = []
    for bench_id, what, base, cand in specs:
        outcome = Outcome(
            bench_id,
            f"shared reads, 1,000 in flight over 10 hot rows (MariaDB): {what} vs {base}",
            "wf78/direct gets/s",
            Target(">=", 5.0, "x"),
            parameters={"gets": n, "in_flight": plan.in_flight, "hot_rows": 10},
        )
        values = [r[cand]["ops_per_s"] / r[base]["ops_per_s"] for r in rounds]
        outcome.value, outcome.spread = median_and_spread(values)
        outcome.rounds = [
            {base: r[base], cand: r[cand], "ratio": v} for r, v in zip(rounds, values, strict=True)
        ]
        outcome.summary = {
            f"{case}_ops_per_s": _rate(rounds, case) for case in (base, cand, "engine_unshared")
        }
        outcome.notes = [
            f"{base:<16} {_rate(rounds, base):>10,.0f} gets/s",
            f"{cand:<16} {_rate(rounds, cand):>10,.0f} gets/s",
            f"engine_unshared  {_rate(rounds, 'engine_unshared'):>10,.0f} gets/s (informational)",
        ]
        outcomes.append(outcome)
    return outcomes


# B14: (store, workload, bar): wf78's koa78 routes / FastAPI + SQLAlchemy requests/s.
FASTAPI_PEER = (
    ("sqlite", "insert", 3.0),
    ("sqlite", "read", 1.0),
    ("sqlite", "mix", 1.5),
    ("mysql", "insert", 3.0),
    ("mysql", "read", 1.0),
    ("mysql", "mix", 1.5),
    ("postgres", "insert", 3.0),
    ("postgres", "read", 1.0),
    ("postgres", "mix", 1.5),
)
FASTAPI_WORKLOADS = {
    "insert": "inserts",
    "read": "reads by id",
    "mix": "80/20 reads/inserts",
}


def _peer_side(rounds: Sequence[dict[str, Any]], case: str) -> str:
    """``N req/s, p50 X ms, p99 Y ms, server CPU Z us/request (share of a core)``."""
    rate = _rate(rounds, case, "requests_per_s")
    p50 = _rate(rounds, case, "p50_us") / 1000
    p99 = _rate(rounds, case, "p99_us") / 1000
    cpu = _rate(rounds, case, "server_cpu_per_request_us")
    share = _rate(rounds, case, "server_cpu_share")
    text = (
        f"{rate:>8,.0f} req/s, p50 {p50:,.1f} ms, p99 {p99:,.1f} ms, "
        f"server CPU {cpu:,.0f} us/request ({share:.2f} of a core)"
    )
    # 5xx answers are counted, not served (requests/s counts the right answers only).
    errors = sum(r[case]["server_errors"] + r[case]["warmup_server_errors"] for r in rounds)
    if errors:
        last = next((r[case]["server_error"] for r in rounds if r[case]["server_error"]), "?")
        text += f"; {errors} answers 5xx over the rounds ({last})"
    return text


def fastapi_peer(plan: Plan) -> list[Outcome]:
    """B14: the koa78 data routes against FastAPI + SQLAlchemy 2.0 async, both under uvicorn,
    loaded by wrk with 64 connections, per store and workload; baseline first each round."""
    seconds = plan.peer_seconds
    rounds = []
    for number in range(1, plan.rounds + 1):
        samples: dict[str, Sample] = {}
        parts = []
        for store, workload, _ in FASTAPI_PEER:
            base, cand = f"fastapi_{store}_{workload}", f"wf78_{store}_{workload}"
            samples[base] = run_case("fastapi_peer", base, seconds, HTTP_CONNECTIONS)
            samples[cand] = run_case("fastapi_peer", cand, seconds, HTTP_CONNECTIONS)
            before, after = samples[base]["requests_per_s"], samples[cand]["requests_per_s"]
            parts.append(
                f"{store} {workload} {before:,.0f} -> {after:,.0f} ({after / before:.2f}x)"
            )
        rounds.append(samples)
        progress(f"B14 round {number}/{plan.rounds} (req/s FastAPI -> wf78): " + ", ".join(parts))
    outcomes = []
    for store, workload, limit in FASTAPI_PEER:
        base, cand = f"fastapi_{store}_{workload}", f"wf78_{store}_{workload}"
        outcome = Outcome(
            f"B14-{store}-{workload}",
            f"vs FastAPI, {store} {workload}: koa78 routes vs FastAPI + SQLAlchemy 2.0 async "
            f"({FASTAPI_WORKLOADS[workload]}, uvicorn, 64 connections)",
            "wf78/FastAPI requests/s",
            Target(">=", limit, "x"),
            parameters={
                "seconds": seconds,
                "connections": HTTP_CONNECTIONS,
                "store": store,
                "workload": workload,
                "server": rounds[0][cand].get("server"),
                "client": rounds[0][cand].get("client"),
            },
        )
        values = [r[cand]["requests_per_s"] / r[base]["requests_per_s"] for r in rounds]
        outcome.value, outcome.spread = median_and_spread(values)
        outcome.rounds = [
            {base: r[base], cand: r[cand], "ratio": v} for r, v in zip(rounds, values, strict=True)
        ]
        outcome.summary = {
            f"{side}_{key}": _rate(rounds, case, key)
            for side, case in (("fastapi", base), ("wf78", cand))
            for key in (
                "requests_per_s",
                "p50_us",
                "p99_us",
                "server_cpu_per_request_us",
                "server_cpu_share",
                "client_cpu_share",
            )
        }
        loads = [r[case]["load_average"][0] for r in rounds for case in (base, cand)]
        client = max(r[case]["client_cpu_share"] for r in rounds for case in (base, cand))
        outcome.notes = [
            f"FastAPI + SQLAlchemy  {_peer_side(rounds, base)}",
            f"wf78 koa78 routes     {_peer_side(rounds, cand)}",
            f"client {rounds[0][cand].get('client')}: at most {client:.2f} of a core; "
            f"1-minute load average during the cases {min(loads):.2f}-{max(loads):.2f}",
        ]
        outcomes.append(outcome)
    return outcomes


# Each benchmark returns its outcomes: one, or one per sub-benchmark (B6a/B6b, B8a-B8c,
# B9a/B9b, B10a/B10b, B13a/B13b; the steady windows B1s64, B2s1000, ... and the latency
# comparisons B2lat1, B5lat8, ...).
BENCHMARKS: dict[str, Callable[[Plan], list[Outcome]]] = {
    "B1": dispatch,
    "B2": sqlite_writes,
    "B3": queued_memory,
    "B4": dag_scaling,
    "B5": mysql_writes,
    "B6": redis_cache,
    "B7": es_writes,
    "B8": single_gets,
    "B9": middleware_passthrough,
    "B10": data_routes,
    # Peers on Redis (benchmarks/peers/: its own command, its own private redis-server).
    "B11": lambda plan: _peers("B11", plan),
    "B12": lambda plan: _peers("B12", plan),
    "B13": shared_reads,
    "B14": fastapi_peer,
    "B15": postgres_writes,
    # Fair shares and limits (benchmarks/tenancy.py; imported when run: it imports this).
    "B16": lambda plan: _tenancy("noisy_neighbour", plan),
    "B17": lambda plan: _tenancy("limit_accuracy", plan),
    "B18": lambda plan: _tenancy("fair_overhead", plan),
}


def _peers(name: str, plan: Plan) -> list[Outcome]:
    from benchmarks.peers.suite import peers_outcomes

    return peers_outcomes(name, plan)


def _tenancy(runner: str, plan: Plan) -> list[Outcome]:
    from benchmarks import tenancy

    outcomes: list[Outcome] = getattr(tenancy, runner)(plan)
    return outcomes


# -- reporting -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return ""
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}".rstrip("0").rstrip(".")


def table(outcomes: Sequence[Outcome], header: str) -> str:
    rows = [("", "benchmark", "measure", "median (min-max)", "target", "status")]
    for outcome in outcomes:
        if outcome.value is None:
            result = "-"
        else:
            unit = outcome.target.unit
            result = f"{outcome.value:.2f}{unit}"
            if outcome.spread and len(outcome.rounds) > 1:
                low, high = outcome.spread
                result += f" ({low:.2f}-{high:.2f})"
        rows.append(
            (
                outcome.id,
                outcome.title.partition(":")[0],
                outcome.measure,
                result,
                str(outcome.target),
                outcome.status,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [header, ""]
    for index, row in enumerate(rows):
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    for outcome in outcomes:
        lines.append("")
        lines.append(f"{outcome.id} {outcome.title}")
        lines.extend(f"    {note}" for note in outcome.notes)
        if outcome.error:
            lines.extend(f"    ! {line}" for line in outcome.error.splitlines())
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--only", help="comma-separated benchmark ids, e.g. B1,B3")
    parser.add_argument("--rounds", type=int, help="rounds per benchmark (default 7, quick 2)")
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes and 2 rounds: a smoke check"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="JSON file to write (default benchmarks/results.json, quick: results-quick.json)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            raise SystemExit("--rounds must be >= 1")
        plan = Plan(**{**asdict(plan), "rounds": args.rounds})
    chosen = list(BENCHMARKS)
    if args.only:
        chosen = [name.strip().upper() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(chosen) - set(BENCHMARKS))
        if unknown:
            raise SystemExit(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    output = args.output or HERE / ("results-quick.json" if args.quick else "results.json")

    started = datetime.now(UTC)
    load_before = os.getloadavg()
    began = time.monotonic()
    outcomes: list[Outcome] = []
    for name in chosen:
        try:
            outcomes.extend(BENCHMARKS[name](plan))
        except CaseFailed as error:
            outcome = Outcome(name, BENCHMARKS[name].__name__, "-", Target(">=", 0, ""))
            outcome.error = str(error)
            progress(f"{name} failed: {error}")
            outcomes.append(outcome)
    duration = time.monotonic() - began

    info = machine()
    header = (
        f"wf78 benchmarks: {plan.mode} mode, {plan.rounds} rounds, "
        f"{started:%Y-%m-%d %H:%M} UTC, {duration:.0f}s\n"
        f"{info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(table(outcomes, header))
    report = {
        "schema_version": 1,
        "mode": plan.mode,
        "plan": asdict(plan),
        "started": started.isoformat(timespec="seconds"),
        "duration_seconds": round(duration, 1),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "machine": info,
        "git": git_state(),
        "benchmarks": {outcome.id: outcome.to_json() for outcome in outcomes},
    }
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {output}")
    if any(outcome.status == "ERROR" for outcome in outcomes):
        return 2
    if args.strict and any(outcome.status == "FAIL" for outcome in outcomes):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
