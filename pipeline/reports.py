"""Reconciliation reports: what came in, where every transaction ended, and proof that it balances.

Pure builders (:func:`build_report`) turn ledger rows into a :class:`Report`; :func:`write_report`
writes it as five files into one folder, each atomically and spreadsheet-safe. The rows stream: a
report keeps its totals, and its detail and reject rows are read again (from the ledger, page by
page) while they are written, so its memory does not grow with the day:

* ``summary.csv``: one row per source file × store × business date × currency (× origin): rows,
  transactions and amount in, then count and amount per state, points awarded, ``balanced``
  (a row never mixes currencies) and ``reason``; plus a row for every file the run read with no
  data rows (origin ``file``, reason ``no data rows``) and for every file it did not read
  (origin ``unreadable``, ``fetch_failed``, ``skipped``, ``already_processed``,
  ``quarantined`` or ``interrupted``), with why;
* ``detail.csv``: one row per transaction occurrence with its state, codes and event ids;
* ``rejects.csv``: every rejected line with its original columns, the reject code, reason, field,
  file and line;
* ``summary.json``: the `posfeed run --json` document;
* ``report.html``: the same figures as one page for finance (:mod:`pipeline.report_page`).

Every column is described in docs/REPORTS.md. Amounts are exact decimals, totalled per currency
and written with the currency's minor units (:func:`pipeline.currencies.money_text`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from pipeline.csvsafe import write_atomic, write_csv
from pipeline.currencies import money_text, single_currency_amounts
from pipeline.ledger import TxnRecord, TxnState
from pipeline.ledger.states import POST_VOIDED, VOID_OF_SENT_SALE
from pipeline.logs import counted, in_number
from pipeline.records import ORIGINAL_NOT_FOUND
from pipeline.sinks.antavo import PARTLY_REFUNDED

__all__ = [
    "ACT_ON_STATES",
    "DETAIL_COLUMNS",
    "LISTED_TO_ACT_ON",
    "REJECT_TAIL_COLUMNS",
    "STATE_COLUMNS",
    "SUMMARY_COLUMNS",
    "Report",
    "Rows",
    "ToActOn",
    "build_report",
    "left_for_next_run",
    "points_text",
    "returns_waiting",
    "unaccounted_words",
    "write_report",
]

# report name of each state, in column order ("in_doubt" is the ledger's "sending")
STATE_COLUMNS: tuple[tuple[str, TxnState], ...] = (
    ("accepted", TxnState.ACCEPTED),
    ("rejected", TxnState.REJECTED),
    ("duplicate", TxnState.DUPLICATE),
    ("conflict", TxnState.CONFLICT),
    ("failed_retryable", TxnState.FAILED_RETRYABLE),
    ("failed_permanent", TxnState.FAILED_PERMANENT),
    ("in_doubt", TxnState.SENDING),
    ("queued", TxnState.QUEUED),
    ("void", TxnState.VOID),
    ("not_sent", TxnState.NOT_SENT),
)
_REPORT_NAME = {state: name for name, state in STATE_COLUMNS}

SUMMARY_COLUMNS: tuple[str, ...] = (
    "run_id",
    "feed",
    "source_file",
    "store_id",
    "business_date",
    "currency",
    "origin",
    "rows_in",
    "transactions_in",
    "amount_in",
    *(f"{name}_{what}" for name, _ in STATE_COLUMNS for what in ("count", "amount")),
    # of failed_permanent: returns the platform refunded in part, and the money it did refund
    "partly_refunded_count",
    "partly_refunded_amount",
    # of void: voids naming a sale already on the platform (it stays there: to act on)
    "void_of_sent_sale_count",
    "void_of_sent_sale_amount",
    # of void: sales a void names, never sent (code post_voided)
    "post_voided_count",
    "post_voided_amount",
    "points_awarded",
    "rows_accounted",
    "transactions_accounted",
    "amount_accounted",
    "balanced",
    "reason",
)

DETAIL_COLUMNS: tuple[str, ...] = (
    "run_id",
    "feed",
    "source_file",
    "source_lines",
    "transaction_id",
    "store_id",
    "business_date",
    "transaction_type",
    "currency",
    "amount",
    "rows",
    "state",
    "origin",
    "reject_code",
    "error_code",
    "error_message",
    "attempts",
    "event_ids",
    "points",
    "content_hash",
    "first_run_id",
    "last_run_id",
)

REJECT_TAIL_COLUMNS: tuple[str, ...] = (
    "reject_code",
    "reject_reason",
    "reject_field",
    "source_file",
    "source_line",
)

# the states whose transactions a person acts on (besides a void of a sale already sent)
ACT_ON_STATES = frozenset({"rejected", "conflict", "not_sent", "failed_permanent", "failed_retryable",
                           "in_doubt", "queued"})
LISTED_TO_ACT_ON = 50  # the transactions kept of each state and code to act on (the page lists them)

_ZERO = Decimal("0")
_NO_DATA_ROWS = "no data rows"  # the reason of a file read with nothing in it
_T = TypeVar("_T")


def returns_waiting(count: int) -> str:
    """``1 return waits for its sale``, ``2 returns wait for their sale``: the words of every
    report, console line and log line that counts returns waiting for their sale."""
    whose = "its" if count == 1 else "their"
    return f"{counted(count, 'return')} {in_number(count, 'waits', 'wait')} for {whose} sale"


def left_for_next_run(in_doubt: int, queued: int, *, who: str = "the next run") -> list[str]:
    """What a run left for the next one, in words: ``1 transaction in doubt (sent, no answer
    recorded): the next run asks the platform before sending anything``, ``2 transactions queued,
    not sent yet: the next run sends them`` (``who``: the run that does it). Empty when none."""
    parts = []
    if in_doubt:
        parts.append(f"{counted(in_doubt, 'transaction')} in doubt (sent, no answer recorded): "
                     f"{who} asks the platform before sending anything")
    if queued:
        them = "it" if queued == 1 else "them"
        parts.append(f"{counted(queued, 'transaction')} queued, not sent yet: {who} sends {them}")
    return parts


def unaccounted_words(unaccounted: dict[str, Any]) -> str:
    """What a report that does not balance misses (``unaccounted`` of its summary), in words:
    ``1 transaction, 2 rows and 11.49 EUR came in that no state counts (1 summary.csv row with
    balanced false)``; "more counted in the states than came in" for what is counted twice."""
    parts = []
    for key, word in (("transactions", "transaction"), ("rows", "row")):
        if unaccounted.get(key):
            parts.append((unaccounted[key], counted(abs(unaccounted[key]), word)))
    for currency, amount in (unaccounted.get("amounts") or {}).items():
        value = Decimal(amount)
        parts.append((value, f"{money_text(abs(value), currency)} {currency}".rstrip()))
    missing = [text for value, text in parts if value > 0]
    extra = [text for value, text in parts if value < 0]
    said = []
    if missing:
        said.append(f"{_and(missing)} came in that no state counts")
    if extra:
        said.append(f"{_and(extra)} more counted in the states than came in")
    rows = counted(unaccounted.get("summary_rows", 0), "summary.csv row")
    where = f"{rows} with balanced false"
    return f"{'; '.join(said)} ({where})" if said else f"{where}: its states do not add up to what came in"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def points_text(value: Decimal | None) -> str:
    """Loyalty points as the platform gave them: ``100``, ``-25`` (whole on Antavo), never as money;
    a fraction a platform gave stays exact (``12.5``)."""
    if value is None:
        return ""
    value = value if value != 0 else abs(value)
    return f"{value:f}"


def _one_line(text: str, limit: int = 300) -> str:
    """A reason on one line, at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _lines(lines: Sequence[int]) -> str:
    """``2-4;9`` for lines 2, 3, 4 and 9."""
    if not lines:
        return ""
    parts: list[str] = []
    ordered = sorted(lines)
    start = prev = ordered[0]
    for line in [*ordered[1:], None]:
        if line is not None and line == prev + 1:
            prev = line
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if line is not None:
            start = prev = line
    return ";".join(parts)


