"""Configuration: msgspec structs (:mod:`.schema`), cross-checks (:mod:`.checks`), loading
that names every problem's path (:mod:`.loading`) and the embedded default (:mod:`.default`).

The config layer sits just above the leaf types: it imports nothing else of wf78.
"""

from __future__ import annotations

from wf78_core.config.checks import check_definitions, check_references, find_cycle
from wf78_core.config.default import DEFAULT_CONFIG_TOML, MAINTENANCE_WORKFLOW, with_maintenance
from wf78_core.config.lenient import ConfigReport
from wf78_core.config.loading import (
    collect_config,
    collect_report,
    load_config,
    msgspec_problem,
    parse_config,
    read_config,
)
from wf78_core.config.schema import (
    BASE_COLUMNS,
    AgentConfig,
    AgentsConfig,
    AuthConfig,
    ColumnType,
    Config,
    DataSourceConfig,
    EngineSettings,
    HttpConfig,
    Identity,
    ShardingConfig,
    TableConfig,
)

__all__ = [
    "BASE_COLUMNS",
    "DEFAULT_CONFIG_TOML",
    "MAINTENANCE_WORKFLOW",
    "AgentConfig",
    "AgentsConfig",
    "AuthConfig",
    "ColumnType",
    "Config",
    "ConfigReport",
    "DataSourceConfig",
    "EngineSettings",
    "HttpConfig",
    "Identity",
    "ShardingConfig",
    "TableConfig",
    "check_definitions",
    "check_references",
    "collect_config",
    "collect_report",
    "find_cycle",
    "load_config",
    "msgspec_problem",
    "parse_config",
    "read_config",
    "with_maintenance",
]
