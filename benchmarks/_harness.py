"""What every measured case shares: its command line, its one line of JSON output, helpers.

A case module ends with ``case_main(CASES, ...)``; ``run.py`` starts it as
``python -m benchmarks.<module> <case> --n N`` in a fresh process and reads the line that
starts with :data:`RESULT_PREFIX`. Run one by hand to look closer, e.g. under cProfile:
``python -m benchmarks.dispatch engine --profile /tmp/b1.prof``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import psutil

from benchmarks.run import RESULT_PREFIX, ROOT

# This tree's plugins before whatever the virtualenv's editable install points at (its
# .pth file may name another checkout): a case measures the code next to it.
if str(ROOT / "plugins") not in sys.path[:2]:
    sys.path.insert(0, str(ROOT / "plugins"))

__all__ = ["RESULT_PREFIX", "Case", "Measurement", "case_main", "drive_in_batches", "rss"]

Measurement = dict[str, Any]
Case = Callable[[argparse.Namespace], Coroutine[Any, Any, Measurement]]


async def drive_in_batches(
    start: Callable[[int], Awaitable[object]], total: int, in_flight: int, *, first: int = 0
) -> None:
    """Await ``start(i)`` for ``first <= i < first + total``, ``in_flight`` at a time, each
    batch through one ``asyncio.gather``: the structure both sides of a comparison share."""
    end = first + total
    for batch_start in range(first, end, in_flight):
        batch_end = min(batch_start + in_flight, end)
        await asyncio.gather(*(start(i) for i in range(batch_start, batch_end)))


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
        "--profile", metavar="PATH", help="write cProfile stats of the whole case to PATH"
    )
    args = parser.parse_args(argv)
    case = cases[args.case]
    if args.profile:
        profiler = cProfile.Profile()
        result: Measurement = profiler.runcall(asyncio.run, case(args))
        profiler.dump_stats(args.profile)
    else:
        result = asyncio.run(case(args))
    _check_code_origin()
    result = {"case": args.case, "n": args.n, **result}
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
