"""What a data-source adapter is: the protocol plugins implement and what they are given."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import msgspec

from wf78_core.config import ColumnType, TableConfig, msgspec_problem
from wf78_core.definitions import Operation
from wf78_core.errors import ConfigError
from wf78_core.plugin.drivers import MissingDriver

__all__ = [
    "DataSource",
    "DataSourceFactory",
    "SourceInfo",
    "SourceSpec",
    "TableSchema",
    "convert_options",
    "load_factory",
    "options_for",
]


class TableSchema(msgspec.Struct, frozen=True):
    """A declared table as an adapter sees it: every column (base ones too) and its type."""

    name: str
    columns: dict[str, ColumnType]
    owner: str | None = None

    @classmethod
    def from_config(cls, name: str, table: TableConfig) -> TableSchema:
        return cls(name=name, columns=table.schema(), owner=table.owner)


class SourceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything an adapter factory is given to build one configured source."""

    name: str
    type: str
    url: str | None
    options: Any  # the factory's ``Options`` struct when it has one, else a dict
    tables: Mapping[str, TableSchema]
    base_dir: str = "."


class SourceInfo(msgspec.Struct, frozen=True):
    """A candidate source as selection strategies see it."""

    name: str
    type: str
    actions: frozenset[str]
    healthy: bool = True
    latency: float = 0.0  # recent median seconds, 0 when unknown


@runtime_checkable
class DataSource(Protocol):
    """An adapter instance serving one configured source.

    ``actions`` lists the operation actions it performs; ``concurrency`` is how many
    operations it takes in flight at once by default (the default agent's capacity).
    ``execute`` raises :class:`~wf78_core.errors.OperationError` subclasses, with
    ``retryable`` set when trying again can help (a lost connection) and unset when it
    cannot (a duplicate key, bad SQL).
    """

    actions: frozenset[str]
    concurrency: int

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def health(self) -> None: ...

    async def execute(self, op: Operation) -> Any: ...


class DataSourceFactory(Protocol):
    """What ``wf78_register_datasources`` registers: usually the adapter class itself. An
    ``Options`` msgspec Struct on it validates the type-specific keys of its config."""

    def __call__(self, spec: SourceSpec) -> DataSource: ...


def load_factory(item: DataSourceFactory | str, *, what: str | None = None) -> Any:
    """A registered factory; ``"module:attribute"`` strings are imported on first use, so a
    plugin whose driver is heavy costs nothing until a configured source needs it.

    A driver missing on import (:class:`~wf78_core.plugin.drivers.MissingDriver`) is
    reported as ``what`` needing it when given, e.g. ``"data source 'db' (type mysql)"``.
    """
    if not isinstance(item, str):
        return item
    module, _, attribute = item.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except MissingDriver as error:
        if what is None:
            raise
        raise error.for_source(what) from error.__cause__


T = TypeVar("T", bound=msgspec.Struct)


def convert_options(spec: SourceSpec, options_type: type[T]) -> T:
    """``spec.options`` as ``options_type``: the engine passes the struct already; a plain
    mapping (adapters built by hand) is converted here, errors naming their config path."""
    raw = spec.options
    where = f"datasources.{spec.name}"
    if isinstance(raw, options_type):
        return raw
    if raw is None:
        return options_type()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"options must be a table, got {type(raw).__name__}", path=where)
    try:
        return msgspec.convert(dict(raw), options_type)
    except msgspec.ValidationError as error:
        raise ConfigError([msgspec_problem(where, error)]) from error


def options_for(factory: Any, raw: Mapping[str, Any]) -> Any:
    """Validate type-specific options with the factory's ``Options`` struct, if it has one."""
    options_type = getattr(factory, "Options", None)
    if options_type is None:
        return dict(raw)
    return msgspec.convert(dict(raw), options_type)
