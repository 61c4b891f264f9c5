"""The accounting identity over generated files with injected defects.

For every generated export: the records an independent reader finds = valid + rejected rows, or
the file is listed unreadable with a one-line reason; `posfeed check` never shows a traceback and
exits 0 or 65.

The independent reader is the generator's own list of the records it wrote, checked against
Python's ``csv`` module wherever that module reads the file the same way (every file without an
unclosed quote, which it would read to the end of the file as one field).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import cli
from pipeline.core.parse import MAX_REASON_CHARS
from pipeline.errors import EXIT_DATA, EXIT_OK
from pipeline.records import CANONICAL_COLUMNS
from tests.core.helpers import row

DEFECTS = (
    "none",
    "none",
    "none",
    "extra_fields",
    "short_row",
    "stray_quote",
    "unclosed_quote",
    "text_after_quote",
    "nul",
    "zero_width_id",
    "bad_offset",
    "multiline",
    "delimiter_in_quotes",
    "trailing_delimiter",
    "year_1901",
    "not_a_number",
)
FILLERS = ("", "", "   ", "\t", ",,,")  # lines that hold no record
ENDINGS = ("\n", "\r\n", "\r")


def _cell(value: str) -> str:
    if any(ch in value for ch in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _record(number: int, defect: str) -> str:
    changes: dict[str, str] = {"transaction_id": f"T{number}"}
    if defect == "nul":
        changes["product_name"] = "Te\x00a"
    elif defect == "zero_width_id":
        changes["transaction_id"] = f"T\u200b{number}"
    elif defect == "bad_offset":
        changes["timestamp"] = "2026-11-20T10:00:00+25:00"
    elif defect == "multiline":
        changes["product_name"] = "Tea\nwith\r\nmilk"
    elif defect == "delimiter_in_quotes":
        changes["product_name"] = 'Tea, "large"'
    elif defect == "year_1901":
        changes["timestamp"], changes["business_date"] = "1901-01-01 10:00:00", ""
    elif defect == "not_a_number":
        changes["quantity"] = "two"
    values = row(**changes)
    text = ",".join(_cell(values[c]) for c in CANONICAL_COLUMNS)
    if defect == "extra_fields":
        text += ",x,y"
    elif defect == "short_row":
        text = text.rsplit(",", 5)[0]
    elif defect == "stray_quote":
        text = text.replace("Tea", 'Te"a')
    elif defect == "unclosed_quote":
        text = text.replace("Tea", '"Tea')
    elif defect == "text_after_quote":
        text = text.replace("Tea", '"Tea"s')
    elif defect == "trailing_delimiter":
        text += ","
    return text


@st.composite
def exports(draw: st.DrawFn) -> tuple[bytes, int, bool, str | None]:
    """(file bytes, records written, whether a quote is left open, what makes the file unreadable)."""
    style = draw(st.sampled_from(("lf", "crlf", "cr", "mixed")))
    lines: list[str] = []
    if draw(st.booleans()) and draw(st.booleans()):
        lines.append(draw(st.sampled_from(FILLERS[:2])))  # a blank first line
    lines.append(",".join(CANONICAL_COLUMNS))
    count = draw(st.integers(min_value=0, max_value=12))
    unclosed = False
    for number in range(count):
        defect = draw(st.sampled_from(DEFECTS))
        unclosed = unclosed or defect == "unclosed_quote"
        lines.append(_record(number, defect))
        if draw(st.integers(min_value=0, max_value=5)) == 0:
            lines.append(draw(st.sampled_from(FILLERS)))
    fixed = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}.get(style)
    endings = [fixed or draw(st.sampled_from(ENDINGS)) for _ in lines]
    final = draw(st.booleans())
    text = "".join(text + end for text, end in zip(lines, endings, strict=True))
    if not final:
        text = text[: -len(endings[-1])]
    encoding = draw(st.sampled_from(("utf-8", "utf-8", "utf-8-sig", "utf-16")))
    data = text.encode(encoding)
    spoil = draw(st.sampled_from((None, None, None, None, "not UTF-8", "gzip", "binary")))
    if spoil == "not UTF-8" and encoding == "utf-8":
        data = data.replace(b"Tea", b"T\xe9a", 1) if b"Tea" in data else data + b"\xff\n"
    elif spoil == "gzip":
        data = b"\x1f\x8b\x08" + data
    elif spoil == "binary":
        data = bytes(range(32)) * 64 + data
    else:
        spoil = None
    return data, count, unclosed, spoil


def _csv_module_count(data: bytes) -> int:
    """Records Python's csv module finds (rows with any non-blank field, after the header)."""
    text = data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("utf-8-sig")
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if any(f.strip() for f in r)]
    return max(0, len(rows) - 1)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(exports())
def test_every_record_found_is_valid_or_rejected(
    tmp_path: Path, export: tuple[bytes, int, bool, str | None]
) -> None:
    data, written, unclosed, spoil = export
    if not unclosed and spoil is None:
        assert _csv_module_count(data) == written  # the oracle agrees with an independent reader
    path = tmp_path / "export.csv"
    path.write_bytes(data)
    result = CliRunner().invoke(cli, ["check", str(path), "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.exit_code in (EXIT_OK, EXIT_DATA)
    summary = json.loads(result.stdout)
    if summary["unreadable_files"]:
        reason = summary["unreadable_files"][0]["reason"]
        assert reason and "\n" not in reason and len(reason) <= MAX_REASON_CHARS
        assert summary["rows_in"] == 0
        assert result.exit_code == EXIT_DATA
        assert spoil is not None, reason  # a text export is never given up on as a whole
        assert spoil.split()[0].lower() in reason.lower()
        return
    assert spoil is None
    assert summary["rows_in"] == written
    assert summary["rows_valid"] + summary["rows_rejected"] == written
    assert (result.exit_code == EXIT_OK) == (summary["rows_rejected"] == 0 and summary["conflicts"] == 0)
