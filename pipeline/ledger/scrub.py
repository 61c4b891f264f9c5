"""Scrubbing personal data from stored checkouts once no request needs it again: customer ids are
masked, enrollment profiles removed; error messages that quote a customer id in clear (kept while
hashing was off, or by a version that did not mask them) are masked."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Sequence
from typing import Any

from pipeline.ledger.db import Db, Row
from pipeline.ledger.records import timestamp
from pipeline.ledger.states import NEVER_SENT_AGAIN_SQL
from pipeline.logs import MASK_PREFIX, mask_customer_id, mask_quoted_customers


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

    def sweep_clear_customer_ids(self, scope: str, columns: Collection[str]) -> int:
        """Once per scope (again after a run with hashing off): mask the customer ids that kept
        messages and rejected lines of ``scope`` hold in clear (:meth:`scrub_quoted_customer_ids`,
        :meth:`scrub_reject_customers` of ``columns``); a run with hashing on writes none, so
        later runs do not read the scope's history again. Returns how many rows changed."""
        if self._db.one("SELECT 1 FROM swept_scopes WHERE scope = ?", (scope,)) is not None:
            return 0
        changed = self.scrub_quoted_customer_ids(scope) + self.scrub_reject_customers(scope, columns)
        with self._db.transaction() as db:
            db.execute("DELETE FROM swept_scopes WHERE scope = ?", (scope,))
            db.execute("INSERT INTO swept_scopes (scope, swept_at) VALUES (?, ?)", (scope, timestamp()))
        return changed

    def forget_sweep(self, scope: str) -> None:
        """A run with hashing off may keep customer ids in clear: the next run with it on sweeps."""
        with self._db.transaction() as db:
            db.execute("DELETE FROM swept_scopes WHERE scope = ?", (scope,))

    def scrub_quoted_customer_ids(self, scope: str) -> int:
        """Mask each transaction's own customer id where an error message of ``scope`` quotes it in
        clear: its last one and the one each run kept at its end. Returns how many changed.

        Only messages that hold the id of their checkout are read (the database finds them), so a
        ledger with nothing to mask costs one scan of the scope's messages. Runs before the
        checkouts' own ids are masked (the id to look for is the clear one)."""
        with self._db.transaction() as db:
            customer = db.json_text("t.checkout", "customer_id")
            rows = db.query(
                f"SELECT t.id, t.last_error_message, {customer} FROM transactions t "
                "WHERE t.scope = ? AND t.last_error_message IS NOT NULL AND t.checkout IS NOT NULL "
                f"AND {_contains('t.last_error_message', customer)}",
                (scope,),
            )
            last = _masked(rows)
            db.executemany("UPDATE transactions SET last_error_message = ? WHERE id = ?", last)
            rows = db.query(
                f"SELECT rt.run_id || ' ' || rt.txn_row_id, rt.error_message_at_end, {customer} "
                "FROM run_transactions rt JOIN transactions t ON t.id = rt.txn_row_id "
                "WHERE t.scope = ? AND rt.error_message_at_end IS NOT NULL AND t.checkout IS NOT NULL "
                f"AND {_contains('rt.error_message_at_end', customer)}",
                (scope,),
            )
            at_end = [(text, *key.rsplit(" ", 1)) for text, key in _masked(rows)]
            db.executemany("UPDATE run_transactions SET error_message_at_end = ? "
                           "WHERE run_id = ? AND txn_row_id = CAST(? AS INTEGER)", at_end)
        return len(last) + len(at_end)

    def scrub_reject_customers(self, scope: str, columns: Collection[str]) -> int:
        """Mask the customer ids the rejected lines of ``scope`` keep in clear in their original
        ``columns`` (the export's customer id columns), and where their reason quotes them, as a
        run with ``logging.hash_customer_ids`` writes them. Returns how many lines changed.

        The database picks the lines whose customer column holds a value not masked yet (for a
        column whose name a JSON path cannot spell, each line not holding a masked id at all)."""
        with self._db.transaction() as db:
            plain = [c for c in columns if _PATH_NAME.fullmatch(c)]
            found = [f"({db.json_text('r.original', c)} <> '' AND {db.json_text('r.original', c)} "
                     f"NOT LIKE '{MASK_PREFIX}%')" for c in plain]
            if len(plain) < len(columns):
                found.append(f"r.original NOT LIKE '%\"{MASK_PREFIX}%'")
            if not found:
                return 0
            rows = db.query(
                "SELECT r.id, r.original, r.reason FROM rejects r JOIN runs ON runs.id = r.run_id "
                f"WHERE runs.scope = ? AND ({' OR '.join(found)})",
                (scope,),
            )
            changed = []
            for row_id, original, reason in rows:
                values = json.loads(original)
                if not isinstance(values, dict):
                    continue
                clear = {str(values[c]) for c in columns if values.get(c)
                         and not str(values[c]).startswith(MASK_PREFIX)}
                if not clear:
                    continue
                masked = {k: mask_customer_id(str(v)) if k in columns and str(v) in clear else v
                          for k, v in values.items()}
                text = mask_quoted_customers(reason, clear) if reason else reason
                changed.append((json.dumps(masked, ensure_ascii=False, default=str), text, row_id))
            db.executemany("UPDATE rejects SET original = ?, reason = ? WHERE id = ?", changed)
        return len(changed)

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


# a column name a JSON path spells as it is (others are looked for another way)
_PATH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _contains(text: str, part: str) -> str:
    """SQL: ``part`` is a non-empty piece of ``text`` (exactly, no wildcard; in both dialects)."""
    return f"{part} <> '' AND replace({text}, {part}, '') <> {text}"


def _masked(rows: Sequence[Row]) -> list[tuple[str, Any]]:
    """(masked text, key) for each (key, text, customer id) whose text changes once the id it
    quotes standing on its own is masked."""
    changed = []
    for key, text, customer in rows:
        masked = mask_quoted_customers(str(text), [str(customer)])
        if masked != text:
            changed.append((masked, key))
    return changed
