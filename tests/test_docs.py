"""The README stays true: its example runs, and every hook is documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import wf78_core.plugin.spec as hookspecs

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_readme_example_runs(tmp_path: Path) -> None:
    example = _blocks("python")[0]
    done = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout
    assert "default" in done.stdout
    assert (tmp_path / "wf78.db").exists()


def test_every_hook_is_documented_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    hooks = [name for name in dir(hookspecs) if name.startswith("wf78_")]
    assert len(hooks) == 6
    for name in hooks:
        assert f"`{name}`" in text, name
        assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"


def test_readme_commands_match_ci() -> None:
    commands = _blocks("bash")[0].strip().splitlines()
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[0].endswith("wf78 demo")
    assert commands[1].endswith("python -m pytest")
    assert commands[1] in ci
