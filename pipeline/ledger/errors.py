"""What goes wrong with the ledger: a file it cannot use, a transition its state machine forbids."""

from __future__ import annotations

from pipeline.errors import EXIT_TEMPFAIL, ConfigError, PosfeedError, StateIOError


class LedgerError(PosfeedError):
    """The ledger file cannot be used (corrupt, newer schema, locked for too long)."""


class LedgerFileError(LedgerError, StateIOError):
    """The ledger file cannot be written or read: disk full, read-only, corrupt (exit 74)."""


class LedgerTooNewError(LedgerError, ConfigError):
    """The ledger's schema was migrated by a newer posfeed (another host's, or a downgrade): this
    one refuses it untouched; upgrade it (exit 78)."""


class LedgerUnavailableError(LedgerError):
    """The ledger's database server cannot be reached or dropped the connection; what was committed
    stays, and a later run settles what was in doubt (exit 75, try again later)."""

    exit_code = EXIT_TEMPFAIL
    retryable = True


class IllegalTransitionError(LedgerError):
    """A transition that the state machine does not allow (a bug, never bad input)."""

    def __init__(self, transaction_id: str | None, state: str, target: str):
        self.transaction_id = transaction_id
        self.state = state
        self.target = target
        super().__init__(f"transaction {transaction_id!r}: illegal transition {state} -> {target}")
