"""B12's picture: wf78 tasks/s against worker processes, drawn to a PNG (matplotlib, Agg).

``python -m benchmarks.peers`` calls :func:`plot_scaling`; ``python -m benchmarks.peers.plot
[RESULTS.json] [PNG]`` draws it again from a results file (default
``benchmarks/results-peers.json`` -> ``benchmarks/peers-scaling.png``).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.run import HERE

__all__ = ["DEFAULT_PNG", "DEFAULT_RESULTS", "plot_scaling"]

DEFAULT_PNG = HERE / "peers-scaling.png"
DEFAULT_RESULTS = HERE / "results-peers.json"


def plot_scaling(
    wf78: Mapping[int, Sequence[float]],
    path: Path,
    *,
    peers: Mapping[str, Sequence[float]] | None = None,
    peer_workers: int = 2,
    cpus: int | None = None,
    note: str = "",
) -> Path:
    """Draw wf78's median tasks/s (bars: lowest and highest round) per number of worker
    processes, the linear scaling from one worker up to ``cpus`` workers for reference and,
    when given, each peer's median at ``peer_workers`` workers. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    counts = sorted(wf78)
    medians = [statistics.median(wf78[n]) for n in counts]
    lows = [m - min(wf78[n]) for n, m in zip(counts, medians, strict=True)]
    highs = [max(wf78[n]) - m for n, m in zip(counts, medians, strict=True)]

    figure, axes = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    axes.errorbar(
        counts,
        medians,
        yerr=[lows, highs],
        marker="o",
        capsize=4,
        linewidth=2,
        color="tab:blue",
        label="wf78 (median, min-max over rounds)",
    )
    for n, value in zip(counts, medians, strict=True):
        axes.annotate(
            f"{value:,.0f}",
            (n, value),
            textcoords="offset points",
            xytext=(8, 6),
            ha="left",
            fontsize=9,
        )
    reachable = [n for n in counts if cpus is None or n <= cpus]
    if 1 in wf78 and len(reachable) > 1:
        base = statistics.median(wf78[1])
        axes.plot(
            reachable,
            [base * n for n in reachable],
            linestyle=":",
            color="grey",
            label=f"linear scaling from 1 worker (up to {reachable[-1]}, the CPUs)",
        )
    styles = iter([("s", "tab:orange"), ("^", "tab:green"), ("D", "tab:red"), ("v", "tab:purple")])
    shown = [(name, values) for name, values in sorted((peers or {}).items()) if values]
    for index, (name, values) in enumerate(shown):
        marker, colour = next(styles, ("x", "black"))
        # Side by side around x = peer_workers (log axis: a factor, not an offset).
        x = peer_workers * 1.07 ** (index - (len(shown) - 1) / 2)
        axes.plot(
            [x],
            [statistics.median(values)],
            marker=marker,
            color=colour,
            linestyle="none",
            markersize=8,
            label=f"{name} at {peer_workers} workers (median)",
        )
    axes.set_xscale("log", base=2)
    axes.set_xticks(counts, [str(n) for n in counts])
    axes.set_xlim(counts[0] / 1.25, counts[-1] * 1.35)
    axes.set_xlabel("worker processes")
    axes.set_ylabel("no-op tasks finished per second")
    axes.set_ylim(bottom=0)
    axes.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    axes.set_title("B12: wf78 on Redis Streams, throughput by worker processes")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper right")
    if note:
        figure.text(0.01, 0.01, note, fontsize=7, color="dimgrey")
    figure.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    figure.savefig(path)
    plt.close(figure)
    return path


def from_results(report: Mapping[str, Any], path: Path) -> Path:
    """Draw the PNG from a ``results-peers.json`` report."""
    b12 = report["benchmarks"]["B12"]
    wf78 = {int(n): values for n, values in b12["tasks_per_s"].items()}
    b11 = report["benchmarks"].get("B11") or {}
    peers = {
        name: values for name, values in (b11.get("tasks_per_s") or {}).items() if name != "wf78"
    }
    cpus = report.get("machine", {}).get("usable_cpus") or report.get("machine", {}).get("nproc")
    return plot_scaling(wf78, path, peers=peers, cpus=cpus, note=b12.get("note", ""))


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    results = Path(arguments[0]) if arguments else DEFAULT_RESULTS
    png = Path(arguments[1]) if len(arguments) > 1 else DEFAULT_PNG
    report = json.loads(results.read_text(encoding="utf-8"))
    print(f"wrote {from_results(report, png)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
