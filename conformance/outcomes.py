"""Compare two runs of a test suite test by test, against an allow-list of known
differences.

Every test that passes bare (or is skipped, or fails as expected) must end the same way
wrapped, unless an allow-list entry names it with the reason, and with the text its
wrapped failure must show when the entry gives one. An entry that explains no difference
is stale: the list stays as short as the truth."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["KEPT", "Allowed", "Difference", "Run", "Verdict", "compare", "load_allowed"]

#: Outcomes of a bare run that the wrapped run must repeat. A test failing bare fails
#: for the environment (a root user ignores file permissions), not for wf78.
KEPT = frozenset({"passed", "skipped", "xfailed"})


@dataclass(frozen=True)
class Run:
    """One run of a suite: each test's outcome and each failure's report
    (:mod:`conformance.record` writes them)."""

    outcomes: Mapping[str, str]
    failures: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Run:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return cls(document["outcomes"], document.get("failures", {}))

    def tally(self) -> str:
        """``1412 passed, 2 failed, 2 xfailed``: how many of each outcome, most first."""
        counts: dict[str, int] = {}
        for outcome in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return ", ".join(f"{count} {outcome}" for outcome, count in ordered) or "no tests"


@dataclass(frozen=True)
class Difference:
    """A test whose wrapped outcome is not its bare one (``missing``: never reported)."""

    test: str
    bare: str
    wrapped: str


@dataclass(frozen=True)
class Allowed:
    """An allow-list entry: test ids (``*`` matches any text, nothing else is special),
    why they may differ, and the text the wrapped failure's report must contain (None:
    any failure)."""

    tests: tuple[str, ...]
    reason: str
    failure: str | None = None
    _patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        patterns = tuple(
            re.compile(".*".join(re.escape(part) for part in test.split("*")))
            for test in self.tests
        )
        object.__setattr__(self, "_patterns", patterns)

    def explains(self, test: str, report: str) -> str | None:
        """The first of :attr:`tests` naming ``test`` if ``report`` shows :attr:`failure`."""
        if self.failure is not None and self.failure not in report:
            return None
        for pattern, text in zip(self._patterns, self.tests, strict=True):
            if pattern.fullmatch(test):
                return text
        return None


@dataclass(frozen=True)
class Verdict:
    """What a comparison found: differences nobody allowed, differences with the entry
    that allows them, and the allow-list's test ids that explained nothing."""

    unexpected: tuple[Difference, ...]
    allowed: tuple[tuple[Difference, Allowed], ...]
    stale: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.stale


def compare(bare: Run, wrapped: Run, allowed: Iterable[Allowed] = ()) -> Verdict:
    """Each test whose bare outcome is one of :data:`KEPT` and whose wrapped outcome is
    another, sorted out by the allow-list (the first entry that explains it)."""
    entries = tuple(allowed)
    used: set[tuple[int, str]] = set()
    unexpected: list[Difference] = []
    explained: list[tuple[Difference, Allowed]] = []
    for test in sorted(bare.outcomes):
        was = bare.outcomes[test]
        now = wrapped.outcomes.get(test, "missing")
        if was not in KEPT or now == was:
            continue
        difference = Difference(test, was, now)
        report = wrapped.failures.get(test, "")
        for index, entry in enumerate(entries):
            text = entry.explains(test, report)
            if text is not None:
                used.add((index, text))
                explained.append((difference, entry))
                break
        else:
            unexpected.append(difference)
    stale = tuple(
        text
        for index, entry in enumerate(entries)
        for text in entry.tests
        if (index, text) not in used
    )
    return Verdict(tuple(unexpected), tuple(explained), stale)


def load_allowed(path: Path) -> list[Allowed]:
    """The ``[[difference]]`` entries of a TOML allow-list: ``tests``, ``reason`` and
    optionally ``failure``."""
    with path.open("rb") as file:
        document = tomllib.load(file)
    entries = []
    for index, item in enumerate(document.get("difference", [])):
        where = f"{path}: difference[{index}]"
        unknown = set(item) - {"tests", "reason", "failure"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        tests, reason, failure = item.get("tests"), item.get("reason"), item.get("failure")
        if not (isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests)):
            raise ValueError(f"{where}.tests: a list of test ids")
        if not (isinstance(reason, str) and reason.strip()):
            raise ValueError(f"{where}.reason: a sentence saying why")
        if failure is not None and not (isinstance(failure, str) and failure):
            raise ValueError(f"{where}.failure: the text the wrapped failure shows")
        entries.append(Allowed(tuple(tests), " ".join(reason.split()), failure))
    return entries
