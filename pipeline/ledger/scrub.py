"""Scrubbing personal data from stored checkouts once no request needs it again: customer ids are
masked, enrollment profiles removed; texts that quote a customer id in clear (kept while hashing
was off, or by a version that did not mask them) are masked: error messages, rejected lines,
problems, alerts, runs' summaries, files' errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from pipeline.ledger.db import PAGE_ROWS, Db, Row, chunks, marks
from pipeline.ledger.records import timestamp
from pipeline.ledger.states import NEVER_SENT_AGAIN_SQL
from pipeline.logs import MASK_PREFIX, mask_customer_id, mask_quoted_customers, quoted_words


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
                f"SELECT t.id, {db.json_read_text('t.checkout', 'customer_id')} FROM run_transactions rt "
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

    def sweep_clear_customer_ids(self, scope: str, columns: Collection[str], *, running: str | None = None
                                 ) -> int:
        """Once per scope (again after a run with hashing off, or a sweep of an older version that
        masked less): mask the customer ids that texts of ``scope`` hold in clear, then those of
        its checkouts never sent again. Texts: each transaction's messages
        (:meth:`scrub_quoted_customer_ids`, :meth:`scrub_masked_rows_messages`), its rejected
        lines of ``columns`` (:meth:`scrub_reject_customers`), its problems, alerts, runs'
        summaries and files' errors (:meth:`scrub_kept_texts`). A run with hashing on writes
        none, so later runs do not read the scope's history again; nor is it read when the scope
        has no history: no run but ``running`` (a run with hashing on, asking) and no problem.
        Returns how many rows changed."""
        row = self._db.one("SELECT swept_at FROM swept_scopes WHERE scope = ?", (scope,))
        if row is not None and _sweep_version(str(row[0])) >= SWEEP_VERSION:
            return 0
        changed = 0
        if running is None or self._has_history(scope, running):
            found: set[str] = set()  # the clear ids masked so far: looked for in every later text
            changed = (self.scrub_quoted_customer_ids(scope, found)
                       + self.scrub_masked_rows_messages(scope, found)
                       + self.scrub_reject_customers(scope, columns, found)
                       + self.scrub_kept_texts(scope, found) + self.scrub_settled_checkouts(scope))
        with self._db.transaction() as db:
            db.execute("DELETE FROM swept_scopes WHERE scope = ?", (scope,))
            db.execute("INSERT INTO swept_scopes (scope, swept_at) VALUES (?, ?)",
                       (scope, f"{timestamp()}{_VERSION_MARK}{SWEEP_VERSION}"))
        return changed

    def _has_history(self, scope: str, running: str) -> bool:
        """Whether ``scope`` holds texts written before ``running``: another run's, or a problem."""
        return (self._db.one("SELECT 1 FROM runs WHERE scope = ? AND id <> ? LIMIT 1", (scope, running))
                is not None or self._db.one("SELECT 1 FROM problems WHERE scope = ? LIMIT 1", (scope,))
                is not None)

    def forget_sweep(self, scope: str) -> None:
        """A run with hashing off may keep customer ids in clear: the next run with it on sweeps."""
        with self._db.transaction() as db:
            db.execute("DELETE FROM swept_scopes WHERE scope = ?", (scope,))

    def scrub_quoted_customer_ids(self, scope: str, found: set[str] | None = None) -> int:
        """Mask each transaction's own customer id where an error message of ``scope`` quotes it in
        clear: its last one and the one each run kept at its end. Returns how many changed.

        Only messages that hold the id of their checkout are read (the database finds them), so a
        ledger with nothing to mask costs one scan of the scope's messages. Runs before the
        checkouts' own ids are masked (the id to look for is the clear one). The ids masked are
        added to ``found``."""
        found = set() if found is None else found
        with self._db.transaction() as db:
            customer = db.json_text("t.checkout", "customer_id")
            rows = db.query(
                f"SELECT t.id, t.last_error_message, {customer} FROM transactions t "
                "WHERE t.scope = ? AND t.last_error_message IS NOT NULL AND t.checkout IS NOT NULL "
                f"AND {_contains('t.last_error_message', customer)}",
                (scope,),
            )
            last = _masked(rows, found)
            db.executemany("UPDATE transactions SET last_error_message = ? WHERE id = ?", last)
            rows = db.query(
                f"SELECT rt.run_id || ' ' || rt.txn_row_id, rt.error_message_at_end, {customer} "
                "FROM run_transactions rt JOIN transactions t ON t.id = rt.txn_row_id "
                "WHERE t.scope = ? AND rt.error_message_at_end IS NOT NULL AND t.checkout IS NOT NULL "
                f"AND {_contains('rt.error_message_at_end', customer)}",
                (scope,),
            )
            at_end = [(text, *key.rsplit(" ", 1)) for text, key in _masked(rows, found)]
            db.executemany("UPDATE run_transactions SET error_message_at_end = ? "
                           "WHERE run_id = ? AND txn_row_id = CAST(? AS INTEGER)", at_end)
        return len(last) + len(at_end)

    def scrub_masked_rows_messages(self, scope: str, found: set[str] | None = None) -> int:
        """Mask the customer id that messages of ``scope`` quote in clear where their row's
        checkout holds it masked already (an older version masked checkouts, not messages): the
        words of a message whose mask the checkout holds. The ids masked are added to ``found``.
        Returns how many changed. Rows are read a page at a time."""
        found = set() if found is None else found
        customer = self._db.json_text("t.checkout", "customer_id")
        masked_id = f"t.checkout IS NOT NULL AND {customer} LIKE '{MASK_PREFIX}%'"
        changed, after = 0, -1
        # a page of the rows with a masked id at a time (by id): their messages, and the runs' ones
        while rows := self._db.query(f"SELECT t.id, t.last_error_message, {customer} FROM transactions t "
                                     f"WHERE t.scope = ? AND t.id > ? AND {masked_id} ORDER BY t.id "
                                     f"LIMIT {PAGE_ROWS}", (scope, after)):
            last = _masked([row for row in rows if row[1] is not None], found)
            at_end = [(text, *key.rsplit(" ", 1)) for text, key in _masked(self._db.query(
                f"SELECT rt.run_id || ' ' || rt.txn_row_id, rt.error_message_at_end, {customer} "
                "FROM run_transactions rt JOIN transactions t ON t.id = rt.txn_row_id WHERE t.scope = ? "
                f"AND t.id > ? AND t.id <= ? AND rt.error_message_at_end IS NOT NULL AND {masked_id}",
                (scope, after, rows[-1][0])), found)]
            if last or at_end:
                with self._db.transaction() as db:
                    db.executemany("UPDATE transactions SET last_error_message = ? WHERE id = ?", last)
                    db.executemany("UPDATE run_transactions SET error_message_at_end = ? "
                                   "WHERE run_id = ? AND txn_row_id = CAST(? AS INTEGER)", at_end)
            changed, after = changed + len(last) + len(at_end), rows[-1][0]
        return changed

    def scrub_kept_texts(self, scope: str, found: set[str] | None = None) -> int:
        """Mask the customer ids that ``scope``'s problems (summary, subject, counts), alerts
        (payload, last error), files' errors and runs' summaries quote in clear: the ids of
        ``found``, and those the checkouts of the text's runs hold (in clear, or masked: the words
        of the text whose mask they hold). A problem's runs (its alerts' too) are the ones that
        opened it and saw it last, a file's the one that recorded it. The ids masked are added to
        ``found``. Returns how many rows changed. Rows are read a page at a time."""
        found = set() if found is None else found
        changed = 0
        for table, columns, sql, first in _KEPT_TEXTS:
            after: Any = first
            while rows := self._db.query(f"{sql} LIMIT {TEXT_PAGE_ROWS}", (scope, after)):
                after = rows[-1][0]
                updates = []
                for row in rows:
                    texts = [None if v is None else str(v) for v in row[1:1 + len(columns)]]
                    pairs = list(zip(texts, columns, strict=True))
                    words = set().union(*(_words(t, c in _JSON_TEXTS) for t, c in pairs if t))
                    quoted = (words & found) | self._customers_among(row[1 + len(columns):], words - found)
                    masked = [_mask_text(t, quoted, c in _JSON_TEXTS) if t and quoted else t
                              for t, c in pairs]
                    if masked != texts:
                        updates.append((*masked, row[0]))
                        found |= quoted
                if updates:
                    with self._db.transaction() as db:
                        sets = ", ".join(f"{c} = ?" for c in columns)
                        db.executemany(f"UPDATE {table} SET {sets} WHERE id = ?", updates)
                    changed += len(updates)
        return changed

    def _customers_among(self, run_ids: Sequence[Any], words: Collection[str]) -> set[str]:
        """The ``words`` that are customer ids the checkouts of ``run_ids`` hold, in clear or masked."""
        runs = sorted({r for r in run_ids if r})
        if not runs or not words:
            return set()
        by_mask = {mask_customer_id(w): w for w in words}
        customer = self._db.json_text("t.checkout", "customer_id")
        out: set[str] = set()
        for part in chunks([*words, *by_mask], 400):
            rows = self._db.query(
                f"SELECT DISTINCT {customer} FROM run_transactions rt JOIN transactions t "
                f"ON t.id = rt.txn_row_id WHERE rt.run_id IN ({marks(len(runs))}) AND t.checkout IS NOT NULL "
                f"AND {customer} IN ({marks(len(part))})",
                (*runs, *part),
            )
            out |= {by_mask.get(str(c), str(c)) for (c,) in rows}
        return out

    def scrub_settled_checkouts(self, scope: str) -> int:
        """Mask the customer id of each checkout of ``scope`` never sent again that holds it in
        clear (kept by a run with hashing off: a run masks its own rows only). Runs after the
        texts are swept (they are found by these ids). Returns how many changed."""
        customer = self._db.json_text("checkout", "customer_id")
        changed, after = 0, -1
        while rows := self._db.query(
                f"SELECT id, {customer} FROM transactions WHERE scope = ? AND id > ? "
                f"AND state IN {NEVER_SENT_AGAIN_SQL} AND checkout IS NOT NULL AND {customer} <> '' "
                f"AND {customer} NOT LIKE '{MASK_PREFIX}%' ORDER BY id LIMIT {PAGE_ROWS}", (scope, after)):
            with self._db.transaction() as db:
                masked = db.json_set_text("checkout", "customer_id")
                db.executemany(f"UPDATE transactions SET checkout = {masked} WHERE id = ?",
                               [(mask_customer_id(str(c)), row_id) for row_id, c in rows])
            changed, after = changed + len(rows), rows[-1][0]
        return changed

    def scrub_reject_customers(self, scope: str, columns: Collection[str],
                               found: set[str] | None = None) -> int:
        """Mask the customer ids the rejected lines of ``scope`` keep in clear in their original
        ``columns`` (the export's customer id columns), and where their reason quotes them, as a
        run with ``logging.hash_customer_ids`` writes them. Returns how many lines changed.

        The database picks the lines whose customer column holds a value not masked yet (for a
        column whose name a JSON path cannot spell, each line not holding a masked id at all). The
        ids masked are added to ``found``."""
        with self._db.transaction() as db:
            plain = [c for c in columns if _PATH_NAME.fullmatch(c)]
            terms = [f"({db.json_text('r.original', c)} <> '' AND {db.json_text('r.original', c)} "
                     f"NOT LIKE '{MASK_PREFIX}%')" for c in plain]
            if len(plain) < len(columns):
                terms.append(f"r.original NOT LIKE '%\"{MASK_PREFIX}%'")
            if not terms:
                return 0
            rows = db.query(
                "SELECT r.id, r.original, r.reason FROM rejects r JOIN runs ON runs.id = r.run_id "
                f"WHERE runs.scope = ? AND ({' OR '.join(terms)})",
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
                if found is not None:
                    found |= clear
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
            f"SELECT DISTINCT {self._db.json_read_text('t.checkout', 'customer_id')} "
            "FROM run_transactions rt "
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


# what a sweep masks, as swept_scopes.swept_at says ("<time> v2"; no mark: 1): 1, messages and
# rejected lines; 2, also problems, alerts, runs' summaries, files' errors, the messages of rows
# whose checkout is masked and the checkouts never sent again. A scope swept by a lower one is
# swept again.
SWEEP_VERSION = 2
_VERSION_MARK = " v"

# the texts :meth:`Scrubbing.scrub_kept_texts` reads, TEXT_PAGE_ROWS rows at a time (a run's summary
# may take some KiB): table, text columns, the query of the rows after a key, in its order (key,
# texts..., runs...), and the first key
TEXT_PAGE_ROWS = 100
_KEPT_TEXTS: tuple[tuple[str, tuple[str, ...], str, Any], ...] = (
    ("problems", ("summary", "subject", "counts"),
     "SELECT id, summary, subject, counts, opened_run_id, last_run_id FROM problems "
     "WHERE scope = ? AND id > ? ORDER BY id", -1),
    ("alert_outbox", ("payload", "last_error"),
     "SELECT a.id, a.payload, a.last_error, p.opened_run_id, p.last_run_id FROM alert_outbox a "
     "JOIN problems p ON p.id = a.problem_id WHERE a.scope = ? AND a.id > ? ORDER BY a.id", -1),
    ("files", ("error",),
     "SELECT id, error, first_run_id FROM files WHERE scope = ? AND id > ? AND error IS NOT NULL "
     "ORDER BY id", -1),
    ("runs", ("counts",),
     "SELECT id, counts, id FROM runs WHERE scope = ? AND id > ? AND counts IS NOT NULL "
     "ORDER BY id", ""),
)
_JSON_TEXTS = frozenset({"counts", "payload"})  # stored as json.dumps(..., sort_keys=True, default=str)


def _sweep_version(swept_at: str) -> int:
    """The version of the sweep that wrote a swept_scopes row (see SWEEP_VERSION)."""
    _, mark, version = swept_at.rpartition(_VERSION_MARK)
    return int(version) if mark and version.isdigit() else 1


def _strings(value: Any) -> list[str]:
    """Every string of decoded JSON (keys too)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _words(text: str, is_json: bool) -> set[str]:
    """The words of a text that may be a customer id it quotes (of each string, for JSON)."""
    strings = _strings(_decoded(text)) if is_json else [text]
    return set().union(*(quoted_words(s) for s in strings))


def _decoded(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # not JSON after all: read as a plain text


def _mask_text(text: str, customers: Collection[str], is_json: bool) -> str:
    """``text`` with ``customers`` it quotes masked (in each string, for JSON, then written again
    as the ledger writes it)."""
    value = _decoded(text) if is_json else text
    if value is text:
        return mask_quoted_customers(text, customers)
    masked = _mask_value(value, customers)
    return text if masked == value else json.dumps(masked, sort_keys=True, default=str)


def _mask_value(value: Any, customers: Collection[str]) -> Any:
    if isinstance(value, str):
        return mask_quoted_customers(value, customers)
    if isinstance(value, dict):
        return {_mask_value(k, customers): _mask_value(v, customers) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_value(v, customers) for v in value]
    return value


# a column name a JSON path spells as it is (others are looked for another way)
_PATH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _contains(text: str, part: str) -> str:
    """SQL: ``part`` is a non-empty piece of ``text`` (exactly, no wildcard; in both dialects)."""
    return f"{part} <> '' AND replace({text}, {part}, '') <> {text}"


def _masked(rows: Iterable[Row], found: set[str]) -> list[tuple[str, Any]]:
    """(masked text, key) for each (key, text, customer id) whose text changes once the id it
    quotes standing on its own is masked (a masked id: the words of the text it is the mask of);
    the ids masked are added to ``found``."""
    changed = []
    for key, text, customer in rows:
        customers = [str(customer)]
        if customers[0].startswith(MASK_PREFIX):
            customers = [w for w in quoted_words(str(text)) if mask_customer_id(w) == customers[0]]
        masked = mask_quoted_customers(str(text), customers)
        if masked != text:
            changed.append((masked, key))
            found.update(customers)
    return changed
