"""Readers: one export file (CSV, JSON Lines, Parquet) into the canonical *lines* frame.

Every canonical column comes out as ``pl.String`` (nothing is typed here: validation owns typing
so that a bad value becomes a reject with a code, not a read error), plus ``source_file`` and
``source_line``. Every export column is also kept as the file had it, as ``src:<name>`` in the
file's order, so rejects can be written back with the export's own columns. Ids are text in
every format: JSON numbers are read as the digits written, never through a float.

**CSV** is read by polars when it can be trusted with the file (line breaks all ``\n`` or all
``\r\n``, no blank first line) and accepts it: the common, fast case. A file polars refuses
(ragged rows, stray or unbalanced quotes) or cannot be trusted with (bare ``\r`` or mixed line
breaks, a leading blank line) is read by the careful record-level reader
(:mod:`pipeline.core.careful_csv`), which gives each record it cannot read a reject code and reads
the rest. Both read the same file the same way. A byte order mark selects UTF-8, UTF-16 or
UTF-32; otherwise ``format.encoding`` applies.

A record a reader cannot read carries its code and reason in ``read_code`` / ``read_reason``
(validation turns them into the row's reject): ``R019_WRONG_FIELD_COUNT``,
``R020_UNBALANCED_QUOTE``, ``R021_NOT_JSON``, ``R022_NUL_IN_ROW`` (``R019`` also for a CSV file's last
record short of fields with no line break after it: a line still being written). The columns are only present
when a reader looked at records one by one or found a NUL. The POSLog reader also flags one field
of a line (a reason starting with ``field: ``): a value its transaction writes twice, differently
(``R014``-``R016``, ``R027``), or a number element there but empty (``R002``).

``source_line`` is the physical line of the record in the file (``\n``, ``\r\n`` and ``\r`` each
end a line):

* CSV with a header: the header is line 1, the first record line 2 (without a header: line 1).
  Blank lines, and lines whose every field is empty or blank (nothing to account for), are
  counted and dropped. A quoted field holding line breaks makes its record span several lines:
  the number is the record's first line.
* JSON Lines: the line number (blank lines counted, skipped).
* Parquet: the row number + 1.

A file that cannot be read at all raises :class:`~pipeline.errors.UnreadableFileError` naming the
file and a one-line reason of at most :data:`MAX_REASON_CHARS` characters (empty, binary,
undecodable, a duplicated header name, not CSV/JSON/Parquet, required columns missing).
"""

from __future__ import annotations

import io
import json
import logging
import re
import string
from pathlib import Path
from typing import IO, Any, cast

import polars as pl
from polars.exceptions import PanicException

from pipeline.config import Feed, FormatConfig
from pipeline.core.careful_csv import excerpt, field_count, records, split_lines
from pipeline.core.gunzip import GzipReader, gunzip, is_gzip_name
from pipeline.core.readstats import ReadStats
from pipeline.core.rejects import RejectCode
from pipeline.errors import ConfigError, PosfeedError, UnreadableFileError
from pipeline.logs import counted
from pipeline.records import CANONICAL_COLUMNS, REQUIRED_COLUMNS

__all__ = [
    "EXTRA_PREFIX",
    "MAX_REASON_CHARS",
    "READ_CODE",
    "READ_REASON",
    "ColumnsByName",
    "column_key",
    "one_line",
    "read_bytes",
    "read_file",
    "template_fields",
]

log = logging.getLogger(__name__)

EXTRA_PREFIX = "src:"
READ_CODE = "read_code"  # the reject code a reader gave a record it could not read (else null)
READ_REASON = "read_reason"
MAX_REASON_CHARS = 300
_BOM = b"\xef\xbb\xbf"
_SNIFF_BYTES = 8192


def template_fields(template: str) -> list[tuple[str, str | None]]:
    """Split a ``transaction_id_template`` into (literal, field-or-None) parts.

    Raises ConfigError for format specs or conversions, which the template does not support.
    """
    parts: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"bad template {template!r}: {exc}", key="format.transaction_id_template") from exc
    for literal, field, spec, conversion in parsed:
        if spec or conversion:
            raise ConfigError(
                f"template field {{{field}}} may not have a format spec or conversion",
                key="format.transaction_id_template",
            )
        if field == "":
            raise ConfigError("template has an empty {} field", key="format.transaction_id_template")
        parts.append((literal, field))
    return parts