@dataclass
class _Group:
    rows_in: int = 0
    transactions_in: int = 0
    amount_in: Decimal = _ZERO
    counts: Counter[str] = field(default_factory=Counter)
    amounts: dict[str, Decimal] = field(default_factory=dict)
    points: Decimal = _ZERO
    points_reported: bool = False  # whether the platform gave points for any accepted transaction
    # failed_permanent returns some of whose refund lines landed, and the money that landed
    partly_refunded: int = 0
    refunded: Decimal = _ZERO
    # voids naming a sale the platform holds, and their money
    voids_of_sent: int = 0
    voided_sent: Decimal = _ZERO
    # sales a void names, settled void before reaching the platform, and their money
    post_voided: int = 0
    post_voided_amount: Decimal = _ZERO
    # failed_retryable returns waiting for their sale (original_not_found): said in ``reason``
    waiting_for_sale: int = 0
    rows: int = 0
    transactions: int = 0
    amount: Decimal = _ZERO

    def add(self, txn: TxnRecord) -> None:
        name = _REPORT_NAME[txn.state]
        self.counts[name] += 1
        self.amounts[name] = self.amounts.get(name, _ZERO) + txn.amount
        self.rows += txn.rows
        self.transactions += 1
        self.amount += txn.amount
        if txn.state is TxnState.ACCEPTED and txn.points is not None:
            self.points += txn.points
            self.points_reported = True
        if txn.state is TxnState.VOID and txn.last_error_code == VOID_OF_SENT_SALE:
            self.voids_of_sent += 1
            self.voided_sent += txn.amount
        if txn.state is TxnState.VOID and txn.last_error_code == POST_VOIDED:
            self.post_voided += 1
            self.post_voided_amount += txn.amount
        if txn.state is TxnState.FAILED_RETRYABLE and txn.last_error_code == ORIGINAL_NOT_FOUND:
            self.waiting_for_sale += 1
        if txn.state is TxnState.FAILED_PERMANENT and txn.last_error_code == PARTLY_REFUNDED:
            self.partly_refunded += 1
            landed = txn.refunded  # kept by the ledger; None when not known (settled so by an older version)
            if landed is not None:  # signed as the return's amount
                self.refunded += -landed if txn.amount < 0 else landed

    def merge(self, other: _Group) -> None:
        """Add another group's totals to this one."""
        self.rows_in += other.rows_in
        self.transactions_in += other.transactions_in
        self.amount_in += other.amount_in
        self.counts.update(other.counts)
        for state_name, amount in other.amounts.items():
            self.amounts[state_name] = self.amounts.get(state_name, _ZERO) + amount
        self.points += other.points
        self.points_reported = self.points_reported or other.points_reported
        self.partly_refunded += other.partly_refunded
        self.refunded += other.refunded
        self.voids_of_sent += other.voids_of_sent
        self.voided_sent += other.voided_sent
        self.post_voided += other.post_voided
        self.post_voided_amount += other.post_voided_amount
        self.waiting_for_sale += other.waiting_for_sale
        self.rows += other.rows
        self.transactions += other.transactions
        self.amount += other.amount

    def points_awarded(self) -> str:
        """The points the platform gave, as it gave them; empty when it gave none (CRM.COM)."""
        return points_text(self.points) if self.points_reported else ""

    def reason(self, pending_is_final: bool = False) -> str:
        """The ``reason`` of the group's summary row: what in it the next run settles or sends,
        and the returns in it that wait for their sale."""
        parts = left_for_next_run(self.counts["in_doubt"], 0 if pending_is_final else self.counts["queued"])
        if self.waiting_for_sale:
            parts.append(f"{returns_waiting(self.waiting_for_sale)} ({ORIGINAL_NOT_FOUND} in detail.csv)")
        return "; ".join(parts)

    def accounted(self) -> bool:
        """Whether every row, transaction and amount that came in is counted in a state column
        (queued and in doubt included)."""
        return (self.rows == self.rows_in and self.transactions == self.transactions_in
                and self.amount == self.amount_in)

    def balanced(self, pending_is_final: bool) -> bool:
        pending = self.counts["in_doubt"] + (0 if pending_is_final else self.counts["queued"])
        return pending == 0 and self.accounted()


