"""Adapter options given as a struct or a mapping, checked with errors that name their path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import msgspec

from wf78_core.datasource import SourceSpec
from wf78_core.errors import ConfigError, Problem

__all__ = ["convert_options"]

T = TypeVar("T", bound=msgspec.Struct)


def convert_options(spec: SourceSpec, options_type: type[T]) -> T:
    """``spec.options`` as ``options_type``; a plain mapping is converted (and checked) here."""
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
        message, _, at = str(error).partition(" - at `$")
        if at:
            where += at.rstrip("`")
        elif message.startswith("Object contains unknown field"):
            where += "." + message.split("`")[1]
            message = "unknown key"
        raise ConfigError([Problem(where, message)]) from error
