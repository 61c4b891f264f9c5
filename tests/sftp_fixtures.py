"""A real OpenSSH sshd serving internal-sftp on 127.0.0.1, for the SFTP source tests.

Built on :class:`pipeline.testing.sshd.OpenSshServer` (which the benchmarks use too). Fixtures:

* ``sftp_server`` (session): sshd on a random free port with a generated ed25519 host key, user
  keys (ed25519 and RSA) for the current user, and ``internal-sftp``.
* ``sftp_dir`` (function): an empty folder on that server, unique per test.
* ``sftp_password_user`` (session): a throw-away system user with a password (needs root, as CI
  runs; skipped with the reason otherwise).

``SftpServer.feed(folder, **source)`` builds a Feed reading that folder; ``kill_sessions()``
kills the per-connection sshd processes, as a dropped connection looks to a client.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Feed
from pipeline.testing.sshd import OpenSshServer

__all__ = ["SftpServer", "SftpUser", "sftp_dir", "sftp_password_user", "sftp_server", "start_sftp_server"]


def _keygen(path: Path, kind: str) -> Path:
    args = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"posfeed-test-{kind}", "-f", str(path)]
    if kind == "rsa":
        args[4:4] = ["-b", "2048"]
    subprocess.run(args, check=True, capture_output=True)
    return path


@dataclass
class SftpUser:
    """A login on the test server."""

    name: str
    home: Path
    password: str | None = None


@dataclass
class SftpServer:
    """A running sshd (:class:`OpenSshServer`) plus an RSA user key; ``root`` is the served folder."""

    sshd: OpenSshServer
    rsa_key: Path

    @property
    def host(self) -> str:
        return self.sshd.host

    @property
    def port(self) -> int:
        return self.sshd.port

    @property
    def user(self) -> str:
        return self.sshd.username

    @property
    def ed25519_key(self) -> Path:
        return self.sshd.client_key_file

    @property
    def root(self) -> Path:
        """The folder test folders are created in."""
        return self.sshd.root

    @property
    def workdir(self) -> Path:
        return self.sshd.workdir

    def known_hosts_line(self) -> str:
        """The known_hosts line of this server's real host key."""
        return self.sshd.known_hosts_file.read_text().strip()

    def write_known_hosts(self, path: Path) -> Path:
        """Write a known_hosts file trusting this server."""
        path.write_text(self.known_hosts_line() + "\n")
        return path

    def feed(self, folder: Path, *, name: str = "sftp_feed", **source: Any) -> Feed:
        """A feed reading ``folder`` on this server with the ed25519 key, trusting its host key.

        Its config folder (where relative paths resolve, and the known_hosts file lives) is a
        sibling of ``folder``. Keys given as None are left at their defaults.
        """
        config_dir = folder.parent / f".{folder.name}-config"
        config_dir.mkdir(exist_ok=True)
        known = config_dir / "known_hosts"
        if not known.exists():
            self.write_known_hosts(known)
        values: dict[str, Any] = self.sshd.source_settings(
            str(folder),
            known_hosts_file=str(known),
            pattern="*.csv",
            readiness="none",
            connect_timeout=10.0,
            read_timeout=20.0,
        )
        values.update(source)
        values = {k: v for k, v in values.items() if v is not None}
        feed = Feed.model_validate({"name": name, "source": values})
        feed._config_dir = config_dir
        return feed

    def session_pids(self) -> list[int]:
        """The sshd processes serving current connections (children of the listener)."""
        return self.sshd.session_pids()

    def kill_sessions(self) -> int:
        """Kill every per-connection sshd process (a dropped connection); returns how many."""
        pids = self.session_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)


def start_sftp_server(workdir: Path) -> SftpServer:
    """Start sshd in ``workdir`` with ed25519 and RSA user keys and password logins enabled."""
    sshd = OpenSshServer(workdir, password_auth=True)
    sshd.start()
    rsa = _keygen(sshd.workdir / "id_rsa", "rsa")
    authorized = sshd.workdir / "authorized_keys"  # read by sshd at each login
    authorized.write_text(authorized.read_text() + rsa.with_suffix(".pub").read_text())
    return SftpServer(sshd, rsa)


@pytest.fixture(scope="session")
def sftp_server() -> Iterator[SftpServer]:
    """A real OpenSSH sshd with internal-sftp on 127.0.0.1 (random port) for the whole session."""
    workdir = Path(tempfile.mkdtemp(prefix="posfeed-sshd-"))
    workdir.chmod(0o755)  # traversable for the password test user
    server = start_sftp_server(workdir)
    try:
        yield server
    finally:
        server.sshd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def sftp_dir(sftp_server: SftpServer, request: pytest.FixtureRequest) -> Path:
    """An empty folder served by ``sftp_server``, unique to the test."""
    folder = Path(tempfile.mkdtemp(prefix=f"{request.node.name[:40]}-", dir=sftp_server.root))
    folder.chmod(0o777)
    return folder


@pytest.fixture(scope="session")
def sftp_password_user(sftp_server: SftpServer) -> Iterator[SftpUser]:
    """A throw-away system user with a random password, allowed on ``sftp_server``.

    The name is unique per session, so concurrent test sessions never reset each other's password.
    """
    if os.geteuid() != 0:
        pytest.skip("creating a password login for sshd needs root (CI runs as root)")
    name = f"posfeed{secrets.token_hex(4)}"
    home = sftp_server.workdir / "home-password"
    home.mkdir(exist_ok=True)
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        subprocess.run(["userdel", name], check=False, capture_output=True)
    subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
        check=True, capture_output=True,
    )
    password = secrets.token_urlsafe(16)
    subprocess.run(["chpasswd"], input=f"{name}:{password}".encode(), check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    try:
        yield SftpUser(name, home, password)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
