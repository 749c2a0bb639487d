"""``wf78 maintain``: create missing tables and upcoming shards, drop expired shards, now;
``--migrate`` also adds the columns declared tables lack (additive only)."""

from __future__ import annotations

import argparse
import json
import sys

import anyio
import msgspec

from wf78_core.cli.common import config_path, configure_logging, plugin_modules
from wf78_core.data.sharding import MaintenanceReport, maintain
from wf78_core.engine import Engine

__all__ = ["maintain_command"]


def maintain_command(args: argparse.Namespace) -> int:
    configure_logging(args)
    migrate = bool(args.migrate)
    engine = Engine(config_path(args), plugins=plugin_modules(args), migrate=migrate)
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
    for added in report.columns_added:
        print(f"added column {added.column} to {added.table} on {added.source}")
    summary = (
        f"wf78 maintain: {len(report.tables_created)} tables created, "
        f"{len(report.created)} shards created, {len(report.dropped)} shards dropped"
    )
    if migrate:
        summary += f", {len(report.columns_added)} columns added"
    if purged := report.keys_purged + report.run_keys_purged:
        summary += f", {purged} idempotency keys purged"
    print(summary)
    return 0


async def _maintain_now(engine: Engine) -> MaintenanceReport:
    async with engine:
        report = await maintain(engine, create_tables=True, migrate=engine.migrate)
        # Starting the engine already maintained the tables: report that work too.
        startup = engine.startup_maintenance
        if startup is not None:
            report.tables_created[:0] = startup.tables_created
            report.created[:0] = startup.created
            report.dropped[:0] = startup.dropped
            report.columns_added[:0] = startup.columns_added
        return report
