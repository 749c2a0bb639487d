"""B11 and B12 of the benchmarks: wf78 on Redis against SAQ, arq and taskiq (taskiq-redis).

Run ``python -m benchmarks.peers`` (see benchmarks/README.md, "B11/B12: peers on Redis").
"""