class Rows:
    """Rows that can be read more than once, each time from ``make()`` (a report's detail and
    reject rows stream from the ledger as they are written; they are never all in memory)."""

    def __init__(self, make: Callable[[], Iterable[Sequence[Any]]]):
        self._make = make

    def __iter__(self) -> Iterator[Sequence[Any]]:
        return iter(self._make())


# transactions or rejects: a sequence, or a function that reads them again each time it is called
Replayable = Sequence[_T] | Callable[[], Iterable[_T]]


def _replay(items: Replayable[_T]) -> Callable[[], Iterable[_T]]:
    return items if callable(items) else (lambda: items)


@dataclass
class ToActOn:
    """The transactions of one state and error code a person acts on: how many, their money per
    currency, and the detail rows of the first :data:`LISTED_TO_ACT_ON` of them."""

    count: int = 0
    amounts: dict[str, Decimal] = field(default_factory=dict)
    rows: list[list[Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    """One report: its summary rows, its detail and reject rows (read as they are written), its
    JSON summary, the rejected amount per reject code and currency, and the transactions to act
    on by (state, error code) (both for the page, added up in the totals pass)."""

    summary_rows: list[list[Any]]
    detail_rows: Iterable[Sequence[Any]]
    reject_header: list[str]
    reject_rows: Iterable[Sequence[Any]]
    summary: dict[str, Any]
    rejected_amounts: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    to_act_on: dict[tuple[str, str], ToActOn] = field(default_factory=dict)


def _detail_row(report_id: str, feed: str, t: TxnRecord) -> list[Any]:
    return [report_id, feed, t.source_file, _lines(t.source_lines), t.transaction_id or "", t.store_id or "",
            t.business_date or "", t.transaction_type or "", t.currency or "",
            money_text(t.amount, t.currency), t.rows,
            _REPORT_NAME[t.state], t.origin or "file", t.reject_code or "", t.last_error_code or "",
            t.last_error_message or "", t.attempts, ";".join(t.event_ids), points_text(t.points),
            t.content_hash or "", t.first_run_id, t.last_run_id]


def build_report(
    *,
    report_id: str,
    feed: str,
    transactions: Replayable[TxnRecord],
    file_totals: Iterable[tuple[str, str, str, int, int, Decimal]
                          | tuple[str, str, str, int, int, Decimal, str]],
    rejects: Replayable[dict[str, Any]],
    pending_is_final: bool = False,
    extra: dict[str, Any] | None = None,
    files_not_read: Iterable[tuple[str, str, str]] = (),
    files_without_rows: Iterable[str] = (),
) -> Report:
    """Build a report from ledger rows.

    ``transactions`` and ``rejects`` are sequences or functions that read them (again) from the
    ledger each time they are called: the totals are added up in one pass, and the detail and
    reject rows are made again, one at a time, when the report is written, so memory does not grow
    with the day. ``file_totals`` are (source_file, store_id, business_date, rows, transactions,
    amount[, currency]) of the files whose rows came in with this report (origin ``file``);
    transactions of another origin (settled or retried from the ledger) are their own input.
    ``pending_is_final`` counts queued rows as final (a dry run, where "queued" means "would be
    sent"). Every total is per currency: a summary row has one, and the JSON summary has
    ``currencies``. ``files_not_read`` are (source_file, origin, reason) of files the run saw and
    did not read: one summary row each, nothing in it (currency: the report's, when its money is in
    one). ``files_without_rows`` are files read with no data rows (a header-only file): one row
    each of origin ``file``, likewise with nothing in it.
    """
    read_transactions = _replay(transactions)
    read_rejects = _replay(rejects)
    groups: dict[tuple[str, str, str, str, str], _Group] = {}
    for name, store, day, rows, count, amount, *rest in file_totals:
        currency = rest[0] if rest else ""
        group = groups.setdefault((name, store, day, currency or "", "file"), _Group())
        group.rows_in += rows
        group.transactions_in += count
        group.amount_in += amount
    rows_rejected = 0
    transactions_rejected = 0
    rejected_amounts: dict[str, dict[str, Decimal]] = {}
    to_act_on: dict[tuple[str, str], ToActOn] = {}
    for txn in read_transactions():
        origin = "file" if (txn.origin or "file") == "file" else "ledger"
        key = (txn.source_file, txn.store_id or "", txn.business_date or "", txn.currency or "", origin)
        group = groups.setdefault(key, _Group())
        if origin == "ledger":
            group.rows_in += txn.rows
            group.transactions_in += 1
            group.amount_in += txn.amount
        group.add(txn)
        if txn.state is TxnState.REJECTED:
            rows_rejected += txn.rows
            transactions_rejected += 1
            # as the detail row shows it (the page adds these up per reject code)
            of_code = rejected_amounts.setdefault(txn.reject_code or "", {})
            shown = Decimal(money_text(txn.amount, txn.currency) or 0)
            of_code[txn.currency or ""] = of_code.get(txn.currency or "", _ZERO) + shown
        state_name = _REPORT_NAME[txn.state]
        if state_name in ACT_ON_STATES or (txn.state is TxnState.VOID
                                           and txn.last_error_code == VOID_OF_SENT_SALE):
            entry = to_act_on.setdefault((state_name, txn.last_error_code or ""), ToActOn())
            entry.count += 1
            entry.amounts[txn.currency or ""] = entry.amounts.get(txn.currency or "", _ZERO) + txn.amount
            if len(entry.rows) < LISTED_TO_ACT_ON:
                entry.rows.append(_detail_row(report_id, feed, txn))

    summary_rows: list[list[Any]] = []
    total = _Group()
    by_currency: dict[str, _Group] = {}
    balanced = True
    for (name, store, day, currency, origin), group in sorted(groups.items()):
        ok = group.balanced(pending_is_final)
        balanced = balanced and ok
        state_cells: list[Any] = []
        for state_name, _ in STATE_COLUMNS:
            amount = group.amounts.get(state_name, _ZERO)
            state_cells += [group.counts[state_name], money_text(amount, currency)]
        summary_rows.append(
            [report_id, feed, name, store, day, currency, origin, group.rows_in, group.transactions_in,
             money_text(group.amount_in, currency), *state_cells, group.partly_refunded,
             money_text(group.refunded, currency), group.voids_of_sent,
             money_text(group.voided_sent, currency), group.post_voided,
             money_text(group.post_voided_amount, currency), group.points_awarded(), group.rows,
             group.transactions, money_text(group.amount, currency), "true" if ok else "false",
             group.reason(pending_is_final)]
        )
        total.merge(group)
        by_currency.setdefault(currency, _Group()).merge(group)

    # a file not read has no currency of its own: the feed's, when all the report's money is in one
    known = [c for c in by_currency if c]
    feed_currency = known[0] if len(known) == 1 else ""
    zero = money_text(_ZERO, feed_currency)
    empty_states = [cell for _ in STATE_COLUMNS for cell in (0, zero)] + [0, zero, 0, zero, 0, zero]
    for name in sorted(set(files_without_rows)):
        summary_rows.append(
            [report_id, feed, name, "", "", feed_currency, "file", 0, 0, zero, *empty_states,
             "", 0, 0, zero, "true", _NO_DATA_ROWS]
        )
    for name, origin, reason in files_not_read:
        # no row of the file came in, so none is unaccounted for; the file itself is, with why
        summary_rows.append(
            [report_id, feed, name, "", "", feed_currency, origin, 0, 0, zero, *empty_states,
             "", 0, 0, zero, "true", _one_line(reason)]
        )

    detail_rows = Rows(lambda: (_detail_row(report_id, feed, t) for t in read_transactions()))

    reject_header: list[str] = []
    by_code: Counter[str] = Counter()
    for reject in read_rejects():
        by_code[str(reject["code"])] += 1
        for column in reject["original"]:
            if column not in reject_header and column not in REJECT_TAIL_COLUMNS:
                reject_header.append(column)
    original_columns = tuple(reject_header)
    reject_rows = Rows(lambda: (
        [*(r["original"].get(c) for c in original_columns), r["code"], r["reason"], r["field"],
         r["source_file"], r["source_line"]]
        for r in read_rejects()
    ))
    reject_header += list(REJECT_TAIL_COLUMNS)

    currencies = {
        currency: _currency_amounts(currency, group) for currency, group in sorted(by_currency.items())
    }
    summary: dict[str, Any] = {
        "run_id": report_id,
        "feed": feed,
        "rows_in": total.rows_in,
        "rows_rejected": rows_rejected,
        "transactions_in": total.transactions_in,
        "transactions_valid": total.transactions - transactions_rejected,
        "transactions_rejected": transactions_rejected,
        "rejects_by_code": dict(sorted(by_code.items())),
        "duplicates": total.counts["duplicate"],
        "conflicts": total.counts["conflict"],
        **single_currency_amounts(currencies, ("amount_in", "amount_valid", "amount_rejected")),
        "accepted": total.counts["accepted"],
        "failed_retryable": total.counts["failed_retryable"],
        "failed_permanent": total.counts["failed_permanent"],
        "in_doubt": total.counts["in_doubt"],
        "queued": total.counts["queued"],
        "voids": total.counts["void"],
        "not_sent": total.counts["not_sent"],
        "partly_refunded": total.partly_refunded,
        "voids_of_sent_sales": total.voids_of_sent,
        "post_voided": total.post_voided,
        **single_currency_amounts(currencies, ("amount_accepted", "amount_partly_refunded",
                                               "amount_void_of_sent_sale")),
        "currencies": currencies,
        "points_awarded": total.points_awarded() or None,
        "balanced": balanced and all(g.balanced(pending_is_final) for g in by_currency.values()),
        # what came in and no state column counts (only a bug makes it): empty when none
        "unaccounted": _unaccounted(groups.items()),
    }
    summary.update(extra or {})
    return Report(summary_rows, detail_rows, reject_header, reject_rows, summary, rejected_amounts,
                  to_act_on)


def _unaccounted(groups: Iterable[tuple[tuple[str, str, str, str, str], _Group]]) -> dict[str, Any]:
    """Over the summary rows that are not accounted for (``summary_rows``: how many), what came in
    less what their state columns count: rows, transactions and the money per currency (only what
    differs). Empty when every row is accounted for."""
    rows = transactions = summary_rows = 0
    amounts: dict[str, Decimal] = {}
    for (_, _, _, currency, _), group in groups:
        if group.accounted():
            continue
        summary_rows += 1
        rows += group.rows_in - group.rows
        transactions += group.transactions_in - group.transactions
        if group.amount != group.amount_in:
            amounts[currency] = amounts.get(currency, _ZERO) + group.amount_in - group.amount
    if not summary_rows:
        return {}
    out: dict[str, Any] = {"summary_rows": summary_rows}
    if rows:
        out["rows"] = rows
    if transactions:
        out["transactions"] = transactions
    if any(amounts.values()):
        out["amounts"] = {c: money_text(a, c) for c, a in sorted(amounts.items()) if a}
    return out


def _currency_amounts(currency: str, group: _Group) -> dict[str, str]:
    """One currency's amounts for the JSON summary."""
    rejected = group.amounts.get("rejected", _ZERO)
    return {
        "amount_in": money_text(group.amount_in, currency),
        "amount_valid": money_text(group.amount_in - rejected, currency),
        "amount_rejected": money_text(rejected, currency),
        "amount_accepted": money_text(group.amounts.get("accepted", _ZERO), currency),
        # of the failed_permanent amount: what the platform refunded of returns it took in part
        "amount_partly_refunded": money_text(group.refunded, currency),
        # of the void amount: voids naming a sale the platform holds (that sale stays there)
        "amount_void_of_sent_sale": money_text(group.voided_sent, currency),
    }


def write_report(report: Report, folder: Path) -> Path:
    """Write the report's five files into ``folder`` (each atomically); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "summary.csv", SUMMARY_COLUMNS, report.summary_rows)
    write_csv(folder / "detail.csv", DETAIL_COLUMNS, report.detail_rows)
    write_csv(folder / "rejects.csv", report.reject_header, report.reject_rows)
    text = json.dumps(report.summary, indent=2, sort_keys=True, default=str) + "\n"
    write_atomic(folder / "summary.json", text)
    from pipeline.report_page import render_page  # the page reads this module's columns

    write_atomic(folder / "report.html", render_page(report))
    return folder
