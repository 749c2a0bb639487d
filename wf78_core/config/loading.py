"""Reading a configuration (a TOML/JSON file, a mapping or the embedded default) into a
:class:`Config`, collecting every problem on the way so one report names them all."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from wf78_core.config.checks import check_definitions
from wf78_core.config.default import DEFAULT_CONFIG_TOML
from wf78_core.config.rules import IDENTIFIER
from wf78_core.config.schema import (
    AgentsConfig,
    AuthConfig,
    Config,
    DataSourceConfig,
    EngineSettings,
    TableConfig,
)
from wf78_core.definitions import WorkflowDefinition
from wf78_core.errors import ConfigError, Problem

__all__ = ["collect_config", "load_config", "msgspec_problem", "parse_config", "read_config"]

_SECTION_TYPES: dict[str, Any] = {
    "engine": EngineSettings,
    "agents": AgentsConfig,
    "auth": AuthConfig,
}
_KNOWN_KEYS = frozenset({"engine", "datasources", "agents", "workflows", "tables", "auth"})
_DATASOURCE_KEYS = frozenset({"type", "url", "pool_size", "timeout"})


def msgspec_problem(prefix: str, error: msgspec.ValidationError) -> Problem:
    """A msgspec validation error as a :class:`Problem` whose path starts at ``prefix``."""
    message = str(error)
    path = prefix
    if " - at `$" in message:
        message, _, where = message.rpartition(" - at `$")
        path = prefix + where.rstrip("`")
    if message.startswith("Object contains unknown field"):
        field = message.split("`")[1]
        path = f"{path}.{field}" if path else field
        message = "unknown key"
    return Problem(path.lstrip("."), message)


def _convert(value: Any, type_: Any, path: str, problems: list[Problem]) -> Any:
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as error:
        problems.append(msgspec_problem(path, error))
        return None
    except UnicodeEncodeError:  # a key with a lone surrogate: _not_unicode reported it
        return None


def _shown(name: Any) -> str:
    """A key as a path part: printable even when it holds a lone surrogate."""
    return str(name).encode("utf-8", "backslashreplace").decode("utf-8")


def _not_unicode(raw: Mapping[str, Any]) -> list[Problem]:
    """Every key and string that is not valid Unicode (a lone surrogate, which JSON's
    ``\\ud800`` escapes can make): wf78 could neither store nor print it."""
    problems: list[Problem] = []
    stack: list[tuple[str | None, Any]] = [(None, raw)]  # None: the root
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problems.append(Problem(path or "", "is not valid Unicode text (a lone surrogate)"))
        elif isinstance(value, Mapping):
            for key, item in reversed(list(value.items())):
                child = _shown(key) if path is None else f"{path}.{_shown(key)}"
                stack.append((child, item))
                stack.append((child, str(key)))
        elif isinstance(value, list | tuple):
            stack.extend(
                (f"{path or ''}[{index}]", item) for index, item in reversed(list(enumerate(value)))
            )
    return problems


def parse_config(raw: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from decoded TOML/JSON; :class:`ConfigError` lists every problem."""
    config, problems = collect_config(raw)
    if problems:
        raise ConfigError(problems)
    return config


def collect_config(raw: Mapping[str, Any]) -> tuple[Config, list[Problem]]:
    """The parts of ``raw`` that are well formed, and every problem found on the way.

    Cross-field checks run on whatever parsed, so one report names every problem.
    """
    problems: list[Problem] = []
    if not isinstance(raw, Mapping):
        return Config(), [Problem("", "the configuration must be a table/object")]
    problems.extend(_not_unicode(raw))
    for key in raw:
        if key not in _KNOWN_KEYS:
            problems.append(
                Problem(_shown(key), f"unknown key (expected one of {sorted(_KNOWN_KEYS)})")
            )
    sections: dict[str, Any] = {}
    for key, type_ in _SECTION_TYPES.items():
        if key in raw:
            sections[key] = _convert(raw[key], type_, key, problems)
    config = Config(
        datasources=_datasources(raw.get("datasources", {}), problems),
        workflows=_workflows(raw.get("workflows", []), problems),
        tables=_tables(raw.get("tables", {}), problems),
        **{key: value for key, value in sections.items() if value is not None},
    )
    problems.extend(check_definitions(config))
    return config, problems


def _datasources(raw: Any, problems: list[Problem]) -> dict[str, DataSourceConfig]:
    """``[datasources.<name>]``: keys other than the common ones are the type's options."""
    if not isinstance(raw, Mapping):
        problems.append(Problem("datasources", "must be a table of named sources"))
        return {}
    datasources: dict[str, DataSourceConfig] = {}
    for name, body in raw.items():
        path = f"datasources.{_shown(name)}"
        if not isinstance(body, Mapping):
            problems.append(Problem(path, "must be a table"))
            continue
        common = {k: v for k, v in body.items() if k in _DATASOURCE_KEYS}
        common["options"] = {k: v for k, v in body.items() if k not in _DATASOURCE_KEYS}
        source = _convert(common, DataSourceConfig, path, problems)
        if source is not None:
            datasources[name] = source
    return datasources


def _workflows(raw: Any, problems: list[Problem]) -> tuple[WorkflowDefinition, ...]:
    if not isinstance(raw, list):
        problems.append(Problem("workflows", "must be an array of tables"))
        return ()
    workflows: list[WorkflowDefinition] = []
    for index, body in enumerate(raw):
        workflow = _convert(body, WorkflowDefinition, f"workflows[{index}]", problems)
        if workflow is not None:
            workflows.append(workflow)
    return tuple(workflows)


def _tables(raw: Any, problems: list[Problem]) -> dict[str, TableConfig]:
    if not isinstance(raw, Mapping):
        problems.append(Problem("tables", "must be a table of named tables"))
        return {}
    tables: dict[str, TableConfig] = {}
    for name, body in raw.items():
        if not IDENTIFIER.match(str(name)):
            problems.append(
                Problem(f"tables.{_shown(name)}", "table name is not a plain identifier")
            )
            continue
        table = _convert(body, TableConfig, f"tables.{name}", problems)
        if table is not None:
            tables[name] = table
    return tables


def _decode_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from error
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot parse {path}: {error}") from error


def load_config(source: str | Path | Mapping[str, Any] | Config | None = None) -> Config:
    """Load a config from a path (TOML or JSON), a mapping, or ``None`` (embedded default)."""
    if isinstance(source, Config):
        return source
    return parse_config(read_config(source))


def read_config(source: str | Path | Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The raw mapping of a config: a path (TOML or JSON), a mapping, or the default."""
    if source is None:
        return tomllib.loads(DEFAULT_CONFIG_TOML)
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    if path.is_dir():
        raise ConfigError(f"config path {path} is a directory, not a file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = _decode_file(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the configuration must be a table/object")
    return data
