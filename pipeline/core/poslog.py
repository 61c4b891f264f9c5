"""ARTS POSLog XML reader: a transaction log into the canonical *lines* frame (as CSV gives it).

The file is streamed (an lxml pull parser fed 64 KiB at a time, each ``Transaction`` cleared once
read), so memory stays bounded by the output frame, never by the XML tree. Each retail sale or return
transaction becomes the canonical lines of one checkout; validation, normalization, dedup, the
ledger and the reports then treat it exactly as a CSV export.

Mapping (one checkout per retail transaction):

* ``transaction_id``: ``format.transaction_id_template``, default :data:`DEFAULT_TEMPLATE`
  (store, workstation, business day, sequence). Template fields are the transaction's own child
  elements by local name (``{RetailStoreID}``, ``{OperatorID}``...), canonical names
  (``{store_id}``, ``{register_id}``, ``{business_date}``) and ``{business_day}`` (YYYYMMDD).
* ``customer_id``: the first ``poslog.loyalty_id_paths`` that matches, kept exactly (leading zeros
  included); none: a guest. A transaction that writes one of its own values twice, differently
  (two loyalty ids on that path, two grand totals, two ``RetailStoreID``, ``WorkstationID``,
  ``BusinessDayDate`` or ``CurrencyCode``), is rejected with the code lines that disagree get in
  CSV (``R015``, ``R027``, ``R014``, ``R016``), never sent with the first value.
* Items: ``Sale`` lines (``Return`` lines in a return). An item void (``LineItem/@VoidFlag``)
  cancels the latest earlier lines of the same item: a fully voided item disappears, a partly
  voided one keeps what is left. A void with nothing to cancel stays as a line with a negative
  quantity, which validation rejects. A line whose ``Quantity`` cannot be read, or is 0 with a
  non-zero amount, stays a line as written, so that validation rejects it (``R002``, ``R007``) with
  its transaction; a line of quantity 0 and amount 0 is counted as voided. Items with a negative
  amount on purpose (a deposit refund, or an ``ItemType`` in ``poslog.negative_item_types``) are
  not items: their amount is part of the discount below. A transaction with no other items (a sale
  of negative lines only, bottles brought back) is never skipped with its money: those lines are
  sent as written, and validation judges them as it judges the same CSV lines (negative
  quantities only make a return with ``validation.treat_negative_quantity_as_return``, else
  ``R007``; a negative amount ``R010``, a total the lines do not make ``R018``).
* Money: the checkout total is what the customer paid before tax, ``TransactionGrandAmount`` −
  ``TransactionTaxAmount``. Lines keep their ``ExtendedAmount``; the difference between the lines
  and the total (item discounts, transaction-level rewards, coupons, deposit refunds) is carried
  as each line's ``discount``: a line's own ``DiscountAmount`` (else its ``RetailPriceModifier``
  amounts) first, the rest pro rata, so the lines sum to the total exactly. An item's own discount
  of more than its line is sent as written (validation rejects it, ``R028``, as the same CSV
  line), never capped. A transaction whose totals cannot be reconciled that way (it took more
  than its lines, or a sale with a negative total) keeps its plain amounts and is rejected by
  validation (``R018``, with both figures); ``src:poslog_totals`` shows the file's
  own totals next to the reject. A ``TransactionGrandAmount`` that cannot be read is sent as the
  transaction_total as written (``R002``), and so is ``grand - tax`` when the
  ``TransactionTaxAmount`` cannot be read.
* Numbers are read as ``xs:decimal`` (a sign, digits, a decimal point: no exponent, no ``_``) of
  less than 10^12. An ``ExtendedAmount``, ``DiscountAmount`` or price modifier ``Amount`` that is
  not one is sent as written (as line_total, discount), so that validation rejects the line
  (``R002``, or ``R026`` when too large) with its transaction; none is computed with. A number
  element that is there but empty (``<Quantity/>``, whitespace only; a price, ``ExtendedAmount``,
  ``DiscountAmount``, modifier ``Amount``, grand or tax ``Total``) is no default (a quantity of 1,
  the regular price, quantity x price, no discount, no total): the line goes with the reader's
  reject ``R002`` for that field (``read_code``, a ``read_reason`` starting with the field), so
  that validation rejects its transaction. A missing ``Quantity`` is 1. So is a price modifier
  with a ``Percent`` and no ``Amount`` (``R002``, discount, naming the element and its line): what
  the percentage took off depends on the till (of which price, per unit or per line, rounded how,
  after which other modifiers) and is not in the file, so no discount is computed or left out.
* Currency: the transaction's ``CurrencyCode``, else ``format.defaults.currency``, else the first
  its amounts name. An amount outside the tenders whose ``Currency`` or ``CurrencyCode`` attribute
  names another currency rejects the transaction (``R016``): two currencies are never added up.
* Returns (``RetailTransaction/@TypeCode`` in ``poslog.return_type_codes``, or every item a
  ``Return``) become returns; a ``TransactionLink`` names the original sale.
* Control, tender-control, voided, suspended, training and item-less transactions are counted in
  :class:`ReadStats` ``skipped_by_kind``, never lines. An item-less one (no ``Sale`` or ``Return``
  line written, or all voided) is skipped as ``no_items`` only when it took no money (no
  ``TransactionGrandAmount``, or 0); one that took money is one line with the reader's reject
  ``R032`` (``read_code``) carrying its total as ``line_total``, so that its money shows among the
  rejected amounts instead of leaving the balance unseen. A post-void (a transaction whose
  ``TransactionLink`` has a ``poslog.post_void_link_reasons`` reason) removes the transaction it
  voids when this file holds it (``post_void`` and ``post_voided``), else is counted as
  ``post_void_original_elsewhere`` with a warning. Every ``LineItem`` is counted by kind in
  ``line_items_by_kind`` (``sale``, ``sale_voided``, ``item_void``, ``tender``, ``tax``...; those
  of skipped transactions as ``in_skipped_transaction``).

``source_line`` is the XML line of the item's ``LineItem``; in a file that puts several line items
on one line (minified XML) it is the item's position among all the file's ``LineItem`` elements
instead, so that it always names one line item. ``src:transaction`` is the transaction's position
in the file (1 for the first ``Transaction``), ``src:xml_line`` the item's XML line. A file that is
not well-formed XML (not XML at all, truncated, broken inside), whose root is not ``POSLog``, with
a ``Transaction`` or ``LineItem`` outside ``poslog.namespace`` (a vendor namespace too), or with a
transaction body, ``Total`` or ``TransactionLink`` outside it and the vendor namespaces is
unreadable as a whole, with the position where it broke and the last complete transaction (or the
element and its line): a half-read transaction log is never sent in part. So is a file with more
than one document (content after the root element ends), in another encoding than it declares, or
beyond the parser's limits (elements nested more than 256 deep; a text, attribute value or name
over 10 MB, refused before it is held whole).

Hostile XML is never acted on: a file with a DOCTYPE (internal entities, external entities, an
external DTD) or that declares the XInclude namespace is unreadable; entities are never expanded,
no DTD is loaded and nothing is fetched, from the network or from disk.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import IO, Any

import polars as pl
from lxml import etree

from pipeline.config import POSLOG_PROFILE_NAMESPACES, Feed, PoslogConfig
from pipeline.core.parse import EXTRA_PREFIX, READ_CODE, READ_REASON, template_fields
from pipeline.core.readstats import ReadStats
from pipeline.core.rejects import RejectCode
from pipeline.core.validate.numbers import MONEY_WHOLE_DIGITS
from pipeline.errors import ConfigError, UnreadableFileError
from pipeline.records import CANONICAL_COLUMNS

__all__ = [
    "DEFAULT_TEMPLATE",
    "PROFILES",
    "read_poslog",
]

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{RetailStoreID}-{WorkstationID}-{business_day}-{SequenceNumber}"

# profile -> (vendor namespaces, loyalty id paths)
PROFILES: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "arts": (
        POSLOG_PROFILE_NAMESPACES["arts"],
        ("LineItem/LoyaltyMembership/LoyaltyID", "LineItem/LoyaltyMembership/MembershipID"),
    ),
    "ncr_acs": (
        POSLOG_PROFILE_NAMESPACES["ncr_acs"],
        (
            "LineItem/acs:LoyaltyMembership/acs:LoyaltyID",
            "LineItem/acs:LoyaltyMembership/acs:MembershipID",
            "LineItem/LoyaltyMembership/LoyaltyID",
        ),
    ),
}

_EXTRAS = (EXTRA_PREFIX + "transaction", EXTRA_PREFIX + "xml_line", EXTRA_PREFIX + "poslog_totals")
_ORDINAL = "_ordinal"  # the item's position among the file's LineItem elements
_COLUMNS = (*CANONICAL_COLUMNS, "source_line", _ORDINAL, *_EXTRAS, READ_CODE, READ_REASON)
# a transaction's own elements that must not disagree when written twice, and their fields
_CONFLICT_FIELDS = {"RetailStoreID": "store_id", "WorkstationID": "register_id",
                    "BusinessDayDate": "business_date", "CurrencyCode": "currency"}
# the reject of a transaction whose field has two values (the codes CSV lines that disagree get)
_CONFLICT_CODES = {"store_id": RejectCode.MIXED_STORES, "customer_id": RejectCode.MIXED_CUSTOMERS,
                   "currency": RejectCode.MIXED_CURRENCIES}
_CHUNK_ROWS = 16_384  # rows kept as Python tuples before they become a frame
_ZERO = Decimal(0)
_BAD_NUMBER = RejectCode.BAD_NUMBER.value
_NO_ITEMS = RejectCode.NO_ITEMS.value
_ITEM_KINDS = ("Sale", "Return")
_TAGS = (
    "SequenceNumber", "BeginDateTime", "EndDateTime", "Quantity", "ActualSalesUnitPrice",
    "RegularSalesUnitPrice", "ExtendedAmount", "DiscountAmount", "TransactionLink", "Description",
    "MerchandiseHierarchy", "LineItem", "Total", "POSLog", "RetailPriceModifier", "Amount", "Percent",
)
_STRUCTURE = frozenset(("LineItem", "Total", "TransactionLink"))
_SNAKE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_XS_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")  # xs:decimal: no exponent, no "_"
_TOO_LARGE = Decimal(10) ** MONEY_WHOLE_DIGITS
# libxml2 as a POSLog needs it: entities never expanded, no DTD loaded, nothing fetched, and its
# limits kept (a text, attribute value or name of at most 10 MB, elements 256 deep at most)
_SAFE_PARSING: dict[str, Any] = {"resolve_entities": False, "no_network": True, "load_dtd": False,
                                 "huge_tree": False}
_XINCLUDE = frozenset(("http://www.w3.org/2001/XInclude", "http://www.w3.org/2003/XInclude"))
_DOCTYPE_MARKS = tuple("<!DOCTYPE".encode(e) for e in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le",
                                                         "utf-32-be"))
_DOCTYPE_REASON = ("it has a DOCTYPE (a DTD): a POSLog file has none, and its entities and external "
                   "DTD are never expanded or fetched")
_CHUNK = 64 * 1024  # bytes fed to the parser at a time
_MAX_RUN = 10 * 1024 * 1024  # bytes without a "<": a tag or text larger than libxml2 takes
# amounts that name their currency, outside tenders (a payment in foreign cash is not the sale's money)
_MONEY_WITH_CURRENCY = etree.XPath(
    ".//*[@Currency or @CurrencyCode][not(ancestor-or-self::*[starts-with(local-name(), 'Tender')])]"
)
_ENCODING_DECLARATION = re.compile(rb"""<\?xml[^>]*?\sencoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_HEAD_CHUNK = 1024  # bytes fed at a time until the root's start tag
_HEAD_KEEP = 64 * 1024  # the first bytes, kept to look for a DOCTYPE the parser refused


