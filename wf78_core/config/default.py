"""The embedded default configuration, and the maintenance workflow declared tables add."""

from __future__ import annotations

import msgspec

from wf78_core.config.schema import Config
from wf78_core.definitions import TaskDefinition, WorkflowDefinition

__all__ = ["DEFAULT_CONFIG_TOML", "MAINTENANCE_WORKFLOW", "with_maintenance"]

DEFAULT_CONFIG_TOML = """\
# The embedded default: one SQLite file and the two workflows of the koa78 note (3.3).
[datasources.default]
type = "sqlite"
url = "sqlite:///./wf78.db"

[tables.logs]
columns = { level = "text", message = "text" }
kind = "log"

[tables.items]
columns = { name = "text", qty = "int", price = "float" }
owner = "cid"
route = "api/demo"

[[workflows]]
id = "high_priority_db_ops"
name = "High-priority database operations"
priority = 0
max_concurrent = 3
trigger = "api"

[[workflows.tasks]]
id = "determine_data_source"
action = "datasource.select"

[[workflows.tasks]]
id = "execute_db_operation"
action = "datasource.execute"
depends_on = ["determine_data_source"]
timeout = 5.0
retry = 2

[[workflows]]
id = "logging_workflow"
name = "Logging"
priority = 2
max_concurrent = 5
trigger = "event"
event = "log"

[[workflows.tasks]]
id = "write_log"
action = "datasource.execute"
data_source = "sqlite"
params = { action = "add", table = "logs" }
timeout = 5.0
retry = 3
"""

# Added by the engine when tables are declared (unless a workflow of that id is configured):
# every hour, at five past, creates upcoming shards, drops expired ones and purges the
# idempotency keys older than [engine] idempotency_ttl.
MAINTENANCE_WORKFLOW = WorkflowDefinition(
    id="wf78.maintenance",
    name="Table maintenance",
    priority=2,
    max_concurrent=1,
    trigger="schedule",
    schedule="5 * * * *",
    tasks=(TaskDefinition(id="maintain", action="tables.maintain", timeout=300.0, retry=2),),
)


def with_maintenance(config: Config) -> Config:
    """``config`` plus :data:`MAINTENANCE_WORKFLOW` when it declares tables: their shards
    and their writes' idempotency keys need it."""
    if not config.tables or any(w.id == MAINTENANCE_WORKFLOW.id for w in config.workflows):
        return config
    return msgspec.structs.replace(config, workflows=(*config.workflows, MAINTENANCE_WORKFLOW))