_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),  # before UTF-16 LE, whose BOM it starts with
    (_BOM, "utf-8"),
    (b"\xfe\xff", "utf-16-be"),
    (b"\xff\xfe", "utf-16-le"),
)


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters (a reason never carries a file's content)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _unreadable(name: str, reason: str) -> UnreadableFileError:
    return UnreadableFileError(name, one_line(reason))


def _decode(data: bytes, fmt: FormatConfig, name: str) -> bytes:
    """The file's bytes as UTF-8 without a BOM (polars reads UTF-8 only).

    A byte order mark decides the encoding (UTF-8, UTF-16 or UTF-32, either byte order) whatever
    ``format.encoding`` says; without one, ``format.encoding`` does.
    """
    encoding: str = fmt.encoding
    for bom, bom_encoding in _BOMS:
        if data.startswith(bom):
            data, encoding = data[len(bom) :], bom_encoding
            break
    if encoding in ("utf-8", "utf-8-sig"):
        return data  # polars checks UTF-8 itself; _not_utf8 explains a failure
    try:
        return data.decode(encoding).encode("utf-8")
    except UnicodeError as exc:
        at = exc.start if isinstance(exc, UnicodeDecodeError) else 0
        wide = encoding.startswith(("utf-16", "utf-32"))  # its line breaks are not single bytes
        where = f"at offset {at}" if wide else _where(data, at)
        byte = f"byte 0x{data[at]:02x} {where}" if at < len(data) else f"offset {at}"
        raise _unreadable(name, f"not valid {encoding} ({byte})") from exc


def _where(data: bytes, offset: int) -> str:
    """Where byte ``offset`` is: its line (as ``source_line`` counts them) and its offset."""
    before = data[:offset]
    line = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n") + 1
    return f"on line {line}, at offset {offset}"


def _not_utf8(data: bytes, name: str) -> UnreadableFileError | None:
    """An error naming the first byte that is not UTF-8, or None when the data is UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _unreadable(
            name,
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} {_where(data, exc.start)}); "
            'set format.encoding (e.g. "cp1252" or "latin-1")',
        )
    return None


# the first bytes of formats that are surely not a text export
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PAR1", 'file is Parquet, not text (set format.kind = "parquet")'),
    (b"PK\x03\x04", "file is a ZIP archive (an .xlsx workbook is one), not text"),
    (b"\x1f\x8b", "file is gzip-compressed, not text"),
    (b"BZh", "file is bzip2-compressed, not text"),
    (b"\xfd7zXZ\x00", "file is xz-compressed, not text"),
    (b"%PDF-", "file is a PDF document, not text"),
    (b"\x89PNG", "file is binary (a PNG image), not text"),
    (b"\xff\xd8\xff", "file is binary (a JPEG image), not text"),
    (b"SQLite format 3\x00", "file is binary (an SQLite database), not text"),
)
# control bytes that text never holds (tab, line breaks, form feed and escape excluded)
_CONTROL = bytes([*range(0, 9), 11, *range(14, 27), *range(28, 32)])
_BINARY_SHARE = 0.05  # this share of control bytes in the first 8 KiB makes a file binary
_WIDE_SHARE = 0.5  # this share of NULs at odd (or even) positions, none at the others: UTF-16


def _check_text(data: bytes, name: str) -> None:
    """Raise for an empty or binary file; a NUL byte or two in a text file are a row's problem."""
    if not data or data.isspace():  # isspace stops at the first other byte: no copy, no full scan
        raise UnreadableFileError(name, "file is empty")
    head = data[:_SNIFF_BYTES]
    for magic, reason in _MAGIC:
        if head.startswith(magic):
            raise UnreadableFileError(name, reason)
    pairs = len(head) // 2
    if pairs >= 2:  # text of one-byte characters in UTF-16: every other byte NUL, the others text
        halves = sorted((head[0 : pairs * 2 : 2], head[1 : pairs * 2 : 2]), key=lambda half: half.count(0))
        text, wide = halves
        control = len(text) - len(text.translate(None, _CONTROL))
        if wide.count(0) >= _WIDE_SHARE * pairs and control <= _BINARY_SHARE * pairs:
            raise UnreadableFileError(
                name, "file looks like UTF-16 without a byte order mark (every other byte NUL); export "
                "it as UTF-8, or as UTF-16 with its byte order mark"
            )
    control = len(head) - len(head.translate(None, _CONTROL))
    if control and control >= _BINARY_SHARE * len(head):
        raise UnreadableFileError(
            name, f"file is binary ({control} control bytes in the first {len(head)}), not text"
        )


def _fast_path_fits(data: bytes) -> bool:
    """Whether polars can be trusted with the file as it is: line breaks all ``\\n`` or all
    ``\\r\\n`` (a bare ``\\r`` would be read as part of a field) and no blank first line."""
    first = data[: data.find(b"\n")] if b"\n" in data[:_SNIFF_BYTES * 8] else data[:_SNIFF_BYTES]
    if not first.strip():
        return False
    cr = data.count(b"\r") if b"\r" in data else 0
    return cr == 0 or cr == data.count(b"\r\n")


def _header_names(fields: list[str | None], name: str) -> list[str]:
    """The export's column names (an empty one named by its position); raises for a name given twice."""
    names = [f if f and f.strip() else f"column_{i}" for i, f in enumerate(fields, start=1)]
    seen: dict[str, int] = {}
    for position, column in enumerate(names, start=1):
        key = column.strip()
        if key in seen:
            raise _unreadable(
                name,
                f"the header names column {excerpt(key)} twice (columns {seen[key]} and {position}); "
                "rename one of them",
            )
        seen[key] = position
    return names


def _first_record(data: bytes, fmt: FormatConfig, name: str) -> list[str | None] | None:
    """The header's fields when the first line is the whole header (no quoted line break), else None."""
    end = data.find(b"\n")
    raw = data if end < 0 else data[:end]
    try:
        text = raw.decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError:
        return None
    found = next(records(text, delimiter=fmt.delimiter, quote=fmt.quote_char, width=None), None)
    if found is None or found.code is not None:
        return None
    return found.fields


def _blank_rows(frame: pl.DataFrame, columns: list[str]) -> pl.Series | None:
    """Blank records (blank lines, ``,,,``), or None when there are none: every field empty or
    blank, the last one empty (see :mod:`pipeline.core.careful_csv`). Only rows whose last field
    is empty (cheap to find, usually none) are looked at closely."""
    last = pl.col(columns[-1])
    maybe = frame.select((last.is_null() | (last.str.len_bytes() == 0)).alias("blank")).to_series()
    if not maybe.any():
        return None
    positions = maybe.arg_true()
    empty = pl.all_horizontal([(pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "")) for c in columns])
    kept = frame[positions].select(empty.alias("blank")).to_series()
    return maybe.scatter(positions.filter(~kept), False)


