"""Canonical record layouts shared by every stage.

Three frames travel through the pipeline:

* **lines**: one row per input line item, in the canonical export layout (:data:`CANONICAL_COLUMNS`,
  all read as strings) plus ``source_file`` and ``source_line``.
* **checkout_item** (:data:`CHECKOUT_ITEM_SCHEMA`): one row per valid line, typed, carrying its
  checkout's attributes (as Antavo's ``checkout_item`` inherits them).
* **checkout** (:data:`CHECKOUT_SCHEMA`): one row per transaction, with its items nested in
  ``items`` (a list of :data:`ITEM_STRUCT`).

Money is ``pl.Decimal(MONEY_PRECISION, MONEY_SCALE)`` end to end and becomes
:class:`decimal.Decimal` in Python; it is never a float.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

import polars as pl

__all__ = [
    "CANONICAL_COLUMNS",
    "CHECKOUT_ITEM_SCHEMA",
    "CHECKOUT_SCHEMA",
    "ITEM_STRUCT",
    "MONEY",
    "MONEY_PRECISION",
    "MONEY_SCALE",
    "ORIGINAL_NOT_FOUND",
    "PROFILE_UPDATE",
    "QUANTITY",
    "REQUIRED_COLUMNS",
    "VOIDED_IN_DOUBT",
    "DedupStatus",
    "EventResult",
    "Outcome",
    "RetryClass",
    "ReturnStatus",
    "TransactionType",
]

MONEY_PRECISION = 38
MONEY_SCALE = 4
MONEY = pl.Decimal(MONEY_PRECISION, MONEY_SCALE)
QUANTITY = pl.Decimal(MONEY_PRECISION, 3)

CANONICAL_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "store_id",
    "register_id",
    "timestamp",
    "business_date",
    "customer_id",
    "transaction_type",
    "line_no",
    "product_id",
    "product_name",
    "product_category",
    "quantity",
    "unit_price",
    "discount",
    "line_total",
    "currency",
    "transaction_total",
    "points_burned",
    "original_transaction_id",
)

REQUIRED_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "store_id",
    "timestamp",
    "product_id",
    "quantity",
    "unit_price",
    "currency",
)


class TransactionType(StrEnum):
    """What a transaction does: a sale, a return (refund) or a void (cancelled at the till)."""

    SALE = "sale"
    RETURN = "return"
    VOID = "void"


# the transaction_type (and a checkout's ``record``) of an enrollment feed's changed member: sent
# as a profile update, beside the ``enrollment`` and ``claim`` records of the member feeds
PROFILE_UPDATE = "profile"


class ReturnStatus(StrEnum):
    """Whether a return names the sale it returns (``original_transaction_id``)."""

    MATCHED = "matched"
    UNMATCHED = "unmatched"


class DedupStatus(StrEnum):
    """Outcome of dedup for one checkout."""

    NEW = "new"
    DUPLICATE = "duplicate"  # same id, same content: seen before, skipped and counted
    CONFLICT = "conflict"  # same id, different content: held for review, never sent


ITEM_STRUCT = pl.Struct(
    {
        "line_no": pl.Int64,
        "product_id": pl.String,
        "product_name": pl.String,
        "product_category": pl.String,
        "quantity": QUANTITY,
        "unit_price": MONEY,
        "discount": MONEY,
        "line_total": MONEY,
        "source_line": pl.Int64,
    }
)

CHECKOUT_SCHEMA: dict[str, pl.DataType] = {
    "transaction_id": pl.String(),
    "store_id": pl.String(),
    "register_id": pl.String(),
    "customer_id": pl.String(),  # null: a guest checkout
    "is_guest": pl.Boolean(),
    "transaction_type": pl.String(),  # TransactionType
    "return_status": pl.String(),  # ReturnStatus for returns, null otherwise
    "original_transaction_id": pl.String(),
    "business_date": pl.Date(),
    "timestamp_utc": pl.Datetime("us", "UTC"),
    "timestamp_local": pl.String(),  # ISO 8601 with the store's UTC offset, as the till saw it
    "timezone": pl.String(),
    "currency": pl.String(),
    "total": MONEY,  # signed: negative for returns
    "points_burned": MONEY,
    "line_count": pl.Int64(),
    "source_file": pl.String(),
    "source_lines": pl.List(pl.Int64),
    "content_hash": pl.String(),  # sha256 hex over the normalized content (not source position)
    "items": pl.List(ITEM_STRUCT),
}

CHECKOUT_ITEM_SCHEMA: dict[str, pl.DataType] = {
    "transaction_id": pl.String(),
    "store_id": pl.String(),
    "register_id": pl.String(),
    "customer_id": pl.String(),
    "is_guest": pl.Boolean(),
    "transaction_type": pl.String(),
    "business_date": pl.Date(),
    "timestamp_utc": pl.Datetime("us", "UTC"),
    "timestamp_local": pl.String(),
    "currency": pl.String(),
    "line_no": pl.Int64(),
    "product_id": pl.String(),
    "product_name": pl.String(),
    "product_category": pl.String(),
    "quantity": QUANTITY,
    "unit_price": MONEY,
    "discount": MONEY,
    "line_total": MONEY,
    "source_file": pl.String(),
    "source_line": pl.Int64(),
}


class Outcome(StrEnum):
    """The outcome of delivering one transaction."""

    ACCEPTED = "accepted"
    # the platform says this id was used already: an earlier send landed
    ALREADY_ACCEPTED = "already_accepted"
    # permanent: the platform refused the event for a reason retrying won't fix
    REJECTED = "rejected"
    RETRYABLE = "retryable"  # not delivered yet: 429, 5xx, timeout, connection error
    NOT_SENT = "not_sent"  # the sink cannot express it (e.g. an unmatched return); permanent


class RetryClass(StrEnum):
    """Why a ``RETRYABLE`` transaction was not delivered: whether the next plain run resends it."""

    TRANSIENT = "transient"  # the platform was unreachable, busy or failing: the next run resends it
    STOPPED = "stopped"  # the run stopped before sending it: the next run sends it
    CREDENTIALS = "credentials"  # our credentials were refused: sent once they are fixed
    DEFERRED = "deferred"  # the request itself was refused (e.g. a wrong URL): `posfeed rerun` only
    # a return waits for its sale to arrive: every plain run checks again, past the [resume] caps,
    # until `resume.sale_wait_hours` (then it is failed for good)
    WAITING = "waiting"


# the code of a return whose sale has not arrived (both targets; RetryClass.WAITING while it waits):
# nothing of it went out in the submission that gave it
ORIGINAL_NOT_FOUND = "original_not_found"
# the code of a sale in doubt that a void names, looked up and not found on the platform (both
# targets): never sent; refused, then post-voided (pipeline.stages.voids.settle_voided_sales)
VOIDED_IN_DOUBT = "voided_in_doubt"


@dataclass(frozen=True)
class EventResult:
    """One transaction's outcome, with the platform's evidence."""

    transaction_id: str
    outcome: Outcome
    event_ids: tuple[str, ...] = ()
    points: Decimal | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 1
    retry_class: RetryClass | None = None  # for RETRYABLE: why (None: transient)
    # how many of its in-doubt marks in this submission (attempts + 1 each) went with no request
    # carrying it (credentials refused or a stop meanwhile, the request not built, e.g. its token
    # call failed, or its result decided without it): settling it gives those attempts back
    withdrawn: int = 0
    # a return the platform took in part (code partly_refunded): the money it refunded, a magnitude,
    # lines a read-back found landed included (None when not known)
    refunded: Decimal | None = None
