"""A real OpenSSH ``sshd`` serving ``internal-sftp`` on 127.0.0.1, for tests, demos and benchmarks.

:class:`OpenSshServer` generates a host key and a client key (ed25519) in a work folder, writes a
minimal ``sshd_config``, starts ``sshd -D -e`` on a free loopback port and waits until it speaks
SSH. It stops the daemon (and its session processes) on exit::

    with OpenSshServer(tmp_path) as server:
        feed_source = server.source_settings(path=str(server.root / "exports"))
        ...

The login user is the current user (sshd as root allows root key logins here; as any other user
sshd serves only that user). Remote paths are plain absolute paths on this machine; ``root`` is a
folder under the work folder meant for exported files.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["OpenSshServer", "SshdError", "find_sshd", "free_port"]

_SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


class SshdError(RuntimeError):
    """sshd could not be found or did not come up."""


def find_sshd() -> Path:
    """The sshd binary (sshd must be started by its absolute path)."""
    on_path = shutil.which("sshd")
    for candidate in ((on_path,) if on_path else ()) + _SSHD_CANDIDATES:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate).resolve()
    raise SshdError("sshd not found: install openssh-server (Debian: apt-get install openssh-server)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _keygen(path: Path, kind: str = "ed25519") -> None:
    if path.exists():
        return
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "posfeed-local", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


class OpenSshServer:
    """One sshd process on loopback serving SFTP (internal-sftp) with key (and optional password) login."""

    def __init__(
        self,
        workdir: Path,
        *,
        password_auth: bool = False,
        extra_config: tuple[str, ...] = (),
        start_timeout: float = 15.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.root = self.workdir / "sftp-root"
        self.host = "127.0.0.1"
        self.port = 0
        self.username = getpass.getuser()
        self.host_key_file = self.workdir / "ssh_host_ed25519_key"
        self.client_key_file = self.workdir / "client_ed25519"
        self.known_hosts_file = self.workdir / "known_hosts"
        self.config_file = self.workdir / "sshd_config"
        self.log_file = self.workdir / "sshd.log"
        self.password_auth = password_auth
        self.extra_config = extra_config
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> OpenSshServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Generate keys, write the config and start sshd on a free port; wait until it answers."""
        sshd = find_sshd()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        _keygen(self.host_key_file)
        _keygen(self.client_key_file)
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(Path(f"{self.client_key_file}.pub").read_text())
        authorized.chmod(0o600)
        if os.geteuid() == 0:
            # privilege separation directory that packaged sshd expects
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        last_error = ""
        for _ in range(5):  # a free port can be taken between probing and binding: try another
            self.port = free_port()
            self._write_config(authorized)
            log = self.log_file.open("ab")
            self.process = subprocess.Popen(
                [str(sshd), "-D", "-e", "-f", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
            log.close()
            if self._wait_ready():
                self._write_known_hosts()
                return
            last_error = self.log_file.read_text(errors="replace")[-2000:]
            self.stop()
        raise SshdError(f"sshd did not start on 127.0.0.1: {last_error.strip()}")

    def stop(self) -> None:
        """Stop sshd and every session process it started."""
        process, self.process = self.process, None
        if process is None:
            return
        sessions = self._session_pids_of(process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    @property
    def pid(self) -> int:
        """The listening sshd's process id."""
        if self.process is None:
            raise SshdError("sshd is not running")
        return self.process.pid

    def session_pids(self) -> list[int]:
        """Process ids of the live per-connection sshd processes (kill one to drop a connection)."""
        return self._session_pids_of(self.pid)

    # ---- what a client needs ------------------------------------------------------------------

    def source_settings(self, path: str, **overrides: Any) -> dict[str, Any]:
        """The `[source]` keys of a feed reading ``path`` from this server with the client key."""
        settings: dict[str, Any] = {
            "kind": "sftp",
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "private_key_file": str(self.client_key_file),
            "known_hosts_file": str(self.known_hosts_file),
            "path": path,
        }
        settings.update(overrides)
        return settings

    def sftp_command(self) -> list[str]:
        """OpenSSH's ``sftp`` client command line (batch mode, host key verified) for this server."""
        return [
            "sftp",
            "-q",
            "-P",
            str(self.port),
            "-i",
            str(self.client_key_file),
            "-o",
            f"UserKnownHostsFile={self.known_hosts_file}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            f"{self.username}@{self.host}",
        ]

    # ---- internals ----------------------------------------------------------------------------

    def _write_config(self, authorized: Path) -> None:
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key_file}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}",
            "PubkeyAuthentication yes",
            f"PasswordAuthentication {'yes' if self.password_auth else 'no'}",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin yes" if self.password_auth else "PermitRootLogin prohibit-password",
            "PermitEmptyPasswords no",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "LogLevel ERROR",
            "MaxStartups 64:30:128",
            "MaxSessions 64",
            "ClientAliveInterval 0",
            "Subsystem sftp internal-sftp",
            *self.extra_config,
        ]
        self.config_file.write_text("\n".join(lines) + "\n")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _write_known_hosts(self) -> None:
        key_type, key_data = Path(f"{self.host_key_file}.pub").read_text().split()[:2]
        self.known_hosts_file.write_text(f"[{self.host}]:{self.port} {key_type} {key_data}\n")

    @staticmethod
    def _session_pids_of(parent: int) -> list[int]:
        """Every descendant of ``parent`` (per-connection sshd processes and their children)."""
        parents: dict[int, int] = {}
        for status in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = status.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parents[int(status.parent.name)] = int(fields[1])
        found: list[int] = []
        frontier = {parent}
        while frontier:
            children = [pid for pid, ppid in parents.items() if ppid in frontier]
            found.extend(children)
            frontier = set(children)
        return found
