"""The ledger: every run, file and transaction of every feed, in one SQLite file.

A transaction row is one *occurrence* of a transaction id in one file. Per ``(scope,
transaction_id)`` at most one row is the *primary* record (states queued … void): the one that is
delivered. Later occurrences are recorded as ``duplicate`` (same content) or ``conflict``
(different content, held for review) pointing at the primary. Rows whose lines were rejected are
``rejected`` rows; each rejected line is also kept in ``rejects`` with its original columns.

Money is stored as decimal TEXT and summed in Python with :class:`decimal.Decimal`, never by
SQLite (which would use floats). The ledger never stores secrets; the normalized checkout (needed
to resend after the source file is gone) is kept as JSON with decimal strings.

One concept per module: ``states`` (states and transitions), ``errors``, ``records`` (what is
stored and read back), ``schema`` (numbered migrations), ``db`` (the seam every statement goes
through), ``connection`` (the SQLite side of it), and the parts :class:`Ledger` is composed of:
``runs``, ``files``, ``recording``, ``transitions``, ``transactions``, ``totals``, ``rejects``,
``returns``, ``scrub``, ``backlog``, ``problems``.
"""

from __future__ import annotations

from pipeline.ledger.backlog import Backlog
from pipeline.ledger.connection import migrate
from pipeline.ledger.errors import IllegalTransitionError, LedgerError, LedgerFileError
from pipeline.ledger.ledger import Ledger
from pipeline.ledger.records import (
    FileRecord,
    NewReject,
    NewTransaction,
    ReturnOf,
    RunRecord,
    TxnRecord,
    new_run_id,
)
from pipeline.ledger.schema import MIGRATIONS, SCHEMA_VERSION
from pipeline.ledger.states import FINAL_STATES, PENDING_STATES, PRIMARY_STATES, TxnState

__all__ = [
    "FINAL_STATES",
    "MIGRATIONS",
    "PENDING_STATES",
    "PRIMARY_STATES",
    "SCHEMA_VERSION",
    "Backlog",
    "FileRecord",
    "IllegalTransitionError",
    "Ledger",
    "LedgerError",
    "LedgerFileError",
    "NewReject",
    "NewTransaction",
    "ReturnOf",
    "RunRecord",
    "TxnRecord",
    "TxnState",
    "migrate",
    "new_run_id",
]
