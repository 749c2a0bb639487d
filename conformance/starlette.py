"""``python -m conformance.starlette``: Starlette's own test suite as a conformance check of
``Wf78Middleware``.

It downloads the sdist of the locked Starlette (``requirements.lock``; kept in
``.cache/conformance/``), unpacks its ``tests/`` and runs them twice at once: bare, and
with the app of every ``TestClient`` wrapped in ``Wf78Middleware`` (``conformance.wrap``).
Every test that passes bare must pass wrapped, unless ``starlette-allowed.toml`` lists it
with the reason. Exit status 0: conformant; 1: a difference nobody allowed, or a stale
allow-list entry; 2: the suite could not run.

Arguments after ``--`` go to both pytest runs (``-- -k lifespan``); stale entries are then
reported but not fatal."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from conformance.outcomes import Allowed, Run, Verdict, compare, load_allowed

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
ALLOWED = Path(__file__).with_name("starlette-allowed.toml")
# One run of the suite takes well under a minute here; a hang ends at this.
TIMEOUT = 900.0


class Unrunnable(Exception):
    """The suite could not be run (exit status 2)."""


def locked_version(lock: Path = REPO / "requirements.lock") -> str:
    """Starlette's pin in the lock file, checked against the installed version."""
    found = re.search(r"(?im)^starlette==(\S+)\s*$", lock.read_text(encoding="utf-8"))
    if found is None:
        raise Unrunnable(f"{lock} pins no starlette")
    version = found.group(1)
    installed = importlib.metadata.version("starlette")
    if installed != version:
        raise Unrunnable(
            f"starlette {installed} is installed, the lock pins {version}: "
            "pip install -r requirements.lock"
        )
    return version


def sdist(version: str, cache: Path) -> Path:
    """The sdist of Starlette ``version``, downloaded by pip into ``cache`` once."""
    path = cache / f"starlette-{version}.tar.gz"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as folder:
        # No build isolation: pip reads the sdist's metadata with the locked hatchling.
        command = [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
            *("--no-binary", ":all:", "--no-build-isolation", "--dest", folder),
            f"starlette=={version}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        downloaded = list(Path(folder).glob("starlette-*.tar.gz"))
        if done.returncode != 0 or len(downloaded) != 1:
            raise Unrunnable(f"pip could not download starlette=={version}'s sdist:\n{done.stderr}")
        downloaded[0].replace(path)
    return path


def unpack(archive: Path, version: str, cache: Path) -> Path:
    """A fresh copy of the sdist's ``tests/`` and ``pyproject.toml`` (its pytest settings)
    in ``cache/starlette-<version>``; Starlette itself is the installed one."""
    root = f"starlette-{version}/"
    target = cache / f"starlette-{version}"
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            name = member.name
            if name != root + "pyproject.toml" and not name.startswith(root + "tests/"):
                continue
            if ".." in Path(name).parts or not (member.isfile() or member.isdir()):
                raise Unrunnable(f"{archive}: unexpected member {name!r}")
            member.name = name.removeprefix(root)
            members.append(member)
        target.mkdir(parents=True)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, members=members, filter="data")
        else:  # Python before 3.11.4: the members were checked above
            tar.extractall(target, members=members)
    if not (target / "tests" / "conftest.py").is_file():
        raise Unrunnable(f"{archive} has no tests/conftest.py")
    return target


def start_suite(
    suite: Path, *, wrapped: bool, results: Path, log: IO[str], args: Sequence[str]
) -> subprocess.Popen[str]:
    """pytest on ``suite/tests``, writing each test's outcome to ``results``."""
    command = [
        *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
        *("-p", "conformance.record", "--wf78-outcomes", str(results)),
        *(("-p", "conformance.wrap") if wrapped else ()),
        "tests",
        *args,
    ]
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [environment.get("PYTHONPATH")])]
    )
    log.write(" ".join(command) + "\n")
    log.flush()
    return subprocess.Popen(
        command, cwd=suite, env=environment, stdout=log, stderr=subprocess.STDOUT, text=True
    )


