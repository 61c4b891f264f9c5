"""Voids and the sales they name: a void's stored checkout names its sale
(``original_transaction_id``, indexed by migration 10), so a sale a void names is found whichever of
the two is recorded first; such a sale known not to be on the platform is post-voided (state
``void``, code ``post_voided``: never sent), and a void of a sale that is there is coded to act on."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.ledger.db import Db
from pipeline.ledger.records import TxnRecord, timestamp, txn_record
from pipeline.ledger.returns import rows_naming
from pipeline.ledger.states import POST_VOIDED, TxnState
from pipeline.ledger.transitions import ScopeGuard, attach, require_held, set_state
from pipeline.records import VOIDED_IN_DOUBT

# a sale a void names is known not to be on the platform in these states, as long as no request
# carrying it ever went out (attempts = 0); a refused one (failed_permanent) never landed either
NOT_ON_PLATFORM_SQL = (
    "(transaction_type = 'sale' AND (state = 'failed_permanent' OR "
    "(state IN ('queued', 'failed_retryable') AND attempts = 0)))"
)


def not_on_platform(sale: TxnRecord) -> bool:
    """Whether a sale row is known never to have reached the platform (see NOT_ON_PLATFORM_SQL)."""
    if sale.state is TxnState.FAILED_PERMANENT:
        return True
    return sale.state in (TxnState.QUEUED, TxnState.FAILED_RETRYABLE) and sale.attempts == 0


def post_void(db: Db, run_id: str, sales: Sequence[tuple[int, str]]) -> list[int]:
    """Inside the caller's transaction: move each sale row (id, message) still known not to be on
    the platform to ``void`` with code ``post_voided``, part of ``run_id`` (origin ``settle``; a
    row of the run already stays as it was). Returns the rows moved."""
    moved: list[int] = []
    for row_id, message in sales:
        row = db.one(f"SELECT id FROM transactions WHERE id = ? AND {NOT_ON_PLATFORM_SQL}", (row_id,))
        if row is None:
            continue
        set_state(db, [row_id], TxnState.VOID, run_id, extra=", last_error_code = ?, last_error_message = ?",
                  params=(POST_VOIDED, message))
        moved.append(row_id)
    attach(db, run_id, moved, "settle")
    return moved


class Voids:
    """Voids by the sale they name (a part of :class:`~pipeline.ledger.Ledger`)."""

    _db: Db
    _scope_guard: ScopeGuard | None  # see Transitions.guard_scope

    def voids_naming(self, scope: str, sale_ids: Sequence[str]) -> dict[str, list[TxnRecord]]:
        """The voids (state ``void``) of ``scope`` naming each of ``sale_ids``, oldest first."""
        found: dict[str, list[TxnRecord]] = {}
        for row in rows_naming(self._db, scope, sale_ids, "void", where=" AND t.state = 'void'"):
            found.setdefault(row["original"], []).append(txn_record(row))
        return found

    def any_voids_naming(self, scope: str) -> bool:
        """Whether ``scope`` holds a void naming a sale (one row of the index, so a scope without
        any spares its sales the lookup of :meth:`voids_naming`)."""
        original = self._db.json_text("checkout", "original_transaction_id")
        return self._db.one(
            f"SELECT 1 FROM transactions WHERE scope = ? AND {original} IS NOT NULL "
            "AND transaction_type = 'void' LIMIT 1", (scope,)) is not None

    def refused_as_voided(self, scope: str) -> list[int]:
        """The sale rows of ``scope`` a lookup found not on the platform as a void named them
        (``failed_permanent``, ``voided_in_doubt``) and not post-voided yet (the run ended first)."""
        return [r[0] for r in self._db.query(
            "SELECT id FROM transactions WHERE scope = ? AND state = 'failed_permanent' "
            "AND last_error_code = ? AND transaction_type = 'sale'", (scope, VOIDED_IN_DOUBT))]

    def post_void_sales(self, run_id: str, sales: Sequence[tuple[int, str]]) -> list[int]:
        """Post-void sale rows (id, message) known not to be on the platform (:func:`post_void`)."""
        if not sales:
            return []
        with self._db.transaction() as db:
            require_held(db, self._scope_guard)
            return post_void(db, run_id, sales)

    def code_voids(self, run_id: str, voids: Sequence[tuple[int, str, str]]) -> None:
        """Record a code and message (void row id, code, message) on voids, part of ``run_id``
        (origin ``settle``): e.g. a void whose sale turned out to be on the platform."""
        if not voids:
            return
        with self._db.transaction() as db:
            require_held(db, self._scope_guard)
            db.executemany(
                "UPDATE transactions SET last_error_code = ?, last_error_message = ?, last_run_id = ?, "
                "updated_at = ? WHERE id = ? AND state = 'void'",
                [(code, message, run_id, timestamp(), row_id) for row_id, code, message in voids],
            )
            attach(db, run_id, [row_id for row_id, _, _ in voids], "settle")