def _nul_flags(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """read_code / read_reason for the rows holding a NUL character."""
    where = [pl.col(c).str.contains("\x00", literal=True).fill_null(False) for c in columns]
    column = pl.coalesce([pl.when(w).then(pl.lit(c)) for w, c in zip(where, columns, strict=True)])
    return frame.with_columns(
        pl.when(pl.any_horizontal(where)).then(pl.lit(RejectCode.NUL_IN_ROW.value)).alias(READ_CODE),
        pl.when(pl.any_horizontal(where))
        .then(pl.format("NUL character in column '{}'", column))
        .alias(READ_REASON),
    )


_POLARS_COLUMN = re.compile(r"at column '([^'\n]{1,80})'")


def _refusal_kind(exc: BaseException) -> str:
    """What polars refused, without its text: that quotes the field it could not parse (a
    customer id, an e-mail). The error's kind, and the column when polars names it."""
    column = _POLARS_COLUMN.search(str(exc))
    return type(exc).__name__ + (f" at column '{column[1]}'" if column else "")


def _polars_csv(data: bytes, fmt: FormatConfig, names: list[str] | None, name: str) -> pl.DataFrame | None:
    """The fast reader: polars over the whole file, or None when polars refuses it."""
    try:
        frame = pl.read_csv(
            data,
            has_header=fmt.has_header,
            separator=fmt.delimiter,
            quote_char=fmt.quote_char,
            infer_schema=False,
            raise_if_empty=True,
            new_columns=names,
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        not_utf8 = _not_utf8(data, name)
        if not_utf8 is not None:
            raise not_utf8 from exc
        log.info("%s: the fast reader refused the file (%s); reading it record by record",
                 name, _refusal_kind(exc))
        return None
    if names is not None and frame.width != len(names):
        return None
    header_lines = 1 if fmt.has_header else 0
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    # a record takes more than one physical line only when a quoted field holds a line break:
    # counting those is only paid for when the file has quotes and more line breaks than records
    quoted = fmt.quote_char.encode() in data
    physical = data.count(b"\n") + (0 if data.endswith(b"\n") else 1) if quoted else 0
    if physical > frame.height + header_lines and frame.width:
        embedded = pl.sum_horizontal(
            pl.col(c).str.count_matches("\n", literal=True).fill_null(0) for c in frame.columns
        ).cast(pl.Int64)
        line = 1 + header_lines + index + (embedded.cum_sum() - embedded)
    else:
        line = index + 1 + header_lines
    columns = frame.columns
    # judged before source_line is added: selecting from a frame whose columns are chunked
    # differently copies every column it reads into one chunk
    blank = _blank_rows(frame, columns) if columns else None
    frame = frame.with_columns(line.alias("source_line"))
    if blank is not None and blank.any():
        frame = frame.filter(~blank)  # blank lines are not records
    if b"\x00" in data:
        frame = _nul_flags(frame, columns)
    return frame


def _careful_csv(data: bytes, fmt: FormatConfig, name: str) -> pl.DataFrame:
    """The careful reader over the whole file (see :mod:`pipeline.core.careful_csv`)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise (_not_utf8(data, name) or _unreadable(name, "not valid UTF-8")) from exc
    known = _first_record(data, fmt, name) if fmt.has_header else None  # to name a bad quote's column
    found = records(text, delimiter=fmt.delimiter, quote=fmt.quote_char, width=None,
                    names=_header_names(known, name) if known is not None else None)
    names: list[str] | None = None
    if fmt.has_header:
        header = next(found, None)
        if header is None:
            raise UnreadableFileError(name, "file is empty")
        if header.code is not None:
            raise _unreadable(name, f"the header cannot be read: {header.reason}")
        names = _header_names(header.fields, name)
    rows = list(found)
    if names is None:
        width = len(rows[0].fields) if rows else 0
        names = [f"column_{i}" for i in range(1, width + 1)]
    columns: dict[str, list[str | None]] = {c: [] for c in names}
    cells = [r.fields for r in rows]
    for column, values in zip(names, zip(*cells, strict=True) if cells else [() for _ in names],
                              strict=True):
        columns[column] = list(values)
    codes: list[str | None] = []
    reasons: list[str | None] = []
    for r in rows:
        code, reason = r.code, r.reason
        if code is None:
            nul = next((c for c, v in zip(names, r.fields, strict=True) if v and "\x00" in v), None)
            if nul is not None:
                code, reason = RejectCode.NUL_IN_ROW, f"NUL character in column '{nul}'"
        codes.append(code.value if code is not None else None)
        reasons.append(reason)
    schema = {c: pl.String() for c in names}
    frame = pl.DataFrame(columns, schema=schema)
    return frame.with_columns(
        pl.Series("source_line", [r.line for r in rows], dtype=pl.Int64),
        pl.Series(READ_CODE, codes, dtype=pl.String),
        pl.Series(READ_REASON, reasons, dtype=pl.String),
    )


_SEP_LINE = re.compile(rb"sep=(.)[ \t]*(?=\r|\n|$)", re.IGNORECASE)


def _without_sep_line(data: bytes, fmt: FormatConfig, name: str) -> bytes:
    """``data`` with a first line ``sep=X`` (written for Excel: the file's delimiter) left empty,
    so every line keeps its number; one naming another delimiter than ``format.delimiter`` makes
    the file unreadable."""
    found = _SEP_LINE.match(data) if data[:4].lower() == b"sep=" else None
    if found is None:
        return data
    named = found.group(1).decode("latin-1")
    if named != fmt.delimiter:
        raise _unreadable(name, f"line 1 is sep={named}: the file's delimiter is {named!r}, "
                                f"format.delimiter is {fmt.delimiter!r}")
    return data[found.end() :]


def _read_csv(data: bytes, fmt: FormatConfig, name: str) -> pl.DataFrame:
    data = _decode(data, fmt, name)
    _check_text(data, name)
    data = _without_sep_line(data, fmt, name)
    frame: pl.DataFrame | None = None
    if _fast_path_fits(data):
        names: list[str] | None = None
        if fmt.has_header:
            fields = _first_record(data, fmt, name)
            names = _header_names(fields, name) if fields is not None else None
        if names is not None or not fmt.has_header:
            frame = _polars_csv(data, fmt, names, name)
    if frame is None:
        frame = _careful_csv(data, fmt, name)
    frame = _cut_last_record(data, frame, fmt)
    return _repeated_headers(frame, name) if fmt.has_header else frame


def _last_lines(data: bytes, count: int) -> bytes:
    """The last ``count`` physical lines of ``data`` (``\n``, ``\r\n`` and ``\r`` each end one)."""
    start, end = 0, len(data)
    for _ in range(count):
        cut = max(data.rfind(b"\n", 0, end), data.rfind(b"\r", 0, end))
        if cut < 0:
            return data
        start = cut + 1
        end = cut - 1 if data[cut] == 0x0A and cut > 0 and data[cut - 1] == 0x0D else cut
    return data[start:]


def _cut_last_record(data: bytes, frame: pl.DataFrame, fmt: FormatConfig) -> pl.DataFrame:
    """Reject the last record when the file ends inside it: no line break after it and fewer
    fields than the header (the first record without one). That is a till's line half-written
    when the file was fetched (``…,GBP,7.29,15`` of ``…,GBP,7.29,150,``); read padded with empty
    fields it would be wrong data, not a shorter record (``R019_WRONG_FIELD_COUNT``). A complete
    last line without a line break is read as usual."""
    if frame.height == 0 or data.endswith((b"\n", b"\r")):
        return frame
    last = _last_lines(data, 1)
    if not last.replace(fmt.delimiter.encode(), b"").strip():
        return frame  # a blank last line: the last record ended with a line break
    columns = [c for c in frame.columns if c not in ("source_line", READ_CODE, READ_REASON)]
    first = int(frame.get_column("source_line")[-1])
    physical = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n") + 1
    if READ_CODE in frame.columns and frame.get_column(READ_CODE)[-1] is not None:
        return frame  # already a reject (an unclosed quote, too many fields)
    try:
        text = _last_lines(data, physical - first + 1).decode("utf-8")
    except UnicodeDecodeError:
        return frame
    found = field_count(text, delimiter=fmt.delimiter, quote=fmt.quote_char)
    if found is None or found >= len(columns):
        return frame
    of = "the header" if fmt.has_header else "the first record"
    why = (f"{found} fields where {of} has {len(columns)}, and no line break at the end of the file: "
           f"its last line, cut off while the file was being written? (line {first})")
    if READ_CODE not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in (READ_CODE, READ_REASON))
    at = pl.int_range(pl.len()) == frame.height - 1
    return frame.with_columns(
        pl.when(at).then(pl.lit(RejectCode.WRONG_FIELD_COUNT.value)).otherwise(pl.col(READ_CODE)).alias(READ_CODE),
        pl.when(at).then(pl.lit(why)).otherwise(pl.col(READ_REASON)).alias(READ_REASON),
    )


def _repeated_headers(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    """Flag records that repeat the header (two exports joined into one file): ``R035``. A record
    that is another header (the names in another order, or other names) makes the file unreadable:
    the records after it are in a layout the first header does not describe.

    Only records whose first or second field is a column name (case and blanks aside) are looked at.
    """
    columns = [c for c in frame.columns if c not in ("source_line", READ_CODE, READ_REASON)]
    # as the header was written: a column without a name (see _header_names) was empty
    header = ["" if c == f"column_{i}" else c.strip().lower() for i, c in enumerate(columns, start=1)]
    keys = set(header) - {""}
    if len(columns) < 2 or frame.height == 0:
        return frame
    near = [pl.col(c).str.strip_chars().str.to_lowercase().is_in(list(keys)).fill_null(False)
            for c in columns[:2]]
    candidates = frame.filter(pl.any_horizontal(near))
    repeated: list[int] = []
    for *values, line in candidates.select(*columns, "source_line").iter_rows():
        texts = [(v or "").strip().lower() for v in values]
        filled = [t for t in texts if t]
        if len(filled) < 2 or not all(t in keys for t in filled):
            continue  # a value that happens to be a column name
        if texts == header:
            repeated.append(line)
            continue
        raise _unreadable(
            name,
            f"line {line} is a header other than the file's first (columns "
            f"{', '.join(excerpt(t) for t in filled[:6])}{' ...' if len(filled) > 6 else ''}): two exports "
            "of different layouts joined into one file; the records after it cannot be read by the first",
        )
    if not repeated:
        return frame
    if READ_CODE not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in (READ_CODE, READ_REASON))
    at = pl.col("source_line").is_in(repeated)
    return frame.with_columns(
        # a header holds no data: its names are no transaction id, currency or amount to count
        *(pl.when(at).then(None).otherwise(pl.col(c)).alias(c) for c in columns),
        pl.when(at).then(pl.lit(RejectCode.REPEATED_HEADER.value)).otherwise(pl.col(READ_CODE)).alias(READ_CODE),
        pl.when(at)
        .then(pl.lit("the record repeats the header (two exports joined into one file?); the records "
                     "after it are read with it"))
        .otherwise(pl.col(READ_REASON))
        .alias(READ_REASON),
    )


def _found_columns(present: list[str], fmt: FormatConfig) -> str:
    """What a file's first line held instead of the required columns, for its unreadable reason.

    Quoted only when it names at least one column this feed knows (it is a header then); a first
    line naming none may be a data row, the header missing, and its values (a customer id, an
    e-mail) stay out of the reason, which reaches reports, logs and the ledger.
    """
    known = {c.lower() for c in CANONICAL_COLUMNS} | {v.strip().lower() for v in fmt.columns.values()}
    texts = [c.strip().lower() for c in present]
    one_field = len(present) == 1 and fmt.kind == "csv"
    if not any(t in known for t in texts) and not (one_field and any(k in texts[0] for k in known)):
        return (f"{counted(len(present), 'column')}, none a column name this feed knows (is the first line a "
                "data row, the header missing? its values are not shown)")
    found = ", ".join(excerpt(c) for c in present[:12]) + (" ..." if len(present) > 12 else "")
    hint = f" (wrong delimiter? format.delimiter is {fmt.delimiter!r})" if one_field else ""
    return found + hint


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return one_line(text[0], 200) if text else type(exc).__name__


def _stringify(frame: pl.DataFrame) -> pl.DataFrame:
    """Every column as text (temporal values in ISO 8601), so validation types them."""
    exprs = []
    for col, dtype in frame.schema.items():
        c = pl.col(col)
        if dtype == pl.String:
            exprs.append(c)
        elif isinstance(dtype, pl.Datetime):
            fmt = "%Y-%m-%dT%H:%M:%S%.f" + ("%:z" if dtype.time_zone else "")
            exprs.append(c.dt.strftime(fmt).alias(col))
        elif dtype == pl.Date:
            exprs.append(c.dt.strftime("%Y-%m-%d").alias(col))
        elif isinstance(dtype, pl.Struct):
            exprs.append(c.struct.json_encode().alias(col))
        else:
            exprs.append(c.cast(pl.String, strict=False).alias(col))
    return frame.select(exprs)


def _json_text(value: object) -> str | None:
    """A JSON value as text: strings as they are, numbers exactly as written (never via float)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# different keys a JSON Lines file may use in all (an export has a few dozen); each one is a column
MAX_JSONL_KEYS = 1000


class _RepeatedKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _object_of(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key written twice (``json`` would keep the last value)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        keys = [k for k, _ in pairs]
        raise _RepeatedKey(next(k for k in keys if keys.count(k) > 1))
    return found


def _read_keys(fmt: FormatConfig) -> frozenset[str]:
    """The keys (trimmed) whose values a feed reads: its canonical columns, where ``columns`` maps
    them, and the fields of its ``transaction_id_template``."""
    keys = {*CANONICAL_COLUMNS, *(str(ref).strip() for ref in fmt.columns.values())}
    if fmt.transaction_id_template:
        keys.update(field for _, field in template_fields(fmt.transaction_id_template) if field)
    return frozenset(keys)


def _not_a_value(parsed: dict[str, Any], read_keys: frozenset[str]) -> str | None:
    """Why a key the feed reads holds no text or number (an object, an array, a boolean), if one does."""
    for key, value in parsed.items():
        if isinstance(value, dict | list | bool) and key.strip() in read_keys:
            kind = "an object" if isinstance(value, dict) else "an array" if isinstance(value, list) else (
                json.dumps(value))
            return f"field '{one_line(key, 40)}' holds {kind}, not a text or a number"
    return None


def _read_jsonl(data: bytes, fmt: FormatConfig, name: str) -> pl.DataFrame:
    """JSON Lines, one object per line; numbers are read as the text they were written as, so an
    id such as 12345678901234567890 keeps every digit. A line that is not a JSON object is a
    reject (``R021_NOT_JSON``), not the end of the file; so is one whose field holds an object, an
    array or a boolean (``R030_JSON_VALUE_NOT_TEXT``), which no id, amount or code can be."""
    read_keys = _read_keys(fmt)
    data = _decode(data, fmt, name)
    _check_text(data, name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise (_not_utf8(data, name) or _unreadable(name, "not valid UTF-8")) from exc
    lines, _ = split_lines(text)
    columns: dict[str, list[str | None]] = {}
    numbers: list[int] = []
    codes: list[str | None] = []
    reasons: list[str | None] = []
    first_error: str | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        code: RejectCode | None = None
        reason: str | None = None
        fault: str | None = None  # the reason without the excerpt of the line
        values: dict[str, str | None] = {}
        try:
            parsed = json.loads(line, parse_float=str, parse_int=str, parse_constant=str,
                                object_pairs_hook=_object_of)
        except _RepeatedKey as exc:
            code = RejectCode.NOT_JSON
            reason = (f"line {number} repeats the key '{one_line(exc.key, 40)}': which value counts "
                      "would be a guess")
        except (ValueError, RecursionError) as exc:
            code = RejectCode.NOT_JSON
            fault = f"line {number} is not JSON ({one_line(str(exc), 80)})"
            reason = f"{fault}: {excerpt(line)}"
        else:
            if isinstance(parsed, dict):
                values = {str(k): _json_text(v) for k, v in parsed.items()}
                nul = next((k for k, v in values.items() if v and "\x00" in v), None)
                if nul is not None:
                    code, reason = RejectCode.NUL_IN_ROW, f"NUL character in field '{nul}'"
                elif (odd := _not_a_value(parsed, read_keys)) is not None:
                    code, reason = RejectCode.JSON_VALUE_NOT_TEXT, odd
            else:
                code = RejectCode.NOT_JSON
                fault = f"line {number} is JSON but not an object"
                reason = f"{fault}: {excerpt(line)}"
        if code is not None and first_error is None:
            first_error = fault or reason  # a file's reason quotes none of its lines
        row = len(numbers)
        for key, value in values.items():
            column = columns.get(key)
            if column is None:
                if len(columns) == MAX_JSONL_KEYS:  # each key is a column as long as the file
                    raise _unreadable(name, f"more than {MAX_JSONL_KEYS} different keys (line {number})")
                column = columns[key] = [None] * row
            column.append(value)
        for column in columns.values():
            if len(column) == row:
                column.append(None)
        numbers.append(number)
        codes.append(code.value if code is not None else None)
        reasons.append(reason)
    if not columns:
        raise _unreadable(name, f"not readable as JSON Lines: {first_error or 'no JSON object'}")
    frame = pl.DataFrame(columns, schema={c: pl.String() for c in columns})
    return frame.with_columns(
        pl.Series("source_line", numbers, dtype=pl.Int64),
        pl.Series(READ_CODE, codes, dtype=pl.String),
        pl.Series(READ_REASON, reasons, dtype=pl.String),
    )


def _read_parquet(data: bytes, name: str, read_keys: frozenset[str] = frozenset()) -> pl.DataFrame:
    """A Parquet file, every column as text. A column of ``read_keys`` holding objects, lists or
    booleans makes the file unreadable: no id, amount or code is one (JSON Lines rejects such a
    line, ``R030``; a Parquet column is that type on every row)."""
    if not data:
        raise UnreadableFileError(name, "file is empty")
    try:
        frame = pl.read_parquet(data)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise _unreadable(name, f"not readable as Parquet: {_first_line(exc)}") from exc
    odd = next(((c, t) for c, t in frame.schema.items()
                if c.strip() in read_keys and (t.is_nested() or t == pl.Boolean)), None)
    if odd is not None:
        raise _unreadable(name, f"column '{one_line(odd[0], 40)}' holds {odd[1]} values, not text or numbers")
    frame = _stringify(frame)
    columns = frame.columns
    frame = frame.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("source_line"))
    if columns and frame.select(
        pl.any_horizontal(pl.col(c).str.contains("\x00", literal=True) for c in columns).any()
    ).item():
        frame = _nul_flags(frame, columns)
    return frame


def column_key(column: str) -> str:
    """A column name as a feed matches it: case, surrounding blanks, and blanks or underscores
    between its words aside (``Points Burned`` and ``POINTS_BURNED`` are ``points_burned``)."""
    return re.sub(r"[\s_]+", "_", column.strip().casefold())


class ColumnsByName:
    """An export's columns looked up by the name a feed gives them, as :func:`column_key` matches
    names. Two columns matching one name (``discount`` and ``Discount``) make the file unreadable
    when the feed reads that name: which one it means would be a guess."""

    def __init__(self, present: list[str], file: str):
        self._file = file
        self._by_key: dict[str, list[str]] = {}
        for column in present:
            self._by_key.setdefault(column_key(column), []).append(column)

    def get(self, wanted: str) -> str | None:
        found = self._by_key.get(column_key(wanted), [])
        if len(found) > 1:
            shown = " and ".join(excerpt(c) for c in found[:4])
            raise _unreadable(
                self._file,
                f"columns {shown} differ only in case or blanks; which one is {excerpt(wanted.strip())} "
                "would be a guess: rename one of them",
            )
        return found[0] if found else None

    def __contains__(self, wanted: object) -> bool:
        return isinstance(wanted, str) and self.get(wanted) is not None


def _map_columns(frame: pl.DataFrame, feed: Feed, name: str) -> pl.DataFrame:
    """Rename export columns to canonical names, add defaults, build the template id."""
    fmt = feed.format
    present = [c for c in frame.columns if c not in ("source_line", READ_CODE, READ_REASON)]
    stripped = ColumnsByName(present, name)
    if not fmt.has_header:
        # without a header the export's columns are positions: "1" is the first column
        positional = {str(i): c for i, c in enumerate(present, start=1)}
        mapping = fmt.columns or {canon: str(i) for i, canon in enumerate(CANONICAL_COLUMNS, start=1)}
        source_of = {canon: positional.get(str(ref).strip()) for canon, ref in mapping.items()}
    else:
        source_of = {canon: stripped.get(ref.strip()) for canon, ref in fmt.columns.items()}
        for canon in CANONICAL_COLUMNS:
            if canon not in fmt.columns and canon in stripped:
                source_of[canon] = stripped.get(canon)

    exprs: list[pl.Expr] = []
    for canon in CANONICAL_COLUMNS:
        src = source_of.get(canon)
        value = pl.col(src) if src is not None else pl.lit(None, dtype=pl.String)
        if canon in fmt.defaults:
            value = value.fill_null(pl.lit(fmt.defaults[canon]))
        if canon == "customer_id" and fmt.normalize_float_customer_ids and src is not None:
            value = value.str.replace(r"^(\s*\d+)\.0+(\s*)$", "${1}${2}")
        exprs.append(value.alias(canon))
    if fmt.transaction_id_template:
        pieces: list[pl.Expr] = []
        for literal, field in template_fields(fmt.transaction_id_template):
            if literal:
                pieces.append(pl.lit(literal))
            if field is None:
                continue
            src = source_of.get(field) if field in CANONICAL_COLUMNS else stripped.get(field)
            if src is None and field in CANONICAL_COLUMNS and field in fmt.defaults:
                pieces.append(pl.lit(fmt.defaults[field]))
            elif src is None:
                raise _unreadable(
                    name, f"transaction_id_template needs column {field!r}, which the file lacks"
                )
            else:
                pieces.append(pl.col(src).str.strip_chars())
        exprs[CANONICAL_COLUMNS.index("transaction_id")] = pl.concat_str(pieces).alias("transaction_id")

    available = {c for c in CANONICAL_COLUMNS if source_of.get(c) is not None or c in fmt.defaults}
    if fmt.transaction_id_template:
        available.add("transaction_id")
    missing = [c for c in REQUIRED_COLUMNS if c not in available]
    if missing:
        needed = ", ".join(fmt.columns.get(c, c) for c in missing)
        raise _unreadable(name, f"required columns missing: {needed}; found {_found_columns(present, fmt)}")

    # every export column as the file had it, in the file's order (rejects.csv shows these)
    originals = [pl.col(c).alias(EXTRA_PREFIX + c.strip()) for c in present]
    flags = [pl.col(c) for c in (READ_CODE, READ_REASON) if c in frame.columns]
    return frame.select(*exprs, *originals, pl.col("source_line"), *flags)


def read_bytes(data: bytes, feed: Feed, *, source_name: str, stats: ReadStats | None = None) -> pl.DataFrame:
    """Read one export file's content (see :func:`read_file`)."""
    fmt = feed.format
    if fmt.kind == "poslog":  # XML: its own reader (pipeline.core.poslog)
        from pipeline.core.poslog import read_poslog

        stream: IO[bytes] = io.BytesIO(data)
        if is_gzip_name(source_name):
            stream = cast(IO[bytes], GzipReader(stream, name=source_name, limit=fmt.max_decompressed_bytes))
        return read_poslog(stream, feed, source_name=source_name, stats=stats)
    if is_gzip_name(source_name):
        data = gunzip(io.BytesIO(data), name=source_name, limit=fmt.max_decompressed_bytes)
    return _read_data(data, feed, source_name)


def read_file(
    path: Path, feed: Feed, *, source_name: str | None = None, stats: ReadStats | None = None
) -> pl.DataFrame:
    """Read one export file into the canonical lines frame (all strings).

    Columns: every canonical column (null where the export lacks it; ``format.defaults`` fill
    missing columns and empty cells; ``format.transaction_id_template`` builds ``transaction_id``),
    unmapped export columns as ``src:<name>``, ``source_line`` (Int64) and ``source_file``
    (``source_name`` or the file name). Raises UnreadableFileError when the file cannot be read,
    also when a reader fails on it in a way no check foresaw (a lone surrogate in JSON, a column
    type polars cannot show as text, a panic inside polars): that file is set aside with the
    error, never the whole run stopped on every retry. ``stats`` collects what a reader skips
    (POSLog's control transactions and the like).
    """
    name = source_name or path.name
    try:
        return _read_file(path, feed, name, stats)
    except (PosfeedError, MemoryError):
        raise
    except (Exception, PanicException) as exc:
        log.warning("reading %s failed", name, exc_info=True)
        raise _unreadable(name, f"the reader failed on it: {type(exc).__name__}: {exc}") from exc


def _read_file(path: Path, feed: Feed, name: str, stats: ReadStats | None) -> pl.DataFrame:
    limit = feed.format.max_decompressed_bytes
    if feed.format.kind == "poslog":  # streamed from the file, never read whole; see core/poslog.py
        from pipeline.core.poslog import read_poslog

        if not is_gzip_name(name):
            return read_poslog(path, feed, source_name=name, stats=stats)
        try:
            with path.open("rb") as stored, GzipReader(stored, name=name, limit=limit) as stream:
                return read_poslog(cast(IO[bytes], stream), feed, source_name=name, stats=stats)
        except OSError as exc:
            raise _unreadable(name, f"cannot open: {exc.strerror or exc}") from exc
    try:
        if is_gzip_name(name):  # decompressed in pieces as read, never staged decompressed
            with path.open("rb") as stored:
                data = gunzip(stored, name=name, limit=limit)
        else:
            data = path.read_bytes()
    except OSError as exc:
        raise _unreadable(name, f"cannot open: {exc.strerror or exc}") from exc
    frame = _read_data(data, feed, name)
    log.debug("read %s: %d rows", name, frame.height)
    return frame


def _read_data(data: bytes, feed: Feed, name: str) -> pl.DataFrame:
    """:func:`read_bytes` of content already decompressed."""
    fmt = feed.format
    if fmt.kind == "csv":
        frame = _read_csv(data, fmt, name)
    elif fmt.kind == "jsonl":
        frame = _read_jsonl(data, fmt, name)
    else:
        frame = _read_parquet(data, name, _read_keys(fmt))
    frame = _map_columns(frame, feed, name)
    return frame.with_columns(pl.lit(name, dtype=pl.String).alias("source_file"))


def read_table(data: bytes, fmt: FormatConfig, *, source_name: str) -> pl.DataFrame:
    """One file's rows as they are (all strings, the export's own column names, ``source_line``),
    without the checkout mapping: enrollments and claims map their own layouts."""
    if is_gzip_name(source_name):
        data = gunzip(io.BytesIO(data), name=source_name, limit=fmt.max_decompressed_bytes)
    if fmt.kind == "csv":
        return _read_csv(data, fmt, source_name)
    if fmt.kind == "jsonl":
        return _read_jsonl(data, fmt, source_name)
    return _read_parquet(data, source_name)
