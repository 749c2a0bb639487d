"""B11 and B12: wf78 on Redis against SAQ, arq and taskiq (taskiq-redis), same Redis, same run.

    python -m benchmarks.peers [--tasks 20000] [--rounds 3] [--only B11,B12]

B11: 20,000 no-op tasks through 2 worker processes for each system, target wf78 >= 5x the
best peer, as the median of the per-round ratios (wf78 / best peer of that round). B12: wf78
with 1, 2 and 4 worker processes, plotted to ``benchmarks/peers-scaling.png``. Every case is
a fresh process (``python -m benchmarks.peers.<system>_runner drive ...``, see _common.py);
within a round the cases run in round-robin order, rotated by one each round. arq and SAQ
run in their own virtualenv (``.venv/redis5``, made from requirements-redis5.txt when missing).

Every case runs against a private redis-server on a free port (or ``--redis-port``), with
100 enqueues in flight as a steady window, and reports per task what Redis spent (CPU,
commands, round trips, bytes: INFO deltas), and the CPU of the workers and of the enqueuing
process. B11 also runs wf78's DAG case (``wf78_dag_runner``: ``--tasks / 10`` runs of a
10-task fan-out/fan-in workflow) and, with ``--baseline DIR``, wf78 from another tree.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.peers._common import PORT_VARIABLE, WINDOW
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
B11_TARGET = 5.0
BASELINE = "wf78-base"
# B11's DAG case: wf78 runs of a 10-task fan-out/fan-in workflow, --tasks / 10 runs.
DAG = "wf78-dag"
DAG_TASKS = 10
# What each peer's own project publishes of its speed, shown beside our figure.
PUBLISHED = {
    "saq": "SAQ's benchmarks/README.md: 1,000 noop jobs in 0.41 s (about 2,470 jobs/s; one "
    "worker, its own benchmarks/simple.py)",
    "arq": "none of its own; SAQ's benchmarks/README.md: 1,000 noop jobs in 5.02 s (about "
    "200 jobs/s, arq's default poll_delay 0.5 s)",
    "taskiq": "none published by taskiq or taskiq-redis",
}
DEFAULT_OUTPUT = HERE / "results-peers.json"
DEFAULT_PNG = HERE / "peers-scaling.png"


@dataclass(frozen=True)
class Case:
    system: str
    workers: int

    @property
    def label(self) -> str:
        return f"{self.system} x{self.workers}"


def plan_cases(chosen: Sequence[str], baseline: bool = False) -> list[Case]:
    cases: list[Case] = []
    if "B11" in chosen:
        cases += [Case(system, B11_WORKERS) for system in SYSTEMS]
        cases.append(Case(DAG, B11_WORKERS))
        if baseline:
            cases.append(Case(BASELINE, B11_WORKERS))
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


def run_case(
    case: Case, tasks: int, interpreters: dict[str, str], window: int, baseline: Path | None
) -> dict[str, Any]:
    system = "wf78" if case.system == BASELINE else case.system
    items = max(1, tasks // DAG_TASKS) if case.system == DAG else tasks
    command = [
        interpreters.get(system, sys.executable),
        "-m",
        f"benchmarks.peers.{system.replace('-', '_')}_runner",
        "drive",
        f"--n={items}",
        f"--workers={case.workers}",
        f"--window={window}",
    ]
    if case.system == BASELINE and baseline is not None:
        return run_baseline(command, case.label, baseline)
    return run_child(command, case.label)


def prepare_baseline(tree: Path) -> Path:
    """The other tree, with this tree's benchmarks/peers/ (the measuring code) copied in."""
    tree = tree.resolve()
    if not (tree / "wf78_core").is_dir():
        raise SystemExit(f"--baseline {str(tree)!r}: no wf78_core/ in it")
    target = tree / "benchmarks" / "peers"
    target.mkdir(parents=True, exist_ok=True)
    for source in (HERE / "peers").glob("*.py"):
        shutil.copy2(source, target / source.name)
    return tree


