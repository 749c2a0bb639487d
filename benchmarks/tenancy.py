"""The runners of B16 (noisy neighbour), B17 (limit accuracy) and B18 (the cost of fair
shares), registered in ``run.py``; their cases are in ``fairness.py`` and ``limits.py``.

Each round runs the baseline then the candidate in fresh processes; a comparison is the
median over rounds of the per-round ratio (``run.py``'s rule).
"""

from __future__ import annotations

from typing import Any

from benchmarks.run import (
    Outcome,
    Plan,
    Target,
    median_and_spread,
    progress,
    run_case,
)

__all__ = ["fair_overhead", "limit_accuracy", "noisy_neighbour"]

NOISY_FLOOD = {"full": 20_000, "quick": 4_000}


def _outcome(
    bench_id: str,
    title: str,
    measure: str,
    target: Target,
    values: list[float],
    rounds: list[dict[str, Any]],
    **parameters: Any,
) -> Outcome:
    outcome = Outcome(bench_id, title, measure, target, parameters=parameters)
    outcome.value, outcome.spread = median_and_spread(values)
    outcome.rounds = rounds
    return outcome


def noisy_neighbour(plan: Plan) -> list[Outcome]:
    """B16: tenant A floods mAdd (64 in flight), B sends one every 5 ms; fair_by on/off."""
    n = NOISY_FLOOD.get(plan.mode, 20_000)
    rounds = []
    for number in range(1, plan.rounds + 1):
        fifo = run_case("fairness", "noisy_fifo", n, 64)
        fair = run_case("fairness", "noisy_fair", n, 64)
        rounds.append({"fifo": fifo, "fair": fair})
        progress(
            f"B16 round {number}/{plan.rounds}: B's p99 flood/idle fair "
            f"{fair['b_ratio']:.2f}x ({fair['b_flood_p99_ms']:.1f} ms), fifo "
            f"{fifo['b_ratio']:.2f}x ({fifo['b_flood_p99_ms']:.1f} ms); idle p99 fair "
            f"{fair['b_idle_p99_ms']:.1f} ms, fifo {fifo['b_idle_p99_ms']:.1f} ms"
        )
    title = f"noisy neighbour: A floods {n:,} mAdd (64 in flight), B one every 5 ms"
    fair_ratio = _outcome(
        "B16a",
        title + ", fair_by = cid",
        "B's p99 during the flood / idle",
        Target("<=", 2.0, "x"),
        [r["fair"]["b_ratio"] for r in rounds],
        rounds,
        flood=n,
    )
    fifo_ratio = [r["fifo"]["b_ratio"] for r in rounds]
    fair_ratio.notes = [f'fair_by = "" (contrast): {median_and_spread(fifo_ratio)[0]:.2f}x']
    for side in ("fair", "fifo"):  # the p50s: steadier than p99s on a shared machine
        p50 = median_and_spread([r[side]["b_p50_ratio"] for r in rounds])[0]
        idle = median_and_spread([r[side]["b_idle_p50_ms"] for r in rounds])[0]
        flood = median_and_spread([r[side]["b_flood_p50_ms"] for r in rounds])[0]
        fair_ratio.notes.append(
            f"{side}: B's p50 flood/idle {p50:.2f}x ({flood:.2f} / {idle:.2f} ms)"
        )
    throughput = _outcome(
        "B16b",
        "noisy neighbour: total requests/s with fair shares vs without",
        "fair/fifo requests/s",
        Target(">=", 0.9, "x"),
        [r["fair"]["total_requests_per_s"] / r["fifo"]["total_requests_per_s"] for r in rounds],
        [],
        flood=n,
    )
    return [fair_ratio, throughput]


def limit_accuracy(plan: Plan) -> list[Outcome]:
    """B17: 10 keys at twice their rate for 10 s, in one process and in two sharing Redis."""
    outcomes = []
    for bench_id, case in (("B17a", "one_process"), ("B17b", "two_processes")):
        samples = [run_case("limits", case, 1) for _ in range(max(1, plan.memory_rounds))]
        for sample in samples:
            progress(f"{bench_id}: {sample['allowed_per_key']} of {sample['expected_per_key']}")
        outcomes.append(
            _outcome(
                bench_id,
                f"limit accuracy, 10 keys at 2x their rate for 10 s ({case.replace('_', ' ')})",
                "largest deviation from rate x time + burst",
                Target("<=", 5.0, "%"),
                [sample["max_deviation_pct"] for sample in samples],
                samples,
            )
        )
    return outcomes


def fair_overhead(plan: Plan) -> list[Outcome]:
    """B18: B1 (no-op submit, steady, 64 in flight) and B10b (mAdd route, 64 in flight)
    with fair_by = "cid" against fair_by = "", no limit configured."""
    specs = (
        ("B18a", "dispatch", plan.dispatch_ops, "steady", "ops_per_s", "B1 no-op submit"),
        ("B18b", "routes", plan.route_adds, "burst", "requests_per_s", "B10b mAdd route"),
    )
    outcomes = []
    for bench_id, stem, n, shape, key, what in specs:
        rounds = []
        for number in range(1, plan.rounds + 1):
            fifo = run_case("fairness", f"{stem}_fifo", n, 64, shape)
            fair = run_case("fairness", f"{stem}_fair", n, 64, shape)
            rounds.append({"fifo": fifo, "fair": fair, "ratio": fair[key] / fifo[key]})
            progress(
                f"{bench_id} round {number}/{plan.rounds}: fair/fifo {rounds[-1]['ratio']:.3f}"
            )
        outcomes.append(
            _outcome(
                bench_id,
                f"fair shares on vs off, no limit: {what}",
                "fair/fifo throughput",
                Target(">=", 0.95, "x"),
                [r["ratio"] for r in rounds],
                rounds,
                n=n,
            )
        )
    return outcomes
