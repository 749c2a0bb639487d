"""B11 and B12: wf78 on Redis against SAQ, arq and taskiq (taskiq-redis), same Redis, same run.

    python -m benchmarks.peers [--tasks 20000] [--rounds 3] [--only B11,B12]

B11: 20,000 no-op tasks through 2 worker processes for each system, target wf78 >= 2x the
best peer, as the median of the per-round ratios (wf78 / best peer of that round). B12: wf78
with 1, 2 and 4 worker processes, plotted to ``benchmarks/peers-scaling.png``. Every case is
a fresh process (``python -m benchmarks.peers.<system>_runner drive ...``, see _common.py);
within a round the cases run in round-robin order, rotated by one each round. arq and SAQ
run in their own virtualenv (``.venv/redis5``, made from requirements-redis5.txt when missing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.run import (
    HERE,
    ROOT,
    CaseFailed,
    git_state,
    machine,
    progress,
    run_child,
)

SYSTEMS = ("wf78", "saq", "arq", "taskiq")
PEERS = ("saq", "arq", "taskiq")
# arq pins redis < 6 and saq[redis] redis < 8: they run in a virtualenv of their own.
REDIS5_SYSTEMS = frozenset({"saq", "arq"})
REDIS5_VENV = ROOT / ".venv" / "redis5"
REDIS5_VARIABLE = "WF78_PEERS_REDIS5_PYTHON"
B11_WORKERS = 2
B12_WORKERS = (1, 2, 4)
B11_TARGET = 2.0
DEFAULT_OUTPUT = HERE / "results-peers.json"
DEFAULT_PNG = HERE / "peers-scaling.png"


@dataclass(frozen=True)
class Case:
    system: str
    workers: int

    @property
    def label(self) -> str:
        return f"{self.system} x{self.workers}"


def plan_cases(chosen: Sequence[str]) -> list[Case]:
    cases: list[Case] = []
    if "B11" in chosen:
        cases += [Case(system, B11_WORKERS) for system in SYSTEMS]
    if "B12" in chosen:
        cases += [Case("wf78", n) for n in B12_WORKERS if Case("wf78", n) not in cases]
    return cases


def rotated(cases: Sequence[Case], round_index: int) -> list[Case]:
    shift = round_index % len(cases)
    return [*cases[shift:], *cases[:shift]]


def redis5_python() -> str:
    """arq's and SAQ's interpreter: $WF78_PEERS_REDIS5_PYTHON, else .venv/redis5, made now
    from requirements-redis5.txt when it is missing."""
    named = os.environ.get(REDIS5_VARIABLE)
    if named:
        return named
    python = REDIS5_VENV / "bin" / "python"
    if not python.exists():
        progress(f"creating {REDIS5_VENV} for arq and SAQ (redis-py 5)")
        subprocess.run([sys.executable, "-m", "venv", str(REDIS5_VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "-r",
                str(HERE / "peers" / "requirements-redis5.txt"),
            ],
            check=True,
        )
    return str(python)


def check_project_packages(cases: Sequence[Case]) -> None:
    wanted = ["matplotlib"]
    if any(case.system == "taskiq" for case in cases):
        wanted += ["taskiq", "taskiq_redis"]
    missing = [name for name in wanted if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"missing {', '.join(missing)}: "
            f"{sys.executable} -m pip install -r benchmarks/peers/requirements.txt"
        )


def run_case(case: Case, tasks: int, interpreters: dict[str, str]) -> dict[str, Any]:
    command = [
        interpreters.get(case.system, sys.executable),
        "-m",
        f"benchmarks.peers.{case.system}_runner",
        "drive",
        f"--n={tasks}",
        f"--workers={case.workers}",
    ]
    return run_child(command, case.label)


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def rate(value: float) -> str:
    return f"{value:,.0f}"


def ratio(value: float) -> str:
    return f"{value:.2f}x"


def ratio_spread(values: Sequence[float]) -> str:
    """``median (min-max)`` of ratios, as the project's tables print them: 1.23x (1.10-1.40)."""
    s = spread(values)
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def versions_text(result: dict[str, Any]) -> str:
    versions = result.get("versions") or {}
    return ", ".join(f"{name} {version}" for name, version in versions.items() if version)


