"""The throwaway PostgreSQL cluster of the tests (tests/pg_cluster.py) is a real server.

Shown to fail: with ``fsync`` back on and ``listen_addresses = '*'`` the settings test fails; with
the fresh-database fixture returning the cluster's ``postgres`` database the isolation test fails;
with ``pytest.skip`` in place of ``pytest.fail`` the missing-binaries test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.pg_cluster import PgCluster, PgClusterUnavailable, find_pg_bin

REPO = Path(__file__).resolve().parent.parent


def test_a_table_made_on_one_connection_and_commits_seen_by_another(postgres_db: str) -> None:
    with psycopg.connect(postgres_db) as first, psycopg.connect(postgres_db) as second:
        first.execute("CREATE TABLE note (id integer PRIMARY KEY, body text NOT NULL)")
        first.execute("INSERT INTO note VALUES (1, 'from the first')")
        assert second.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'note'").fetchone() == (0,)
        second.rollback()
        first.commit()
        assert second.execute("SELECT body FROM note").fetchall() == [("from the first",)]
        second.execute("INSERT INTO note VALUES (2, 'from the second')")
        second.commit()
        assert first.execute("SELECT id, body FROM note ORDER BY id").fetchall() == [
            (1, "from the first"), (2, "from the second")]


def test_the_server_listens_on_loopback_only_without_fsync(postgres_cluster: PgCluster) -> None:
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as conn:
        def setting(name: str) -> str:
            row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
            assert row is not None
            return str(row[0])

        assert setting("listen_addresses") == "127.0.0.1"
        assert setting("fsync") == "off"
        assert setting("port") == str(postgres_cluster.port)
        assert setting("unix_socket_directories") == str(postgres_cluster.base)
        if os.geteuid() == 0:
            assert conn.execute("SELECT current_setting('data_directory')").fetchone() == (
                str(postgres_cluster.data_dir),)
            assert postgres_cluster.data_dir.stat().st_uid != 0  # the server does not run as root
    # the unix socket sits in the cluster's own folder, and answers too
    with psycopg.connect(host=str(postgres_cluster.base), port=postgres_cluster.port, user="postgres",
                         dbname="postgres") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("turn", ["first", "second"])
def test_each_test_gets_a_fresh_empty_database(turn: str, postgres_db: str, postgres_url: str) -> None:
    assert postgres_db.rsplit("/", 1)[1] != postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE left_behind (turn text)")  # the other turn must not see it


def test_a_killed_test_process_leaves_no_server_running() -> None:
    script = (
        "import os, sys\nfrom tests.pg_cluster import PgCluster\n"
        "cluster = PgCluster().start()\n"
        "print(cluster.url(), cluster._server.pid, cluster.base, flush=True)\nsys.stdin.read()\n"
    )
    session = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert session.stdout is not None
    url, server_pid, base = session.stdout.readline().split()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    session.kill()
    session.wait(timeout=60)
    deadline = time.monotonic() + 120
    while Path(f"/proc/{server_pid}").exists() and "zombie" not in _state(server_pid):
        assert time.monotonic() < deadline, "the server outlived the killed test process"
        time.sleep(0.05)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5)
    shutil.rmtree(base)  # the folder is left behind: the killed process could not remove it


def _state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].splitlines()[0]
    except (OSError, IndexError):
        return "zombie"


def test_the_newest_server_version_is_chosen(tmp_path: Path) -> None:
    for version in ("9.6", "15", "13"):
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        for program in ("initdb", "postgres"):
            (bin_dir / program).write_text("#!/bin/sh\n")
            (bin_dir / program).chmod(0o755)
    assert find_pg_bin(tmp_path) == tmp_path / "15" / "bin"


def test_missing_server_programs_name_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(PgClusterUnavailable, match="Debian's package 'postgresql'"):
        find_pg_bin(tmp_path)


def test_missing_server_programs_fail_the_fixture_never_skip_it(tmp_path: Path) -> None:
    test_file = tmp_path / "test_needs_postgres.py"
    test_file.write_text(
        "from pathlib import Path\nimport tests.pg_cluster as pg_cluster\n"
        f"pg_cluster.PG_ROOT = Path({str(tmp_path / 'nothing')!r})\n"
        "def test_needs_postgres(postgres_url):\n    pass\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.pg_cluster",
         "--rootdir", str(tmp_path), str(test_file)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout and "skipped" not in result.stdout, result.stdout
    assert "apt-get install postgresql" in result.stdout
