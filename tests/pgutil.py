"""PostgreSQL helpers for tests: the shared server's URL and a synchronous client.

The synchronous calls run asyncpg on a thread of their own, so a test may use them from
inside its event loop (as the MySQL tests use PyMySQL).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import psutil

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_BIN = "/usr/lib/postgresql/15/bin"


def fetch(sql: str, *args: Any, url: str = PG_URL) -> list[tuple[Any, ...]]:
    """The rows of one statement, as tuples (statements without rows answer [])."""
    found: list[list[tuple[Any, ...]]] = []
    failed: list[BaseException] = []

    async def run() -> None:
        connection = await asyncpg.connect(url)
        try:
            found.append([tuple(row) for row in await connection.fetch(sql, *args)])
        finally:
            await connection.close()

    def main() -> None:
        try:
            asyncio.run(run())
        except BaseException as error:
            failed.append(error)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return found[0]


def drop_tables(*names: str, url: str = PG_URL) -> None:
    """Drop the tables ``names`` (a partitioned one with its partitions) where they exist."""
    for name in names:
        fetch(f'DROP TABLE IF EXISTS "{name}" CASCADE', url=url)


def drop_like(prefix: str, url: str = PG_URL) -> None:
    """Drop every table of the current schema whose name starts with ``prefix``."""
    pattern = prefix.replace("_", "\\_") + "%"
    rows = fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE $1",
        pattern,
        url=url,
    )
    drop_tables(*(str(row[0]) for row in rows), url=url)


def rows_as_bytes(table: str, url: str = PG_URL) -> tuple[Sequence[str], list[list[bytes | None]]]:
    """Column names and every row of ``table`` with each value as its text's UTF-8 bytes,
    ordered by the first column."""
    names = [
        str(row[0])
        for row in fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = $1 ORDER BY ordinal_position",
            table,
            url=url,
        )
    ]
    listed = ", ".join(f"convert_to(\"{name}\"::text, 'UTF8')" for name in names)
    found = fetch(f'SELECT {listed} FROM "{table}" ORDER BY 1', url=url)
    return names, [[None if value is None else bytes(value) for value in row] for row in found]


class PrivatePostgres:
    """A PostgreSQL server of our own: ``initdb`` in a temporary folder, its own port and
    socket folder, run as the ``postgres`` user when we are root (PostgreSQL refuses root).
    ``kill()`` is a crash (SIGKILL to the postmaster and every backend, by their pids);
    ``start()`` again recovers from the WAL. ``fsync`` is off: a process crash keeps the
    page cache, and every commit still reaches the WAL (``synchronous_commit = on``)."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="wf78-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            shutil.chown(self.directory, self.user, self.user)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 60.0) -> None:
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(
                [
                    f"{PG_BIN}/initdb",
                    "-D",
                    str(self.data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                user=self.user,
            )
        log = (self.directory / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                f"{PG_BIN}/postgres",
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.directory),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "shared_buffers=32MB",
                "-c",
                "max_connections=50",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self.user,
        )
        log.close()
        began = time.monotonic()
        while True:
            try:
                fetch("SELECT 1", url=self.url)
                return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > began + timeout:
                    raise RuntimeError(f"postgres did not start:\n{self.log_tail()}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends (a crash), and wait for them."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        children = psutil.Process(process.pid).children(recursive=True)
        process.kill()
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        process.wait(30)
        psutil.wait_procs(children, timeout=30)

    def close(self) -> None:
        process = self.process
        try:
            if process is not None and process.poll() is None:
                process.terminate()  # smart shutdown
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    self.kill()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.directory / "server.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> PrivatePostgres:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