def redis_server_version() -> str:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        return str(client.info("server")["redis_version"])
    except redis.RedisError as error:
        return f"unknown ({error})"
    finally:
        client.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", type=int, default=20_000, help="no-op tasks per case")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--only", default="B11,B12", help="B11, B12 or both (default)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results")
    parser.add_argument("--png", type=Path, default=DEFAULT_PNG, help="B12's plot")
    parser.add_argument("--strict", action="store_true", help="exit 1 when B11 misses 2x")
    args = parser.parse_args(argv)
    args.chosen = [name.strip().upper() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.chosen) - {"B11", "B12"})
    if unknown or not args.chosen:
        parser.error(f"--only takes B11 and/or B12, got {args.only!r}")
    if args.rounds < 1 or args.tasks < 1:
        parser.error("--rounds and --tasks must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cases = plan_cases(args.chosen)
    check_project_packages(cases)
    interpreters = {
        system: redis5_python()
        for system in REDIS5_SYSTEMS
        if any(case.system == system for case in cases)
    }
    info = machine()
    cpus = info["usable_cpus"] or info["nproc"]
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    began = time.monotonic()

    rounds: list[dict[str, Any]] = []
    errors: list[str] = []
    for index in range(args.rounds):
        results: dict[str, Any] = {}
        for case in rotated(cases, index):
            try:
                result = run_case(case, args.tasks, interpreters)
            except CaseFailed as error:
                errors.append(f"round {index + 1}: {error}")
                progress(f"round {index + 1}/{args.rounds}: {error}")
                results[case.label] = {"error": str(error)}
                continue
            results[case.label] = result
            progress(
                f"round {index + 1}/{args.rounds}: {case.label}: "
                f"{rate(result['tasks_per_s'])} tasks/s ({result['seconds']:.2f} s)"
            )
        rounds.append(results)
    duration = time.monotonic() - began

    def tasks_per_s(case: Case) -> list[float]:
        return [
            r[case.label]["tasks_per_s"] for r in rounds if "tasks_per_s" in r.get(case.label, {})
        ]

    def any_result(case: Case) -> dict[str, Any]:
        for r in rounds:
            if "tasks_per_s" in r.get(case.label, {}):
                return dict(r[case.label])
        return {}

    lines = [
        f"B11/B12: peers on Redis, {args.tasks:,} no-op tasks a case, "
        f"{plural(args.rounds, 'round')}, "
        f"{started:%Y-%m-%d %H:%M} UTC, {duration:.0f}s",
        f"{info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"Redis {redis_server_version()} at 127.0.0.1:6379, "
        f"load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}",
        f"Note: this machine has {cpus} CPUs; the worker processes, the enqueuing process and "
        "Redis all share them.",
        "",
    ]
    report: dict[str, Any] = {
        "schema_version": 1,
        "command": "python -m benchmarks.peers " + " ".join(sys.argv[1:] if argv is None else argv),
        "tasks": args.tasks,
        "rounds_planned": args.rounds,
        "started": started.isoformat(timespec="seconds"),
        "duration_seconds": round(duration, 1),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "machine": info,
        "git": git_state(),
        "errors": errors,
        "benchmarks": {},
        "rounds": rounds,
    }
    status_b11 = None

    if "B11" in args.chosen:
        lines.append(
            f"{'system':<8} {'workers':>7}  {'tasks/s median (min-max)':<28} {'s median':>8}  versions"
        )
        per_system: dict[str, list[float]] = {}
        for system in SYSTEMS:
            case = Case(system, B11_WORKERS)
            values = tasks_per_s(case)
            per_system[system] = values
            if values:
                s = spread(values)
                seconds = statistics.median(
                    r[case.label]["seconds"] for r in rounds if "seconds" in r.get(case.label, {})
                )
                figure = f"{rate(s['median'])} ({rate(s['min'])}-{rate(s['max'])})"
                lines.append(
                    f"{system:<8} {B11_WORKERS:>7}  {figure:<28} {seconds:>8.2f}  "
                    f"{versions_text(any_result(case))}"
                )
            else:
                lines.append(f"{system:<8} {B11_WORKERS:>7}  {'ERROR':<28}")
        paired: list[float] = []
        best: list[str] = []
        for r in rounds:
            labels = [Case(system, B11_WORKERS).label for system in SYSTEMS]
            if all("tasks_per_s" in r.get(label, {}) for label in labels):
                peer_rates = {
                    peer: r[Case(peer, B11_WORKERS).label]["tasks_per_s"] for peer in PEERS
                }
                leader = max(peer_rates, key=lambda name: peer_rates[name])
                best.append(leader)
                paired.append(
                    r[Case("wf78", B11_WORKERS).label]["tasks_per_s"] / peer_rates[leader]
                )
        b11_errors = [e for e in errors if f" x{B11_WORKERS}" in e]
        lines.append("")
        if paired and not b11_errors:
            status_b11 = "PASS" if statistics.median(paired) >= B11_TARGET else "FAIL"
            lines.append(
                f"B11 wf78/best peer: {ratio_spread(paired)} target >= {B11_TARGET:g}x {status_b11}"
            )
            lines.append(
                "    best peer by round: "
                + ", ".join(best)
                + "; per-round ratios "
                + ", ".join(ratio(v) for v in paired)
            )
        else:
            status_b11 = "ERROR"
            lines.append(f"B11 wf78/best peer: - target >= {B11_TARGET:g}x ERROR")
        report["benchmarks"]["B11"] = {
            "measure": "wf78 / best peer, tasks/s, 2 worker processes each",
            "target": f">= {B11_TARGET:g}x",
            "status": status_b11,
            "value": spread(paired) if paired else None,
            "paired_ratios": paired,
            "best_peer_by_round": best,
            "tasks_per_s": per_system,
        }
        lines.append("")

    if "B12" in args.chosen:
        scaling = {n: tasks_per_s(Case("wf78", n)) for n in B12_WORKERS}
        lines.append(
            f"B12 wf78 throughput by worker processes ({cpus} CPUs: beyond {cpus} workers they "
            "compete for cores)"
        )
        lines.append(
            f"{'workers':>7}  {'tasks/s median (min-max)':<28} vs 1 worker, paired by round"
        )
        for n in B12_WORKERS:
            values = scaling[n]
            if not values:
                lines.append(f"{n:>7}  ERROR")
                continue
            s = spread(values)
            pairs = [
                r[Case("wf78", n).label]["tasks_per_s"] / r[Case("wf78", 1).label]["tasks_per_s"]
                for r in rounds
                if "tasks_per_s" in r.get(Case("wf78", n).label, {})
                and "tasks_per_s" in r.get(Case("wf78", 1).label, {})
            ]
            versus = ratio_spread(pairs) if pairs else "-"
            figure = f"{rate(s['median'])} ({rate(s['min'])}-{rate(s['max'])})"
            lines.append(f"{n:>7}  {figure:<28} {versus}")
        note = (
            f"{args.tasks:,} no-op tasks, {plural(len(rounds), 'round')}, {started:%Y-%m-%d} UTC, "
            f"{cpus} CPUs ({info['cpu_model']}) shared by workers, enqueuer and Redis"
        )
        report["benchmarks"]["B12"] = {
            "measure": "wf78 tasks/s by worker processes",
            "tasks_per_s": {str(n): v for n, v in scaling.items()},
            "note": note,
        }
        if all(scaling[n] for n in B12_WORKERS):
            from benchmarks.peers.plot import plot_scaling

            peers = (
                {peer: tasks_per_s(Case(peer, B11_WORKERS)) for peer in PEERS}
                if "B11" in args.chosen
                else None
            )
            plot_scaling(
                scaling, args.png, peers=peers, peer_workers=B11_WORKERS, cpus=cpus, note=note
            )
            lines.append(f"plot: {args.png}")
        lines.append("")

    if errors:
        lines.append("errors:")
        lines.extend("  " + e.replace("\n", "\n    ") for e in errors)
    print("\n".join(lines).rstrip())
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.output}")
    if errors:
        return 2
    if args.strict and status_b11 == "FAIL":
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
