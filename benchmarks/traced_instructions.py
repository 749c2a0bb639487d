"""Instructions per operation with tracing on: ``benchmarks.instructions``' own child run
with an SDK ``TracerProvider`` set first (a ``SimpleSpanProcessor`` and an exporter that
does nothing), counted the same way (callgrind at 1,000 and 6,000 operations).

    python -m benchmarks.traced_instructions noop sqlite_add
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.instructions import LARGE, ROOT, SMALL


def _child(case: str, n: int) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Nothing(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Nothing()))
    trace.set_tracer_provider(provider)
    from benchmarks import instructions

    instructions.main([case, "--child", "--n", str(n)])


def _count(case: str, n: int) -> int:
    with tempfile.TemporaryDirectory(prefix="wf78-cg-") as folder:
        out = Path(folder) / "callgrind.out"
        subprocess.run(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
                *("--separate-threads=no", sys.executable, "-m", "benchmarks.traced_instructions"),
                *("--child", case, str(n)),
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        text = out.read_text(errors="replace")
    match = re.search(r"^summary:\s+(\d+)", text, re.MULTILINE) or re.search(
        r"^totals:\s+(\d+)", text, re.MULTILINE
    )
    if match is None:
        raise SystemExit(f"{case}: no total in callgrind's output")
    return int(match.group(1))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        _child(argv[1], int(argv[2]))
        return 0
    for case in argv or ["noop", "sqlite_add"]:
        per_op = (_count(case, LARGE) - _count(case, SMALL)) / (LARGE - SMALL)
        print(f"{case:<20} {per_op:>12,.0f} instructions per operation, traced", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
