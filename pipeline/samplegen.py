"""Deterministic sample POS exports: the files in ``sample_data/`` and the benchmark's fallback data.

Two retailers deliver exports for business date 2026-11-20:

* **acme** (canonical layout, UTF-8, ``,``): stores LON01 (Europe/London, GBP), BER01
  (Europe/Berlin, EUR) and NYC01 (America/New_York, USD). Each store sends one file per opening
  hour (``pos_<store>_20261120_<HH>.csv``, local hour) and one daily file with every transaction
  of the day (``pos_<store>_20261120_daily.csv``). The hourly files overlap each other and the
  daily file, as real tills do, and one hour per store never arrives hourly, so the daily file has
  something left to deliver. LON01 also sends the day's loyalty sign-ups
  (``members_LON01_20261120.csv``) and guest receipts claimed by those members
  (``claims_LON01_20261120.csv``).
* **bistro** (a second vendor, own column names, ``;`` delimiter, decimal comma, day-first
  timestamps): PAR01 and BRU01 export daily files in cp1252 (``€`` and accents in product
  names); LYS01's newer web till exports the same layout as UTF-8 with a byte order mark.

The defects are deliberate and documented in ``sample_data/README.md``: bad rows (unparseable
price, missing product id, unknown currency, line total mismatch, ...), a conflicting duplicate
(the daily file corrects a transaction the hourly file already delivered), exact repeats across
hourly files, guests, returns with and without ``original_transaction_id`` and voids.

Everything is a pure function of the seed: :func:`build_sample` returns the file contents by
relative path and :func:`write_sample` writes them. Regenerate the committed files with::

    python -m pipeline.samplegen sample_data
"""

from __future__ import annotations

import argparse
import csv
import io
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import polars as pl

from pipeline.records import CANONICAL_COLUMNS

__all__ = [
    "ACME_STORES",
    "BISTRO_COLUMNS",
    "BISTRO_STORES",
    "BUSINESS_DATE",
    "DEFAULT_SEED",
    "Line",
    "Store",
    "Transaction",
    "acme_day",
    "bistro_day",
    "build_sample",
    "main",
    "online_retail_like",
    "write_sample",
]

BUSINESS_DATE = date(2026, 11, 20)
DEFAULT_SEED = 20261120
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Store:
    """One store of a sample retailer."""

    store_id: str
    timezone: str
    currency: str
    registers: tuple[str, ...]
    opening_hour: int  # local hour of the first sale
    closing_hour: int  # local hour the doors close (no sale at or after it)
    busyness: float  # mean transactions per hour at the quietest time
    missing_hour: int | None = None  # the hourly export that never arrives


ACME_STORES: tuple[Store, ...] = (
    Store("LON01", "Europe/London", "GBP", ("R1", "R2", "R3"), 8, 21, 34.0, missing_hour=20),
    Store("BER01", "Europe/Berlin", "EUR", ("K1", "K2"), 8, 20, 27.0, missing_hour=14),
    Store("NYC01", "America/New_York", "USD", ("T1", "T2"), 9, 21, 30.0, missing_hour=20),
)

BISTRO_STORES: tuple[Store, ...] = (
    Store("PAR01", "Europe/Paris", "EUR", ("C1", "C2"), 7, 23, 13.0),
    Store("BRU01", "Europe/Brussels", "EUR", ("C1",), 8, 22, 10.0),
    Store("LYS01", "Europe/Paris", "EUR", ("W1",), 11, 23, 11.0),
)

