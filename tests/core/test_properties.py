"""Invariants over generated exports: every row is accounted for, money balances exactly."""

from __future__ import annotations

from decimal import Decimal

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from pipeline.core.dedup import dedup
from tests.core.helpers import BASE, feed, row, run

prices = st.sampled_from(["0", "0.99", "2.50", "19.999", "1000", "-1.00", "abc", "", "3,5", "0.0001"])
quantities = st.sampled_from(["1", "2", "0.5", "-1", "-2", "0", "x", "", "1.2345"])
totals = st.sampled_from(["", "", "", "5.00", "-3.00", "bad"])
kinds = st.sampled_from(["", "sale", "sale", "return", "void", "bogus"])
currencies = st.sampled_from(["GBP", "GBP", "GBP", "EUR", "XXX", ""])
customers = st.sampled_from(["C1", "C2", "", ""])
timestamps = st.sampled_from(
    [
        "2026-11-20 10:00:00",
        "2026-11-20T09:00:00+01:00",
        "2026-11-20 23:59:59",
        "garbage",
        "2026-11-29 10:00:00",
    ]
)


@st.composite
def exports(draw: st.DrawFn) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for t in range(draw(st.integers(min_value=0, max_value=8))):
        kind, currency, customer, stamp = draw(kinds), draw(currencies), draw(customers), draw(timestamps)
        for n in range(draw(st.integers(min_value=1, max_value=4))):
            rows.append(
                row(
                    transaction_id=draw(st.sampled_from([f"T{t}", f"T{t}", "T0", ""])),
                    line_no=draw(st.sampled_from([str(n + 1), str(n + 1), "1", ""])),
                    product_id=f"P{n}",
                    transaction_type=kind,
                    currency=currency,
                    customer_id=customer,
                    timestamp=stamp,
                    quantity=draw(quantities),
                    unit_price=draw(prices),
                    line_total=draw(totals),
                    transaction_total=draw(st.sampled_from(["", "", "7.50"])),
                )
            )
    if rows and draw(st.booleans()):
        rows += rows[: draw(st.integers(min_value=1, max_value=len(rows)))]  # a repeated block
    return rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exports())
def test_every_row_is_valid_or_rejected_and_money_balances(rows: list[dict[str, str]]) -> None:
    result = run(rows, feed(timezone="Europe/London"))
    s = result.summary
    assert s["rows_in"] == len(rows) == s["rows_valid"] + s["rows_rejected"]
    for amounts in s["currencies"].values():  # money balances per currency
        keys = ("amount_in", "amount_valid", "amount_rejected")
        amount_in, valid, rejected = (Decimal(amounts[k]) for k in keys)
        assert amount_in == valid + rejected
    assert sum(s["rejects_by_code"].values()) == s["rows_rejected"]
    assert s["transactions_in"] == s["transactions_valid"] + s["transactions_rejected"]
    # each row ends up exactly once: as an item of a checkout or as a reject
    item_lines = sorted(result.items.get_column("source_line").to_list())
    reject_lines = sorted(result.rejects.get_column("source_line").to_list())
    assert sorted(item_lines + reject_lines) == list(range(2, len(rows) + 2))
    # the valid money is the money of the items
    items_total = result.items.get_column("line_total").sum() if result.items.height else Decimal(0)
    valid = sum((Decimal(a["amount_valid"]) for a in s["currencies"].values()), Decimal(0))
    assert valid == Decimal(items_total or 0)
    # a transaction is atomic: no transaction has both valid and rejected lines in one copy
    assert s["transactions_valid"] == result.checkouts.height
    # every rejected row carries a code, a field and a reason
    explained = result.rejects.select("reject_code", "reject_field", "reject_reason")
    assert sum(explained.null_count().row(0)) == 0


# text a careless till or a hostile export may put anywhere: each field's value with some of its
# digits written in another script (Arabic-Indic, full-width, Devanagari), or arbitrary text of
# digits, signs, separators, exponents and spaces of every kind
SCRIPT_DIGITS = ("\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",
                 "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19",
                 "\u0966\u0967\u0968\u0969\u096a\u096b\u096c\u096d\u096e\u096f")
HOSTILE = "0123456789+-.,:;eE TZ/\u00a0\u2007\u00b2\u2155" + "".join(SCRIPT_DIGITS)
TEMPLATES = {**BASE, "timestamp": "2026-11-20T10:00:00+01:00", "transaction_total": "5.00",
             "points_burned": "10"}


@st.composite
def hostile_values(draw: st.DrawFn, template: str) -> str:
    if draw(st.booleans()):
        return draw(st.text(alphabet=HOSTILE, max_size=26))
    digits = draw(st.sampled_from(SCRIPT_DIGITS))
    return "".join(digits[int(ch)] if ch.isdigit() and draw(st.booleans()) else ch for ch in template)


@st.composite
def hostile_rows(draw: st.DrawFn) -> list[dict[str, str]]:
    field = draw(st.sampled_from(sorted(TEMPLATES)))
    first, second = (draw(hostile_values(TEMPLATES[field])) for _ in range(2))
    return [row(**{field: first}), row(**{"transaction_id": "T2", "line_no": "1", field: second})]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_rows())
def test_any_text_in_any_field_is_read_or_rejected_never_a_crash(rows: list[dict[str, str]]) -> None:
    """Before, a timestamp offset written in Arabic-Indic digits crashed the whole transform."""
    result = run(rows, feed(timezone="Europe/London"))
    s = result.summary
    assert s["rows_in"] == 2 == s["rows_valid"] + s["rows_rejected"]
    explained = result.rejects.select("reject_code", "reject_field", "reject_reason")
    assert sum(explained.null_count().row(0)) == 0


ids = st.sampled_from(["a", "b", "c", "d"])
hashes = st.sampled_from(["h1", "h2", "h3"])
pairs = st.lists(st.tuples(ids, hashes), max_size=12)


def frame_of(items: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"transaction_id": [i for i, _ in items], "content_hash": [h for _, h in items]},
        schema={"transaction_id": pl.String, "content_hash": pl.String},
    )


@settings(max_examples=100, deadline=None)
@given(pairs, pairs)
def test_dedup_is_idempotent(batch: list[tuple[str, str]], seen: list[tuple[str, str]]) -> None:
    frame, known = frame_of(batch), frame_of(seen)
    once = dedup(frame, known)
    assert_frame_equal(dedup(once, known), once)
    # what was new, once known, is a duplicate; nothing new appears and no conflict disappears
    learned = pl.concat([known, once.filter(pl.col("dedup_status") == "new").select(known.columns)])
    again = dedup(frame, learned)
    assert "new" not in again.get_column("dedup_status").to_list()
    was_conflict = once.get_column("dedup_status") == "conflict"
    assert (again.get_column("dedup_status").filter(was_conflict) == "conflict").all()
    # at most one new checkout per transaction id
    news = once.filter(pl.col("dedup_status") == "new").get_column("transaction_id")
    assert news.n_unique() == news.len()
