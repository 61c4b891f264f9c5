"""A chain's business day of POS exports at any size, generated vectorized (numpy + polars).

The day has ``stores`` stores, each with one daily file holding all of its transactions and hourly
files for the first ``hourly_share`` of its trading hours, which repeat those transactions exactly
(the overlap the ledger must count and skip). A few transactions come back in an hourly file with
different content (conflicts), about 1% of the line items carry a defect that validation rejects,
~14% of checkouts are guests (as in UCI Online Retail: 3,710 of its 25,900 invoices have no
customer), ~3% are returns and ~0.5% voids. Files use the canonical export layout
(no column mapping needed), money as decimal strings, local timestamps without an offset.

``line_items`` is the number of rows across all files, overlap included. Same seed, same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.records import CANONICAL_COLUMNS

__all__ = ["GUEST_SHARE", "Workload", "WorkloadSpec", "generate_lines", "write_workload"]

OPEN_HOUR = 8
CLOSE_HOUR = 22
PRODUCTS = 5_000
CATEGORIES = ("grocery", "dairy", "bakery", "household", "drinks", "frozen", "produce", "health")
KIND_SALE, KIND_RETURN, KIND_VOID = 0, 1, 2
# checkouts without a customer, as in the UCI Online Retail data set (3,710 of 25,900 invoices)
GUEST_SHARE = 0.143
DEFECTS = ("missing_product", "bad_price", "bad_currency", "bad_timestamp", "line_total_mismatch")


@dataclass(frozen=True)
class WorkloadSpec:
    """What to generate."""

    line_items: int = 1_000_000
    business_date: date = date(2026, 11, 20)
    stores: int | None = None  # None: one store per ~25,000 line items (4..200)
    hourly_share: float = 0.25  # share of trading hours also exported hourly (repeated in the daily file)
    guest_share: float = GUEST_SHARE
    return_share: float = 0.03
    void_share: float = 0.005
    defect_share: float = 0.01  # line items with a defect validation rejects
    conflict_share: float = 0.0005  # transactions re-exported hourly with different content
    currency: str = "GBP"
    seed: int = 20261120

    @property
    def store_count(self) -> int:
        """The number of stores."""
        if self.stores is not None:
            return self.stores
        return int(min(200, max(4, self.line_items // 25_000)))


@dataclass(frozen=True)
class Workload:
    """What was written."""

    folder: Path
    files: tuple[Path, ...]
    line_items: int  # rows across all files
    unique_line_items: int  # rows of distinct transactions
    transactions: int  # distinct transaction ids
    repeated_transactions: int  # exact repeats in hourly files
    conflicting_transactions: int
    defect_lines: int
    bytes: int


def _money(cents: pl.Expr) -> pl.Expr:
    """Integer cents as a decimal string ("-12.05")."""
    magnitude = cents.abs()
    sign = pl.when(cents < 0).then(pl.lit("-")).otherwise(pl.lit(""))
    return pl.concat_str(
        sign,
        (magnitude // 100).cast(pl.String),
        pl.lit("."),
        (magnitude % 100).cast(pl.String).str.zfill(2),
    )


def _store_id(store: pl.Expr) -> pl.Expr:
    return pl.format("S{}", (store + 1).cast(pl.String).str.zfill(3))


def _register_id(register: pl.Expr) -> pl.Expr:
    return pl.format("R{}", register.cast(pl.String).str.zfill(2))


def _hourly_hours(spec: WorkloadSpec) -> int:
    return round((CLOSE_HOUR - OPEN_HOUR) * spec.hourly_share)


def _originals(kind: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sale each return gives back: an earlier one (transactions are in time order), each sale
    returned at most once (a full refund closes it), as late as possible. Returns with no sale
    left before them become sales. (kind, original index; 0 where not a return)."""
    sales = np.flatnonzero(kind == KIND_SALE)
    returns = np.flatnonzero(kind == KIND_RETURN)
    sales_before = np.searchsorted(sales, returns)  # sales rung up before each return
    # the latest distinct sale for each return: rank_j = min over k >= j of (before_k - 1 - k) + j
    order = np.arange(len(returns))
    slack = sales_before - 1 - order
    rank = np.minimum.accumulate(slack[::-1])[::-1] + order
    kind = kind.copy()
    kind[returns[rank < 0]] = KIND_SALE
    original = np.zeros(len(kind), dtype=np.int64)
    keep = rank >= 0
    original[returns[keep]] = sales[rank[keep]]
    return kind, original