@functools.cache
def _snake(name: str) -> str:
    return _SNAKE.sub("_", name).lower()


@functools.cache
def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _local(tag: Any) -> str:
    return _local_name(tag) if isinstance(tag, str) else ""


@dataclass(frozen=True)
class _Names:
    """Clark names and compiled paths for one feed's namespaces."""

    ns: str
    transaction: str
    loyalty_paths: tuple[str, ...]
    item_id_paths: tuple[tuple[str, bool], ...]  # (Clark path, a single step)
    timestamps: tuple[str, ...]

    def q(self, name: str) -> str:
        return f"{{{self.ns}}}{name}" if self.ns else name


def _clark_path(path: str, default_ns: str, prefixes: dict[str, str]) -> str:
    steps = []
    for step in path.strip("/").split("/"):
        if ":" in step:
            prefix, name = step.split(":", 1)
            if prefix not in prefixes:
                raise ConfigError(
                    f"path {path!r} uses prefix {prefix!r}, which poslog.namespaces does not name",
                    key="poslog.namespaces",
                )
            steps.append(f"{{{prefixes[prefix]}}}{name}")
        else:
            steps.append(f"{{{default_ns}}}{step}" if default_ns else step)
    return "/".join(steps)


def _names(config: PoslogConfig) -> _Names:
    vendor, loyalty = PROFILES[config.profile]
    prefixes = {**vendor, **config.namespaces}
    paths = config.loyalty_id_paths if config.loyalty_id_paths is not None else loyalty
    ns = config.namespace
    return _Names(
        ns=ns,
        transaction=f"{{{ns}}}Transaction" if ns else "Transaction",
        loyalty_paths=tuple(_clark_path(p, ns, prefixes) for p in paths),
        item_id_paths=tuple(
            (_clark_path(p, ns, prefixes), "/" not in p.strip("/")) for p in config.item_id_paths
        ),
        timestamps=tuple(f"{{{ns}}}{t}" if ns else t for t in config.timestamp_elements),
    )


