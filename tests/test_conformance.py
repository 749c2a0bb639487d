"""The comparison behind ``python -m conformance.starlette``: which differences between the
bare and the wrapped run fail the check, what the allow-list excuses, and that the
allow-list and the README say the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.outcomes import Allowed, Difference, Run, compare, load_allowed
from conformance.record import Recorder
from conformance.starlette import ALLOWED

README = Path(__file__).resolve().parents[1] / "README.md"
TRIO = Allowed(("*[trio]",), "trio is refused at start", failure="wf78 needs asyncio")


def test_a_test_passing_bare_must_pass_wrapped() -> None:
    bare = Run({"t::a": "passed", "t::b": "skipped", "t::c": "xfailed", "t::d": "passed"})
    wrapped = Run({"t::a": "failed", "t::b": "skipped", "t::c": "passed"})
    verdict = compare(bare, wrapped)
    assert verdict.unexpected == (
        Difference("t::a", "passed", "failed"),
        Difference("t::c", "xfailed", "passed"),
        Difference("t::d", "passed", "missing"),
    )
    assert not verdict.ok


def test_a_test_failing_bare_may_end_anyhow_wrapped() -> None:
    verdict = compare(Run({"t::a": "failed", "t::b": "error"}), Run({"t::a": "error"}))
    assert verdict.ok
    assert verdict.unexpected == verdict.allowed == verdict.stale == ()


def test_an_entry_excuses_only_its_tests_failing_with_its_text() -> None:
    bare = Run({"t::a[trio]": "passed", "t::b[trio]": "passed", "t::a[asyncio]": "passed"})
    wrapped = Run(
        {"t::a[trio]": "error", "t::b[trio]": "failed", "t::a[asyncio]": "failed"},
        {
            "t::a[trio]": "Wf78Error: wf78 needs asyncio, and this runs on trio",
            "t::b[trio]": "AssertionError: assert 500 == 200",
            "t::a[asyncio]": "Wf78Error: wf78 needs asyncio",
        },
    )
    verdict = compare(bare, wrapped, [TRIO])
    assert [(difference.test, entry) for difference, entry in verdict.allowed] == [
        ("t::a[trio]", TRIO)
    ]
    assert [difference.test for difference in verdict.unexpected] == ["t::a[asyncio]", "t::b[trio]"]


def test_star_is_the_only_pattern_character() -> None:
    entry = Allowed(("t::a[trio-*]",), "why")
    assert entry.explains("t::a[trio-lifespan]", "") == "t::a[trio-*]"
    assert entry.explains("t::a[t]", "") is None  # "[...]" is no character class
    assert entry.explains("x/t::a[trio-lifespan]", "") is None  # the whole id must match


def test_an_entry_that_explains_nothing_is_stale() -> None:
    unused = Allowed(("t::gone", "t::a"), "was fixed")
    verdict = compare(Run({"t::a": "passed"}), Run({"t::a": "failed"}), [unused])
    assert verdict.stale == ("t::gone",)
    assert verdict.unexpected == ()
    assert not verdict.ok


def test_the_allow_list_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "allowed.toml"
    path.write_text('[[difference]]\ntests = ["t::a"]\nreason = ""\n')
    with pytest.raises(ValueError, match=r"difference\[0\]\.reason"):
        load_allowed(path)
    path.write_text('[[difference]]\ntests = ["t::a"]\nreason = "x"\nfailures = "y"\n')
    with pytest.raises(ValueError, match="unknown keys"):
        load_allowed(path)


def test_every_allowed_difference_is_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Starlette's suite as a conformance check") :]
    entries = load_allowed(ALLOWED)
    assert entries
    for entry in entries:
        for test in entry.tests:
            assert f"`{test}`" in section, test


def test_the_recorder_keeps_the_worst_phase_and_the_failures(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "outcomes.json")
    recorder.note("t::a", "passed")
    recorder.note("t::a", "error")  # its teardown failed
    recorder.note("t::a", "passed")
    recorder.note("t::b", "xfailed")
    recorder.failures["t::a"] = "boom"
    recorder.pytest_sessionfinish()
    run = Run.load(tmp_path / "outcomes.json")
    assert run.outcomes == {"t::a": "error", "t::b": "xfailed"}
    assert run.failures == {"t::a": "boom"}
    assert json.loads((tmp_path / "outcomes.json").read_text())["outcomes"]["t::a"] == "error"
    assert run.tally() == "1 error, 1 xfailed"