def generate_lines(spec: WorkloadSpec) -> pl.DataFrame:
    """One row per distinct line item of the day, plus ``file_hour`` and ``defect`` helper columns.

    The frame holds the canonical columns as strings; exact repeats are added by :func:`write_workload`.
    """
    rng = np.random.default_rng(spec.seed)
    overlap = 1.0 + _hourly_hours(spec) / (CLOSE_HOUR - OPEN_HOUR)
    target_unique = max(1, round(spec.line_items / overlap))
    pool = target_unique // 2 + 64
    kind_draw = rng.random(pool)
    kind = np.where(
        kind_draw < spec.return_share,
        KIND_RETURN,
        np.where(kind_draw < spec.return_share + spec.void_share, KIND_VOID, KIND_SALE),
    )
    # a return gives back one line of an earlier sale; a sale has 1 + Poisson(2) lines
    items_per_txn = np.where(kind == KIND_RETURN, 1, 1 + rng.poisson(2.0, size=pool))
    cumulative = np.cumsum(items_per_txn)
    n_txn = int(np.searchsorted(cumulative, target_unique) + 1)
    items_per_txn = items_per_txn[:n_txn]
    items_per_txn[-1] -= int(cumulative[n_txn - 1] - target_unique)
    kind = kind[:n_txn]
    n_lines = int(items_per_txn.sum())
    first_line = np.cumsum(items_per_txn) - items_per_txn

    txn_index = np.arange(n_txn, dtype=np.int64)
    kind, original = _originals(kind)
    is_return = kind == KIND_RETURN

    stores = spec.store_count
    store = rng.integers(0, stores, size=n_txn)
    register = rng.integers(1, 7, size=n_txn)
    seconds = np.sort(rng.integers(OPEN_HOUR * 3600, CLOSE_HOUR * 3600, size=n_txn))
    guest = rng.random(n_txn) < spec.guest_share
    customer = rng.integers(1, max(10, n_txn // 4), size=n_txn)
    guest = np.where(is_return, guest[original], guest)  # the same customer brings it back
    customer = np.where(is_return, customer[original], customer)
    points = np.where((rng.random(n_txn) < 0.02) & ~is_return, 100 * rng.integers(1, 6, size=n_txn), 0)

    txns = pl.DataFrame(
        {
            "txn": txn_index,
            "store": store,
            "register": register,
            "seconds": seconds,
            "kind": kind,
            "guest": guest,
            "customer": customer,
            "points": points,
            "original": original,
        }
    ).with_columns(
        # per-store, per-register receipt numbers in time order
        receipt=pl.int_range(1, pl.len() + 1).over("store", "register"),
    )
    txn_ids = txns.select(
        pl.format(
            "{}-{}-{}",
            _store_id(pl.col("store")),
            _register_id(pl.col("register")),
            pl.col("receipt").cast(pl.String).str.zfill(6),
        )
    ).to_series()
    txns = txns.with_columns(
        transaction_id=txn_ids,
        original_transaction_id=pl.when(pl.col("kind") == KIND_RETURN)
        .then(txn_ids.gather(pl.Series(original)))
        .otherwise(pl.lit(None, dtype=pl.String)),
    )

    txn_of_line = np.repeat(txn_index, items_per_txn)
    line_no = np.arange(n_lines, dtype=np.int64) - first_line[txn_of_line] + 1
    product = np.minimum(rng.zipf(1.3, size=n_lines), PRODUCTS) - 1
    quantity = np.where(rng.random(n_lines) < 0.8, 1, rng.integers(2, 5, size=n_lines))
    # a return's one line is its sale's first line, which is never discounted: the refund
    # never exceeds what was paid
    return_line = is_return[txn_of_line]
    source_line = first_line[original[txn_of_line]]
    product = np.where(return_line, product[source_line], product)
    quantity = np.where(return_line, -quantity[source_line], quantity)
    price_cents = (np.arange(PRODUCTS) * 7919 % 4_900 + 99)[product]
    discount_cents = np.where((rng.random(n_lines) < 0.1) & (line_no > 1), price_cents // 10, 0)
    defect = np.where(
        rng.random(n_lines) < spec.defect_share, rng.integers(0, len(DEFECTS), size=n_lines), -1
    )

    lines = (
        pl.DataFrame(
            {
                "txn": txn_of_line,
                "line_no": line_no,
                "product": product,
                "price_cents": price_cents,
                "quantity": quantity,
                "discount_cents": discount_cents,
                "defect": defect,
            }
        )
        .join(txns, on="txn", how="left", maintain_order="left")
        .with_columns(line_cents=pl.col("quantity") * pl.col("price_cents") - pl.col("discount_cents"))
        .with_columns(txn_cents=pl.col("line_cents").sum().over("txn"))
    )

    day = datetime(spec.business_date.year, spec.business_date.month, spec.business_date.day)
    defect_is = {name: pl.col("defect") == code for code, name in enumerate(DEFECTS)}
    store_id = _store_id(pl.col("store"))
    register_id = _register_id(pl.col("register"))
    timestamp = (pl.lit(day) + pl.duration(seconds=pl.col("seconds"))).dt.strftime("%Y-%m-%dT%H:%M:%S")
    frame = lines.select(
        transaction_id=pl.col("transaction_id"),
        store_id=store_id,
        register_id=register_id,
        timestamp=pl.when(defect_is["bad_timestamp"])
        .then(pl.lit("2026-13-45T25:61:00"))
        .otherwise(timestamp),
        business_date=pl.lit(spec.business_date.isoformat()),
        customer_id=pl.when(pl.col("guest"))
        .then(pl.lit(None, dtype=pl.String))
        .otherwise(pl.format("C{}", pl.col("customer").cast(pl.String).str.zfill(8))),
        transaction_type=pl.col("kind").replace_strict(
            {KIND_SALE: "sale", KIND_RETURN: "return", KIND_VOID: "void"}, return_dtype=pl.String
        ),
        line_no=pl.col("line_no").cast(pl.String),
        product_id=pl.when(defect_is["missing_product"])
        .then(pl.lit(None, dtype=pl.String))
        .otherwise(pl.format("P{}", pl.col("product").cast(pl.String).str.zfill(5))),
        product_name=pl.format("Product {}", pl.col("product").cast(pl.String)),
        product_category=pl.col("product")
        .mod(len(CATEGORIES))
        .replace_strict(dict(enumerate(CATEGORIES)), return_dtype=pl.String),
        quantity=pl.col("quantity").cast(pl.String),
        unit_price=pl.when(defect_is["bad_price"])
        .then(pl.lit("12,99x"))
        .otherwise(_money(pl.col("price_cents"))),
        discount=_money(pl.col("discount_cents")),
        line_total=pl.when(defect_is["line_total_mismatch"])
        .then(_money(pl.col("line_cents") + 500))
        .otherwise(_money(pl.col("line_cents"))),
        currency=pl.when(defect_is["bad_currency"]).then(pl.lit("XXX")).otherwise(pl.lit(spec.currency)),
        transaction_total=_money(pl.col("txn_cents")),
        points_burned=pl.when(pl.col("points") > 0)
        .then(pl.col("points").cast(pl.String))
        .otherwise(pl.lit(None, dtype=pl.String)),
        original_transaction_id=pl.col("original_transaction_id"),
        file_hour=(pl.col("seconds") // 3600).cast(pl.Int32),
        seconds=pl.col("seconds"),
        defect=pl.col("defect") >= 0,
        txn=pl.col("txn"),
    )
    return frame


def write_workload(spec: WorkloadSpec, folder: Path) -> Workload:
    """Write the day's daily and hourly CSV files into ``folder`` and describe them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = generate_lines(spec)
    stamp = spec.business_date.strftime("%Y%m%d")
    hourly_until = OPEN_HOUR + _hourly_hours(spec)
    n_txn = lines["txn"].n_unique()
    rng = np.random.default_rng(spec.seed + 1)
    conflicting = rng.random(n_txn) < spec.conflict_share

    hourly = lines.filter(pl.col("file_hour") < hourly_until)
    conflict_mask = pl.Series(conflicting)[hourly["txn"]]
    # a conflicting re-export: same transaction id, still valid, but rung up a minute later
    day = datetime(spec.business_date.year, spec.business_date.month, spec.business_date.day)
    later = (pl.lit(day) + pl.duration(seconds=pl.col("seconds") + 60)).dt.strftime("%Y-%m-%dT%H:%M:%S")
    hourly = hourly.with_columns(
        timestamp=pl.when(conflict_mask & ~pl.col("defect")).then(later).otherwise(pl.col("timestamp"))
    )
    files: list[Path] = []
    columns = list(CANONICAL_COLUMNS)
    for (store_id,), part in lines.partition_by("store_id", as_dict=True, maintain_order=True).items():
        path = folder / f"pos_{store_id}_{stamp}_daily.csv"
        part.select(columns).write_csv(path)
        files.append(path)
    for (store_id, hour), part in hourly.partition_by(
        "store_id", "file_hour", as_dict=True, maintain_order=True
    ).items():
        path = folder / f"pos_{store_id}_{stamp}_{hour:02d}.csv"
        part.select(columns).write_csv(path)
        files.append(path)
    repeated = hourly["txn"].n_unique()
    conflicts = int(hourly.filter(conflict_mask)["txn"].n_unique())
    return Workload(
        folder=folder,
        files=tuple(sorted(files)),
        line_items=lines.height + hourly.height,
        unique_line_items=lines.height,
        transactions=n_txn,
        repeated_transactions=repeated - conflicts,
        conflicting_transactions=conflicts,
        defect_lines=int(lines["defect"].sum()),
        bytes=sum(path.stat().st_size for path in files),
    )