# product id, name, category, price in GBP (scaled per currency below); weighed items sell by kg
_ACME_CATALOG: tuple[tuple[str, str, str, str], ...] = (
    ("100101", "Whole milk 1l", "dairy", "1.15"),
    ("100102", "Greek yoghurt 500g", "dairy", "2.35"),
    ("100103", "Butter 250g", "dairy", "2.49"),
    ("100104", "Cheddar 400g", "dairy", "3.80"),
    ("100201", "Sourdough loaf", "bakery", "3.20"),
    ("100202", "Croissant", "bakery", "0.95"),
    ("100203", "Brötchen 6-pack", "bakery", "1.99"),
    ("100204", "Pain au chocolat", "bakery", "1.10"),
    ("100301", "Bananas (kg)", "produce", "1.09"),
    ("100302", "Apples Braeburn (kg)", "produce", "2.39"),
    ("100303", "Tomatoes on the vine (kg)", "produce", "3.49"),
    ("100304", "Avocado", "produce", "0.89"),
    ("100401", "Café latte to go", "coffee", "2.90"),
    ("100402", "Espresso beans 1kg", "coffee", "14.50"),
    ("100403", "Flat white", "coffee", "3.10"),
    ("100501", "Sparkling water 6x1.5l", "drinks", "3.60"),
    ("100502", "Orange juice 1l", "drinks", "2.15"),
    ("100503", "Rioja Crianza 75cl", "drinks", "9.99"),
    ("100504", "IPA 4x440ml", "drinks", "6.50"),
    ("100601", "Dish soap 500ml", "household", "1.75"),
    ("100602", "Paper towels 4 rolls", "household", "4.25"),
    ("100603", "Laundry capsules 30", "household", "8.99"),
    ("100701", "Chocolate bar 100g", "snacks", "1.29"),
    ("100702", "Crisps sea salt 150g", "snacks", "1.85"),
    ("100703", "Mixed nuts 200g", "snacks", "3.95"),
    ("100801", "Gift card", "services", "25.00"),
    ("100802", "Reusable bag", "services", "0.50"),
)
_WEIGHED = frozenset({"100301", "100302", "100303"})
_CURRENCY_FACTOR = {"GBP": Decimal("1"), "EUR": Decimal("1.15"), "USD": Decimal("1.27")}

_BISTRO_CATALOG: tuple[tuple[str, str, str, str], ...] = (
    ("B01", "Café crème", "boissons", "3.20"),
    ("B02", "Thé à la menthe", "boissons", "3.50"),
    ("B03", "Jus d'orange pressé", "boissons", "4.80"),
    ("B04", "Bière pression 50cl", "boissons", "6.50"),
    ("P01", "Croque-monsieur; salade", "plats", "11.50"),
    ("P02", "Quiche lorraine", "plats", "9.80"),
    ("P03", "Moules-frites", "plats", "16.90"),
    ("P04", "Menu du jour 14,90 €", "menus", "14.90"),
    ("P05", "Salade niçoise", "plats", "12.40"),
    ("D01", "Crème brûlée", "desserts", "6.20"),
    ("D02", "Tarte Tatin", "desserts", "6.80"),
    ("D03", "Gaufre de Liège", "desserts", "4.50"),
)

BISTRO_COLUMNS: dict[str, str] = {
    # canonical name -> the bistro export's column name
    "transaction_id": "Ticket",
    "store_id": "Magasin",
    "register_id": "Caisse",
    "timestamp": "DateHeure",
    "customer_id": "Carte fidélité",
    "line_no": "Ligne",
    "product_id": "Article",
    "product_name": "Libellé",
    "product_category": "Rayon",
    "quantity": "Qté",
    "unit_price": "Prix unitaire",
    "discount": "Remise",
    "line_total": "Montant",
}
BISTRO_CURRENCY = "EUR"  # the bistro export has no currency column: the feed sets a default


@dataclass(frozen=True)
class Line:
    """One line item as an export writes it (money as exact decimals)."""

    product_id: str
    product_name: str
    product_category: str
    quantity: Decimal
    unit_price: Decimal
    discount: Decimal

    @property
    def line_total(self) -> Decimal:
        """quantity × unit_price − discount, rounded to cents as the till prints it."""
        return (self.quantity * self.unit_price - self.discount).quantize(CENT, ROUND_HALF_UP)


@dataclass(frozen=True)
class Transaction:
    """One till transaction.

    ``overrides`` are deliberate defects: ``(line index or None for every line, column, text)``
    replaces the written cell.
    """

    transaction_id: str
    store: Store
    register_id: str
    local_time: datetime
    customer_id: str | None
    transaction_type: str
    lines: tuple[Line, ...]
    original_transaction_id: str | None = None
    points_burned: Decimal | None = None
    overrides: tuple[tuple[int | None, str, str], ...] = ()

    @property
    def total(self) -> Decimal:
        """Sum of the line totals."""
        return sum((line.line_total for line in self.lines), Decimal("0"))


