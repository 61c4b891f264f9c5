"""A real, throwaway PostgreSQL cluster on 127.0.0.1, for the tests that need a PostgreSQL server.

The cluster is made with the server's own ``initdb`` and ``pg_ctl`` from Debian's
``/usr/lib/postgresql/<version>/bin`` (the newest version there) in a temporary folder: it listens
only on 127.0.0.1 on a free port, keeps its unix socket in that folder, runs with ``fsync`` off
and trusts every local login (nothing in it outlives the session). ``initdb`` refuses to run as
root, so as root (CI) the server runs as the ``postgres`` system user that Debian's package
creates, and the folder belongs to it.

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
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
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
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}


class PgClusterUnavailable(RuntimeError):
    """The PostgreSQL server programs (or the user to run them as) are not on this machine."""


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def find_pg_bin(root: Path | None = None) -> Path:
    """The ``bin`` folder of the newest server version under ``root`` that has initdb and pg_ctl."""
    root = root or PG_ROOT
    found = [path.parent for path in root.glob("*/bin/initdb")
             if (path.parent / "pg_ctl").is_file() and os.access(path, os.X_OK)]
    if not found:
        raise PgClusterUnavailable(
            f"the PostgreSQL server programs (initdb, pg_ctl) are not in {root}/<version>/bin: {INSTALL_HINT}"
        )
    return max(found, key=_version_key)


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
        if self.as_user:
            shutil.chown(self.base, user=self.as_user, group=self.as_user)

    def _parent_dir(self) -> str | None:
        """Where the folder goes: the usual temp dir, or /tmp when the server user could not reach it."""
        if not self.as_user:
            return None
        here = Path(tempfile.gettempdir()).resolve()
        reachable = all(os.stat(path).st_mode & 0o001 for path in (here, *here.parents))
        return None if reachable else "/tmp"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        extra: dict[str, Any] = {}
        if self.as_user:
            extra = {"user": self.as_user, "group": self.as_user, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        env.pop("PGDATA", None)
        return subprocess.run([str(self.bin_dir / args[0]), *args[1:]], cwd=self.base, env=env,
                              capture_output=True, text=True, timeout=120, check=False, **extra)

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}{log}")

    def start(self) -> PgCluster:
        """initdb, write the settings, start the server on a free loopback port and wait for it."""
        self._check(self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                              "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"), "initdb")
        for _attempt in range(5):  # the free port may be taken between the probe and the bind
            self.port = _free_port()
            settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.base}'"}
            with (self.data_dir / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
                conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
            result = self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
                               "-t", "60", "start")
            if result.returncode == 0:
                atexit.register(self.stop)
                return self
            if "could not bind" not in self.log_file.read_text(errors="replace"):
                break
        self._check(result, "pg_ctl start")
        return self

    def stop(self) -> None:
        """Stop the server (fast: open sessions are ended) and remove its folder."""
        if self.data_dir.exists() and (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop")
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