def run_baseline(command: list[str], label: str, tree: Path) -> dict[str, Any]:
    """A wf78 case run from another tree (its code measured by this tree's runner)."""
    paths = [str(tree), str(tree / "plugins")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run(
        command, cwd=tree, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("wf78-bench-result: ")]
    # The result is printed once measured; the other tree's own check of where its
    # plugins come from (the shared virtualenv's editable install names this tree's) may
    # fail after it, which does not change the measurement.
    if not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise CaseFailed(f"{label} exited {done.returncode}:\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("wf78-bench-result: "))
    return result


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def private_redis(port: int) -> Iterator[int]:
    """A redis-server of this benchmark's own on a free port (``port`` 0), without
    persistence, stopped afterwards: its INFO counts only this benchmark's work. A
    ``port`` other than 0 names a running server to use instead."""
    if port:
        yield port
        return
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not on PATH: pass --redis-port of a running Redis")
    import redis

    port = free_port()
    folder = tempfile.mkdtemp(prefix="peers-redis-")
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            folder,
            "--databases",
            "16",
            "--logfile",
            os.path.join(folder, "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"private redis-server on port {port} did not start") from None
                time.sleep(0.05)
        client.close()
        progress(f"private redis-server (pid {process.pid}) on 127.0.0.1:{port}")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def redis_server_version(port: int) -> str:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
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
    parser.add_argument("--strict", action="store_true", help="exit 1 when B11 misses its target")
    parser.add_argument(
        "--redis-port",
        type=int,
        default=0,
        help="a running Redis to use (default: a private redis-server on a free port)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=WINDOW,
        help=f"enqueues in flight, steadily (default {WINDOW}); 0: gathered batches of 500",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run wf78 from this tree (e.g. an unpacked `git archive` of a commit) as "
        "the case `wf78-base`",
    )
    args = parser.parse_args(argv)
    args.chosen = [name.strip().upper() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.chosen) - {"B11", "B12"})
    if unknown or not args.chosen:
        parser.error(f"--only takes B11 and/or B12, got {args.only!r}")
    if args.rounds < 1 or args.tasks < 1:
        parser.error("--rounds and --tasks must be >= 1")
    return args


def run_rounds(
    args: argparse.Namespace, cases: Sequence[Case], interpreters: dict[str, str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every case once a round, in rotated order; the results and the errors."""
    rounds: list[dict[str, Any]] = []
    errors: list[str] = []
    for index in range(args.rounds):
        results: dict[str, Any] = {}
        for case in rotated(cases, index):
            try:
                result = run_case(case, args.tasks, interpreters, args.window, args.baseline)
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
    return rounds, errors


PER_TASK = (
    ("redis_cpu_us", "Redis CPU us"),
    ("redis_round_trips", "round trips"),
    ("redis_commands", "commands"),
    ("redis_bytes", "bytes"),
    ("worker_cpu_us", "worker CPU us"),
    ("enqueuer_cpu_us", "enqueuer CPU us"),
)


def per_task_lines(rounds: Sequence[dict[str, Any]], systems: Sequence[str]) -> list[str]:
    """Per task, the median over rounds of what Redis, the workers and the enqueuer spent."""
    header = f"{'per task (median)':<18}" + "".join(f"{title:>16}" for _, title in PER_TASK)
    lines = [header]
    for system in systems:
        label = Case(system, B11_WORKERS).label
        found = [r[label]["per_task"] for r in rounds if "per_task" in r.get(label, {})]
        if not found:
            continue
        cells = "".join(
            f"{statistics.median(f[key] for f in found):>16,.{3 if key == 'redis_round_trips' else 1}f}"
            for key, _ in PER_TASK
        )
        lines.append(f"{system:<18}{cells}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cases = plan_cases(args.chosen, args.baseline is not None)
    check_project_packages(cases)
    if args.baseline is not None:
        args.baseline = prepare_baseline(args.baseline)
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
    with private_redis(args.redis_port) as port:
        os.environ[PORT_VARIABLE] = str(port)
        server = redis_server_version(port)
        rounds, errors = run_rounds(args, cases, interpreters)
    duration = time.monotonic() - began
    systems = [*SYSTEMS, DAG, *([BASELINE] if args.baseline is not None else [])]

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
        f"Redis {server} at 127.0.0.1:{port}"
        f"{' (private)' if not args.redis_port else ''}, "
        f"{args.window or 'batches of 500'} enqueues in flight, "
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
            f"{'system':<10} {'workers':>7}  {'tasks/s median (min-max)':<28} {'s median':>8}  versions"
        )
        per_system: dict[str, list[float]] = {}
        for system in systems:
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
                    f"{system:<10} {B11_WORKERS:>7}  {figure:<28} {seconds:>8.2f}  "
                    f"{versions_text(any_result(case))}"
                )
            else:
                lines.append(f"{system:<10} {B11_WORKERS:>7}  {'ERROR':<28}")
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
        lines.append("")
        if paired:
            # From the rounds where every system finished and passed its check (a round
            # with a failed case says nothing fair about the others and is left out).
            status_b11 = "PASS" if statistics.median(paired) >= B11_TARGET else "FAIL"
            left_out = len(rounds) - len(paired)
            lines.append(
                f"B11 wf78/best peer: {ratio_spread(paired)} target >= {B11_TARGET:g}x {status_b11}"
                + (
                    f" ({plural(left_out, 'round')} with a failed case left out)"
                    if left_out
                    else ""
                )
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
        lines.extend(per_task_lines(rounds, systems))
        lines.append("")
        lines.append("published by the peers' projects:")
        lines.extend(f"  {peer}: {PUBLISHED[peer]}" for peer in PEERS)
        if args.baseline is not None:
            pairs = [
                r[Case("wf78", B11_WORKERS).label]["tasks_per_s"]
                / r[Case(BASELINE, B11_WORKERS).label]["tasks_per_s"]
                for r in rounds
                if "tasks_per_s" in r.get(Case("wf78", B11_WORKERS).label, {})
                and "tasks_per_s" in r.get(Case(BASELINE, B11_WORKERS).label, {})
            ]
            if pairs:
                lines.append(f"wf78 / {BASELINE} ({args.baseline}): {ratio_spread(pairs)}")
        dag_pairs = [
            r[Case("wf78", B11_WORKERS).label]["tasks_per_s"]
            / r[Case(DAG, B11_WORKERS).label]["tasks_per_s"]
            for r in rounds
            if "tasks_per_s" in r.get(Case("wf78", B11_WORKERS).label, {})
            and "tasks_per_s" in r.get(Case(DAG, B11_WORKERS).label, {})
        ]
        if dag_pairs:
            lines.append(
                f"{DAG}: time per task vs a one-task no-op run, paired by round: "
                f"{ratio_spread(dag_pairs)}"
            )
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
