"""B11's DAG case: ``python -m benchmarks.peers.wf78_dag_runner drive --n 2000 --workers 2``.

The same as :mod:`benchmarks.peers.wf78_runner` (its workers, enqueuing engine and
completion state) with the workflow ``dag`` instead of ``noop``: 10 no-op tasks, ``root``,
then ``f0``..``f7`` in parallel, then ``join`` once all eight succeeded (fan-out, then
fan-in, done by the ``COMPLETE`` script in Redis). ``--n`` counts runs; tasks/s and every
per-task figure count tasks (10 a run), so they compare with the one-task ``noop`` case.
The check afterwards wants every run succeeded and every one of its 10 tasks.
"""

from __future__ import annotations

from functools import partial

from benchmarks.peers import wf78_runner
from benchmarks.peers._common import Drive, runner_main

__all__ = ["DRIVE"]

DRIVE = Drive(
    "wf78-dag",
    partial(wf78_runner.worker, dag=True),
    partial(wf78_runner.client, dag=True),
    packages=("wf78",),
    tasks_per_item=wf78_runner.DAG_TASKS,
)

if __name__ == "__main__":
    from benchmarks._harness import _check_code_origin

    runner_main(DRIVE)
    _check_code_origin()
