"""What goes wrong with the ledger: a file it cannot use, a transition its state machine forbids."""

from __future__ import annotations

from pipeline.errors import PosfeedError, StateIOError


class LedgerError(PosfeedError):
    """The ledger file cannot be used (corrupt, newer schema, locked for too long)."""


class LedgerFileError(LedgerError, StateIOError):
    """The ledger file cannot be written or read: disk full, read-only, corrupt (exit 74)."""


class IllegalTransitionError(LedgerError):
    """A transition that the state machine does not allow (a bug, never bad input)."""

    def __init__(self, transaction_id: str | None, state: str, target: str):
        self.transaction_id = transaction_id
        self.state = state
        self.target = target
        super().__init__(f"transaction {transaction_id!r}: illegal transition {state} -> {target}")