def _money(value: Decimal) -> str:
    return str(value.quantize(CENT, ROUND_HALF_UP))


def _quantity(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text


def _hour_weights(store: Store) -> dict[int, float]:
    """Mean transactions per local hour: a lunch peak and an after-work peak."""
    weights = {}
    for hour in range(store.opening_hour, store.closing_hour):
        peak = 1.0
        if hour in (12, 13):
            peak = 2.2
        elif hour in (17, 18):
            peak = 1.9
        elif hour in (11, 16, 19):
            peak = 1.4
        weights[hour] = store.busyness * peak
    return weights


def _draw_lines(rng: random.Random, catalog: Sequence[tuple[str, str, str, str]], factor: Decimal,
                weighed: frozenset[str]) -> tuple[Line, ...]:
    count = rng.choices((1, 2, 3, 4, 5, 6), weights=(34, 26, 18, 12, 6, 4))[0]
    products = rng.sample(list(catalog), k=min(count, len(catalog)))
    lines = []
    for product_id, name, category, price in products:
        unit_price = (Decimal(price) * factor).quantize(CENT, ROUND_HALF_UP)
        if product_id in weighed:
            quantity = Decimal(rng.randint(150, 2400)) / Decimal(1000)
        else:
            quantity = Decimal(rng.choices((1, 2, 3, 4, 6), weights=(70, 18, 6, 4, 2))[0])
        discount = Decimal("0")
        if rng.random() < 0.08:
            gross = quantity * unit_price
            discount = (gross * Decimal(rng.choice((10, 20, 25))) / 100).quantize(CENT, ROUND_HALF_UP)
        lines.append(Line(product_id, name, category, quantity, unit_price, discount))
    return tuple(lines)


def _day_of_store(rng: random.Random, store: Store, business_date: date,
                  catalog: Sequence[tuple[str, str, str, str]], weighed: frozenset[str],
                  customers: Sequence[str], guest_share: float,
                  factor: Decimal = Decimal("1")) -> list[Transaction]:
    """Every sale of one store for one day, in time order, ids numbered per register."""
    moments: list[tuple[datetime, str]] = []
    for hour, mean in _hour_weights(store).items():
        count = max(1, round(rng.gauss(mean, mean * 0.15)))
        for _ in range(count):
            second = rng.randrange(3600)
            moment = datetime.combine(business_date, datetime.min.time()).replace(hour=hour)
            moments.append((moment + timedelta(seconds=second), rng.choice(store.registers)))
    moments.sort()
    sequence = dict.fromkeys(store.registers, 0)
    transactions = []
    stamp = business_date.strftime("%Y%m%d")
    for moment, register in moments:
        sequence[register] += 1
        customer = None if rng.random() < guest_share else rng.choice(customers)
        points = None
        if customer is not None and rng.random() < 0.04:
            points = Decimal(rng.choice((100, 200, 500)))
        transactions.append(
            Transaction(
                transaction_id=f"{store.store_id}-{register}-{stamp}-{sequence[register]:04d}",
                store=store,
                register_id=register,
                local_time=moment,
                customer_id=customer,
                transaction_type="sale",
                lines=_draw_lines(rng, catalog, factor, weighed),
                points_burned=points,
            )
        )
    return transactions


def _as_return(sale: Transaction, *, original: Transaction | None, rng: random.Random) -> Transaction:
    """A refund of one or two lines: negative quantities, optionally naming the original sale."""
    source = original.lines if original is not None else sale.lines
    kept = source[: rng.randint(1, min(2, len(source)))]
    # refunds are at the undiscounted shelf price: a discount is never negative
    lines = tuple(replace(line, quantity=-line.quantity, discount=Decimal("0")) for line in kept)
    return replace(
        sale,
        transaction_type="return",
        lines=lines,
        customer_id=original.customer_id if original is not None else sale.customer_id,
        original_transaction_id=original.transaction_id if original is not None else None,
        points_burned=None,
    )


def _with_returns_and_voids(rng: random.Random, day: list[Transaction]) -> list[Transaction]:
    """Turn a few sales into returns (half of them naming the original sale) and voids."""
    result = list(day)
    candidates = list(range(len(result) // 3, len(result)))
    picks = rng.sample(candidates, k=max(4, len(result) // 45))
    for number, index in enumerate(sorted(picks)):
        sale = result[index]
        if number == 0:
            result[index] = replace(sale, transaction_type="void", points_burned=None)
        elif number % 2 == 1:
            earlier = [t for t in result[: index // 2] if t.transaction_type == "sale"]
            result[index] = _as_return(sale, original=rng.choice(earlier), rng=rng)
        else:
            result[index] = _as_return(sale, original=None, rng=rng)
    return result


def _defective(transaction: Transaction, *overrides: tuple[int | None, str, str]) -> Transaction:
    return replace(transaction, overrides=transaction.overrides + tuple(overrides))


def _in_hour(day: Sequence[Transaction], hour: int, nth: int = 0) -> int:
    """Index of the ``nth`` sale of a local hour (defects go on plain sales, predictably)."""
    found = [i for i, t in enumerate(day) if t.local_time.hour == hour and t.transaction_type == "sale"]
    return found[nth]


@dataclass(frozen=True)
class AcmeDay:
    """One acme store's day: what the daily file holds and what the hourly files hold."""

    store: Store
    daily: tuple[Transaction, ...]
    hourly: dict[int, tuple[Transaction, ...]]


def acme_day(store: Store, *, seed: int = DEFAULT_SEED, business_date: date = BUSINESS_DATE) -> AcmeDay:
    """One acme store's transactions for a day, defects included, split into hourly and daily files."""
    rng = random.Random(f"{seed}:acme:{store.store_id}")
    customers = [f"M{rng.randrange(10**6):06d}" for _ in range(260)]
    factor = _CURRENCY_FACTOR[store.currency]
    day = _day_of_store(rng, store, business_date, _ACME_CATALOG, _WEIGHED, customers, 0.3, factor)
    day = _with_returns_and_voids(rng, day)

    # deliberate defects, each on a known sale: (local hour, (line index, column, text))
    defects: dict[str, list[tuple[int, tuple[int | None, str, str]]]] = {
        "LON01": [
            (9, (0, "unit_price", "2.4O")),  # letter O: unparseable price
            (12, (0, "currency", "GPB")),  # typo: unknown currency
            (17, (0, "line_total", "")),  # placeholder, replaced below by a wrong total
        ],
        "BER01": [
            (10, (0, "product_id", "")),  # missing product id
            (16, (0, "quantity", "0")),  # a sale of nothing
            (18, (None, "timestamp", f"{business_date:%Y}-01-01 00:00:17")),  # till clock reset
        ],
        "NYC01": [
            (11, (0, "unit_price", "N/A")),  # unparseable price
            (15, (0, "line_total", "")),  # wrong total, below
            (19, (None, "transaction_total", "")),  # header total does not match its lines, below
        ],
    }
    for hour, (line_index, column, value) in defects[store.store_id]:
        index = _in_hour(day, hour, 1)
        sale = day[index]
        if column == "line_total" and line_index is not None:
            value = _money(sale.lines[line_index].line_total + Decimal("1.00"))
        elif column == "transaction_total":
            value = _money(sale.total - Decimal("0.50"))
        day[index] = _defective(sale, (line_index, column, value))

    hourly: dict[int, list[Transaction]] = {}
    for transaction in day:
        hourly.setdefault(transaction.local_time.hour, []).append(transaction)

    # the daily export corrects a transaction the hourly file already delivered: a conflict
    corrected_hour = {"LON01": 10, "BER01": 12, "NYC01": 13}[store.store_id]
    index = _in_hour(day, corrected_hour, 2)
    original = day[index]
    first = original.lines[0]
    corrected_line = replace(first, unit_price=first.unit_price - Decimal("0.20"))
    daily = list(day)
    daily[index] = replace(original, lines=(corrected_line, *original.lines[1:]))

    # the till re-sends the last two transactions of an hour at the top of the next hour's file
    resent_hour = {"LON01": 10, "BER01": 15, "NYC01": 12}[store.store_id]
    hourly[resent_hour + 1] = hourly[resent_hour][-2:] + hourly[resent_hour + 1]

    if store.missing_hour is not None:
        del hourly[store.missing_hour]
    return AcmeDay(store, tuple(daily), {hour: tuple(ts) for hour, ts in sorted(hourly.items())})


def _canonical_rows(transaction: Transaction, business_date: date) -> list[dict[str, str]]:
    rows = []
    for number, line in enumerate(transaction.lines, start=1):
        row = {
            "transaction_id": transaction.transaction_id,
            "store_id": transaction.store.store_id,
            "register_id": transaction.register_id,
            "timestamp": transaction.local_time.strftime("%Y-%m-%d %H:%M:%S"),
            "business_date": business_date.isoformat(),
            "customer_id": transaction.customer_id or "",
            "transaction_type": transaction.transaction_type,
            "line_no": str(number),
            "product_id": line.product_id,
            "product_name": line.product_name,
            "product_category": line.product_category,
            "quantity": _quantity(line.quantity),
            "unit_price": _money(line.unit_price),
            "discount": _money(line.discount) if line.discount else "",
            "line_total": _money(line.line_total),
            "currency": transaction.store.currency,
            "transaction_total": _money(transaction.total),
            "points_burned": str(transaction.points_burned) if transaction.points_burned else "",
            "original_transaction_id": transaction.original_transaction_id or "",
        }
        for index, column, value in transaction.overrides:
            if index is None or index == number - 1:
                row[column] = value
        rows.append(row)
    return rows


def _csv_bytes(header: Sequence[str], rows: Iterable[Sequence[str]], *, delimiter: str = ",",
               encoding: str = "utf-8", newline: str = "\n") -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=newline, quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode(encoding)


def _acme_file(transactions: Iterable[Transaction], business_date: date) -> bytes:
    rows = [
        [row[column] for column in CANONICAL_COLUMNS]
        for transaction in transactions
        for row in _canonical_rows(transaction, business_date)
    ]
    return _csv_bytes(CANONICAL_COLUMNS, rows)


def bistro_day(store: Store, *, seed: int = DEFAULT_SEED,
               business_date: date = BUSINESS_DATE) -> tuple[Transaction, ...]:
    """One bistro's day: table tickets, a third of them loyalty-card holders, a refund and bad rows."""
    rng = random.Random(f"{seed}:bistro:{store.store_id}")
    customers = [f"FID{rng.randrange(10**5):05d}" for _ in range(120)]
    day = _day_of_store(rng, store, business_date, _BISTRO_CATALOG, frozenset(), customers, 0.65)
    # tickets are numbered per store, not per register
    day = [
        replace(t, transaction_id=f"{store.store_id}-{business_date:%y%m%d}-{n:05d}")
        for n, t in enumerate(day, start=1)
    ]
    refund_at = _in_hour(day, store.closing_hour - 2)
    day[refund_at] = _as_return(day[refund_at], original=None, rng=rng)
    bad_price = _in_hour(day, store.opening_hour + 2)
    day[bad_price] = _defective(day[bad_price], (0, "unit_price", "4,5O"))
    bad_total = _in_hour(day, store.opening_hour + 5)
    wrong = day[bad_total].lines[0].line_total + Decimal("2")
    day[bad_total] = _defective(day[bad_total], (0, "line_total", _money(wrong).replace(".", ",")))
    return tuple(day)


def _bistro_file(transactions: Iterable[Transaction], *, encoding: str) -> bytes:
    """The bistro layout: `;`, decimal comma, day-first timestamps, CRLF, given encoding."""
    header = list(BISTRO_COLUMNS.values())
    rows = []
    for transaction in transactions:
        for row in _canonical_rows(transaction, BUSINESS_DATE):
            row["timestamp"] = transaction.local_time.strftime("%d/%m/%Y %H:%M")
            for column in ("quantity", "unit_price", "discount", "line_total"):
                if not any(o[1] == column and o[0] in (None, int(row["line_no"]) - 1)
                           for o in transaction.overrides):
                    row[column] = row[column].replace(".", ",")
            rows.append([row[canonical] for canonical in BISTRO_COLUMNS])
    return _csv_bytes(header, rows, delimiter=";", encoding=encoding, newline="\r\n")


# the day's loyalty sign-ups at LON01 (records = "enrollments"): five members, a bad email, one
# with no contact, an exact repeat and a member enrolled again with another email
_MEMBERS = (
    ("N900001", "sam.jones@example.org", "Sam", "Jones", "+44 20 7946 0101", "1990-04-12", "10:02",
     "true", "false"),
    ("N900002", "ada.price@example.org", "Ada", "Price", "", "1985-09-30", "10:15", "yes", "no"),
    ("N900003", "", "Leo", "Grant", "07700 900123", "", "11:05", "false", "true"),
    ("N900004", "mia.ward@example", "Mia", "Ward", "", "1999-01-01", "11:20", "true", "true"),
    ("N900005", "noah.hill@example.org", "Noah", "Hill", "+44 7700 900456", "2001-07-07", "12:40",
     "true", "false"),
    ("N900001", "sam.jones@example.org", "Sam", "Jones", "+44 20 7946 0101", "1990-04-12", "10:02",
     "true", "false"),
    ("N900002", "ada.price@example.net", "Ada", "Price", "", "1985-09-30", "13:10", "yes", "no"),
    ("N900006", "", "Ivy", "Stone", "", "1992-02-02", "13:30", "false", "false"),
)


def _members_file(business_date: date) -> bytes:
    header = ("customer_id", "email", "first_name", "last_name", "phone", "birth_date", "store_id",
              "enrolled_at", "language", "consent_email", "consent_sms")
    rows = [(cid, email, first, last, phone, born, "LON01",
             f"{business_date.isoformat()}T{at}:00+00:00", "en", mail_ok, sms_ok)
            for cid, email, first, last, phone, born, at, mail_ok, sms_ok in _MEMBERS]
    return _csv_bytes(header, rows)


def _claims_file(day: AcmeDay, business_date: date) -> bytes:
    """Guest receipts of LON01 claimed by members enrolled the same day: the first guest sale of
    each register at 10:00 and of R1 at 11:00, a receipt no till printed, a repeat, a row without
    transaction_id."""
    def first_guest(hour: int, register: str) -> str:
        return min(t.transaction_id for t in day.daily
                   if t.customer_id is None and t.register_id == register and t.local_time.hour == hour
                   and t.transaction_type == "sale")

    iso = business_date.isoformat()
    stamp = business_date.strftime("%Y%m%d")
    claimed = [(first_guest(10, "R1"), "N900001", "10:30"), (first_guest(10, "R2"), "N900002", "10:40"),
               (first_guest(10, "R3"), "N900003", "11:10"), (first_guest(11, "R1"), "N900005", "12:45"),
               (f"LON01-R9-{stamp}-9999", "N900005", "12:50")]
    rows = [(tid, member, f"{iso}T{at}:00+00:00", "LON01") for tid, member, at in claimed]
    rows += [(claimed[0][0], "N900001", f"{iso}T14:00:00+00:00", "LON01"),
             ("", "N900003", f"{iso}T14:05:00+00:00", "LON01")]
    return _csv_bytes(("transaction_id", "customer_id", "claimed_at", "store_id"), rows)


def build_sample(seed: int = DEFAULT_SEED, business_date: date = BUSINESS_DATE) -> dict[str, bytes]:
    """Every sample file's bytes by its path relative to ``sample_data/`` (pure, deterministic)."""
    stamp = business_date.strftime("%Y%m%d")
    files: dict[str, bytes] = {}
    for store in ACME_STORES:
        day = acme_day(store, seed=seed, business_date=business_date)
        files[f"acme/pos_{store.store_id}_{stamp}_daily.csv"] = _acme_file(day.daily, business_date)
        for hour, transactions in day.hourly.items():
            files[f"acme/pos_{store.store_id}_{stamp}_{hour:02d}.csv"] = _acme_file(
                transactions, business_date
            )
        if store.store_id == "LON01":
            files[f"acme/members_LON01_{stamp}.csv"] = _members_file(business_date)
            files[f"acme/claims_LON01_{stamp}.csv"] = _claims_file(day, business_date)
    for store in BISTRO_STORES:
        transactions = bistro_day(store, seed=seed, business_date=business_date)
        if store.store_id == "LYS01":  # the web till: UTF-8 with a byte order mark
            files[f"bistro_web/ventes_{store.store_id}_{stamp}.csv"] = _bistro_file(
                transactions, encoding="utf-8-sig"
            )
        else:
            files[f"bistro/ventes_{store.store_id}_{stamp}.csv"] = _bistro_file(
                transactions, encoding="cp1252"
            )
    return dict(sorted(files.items()))


def write_sample(out_dir: Path, *, seed: int = DEFAULT_SEED,
                 business_date: date = BUSINESS_DATE) -> list[Path]:
    """Write the sample files under ``out_dir`` (creating folders) and return their paths."""
    written = []
    for relative, content in build_sample(seed, business_date).items():
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written


_RETAIL_PRODUCTS: tuple[tuple[str, str, str], ...] = (
    ("85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "2.55"),
    ("71053", "WHITE METAL LANTERN", "3.39"),
    ("84406B", "CREAM CUPID HEARTS COAT HANGER", "2.75"),
    ("22752", "SET 7 BABUSHKA NESTING BOXES", "7.65"),
    ("21730", "GLASS STAR FROSTED T-LIGHT HOLDER", "4.25"),
    ("22633", "HAND WARMER UNION JACK", "1.85"),
    ("84879", "ASSORTED COLOUR BIRD ORNAMENT", "1.69"),
    ("22745", "POPPY'S PLAYHOUSE BEDROOM", "2.10"),
    ("47566", "PARTY BUNTING", "4.95"),
    ("20725", "LUNCH BAG RED RETROSPOT", "1.65"),
    ("POST", "POSTAGE", "18.00"),
    ("M", "Manual", "0.85"),
)
_RETAIL_COUNTRIES = ("United Kingdom",) * 9 + ("Germany", "France", "EIRE")


def online_retail_like(rows: int, *, seed: int = DEFAULT_SEED) -> pl.DataFrame:
    """A synthetic frame shaped like UCI Online Retail (same columns and types, similar quirks).

    Used when the real data set is absent: invoices of 1-30 lines, a quarter without CustomerID,
    ~2% cancellations ("C" invoices, negative quantities), a few zero prices.
    """
    rng = random.Random(f"{seed}:online_retail:{rows}")
    columns: dict[str, list[object]] = {
        name: [] for name in ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate",
                              "UnitPrice", "CustomerID", "Country")
    }
    start = datetime(2010, 12, 1, 8, 0)
    invoice = 536365
    moment = start
    while len(columns["InvoiceNo"]) < rows:
        invoice += 1
        moment += timedelta(minutes=rng.randint(1, 40))
        cancelled = rng.random() < 0.02
        customer = None if rng.random() < 0.25 else float(rng.randint(12346, 18287))
        country = rng.choice(_RETAIL_COUNTRIES)
        for _ in range(min(rng.randint(1, 30), rows - len(columns["InvoiceNo"]))):
            code, name, price = rng.choice(_RETAIL_PRODUCTS)
            quantity = rng.choice((1, 2, 3, 4, 6, 12, 24))
            unit_price = 0.0 if rng.random() < 0.005 else float(price)
            columns["InvoiceNo"].append(f"C{invoice}" if cancelled else str(invoice))
            columns["StockCode"].append(code)
            columns["Description"].append(name)
            columns["Quantity"].append(-quantity if cancelled else quantity)
            columns["InvoiceDate"].append(moment.strftime("%Y-%m-%d %H:%M:%S"))
            columns["UnitPrice"].append(unit_price)
            columns["CustomerID"].append(customer)
            columns["Country"].append(country)
    return pl.DataFrame(
        columns,
        schema={"InvoiceNo": pl.String, "StockCode": pl.String, "Description": pl.String,
                "Quantity": pl.Int64, "InvoiceDate": pl.String, "UnitPrice": pl.Float64,
                "CustomerID": pl.Float64, "Country": pl.String},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.samplegen OUT_DIR [--seed N]`: write the sample files."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.samplegen", description=main.__doc__)
    parser.add_argument("out_dir", type=Path, help="folder to write into (e.g. sample_data)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    paths = write_sample(args.out_dir, seed=args.seed)
    total = sum(path.stat().st_size for path in paths)
    print(f"wrote {len(paths)} files, {total:,} bytes, under {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
