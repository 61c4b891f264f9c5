"""Readers: one export file (CSV, JSON Lines, Parquet) into the canonical *lines* frame.

Every canonical column comes out as ``pl.String`` (nothing is typed here: validation owns typing
so that a bad value becomes a reject with a code, not a read error), plus ``source_file`` and
``source_line``. Export columns that the feed does not map are kept as ``src:<name>`` so rejects
can be written back with the export's own columns.

``source_line`` is the physical line of the record in the file:

* CSV with a header: the header is line 1, the first record line 2 (without a header: line 1).
  Blank lines, and lines whose every field is empty (nothing to account for), are counted and
  dropped. A quoted field holding line breaks makes its record span several lines: the breaks
  inside fields are counted per record, so the number is the record's first line. The one
  approximation: a bare ``\r`` line break (old Mac files) is not counted as a line.
* JSON Lines: the line number (blank lines counted, skipped).
* Parquet: the row number + 1.

A file that cannot be read at all raises :class:`~pipeline.errors.UnreadableFileError` naming the
file and the reason (empty, binary, undecodable, not CSV/JSON/Parquet, required columns missing).
"""

from __future__ import annotations

import logging
import string
from pathlib import Path

import polars as pl

from pipeline.config import Feed, FormatConfig
from pipeline.errors import ConfigError, UnreadableFileError
from pipeline.records import CANONICAL_COLUMNS, REQUIRED_COLUMNS

__all__ = ["EXTRA_PREFIX", "read_bytes", "read_file", "template_fields"]

log = logging.getLogger(__name__)

EXTRA_PREFIX = "src:"
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


def _decode(data: bytes, fmt: FormatConfig, name: str) -> bytes:
    """The file's bytes as UTF-8 without a BOM (polars reads UTF-8 only)."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    if fmt.encoding in ("utf-8", "utf-8-sig"):
        return data  # polars checks UTF-8 itself; _not_utf8 explains a failure
    try:
        return data.decode(fmt.encoding).encode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFileError(
            name, f"not valid {fmt.encoding} (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from exc


def _not_utf8(data: bytes, name: str) -> UnreadableFileError | None:
    """An error naming the first byte that is not UTF-8, or None when the data is UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return UnreadableFileError(
            name,
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            'set format.encoding (e.g. "cp1252" or "latin-1")',
        )
    return None


def _check_text(data: bytes, name: str) -> None:
    if not data or data.isspace():  # isspace stops at the first other byte: no copy, no full scan
        raise UnreadableFileError(name, "file is empty")
    head = data[:_SNIFF_BYTES]
    if head.startswith(b"PAR1"):
        raise UnreadableFileError(name, 'file is Parquet, not text (set format.kind = "parquet")')
    if b"\x00" in head:
        raise UnreadableFileError(name, "file is binary (contains NUL bytes), not text")


