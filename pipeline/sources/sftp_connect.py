"""Opening an SFTP session with paramiko: credentials, host key verification, timeouts.

The edge where paramiko and socket exceptions become :mod:`pipeline.errors`:

* host key unknown or changed, credentials refused, no common algorithm ->
  :class:`SourceAuthError` (exit 78); trust-on-first-use only with
  ``source.trust_unknown_host = true``, which records the key in the known_hosts file;
* server unreachable, silent or dropping the connection -> :class:`SourceUnavailableError`
  (exit 75).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from paramiko.ssh_exception import IncompatiblePeer

from pipeline.config import Feed, resolve_secret
from pipeline.errors import SourceAuthError, SourceUnavailableError

__all__ = [
    "CONNECTION_ERRORS",
    "SftpEndpoint",
    "describe",
    "host_key_line",
    "open_sftp",
]

log = logging.getLogger(__name__)

CONNECTION_ERRORS = (OSError, EOFError, paramiko.SSHException)
WINDOW_SIZE = 1 << 24  # SSH channel window; large enough that the server never waits for us
MAX_PACKET_SIZE = 1 << 18  # SSH channel packet size we accept: fewer packets, less Python per byte
# AEAD ciphers need no separate MAC pass; offered first (the server still has its say)
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
PREFERRED_MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")


@dataclass(frozen=True)
class SftpEndpoint:
    """Where and how to log in, from a feed's ``[source]`` (secrets stay referenced)."""

    feed_name: str
    host: str
    port: int
    username: str
    folder: str
    known_hosts: Path
    trust_unknown_host: bool
    private_key: Path | None
    passphrase_env: str | None
    password_env: str | None
    connect_timeout: float
    read_timeout: float
    keepalive_seconds: int

    @classmethod
    def of(cls, feed: Feed) -> SftpEndpoint:
        """The endpoint of an sftp feed; relative key and known_hosts paths against its folder."""
        c = feed.source
        if not c.host or not c.username:
            raise SourceAuthError(
                "an sftp source needs host and username", source=feed.name, key="source.host"
            )
        return cls(
            feed_name=feed.name,
            host=c.host,
            port=c.port,
            username=c.username,
            folder=c.path,
            known_hosts=(
                feed.resolve_path(c.known_hosts_file)
                if c.known_hosts_file
                else Path("~/.ssh/known_hosts").expanduser()
            ),
            trust_unknown_host=c.trust_unknown_host,
            private_key=feed.resolve_path(c.private_key_file) if c.private_key_file else None,
            passphrase_env=c.private_key_passphrase_env,
            password_env=c.password_env,
            connect_timeout=c.connect_timeout,
            read_timeout=c.read_timeout,
            keepalive_seconds=c.keepalive_seconds,
        )

    @property
    def address(self) -> str:
        """``sftp://user@host:port/path`` for messages (never a secret)."""
        folder = self.folder if self.folder.startswith("/") else "/" + self.folder
        return f"sftp://{self.username}@{self.host}:{self.port}{folder}"

    def credentials(self) -> tuple[paramiko.PKey | None, str | None]:
        """The private key (decrypted with its passphrase) and/or password, resolved now."""
        passphrase = (
            resolve_secret(env=self.passphrase_env, what="source.private_key_passphrase_env")
            if self.passphrase_env
            else None
        )
        pkey = None
        if self.private_key is not None:
            try:
                secret = passphrase.encode() if passphrase else None  # cryptography wants bytes
                pkey = paramiko.PKey.from_path(self.private_key, password=secret)  # type: ignore[arg-type]
            except FileNotFoundError as exc:
                raise SourceAuthError(
                    f"private key {self.private_key} does not exist",
                    source=self.feed_name, key="source.private_key_file",
                ) from exc
            except (paramiko.SSHException, ValueError, TypeError, OSError) as exc:
                raise SourceAuthError(
                    f"cannot load private key {self.private_key}: {exc}"
                    + ("" if passphrase else " (encrypted? set source.private_key_passphrase_env)"),
                    source=self.feed_name, key="source.private_key_file",
                ) from exc
        password = (
            resolve_secret(env=self.password_env, what="source.password_env") if self.password_env else None
        )
        if pkey is None and password is None:
            raise SourceAuthError(
                "an sftp source needs private_key_file or password_env",
                source=self.feed_name, key="source.private_key_file",
            )
        return pkey, password


def host_key_line(host: str, port: int, key: paramiko.PKey) -> str:
    """A known_hosts line for ``key`` of ``host:port`` (``[host]:port`` when the port is not 22)."""
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key.get_name()} {key.get_base64()}"


