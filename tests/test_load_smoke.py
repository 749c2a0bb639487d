"""The load generator (``benchmarks/load.py``) for a few seconds against a real ``wf78 serve``:
no errors, every acknowledged write in the database exactly once. Timing and memory are the
benchmark's business, never asserted here."""

from __future__ import annotations

from benchmarks.load import LoadOptions, render, run_load


def test_load_smoke() -> None:
    result = run_load(LoadOptions(seconds=3.0, concurrency=8, warmup=1.0))
    summary = render(result)
    assert result["requests"] > 0, summary
    assert all(figures["count"] > 0 for figures in result["kinds"].values()), summary
    assert result["errors"] == 0, summary
    check = result["verification"]
    assert check["ok"], summary
    assert check["lost"] == check["doubled"] == check["wrong_values"] == 0, summary
    assert check["rows_acknowledged"] > 0 and check["events_acknowledged"] > 0, summary
    assert check["events_lost"] == check["events_doubled"] == 0, summary
    assert result["runs"].get("succeeded", 0) > 0 and not result["runs"].get("unfinished"), summary
    server = result["server"]
    assert server["exit_status"] == 0, summary
    assert not server["log_error_lines"], summary
    assert server["wal_left_after_stop"] is False, summary