def _text(element: Any) -> str:
    if element is None or element.text is None:
        return ""
    return str(element.text).strip()


def _decimal(text: str) -> Decimal | None:
    """The value of an xs:decimal text below 10^12 in size; None if empty, not one, or larger."""
    if not _XS_DECIMAL.fullmatch(text):
        return None
    value = Decimal(text)
    return value if abs(value) < _TOO_LARGE else None


def _number_text(value: Decimal) -> str:
    return format(value, "f")


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1")


@dataclass(slots=True)
class _Item:
    """One Sale or Return line item, as read."""

    kind: str  # "Sale" or "Return"
    line_no: str
    product_id: str
    name: str
    category: str
    quantity: Decimal
    quantity_text: str
    unit_price_text: str
    amount: Decimal  # ExtendedAmount (absolute), reduced by voids
    own_discount: Decimal
    xml_line: int
    ordinal: int
    original_link: dict[str, str] | None
    voided: bool = False
    kept_as_read: bool = False  # a number unreadable, or quantity 0: a line for validation to judge
    raw: dict[str, str | None] = field(default_factory=dict)  # field -> the text to send instead
    empty: str = ""  # the R002 read_reason: a number element present but empty, a Percent only (else "")


class _Transaction:
    """The facts of one Transaction element that the lines need."""

    def __init__(self, element: Any, names: _Names, config: PoslogConfig) -> None:
        self.element = element
        self.names = names
        self.config = config
        self.fields: dict[str, str] = {}
        self.repeated: set[str] = set()  # fields written twice with different values
        self.body: Any = None
        self.body_kind = ""
        for child in element:
            tag = child.tag
            if not isinstance(tag, str):
                continue
            local = _local(tag)
            if local.endswith("Transaction") or local in ("FunctionLog", "POSLogFunctionLog"):
                if self.body is None:
                    self.body, self.body_kind = child, local
            elif len(child) == 0:
                text = self.fields.setdefault(local, _text(child))
                if text != _text(child):
                    self.repeated.add(local)

    def skip_kind(self) -> str | None:
        """Why this transaction is not a checkout (None: it is a retail transaction to read)."""
        element, body = self.element, self.body
        if body is None:
            return "no_body"
        if self.body_kind != "RetailTransaction":
            return _snake(self.body_kind.removesuffix("Transaction")) or "other"
        if _is_true(element.get("TrainingModeFlag")) or _is_true(body.get("TrainingModeFlag")):
            return "training"
        status = body.get("TransactionStatus") or element.get("TransactionStatus") or ""
        if status in self.config.suspended_statuses or _is_true(body.get("SuspendFlag")):
            return "suspended"
        link = body.find(self.names.q("TransactionLink"))
        if link is not None:
            reason = link.get("ReasonCode") or _text(link.find(self.names.q("ReasonCode")))
            if reason in self.config.post_void_link_reasons:
                return "post_void"
        voided = any(_is_true(e.get(flag)) for e in (element, body) for flag in ("VoidFlag", "CancelFlag"))
        if voided or status in self.config.void_statuses:
            return "voided"
        return None


