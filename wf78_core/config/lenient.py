"""Converting a configuration without stopping at its first problem.

msgspec stops at the first error it meets. :meth:`ConfigReport.convert` records that error,
sets the value it names aside and converts again, so one report names every structural
problem and the cross-checks still see everything else: an unknown key is dropped, a bad
optional value is left to its default, a bad required value (or a list item) is replaced by
a stand-in, and a value its struct's own check refuses is found by leaving each key out in
turn. Paths set aside are remembered: a later check's problem there (or below) is only the
consequence of the stand-in, and is not reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

import msgspec
import msgspec.inspect as mi

from wf78_core.errors import Problem

__all__ = ["MAX_PROBLEMS", "ConfigReport", "msgspec_problem", "shown"]

# Problems one converted value (a workflow, a table, a section) may have before the rest of
# it is left unchecked: each costs one more conversion of that value.
MAX_PROBLEMS = 500

_UNKNOWN = "Object contains unknown field `"
_MISSING = "Object missing required field `"
_WHERE = " - at `$"
# One step of a msgspec location: `.field`, `[index]` or `[...]` (some value of a dict).
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+|\.\.\.)\]")
_ANY_KEY = "[...]"
_NO_STAND_IN = object()
# The stand-in of each scalar type.
_EMPTY: dict[type[Any], Any] = {
    mi.StrType: "",
    mi.IntType: 0,
    mi.FloatType: 0.0,
    mi.BoolType: False,
    mi.NoneType: None,
    mi.AnyType: None,
}

Step = str | int  # a field or key, a list index, or _ANY_KEY


def _split(error: msgspec.ValidationError) -> tuple[str, list[Step]] | None:
    """The message and the location of a msgspec error; None when the location is unreadable."""
    message, where = str(error), ""
    if _WHERE in message:
        message, _, where = message.rpartition(_WHERE)
        where = where.removesuffix("`")
    steps: list[Step] = []
    position = 0
    for match in _STEP.finditer(where):
        if match.start() != position:
            return None
        position = match.end()
        field, index = match.groups()
        steps.append(field if field is not None else (_ANY_KEY if index == "..." else int(index)))
    return (message, steps) if position == len(where) else None


def shown(name: Any) -> str:
    """A key as a path part: printable even when it holds a lone surrogate."""
    return str(name).encode("utf-8", "backslashreplace").decode("utf-8")


def _named_field(message: str, prefix: str) -> str | None:
    """The key an "unknown field" / "missing required field" message names."""
    if message.startswith(prefix) and message.endswith("`"):
        return message[len(prefix) : -1]
    return None


def _joined(path: str, steps: Iterable[Step]) -> str:
    for step in steps:
        path = f"{path}[{step}]" if isinstance(step, int) else f"{path}.{step}"
    return path.lstrip(".")


def msgspec_problem(prefix: str, error: msgspec.ValidationError) -> Problem:
    """A msgspec validation error as a :class:`Problem` whose path starts at ``prefix``: an
    unknown or missing key is named by its own path."""
    message = str(error)
    path = prefix
    if _WHERE in message:
        message, _, where = message.rpartition(_WHERE)
        path = prefix + where.removesuffix("`")
    unknown = _named_field(message, _UNKNOWN)
    missing = _named_field(message, _MISSING)
    field = unknown if unknown is not None else missing
    if field is not None:
        path = f"{path}.{field}" if path else field
        message = "unknown key" if unknown is not None else "required key is missing"
    return Problem(path.lstrip("."), message)


@cache
def _info(type_: Any) -> mi.Type:
    return mi.type_info(type_)


def _member(info: mi.Type, step: Step) -> mi.Type | None:
    """The part of ``info`` (a union's member) that a step into it goes through."""
    while isinstance(info, mi.Metadata):
        info = info.type
    candidates = info.types if isinstance(info, mi.UnionType) else (info,)
    for candidate in candidates:
        if isinstance(step, int) and isinstance(
            candidate, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType
        ):
            return candidate.item_type
        if isinstance(step, int) and isinstance(candidate, mi.TupleType):
            return candidate.item_types[step] if step < len(candidate.item_types) else None
        if step == _ANY_KEY and isinstance(candidate, mi.DictType):
            return candidate.value_type
        if isinstance(step, str) and isinstance(candidate, mi.StructType):
            for field in candidate.fields:
                if field.encode_name == step:
                    return field.type
    return None


def _type_at(info: mi.Type, steps: Iterable[Step]) -> mi.Type | None:
    found: mi.Type | None = info
    for step in steps:
        if found is None:
            return None
        found = _member(found, step)
    return found


def _struct_of(info: mi.Type | None) -> mi.StructType | None:
    while isinstance(info, mi.Metadata):
        info = info.type
    members = info.types if isinstance(info, mi.UnionType) else (info,)
    return next((m for m in members if isinstance(m, mi.StructType)), None)


def _required(info: mi.Type, steps: list[Step]) -> bool:
    """Whether the last step names a required field of its struct."""
    struct = _struct_of(_type_at(info, steps[:-1]))
    if struct is None:
        return False
    return any(f.encode_name == steps[-1] and f.required for f in struct.fields)


def _stand_in(info: mi.Type | None) -> Any:
    """A value of type ``info`` that holds nothing (``_NO_STAND_IN`` when there is none)."""
    while isinstance(info, mi.Metadata):
        info = info.type
    if isinstance(info, mi.UnionType):
        if info.includes_none:
            return None
        return _stand_in(info.types[0])
    if isinstance(info, mi.StructType):
        stand_in: dict[str, Any] = {}
        for field in info.fields:
            if field.required:
                value = _stand_in(field.type)
                if value is _NO_STAND_IN:
                    return _NO_STAND_IN
                stand_in[field.encode_name] = value
        return stand_in
    if type(info) in _EMPTY:
        return _EMPTY[type(info)]
    if isinstance(info, mi.LiteralType) and info.values:
        return info.values[0]
    if isinstance(info, mi.DictType):
        return {}
    if isinstance(info, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        return []
    return _NO_STAND_IN


def _copy(value: Any) -> Any:
    """A copy of the decoded TOML/JSON ``value`` that can be changed in place."""
    if isinstance(value, Mapping):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(item) for item in value]
    return value


def _at(value: Any, steps: Iterable[Step]) -> Any:
    for step in steps:
        if isinstance(step, int) and isinstance(value, list) and step < len(value):
            value = value[step]
        elif isinstance(step, str) and isinstance(value, dict) and step in value:
            value = value[step]
        else:
            return None
    return value


def _error_of(value: Any, type_: Any) -> str | None:
    """Why ``value`` does not convert to ``type_`` (None: it does)."""
    try:
        msgspec.convert(value, type_)
    except msgspec.ValidationError as error:
        return str(error)
    except UnicodeEncodeError:
        return "not Unicode"
    return None


class ConfigReport:
    """The problems of one configuration, and the paths whose values were set aside."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.set_aside: set[str] = set()

    def add(self, problem: Problem) -> None:
        self.problems.append(problem)

    def covers(self, path: str) -> bool:
        """Whether ``path`` is (or is inside) a value that was set aside."""
        if not self.set_aside:
            return False
        for index, char in enumerate(path):
            if char in ".[" and path[:index] in self.set_aside:
                return True
        return path in self.set_aside

    def add_checked(self, problems: Iterable[Problem]) -> None:
        """Add a later check's problems, except those a set-aside value explains (their
        paths printable, as the ones found while converting)."""
        for problem in problems:
            path = shown(problem.path)
            if not self.covers(path):
                self.add(problem if path == problem.path else Problem(path, problem.message))

    def convert(self, value: Any, type_: Any, path: str) -> Any:
        """``value`` as ``type_``, every problem on the way added with a path under
        ``path``; when nothing of it converts, a stand-in (None if the type has none)."""
        current = value
        count = 0
        stood_in: set[str] = set()
        while True:
            try:
                return msgspec.convert(current, type_)
            except UnicodeEncodeError:  # a key with a lone surrogate: _not_unicode named it
                break
            except msgspec.ValidationError as error:
                count += 1
                if count > MAX_PROBLEMS:
                    self.add(
                        Problem(path, f"more than {MAX_PROBLEMS} problems: not checked further")
                    )
                    break
                self.add(msgspec_problem(path, error))
                if current is value:
                    current = _copy(value)
                steps = self._set_aside(current, type_, error, stood_in)
                if steps is None:
                    break
                self.set_aside.add(_joined(path, steps))
        # Nothing of it can be kept: a stand-in keeps its place (and the list indexes).
        self.set_aside.add(path)
        replacement = _stand_in(_info(type_))
        if replacement is _NO_STAND_IN:
            return None
        try:
            return msgspec.convert(replacement, type_)
        except msgspec.ValidationError:
            return None

    def _set_aside(
        self, value: Any, type_: Any, error: msgspec.ValidationError, stood_in: set[str]
    ) -> list[Step] | None:
        """Change ``value`` in place so ``error`` is not raised again; the steps to what was
        set aside, or None when only the whole value can go."""
        split = _split(error)
        if split is None:
            return None
        message, steps = split
        info = _info(type_)
        unknown = _named_field(message, _UNKNOWN)
        missing = _named_field(message, _MISSING)
        if _ANY_KEY in steps:
            return self._drop_entry(value, type_, str(error), steps[: steps.index(_ANY_KEY)])
        if unknown is not None:
            holder = _at(value, steps)
            if isinstance(holder, dict) and unknown in holder:
                del holder[unknown]
                return [*steps, unknown]
            return None
        if missing is not None:
            return self._replace(value, info, [*steps, missing], stood_in)
        held = _at(value, steps)
        struct = _struct_of(_type_at(info, steps))
        if isinstance(held, dict) and struct is not None:
            # A struct refused its own values (__post_init__): find which key it was.
            culprit = self._culprit(held, struct, info, steps)
            if culprit is not None:
                return culprit
        if not steps:
            return None
        return self._replace(value, info, steps, stood_in)

    def _replace(
        self, value: Any, info: mi.Type, steps: list[Step], stood_in: set[str]
    ) -> list[Step] | None:
        """Drop an optional key, or put a stand-in at a required key or a list index."""
        holder, last = _at(value, steps[:-1]), steps[-1]
        if isinstance(holder, dict) and isinstance(last, str) and not _required(info, steps):
            if last not in holder:
                return None  # nothing there to set aside
            del holder[last]
            return steps
        where = _joined("", steps)
        replacement = _stand_in(_type_at(info, steps))
        if where in stood_in or replacement is _NO_STAND_IN:
            return None  # a stand-in refused in its turn
        stood_in.add(where)
        if isinstance(holder, dict) and isinstance(last, str):
            holder[last] = replacement
        elif isinstance(holder, list) and isinstance(last, int) and last < len(holder):
            holder[last] = replacement
        else:
            return None
        return steps

    @staticmethod
    def _culprit(
        held: dict[str, Any], struct: mi.StructType, info: mi.Type, steps: list[Step]
    ) -> list[Step] | None:
        """The first key of ``held`` without which (or with a stand-in for which) its struct
        no longer refuses it for the same reason; that key is set aside."""
        reason = _error_of(held, struct.cls)
        for key in list(held):
            trial = dict(held)
            if _required(info, [*steps, key]):
                replacement = _stand_in(_type_at(info, [*steps, key]))
                if replacement is _NO_STAND_IN:
                    continue
                trial[key] = replacement
            else:
                del trial[key]
            if _error_of(trial, struct.cls) != reason:
                held.clear()
                held.update(trial)
                return [*steps, key]
        return None

    def _drop_entry(
        self, value: Any, type_: Any, reason: str, steps: list[Step]
    ) -> list[Step] | None:
        """msgspec names no key inside a dict (``[...]``): drop the first entry that alone
        raises the same error, else the whole dict."""
        entries = _at(value, steps)
        if isinstance(entries, dict):
            items = list(entries.items())
            culprit = None
            for key, entry in items:
                entries.clear()
                entries[key] = entry
                if _error_of(value, type_) == reason:
                    culprit = key
                    break
            entries.clear()
            entries.update((key, entry) for key, entry in items if key != culprit)
            if culprit is not None:
                return [*steps, str(culprit)]
        if not steps:
            return None
        return self._replace(value, _info(type_), steps, set())
