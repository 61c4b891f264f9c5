"""The reconciliation page: ``report.html`` beside ``summary.csv``, for finance, offline.

:func:`page_data` reads a :class:`pipeline.reports.Report` (the same rows and summary the CSV and
JSON files are written from, so the page holds no figure of its own) into what the page shows:
the verdict and what needs action (each item with its count, money per currency, what to do and
its first transactions, as the report added them up), per currency the money flow from "came in"
to each final state, per store and currency the same with a balanced mark, the reject codes with
examples, and the files of the run. :func:`render_page` fills ``templates/report.html.j2``
(Jinja2, every value escaped) into one self-contained file: inline CSS and SVG, no script, nothing
from the network.
"""

from __future__ import annotations

import shlex
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from pipeline.currencies import minor_units
from pipeline.logs import counted, in_number, told
from pipeline.reports import DETAIL_COLUMNS, LISTED_TO_ACT_ON, STATE_COLUMNS, SUMMARY_COLUMNS, Report

__all__ = ["CODE_ACTIONS", "FLOW_STATES", "STORE_COLUMNS", "format_amount", "minor_units", "page_data",
           "render_page"]

# the report's states as finance reads them, in the order money flows
FLOW_STATES: tuple[tuple[str, str], ...] = (
    ("accepted", "accepted by the platform"),
    ("rejected", "rejected (bad rows)"),
    ("duplicate", "duplicates (sent before)"),
    ("conflict", "conflicts (held for review)"),
    ("not_sent", "not sent (the platform cannot take it)"),
    ("void", "voided at the till"),
    ("failed_permanent", "failed for good"),
    ("failed_retryable", "failed, will be retried"),
    ("in_doubt", "in doubt (being settled)"),
    ("queued", "queued (waiting to be sent)"),
)
assert {name for name, _ in FLOW_STATES} == {name for name, _ in STATE_COLUMNS}

# the store table's columns: each the sum of one or more states, together every state once
STORE_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("accepted", ("accepted",)),
    ("rejected", ("rejected",)),
    ("duplicates", ("duplicate",)),
    ("conflicts", ("conflict",)),
    ("not sent", ("not_sent",)),
    ("void", ("void",)),
    ("failed", ("failed_permanent", "failed_retryable")),
    ("waiting (in doubt, queued)", ("in_doubt", "queued")),
)
assert sorted(s for _, states in STORE_COLUMNS for s in states) == sorted(n for n, _ in STATE_COLUMNS)

_EXAMPLES_PER_CODE = 3
# how the files table names each summary.csv origin of a file not read
_NOT_READ_LABELS = {
    "unreadable": "unreadable",
    "fetch_failed": "not fetched",
    "skipped": "skipped",
    "already_processed": "already processed",
    "quarantined": "in quarantine",
    "interrupted": "not read",
}
# an item's label after its count: (for 1, for any other count)
Label = tuple[str, str]


def _same(label: str) -> Label:
    """A label that reads the same after any count ("1 failed for good", "2 failed for good")."""
    return (label, label)


