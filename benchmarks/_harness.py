"""What every measured case shares: its command line, its one line of JSON output, helpers.

A case module ends with ``case_main(CASES, ...)``; ``run.py`` starts it as
``python -m benchmarks.<module> <case> --n N --in-flight W --shape burst|steady [--latency]``
in a fresh process and reads the line that starts with :data:`RESULT_PREFIX`. Run one by
hand to look closer, e.g. under cProfile:
``python -m benchmarks.dispatch engine --shape steady --in-flight 64 --profile /tmp/b1.prof``.

Two shapes of load, the same for both sides of a comparison:

``burst``   :func:`drive_in_batches`: ``W`` operations started together through one
            ``asyncio.gather``, the next ``W`` once all of them ended.
``steady``  :func:`drive_steady`: each operation its own task, at most ``W`` in flight under
            a semaphore, a new one started as soon as one ends: what an ASGI server makes
            of requests arriving one by one.

``--latency`` (steady shape only) also times every operation and reports its p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import math
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import psutil

from benchmarks.run import RESULT_PREFIX, ROOT

# This tree's plugins before whatever the virtualenv's editable install points at (its
# .pth file may name another checkout): a case measures the code next to it.
if str(ROOT / "plugins") not in sys.path[:2]:
    sys.path.insert(0, str(ROOT / "plugins"))

__all__ = [
    "RESULT_PREFIX",
    "SHAPES",
    "Case",
    "Measurement",
    "case_main",
    "drive",
    "drive_in_batches",
    "drive_steady",
    "latency_figures",
    "measure",
    "rss",
    "warmup_count",
]

Measurement = dict[str, Any]
Case = Callable[[argparse.Namespace], Coroutine[Any, Any, Measurement]]
Start = Callable[[int], Coroutine[Any, Any, object]]
SHAPES = ("burst", "steady")
# Warm-up operations of a steady or latency case at least (a burst warms up with one batch).
MIN_WARMUP = 200


async def drive_in_batches(start: Start, total: int, in_flight: int, *, first: int = 0) -> None:
    """Await ``start(i)`` for ``first <= i < first + total``, ``in_flight`` at a time, each
    batch through one ``asyncio.gather``: the burst shape both sides of a comparison share."""
    end = first + total
    for batch_start in range(first, end, in_flight):
        batch_end = min(batch_start + in_flight, end)
        await asyncio.gather(*(start(i) for i in range(batch_start, batch_end)))


async def drive_steady(
    start: Start,
    total: int,
    window: int,
    *,
    first: int = 0,
    latencies: list[float] | None = None,
) -> None:
    """Run ``start(i)`` for ``first <= i < first + total``, each as its own task of one
    ``asyncio.TaskGroup``, at most ``window`` at once: the driver takes a slot of a semaphore
    before it creates the next task and the task's done callback gives it back, so a new
    operation starts as soon as one ends (the steady shape an ASGI server makes). The first
    failure cancels the rest and is raised.

    With ``latencies``, each operation's time from its first step to its end (seconds) is
    appended to it; that wraps ``start`` in one more coroutine, so throughput cases leave it
    out.
    """
    slots = asyncio.Semaphore(window)
    acquire = slots.acquire

    def release(_: object) -> None:
        slots.release()

    if latencies is not None:
        record = latencies.append
        clock = time.perf_counter
        inner = start

        async def timed(i: int) -> None:
            began = clock()
            await inner(i)
            record(clock() - began)

        start = timed
    async with asyncio.TaskGroup() as group:
        spawn = group.create_task
        for i in range(first, first + total):
            await acquire()
            spawn(start(i)).add_done_callback(release)


def warmup_count(args: argparse.Namespace) -> int:
    """Operations a case runs before the clock starts: one batch of a burst, at least
    :data:`MIN_WARMUP` in the steady shape."""
    if args.shape == "steady":
        return max(int(args.in_flight), MIN_WARMUP)
    return int(args.in_flight)


async def drive(
    args: argparse.Namespace,
    start: Start,
    total: int,
    *,
    first: int = 0,
    latencies: list[float] | None = None,
) -> None:
    """``start`` over ``total`` operations in the case's shape, ``args.in_flight`` at most."""
    if args.shape == "steady":
        await drive_steady(start, total, args.in_flight, first=first, latencies=latencies)
    elif latencies is not None:
        raise SystemExit("--latency needs --shape steady")
    else:
        await drive_in_batches(start, total, args.in_flight, first=first)