def describe(exc: BaseException) -> str:
    """A short description of a connection problem for messages."""
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if (isinstance(exc, EOFError) and not str(exc)) or (
        isinstance(exc, paramiko.SSHException) and str(exc).strip() == "Server connection dropped:"
    ) or (
        type(exc) is OSError and str(exc) == "Socket is closed"
    ):  # paramiko's words for an EOF met mid-request (its message then ends with the EOF's, empty)
        return "the server closed the connection"  # or for a request sent on the channel closed since
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, paramiko.SSHException) else f"{type(exc).__name__}: {text}"


def _prefer(available: tuple[str, ...], preferred: tuple[str, ...]) -> tuple[str, ...]:
    first = tuple(name for name in preferred if name in available)
    return first + tuple(name for name in available if name not in first)


def _fast_transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """A paramiko Transport that offers the fastest algorithms first and takes large packets."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    options.ciphers = _prefer(tuple(options.ciphers), PREFERRED_CIPHERS)
    options.digests = _prefer(tuple(options.digests), PREFERRED_MACS)
    transport.default_window_size = WINDOW_SIZE
    transport.default_max_packet_size = MAX_PACKET_SIZE
    return transport


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse unknown hosts, or trust and record them on first use when the feed says so."""

    def __init__(self, endpoint: SftpEndpoint):
        self._endpoint = endpoint

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        e = self._endpoint
        if not e.trust_unknown_host:
            raise SourceAuthError(
                f"unknown host key {key.get_name()} {key.fingerprint} for {e.address}, not in "
                f"{e.known_hosts}; add it (ssh-keyscan -p {e.port} {e.host}, then compare the "
                "fingerprint with the server's owner) or set source.trust_unknown_host = true to "
                "trust it on first use",
                source=e.feed_name,
                key="source.known_hosts_file",
            )
        e.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with e.known_hosts.open("a", encoding="utf-8") as out:
            out.write(host_key_line(e.host, e.port, key) + "\n")
        with contextlib.suppress(OSError):
            e.known_hosts.chmod(0o600)
        log.warning(
            "trusting unknown host key %s %s of %s on first use; recorded in %s",
            key.get_name(), key.fingerprint, e.address, e.known_hosts,
        )


def open_sftp(endpoint: SftpEndpoint) -> tuple[paramiko.SSHClient, paramiko.SFTPClient]:
    """Connect, verify the host key, log in and open the SFTP session (keepalive, read timeout)."""
    e = endpoint
    pkey, password = e.credentials()
    client = paramiko.SSHClient()
    try:
        if e.known_hosts.exists():
            client.load_host_keys(str(e.known_hosts))
    except (OSError, paramiko.SSHException) as exc:
        raise SourceAuthError(
            f"cannot read known hosts file {e.known_hosts}: {exc}",
            source=e.feed_name, key="source.known_hosts_file",
        ) from exc
    client.set_missing_host_key_policy(_HostKeyPolicy(e))
    try:
        client.connect(
            e.host,
            port=e.port,
            username=e.username,
            pkey=pkey,
            password=password,
            timeout=e.connect_timeout,
            banner_timeout=e.connect_timeout,
            auth_timeout=e.connect_timeout,
            channel_timeout=e.connect_timeout,
            allow_agent=False,
            look_for_keys=False,
            transport_factory=_fast_transport,
        )
        transport = client.get_transport()
        if transport is None:
            raise paramiko.SSHException("the connection closed during login")
        if e.keepalive_seconds:
            transport.set_keepalive(e.keepalive_seconds)
        sftp = paramiko.SFTPClient.from_transport(transport)
        channel = sftp.get_channel() if sftp is not None else None
        if sftp is None or channel is None:
            raise paramiko.SSHException("the server refused the sftp subsystem")
        channel.settimeout(e.read_timeout)
    except SourceAuthError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise SourceAuthError(
            f"host key of {e.address} CHANGED: got {exc.key.get_name()} {exc.key.fingerprint}, "
            f"{e.known_hosts} has {exc.expected_key.fingerprint}; refusing to connect "
            "(if the server's key really changed, update the known hosts file)",
            source=e.feed_name, key="source.known_hosts_file",
        ) from exc
    except IncompatiblePeer as exc:
        client.close()
        raise SourceAuthError(
            f"{e.address} offers no SSH algorithm we accept: {exc}", source=e.feed_name
        ) from exc
    except paramiko.AuthenticationException as exc:
        client.close()
        raise SourceAuthError(
            f"{e.address} refused our credentials ({'key' if pkey else 'password'}): {exc}",
            source=e.feed_name,
            key="source.private_key_file" if pkey else "source.password_env",
        ) from exc
    except CONNECTION_ERRORS as exc:
        client.close()
        raise SourceUnavailableError(f"cannot reach {e.address}: {describe(exc)}") from exc
    log.info("connected to %s", e.address)
    return client, sftp