# what to do about the transactions of a state; those of a code below have their own item
_NEEDS_ACTION: dict[str, tuple[Label, str]] = {
    "rejected": (_same("rejected (bad rows)"), "fix the rows in rejects.csv and deliver them again"),
    "conflict": (("conflict (held for review)", "conflicts (held for review)"),
                 "review the conflicting versions in detail.csv"),
    "not_sent": (_same("not sent (the platform cannot take it)"),
                 "review what the platform cannot take (detail.csv, error_code)"),
    "failed_permanent": (_same("failed for good"), "read the platform's error in detail.csv, then "
                         "`posfeed rerun --feed {feed} --failed --include-permanent`"),
    "failed_retryable": (_same("failed, will be retried"),
                         "nothing if the next run succeeds; else `posfeed rerun --feed {feed} --failed`"),
    "in_doubt": (_same("in doubt (being settled)"),
                 "the next run settles these with the platform before sending anything"),
    "queued": (_same("queued (waiting to be sent)"), "the next run sends these"),
}
_RERUN_PERMANENT = "`posfeed rerun --feed {feed} --failed --include-permanent`"
# (state, error code) -> (item, label, what to do): transactions finance acts on otherwise than
# their state's, each an item of its own on the page (a state's item holds the rest of the state)
CODE_ACTIONS: dict[tuple[str, str], tuple[str, Label, str]] = {
    ("void", "void_of_sent_sale"): (
        "void_of_sent_sale", ("void of a sale already on the platform",
                              "voids of a sale already on the platform"),
        "a void is never sent, so the sale it names stays on the platform with its points: cancel "
        "or refund that sale on the platform (the message names it and its ids), or send a return of it"),
    ("failed_permanent", "partly_refunded"): (
        "partly_refunded", ("return the platform refunded in part",
                            "returns the platform refunded in part"),
        "the platform refunded part of each (the message says how much, and names each refused line "
        f"with the platform's code); once the cause is fixed, {_RERUN_PERMANENT} sends only the "
        "refused lines"),
    ("failed_permanent", "ambiguous_purchase"): (
        "ambiguous_purchase", ("transaction with several matching purchases on CRM.COM, nothing "
                               "cancelled or created",
                               "transactions with several matching purchases on CRM.COM, nothing "
                               "cancelled or created"),
        "on CRM.COM, by hand (the message names the purchase ids and how each differs): for a "
        "return, cancel its sale's purchase; for a sale, keep one purchase and cancel the others"),
    ("failed_permanent", "original_refused"): (
        "original_refused", ("return whose sale the platform refused",
                             "returns whose sale the platform refused"),
        "nothing of them was refunded: fix the cause of the sale (its code in the message), then "
        f"{_RERUN_PERMANENT} sends the sale and then the return"),
    ("failed_permanent", "original_not_found"): (
        "original_never_arrived", ("return whose sale never arrived",
                                   "returns whose sale never arrived"),
        f"deliver the sale (the message names it); once it is accepted, {_RERUN_PERMANENT} sends the return"),
    ("failed_retryable", "original_not_accepted"): (
        "original_not_accepted", ("return waiting for its sale",
                                  "returns waiting for their sale"),
        "nothing if the next run delivers the sale: it sends the return after it; else fix the sale's "
        "error (detail.csv)"),
    ("failed_retryable", "crmcom_original_not_delivered"): (
        "crmcom_original_not_delivered", ("return waiting for its sale",
                                          "returns waiting for their sale"),
        "nothing if the next run delivers the sale: it sends the return after it; else fix the sale's "
        "error (detail.csv)"),
    ("failed_retryable", "original_not_found"): (
        "original_not_found", ("return waiting for a sale not arrived yet",
                               "returns waiting for a sale not arrived yet"),
        "every plain run looks for the sale again and sends the return after it: deliver the sale's "
        "file if it is missing (the message names the sale)"),
}
# the transactions each item lists; the rest are counted and named in detail.csv
TRANSACTIONS_PER_ITEM = LISTED_TO_ACT_ON


def format_amount(value: Decimal | str, currency: str = "") -> str:
    """``1234.5`` in GBP -> ``1,234.50``: the currency's minor units, never fewer digits than exact."""
    amount = Decimal(value) if value not in ("", None) else Decimal(0)
    exponent = amount.normalize().as_tuple().exponent
    exact = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    places = max(minor_units(currency), exact)
    return f"{amount:,.{places}f}"


@dataclass
class Figures:
    """Count and amount per state for one group of summary rows, with what came in."""

    rows_in: int = 0
    transactions_in: int = 0
    amount_in: Decimal = Decimal(0)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    amounts: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    balanced: bool = True

    def add(self, row: Mapping[str, str]) -> None:
        self.rows_in += int(row["rows_in"])
        self.transactions_in += int(row["transactions_in"])
        self.amount_in += Decimal(row["amount_in"])
        for name, _ in STATE_COLUMNS:
            self.counts[name] += int(row[f"{name}_count"])
            self.amounts[name] += Decimal(row[f"{name}_amount"])
        self.balanced = self.balanced and row["balanced"] == "true"