async def measure(args: argparse.Namespace, start: Start, *, warmed: bool = False) -> Measurement:
    """Warm up (ids ``-warmup_count(args)`` to -1) unless ``warmed``, then time ``args.n``
    operations (ids 0 to ``n - 1``) in the case's shape: elapsed and CPU seconds, ops/s and,
    with ``--latency``, the operations' latency percentiles."""
    if not warmed:
        count = warmup_count(args)
        await drive(args, start, count, first=-count)
    latencies: list[float] | None = [] if args.latency else None
    began, cpu_began = time.perf_counter(), time.process_time()
    await drive(args, start, args.n, latencies=latencies)
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    result: Measurement = {"elapsed": elapsed, "ops_per_s": args.n / elapsed, "cpu_seconds": cpu}
    if latencies is not None:
        result |= latency_figures(latencies)
    return result


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty sequence."""
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


def latency_figures(latencies: Sequence[float]) -> Measurement:
    """p50, p90, p99, max and mean of ``latencies`` (seconds), in microseconds."""
    if not latencies:
        raise RuntimeError("no latencies recorded")
    ordered = sorted(latencies)
    return {
        "latency_samples": len(ordered),
        "p50_us": _percentile(ordered, 0.50) * 1e6,
        "p90_us": _percentile(ordered, 0.90) * 1e6,
        "p99_us": _percentile(ordered, 0.99) * 1e6,
        "max_us": ordered[-1] * 1e6,
        "mean_us": sum(ordered) / len(ordered) * 1e6,
    }


def rss() -> int:
    """Resident set size of this process in bytes, after a full garbage collection."""
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def case_main(
    cases: Mapping[str, Case],
    *,
    description: str,
    default_n: int,
    argv: list[str] | None = None,
) -> None:
    """Parse the command line, run one case in ``asyncio.run`` and print its result line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("case", choices=sorted(cases))
    parser.add_argument("--n", type=int, default=default_n, help="operations or tasks")
    parser.add_argument("--in-flight", type=int, default=1000, help="concurrent operations")
    parser.add_argument(
        "--shape",
        choices=SHAPES,
        default="burst",
        help="burst: gather batches of --in-flight; steady: a task per operation, at most "
        "--in-flight at once (cases that have one shape only ignore it)",
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="also time each operation and report p50/p99 (with --shape steady)",
    )
    parser.add_argument(
        "--profile", metavar="PATH", help="write cProfile stats of the whole case to PATH"
    )
    args = parser.parse_args(argv)
    if args.in_flight < 1:
        parser.error("--in-flight must be >= 1")
    if args.latency and args.shape != "steady":
        parser.error("--latency needs --shape steady")
    case = cases[args.case]
    if args.profile:
        profiler = cProfile.Profile()
        result: Measurement = profiler.runcall(asyncio.run, case(args))
        profiler.dump_stats(args.profile)
    else:
        result = asyncio.run(case(args))
    _check_code_origin()
    result = {
        "case": args.case,
        "n": args.n,
        "shape": args.shape,
        "in_flight": args.in_flight,
        **result,
    }
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")


def _check_code_origin() -> None:
    """Refuse a result measured with wf78 code from outside this tree."""
    strays = sorted(
        f"{name} from {module.__file__}"
        for name, module in list(sys.modules.items())
        if name.split(".")[0].startswith("wf78")
        and getattr(module, "__file__", None)
        and not str(module.__file__).startswith(str(ROOT) + "/")
    )
    if strays:
        raise SystemExit("wf78 code from outside " + str(ROOT) + ": " + "; ".join(strays))