def run_both(suite: Path, cache: Path, args: Sequence[str]) -> tuple[Run, Run]:
    """The bare and the wrapped run, side by side (each takes one core)."""
    runs: list[Run] = []
    started = []
    for name, wrapped in (("bare", False), ("wrapped", True)):
        results, log_path = cache / f"{name}.json", cache / f"{name}.log"
        results.unlink(missing_ok=True)
        log = log_path.open("w", encoding="utf-8")
        process = start_suite(suite, wrapped=wrapped, results=results, log=log, args=args)
        started.append((name, process, log, results, log_path))
    deadline = time.monotonic() + TIMEOUT
    problems = []
    try:
        codes: list[int | None] = []
        for name, process, _, _, log_path in started:
            try:
                codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                problems.append(f"the {name} run was still going after {TIMEOUT:.0f}s ({log_path})")
                codes.append(None)
    finally:  # a hang, or Ctrl-C: neither run outlives this one
        for _, process, log, _, _ in started:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    for (name, _, _, results, log_path), code in zip(started, codes, strict=True):
        # pytest: 0 all passed, 1 some failed; anything else means the run itself broke.
        if code is None:
            continue
        if code not in (0, 1) or not results.is_file():
            tail = "".join(log_path.read_text(encoding="utf-8").splitlines(True)[-30:])
            problems.append(f"the {name} run ended with status {code} ({log_path}):\n{tail}")
        else:
            runs.append(Run.load(results))
    if problems:
        raise Unrunnable("\n".join(problems))
    return runs[0], runs[1]


def report(verdict: Verdict, *, strict_stale: bool) -> list[str]:
    """The summary's lines about the differences."""
    lines = [f"  differences allowed ({ALLOWED.name}): {len(verdict.allowed)}"]
    grouped: dict[Allowed, list[str]] = {}
    for difference, entry in verdict.allowed:
        grouped.setdefault(entry, []).append(difference.test)
    for entry, tests in grouped.items():
        named = tests[0] if len(tests) == 1 else f"{len(tests)} tests ({', '.join(entry.tests)})"
        lines.append(f"    {named}: {entry.reason}")
    for difference in verdict.unexpected:
        lines.append(
            f"  NOT CONFORMANT {difference.test}: {difference.bare} bare, "
            f"{difference.wrapped} wrapped"
        )
    for test in verdict.stale:
        label = "STALE" if strict_stale else "unused"
        lines.append(f"  {label} allow-list entry {test!r}: it explains no difference")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.starlette",
        description="Starlette's test suite, bare and wrapped in Wf78Middleware, compared.",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=REPO / ".cache" / "conformance",
        help="where the sdist, the unpacked tests and the runs' logs go",
    )
    parser.add_argument("pytest_args", nargs="*", help="after --: more arguments for pytest")
    options = parser.parse_args(argv)
    cache: Path = options.cache.resolve()
    began = time.monotonic()
    try:
        version = locked_version()
        suite = unpack(sdist(version, cache), version, cache)
        print(f"conformance: Starlette {version}'s suite, bare and wrapped ({suite / 'tests'})")
        bare, wrapped = run_both(suite, cache, options.pytest_args)
        verdict = compare(bare, wrapped, load_allowed(ALLOWED))
    except (Unrunnable, OSError, ValueError) as error:
        print(f"conformance: cannot run: {error}", file=sys.stderr)
        return 2
    strict_stale = not options.pytest_args
    print(f"  bare:    {bare.tally()}")
    print(f"  wrapped: {wrapped.tally()}")
    for line in report(verdict, strict_stale=strict_stale):
        print(line)
    seconds = time.monotonic() - began
    conformant = verdict.ok if strict_stale else not verdict.unexpected
    if conformant:
        print(
            f"conformance: every test that passes bare passes wrapped, or is allowed "
            f"({seconds:.0f}s; logs in {cache})"
        )
        return 0
    print(f"conformance: NOT CONFORMANT ({seconds:.0f}s; logs in {cache})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
