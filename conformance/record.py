"""A pytest plugin (``-p conformance.record --wf78-outcomes FILE``) that writes each
test's outcome to FILE as JSON, with the report of each failure: ``{"outcomes":
{"tests/test_x.py::test_y[asyncio]": "passed", ...}, "failures": {test: report}}``.

An outcome is ``passed``, ``failed``, ``skipped``, ``xfailed``, ``xpassed`` or ``error``
(set-up or teardown failed, or the module did not collect)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

__all__ = ["Recorder"]

# When one phase's outcome replaces another's: an error in teardown spoils a pass.
_RANK = {"passed": 0, "skipped": 1, "xfailed": 1, "xpassed": 2, "failed": 3, "error": 4}


class Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.outcomes: dict[str, str] = {}
        self.failures: dict[str, str] = {}

    def note(self, test: str, outcome: str) -> None:
        before = self.outcomes.get(test)
        if before is None or _RANK[outcome] > _RANK[before]:
            self.outcomes[test] = outcome

    def failure(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        before = self.failures.get(report.nodeid)
        text = report.longreprtext
        self.failures[report.nodeid] = text if before is None else f"{before}\n{text}"

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.note(report.nodeid, "error")
            self.failure(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        expected_failure = hasattr(report, "wasxfail")
        if report.when == "call":
            if expected_failure:
                outcome = "xfailed" if report.skipped else "xpassed"
            else:
                outcome = report.outcome
        elif report.failed:
            outcome = "error"
        elif report.skipped:
            outcome = "xfailed" if expected_failure else "skipped"
        else:
            outcome = "passed"
        self.note(report.nodeid, outcome)
        if report.failed:
            self.failure(report)

    def pytest_sessionfinish(self) -> None:
        document = {"outcomes": self.outcomes, "failures": self.failures}
        self.path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--wf78-outcomes", metavar="FILE", help="write each test's outcome to FILE as JSON"
    )


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--wf78-outcomes")
    if path:
        config.pluginmanager.register(Recorder(Path(path)), "wf78-outcomes")
