"""A real PgBouncer in front of the test cluster (tests/pg_cluster.py), in session or transaction
pooling mode, for the tests of what a pooler does to the scope locks.

:func:`pgbouncer` starts ``/usr/sbin/pgbouncer`` (Debian's package ``pgbouncer``, which
``scripts/test`` installs) on a free loopback port with a configuration of its own: one database,
every login trusted and sent on as ``postgres``. As root it runs as the cluster's server user, as
PgBouncer refuses root. It is stopped when the block ends.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests.pg_cluster import PgCluster, _free_port

PGBOUNCER = Path("/usr/sbin/pgbouncer")
INSTALL_HINT = ("install Debian's package 'pgbouncer' (apt-get install pgbouncer; scripts/test does it "
                "as root)")


@contextmanager
def pgbouncer(cluster: PgCluster, url: str, *, pool_mode: str,
              ignore_startup_parameters: str = "options") -> Iterator[str]:
    """PgBouncer pooling ``url``'s database of ``cluster`` in ``pool_mode``, dropping the
    startup parameters named (PgBouncer refuses any other it does not know); the URL through it."""
    if not PGBOUNCER.is_file():
        raise AssertionError(f"{PGBOUNCER} is missing: {INSTALL_HINT}")
    name = url.rsplit("/", 1)[1]
    folder = Path(tempfile.mkdtemp(prefix="posfeed-pgbouncer-", dir="/tmp"))
    port = _free_port()
    ini = folder / "pgbouncer.ini"
    ini.write_text(f"""[databases]
{name} = host=127.0.0.1 port={cluster.port} dbname={name} user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = {pool_mode}
logfile = {folder}/pgbouncer.log
ignore_startup_parameters = {ignore_startup_parameters}
""", encoding="utf-8")
    user = {"user": cluster.as_user, "group": cluster.as_user, "extra_groups": []} if cluster.as_user else {}
    if cluster.as_user:
        shutil.chown(folder, user=cluster.as_user, group=cluster.as_user)
    process = subprocess.Popen([str(PGBOUNCER), str(ini)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               **user)  # type: ignore[call-overload]
    through = f"postgresql://postgres@127.0.0.1:{port}/{name}"
    try:
        for _ in range(600):
            try:
                psycopg.connect(through, connect_timeout=5).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None:
                    log = (folder / "pgbouncer.log").read_text()
                    raise AssertionError(f"pgbouncer ended: {log}") from None
                time.sleep(0.05)
        yield through
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
