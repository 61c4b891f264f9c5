"""Scrubbing personal data from stored checkouts once no request needs it again: customer ids are
masked, enrollment profiles removed."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.ledger.db import Db
from pipeline.ledger.states import NEVER_SENT_AGAIN_SQL
from pipeline.logs import MASK_PREFIX


class Scrubbing:
    """Masking what is never sent again (a part of :class:`~pipeline.ledger.Ledger`)."""

    _db: Db

    def scrub_customer_ids(self, scope: str, mask: Callable[[str], str], *, run_id: str) -> int:
        """Replace the customer id in the stored checkout of every transaction of ``run_id`` in
        ``scope`` that is never sent again (accepted, not sent, conflict, void) by ``mask(id)``; returns
        how many changed.

        Checkouts that may still be sent (queued, in doubt, failed) keep the real id they need.
        A run scrubs its own transactions when it ends, so no run reads the whole ledger.
        """
        with self._db.transaction() as db:
            rows = db.query(
                f"SELECT t.id, {db.json_text('t.checkout', 'customer_id')} FROM run_transactions rt "
                "JOIN transactions t ON t.id = rt.txn_row_id WHERE rt.run_id = ? AND t.scope = ? "
                f"AND t.state IN {NEVER_SENT_AGAIN_SQL} AND t.checkout IS NOT NULL",
                (run_id, scope),
            )
            masked = [(mask(str(customer)), row_id) for row_id, customer in rows
                      if customer is not None and not str(customer).startswith(MASK_PREFIX)]
            # the database edits the stored JSON in place: no Python decode and encode per checkout
            db.executemany(
                f"UPDATE transactions SET checkout = {db.json_set_text('checkout', 'customer_id')} "
                "WHERE id = ?",
                masked,
            )
        return len(masked)

    def run_customer_ids(self, scope: str, *, run_id: str) -> set[str]:
        """The customer ids the stored checkouts of ``run_id``'s transactions in ``scope`` still
        hold in clear (to mask them in an error that quotes them)."""
        rows = self._db.query(
            f"SELECT DISTINCT {self._db.json_text('t.checkout', 'customer_id')} FROM run_transactions rt "
            "JOIN transactions t ON t.id = rt.txn_row_id WHERE rt.run_id = ? AND t.scope = ? "
            "AND t.checkout IS NOT NULL",
            (run_id, scope),
        )
        return {str(c) for (c,) in rows if c and not str(c).startswith(MASK_PREFIX)}

    def scrub_profiles(self, scope: str, *, run_id: str) -> int:
        """Remove the member details (``$.profile`` of an enrollment's stored JSON: email, phone,
        names, birth date) from every row of ``run_id`` in ``scope`` that is never sent again;
        returns how many changed. Pending rows keep what a resend needs."""
        with self._db.transaction() as db:
            return db.execute(
                f"UPDATE transactions SET checkout = {db.json_without('checkout', 'profile')} WHERE id IN ("
                "SELECT t.id FROM run_transactions rt JOIN transactions t ON t.id = rt.txn_row_id "
                f"WHERE rt.run_id = ? AND t.scope = ? AND t.state IN {NEVER_SENT_AGAIN_SQL} "
                f"AND t.checkout IS NOT NULL AND {db.json_text('t.checkout', 'profile')} IS NOT NULL)",
                (run_id, scope),
            )
