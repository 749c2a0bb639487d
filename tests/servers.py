"""Private MariaDB and Redis servers for fault injection: real server binaries, our own processes.

The shared servers (MariaDB on 127.0.0.1:3306, Redis on 127.0.0.1:6379) serve other test suites
while these run, so fault injection never touches them: :class:`MariaDB` initialises a data
directory of its own (``mariadb-install-db``) and runs ``mariadbd`` on a free port and its own
socket; :class:`RedisServer` runs ``redis-server`` on a free port in its own folder. Both read no
option file (``--no-defaults``; Redis gets every setting on its command line), so nothing of the
shared servers' configuration applies, and both stop, pause and restart only the process they
started, by its id. ``tests/test_faults.py`` and ``benchmarks/faults.py`` use them::

    with MariaDB() as db:          # started; stopped and its folder removed on exit
        db.url                     # mysql://root@127.0.0.1:PORT/test (database test exists)
        db.stop()                  # orderly shutdown (SIGTERM); db.stop(kill=True): SIGKILL
        db.start()                 # the same data directory, port and socket again
        db.pause(); db.resume()    # SIGSTOP / SIGCONT: a server that hangs, connections open

    with RedisServer(appendonly=True) as cache:
        cache.restart()            # SHUTDOWN NOSAVE, then the same port and folder again
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pymysql  # type: ignore[import-untyped]
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["MariaDB", "RedisServer", "ServerError", "free_port"]

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "mariadb-install-db"
REDIS_SERVER = "redis-server"
# How long a server may take to answer after it was started, and to exit after a stop.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


class ServerError(RuntimeError):
    """A private server did not start or stop as asked (the message ends with its log)."""


def free_port() -> int:
    """A TCP port on the loopback nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Server:
    """One server process we start, stop, pause and restart ourselves (by its pid only)."""

    name = "server"

    def __init__(self, directory: str | Path | None, port: int | None) -> None:
        self._owned = directory is None
        # Short paths by default: a Unix socket path must stay under about 100 bytes.
        self.directory = Path(
            tempfile.mkdtemp(prefix=f"wf78-{self.name}-") if directory is None else directory
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log = self.directory / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        #: times the process was started
        self.starts = 0

    # -- what a server type says -----------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _answers(self) -> bool:
        """Whether the server accepts a client and answers a trivial command now."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Before the first start (a data directory to initialise, say)."""

    def _first_answer(self) -> None:
        """After the first time the server answered."""

    def _orderly_stop(self) -> None:
        """Ask the server to shut down; the caller waits for the process to exit."""
        self._signal(signal.SIGTERM)

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start the server and wait until it answers; the seconds that took."""
        if self.running:
            raise ServerError(f"{self.name} on port {self.port} is already running")
        if self.starts == 0:
            self._prepare()
        began = time.monotonic()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        self.starts += 1
        self.wait_until_answers(timeout)
        if self.starts == 1:
            self._first_answer()
        return time.monotonic() - began

    def wait_until_answers(self, timeout: float = START_TIMEOUT) -> float:
        """Wait until the running server answers (after a start or :meth:`resume`), polling
        every 20 ms; the seconds that took."""
        began = time.monotonic()
        while True:
            if not self.running:
                raise ServerError(f"{self.name} exited:\n{self.log_tail()}")
            if self._answers():
                return time.monotonic() - began
            if time.monotonic() > began + timeout:
                raise ServerError(
                    f"{self.name} did not answer within {timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, *, kill: bool = False, timeout: float = STOP_TIMEOUT) -> float:
        """Stop the server (an orderly shutdown; ``kill``: SIGKILL) and wait until it has
        exited; the seconds that took."""
        process = self.process
        if process is None or process.poll() is not None:
            return 0.0
        began = time.monotonic()
        self.resume()  # a stopped (SIGSTOP) process cannot shut down
        if kill:
            process.kill()
        else:
            try:
                self._orderly_stop()
            except Exception:
                process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise ServerError(
                f"{self.name} did not stop within {timeout}s (killed):\n{self.log_tail()}"
            ) from None
        return time.monotonic() - began

    def restart(self, *, kill: bool = False, down_for: float = 0.0) -> float:
        """Stop, stay down ``down_for`` seconds, start again on the same port and data; the
        seconds from the stop until the server answered again."""
        began = time.monotonic()
        self.stop(kill=kill)
        time.sleep(down_for)
        self.start()
        return time.monotonic() - began

    def pause(self) -> None:
        """SIGSTOP: the process hangs with its connections open (clients time out)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause` (harmless otherwise)."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signum)

    def close(self) -> None:
        """Stop the server if it runs (SIGKILL if it will not stop) and, if the folder was
        made here, remove it."""
        try:
            if self.running:
                try:
                    self.stop(timeout=20.0)
                except ServerError:
                    pass  # killed: nothing is left running
        finally:
            if self._owned:
                shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MariaDB(_Server):
    """A private ``mariadbd``: its own data directory, port and socket; user ``root`` without
    a password over TCP; database ``test``. InnoDB keeps the server's durable default
    (``innodb_flush_log_at_trx_commit = 1``): a committed write survives a stop or a kill."""

    name = "mariadb"

    def __init__(
        self,
        directory: str | Path | None = None,
        port: int | None = None,
        *,
        database: str = "test",
    ) -> None:
        super().__init__(directory, port)
        self.database = database
        self.datadir = self.directory / "data"
        self.socket = self.directory / "mariadb.sock"

    @property
    def url(self) -> str:
        """The wf78 data-source url of the ``test`` database."""
        return f"mysql://root@{self.host}:{self.port}/{self.database}"

    def connect(self, *, database: str | None = None, **options: Any) -> Any:
        """A PyMySQL connection (autocommit) to the server, for checks made around wf78."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user="root",
            password="",
            database=self.database if database is None else database,
            autocommit=True,
            connect_timeout=options.pop("connect_timeout", 2),
            **options,
        )

    def _prepare(self) -> None:
        if (self.datadir / "mysql").is_dir():
            return
        done = subprocess.run(
            [
                INSTALL_DB,
                "--no-defaults",
                f"--datadir={self.datadir}",
                *_as_root(),
                # root@127.0.0.1 without a password, as on the shared server
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if done.returncode != 0:
            raise ServerError(f"{INSTALL_DB} failed:\n{done.stdout.decode(errors='replace')}")

    def _command(self) -> list[str]:
        return [
            MARIADBD,
            "--no-defaults",  # first: no /etc/mysql option file, so nothing of the shared one
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--pid-file={self.directory / 'mariadb.pid'}",
            *_as_root(),
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=64M",
            "--max-connections=500",
        ]

    def _answers(self) -> bool:
        try:
            connection = self.connect(database="", connect_timeout=1)
        except pymysql.MySQLError:
            return False
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except pymysql.MySQLError:
            return False
        finally:
            connection.close()

    def _first_answer(self) -> None:
        connection = self.connect(database="")
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        finally:
            connection.close()


class RedisServer(_Server):
    """A private ``redis-server`` on its own port and folder, no RDB snapshots.

    ``appendonly=True`` (the default) keeps an append-only file fsynced before every reply
    (``appendfsync always``): a write Redis acknowledged survives a restart. With
    ``appendonly=False`` Redis keeps nothing on disk, and a restart empties it.
    """

    name = "redis"

    def __init__(
        self,
        directory: str | Path | None = None,
        port: int | None = None,
        *,
        appendonly: bool = True,
    ) -> None:
        super().__init__(directory, port)
        self.appendonly = appendonly

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **options: Any) -> redis.Redis:
        """A redis-py client (synchronous, no retries of its own), for checks made around wf78."""
        options.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(host=self.host, port=self.port, db=0, **options)

    def _command(self) -> list[str]:
        command = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "",  # to stdout, which goes to our log file
        ]
        if self.appendonly:
            command += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            command += ["--appendonly", "no"]
        return command

    def _answers(self) -> bool:
        client = self.client(socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())  # LOADING (still reading its file) raises
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _orderly_stop(self) -> None:
        client = self.client(socket_timeout=5, socket_connect_timeout=2)
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the server closed the connection as it went away
        finally:
            client.close()


def _as_root() -> list[str]:
    """mariadbd refuses to run as root unless told to."""
    return ["--user=root"] if os.geteuid() == 0 else []
