"""The one exception tree of posfeed.

Every error carries its context, whether retrying later can help, and the process exit code
(sysexits) the CLI maps it to in one place::

    PosfeedError                      exit 70, internal (a bug)
    ├── ConfigError                   exit 78  a feed file, setting or secret is wrong
    │   ├── SecretError                        a referenced secret is missing
    │   ├── SourceAuthError                    SFTP host key refused or credentials wrong
    │   ├── SourceFolderError                  the source folder does not exist or cannot be listed,
    │   │                                      or a folder it needs cannot be created there
    │   ├── CredentialsRefusedError            the target platform refused our credentials
    │   └── MissingExtraError                  a verb needs optional packages that are not installed
    ├── StateIOError                  exit 74  the state folder cannot be written or read
    │                                          (disk full, read-only, corrupt ledger)
    ├── DataError                     exit 65  the input itself is bad
    │   └── UnreadableFileError                a whole file cannot be read (file, reason)
    └── TransientError                exit 75  try again later (retryable)
        ├── LockHeldError                      another run of the feed holds its lock
        ├── SourceUnavailableError             the file source cannot be reached
        └── PlatformUnavailableError           the target platform cannot be reached

Library exceptions (paramiko, httpx, sqlite3, pydantic) are translated into this tree at the edge
that calls the library; nothing above the edges catches foreign exceptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "EXIT_CONFIG",
    "EXIT_DATA",
    "EXIT_INTERNAL",
    "EXIT_IOERR",
    "EXIT_OK",
    "EXIT_TEMPFAIL",
    "ConfigError",
    "CredentialsRefusedError",
    "DataError",
    "LockHeldError",
    "MissingExtraError",
    "PlatformUnavailableError",
    "PosfeedError",
    "SecretError",
    "SourceAuthError",
    "SourceFolderError",
    "SourceUnavailableError",
    "StateIOError",
    "TransientError",
    "UnreadableFileError",
    "worst_exit_code",
]

EXIT_OK = 0
EXIT_DATA = 65  # sysexits EX_DATAERR
EXIT_INTERNAL = 70  # sysexits EX_SOFTWARE
EXIT_IOERR = 74  # sysexits EX_IOERR
EXIT_TEMPFAIL = 75  # sysexits EX_TEMPFAIL
EXIT_CONFIG = 78  # sysexits EX_CONFIG


_PRIORITY = (EXIT_INTERNAL, EXIT_IOERR, EXIT_CONFIG, EXIT_DATA, EXIT_TEMPFAIL)


def worst_exit_code(codes: Sequence[int]) -> int:
    """The one exit code for several runs: internal > I/O > config > data > try-again > ok."""
    for code in _PRIORITY:
        if code in codes:
            return code
    return max(codes, default=EXIT_OK)


class PosfeedError(Exception):
    """Base of every error posfeed raises on purpose."""

    exit_code: int = EXIT_INTERNAL
    retryable: bool = False


class ConfigError(PosfeedError):
    """A feed file, setting or secret reference is wrong.

    ``source`` names the file (or setting) and ``key`` the dotted key path inside it.
    """

    exit_code = EXIT_CONFIG

    def __init__(self, problem: str, *, source: str | Path | None = None, key: str | None = None):
        self.problem = problem
        self.source = str(source) if source is not None else None
        self.key = key
        where = ": ".join(part for part in (self.source, self.key) if part)
        super().__init__(f"{where}: {problem}" if where else problem)


class SecretError(ConfigError):
    """A secret named by reference (environment variable or file) could not be resolved."""


class SourceAuthError(ConfigError):
    """The file source refused us or we refused it: unknown or changed host key, bad credentials."""


class SourceFolderError(ConfigError):
    """The source folder does not exist or may not be listed (``source.path`` or the account), or
    the account may not create the archive or quarantine folder (``source.archive_path``,
    ``source.quarantine_path``)."""


class CredentialsRefusedError(ConfigError):
    """The target platform refused our credentials (bad key, secret, password or token)."""


class MissingExtraError(ConfigError):
    """A verb needs optional packages that are not installed; names the extra to install."""

    def __init__(self, verb: str, extra: str, missing: str):
        self.extra = extra
        super().__init__(
            f"{verb} needs the optional packages of the {extra!r} extra ({missing} is not installed): "
            f"pip install 'posfeed[{extra}]'"
        )


class StateIOError(PosfeedError):
    """posfeed's own files cannot be written or read: disk full, read-only folder, corrupt ledger.

    ``path`` names the file or folder; ``advice`` says what to do.
    """

    exit_code = EXIT_IOERR

    def __init__(self, path: str | Path, problem: str, advice: str):
        self.path = str(path)
        self.problem = problem
        self.advice = advice
        super().__init__(f"{self.path}: {problem}; {advice}")


_IO_ADVICE = {
    "ENOSPC": "free disk space there, then run again",
    "EDQUOT": "free disk space (quota) there, then run again",
    "EFBIG": "the file may not grow any larger (file size limit); free space or raise the limit",
    "EROFS": "the file system is read-only: make the state folder writable (or point "
             "POSFEED_STATE_DIR elsewhere), then run again",
    "EACCES": "make it writable by this user (or point POSFEED_STATE_DIR elsewhere), then run again",
    "EPERM": "make it writable by this user (or point POSFEED_STATE_DIR elsewhere), then run again",
    "EIO": "the disk reported an I/O error: check the device, then run again",
}


def state_io_error(exc: OSError, path: str | Path | None = None) -> StateIOError:
    """A :class:`StateIOError` for an ``OSError`` of posfeed's own files, with what to do."""
    import errno as errno_module

    name = errno_module.errorcode.get(exc.errno or 0, "")
    where = path if path is not None else (exc.filename or "(unknown path)")
    advice = _IO_ADVICE.get(name, "check the disk and the permissions of the state folder, then run again")
    return StateIOError(where, exc.strerror or str(exc), advice)


class DataError(PosfeedError):
    """The input data is bad (rows are rejected, a file is unreadable)."""

    exit_code = EXIT_DATA


class UnreadableFileError(DataError):
    """A whole file cannot be read: binary, wrong delimiter, required columns missing."""

    def __init__(self, file: str | Path, reason: str):
        self.file = str(file)
        self.reason = reason
        super().__init__(f"{self.file}: {reason}")


class TransientError(PosfeedError):
    """Something outside us is unavailable right now; running again later can succeed."""

    exit_code = EXIT_TEMPFAIL
    retryable = True


class LockHeldError(TransientError):
    """Another live process holds the run lock of the feed's dedup scope."""

    def __init__(self, scope: str, holder: str):
        self.feed = scope  # kept for callers that read it; the lock is the scope's
        self.scope = scope
        self.holder = holder
        super().__init__(f"scope {scope!r} is being run by {holder}")


class LockLostError(TransientError):
    """The run lock of the scope was lost while the run held it (its PostgreSQL session ended, or
    its lock file was removed or replaced: ``how`` says which)."""

    PG_SESSION = ("its PostgreSQL session ended: the server restarted or the connection was cut), so "
                  "another host may run the scope now")
    LOCK_FILE = ("its lock file was removed or replaced), so another run may hold the scope now")

    def __init__(self, scope: str, how: str = PG_SESSION):
        self.scope = scope
        super().__init__(
            f"the run lock of scope {scope!r} was lost while the run held it ({how}; this run stopped "
            "sending, and what it left queued or in doubt is settled by the next run that holds the lock")


class SourceUnavailableError(TransientError):
    """The SFTP server or local folder could not be reached or read."""


class PlatformUnavailableError(TransientError):
    """The target platform could not be reached or kept failing."""
