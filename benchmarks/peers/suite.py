"""B11 and B12 as ``python -m benchmarks --only B11`` (or B12) runs them: the peers'
command (:mod:`benchmarks.peers.__main__`) in a process of its own, its JSON read back
into the suite's outcomes. Rounds: at most 3 (each round is every system, arq alone
takes 10-60 s); tasks: 20,000 (2,000 with ``--quick``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.run import ROOT, Outcome, Plan, Target, case_environment

__all__ = ["peers_outcomes"]

TARGET = 5.0


def peers_outcomes(name: str, plan: Plan) -> list[Outcome]:
    """Run B11 or B12 through ``python -m benchmarks.peers`` and report it."""
    tasks = 2_000 if plan.mode == "quick" else 20_000
    rounds = min(plan.rounds, 3)
    with tempfile.TemporaryDirectory(prefix="peers-suite-") as folder:
        output = Path(folder) / "peers.json"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.peers",
                f"--only={name}",
                f"--rounds={rounds}",
                f"--tasks={tasks}",
                f"--output={output}",
            ],
            cwd=ROOT,
            env=case_environment(),
            capture_output=True,
            text=True,
            check=False,
        )
        report: dict[str, Any] = (
            json.loads(output.read_text(encoding="utf-8")) if output.exists() else {}
        )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if name == "B11":
        return [_b11(report, lines, done, tasks)]
    return [
        Outcome(
            "B12",
            "wf78 tasks/s by worker processes (1, 2, 4), plotted to benchmarks/peers-scaling.png",
            "tasks/s",
            Target(">=", 0, ""),
            value=1.0 if done.returncode == 0 else None,
            notes=lines,
            summary=report.get("benchmarks", {}).get("B12", {}),
            error=None if done.returncode == 0 else done.stderr[-2000:],
        )
    ]


def _b11(
    report: dict[str, Any], lines: list[str], done: subprocess.CompletedProcess[str], tasks: int
) -> Outcome:
    b11 = report.get("benchmarks", {}).get("B11", {})
    value = b11.get("value") or {}
    return Outcome(
        "B11",
        f"queue throughput on Redis: {tasks:,} no-op tasks, 2 worker processes each, "
        "wf78 / best of SAQ, arq, taskiq",
        "x (tasks/s)",
        Target(">=", TARGET, "x"),
        value=value.get("median"),
        spread=(value["min"], value["max"]) if value else None,
        notes=lines,
        summary=b11,
        parameters={"tasks": tasks, "rounds": report.get("rounds_planned")},
        error=None if value else (done.stderr[-2000:] or "no B11 figure"),
    )
