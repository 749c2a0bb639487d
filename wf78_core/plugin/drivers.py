"""Optional driver packages: an adapter imports its driver through :func:`require_driver`, so a
configured source whose driver is not installed fails at start with the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from wf78_core.errors import ConfigError

__all__ = ["MissingDriver", "require_driver"]


class MissingDriver(ConfigError):
    """A driver package is not installed; ``extra`` is the ``wf78[...]`` extra that brings it."""

    def __init__(self, module: str, extra: str, *, what: str, detail: str = "") -> None:
        self.module = module
        self.extra = extra
        self.detail = detail
        message = f'{what} needs the {module} package: pip install "wf78[{extra}]"'
        super().__init__(f"{message} ({detail})" if detail else message)

    def for_source(self, what: str) -> MissingDriver:
        """The same error naming ``what`` (a configured source rather than its type)."""
        return MissingDriver(self.module, self.extra, what=what, detail=self.detail)


def require_driver(module: str, extra: str, *, what: str) -> ModuleType:
    """``import module``, or :class:`MissingDriver` (a ``ConfigError``) naming ``extra``.

    ``what`` names who needs it, e.g. ``"data source type 'mysql'"``. When the driver is
    there but one of its own dependencies is not, the error says which one.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = getattr(error, "name", None)
        top = module.partition(".")[0]
        detail = "" if missing in (module, top) else str(error)
        raise MissingDriver(top, extra, what=what, detail=detail) from error