class _Reader:
    """Streams one POSLog file into lines (see the module docstring)."""

    def __init__(self, feed: Feed, name: str, stats: ReadStats) -> None:
        self.feed = feed
        self.config = feed.poslog
        self.name = name
        self.stats = stats
        self.names = _names(self.config)
        template = feed.format.transaction_id_template or DEFAULT_TEMPLATE
        self.template = template_fields(template)
        self.tolerance = feed.validation.amount_tolerance
        self.defaults = feed.format.defaults
        self.rows: list[tuple[Any, ...]] = []
        self.ordinal = 0  # LineItem elements seen so far in the file
        self.negative_types = frozenset(t.rsplit(":", 1)[-1] for t in self.config.negative_item_types)
        self.post_voids: list[tuple[str, int]] = []  # (the voided transaction's id, the post-void's position)
        self.tag = {name: self.names.q(name) for name in _TAGS}
        self.meta_tags = frozenset(self.tag[n] for n in ("SequenceNumber", "BeginDateTime", "EndDateTime"))
        self.frames: list[pl.DataFrame] = []
        vendor = PROFILES[self.config.profile][0]
        self.vendor_namespaces = frozenset({*vendor.values(), *self.config.namespaces.values()})
        self._tags_checked: dict[Any, bool] = {}  # tag -> in the expected namespace (or no concern)
        self.encoding = "UTF-8"  # the encoding the file declares (UTF-8 when it declares none)
        self.position = 0  # transactions read so far
        self.last_line = 0  # the line of the last one

    # ---- the file ---------------------------------------------------------------------------

    def read(self, source: Path | IO[bytes]) -> pl.DataFrame:
        try:
            self._check_root(source)
        except etree.XMLSyntaxError as exc:
            raise self._not_well_formed(exc) from exc
        stream = source.open("rb") if isinstance(source, Path) else source
        try:
            if not isinstance(source, Path):
                stream.seek(0)
            etree.clear_error_log()  # (this thread's) so that what it holds next is this file's
            parser = etree.XMLPullParser(events=("end", "start-ns"), tag=self.names.transaction,
                                         **_SAFE_PARSING)
            closing = False
            try:
                for chunk in self._chunks(stream):
                    parser.feed(chunk)
                    self._take(parser.read_events())
                closing = True
                root = parser.close()
                self._take(parser.read_events())
            except etree.XMLSyntaxError as exc:
                # the transactions completed before the error in the piece that failed (a failed
                # close() gives only ends of elements the file never closed: not counted)
                pending: Iterable[tuple[str, Any]] = () if closing else parser.read_events()
                for event, element in pending:
                    if event == "end":
                        self.position += 1
                        self.last_line = element.sourceline or self.last_line
                raise self._not_well_formed(exc) from exc
        finally:
            if isinstance(source, Path):
                stream.close()
        for element in root:
            if element.tag != self.names.transaction:
                self._check_skipped(element, self.position)
        self._flush()
        frame = pl.concat(self.frames) if self.frames else _empty()
        lines = frame.get_column("source_line")
        if frame.height and not (lines.min() > 0 and (lines.diff().drop_nulls() > 0).all()):  # type: ignore[operator]
            # minified XML, several items on one line: their positions among the file's line items
            frame = frame.with_columns(pl.col(_ORDINAL).alias("source_line"))
        return self._drop_post_voided(frame.drop(_ORDINAL))

    def _take(self, events: Iterable[tuple[str, Any]]) -> None:
        """Read the transactions the parser has completed, freeing each once read."""
        transaction = self.names.transaction
        for event, element in events:
            if event == "start-ns":  # (prefix, uri): rare, so cheap to look at
                if element[1] in _XINCLUDE:
                    raise UnreadableFileError(
                        self.name, f"it declares the XInclude namespace ({self._after()}): XInclude is "
                        "never processed, so what it would include is neither fetched nor read")
                continue
            self.position += 1
            self.last_line = element.sourceline or self.last_line
            self._transaction(element, self.position)
            element.clear(keep_tail=False)
            parent = element.getparent()
            while element.getprevious() is not None and parent is not None:
                if parent[0].tag != transaction:
                    self._check_skipped(parent[0], self.position - 1)
                del parent[0]

    def _chunks(self, stream: IO[bytes], size: int = _CHUNK) -> Iterator[bytes]:
        """The file in pieces. Raises for :data:`_MAX_RUN` bytes without a ``<``: a tag (a huge
        attribute value) or a text larger than the parser takes, which it would otherwise hold
        whole before refusing it."""
        run = offset = 0
        while chunk := stream.read(size):
            at = chunk.rfind(b"<")
            start = offset + at + 1 if at >= 0 else offset - run
            run = run + len(chunk) if at < 0 else len(chunk) - at - 1
            offset += len(chunk)
            if run > _MAX_RUN:
                raise UnreadableFileError(
                    self.name, f"a tag or text from byte {start} on is larger than 10 MB ({self._after()}): "
                    "no POSLog writes one, and it is not read into memory")
            yield chunk

    def _not_well_formed(self, exc: etree.XMLSyntaxError) -> UnreadableFileError:
        line, column = exc.position if exc.position else (0, 0)
        message = _message(exc, self.encoding)
        first = _first_placed_error(exc)
        if first is not None and (not line or first.type_name == _UNDEFINED_ENTITY):
            # libxml2 notes an undefined entity and goes on; what is raised is the end it then
            # never finds ("no element found" at line 0): the noted error is the one to report
            line, column = first.line, first.column
            if first.type_name == _UNDEFINED_ENTITY:
                message = _ENTITY_REASON
        return UnreadableFileError(self.name, f"not well-formed XML at line {line}, column {column}, "
                                              f"{self._after()}: {message}")

    def _after(self) -> str:
        """Where in the file: after which complete transaction."""
        if self.position:
            return f"after transaction {self.position} (which starts at line {self.last_line})"
        return "before the first transaction"

    def _check_root(self, source: Path | IO[bytes]) -> None:
        """The file's first element must be the POSLog root in the configured namespace, with no
        DOCTYPE before it. Only the start of the file is parsed here (in small pieces, up to the
        root's start tag); an error further on is left for the full parse to place."""
        stream = source.open("rb") if isinstance(source, Path) else source
        try:
            head = stream.read(1)
            if not head or (not head.strip() and not stream.read(4096).strip()):
                raise UnreadableFileError(self.name, "file is empty")
            stream.seek(0)
            parser = etree.XMLPullParser(events=("start",), **_SAFE_PARSING)
            seen = b""  # what was fed before the root: a DOCTYPE the parser refused is still seen
            root: Any = None
            chunks = self._chunks(stream, _HEAD_CHUNK)
            while root is None:
                chunk = next(chunks, b"")
                if len(seen) < _HEAD_KEEP:
                    seen += chunk
                    self.encoding = _declared_encoding(seen)
                try:
                    if chunk:
                        parser.feed(chunk)
                    else:
                        parser.close()
                except etree.XMLSyntaxError:
                    root = next((e for _, e in parser.read_events()), None)
                    if root is None and _has_doctype(seen):
                        raise UnreadableFileError(self.name, _DOCTYPE_REASON) from None
                    if root is None:
                        raise
                    break  # the full parse reports the error, after the transactions before it
                root = next((e for _, e in parser.read_events()), None)
                if not chunk:
                    break
        finally:
            if isinstance(source, Path):
                stream.close()
        if root is None:  # pragma: no cover - close() raises instead
            raise UnreadableFileError(self.name, "no XML element found")
        info: Any = root.getroottree().docinfo
        if info.doctype or info.internalDTD is not None:
            raise UnreadableFileError(self.name, f"{_DOCTYPE_REASON} (before the root element at line "
                                                 f"{root.sourceline})")
        expected = self.names.q("POSLog")
        if root.tag != expected:
            ns, local = (root.tag[1:].split("}", 1) if root.tag.startswith("{") else ("", root.tag))
            found = f"<{local}>" + (f" in namespace {ns}" if ns else " without a namespace")
            want = "<POSLog>" + (
                f" in namespace {self.names.ns}" if self.names.ns else " without a namespace"
            )
            raise UnreadableFileError(
                self.name,
                f"not a POSLog file: the root element is {found}, expected {want} (poslog.namespace)",
            )

    # ---- one transaction --------------------------------------------------------------------

    def _transaction(self, element: Any, position: int) -> None:
        self._check_namespaces(element, position)
        txn = _Transaction(element, self.names, self.config)
        skip = txn.skip_kind()
        line_items = txn.body.findall(self.tag["LineItem"]) if txn.body is not None else []
        if skip == "post_void":  # counted at the end, once it is known whether its original is here
            link = _link_fields(txn.body.find(self.tag["TransactionLink"]))
            values = self._values(txn)
            named = {**values, **link, **_canonical(link, values)}
            named["business_day"] = named["business_date"].replace("-", "")
            self.post_voids.append((self._template(named), position))
        elif skip is not None:
            self.stats.skipped_by_kind[skip] += 1
        if skip is not None:
            self.ordinal += len(line_items)
            if line_items:
                self.stats.line_items_by_kind["in_skipped_transaction"] += len(line_items)
            return
        self._emit(txn, self._items(txn, line_items), position)

    def _check_namespaces(self, element: Any, position: int) -> None:
        """A LineItem outside poslog.namespace, or a transaction body, Total or TransactionLink
        outside it and the vendor namespaces: unreadable (the reader reads ARTS LineItems only, so
        a vendor one would be neither read nor counted)."""
        bodies = [c for c in element if _local(c.tag).endswith("Transaction")]
        checked = self._tags_checked
        for child in (*element, *(c for body in bodies for c in body)):
            tag = child.tag
            if checked.get(tag) is None:  # each tag judged once per file
                local = _local(tag)
                ok = not (local in _STRUCTURE or local.endswith("Transaction")) or tag == self.names.q(local)
                if not ok and local != "LineItem":  # the vendor namespaces: not for a LineItem
                    ok = (tag[1:].split("}", 1)[0] if tag.startswith("{") else "") in self.vendor_namespaces
                checked[tag] = ok
            if not checked[tag]:
                raise self._outside(child, f"transaction {position}")

    def _check_skipped(self, element: Any, before: int) -> None:
        """A ``Transaction`` the parse passed over (outside poslog.namespace): unreadable, never
        silently lost. ``before``: the transactions read before it."""
        if _local(element.tag) == "Transaction":
            where = f"after transaction {before}" if before else "before the first transaction"
            raise self._outside(element, where)

    def _outside(self, element: Any, where: str) -> UnreadableFileError:
        """The file is unreadable: ``element`` is outside poslog.namespace."""
        tag = element.tag
        ns = tag[1:].split("}", 1)[0] if tag.startswith("{") else ""
        found = f"in namespace {ns}" if ns else "without a namespace"
        return UnreadableFileError(
            self.name,
            f"<{_local(tag)}> at line {element.sourceline} ({where}) is {found}, not in "
            f"{self.names.ns or 'no namespace'} (poslog.namespace)",
        )

    def _items(self, txn: _Transaction, line_items: list[Any]) -> list[_Item]:
        """The item lines after voids, counting every line item by kind."""
        counts = self.stats.line_items_by_kind
        meta, sequence = self.meta_tags, self.tag["SequenceNumber"]
        items: list[_Item] = []
        negatives: list[_Item] = []  # items that take money off (part of the discount)
        for line in line_items:
            self.ordinal += 1
            detail = None
            line_no = ""
            for child in line:
                tag = child.tag
                if tag == sequence:
                    line_no = (child.text or "").strip()
                elif detail is None and isinstance(tag, str) and tag not in meta:
                    detail = child
            if detail is None:
                counts["empty"] += 1
                continue
            kind = _local(detail.tag)
            is_void = _is_true(line.get("VoidFlag"))
            if kind not in _ITEM_KINDS:
                counts[_snake(kind) + ("_voided" if is_void else "")] += 1
                continue
            item = self._item(line, line_no, detail, kind)
            if not is_void and (detail.get("ItemType") or "").rsplit(":", 1)[-1] in self.negative_types:
                negatives.append(item)  # a deposit refund and the like: part of the discount
                continue
            if item.kept_as_read:
                counts[_snake(kind) + ("_voided" if is_void else "")] += 1
                item.voided = is_void
                items.append(item)
                continue
            if is_void:
                counts["item_void"] += 1
                left = self._cancel(items, item)
                if left > 0:  # nothing (or not enough) to cancel: kept with a negative price, rejected
                    item.quantity = left
                    item.quantity_text = _number_text(left)
                    item.unit_price_text = "-" + (item.unit_price_text.lstrip("-") or "0")
                    item.voided = True
                    items.append(item)
                continue
            if item.amount < 0 or item.quantity < 0:
                negatives.append(item)
                continue
            counts[_snake(kind)] += 1
            items.append(item)
        kept = []
        for item in items:
            if not item.voided and not item.kept_as_read and item.quantity == 0:
                counts[_snake(item.kind)] -= 1
                counts[_snake(item.kind) + "_voided"] += 1
            else:
                kept.append(item)
        if negatives and kept:
            counts["negative_item"] += len(negatives)
        elif negatives:
            # nothing but money off (a sale of negative lines, bottles brought back): never dropped
            # with its money, its lines go as written and validation judges them as CSV lines
            for item in negatives:
                counts[_snake(item.kind)] += 1
                item.kept_as_read = True
                item.raw = {"discount": _number_text(item.own_discount),
                            "line_total": _number_text(item.amount - item.own_discount), **item.raw}
            return negatives
        return kept

    @staticmethod
    def _cancel(items: list[_Item], void: _Item) -> Decimal:
        """Take the void's quantity off the latest earlier lines of the same item; what is left."""
        left = abs(void.quantity)
        amount_left = abs(void.amount)
        for item in reversed(items):
            if left <= 0:
                break
            same = item.kind == void.kind and item.product_id == void.product_id
            if item.voided or not same or item.quantity <= 0:
                continue
            taken = min(left, item.quantity)
            share = amount_left if taken == left else (item.amount * taken / item.quantity)
            share = min(share, item.amount)
            item.quantity -= taken
            item.quantity_text = _number_text(item.quantity)
            item.amount -= share
            item.own_discount = min(item.own_discount, item.amount)
            left -= taken
            amount_left -= share
        return left

    def _item(self, line: Any, line_no: str, detail: Any, kind: str) -> _Item:
        children: dict[Any, Any] = {}
        for child in detail:
            children.setdefault(child.tag, child)
        tag = self.tag

        def text(name: str) -> str:
            element = children.get(tag[name])
            return (element.text or "").strip() if element is not None else ""

        product_id = ""
        for path, single in self.names.item_id_paths:
            element = children.get(path) if single else detail.find(path)
            product_id = _text(element)
            if product_id:
                break
        empty = ""  # R002: a number element present but empty, a Percent only; never a default
        quantity_text = text("Quantity")
        if not quantity_text:
            if tag["Quantity"] in children:
                empty = _empty_number("quantity", "Quantity")
            else:
                quantity_text = "1"
        quantity = _decimal(quantity_text)
        unit_price_text = text("ActualSalesUnitPrice")
        if not unit_price_text:
            actual = tag["ActualSalesUnitPrice"] in children  # there but empty: no fallback
            price = "ActualSalesUnitPrice" if actual else "RegularSalesUnitPrice"
            unit_price_text = text(price)
            if not unit_price_text and tag[price] in children:
                empty = empty or _empty_number("unit_price", price)
        raw: dict[str, str | None] = {}  # a number that cannot be read: sent as written
        amount_text = text("ExtendedAmount")
        amount = _decimal(amount_text)
        if not amount_text and tag["ExtendedAmount"] in children:
            empty = empty or _empty_number("line_total", "ExtendedAmount")
        elif amount is None and amount_text:
            raw["line_total"] = amount_text
        elif amount is None and quantity is not None:
            unit_price = _decimal(unit_price_text)
            amount = quantity * unit_price if unit_price is not None else None
        if amount is None and not amount_text:
            raw["line_total"] = None
        discount_text = text("DiscountAmount")
        discount = _decimal(discount_text) or _ZERO
        if discount_text and _decimal(discount_text) is None:
            raw["discount"] = discount_text
        elif not discount_text and tag["DiscountAmount"] in children:
            empty = empty or _empty_number("discount", "DiscountAmount")
            raw["discount"] = None
        if not discount:  # price modifiers of the item (markdowns, item promotions): its own discount
            amount_tag = tag["Amount"]
            for modifier in detail.iterchildren(tag["RetailPriceModifier"]):
                modifier_element = modifier.find(amount_tag)
                modifier_text = _text(modifier_element)
                modifier_amount = _decimal(modifier_text)
                percent = modifier.find(tag["Percent"]) if modifier_element is None else None
                if percent is not None:  # how much a percentage took off is the till's, not written
                    empty = empty or (
                        f"discount: the <RetailPriceModifier> at line {modifier.sourceline} has a <Percent> "
                        f"({_text(percent)}) and no <Amount>: the amount it took off is not written, so "
                        "the discount cannot be read exactly")
                    raw["discount"] = None
                elif modifier_amount is None and modifier_text:
                    raw["discount"] = modifier_text
                elif modifier_element is not None and not modifier_text:
                    empty = empty or _empty_number("discount", "Amount")
                    raw["discount"] = None
                discount += abs(modifier_amount or _ZERO)
        if (amount is not None and abs(discount) > abs(amount) and "discount" not in raw
                and not _is_true(line.get("VoidFlag"))):
            raw["discount"] = _number_text(abs(discount))  # more than its line: rejected (R028), as in a CSV
        link = children.get(tag["TransactionLink"])
        is_return = kind == "Return"
        return _Item(
            kind=kind,
            line_no=line_no,
            product_id=product_id,
            name=text("Description"),
            category=text("MerchandiseHierarchy"),
            quantity=abs(quantity) if quantity is not None and is_return else (quantity or _ZERO),
            quantity_text=quantity_text.lstrip("-") if is_return else quantity_text,
            unit_price_text=unit_price_text,
            amount=abs(amount) if amount is not None and is_return else (amount or _ZERO),
            own_discount=abs(discount),
            xml_line=line.sourceline or 0,
            ordinal=self.ordinal,
            original_link=_link_fields(link) if link is not None else None,
            kept_as_read=quantity is None or bool(raw) or bool(empty) or (quantity == 0 and bool(amount)),
            raw=raw,
            empty=empty,
        )

    def _emit(self, txn: _Transaction, items: list[_Item], position: int) -> None:
        """The lines of one retail transaction (none: counted as ``no_items``, or one row rejected
        ``R032`` when it took money)."""
        body = txn.body
        fields = txn.fields
        totals: dict[str, str] = {}
        conflicts: list[str] = [_CONFLICT_FIELDS[f] for f in sorted(txn.repeated) if f in _CONFLICT_FIELDS]
        for total in body.findall(self.tag["Total"]):
            kind = total.get("TotalType") or ""
            if totals.setdefault(kind, _text(total)) != _text(total) and kind == "TransactionGrandAmount":
                conflicts.append("transaction_total")
        grand_text = totals.get("TransactionGrandAmount", "")
        tax_text = totals.get("TransactionTaxAmount", "")
        grand, tax = _decimal(grand_text), _decimal(tax_text) or _ZERO
        unreadable_total = None  # the totals as written when one cannot be read
        if grand_text and (grand is None or (tax_text and _decimal(tax_text) is None)):
            unreadable_total = f"{grand_text} - {tax_text}" if grand is not None else grand_text
            grand = None
        empty_total = ""  # a total element present but empty: unreadable, never a default
        if not grand_text and "TransactionGrandAmount" in totals:
            empty_total = _empty_number("transaction_total", 'Total TotalType="TransactionGrandAmount"')
        elif grand_text and not tax_text and "TransactionTaxAmount" in totals:
            empty_total = _empty_number("transaction_total", 'Total TotalType="TransactionTaxAmount"')
            grand = None
        type_code = body.get("TypeCode") or ""
        no_items = not items
        if no_items:
            if "TransactionGrandAmount" not in totals or _decimal(grand_text) == 0:
                self.stats.skipped_by_kind["no_items"] += 1  # nothing sold, nothing taken
                return
            # money taken with nothing to carry it: one row, rejected, that shows the money
            kind = "Return" if type_code in self.config.return_type_codes else "Sale"
            items = [_Item(kind=kind, line_no="", product_id="", name="", category="", quantity=_ZERO,
                           quantity_text="", unit_price_text="", amount=_ZERO, own_discount=_ZERO,
                           xml_line=body.sourceline or 0, ordinal=self.ordinal, original_link=None,
                           kept_as_read=True, raw={"discount": None})]
        is_return = type_code in self.config.return_type_codes or all(i.kind == "Return" for i in items)
        txn_type = "return" if is_return else "sale"
        timestamp = ""
        for name in self.names.timestamps:
            timestamp = _text(txn.element.find(name))
            if timestamp:
                break
        values = self._values(txn)
        business_date = values["business_date"]
        transaction_id = self._template(values)
        if not transaction_id:
            missing = [name for _, name in self.template if name is not None and not values.get(name)]
            log.warning("%s: transaction %d (line %s) has no %s: its lines are rejected without an id",
                        self.name, position, txn.element.sourceline, ", ".join(missing))
        customer = ""
        for path in self.names.loyalty_paths:
            matches = body.findall(path)
            customer = _text(matches[0]) if matches else ""
            if customer:
                if len(matches) > 1 and len({_text(e) for e in matches} - {""}) > 1:
                    conflicts.append("customer_id")  # two members in one transaction: a guess
                break
        currency = fields.get("CurrencyCode", "") or self.defaults.get("currency", "")
        currency, foreign = _amount_currency(body, currency)
        if foreign:
            conflicts.append("currency")
        read_code, read_reason = _conflict(conflicts, transaction_id or f"#{position}", {"currency": foreign})
        if no_items:  # the reader's reject of the whole transaction: before any other
            read_code, empty_total = _NO_ITEMS, ""
            read_reason = (f"transaction {transaction_id or f'#{position}'} has a TransactionGrandAmount of "
                           f"{grand_text or repr('')} but no Sale or Return line to carry it (none written, "
                           "or all voided)")
        original = ""
        link = body.find(self.tag["TransactionLink"])
        links = [i.original_link for i in items if i.original_link] or (
            [_link_fields(link)] if link is not None else []
        )
        if is_return and links:
            named = {**values, **links[0], **_canonical(links[0], values)}
            named["business_day"] = named["business_date"].replace("-", "")
            original = self._template(named)
        total = None if grand is None else grand - tax
        discounts = self._discounts(items, total, is_return)
        totals_text = (
            f"TransactionGrandAmount={totals.get('TransactionGrandAmount', '')} "
            f"TransactionTaxAmount={totals.get('TransactionTaxAmount', '')}"
        )
        total_text = unreadable_total
        if total is not None:
            total_text = _number_text(abs(total) if is_return else total)
        if no_items:
            items[0].raw["line_total"] = total_text  # the money shows among the rejected amounts
        store_id = values["store_id"] or self.defaults.get("store_id", "")
        for item, discount in zip(items, discounts, strict=True):
            line_total = item.amount - discount
            empty = item.empty or empty_total
            self.rows.append(
                (
                    transaction_id,
                    store_id,
                    values["register_id"] or None,
                    timestamp,
                    business_date or None,
                    customer or None,
                    txn_type if is_return else ("sale" if item.kind == "Sale" else "return"),
                    item.line_no or None,
                    item.product_id,
                    item.name or None,
                    item.category or None,
                    item.quantity_text,
                    item.unit_price_text or None,
                    item.raw["discount"] if "discount" in item.raw else _number_text(discount),
                    item.raw.get("line_total") if "line_total" in item.raw
                    else (_number_text(line_total) if not item.voided else None),
                    currency,
                    total_text,
                    None,
                    original or None,
                    item.xml_line,
                    item.ordinal,
                    str(position),
                    str(item.xml_line),
                    totals_text,
                    _BAD_NUMBER if empty else read_code,
                    empty or read_reason,
                )
            )
        if len(self.rows) >= _CHUNK_ROWS:
            self._flush()

    @staticmethod
    def _values(txn: _Transaction) -> dict[str, str]:
        """The template fields of a transaction: its own elements and the canonical names."""
        fields = txn.fields
        business_date = fields.get("BusinessDayDate", "")
        return {
            **fields,
            "store_id": fields.get("RetailStoreID", ""),
            "register_id": fields.get("WorkstationID", ""),
            "business_date": business_date,
            "business_day": business_date.replace("-", ""),
        }

    def _drop_post_voided(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Remove the transactions a later post-void in this file voids; count both sides."""
        if not self.post_voids:
            return frame
        wanted = [tid for tid, _ in self.post_voids if tid]
        voided = frame.filter(pl.col("transaction_id").is_in(wanted))
        present = set(voided.get_column("transaction_id").unique())
        skipped = self.stats.skipped_by_kind
        for tid, position in self.post_voids:
            if tid in present:
                skipped["post_void"] += 1
            else:
                skipped["post_void_original_elsewhere"] += 1
                log.warning("%s: transaction %d post-voids %s, which is not in this file: if it was sent "
                            "before, the platform still holds it", self.name, position, tid or "(no id)")
        skipped["post_voided"] += len(present)
        return frame.filter(~pl.col("transaction_id").is_in(list(present))) if present else frame

    def _template(self, values: dict[str, str]) -> str:
        parts = []
        for literal, name in self.template:
            parts.append(literal)
            if name is None:
                continue
            value = values.get(name, "")
            if not value:
                return ""  # a missing part: no id, the lines are rejected as missing transaction_id
            parts.append(value)
        return "".join(parts)

    def _discounts(self, items: list[_Item], total: Decimal | None, is_return: bool) -> list[Decimal]:
        """Each item's discount so that the lines sum to ``total`` (see the module docstring)."""
        own = [min(i.own_discount, i.amount) if not i.voided else _ZERO for i in items]
        if total is None:
            return own
        target = abs(total) if is_return else total
        sellable = [i for i in items if not i.voided]
        lines = sum((i.amount for i in sellable), _ZERO)
        difference = lines - target
        wrong_sign = (total < -self.tolerance) if not is_return else (total > self.tolerance)
        if wrong_sign or difference < -self.tolerance or difference > lines:
            return [_ZERO] * len(items)  # the totals disagree: plain amounts, validation rejects
        if difference < 0:
            difference = _ZERO  # within the tolerance: validation accepts it as it stands
        places = _places(items, total)
        unit = Decimal(1).scaleb(-places)
        own_sum = sum(own, _ZERO)
        if own_sum > difference:
            own = [_ZERO] * len(items)  # the item discounts are more than the difference: pro rata only
            own_sum = _ZERO
        rest = difference - own_sum
        base = [i.amount - d if not i.voided else _ZERO for i, d in zip(items, own, strict=True)]
        weight = sum(base, _ZERO)
        shares = [
            (rest * b / weight).quantize(unit, rounding=ROUND_HALF_EVEN) if weight > 0 else _ZERO
            for b in base
        ]
        remainder = rest - sum(shares, _ZERO)
        if remainder and weight > 0:
            # the rounding remainder goes to the largest line (it has room for it)
            largest = max(range(len(items)), key=lambda k: base[k] - shares[k])
            shares[largest] += remainder
        return [d + s for d, s in zip(own, shares, strict=True)]

    # ---- output -----------------------------------------------------------------------------

    def _flush(self) -> None:
        if not self.rows:
            return
        schema: dict[str, pl.DataType] = {c: pl.String() for c in _COLUMNS}
        schema["source_line"] = schema[_ORDINAL] = pl.Int64()
        self.frames.append(pl.DataFrame(self.rows, schema=schema, orient="row"))
        self.rows = []


def _conflict(
    fields: list[str], transaction: str, details: dict[str, str]
) -> tuple[str | None, str | None]:
    """The reader's reject of a transaction that writes one of its own values twice, differently
    (the first such field): the code lines that disagree on it get, and a reason starting with
    the field (the values are not shown: one may be a customer id; ``details``: what to say
    instead for a field)."""
    if not fields:
        return None, None
    field = fields[0]
    code = _CONFLICT_CODES.get(field, RejectCode.MIXED_TRANSACTION_VALUES)
    detail = details.get(field) or f"has different values of {field}"
    return code.value, f"{field}: transaction {transaction} {detail}"


def _amount_currency(body: Any, currency: str) -> tuple[str, str]:
    """The transaction's currency (``currency``, else the first its amounts name) and, when an
    amount of the sale names another (a ``Currency`` or ``CurrencyCode`` attribute; tenders
    excepted: a payment in foreign cash is not the sale's money), what to say about it."""
    found: list[Any] = _MONEY_WITH_CURRENCY(body)  # type: ignore[assignment]
    for element in found:
        attribute = "Currency" if element.get("Currency") is not None else "CurrencyCode"
        code = (element.get(attribute) or "").strip()
        if not currency:
            currency = code
        elif code and code.upper() != currency.strip().upper():
            named = f'<{_local(element.tag)} {attribute}="{code}">'
            return currency, (f"has {named} at line {element.sourceline}, not its currency {currency}: "
                              "amounts in two currencies are never added up")
    return currency, ""


def _empty_number(field: str, element: str) -> str:
    """The reader's reject reason (code R002) for a number element that is there but empty: the
    field first, so that validation gives it to that field."""
    return f"{field}: {field} '' (an empty <{element}>) is not a number"


def _canonical(link: dict[str, str], values: dict[str, str]) -> dict[str, str]:
    """The canonical template names of a TransactionLink (the transaction's own where it is silent)."""
    return {
        "store_id": link.get("RetailStoreID", values["store_id"]),
        "register_id": link.get("WorkstationID", values["register_id"]),
        "business_date": link.get("BusinessDayDate", values["business_date"]),
    }


def _link_fields(link: Any) -> dict[str, str]:
    return {_local(c.tag): _text(c) for c in link if isinstance(c.tag, str) and len(c) == 0 and _text(c)}


def _places(items: list[_Item], total: Decimal) -> int:
    """Decimal places to allocate in: those of the figures (2 at least, 4 at most)."""
    exponents = [-int(total.as_tuple().exponent)] + [-int(i.amount.as_tuple().exponent) for i in items]
    return max(2, min(4, max(exponents)))


_UNDEFINED_ENTITY = "ERR_UNDECLARED_ENTITY"
# the entity's name is not quoted: it may be a piece of a customer's text (``Smith&Jones;``)
_ENTITY_REASON = ("an undefined entity reference (&name;): a POSLog file uses only XML's own entities "
                  "(&amp; &lt; &gt; &quot; &apos;) and character references (&#233;)")


def _first_placed_error(exc: etree.XMLSyntaxError) -> Any:
    """The first error libxml2 noted with a line, for an error raised without one (or None)."""
    entries: Any = exc.error_log  # iterable (lxml's stubs do not say so)
    return next((entry for entry in entries if entry.line > 0), None)


def _message(exc: etree.XMLSyntaxError, encoding: str) -> str:
    """libxml2's message, with what it means for a POSLog file where that is not plain. Only its
    first line, up to any markup it quotes: libxml2 quotes what an unfinished CDATA section or a
    bad comment holds (a loyalty id, an e-mail), which a file's reason never shows."""
    text = re.sub(r",? line \d+, column \d+$", "", str(exc.msg or exc).strip())
    text = (text.splitlines() or [""])[0]
    text = re.sub(r":? <.*", "", text).strip() or type(exc).__name__
    text = re.sub(r",? (try|use) XML_PARSE_HUGE( option)?\.?", "", text).strip()
    depth = re.match(r"Excessive depth in document: (\d+)", text)
    if depth:
        return f"elements nested more than {depth[1]} levels deep (a POSLog file needs a few dozen)"
    if "Resource limit exceeded" in text or "too long" in text or "huge" in text.lower():
        return f"{text} (a text, attribute value or name larger than 10 MB: no POSLog writes one)"
    if "Invalid bytes in character encoding" in text or "not proper UTF-8" in text:
        return f"{text.splitlines()[0]}: the file is not in the encoding it declares ({encoding})"
    if "Extra content at the end" in text or "XML declaration allowed only at the start" in text:
        return (f"{text}: content after the end of the POSLog root element (only one document per file; "
                "were several joined into one?)")
    return text


def _declared_encoding(head: bytes) -> str:
    """The encoding a file's start says it is in: its byte order mark, else its XML declaration,
    else UTF-8 (what XML takes when nothing is said)."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16"
    declared = _ENCODING_DECLARATION.match(head.removeprefix(b"\xef\xbb\xbf"))
    return declared[1].decode("ascii") if declared else "UTF-8"


def _has_doctype(head: bytes) -> bool:
    """Whether the start of a file holds a DOCTYPE (in UTF-8 or an ASCII superset, UTF-16 or UTF-32)."""
    return any(mark in head for mark in _DOCTYPE_MARKS)


def _empty() -> pl.DataFrame:
    schema: dict[str, pl.DataType] = {c: pl.String() for c in _COLUMNS}
    schema["source_line"] = schema[_ORDINAL] = pl.Int64()
    return pl.DataFrame(schema=schema)


def read_poslog(
    source: Path | IO[bytes], feed: Feed, *, source_name: str, stats: ReadStats | None = None
) -> pl.DataFrame:
    """Read one POSLog file (a path, or a binary stream) into the canonical lines frame.

    Columns: every canonical column (strings), ``source_line`` (see the module docstring),
    ``src:transaction``, ``src:xml_line``, ``src:poslog_totals`` and ``source_file``.
    Skipped transactions and line items by kind are added to ``stats``. Raises
    UnreadableFileError when the file is not a well-formed POSLog document.
    """
    own = ReadStats()
    reader = _Reader(feed, source_name, own)
    try:
        frame = reader.read(source)
    except OSError as exc:
        raise UnreadableFileError(source_name, f"cannot open: {exc.strerror or exc}") from exc
    if stats is not None:
        stats.add(own)
    log.debug("read %s: %d lines, skipped %s", source_name, frame.height, dict(own.skipped_by_kind))
    return frame.with_columns(pl.lit(source_name, dtype=pl.String).alias("source_file"))