def _rows(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[dict[str, str]]:
    return [{c: "" if v is None else str(v) for c, v in zip(columns, row, strict=False)} for row in rows]


def _each_row(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[dict[str, str]]:
    return ({c: "" if v is None else str(v) for c, v in zip(columns, row, strict=False)} for row in rows)


def _flow(figures: Figures, currency: str) -> dict[str, Any]:
    """One currency's (or one store's) figures as the page shows them, bars included."""
    largest = max([abs(figures.amount_in), *(abs(a) for a in figures.amounts.values())])
    states = []
    for name, label in FLOW_STATES:
        amount = figures.amounts.get(name, Decimal(0))
        count = figures.counts.get(name, 0)
        share = float(abs(amount) / largest) if largest else 0.0
        states.append({"name": name, "label": label, "count": count,
                       "amount": format_amount(amount, currency), "share": share})
    columns = [
        {"label": label, "count": sum(figures.counts.get(s, 0) for s in states),
         "amount": format_amount(sum((figures.amounts.get(s, Decimal(0)) for s in states), Decimal(0)),
                                 currency)}
        for label, states in STORE_COLUMNS
    ]
    return {
        "currency": currency or "(none)",
        "columns": columns,
        "rows_in": figures.rows_in,
        "transactions_in": figures.transactions_in,
        "amount_in": format_amount(figures.amount_in, currency),
        # the bars' scale is the largest amount, which a state's may be (a day of returns)
        "share_in": float(abs(figures.amount_in) / largest) if largest else 0.0,
        "states": states,
        "balanced": figures.balanced,
    }


def page_data(report: Report) -> dict[str, Any]:
    """Everything the page shows, read from the report's own rows and summary."""
    summary = report.summary
    summary_rows = _rows(SUMMARY_COLUMNS, report.summary_rows)
    # the reject rows are read one at a time; the page keeps only what it shows of them
    reject_rows = _each_row(report.reject_header, report.reject_rows)

    per_currency: dict[str, Figures] = defaultdict(Figures)
    per_store: dict[tuple[str, str], Figures] = defaultdict(Figures)
    per_file: dict[str, Figures] = defaultdict(Figures)
    # a file's money per currency: a file may hold rows of several, never added together
    file_amounts: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    stores_of_file: dict[str, set[str]] = defaultdict(set)
    empty_files: dict[str, str] = {}
    not_read: list[dict[str, str]] = []
    for row in summary_rows:
        if row["origin"] not in ("file", "ledger"):
            not_read.append(row)  # a file not read: nothing came in; listed with its reason below
            continue
        file_amounts[row["source_file"]][row.get("currency", "")] += Decimal(row["amount_in"] or 0)
        if row["rows_in"] == "0" and row["transactions_in"] == "0" and not row["store_id"]:
            # a file read with no data rows: listed, with no currency or store of its own
            per_file[row["source_file"]].add(row)
            empty_files[row["source_file"]] = row["reason"]
            continue
        currency = row.get("currency", "")
        per_currency[currency].add(row)
        per_store[(row["store_id"], currency)].add(row)
        per_file[row["source_file"]].add(row)
        stores_of_file[row["source_file"]].add(row["store_id"])

    codes: dict[str, dict[str, Any]] = {}
    for row in reject_rows:
        entry = codes.setdefault(row["reject_code"], {"code": row["reject_code"], "rows": 0,
                                                      "examples": [], "amounts": defaultdict(Decimal)})
        entry["rows"] += 1
        if len(entry["examples"]) < _EXAMPLES_PER_CODE:
            entry["examples"].append(f"{row['source_file']}:{row['source_line']} {row['reject_reason']}")
    for code, amounts in report.rejected_amounts.items():  # added up from the detail rows
        if code in codes:
            for currency, amount in amounts.items():
                codes[code]["amounts"][currency] += amount
    reject_codes = [
        {**entry, "amounts": [format_amount(a, c) + (f" {c}" if c else "")
                              for c, a in sorted(entry["amounts"].items())]}
        for _, entry in sorted(codes.items())
    ]

    files = [
        {"name": name, "status": f"read: {empty_files[name]}" if empty_files.get(name) else "read",
         "stores": ", ".join(sorted(s for s in stores_of_file[name] if s)),
         "rows_in": figures.rows_in, "transactions_in": figures.transactions_in,
         "amounts": [{"currency": currency or "(none)",
                      "amount": format_amount(amount, currency) + (f" {currency}" if currency else "")}
                     for currency, amount in sorted(file_amounts[name].items())],
         "balanced": figures.balanced}
        for name, figures in sorted(per_file.items())
    ]
    for row in not_read:
        label = _NOT_READ_LABELS.get(row["origin"], row["origin"].replace("_", " "))
        files.append({"name": row["source_file"], "status": f"{label}: {row['reason']}".rstrip(": "),
                      "stores": "", "rows_in": None, "transactions_in": None, "amounts": [],
                      "balanced": None})

    expected = [
        {"store_id": m.get("store_id") or "", "business_date": m.get("business_date") or "",
         "what": m.get("file") or m.get("pattern") or "", "status": m.get("status") or "",
         "due_at": m.get("due_at") or ""}
        for m in summary.get("missing_files") or [] if m.get("status") in ("missing", "late")
    ]

    feed = shlex.quote(str(summary.get("feed", "")))
    items = _action_items(report, summary_rows, feed, dry_run=bool(summary.get("dry_run")))
    actions = [f"{item['count']} {item['label']}: {item['todo']}" for item in items]
    if summary.get("source_unreachable"):  # why no file of the day was read (the server, never a secret)
        actions.append(f"source not reached, no file read in this run: {summary['source_unreachable']}; "
                       "the next run that reaches it reads the files")
    missing = sum(1 for m in expected if m["status"] == "missing")
    actions += [f"{counted(missing, 'expected file')} missing"] if missing else []
    unreadable = sum(1 for row in not_read if row["origin"] == "unreadable")
    actions += [f"{counted(unreadable, 'unreadable file')}: fix and deliver again"] if unreadable else []

    problems = [
        {key: ("" if p.get(key) is None else str(p.get(key)))
         for key in ("problem_id", "kind", "store_id", "business_date", "summary", "action", "opened_at")}
        for p in summary.get("problems") or [] if isinstance(p, Mapping) and p.get("status", "open") == "open"
    ]
    actions += [f"{counted(len(problems), 'open problem')}: see the table at the end"] if problems else []

    dates = summary.get("business_dates") or (
        [summary["business_date"]] if summary.get("business_date") else
        sorted({row["business_date"] for row in summary_rows if row["business_date"]}))
    return {
        "feed": summary.get("feed", ""),
        "report_id": summary.get("run_id", ""),
        "kind": summary.get("kind", "run"),
        "business_dates": dates,
        "started_at": summary.get("started_at") or "",
        "finished_at": summary.get("finished_at") or "",
        "dry_run": bool(summary.get("dry_run")),
        "balanced": bool(summary.get("balanced")),
        # every row counted, some waiting for the next run (in doubt, queued): not balanced *yet*
        "all_counted": summary.get("unaccounted") == {},
        "actions": actions,
        "action_items": items,
        "other_actions": actions[len(items):],  # files and problems: not transactions
        "currencies": [_flow(per_currency[c], c) for c in sorted(per_currency)],
        "stores": [{"store_id": store or "(none)", **_flow(figures, currency)}
                   for (store, currency), figures in sorted(per_store.items())],
        "reject_codes": reject_codes,
        "files": files,
        "expected": expected,
        "problems": problems,
        "flow_states": FLOW_STATES,
        "store_columns": [label for label, _ in STORE_COLUMNS],
    }


def _action_items(
    report: Report, summary_rows: Sequence[Mapping[str, str]], feed: str, *, dry_run: bool = False
) -> list[dict[str, Any]]:
    """The items to act on, each with its count, money per currency, what to do and its first
    transactions (the report's, added up with its totals). A dry run's queued transactions are
    what it would send: nothing to act on."""
    found: dict[str, dict[str, Any]] = {}
    for (state, code), entry in sorted(report.to_act_on.items()):
        if dry_run and state == "queued":
            continue
        if (state, code) in CODE_ACTIONS:
            key, label, todo = CODE_ACTIONS[(state, code)]
        elif state in _NEEDS_ACTION:
            key, (label, todo) = state, _NEEDS_ACTION[state]
        else:
            continue
        item = found.setdefault(key, {"key": key, "state": state, "label": label,
                                      "todo": told(todo.format(feed=feed)), "count": 0,
                                      "amounts": defaultdict(Decimal), "transactions": []})
        item["count"] += entry.count
        for currency, amount in entry.amounts.items():
            item["amounts"][currency] += amount
        for row in _each_row(DETAIL_COLUMNS, entry.rows):
            if len(item["transactions"]) >= TRANSACTIONS_PER_ITEM:
                break
            currency = row["currency"]
            item["transactions"].append({
                "transaction_id": row["transaction_id"], "store_id": row["store_id"],
                "business_date": row["business_date"], "source_file": row["source_file"],
                "source_lines": row["source_lines"], "code": code or row["reject_code"],
                "amount": format_amount(row["amount"], currency) + (f" {currency}" if currency else ""),
                "message": row["error_message"]})
    # of the partly refunded returns, what the platform did refund: summary.csv's own figure
    refunded: dict[str, Decimal] = defaultdict(Decimal)
    for summary_row in summary_rows:
        if summary_row["origin"] in ("file", "ledger") and int(summary_row["partly_refunded_count"] or 0):
            refunded[summary_row["currency"]] += Decimal(summary_row["partly_refunded_amount"] or 0)
    order = [name for name, _ in FLOW_STATES]
    items = sorted(found.values(), key=lambda i: (order.index(i["state"]), i["key"] == i["state"], i["key"]))
    for item in items:
        figures = [("amount", "amount", item["amounts"])]
        if item["key"] == "partly_refunded":
            to_review = {c: a - refunded.get(c, Decimal(0)) for c, a in item["amounts"].items()}
            figures += [("refunded", "refunded by the platform", refunded),
                        ("to_review", "still to refund or review", to_review)]
        item["figures"] = [
            {"figure": figure, "label": label,
             "amounts": [{"currency": c or "(none)", "amount": format_amount(a, c) + (f" {c}" if c else "")}
                         for c, a in sorted(amounts.items())]}
            for figure, label, amounts in figures]
        item["more"] = item["count"] - len(item["transactions"])
        item["label"] = in_number(item["count"], *item["label"])
        del item["amounts"]
    return items


_environment = Environment(
    loader=PackageLoader("pipeline", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_environment.filters["counted"] = counted  # {{ n | counted("row") }}: "1 row", "2 rows"


def render_page(report: Report) -> str:
    """The whole ``report.html`` of ``report``."""
    return _environment.get_template("report.html.j2").render(page=page_data(report))
