"""``wf78 maintain``: create missing tables and upcoming shards, drop expired shards, now."""

from __future__ import annotations

import argparse
import json
import sys

import anyio
import msgspec

from wf78_core.cli.common import config_path
from wf78_core.data.sharding import MaintenanceReport, maintain
from wf78_core.engine import Engine

__all__ = ["maintain_command"]


def maintain_command(args: argparse.Namespace) -> int:
    engine = Engine(config_path(args))
    report = anyio.run(_maintain_now, engine)
    if args.json:
        sys.stdout.write(json.dumps(msgspec.to_builtins(report), indent=2) + "\n")
        return 0
    for what, changes in (
        ("created table", report.tables_created),
        ("created shard", report.created),
        ("dropped shard", report.dropped),
    ):
        for change in changes:
            print(f"{what} {change.table} on {change.source}")
    print(
        f"wf78 maintain: {len(report.tables_created)} tables created, "
        f"{len(report.created)} shards created, {len(report.dropped)} shards dropped"
    )
    return 0


async def _maintain_now(engine: Engine) -> MaintenanceReport:
    async with engine:
        report = await maintain(engine, create_tables=True)
        # Starting the engine already maintained the shards: report that work too.
        startup = engine.startup_maintenance
        if startup is not None:
            report.created[:0] = startup.created
            report.dropped[:0] = startup.dropped
        return report