def _read_csv(data: bytes, fmt: FormatConfig, name: str) -> pl.DataFrame:
    _check_text(data, name)
    data = _decode(data, fmt, name)
    try:
        frame = pl.read_csv(
            data,
            has_header=fmt.has_header,
            separator=fmt.delimiter,
            quote_char=fmt.quote_char,
            infer_schema=False,
            raise_if_empty=True,
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _not_utf8(data, name) or UnreadableFileError(
            name, f"not readable as CSV: {_first_line(exc)}"
        ) from exc
    header_lines = 1 if fmt.has_header else 0
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    # a record takes more than one physical line only when a quoted field holds a line break:
    # counting those is only paid for when the file has more line breaks than records
    physical = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if physical > frame.height + header_lines and frame.width:
        embedded = pl.sum_horizontal(
            pl.col(c).str.count_matches("\n", literal=True).fill_null(0) for c in frame.columns
        ).cast(pl.Int64)
        line = 1 + header_lines + index + (embedded.cum_sum() - embedded)
    else:
        line = index + 1 + header_lines
    frame = frame.with_columns(line.alias("source_line"))
    blank = pl.all_horizontal(pl.exclude("source_line").is_null())
    if frame.width > 1 and frame.select(blank.any()).item():
        # blank lines come back as all-null rows: they are not records
        frame = frame.filter(~blank)
    return frame


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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


def _read_jsonl(data: bytes, fmt: FormatConfig, name: str) -> pl.DataFrame:
    _check_text(data, name)
    data = _decode(data, fmt, name)
    try:
        frame = pl.read_ndjson(data, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise _not_utf8(data, name) or UnreadableFileError(
            name, f"not readable as JSON Lines: {_first_line(exc)}"
        ) from exc
    lines = [n for n, text in enumerate(data.split(b"\n"), start=1) if text.strip()]
    if len(lines) != frame.height:  # cannot happen for well-formed JSONL; keep a usable number
        lines = list(range(1, frame.height + 1))
    return _stringify(frame).with_columns(pl.Series("source_line", lines, dtype=pl.Int64))


def _read_parquet(data: bytes, name: str) -> pl.DataFrame:
    if not data:
        raise UnreadableFileError(name, "file is empty")
    try:
        frame = pl.read_parquet(data)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise UnreadableFileError(name, f"not readable as Parquet: {_first_line(exc)}") from exc
    return _stringify(frame).with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("source_line"))


def _map_columns(frame: pl.DataFrame, feed: Feed, name: str) -> pl.DataFrame:
    """Rename export columns to canonical names, add defaults, build the template id."""
    fmt = feed.format
    present = [c for c in frame.columns if c != "source_line"]
    stripped = {c.strip(): c for c in present}
    if not fmt.has_header:
        # without a header the export's columns are positions: "1" is the first column
        positional = {str(i): c for i, c in enumerate(present, start=1)}
        mapping = fmt.columns or {canon: str(i) for i, canon in enumerate(CANONICAL_COLUMNS, start=1)}
        source_of = {canon: positional.get(str(ref).strip()) for canon, ref in mapping.items()}
    else:
        source_of = {canon: stripped.get(ref.strip()) for canon, ref in fmt.columns.items()}
        for canon in CANONICAL_COLUMNS:
            if canon not in fmt.columns and canon in stripped:
                source_of[canon] = stripped[canon]
    used = {src for src in source_of.values() if src is not None}

    exprs: list[pl.Expr] = []
    for canon in CANONICAL_COLUMNS:
        src = source_of.get(canon)
        value = pl.col(src) if src is not None else pl.lit(None, dtype=pl.String)
        if canon in fmt.defaults:
            value = value.fill_null(pl.lit(fmt.defaults[canon]))
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
                raise UnreadableFileError(
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
        found = ", ".join(repr(c) for c in present[:12]) + (" ..." if len(present) > 12 else "")
        hint = (
            f" (wrong delimiter? format.delimiter is {fmt.delimiter!r})"
            if len(present) == 1 and fmt.kind == "csv"
            else ""
        )
        needed = ", ".join(fmt.columns.get(c, c) for c in missing)
        raise UnreadableFileError(name, f"required columns missing: {needed}; found {found}{hint}")

    extras = [pl.col(c).alias(EXTRA_PREFIX + c.strip()) for c in present if c not in used]
    return frame.select(*exprs, *extras, pl.col("source_line"))


def read_bytes(data: bytes, feed: Feed, *, source_name: str) -> pl.DataFrame:
    """Read one export file's content (see :func:`read_file`)."""
    fmt = feed.format
    if fmt.kind == "csv":
        frame = _read_csv(data, fmt, source_name)
    elif fmt.kind == "jsonl":
        frame = _read_jsonl(data, fmt, source_name)
    else:
        frame = _read_parquet(data, source_name)
    frame = _map_columns(frame, feed, source_name)
    return frame.with_columns(pl.lit(source_name, dtype=pl.String).alias("source_file"))


def read_file(path: Path, feed: Feed, *, source_name: str | None = None) -> pl.DataFrame:
    """Read one export file into the canonical lines frame (all strings).

    Columns: every canonical column (null where the export lacks it; ``format.defaults`` fill
    missing columns and empty cells; ``format.transaction_id_template`` builds ``transaction_id``),
    unmapped export columns as ``src:<name>``, ``source_line`` (Int64) and ``source_file``
    (``source_name`` or the file name). Raises UnreadableFileError when the file cannot be read.
    """
    name = source_name or path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableFileError(name, f"cannot open: {exc.strerror or exc}") from exc
    frame = read_bytes(data, feed, source_name=name)
    log.debug("read %s: %d rows", name, frame.height)
    return frame


def read_table(data: bytes, fmt: FormatConfig, *, source_name: str) -> pl.DataFrame:
    """One file's rows as they are (all strings, the export's own column names, ``source_line``),
    without the checkout mapping: enrollments and claims map their own layouts."""
    if fmt.kind == "csv":
        return _read_csv(data, fmt, source_name)
    if fmt.kind == "jsonl":
        return _read_jsonl(data, fmt, source_name)
    return _read_parquet(data, source_name)
