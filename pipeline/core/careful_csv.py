"""The careful record-level CSV reader: every record with its physical line, bad ones flagged.

Used for the files the fast reader (polars) refuses or cannot be trusted with: bare ``\\r`` or
mixed line endings, a leading blank line, ragged rows, stray or unbalanced quotes. It never gives
up on a file for one record: a record it cannot read gets a reject code and a one-line reason,
and reading resumes on the next line.

Rules, the same as the fast reader's wherever both read a file:

* a line break is ``\\r\\n``, ``\\r`` or ``\\n``; physical lines are numbered from 1;
* a quoted field may hold line breaks (its record then spans several lines and is numbered by
  its first); a quote inside an unquoted field is an ordinary character (``5" screen``);
* a quoted field still open after :data:`MAX_RECORD_LINES` lines, or at the end of the file,
  or followed by text after its closing quote, or one "closed" lines later by another record's
  quote (the record gets more fields than the header, or a line in between is a whole record of
  its own), makes its first
  line a :attr:`~pipeline.core.rejects.RejectCode.UNBALANCED_QUOTE` reject naming the line and
  the column the quote is in; reading resumes on the next line;
* a record with more fields than the header is a
  :attr:`~pipeline.core.rejects.RejectCode.WRONG_FIELD_COUNT` reject, unless the extra fields
  are all empty (a trailing delimiter); a record with fewer fields has its last fields empty;
* a record whose every field is empty or blank, its last one empty, is not a record (blank
  lines, lines of white space, ``,,,``);
* an empty unquoted field is null, as in polars.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pipeline.core.rejects import RejectCode

__all__ = ["MAX_RECORD_LINES", "Record", "excerpt", "field_count", "records", "split_lines"]

MAX_RECORD_LINES = 1000  # a quoted field open for longer than this is taken as unbalanced
_BREAK = re.compile(r"(\r\n|\r|\n)")


@dataclass(frozen=True)
class Record:
    """One record: its first physical line, its fields, and a reject code when it is bad."""

    line: int
    fields: list[str | None]
    code: RejectCode | None = None
    reason: str | None = None


def excerpt(text: str, limit: int = 40) -> str:
    """A short, one-line, quoted excerpt of ``text`` for a reason."""
    flat = text.replace("\r", "\\r").replace("\n", "\\n").replace("\x00", "\\0")
    return repr(flat[:limit] + ("…" if len(flat) > limit else ""))


def split_lines(text: str) -> tuple[list[str], list[str]]:
    """The physical lines of ``text`` (any line-ending style) and the break after each."""
    parts = _BREAK.split(text)
    lines, breaks = parts[0::2], parts[1::2]
    if lines and lines[-1] == "" and breaks:
        lines.pop()  # the text ends with a line break: no empty last line
    return lines, breaks


_OK, _OPEN, _BAD = 0, 1, 2


def _closing(quote: str) -> re.Pattern[str]:
    """A quoted field's text up to its closing quote (doubled quotes inside)."""
    q = re.escape(quote)
    return re.compile(f"([^{q}]*(?:{q}{q}[^{q}]*)*){q}", re.DOTALL)


def field_count(text: str, *, delimiter: str, quote: str) -> int | None:
    """How many fields one record's text holds, or None when a quote in it does not close."""
    if quote not in text:
        return text.count(delimiter) + 1
    parts, state = _fields(text, delimiter, quote, _closing(quote))
    return len(parts) if state == _OK else None


def _fields(text: str, delimiter: str, quote: str, closing: re.Pattern[str]) -> tuple[list[str], int]:
    """Split one record's text into fields: (fields, _OK | _OPEN | _BAD)."""
    fields: list[str] = []
    pos, end = 0, len(text)
    while True:
        if pos < end and text[pos] == quote:
            match = closing.match(text, pos + 1)
            if match is None:
                return fields, _OPEN
            fields.append(match.group(1).replace(quote + quote, quote))
            pos = match.end()
            if pos == end:
                return fields, _OK
            if text[pos] != delimiter:
                return fields, _BAD
            pos += 1
            if pos == end:
                fields.append("")
                return fields, _OK
            continue
        nxt = text.find(delimiter, pos)
        if nxt < 0:
            fields.append(text[pos:])
            return fields, _OK
        fields.append(text[pos:nxt])
        pos = nxt + 1


def records(
    text: str,
    *,
    delimiter: str,
    quote: str,
    width: int | None,
    first_line: int = 1,
    names: Sequence[str] | None = None,
) -> Iterator[Record]:
    """Every record of ``text`` (the file's text after its header, or the whole file without one).

    ``width`` is the header's field count (None: the first record's). Blank records are skipped.
    ``first_line`` is the physical line number of the text's first line. ``names``: the header's
    column names, to name the field of a bad quote by (else its position).
    """
    lines, breaks = split_lines(text)
    closing = _closing(quote)
    count = len(lines)
    i = 0
    while i < count:
        line = lines[i]
        number = first_line + i
        if quote not in line:
            parts: list[str] = line.split(delimiter)
            state, used = _OK, 1
        else:
            parts, state = _fields(line, delimiter, quote, closing)
            used = 1
            record = line
            while state == _OPEN and i + used < count and used < MAX_RECORD_LINES:
                addition = lines[i + used]
                record = record + breaks[i + used - 1] + addition
                used += 1
                if quote in addition:  # a field stays open until a line brings a quote
                    parts, state = _fields(record, delimiter, quote, closing)
            if state == _OK and used > 1 and width is not None and width > 1 and (
                len(parts) > width
                or any(lines[k].count(delimiter) >= width - 1 for k in range(i + 1, i + used - 1))
            ):
                # a quote "closed" lines later by another record's quote: the lines it spans
                # are records of their own (too many fields, or whole records in between)
                state = _OPEN
        if state != _OK:
            naive: list[str | None] = [p or None for p in line.split(delimiter)]
            why = (
                "a quoted field is not closed"
                + (" by the end of the file" if i + used >= count else f" within {MAX_RECORD_LINES} lines")
                if state == _OPEN
                else "text follows a closing quote"
            )
            first, first_state = _fields(line, delimiter, quote, closing)
            column = len(first) if first_state == _OPEN else max(len(first) - 1, 0)
            label = (f"column {excerpt(names[column].strip())}" if names and column < len(names)
                     else f"field {column + 1}")
            yield Record(number, _fit(naive, width), RejectCode.UNBALANCED_QUOTE,
                         f"{why} (line {number}, {label}: {excerpt(line)})")
            i += 1
            continue
        i += used
        if (width is None or len(parts) < width or not parts[-1]) and all(not p.strip() for p in parts):
            continue  # a blank line, or a line of empty fields: nothing to account for
        if width is None:
            width = len(parts)
        values: list[str | None] = [p if p != "" else None for p in parts]
        code: RejectCode | None = None
        reason: str | None = None
        if len(values) > width:
            extra = parts[width:]
            if any(p.strip() for p in extra):
                code = RejectCode.WRONG_FIELD_COUNT
                shown = excerpt(delimiter.join(extra))
                reason = f"{len(values)} fields where the header has {width} (extra: {shown})"
        yield Record(number, _fit(values, width), code, reason)


def _fit(values: list[str | None], width: int | None) -> list[str | None]:
    """``values`` cut or padded (with nulls) to ``width``."""
    if width is None or len(values) == width:
        return values
    if len(values) > width:
        return values[:width]
    return values + [None] * (width - len(values))
