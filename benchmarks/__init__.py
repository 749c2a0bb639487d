"""wf78 benchmarks: one fresh process per measured case, rounds alternating baseline and
candidate, results as a table and as JSON. Run ``python -m benchmarks`` (see README.md).

Not collected by pytest: performance targets are checked here, never in timed tests.
"""
