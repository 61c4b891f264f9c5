"""The states of a transaction row and the transitions between them.

Work is handed from stage to stage through named states with verb-named transitions, each one a
single ledger transaction together with what it records (dlt's load packages are the model)::

    queued ──start_sending──▶ sending (in doubt) ──accept──────────▶ accepted
       │  ▲                     │   ▲  └──fail_retryable──▶ failed_retryable ──requeue──▶ queued
       │  └──────requeue────────┼───┘  └──fail_permanent──▶ failed_permanent ──requeue──▶ queued
       │                        └─────mark_not_sent───▶ not_sent
       └──mark_not_sent / fail_* (the sink decided without sending)

    rejected, duplicate, conflict, void: recorded once when a file is recorded; never sent.
    queued, failed_retryable, failed_permanent ──post_void──▶ void: a sale a void names, known
    not to be on the platform (never sent, or refused), is never sent (code ``post_voided``).

The ``*_SQL`` constants are the same sets as SQL lists, for queries to repeat word for word.
"""

from __future__ import annotations

from enum import StrEnum


class TxnState(StrEnum):
    """The state of one transaction row."""

    QUEUED = "queued"
    SENDING = "sending"  # in doubt: a request may have reached the platform
    ACCEPTED = "accepted"
    FAILED_RETRYABLE = "failed_retryable"
    FAILED_PERMANENT = "failed_permanent"
    NOT_SENT = "not_sent"  # the target cannot express it (e.g. an unmatched return)
    VOID = "void"  # cancelled at the till: counted, never sent
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


# the code of a void naming a sale the platform already holds (recorded with the void): a void is
# never sent, so the sale stays on the platform with its points; to act on, not balanced away
VOID_OF_SENT_SALE = "void_of_sent_sale"
# the code of a sale a void names, settled void before it reached the platform: never sent (as a
# POSLog post-voided transaction); the void itself stays a plain void
POST_VOIDED = "post_voided"


PRIMARY_STATES: frozenset[TxnState] = frozenset(
    {
        TxnState.QUEUED,
        TxnState.SENDING,
        TxnState.ACCEPTED,
        TxnState.FAILED_RETRYABLE,
        TxnState.FAILED_PERMANENT,
        TxnState.NOT_SENT,
        TxnState.VOID,
    }
)
PENDING_STATES: frozenset[TxnState] = frozenset({TxnState.QUEUED, TxnState.SENDING})
FINAL_STATES: frozenset[TxnState] = frozenset(TxnState) - PENDING_STATES

TRANSITIONS: dict[TxnState, frozenset[TxnState]] = {
    TxnState.QUEUED: frozenset(
        {TxnState.SENDING, TxnState.NOT_SENT, TxnState.FAILED_RETRYABLE, TxnState.FAILED_PERMANENT,
         TxnState.VOID}  # VOID: post-voided, see above
    ),
    # sending -> sending: an in-doubt transaction is re-sent
    TxnState.SENDING: frozenset(
        {
            TxnState.SENDING,
            TxnState.ACCEPTED,
            TxnState.FAILED_RETRYABLE,
            TxnState.FAILED_PERMANENT,
            TxnState.NOT_SENT,
        }
    ),
    TxnState.FAILED_RETRYABLE: frozenset({TxnState.QUEUED, TxnState.VOID}),
    TxnState.FAILED_PERMANENT: frozenset({TxnState.QUEUED, TxnState.VOID}),
}

# In the order of the partial index `transactions_primary` (migration 1): SQLite uses a partial
# index only when the query repeats its WHERE term, IN-list order included. Any other order falls
# back to a scan of (scope, state), which made every per-request lookup of the submit stage O(n).
PRIMARY_ORDER = ("queued", "sending", "accepted", "failed_retryable", "failed_permanent", "not_sent", "void")
PRIMARY_SQL = "(" + ",".join(f"'{state}'" for state in PRIMARY_ORDER) + ")"
# the states a transaction may be sent from
SENDABLE_SQL = "(" + ",".join(
    f"'{state.value}'" for state, targets in TRANSITIONS.items() if TxnState.SENDING in targets
) + ")"
# the states whose stored checkout no request needs again: its customer id may be masked
NEVER_SENT_AGAIN = (TxnState.ACCEPTED, TxnState.NOT_SENT, TxnState.CONFLICT, TxnState.VOID)
NEVER_SENT_AGAIN_SQL = "(" + ",".join(f"'{state.value}'" for state in NEVER_SENT_AGAIN) + ")"
# the states a file's transaction is recorded in
RECORDABLE = frozenset(
    {TxnState.QUEUED, TxnState.VOID, TxnState.REJECTED, TxnState.DUPLICATE, TxnState.CONFLICT}
)
assert {TxnState(state) for state in PRIMARY_ORDER} == PRIMARY_STATES
# a failed-retryable row a plain run resends by itself (parameters: max attempts, cutoff time);
# a return waiting for its sale whatever the caps (it has its own: `resume.sale_wait_hours`)
RESUMABLE_SQL = (
    "(state = 'failed_retryable' AND (COALESCE(retry_class, 'transient') IN "
    "('transient', 'stopped', 'credentials') AND attempts < ? AND created_at >= ? "
    "OR retry_class = 'waiting'))"
)
