"""A real, throwaway PostgreSQL cluster on 127.0.0.1, for the tests that need a PostgreSQL server.

The cluster is made with the server's own ``initdb`` and ``postgres`` from Debian's
``/usr/lib/postgresql/<version>/bin`` (the newest version there) in a temporary folder: it listens
only on 127.0.0.1 on a free port, keeps its unix socket in that folder, runs with ``fsync`` off
and trusts every local login (nothing in it outlives the session). ``initdb`` refuses to run as
root, so as root (CI) the server runs as the ``postgres`` system user that Debian's package
creates, and the folder belongs to it. The server is the test process's own child, stopped at the
end of the session, and told by the kernel to shut down if the test process dies first (a killed
pytest leaves no server running).

Fixtures (registered in ``tests/conftest.py``):

* ``postgres_cluster`` (session): the running cluster, stopped at the end of the session.
* ``postgres_url`` (session): ``postgresql://postgres@127.0.0.1:<port>/postgres``.
* ``postgres_db`` (function): the URL of a fresh, empty database of its own for each test,
  dropped afterwards.

Missing server binaries fail the fixture with the Debian package to install; they are never a
reason to skip.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

__all__ = [
    "PG_ROOT",
    "PgCluster",
    "PgClusterUnavailable",
    "find_pg_bin",
    "postgres_cluster",
    "postgres_db",
    "postgres_url",
]

PG_ROOT = Path("/usr/lib/postgresql")  # Debian's home of each server version: <root>/<version>/bin
SERVER_USER = "postgres"  # the system user Debian's postgresql package creates
INSTALL_HINT = ("install Debian's package 'postgresql' (apt-get install postgresql; scripts/test does it "
                "as root)")
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
    # statement statistics, which bench/postgres.py reads (its smoke test runs on this cluster)
    "shared_preload_libraries": "pg_stat_statements",
}


class PgClusterUnavailable(RuntimeError):
    """The PostgreSQL server programs (or the user to run them as) are not on this machine."""


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def find_pg_bin(root: Path | None = None) -> Path:
    """The ``bin`` folder of the newest server version under ``root`` that has initdb and postgres."""
    root = root or PG_ROOT
    found = [path.parent for path in root.glob("*/bin/initdb")
             if (path.parent / "postgres").is_file() and os.access(path, os.X_OK)]
    if not found:
        raise PgClusterUnavailable(
            f"the PostgreSQL server programs (initdb, postgres) are not in {root}/<version>/bin: "
            f"{INSTALL_HINT}"
        )
    return max(found, key=_version_key)


def _die_with_parent() -> None:
    """In the server's process before it starts: end it (immediate shutdown) if the tests die.

    Runs after the switch to the server user (which would clear it), so it holds for the server.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGQUIT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PgCluster:
    """One throwaway cluster: :meth:`start` it, connect with :meth:`url`, :meth:`stop` it."""

    def __init__(self, bin_dir: Path | None = None):
        self.bin_dir = bin_dir or find_pg_bin()
        self.as_user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PgClusterUnavailable(
                    f"running as root, the server must run as the system user {SERVER_USER!r}, which "
                    f"does not exist: {INSTALL_HINT}"
                ) from None
            self.as_user = SERVER_USER
        self.base = Path(tempfile.mkdtemp(prefix="posfeed-pg-", dir=self._parent_dir()))
        self.data_dir = self.base / "data"
        self.log_file = self.base / "server.log"
        self.port = 0
        self._names = itertools.count(1)
        self._server: subprocess.Popen[bytes] | None = None
        if self.as_user:
            shutil.chown(self.base, user=self.as_user, group=self.as_user)

    def _parent_dir(self) -> str | None:
        """Where the folder goes: the usual temp dir, or /tmp when the server user could not reach it."""
        if not self.as_user:
            return None
        here = Path(tempfile.gettempdir()).resolve()
        reachable = all(os.stat(path).st_mode & 0o001 for path in (here, *here.parents))
        return None if reachable else "/tmp"

    def _as_server_user(self) -> dict[str, Any]:
        if not self.as_user:
            return {}
        return {"user": self.as_user, "group": self.as_user, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        env.pop("PGDATA", None)
        return env

    def start(self) -> PgCluster:
        """initdb, then start the server on a free loopback port and wait until it answers."""
        initdb = subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
            cwd=self.base, env=self._env(), capture_output=True, text=True, timeout=120, check=False,
            **self._as_server_user(),
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}{initdb.stderr}")
        for _attempt in range(5):  # the free port may be taken between the probe and the bind
            self.port = _free_port()
            if self._start_server():
                atexit.register(self.stop)
                return self
            if "could not bind" not in self.log_file.read_text(errors="replace"):
                break
        log = self.log_file.read_text(errors="replace")
        raise RuntimeError(f"the PostgreSQL server did not start:\n{log}")

    def _start_server(self) -> bool:
        """The server as our own child (not pg_ctl's), so it can be told to end when we die."""
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": str(self.base)}
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        with self.log_file.open("ab") as log:
            self._server = subprocess.Popen(args, cwd=self.base, env=self._env(), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, preexec_fn=_die_with_parent,
                                            **self._as_server_user())
        deadline = time.monotonic() + 120
        while self._server.poll() is None and time.monotonic() < deadline:
            try:
                psycopg.connect(self.url(), connect_timeout=5).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        self.stop_server()
        return False

    def server_pid(self) -> int:
        """The process id of the running server (the postmaster)."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        return self._server.pid

    def stop_server(self) -> None:
        """Stop the server: fast shutdown (open sessions are ended), immediate if that hangs."""
        server, self._server = self._server, None
        if server is None or server.poll() is not None:
            return
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.send_signal(signal.SIGQUIT)
            server.wait(timeout=60)

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        self.stop_server()
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL of one database of the cluster, over TCP on 127.0.0.1."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database with a name of its own; its URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database`, ending sessions still on it."""
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PgCluster]:
    try:
        cluster = PgCluster()
    except PgClusterUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PgCluster) -> str:
    return postgres_cluster.url()


@pytest.fixture
def postgres_db(postgres_cluster: PgCluster) -> Iterator[str]:
    url = postgres_cluster.create_database()
    try:
        yield url
    finally:
        with contextlib.suppress(psycopg.Error):
            postgres_cluster.drop_database(url)
