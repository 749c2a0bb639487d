"""Name -> object registries filled by the ``wf78_register_*`` hooks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from wf78_core.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping filled once at start-up; a name may be added only once.

    Built-in plugins add with ``default=True``: such an entry gives way to one a
    third-party plugin adds under the same name (built-ins are called last), while two
    ordinary additions of one name are a start-up error naming both plugins.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}
        self._defaults: set[str] = set()
        self.owner = "?"

    def add(self, name: str, item: T, *, default: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.what} name must be a non-empty string, got {name!r}")
        if name in self._items:
            if default:
                return  # a plugin already provides it: the built-in steps aside
            if name not in self._defaults:
                raise ConfigError(
                    f"{self.what} {name!r} registered twice: by {self._owners[name]} "
                    f"and by {self.owner}"
                )
        self._items[name] = item
        self._owners[name] = self.owner
        if default:
            self._defaults.add(name)
        else:
            self._defaults.discard(name)

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str) -> T | None:
        return self._items.get(name)

    def names(self) -> list[str]:
        return sorted(self._items)
